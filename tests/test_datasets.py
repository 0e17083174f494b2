"""The dataset registry and colorize."""

import numpy as np
import pytest

from ciss_tf.data import datasets


def test_every_dataset_is_consistent():
    expected = {"cityscapes": 19, "ade20k": 150, "pascal_context": 60, "camvid": 11, "synthetic": 8}
    assert set(datasets.DATASET_NAMES) == set(expected)
    for name, num_classes in expected.items():
        info = datasets.get_dataset_info(name)
        assert info.name == name and info.num_classes == num_classes
        assert len(info.class_names) == num_classes == len(set(info.class_names))
        assert info.palette.shape == (num_classes, 3) and info.palette.dtype == np.uint8
        assert (info.ignore_label, info.train_split, info.eval_split) == (255, "train", "val")


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
