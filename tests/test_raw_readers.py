"""raw_readers: each reader on a fixture in the real layout, through to the records written."""

import logging

import cv2
import numpy as np
import pytest

from ciss_tf.data import datasets, raw_readers, synthetic
from tests.helpers.raw_datasets import (
    CITYSCAPES_TRAIN_IDS,
    convert,
    make_camvid,
    make_cityscapes,
    make_pascal_context,
    png,
    random_image,
    read_records,
    warning_messages,
    write,
)


def read_splits(dataset, input_dir):
    return datasets.get_dataset_info(dataset).read_splits(str(input_dir))


def test_cityscapes_folders_map_label_ids_to_train_ids(tmp_path):
    images = make_cityscapes(tmp_path / "in", np.random.default_rng(0))
    written, skipped = convert(
        read_splits("cityscapes", tmp_path / "in"), "cityscapes", tmp_path / "out"
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
    written, _ = convert(read_splits("ade20k", tmp_path / "in"), "ade20k", tmp_path / "out")
    assert written == {"train": 2, "val": 2}
    for split in ("train", "val"):
        for name, record in read_records(tmp_path / "out", split).items():
            stored = raw.astype(np.int32) + int(name[-5]) - 1  # values 0..150
            np.testing.assert_array_equal(record["label"], np.where(stored == 0, 255, stored - 1))
            assert record["format"] == "jpeg" and record["encoded"] == jpegs[name]


def test_ade20k_missing_validation_folder_is_warned_about(tmp_path, caplog):
    root = tmp_path / "ADEChallengeData2016"
    image = cv2.imencode(".jpg", random_image(np.random.default_rng(10), 2, 3))[1].tobytes()
    write(root / "images/training/ADE_train_00000001.jpg", image)
    write(root / "annotations/training/ADE_train_00000001.png", png(np.ones((2, 3), np.uint8)))
    with caplog.at_level(logging.WARNING):
        splits = raw_readers.ade20k_splits(str(tmp_path))
    assert list(splits) == ["train"]
    assert warning_messages(caplog) == [
        f"{root / 'images' / 'validation'} is missing or holds no *.jpg: no val split written"
    ]


def test_pascal_context_keeps_0_to_59(tmp_path):
    labels = {
        "2008_000002": np.array([[0, 1, 59], [58, 30, 0]], np.uint8),
        "2008_000003": np.array([[59, 59, 2], [0, 0, 1]], np.uint8),
    }
    make_pascal_context(tmp_path / "VOCdevkit" / "VOC2010", labels)
    written, _ = convert(
        read_splits("pascal_context", tmp_path), "pascal_context", tmp_path / "out"
    )
    assert written == {"train": 1, "val": 1}
    records = {**read_records(tmp_path / "out", "train"), **read_records(tmp_path / "out", "val")}
    assert set(records) == {"2008_000002.jpg", "2008_000003.jpg"}
    for name, record in records.items():
        np.testing.assert_array_equal(record["label"], labels[name[:-4]])


def test_pascal_context_without_split_lists_asks_for_the_converter(tmp_path):
    write(tmp_path / "VOCdevkit" / "VOC2010" / "JPEGImages" / "2008_000002.jpg", b"x")
    with pytest.raises(raw_readers.RawDataError) as error:
        raw_readers.pascal_context_splits(str(tmp_path))
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
        splits = raw_readers.pascal_context_splits(str(tmp_path))
    assert list(splits) == ["train"]
    assert warning_messages(caplog) == [
        f"{val_list} is missing or lists no image: no val split written"
    ]


def test_camvid_maps_void_to_ignore_and_finds_test_split(tmp_path):
    rng = np.random.default_rng(3)
    make_camvid(tmp_path / "in", rng, splits=("train", "val", "test"))
    (tmp_path / "in" / "extra").mkdir()  # no "extraannot" twin: not a split
    written, _ = convert(read_splits("camvid", tmp_path / "in"), "camvid", tmp_path / "out")
    assert written == {"test": 2, "train": 2, "val": 2}
    ignored = 0
    for split in written:
        for name, record in read_records(tmp_path / "out", split).items():
            raw = cv2.imread(str(tmp_path / "in" / f"{split}annot" / name), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(record["label"], np.where(raw == 11, 255, raw))
            ignored += int((record["label"] == 255).sum())
    assert ignored > 0


def test_missing_label_file_is_named(tmp_path):
    make_camvid(tmp_path, np.random.default_rng(6))
    (tmp_path / "trainannot" / "train_0.png").unlink()
    with pytest.raises(raw_readers.RawDataError, match="train_0.png: no label file"):
        raw_readers.camvid_splits(str(tmp_path))


def synthetic_splits(seed):
    return raw_readers.synthetic_splits(seed=seed, num_train=5, num_val=2, height=40, width=48)


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
