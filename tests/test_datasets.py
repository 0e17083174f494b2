"""The dataset registry (one DatasetSpec per dataset), its label tables, and colorize."""

import dataclasses

import numpy as np
import pytest

from ciss_tf.data import datasets
from ciss_tf.data.raw_readers import RawDataError
from tests.helpers.raw_datasets import make_camvid


def test_every_dataset_is_consistent():
    expected = {"cityscapes": 19, "ade20k": 150, "pascal_context": 60, "camvid": 11, "synthetic": 8}
    assert set(datasets.DATASET_NAMES) == set(expected)
    for name, num_classes in expected.items():
        info = datasets.get_dataset_info(name)
        assert info.name == name and info.num_classes == num_classes
        assert len(info.class_names) == num_classes == len(set(info.class_names))
        assert info.palette.shape == (num_classes, 3) and info.palette.dtype == np.uint8
        assert (info.ignore_label, info.train_split, info.eval_split) == (255, "train", "val")


def test_every_entry_says_all_a_conversion_needs():
    generated = []
    for name in datasets.DATASET_NAMES:
        spec = datasets.get_dataset_info(name)
        # Every train id is reachable from some raw value; nothing maps outside them.
        train_ids = set(spec.label_map.tolist()) - {-1, spec.ignore_label}
        assert train_ids == set(range(spec.num_classes)), name
        assert spec.label_map.shape == (256,) and spec.label_map.dtype == np.int16
        assert not spec.palette.flags.writeable and not spec.label_map.flags.writeable
        if spec.reader is None:
            generated.append(name)
            assert spec.expected_layout == ""
        else:
            assert callable(spec.reader) and spec.expected_layout, name
    assert generated == ["synthetic"]


def test_label_tables():
    table = datasets.get_dataset_info("cityscapes").label_map
    assert (table[7], table[8], table[26], table[0], table[33]) == (0, 1, 13, 255, 18)
    assert sorted(set(table[:34].tolist()) - {255}) == list(range(19))
    assert (table[34:] == -1).all()  # ids beyond the table are errors, not ignore
    ade20k = datasets.get_dataset_info("ade20k").label_map
    assert ade20k[[0, 1, 150, 151]].tolist() == [255, 0, 149, -1]
    pascal = datasets.get_dataset_info("pascal_context")
    assert pascal.label_map[[0, 59, 60, 255]].tolist() == [0, 59, -1, -1]
    assert "pascal_context.py" in pascal.label_hint
    camvid = datasets.get_dataset_info("camvid").label_map
    assert camvid[[0, 10, 11, 12]].tolist() == [0, 10, 255, -1]
    assert datasets.get_dataset_info("synthetic").label_map[[0, 7, 8]].tolist() == [0, 7, -1]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"num_classes": 10}, "class_names, palette, label_map"),
        ({"palette": np.zeros((11, 4), np.uint8)}, "palette"),
        ({"label_map": np.full(256, 11, np.int16)}, "label_map"),
        ({"label_map": np.zeros(255, np.int16)}, "label_map"),
        ({"expected_layout": ""}, "expected_layout"),
        ({"reader": None}, "expected_layout"),
    ],
)
def test_inconsistent_entry_fails_when_built(change, field):
    camvid = datasets.get_dataset_info("camvid")
    with pytest.raises(ValueError, match=f"^dataset 'camvid': inconsistent {field}$"):
        dataclasses.replace(camvid, **change)


def test_read_splits_names_the_folder_and_the_expected_layout(tmp_path):
    camvid = datasets.get_dataset_info("camvid")
    with pytest.raises(RawDataError, match=f"^--input_dir={tmp_path / 'no'} is not a directory$"):
        camvid.read_splits(str(tmp_path / "no"))
    with pytest.raises(RawDataError) as error:
        camvid.read_splits(str(tmp_path))
    assert str(error.value) == (
        f"--input_dir={tmp_path}: no camvid images found "
        "(expected <split>/*.png and <split>annot/*.png)"
    )
    with pytest.raises(RawDataError, match="^--dataset=synthetic is generated"):
        datasets.get_dataset_info("synthetic").read_splits(str(tmp_path))
    make_camvid(tmp_path, np.random.default_rng(0), splits=("val",))
    splits = camvid.read_splits(str(tmp_path))
    assert list(splits) == ["val"] and splits["val"].size == 2


def test_cityscapes_table_follows_train_ids():
    info = datasets.get_dataset_info("cityscapes")
    assert info.class_names[0] == "road" and info.class_names[13] == "car"
    assert info.class_names[18] == "bicycle"
    assert info.palette[0].tolist() == [128, 64, 128] and info.palette[13].tolist() == [0, 0, 142]


def test_ade20k_and_pascal_context_orders():
    ade = datasets.get_dataset_info("ade20k")
    assert ade.class_names[:3] == ("wall", "building", "sky") and ade.class_names[-1] == "flag"
    assert ade.class_names[7] == "bed"  # no stray whitespace
    assert ade.palette[[0, 2, 149]].tolist() == [[120, 120, 120], [6, 230, 230], [92, 0, 255]]
    pascal = datasets.get_dataset_info("pascal_context")
    assert pascal.class_names[0] == "background" and pascal.class_names[59] == "wood"
    # mmsegmentation's converter numbers the 59 kept categories by increasing PASCAL-Context
    # id, which is alphabetical (its PascalContextDataset: 2 bag, 6 bicycle, 37 person).
    assert list(pascal.class_names[1:]) == sorted(pascal.class_names[1:])
    assert [pascal.class_names[i] for i in (2, 6, 37)] == ["bag", "bicycle", "person"]


def test_camvid_table_matches_its_readme():
    info = datasets.get_dataset_info("camvid")
    assert info.class_names[3] == "road" and info.palette[3].tolist() == [128, 64, 128]
    assert info.class_names[10] == "bicyclist" and info.palette[10].tolist() == [0, 128, 192]


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="--dataset 'coco'; valid names: cityscapes, ade20k"):
        datasets.get_dataset_info("coco")


def test_colorize_paints_ignore_black_and_uncertain_white():
    palette = np.array([[10, 20, 30], [40, 50, 60]], np.uint8)
    labels = np.array([[[0, 1], [255, 1]]])
    rgb = datasets.colorize(labels, palette)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 2, 2, 3)
    assert rgb.tolist() == [[[[10, 20, 30], [40, 50, 60]], [[0, 0, 0], [40, 50, 60]]]]
    marked = datasets.colorize(
        labels, palette, uncertain=np.array([[[True, False], [False, True]]])
    )
    assert marked.tolist() == [[[[255, 255, 255], [40, 50, 60]], [[0, 0, 0], [255, 255, 255]]]]
