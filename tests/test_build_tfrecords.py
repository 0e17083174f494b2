"""The build_tfrecords command: builder.build in process; one run of the command's error line."""

import dataclasses
import logging

import cv2
import numpy as np
import pytest

from ciss_tf.data import datasets, raw_readers
from ciss_tf.data.raw_readers import RawDataError
from data_prep import builder
from tests.helpers.cli import ROOT, cli_error_line, run_cli
from tests.helpers.raw_datasets import (
    make_camvid,
    make_cityscapes,
    make_pascal_context,
    png,
    random_image,
    read_records,
    shard_splits,
    warning_messages,
    write,
)

CAMVID = ROOT.parent / "shared" / "camvid"


def build_error(**config) -> str:
    """The one `error: ...` line the command prints (exiting 1) for this conversion."""
    with pytest.raises(RawDataError) as error:
        builder.build(builder.BuildConfig(**config))
    line = f"error: {error.value}"
    assert "\n" not in line
    return line


@pytest.mark.parametrize("splits", [(), ("train", "val")])
def test_cityscapes_test_split_is_converted_with_a_warning(tmp_path, caplog, splits):
    make_cityscapes(tmp_path / "in", np.random.default_rng(8))
    for i in range(2):  # the released test labels: all 0 (unlabeled), so all ignore
        stem = f"berlin_{i:06d}_000019"
        image = png(random_image(np.random.default_rng(i), 3, 4))
        write(tmp_path / "in/leftImg8bit/test/berlin" / f"{stem}_leftImg8bit.png", image)
        label = png(np.zeros((3, 4), np.uint8))
        write(tmp_path / "in/gtFine/test/berlin" / f"{stem}_gtFine_labelIds.png", label)
    with caplog.at_level(logging.WARNING):
        written = builder.build(builder.BuildConfig(
            "cityscapes", str(tmp_path / "out"), str(tmp_path / "in"), splits=splits
        ))
    warnings = warning_messages(caplog)
    warning = (
        "Converting the Cityscapes test split (2 images): its gtFine labels are placeholders "
        "(all ignore), of no use for training or evaluation; --splits=train,val leaves it out"
    )
    if not splits:  # CONTRACT.md: every split found is converted
        assert shard_splits(tmp_path / "out") == ["test", "train", "val"] == sorted(written)
        assert warning in warnings
        test = read_records(tmp_path / "out", "test")
        assert sorted(test) == [f"berlin_{i:06d}_000019_leftImg8bit.png" for i in range(2)]
        assert all((r["label"] == 255).all() for r in test.values())
    else:
        assert shard_splits(tmp_path / "out") == ["train", "val"]
        assert not [w for w in warnings if "Cityscapes test split" in w]


def test_a_new_dataset_needs_only_its_registry_entry(tmp_path, monkeypatch):
    # Three classes read in the CamVid layout; raw 3 is void, 4 and up are errors.
    spec = datasets.DatasetSpec(
        name="three", num_classes=3, class_names=("a", "b", "c"),
        palette=np.eye(3, dtype=np.uint8) * 255,
        label_map=np.array([0, 1, 2, 255] + [-1] * 252, np.int16),
        reader=raw_readers.camvid_splits, expected_layout="<split>/ and <split>annot/",
        label_hint="three takes 0-3",
    )
    monkeypatch.setitem(datasets._REGISTRY, "three", spec)
    labels = np.array([[0, 1, 2, 3, 2, 1]] * 4, np.uint8)
    for i in range(2):
        write(tmp_path / "in/val" / f"{i}.png", png(random_image(np.random.default_rng(i), 4, 6)))
        write(tmp_path / "in/valannot" / f"{i}.png", png(labels))
    written = builder.build(
        builder.BuildConfig("three", str(tmp_path / "out"), str(tmp_path / "in"))
    )
    assert written == {"val": 2}
    for record in read_records(tmp_path / "out", "val").values():
        np.testing.assert_array_equal(record["label"], np.where(labels == 3, 255, labels))
    write(tmp_path / "in/valannot/1.png", png(labels + 1))
    assert build_error(dataset="three", input_dir=str(tmp_path / "in"),
                       output_dir=str(tmp_path / "out2")) == (
        f"error: {tmp_path / 'in/valannot/1.png'}: invalid label values [4] (valid: 0-3); "
        "three takes 0-3"
    )
    assert build_error(dataset="three", input_dir=str(tmp_path / "none"),
                       output_dir=str(tmp_path / "out2")) == (
        f"error: --input_dir={tmp_path / 'none'} is not a directory"
    )


def test_pascal_context_255_is_refused_naming_the_converter(tmp_path):
    # A pc59 file (255 = background, 0..58 the classes) must not pass as aeroplane etc.
    make_pascal_context(
        tmp_path / "VOC2010",
        {
            "2008_000002": np.array([[0, 1], [59, 0]], np.uint8),
            "2008_000003": np.array([[255, 0], [58, 255]], np.uint8),
        },
    )
    line = build_error(
        dataset="pascal_context", input_dir=str(tmp_path), output_dir=str(tmp_path / "out")
    )
    label = tmp_path / "VOC2010" / "SegmentationClassContext" / "2008_000003.png"
    assert line == (
        f"error: {label}: invalid label values [255] (valid: 0-59); expected the output of "
        "mmsegmentation's tools/dataset_converters/pascal_context.py (0 = background, "
        "1-59 the classes; files with 255 = background are not read)"
    )
    assert not (tmp_path / "out").exists()  # not even the train split checked before


