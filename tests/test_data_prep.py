"""data_prep: readers on fixtures in the real layouts, record contents, CLI errors, tfds."""

import logging
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from conftest import cli_error_line

from ciss_tf.data import synthetic, tfrecord
from data_prep import sources, writer

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "camvid"
KEYS = {
    "image/encoded",
    "image/format",
    "image/filename",
    "image/height",
    "image/width",
    "image/segmentation/class/encoded",
    "image/segmentation/class/format",
}


def png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB [H, W, 3] or single-channel [H, W] uint8 array."""
    if array.ndim == 3:
        array = array[..., ::-1]
    return cv2.imencode(".png", array)[1].tobytes()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def random_image(rng, height, width) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def read_records(output_dir: Path, split: str) -> dict[str, dict]:
    """Every record of a split, keyed by file name, with raw features and decoded arrays."""
    paths = sorted(output_dir.glob(f"{split}-*-of-*.tfrecord"))
    records = {}
    for serialized in tf.data.TFRecordDataset([str(p) for p in paths]):
        features = tf.train.Example.FromString(serialized.numpy()).features.feature
        assert set(features) == KEYS
        decoded = tfrecord.parse_example(serialized)
        name = decoded["filename"].numpy().decode()
        records[name] = {
            "format": features["image/format"].bytes_list.value[0].decode(),
            "label_format": features["image/segmentation/class/format"].bytes_list.value[0],
            "height": features["image/height"].int64_list.value[0],
            "width": features["image/width"].int64_list.value[0],
            "encoded": features["image/encoded"].bytes_list.value[0],
            "image": decoded["image"].numpy(),
            "label": decoded["label"].numpy(),
        }
    return records


def convert(splits, dataset: str, output_dir: Path, **kwargs):
    return writer.write_splits(
        splits, label_map=sources.LABEL_MAPS[dataset], output_dir=str(output_dir), **kwargs
    )


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_prep.build_tfrecords", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error: ...` line of a failed run (no traceback)."""
    return cli_error_line((result.returncode, result.stdout, result.stderr))


def cli_splits(output_dir: Path) -> list[str]:
    """The split names of the shards in `output_dir`, sorted."""
    return sorted({p.name.split("-")[0] for p in output_dir.glob("*.tfrecord")})


# --- Cityscapes ---------------------------------------------------------------------------

CITYSCAPES_IDS = np.array([[7, 26, 0, 33], [9, 11, 23, 24], [1, 32, 31, 4]], np.uint8)
# road 0, car 13, unlabeled 255, bicycle 18 / parking 255, building 2, sky 10, person 11 /
# ego vehicle 255, motorcycle 17, train 16, static 255: from the official table.
CITYSCAPES_TRAIN_IDS = np.array([[0, 13, 255, 18], [255, 2, 10, 11], [255, 17, 16, 255]], np.int32)


