"""tfds_cityscapes: Cityscapes from the official zips through tensorflow-datasets, offline."""

import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ciss_tf.data.raw_readers import RawDataError
from data_prep import tfds_cityscapes
from tests.helpers.raw_datasets import (
    CITYSCAPES_IDS,
    CITYSCAPES_TRAIN_IDS,
    convert,
    png,
    random_image,
    read_records,
)


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
    (tmp_path / "zips").mkdir()
    (tmp_path / "zips" / "leftImg8bit_trainvaltest.zip").write_bytes(b"")
    with pytest.raises(RawDataError, match="gtFine_trainvaltest.zip is missing"):
        tfds_cityscapes.cityscapes_zip_splits(str(tmp_path / "zips"), str(tmp_path / "tfds"))