@pytest.mark.skipif(not CAMVID.is_dir(), reason="shared CamVid data not present")
def test_real_camvid(tmp_path):
    written = builder.build(builder.BuildConfig(
        "camvid", str(tmp_path), str(CAMVID), max_images_per_split=3, num_shards=2
    ))
    # Every split present with its *annot twin: train, val and the test split.
    assert written == {"test": 3, "train": 3, "val": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{split}-0000{i}-of-00002.tfrecord" for split in ("test", "train", "val")
        for i in range(2)
    ]
    val = read_records(tmp_path, "val")
    # The val split keeps sorted order, so it holds the first three files.
    assert sorted(val) == sorted(p.name for p in (CAMVID / "val").glob("*.png"))[:3]
    for name, record in val.items():
        raw = cv2.imread(str(CAMVID / "valannot" / name), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(record["label"], np.where(raw == 11, 255, raw))
        assert record["image"].shape == (360, 480, 3)
        np.testing.assert_array_equal(
            record["image"], cv2.imread(str(CAMVID / "val" / name))[..., ::-1]
        )
    assert len(read_records(tmp_path, "train")) == 3


@pytest.mark.parametrize("case", ["corrupt_png", "size_mismatch", "out_of_range"])
def test_bad_example_fails_with_one_line_naming_the_file(tmp_path, case):
    rng = np.random.default_rng(5)
    make_camvid(tmp_path / "in", rng)
    old_shard = write(tmp_path / "out" / "val-00000-of-00001.tfrecord", b"older run")
    image = tmp_path / "in" / "val" / "val_1.png"
    label = tmp_path / "in" / "valannot" / "val_1.png"
    if case == "corrupt_png":
        write(image, image.read_bytes()[:40])
        culprit, message = image, "cannot decode image"
    elif case == "size_mismatch":
        write(label, png(np.zeros((5, 6), np.uint8)))
        culprit, message = label, f"label is 5x6 but image {image} is 4x6"
    else:
        write(label, png(np.full((4, 6), 200, np.uint8)))
        culprit, message = label, "invalid label values [200] (valid: 0-11)"
    line = build_error(
        dataset="camvid", input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out")
    )
    assert line.startswith(f"error: {culprit}: ")
    assert message in line
    # Nothing written: not the train split converted before the failure, no staging folder.
    assert list((tmp_path / "out").iterdir()) == [old_shard]
    assert old_shard.read_bytes() == b"older run"


def test_flag_errors_name_the_flag(tmp_path):
    make_camvid(tmp_path / "in", np.random.default_rng(9))
    camvid = builder.BuildConfig("camvid", str(tmp_path / "out"), str(tmp_path / "in"))
    errors = [
        build_error(**dataclasses.asdict(camvid) | {"splits": ("val", "tset")}),
        build_error(**dataclasses.asdict(camvid) | {"input_dir": None}),
        build_error(**dataclasses.asdict(camvid) | {"cityscapes_zip_dir": str(tmp_path)}),
        build_error(dataset="cityscapes", output_dir=str(tmp_path / "out"),
                    input_dir=str(tmp_path), cityscapes_zip_dir=str(tmp_path)),
    ]
    assert errors == [
        "error: --splits=val,tset: no 'tset' split found (found: train, val)",
        "error: --input_dir is required for --dataset=camvid",
        "error: --cityscapes_zip_dir is only for --dataset=cityscapes",
        "error: give either --input_dir or --cityscapes_zip_dir, not both",
    ]
    assert not (tmp_path / "out").exists()


def test_empty_input_dir_fails_with_one_line(tmp_path):
    (tmp_path / "in").mkdir()
    line = build_error(
        dataset="ade20k", input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out")
    )
    assert line == (
        f"error: --input_dir={tmp_path / 'in'}: no ade20k images found "
        "(expected ADEChallengeData2016/images/{training,validation}/*.jpg and "
        "ADEChallengeData2016/annotations/{training,validation}/*.png)"
    )
    # The output folder is created only once the input layout checks out.
    assert not (tmp_path / "out").exists()


def test_output_dir_that_cannot_be_created_fails_with_one_line(tmp_path):
    blocker = write(tmp_path / "file", b"")
    line = build_error(
        dataset="synthetic", synthetic_num_train=1, synthetic_num_val=1,
        output_dir=str(blocker / "out"),
    )
    assert line == f"error: {blocker} is not a directory"


def test_failed_run_removes_the_output_folder_it_created(tmp_path):
    make_camvid(tmp_path / "in", np.random.default_rng(7))
    label = write(tmp_path / "in" / "valannot" / "val_1.png", png(np.full((4, 6), 200, np.uint8)))
    out = tmp_path / "new" / "out"
    line = build_error(dataset="camvid", input_dir=str(tmp_path / "in"), output_dir=str(out))
    assert line.startswith(f"error: {label}")
    assert not (tmp_path / "new").exists()


def test_command_prints_one_error_line_and_removes_what_it_wrote(tmp_path):
    """The one run of the command: flags -> BuildConfig, exit 1, one line, no traceback."""
    make_camvid(tmp_path / "in", np.random.default_rng(7))
    write(tmp_path / "in" / "valannot" / "val_1.png", png(np.full((4, 6), 200, np.uint8)))
    blocker = write(tmp_path / "file", b"")
    out = tmp_path / "new" / "out"
    # The shards are complete when the report fails: they must go too.
    result = run_cli(
        "data_prep.build_tfrecords", "--dataset=camvid", f"--input_dir={tmp_path / 'in'}",
        f"--output_dir={out}", "--splits=val", "--num_shards=2", "--skip_bad",
        f"--report_file={blocker / 'skipped.txt'}", check=False,
    )
    assert result.returncode == 1
    assert cli_error_line(result).startswith(f"error: {blocker}")
    assert not (tmp_path / "new").exists()