def make_cityscapes(root: Path, rng) -> dict[str, np.ndarray]:
    images = {}
    for split, city, count in (("train", "aachen", 3), ("val", "frankfurt", 2)):
        for i in range(count):
            stem = f"{city}_{i:06d}_000019"
            image = random_image(rng, 3, 4)
            write(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", png(image))
            write(
                root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                png(np.roll(CITYSCAPES_IDS, i, axis=1)),
            )
            # Files of other kinds next to the label ids must be ignored.
            write(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", b"x")
            images[f"{stem}_leftImg8bit.png"] = image
    # A split with images but no labels (like leftImg8bit_trainextra) is skipped.
    write(root / "leftImg8bit" / "train_extra" / "x" / "x_0_0_leftImg8bit.png", b"x")
    return images


def test_cityscapes_folders_map_label_ids_to_train_ids(tmp_path):
    images = make_cityscapes(tmp_path / "in", np.random.default_rng(0))
    written, skipped = convert(
        sources.folder_splits("cityscapes", str(tmp_path / "in")), "cityscapes", tmp_path / "out"
    )
    assert written == {"train": 3, "val": 2} and not skipped
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "train-00000-of-00001.tfrecord",
        "val-00000-of-00001.tfrecord",
    ]
    records = {**read_records(tmp_path / "out", "train"), **read_records(tmp_path / "out", "val")}
    assert set(records) == set(images)
    for name, record in records.items():
        i = int(name.split("_")[1])
        np.testing.assert_array_equal(record["label"], np.roll(CITYSCAPES_TRAIN_IDS, i, axis=1))
        np.testing.assert_array_equal(record["image"], images[name])
        assert (record["height"], record["width"], record["format"]) == (3, 4, "png")
        assert record["label_format"] == b"png"


@pytest.mark.parametrize("splits", [None, "train,val"])
def test_cityscapes_test_split_is_converted_with_a_warning(tmp_path, splits):
    make_cityscapes(tmp_path / "in", np.random.default_rng(8))
    for i in range(2):  # the released test labels: all 0 (unlabeled), so all ignore
        stem = f"berlin_{i:06d}_000019"
        image = png(random_image(np.random.default_rng(i), 3, 4))
        write(tmp_path / "in/leftImg8bit/test/berlin" / f"{stem}_leftImg8bit.png", image)
        label = png(np.zeros((3, 4), np.uint8))
        write(tmp_path / "in/gtFine/test/berlin" / f"{stem}_gtFine_labelIds.png", label)
    result = run_cli(
        "--dataset=cityscapes",
        f"--input_dir={tmp_path / 'in'}",
        f"--output_dir={tmp_path / 'out'}",
        *([f"--splits={splits}"] if splits else []),
    )
    assert result.returncode == 0, result.stderr
    warning = (
        "Converting the Cityscapes test split (2 images): its gtFine labels are placeholders "
        "(all ignore), of no use for training or evaluation; --splits=train,val leaves it out"
    )
    if splits is None:  # CONTRACT.md: every split found is converted
        assert cli_splits(tmp_path / "out") == ["test", "train", "val"]
        assert any(line.endswith("] " + warning) for line in result.stderr.splitlines())
        test = read_records(tmp_path / "out", "test")
        assert sorted(test) == [f"berlin_{i:06d}_000019_leftImg8bit.png" for i in range(2)]
        assert all((r["label"] == 255).all() for r in test.values())
    else:
        assert cli_splits(tmp_path / "out") == ["train", "val"]
        assert "Cityscapes test split" not in result.stderr


def test_cityscapes_label_table_comes_from_cityscapesscripts():
    table = sources.LABEL_MAPS["cityscapes"]
    assert (table[7], table[8], table[26], table[0], table[33]) == (0, 1, 13, 255, 18)
    assert sorted(set(table[:34].tolist()) - {255}) == list(range(19))
    assert (table[34:] == -1).all()  # ids beyond the table are errors, not ignore


# --- ADE20K -------------------------------------------------------------------------------


def test_ade20k_shifts_labels_and_ignores_zero(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "in" / "ADEChallengeData2016"
    raw = np.array([[0, 1, 149, 2], [75, 0, 148, 1]], np.uint8)
    jpegs = {}
    for folder, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for i in (1, 2):
            name = f"{prefix}_{i:08d}"
            jpegs[name + ".jpg"] = cv2.imencode(".jpg", random_image(rng, 2, 4))[1].tobytes()
            write(root / "images" / folder / f"{name}.jpg", jpegs[name + ".jpg"])
            write(root / "annotations" / folder / f"{name}.png", png(raw + i - 1))
    written, _ = convert(
        sources.folder_splits("ade20k", str(tmp_path / "in")), "ade20k", tmp_path / "out"
    )
    assert written == {"train": 2, "val": 2}
    for split in ("train", "val"):
        for name, record in read_records(tmp_path / "out", split).items():
            stored = raw.astype(np.int32) + int(name[-5]) - 1  # values 0..150
            np.testing.assert_array_equal(record["label"], np.where(stored == 0, 255, stored - 1))
            assert record["format"] == "jpeg" and record["encoded"] == jpegs[name]
    assert sources.LABEL_MAPS["ade20k"][[0, 1, 150, 151]].tolist() == [255, 0, 149, -1]


def test_ade20k_missing_validation_folder_is_warned_about(tmp_path):
    root = tmp_path / "in" / "ADEChallengeData2016"
    image = cv2.imencode(".jpg", random_image(np.random.default_rng(10), 2, 3))[1].tobytes()
    write(root / "images/training/ADE_train_00000001.jpg", image)
    write(root / "annotations/training/ADE_train_00000001.png", png(np.ones((2, 3), np.uint8)))
    result = run_cli(
        "--dataset=ade20k", f"--input_dir={tmp_path / 'in'}", f"--output_dir={tmp_path / 'out'}"
    )
    assert result.returncode == 0, result.stderr
    assert cli_splits(tmp_path / "out") == ["train"]
    warning = f"{root / 'images' / 'validation'} is missing or holds no *.jpg: no val split written"
    assert [line for line in result.stderr.splitlines() if line.endswith("] " + warning)]


# --- Pascal Context -----------------------------------------------------------------------


def make_pascal_context(root: Path, label_of: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(2)
    lists = {"train": [], "val": []}
    for k, (image_id, label) in enumerate(label_of.items()):
        jpg = cv2.imencode(".jpg", random_image(rng, *label.shape))[1].tobytes()
        write(root / "JPEGImages" / f"{image_id}.jpg", jpg)
        write(root / "SegmentationClassContext" / f"{image_id}.png", png(label))
        lists["train" if k % 2 == 0 else "val"].append(image_id)
    for split, ids in lists.items():
        write(root / "ImageSets" / "SegmentationContext" / f"{split}.txt", "\n".join(ids).encode())


def test_pascal_context_keeps_0_to_59(tmp_path):
    labels = {
        "2008_000002": np.array([[0, 1, 59], [58, 30, 0]], np.uint8),
        "2008_000003": np.array([[59, 59, 2], [0, 0, 1]], np.uint8),
    }
    make_pascal_context(tmp_path / "VOCdevkit" / "VOC2010", labels)
    written, _ = convert(
        sources.folder_splits("pascal_context", str(tmp_path)), "pascal_context", tmp_path / "out"
    )
    assert written == {"train": 1, "val": 1}
    records = {**read_records(tmp_path / "out", "train"), **read_records(tmp_path / "out", "val")}
    assert set(records) == {"2008_000002.jpg", "2008_000003.jpg"}
    for name, record in records.items():
        np.testing.assert_array_equal(record["label"], labels[name[:-4]])
    assert sources.LABEL_MAPS["pascal_context"][[0, 59, 60, 255]].tolist() == [0, 59, -1, -1]


def test_pascal_context_255_is_refused_naming_the_converter(tmp_path):
    # A pc59 file (255 = background, 0..58 the classes) must not pass as aeroplane etc.
    make_pascal_context(
        tmp_path / "VOC2010",
        {
            "2008_000002": np.array([[0, 1], [59, 0]], np.uint8),
            "2008_000003": np.array([[255, 0], [58, 255]], np.uint8),
        },
    )
    result = run_cli(
        "--dataset=pascal_context", f"--input_dir={tmp_path}", f"--output_dir={tmp_path / 'out'}"
    )
    label = tmp_path / "VOC2010" / "SegmentationClassContext" / "2008_000003.png"
    assert error_line(result) == (
        f"error: {label}: invalid label values [255] (valid: 0-59); expected the output of "
        "mmsegmentation's tools/dataset_converters/pascal_context.py (0 = background, "
        "1-59 the classes; files with 255 = background are not read)"
    )
    assert not (tmp_path / "out").exists()  # not even the train split checked before


def test_pascal_context_without_split_lists_asks_for_the_converter(tmp_path):
    write(tmp_path / "VOCdevkit" / "VOC2010" / "JPEGImages" / "2008_000002.jpg", b"x")
    with pytest.raises(sources.DataPrepError) as error:
        sources.folder_splits("pascal_context", str(tmp_path))
    assert str(error.value) == (
        f"--input_dir={tmp_path}: no ImageSets/SegmentationContext/ in it, in VOC2010/ or in "
        "VOCdevkit/VOC2010/; run mmsegmentation's tools/dataset_converters/pascal_context.py "
        "VOCdevkit trainval_merged.json first (it writes the label PNGs and the split lists)"
    )


def test_pascal_context_missing_val_list_is_warned_about(tmp_path, caplog):
    make_pascal_context(tmp_path, {"2008_000002": np.zeros((2, 2), np.uint8)})
    val_list = tmp_path / "ImageSets" / "SegmentationContext" / "val.txt"
    val_list.unlink()
    with caplog.at_level(logging.WARNING):
        splits = sources.folder_splits("pascal_context", str(tmp_path))
    assert list(splits) == ["train"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{val_list} is missing or lists no image: no val split written"
    ]


def test_pascal_context_value_60_is_an_error(tmp_path):
    make_pascal_context(tmp_path, {"2008_000002": np.array([[0, 60]], np.uint8)})
    splits = sources.folder_splits("pascal_context", str(tmp_path))
    with pytest.raises(
        sources.DataPrepError, match=r"2008_000002\.png: invalid label values \[60\]"
    ):
        convert(splits, "pascal_context", tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


# --- CamVid -------------------------------------------------------------------------------


def make_camvid(root: Path, rng, splits=("train", "val"), size=(4, 6)) -> None:
    for split in splits:
        for i in range(2):
            label = rng.integers(0, 12, size, dtype=np.uint8)
            write(root / split / f"{split}_{i}.png", png(random_image(rng, *size)))
            write(root / f"{split}annot" / f"{split}_{i}.png", png(label))


def test_camvid_maps_void_to_ignore_and_finds_test_split(tmp_path):
    rng = np.random.default_rng(3)
    make_camvid(tmp_path / "in", rng, splits=("train", "val", "test"))
    (tmp_path / "in" / "extra").mkdir()  # no "extraannot" twin: not a split
    written, _ = convert(
        sources.folder_splits("camvid", str(tmp_path / "in")), "camvid", tmp_path / "out"
    )
    assert written == {"test": 2, "train": 2, "val": 2}
    ignored = 0
    for split in written:
        for name, record in read_records(tmp_path / "out", split).items():
            raw = cv2.imread(str(tmp_path / "in" / f"{split}annot" / name), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(record["label"], np.where(raw == 11, 255, raw))
            ignored += int((record["label"] == 255).sum())
    assert ignored > 0


@pytest.mark.skipif(not CAMVID.is_dir(), reason="shared CamVid data not present")
def test_real_camvid_through_the_cli(tmp_path):
    result = run_cli(
        "--dataset=camvid",
        f"--input_dir={CAMVID}",
        f"--output_dir={tmp_path}",
        "--max_images_per_split=3",
        "--num_shards=2",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "val-00000-of-00002.tfrecord",
        "val-00001-of-00002.tfrecord",
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


# --- Synthetic ----------------------------------------------------------------------------


def synthetic_splits(seed):
    return sources.synthetic_splits(seed=seed, num_train=5, num_val=2, height=40, width=48)


def test_synthetic_build_is_deterministic_and_lossless(tmp_path):
    convert(synthetic_splits(7), "synthetic", tmp_path / "a", num_shards=2)
    convert(synthetic_splits(7), "synthetic", tmp_path / "b", num_shards=2)
    convert(synthetic_splits(8), "synthetic", tmp_path / "c", num_shards=2)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(names) == 4
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    records = read_records(tmp_path / "a", "val")
    assert sorted(records) == ["synthetic_val_00000.png", "synthetic_val_00001.png"]
    image, label = synthetic.generate_example(7, "val", 1, 40, 48)
    np.testing.assert_array_equal(records["synthetic_val_00001.png"]["image"], image)
    np.testing.assert_array_equal(records["synthetic_val_00001.png"]["label"], label)


# --- Checks and the CLI -------------------------------------------------------------------


def test_shards_split_the_examples_evenly_and_replace_older_shards(tmp_path):
    out = tmp_path / "out"
    convert(synthetic_splits(0), "synthetic", out, num_shards=3)
    convert(synthetic_splits(0), "synthetic", out, num_shards=2)
    counts = {p.name: sum(1 for _ in tf.data.TFRecordDataset(str(p))) for p in out.iterdir()}
    assert counts == {
        "train-00000-of-00002.tfrecord": 2,
        "train-00001-of-00002.tfrecord": 3,
        "val-00000-of-00002.tfrecord": 1,
        "val-00001-of-00002.tfrecord": 1,
    }


def test_skip_bad_reports_and_keeps_the_good_examples(tmp_path):
    rng = np.random.default_rng(4)
    make_camvid(tmp_path / "in", rng)
    bad = write(tmp_path / "in" / "trainannot" / "train_1.png", png(np.full((4, 6), 12, np.uint8)))
    splits = sources.folder_splits("camvid", str(tmp_path / "in"))
    written, skipped = convert(splits, "camvid", tmp_path / "out", skip_bad=True)
    assert written == {"train": 1, "val": 2}
    assert [s.split for s in skipped] == ["train"]
    writer.write_report(str(tmp_path / "report.txt"), skipped)
    assert (tmp_path / "report.txt").read_text() == (
        f"train\t{bad}: invalid label values [12] (valid: 0-11)\n"
    )
    assert list(read_records(tmp_path / "out", "train")) == ["train_0.png"]


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
    result = run_cli(
        "--dataset=camvid", f"--input_dir={tmp_path / 'in'}", f"--output_dir={tmp_path / 'out'}"
    )
    assert result.returncode == 1
    line = error_line(result)
    assert line.startswith(f"error: {culprit}: ")
    assert message in line
    # Nothing written: not the train split converted before the failure, no staging folder.
    assert list((tmp_path / "out").iterdir()) == [old_shard]
    assert old_shard.read_bytes() == b"older run"


@pytest.mark.parametrize(
    "label, message",
    [
        (png(np.zeros((4, 6, 3), np.uint8)), "8-bit PNG (found bit depth 8, PNG colour type 2)"),
        (cv2.imencode(".png", np.zeros((4, 6), np.uint16))[1].tobytes(), "found bit depth 16"),
        (cv2.imencode(".jpg", np.zeros((4, 6), np.uint8))[1].tobytes(), "label is not a PNG"),
        (png(np.zeros((4, 6), np.uint8))[:60], "cannot decode label"),
    ],
)
def test_label_file_checks(label, message):
    image = png(np.zeros((4, 6, 3), np.uint8))
    raw = sources.RawExample("a.png", "img.png", "lab.png", image, label)
    with pytest.raises(sources.DataPrepError, match="^lab.png: .*" + re.escape(message)):
        writer.check_example(raw, sources.LABEL_MAPS["camvid"])


def test_image_that_is_not_png_or_jpeg_is_named():
    label = png(np.zeros((1, 1), np.uint8))
    raw = sources.RawExample("a.gif", "img.gif", "lab.png", b"GIF89a....", label)
    with pytest.raises(sources.DataPrepError, match="^img.gif: not a PNG or JPEG image$"):
        writer.check_example(raw, sources.LABEL_MAPS["camvid"])


def test_empty_input_dir_fails_with_one_line(tmp_path):
    (tmp_path / "in").mkdir()
    result = run_cli(
        "--dataset=ade20k", f"--input_dir={tmp_path / 'in'}", f"--output_dir={tmp_path / 'out'}"
    )
    assert result.returncode == 1
    assert error_line(result) == (
        f"error: --input_dir={tmp_path / 'in'}: no ade20k images found "
        "(expected ADEChallengeData2016/images/{training,validation}/*.jpg and "
        "ADEChallengeData2016/annotations/{training,validation}/*.png)"
    )
    # The output folder is created only once the input layout checks out.
    assert not (tmp_path / "out").exists()


def test_unknown_split_in_splits_flag_is_named(tmp_path):
    make_camvid(tmp_path / "in", np.random.default_rng(9))
    result = run_cli(
        "--dataset=camvid",
        f"--input_dir={tmp_path / 'in'}",
        f"--output_dir={tmp_path / 'out'}",
        "--splits=val,tset",
    )
    assert error_line(result) == (
        "error: --splits=val,tset: no 'tset' split found (found: train, val)"
    )
    assert not (tmp_path / "out").exists()


def test_output_dir_that_cannot_be_created_fails_with_one_line(tmp_path):
    blocker = write(tmp_path / "file", b"")
    result = run_cli(
        "--dataset=synthetic",
        "--synthetic_num_train=1",
        "--synthetic_num_val=1",
        f"--output_dir={blocker / 'out'}",
    )
    assert result.returncode == 1
    assert error_line(result) == f"error: {blocker} is not a directory"


@pytest.mark.parametrize("case", ["bad_example", "bad_report_file"])
def test_failed_run_removes_the_output_folder_it_created(tmp_path, case):
    make_camvid(tmp_path / "in", np.random.default_rng(7))
    label = write(tmp_path / "in" / "valannot" / "val_1.png", png(np.full((4, 6), 200, np.uint8)))
    blocker = write(tmp_path / "file", b"")
    out = tmp_path / "new" / "out"
    args = ["--dataset=camvid", f"--input_dir={tmp_path / 'in'}", f"--output_dir={out}"]
    if case == "bad_example":
        culprit = label
    else:
        # The shards are complete when the report fails: they must go too.
        culprit = blocker
        args += ["--skip_bad", f"--report_file={blocker / 'skipped.txt'}"]
    result = run_cli(*args)
    assert result.returncode == 1
    assert error_line(result).startswith(f"error: {culprit}")
    assert not (tmp_path / "new").exists()


def test_missing_label_file_is_named(tmp_path):
    make_camvid(tmp_path, np.random.default_rng(6))
    (tmp_path / "trainannot" / "train_0.png").unlink()
    with pytest.raises(sources.DataPrepError, match="train_0.png: no label file"):
        sources.folder_splits("camvid", str(tmp_path))


# --- tensorflow-datasets: Cityscapes from the official zips -------------------------------


def make_cityscapes_zips(zip_dir: Path, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tiny zips in the official layout (tfds keeps the files' bytes, so any size works)."""
    zip_dir.mkdir(parents=True)
    content = {}
    with (
        zipfile.ZipFile(zip_dir / "leftImg8bit_trainvaltest.zip", "w") as images,
        zipfile.ZipFile(zip_dir / "gtFine_trainvaltest.zip", "w") as labels,
    ):
        for split, city, count in (
            ("train", "aachen", 2),
            ("val", "lindau", 1),
            ("test", "bonn", 1),
        ):
            for i in range(count):
                stem = f"{city}_{i:06d}_000019"
                image, ids = random_image(rng, 3, 4), np.roll(CITYSCAPES_IDS, i, axis=0)
                images.writestr(f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", png(image))
                labels.writestr(f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png", png(ids))
                labels.writestr(f"gtFine/{split}/{city}/{stem}_gtFine_color.png", b"x")
                content[f"{stem}_leftImg8bit.png"] = (
                    image,
                    np.roll(CITYSCAPES_TRAIN_IDS, i, axis=0),
                )
    return content


def test_tfds_cityscapes_from_zips_offline(tmp_path, monkeypatch):
    from data_prep import tfds_cityscapes

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    content = make_cityscapes_zips(tmp_path / "zips", np.random.default_rng(7))
    splits = tfds_cityscapes.cityscapes_zip_splits(str(tmp_path / "zips"), str(tmp_path / "tfds"))
    written, _ = convert(splits, "cityscapes", tmp_path / "out")
    assert written == {"train": 2, "val": 1, "test": 1}
    records = {
        name: record
        for split in written
        for name, record in read_records(tmp_path / "out", split).items()
    }
    assert set(records) == set(content)
    for name, (image, train_ids) in content.items():
        np.testing.assert_array_equal(records[name]["image"], image)
        np.testing.assert_array_equal(records[name]["label"], train_ids)


def test_tfds_cityscapes_missing_zip_is_named(tmp_path):
    from data_prep import tfds_cityscapes

    (tmp_path / "zips").mkdir()
    (tmp_path / "zips" / "leftImg8bit_trainvaltest.zip").write_bytes(b"")
    with pytest.raises(sources.DataPrepError, match="gtFine_trainvaltest.zip is missing"):
        tfds_cityscapes.cityscapes_zip_splits(str(tmp_path / "zips"), str(tmp_path / "tfds"))
