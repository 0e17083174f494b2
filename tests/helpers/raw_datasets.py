"""Tiny raw datasets in their released layouts, and the shards read back (shared test helpers)."""

import logging
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from ciss_tf.data import datasets, tfrecord, writer

KEYS = {
    "image/encoded",
    "image/format",
    "image/filename",
    "image/height",
    "image/width",
    "image/segmentation/class/encoded",
    "image/segmentation/class/format",
}

CITYSCAPES_IDS = np.array([[7, 26, 0, 33], [9, 11, 23, 24], [1, 32, 31, 4]], np.uint8)
# road 0, car 13, unlabeled 255, bicycle 18 / parking 255, building 2, sky 10, person 11 /
# ego vehicle 255, motorcycle 17, train 16, static 255: from the official table.
CITYSCAPES_TRAIN_IDS = np.array([[0, 13, 255, 18], [255, 2, 10, 11], [255, 17, 16, 255]], np.int32)


def warning_messages(caplog) -> list[str]:
    """The messages of the WARNING records `caplog` captured, in order."""
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


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


def shard_splits(output_dir: Path) -> list[str]:
    """The split names of the shards in `output_dir`, sorted."""
    return sorted({p.name.split("-")[0] for p in output_dir.glob("*.tfrecord")})


def make_cityscapes(root: Path, rng) -> dict[str, np.ndarray]:
    """train (3 images) and val (2) with `CITYSCAPES_IDS` rolled by the image index."""
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


def make_pascal_context(root: Path, label_of: dict[str, np.ndarray]) -> None:
    """The converter's layout; images alternate between the train and val lists."""
    rng = np.random.default_rng(2)
    lists = {"train": [], "val": []}
    for k, (image_id, label) in enumerate(label_of.items()):
        jpg = cv2.imencode(".jpg", random_image(rng, *label.shape))[1].tobytes()
        write(root / "JPEGImages" / f"{image_id}.jpg", jpg)
        write(root / "SegmentationClassContext" / f"{image_id}.png", png(label))
        lists["train" if k % 2 == 0 else "val"].append(image_id)
    for split, ids in lists.items():
        write(root / "ImageSets" / "SegmentationContext" / f"{split}.txt", "\n".join(ids).encode())


def make_camvid(root: Path, rng, splits=("train", "val"), size=(4, 6)) -> None:
    """Two images per split, labels drawn from 0..11 (11 = void)."""
    for split in splits:
        for i in range(2):
            label = rng.integers(0, 12, size, dtype=np.uint8)
            write(root / split / f"{split}_{i}.png", png(random_image(rng, *size)))
            write(root / f"{split}annot" / f"{split}_{i}.png", png(label))


def convert(splits, dataset: str, output_dir: Path, **kwargs):
    """`writer.write_splits` with the label table and hint of registry entry `dataset`."""
    spec = datasets.get_dataset_info(dataset)
    return writer.write_splits(
        splits, label_map=spec.label_map, label_hint=spec.label_hint,
        output_dir=str(output_dir), **kwargs,
    )
