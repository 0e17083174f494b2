"""writer: the checks of every example, shard layout, all-or-nothing writes, the skip report."""

import re

import cv2
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.data import datasets, raw_readers, writer
from ciss_tf.data.raw_readers import RawDataError, RawExample
from tests.helpers.raw_datasets import (
    convert,
    make_camvid,
    make_pascal_context,
    png,
    read_records,
    write,
)

CAMVID_MAP = datasets.get_dataset_info("camvid").label_map


def test_shards_split_the_examples_evenly_and_replace_older_shards(tmp_path):
    out = tmp_path / "out"
    splits = raw_readers.synthetic_splits(seed=0, num_train=5, num_val=2, height=40, width=48)
    convert(splits, "synthetic", out, num_shards=3)
    convert(splits, "synthetic", out, num_shards=2)
    counts = {p.name: sum(1 for _ in tf.data.TFRecordDataset(str(p))) for p in out.iterdir()}
    assert counts == {
        "train-00000-of-00002.tfrecord": 2,
        "train-00001-of-00002.tfrecord": 3,
        "val-00000-of-00002.tfrecord": 1,
        "val-00001-of-00002.tfrecord": 1,
    }


def test_auto_num_shards_is_about_256_records_each_at_most_64():
    assert [writer.auto_num_shards(n) for n in (0, 1, 256, 257, 5000, 10**6)] == [
        1, 1, 1, 2, 20, 64,
    ]


def test_skip_bad_reports_and_keeps_the_good_examples(tmp_path):
    rng = np.random.default_rng(4)
    make_camvid(tmp_path / "in", rng)
    bad = write(tmp_path / "in" / "trainannot" / "train_1.png", png(np.full((4, 6), 12, np.uint8)))
    splits = raw_readers.camvid_splits(str(tmp_path / "in"))
    written, skipped = convert(splits, "camvid", tmp_path / "out", skip_bad=True)
    assert written == {"train": 1, "val": 2}
    assert [s.split for s in skipped] == ["train"]
    writer.write_report(str(tmp_path / "report.txt"), skipped)
    assert (tmp_path / "report.txt").read_text() == (
        f"train\t{bad}: invalid label values [12] (valid: 0-11)\n"
    )
    assert list(read_records(tmp_path / "out", "train")) == ["train_0.png"]


def test_invalid_label_value_leaves_no_shard(tmp_path):
    make_pascal_context(tmp_path, {"2008_000002": np.array([[0, 60]], np.uint8)})
    splits = raw_readers.pascal_context_splits(str(tmp_path))
    with pytest.raises(RawDataError, match=r"2008_000002\.png: invalid label values \[60\]"):
        convert(splits, "pascal_context", tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


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
    raw = RawExample("a.png", "img.png", "lab.png", image, label)
    with pytest.raises(RawDataError, match="^lab.png: .*" + re.escape(message)):
        writer.check_example(raw, CAMVID_MAP)


def test_image_that_is_not_png_or_jpeg_is_named():
    label = png(np.zeros((1, 1), np.uint8))
    raw = RawExample("a.gif", "img.gif", "lab.png", b"GIF89a....", label)
    with pytest.raises(RawDataError, match="^img.gif: not a PNG or JPEG image$"):
        writer.check_example(raw, CAMVID_MAP)


def test_invalid_values_are_listed_as_ranges_with_the_hint():
    image = png(np.zeros((1, 3, 3), np.uint8))
    raw = RawExample("a.png", "img.png", "lab.png", image, png(np.array([[12, 200, 12]], np.uint8)))
    with pytest.raises(RawDataError) as error:
        writer.check_example(raw, CAMVID_MAP, label_hint="use the SegNet copy")
    assert str(error.value) == (
        "lab.png: invalid label values [12, 200] (valid: 0-11); use the SegNet copy"
    )
