"""Readers of the raw datasets: where each keeps its images and labels.

Every reader takes the dataset's folder and returns `{split: Split}`; a `Split` yields
`RawExample`s: the encoded image and the encoded label file exactly as found on disk, with
the paths that error messages name. Checking, label mapping and encoding happen in
`ciss_tf.data.writer`, the same for all. Which reader, label table and layout belong to a
dataset is said once, by its `ciss_tf.data.datasets.DatasetSpec`.
"""

import dataclasses
import os
import random
from collections.abc import Callable, Iterator, Sequence

import cv2
import tensorflow as tf
from absl import logging

from ciss_tf.data import synthetic

# Fixed seed of the on-disk order of the train split: the input pipeline shuffles windows
# of consecutive records, so each window should already be a random sample.
_TRAIN_ORDER_SEED = 0


class RawDataError(Exception):
    """Bad raw data or input flag; the message is one line naming the file or flag at fault."""


@dataclasses.dataclass(frozen=True)
class RawExample:
    """One image / label pair as stored by the dataset.

    Attributes:
        filename: file name stored in the record (kept for writing predictions back).
        image_path: where the image came from, for error messages.
        label_path: where the label came from, for error messages.
        image: encoded image bytes (PNG or JPEG).
        label: encoded single-channel label PNG in the dataset's own label ids.
    """

    filename: str
    image_path: str
    label_path: str
    image: bytes
    label: bytes


@dataclasses.dataclass(frozen=True)
class Split:
    """The examples of one split: how many, and a function that reads them lazily."""

    size: int
    examples: Callable[[], Iterator[RawExample]]


# Named by the Pascal Context reader's errors and its registry entry.
PASCAL_CONTEXT_CONVERTER = "mmsegmentation's tools/dataset_converters/pascal_context.py"


def read_file(path: str) -> bytes:
    """Reads a whole file, turning any failure into one line naming it."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except (tf.errors.OpError, OSError) as e:
        raise RawDataError(f"{path}: cannot read ({type(e).__name__})") from None


def _pairs_split(split: str, pairs: Sequence[tuple[str, str]]) -> Split:
    """A split read from (image path, label path) pairs; the train split in random order."""
    pairs = sorted(pairs)
    if split == "train":
        random.Random(_TRAIN_ORDER_SEED).shuffle(pairs)

    def examples() -> Iterator[RawExample]:
        for image_path, label_path in pairs:
            yield RawExample(
                filename=os.path.basename(image_path),
                image_path=image_path,
                label_path=label_path,
                image=read_file(image_path),
                label=read_file(label_path),
            )

    return Split(len(pairs), examples)


def _require_file(path: str, image_path: str) -> str:
    if not tf.io.gfile.exists(path):
        raise RawDataError(f"{image_path}: no label file (expected {path})")
    return path


def _glob(pattern: str) -> list[str]:
    return sorted(tf.io.gfile.glob(pattern))


def _isdir(path: str) -> bool:
    return tf.io.gfile.isdir(path)


def _warn_missing(splits: dict[str, Split], missing: list[tuple[str, str]], why: str) -> None:
    """Warns about each expected (path, split) not found, unless no split was found at all.

    With no split at all, `DatasetSpec.read_splits` fails with the expected layout instead.
    """
    if splits:
        for path, split in missing:
            logging.warning("%s %s: no %s split written", path, why, split)


def cityscapes_splits(input_dir: str) -> dict[str, Split]:
    """Cityscapes folders: `leftImg8bit/<split>/<city>/*_leftImg8bit.png`.

    Labels: `gtFine/<split>/<city>/*_gtFine_labelIds.png`; a split without `gtFine` is skipped.
    """
    image_root = os.path.join(input_dir, "leftImg8bit")
    label_root = os.path.join(input_dir, "gtFine")
    if not (_isdir(image_root) and _isdir(label_root)):
        raise RawDataError(
            f"{input_dir}: expected the Cityscapes folders leftImg8bit/ and gtFine/"
        )
    splits = {}
    for split in sorted(tf.io.gfile.listdir(image_root)):
        split = split.rstrip("/")
        if not _isdir(os.path.join(label_root, split)):
            logging.warning("Skipping leftImg8bit/%s: no gtFine/%s", split, split)
            continue
        images = _glob(os.path.join(image_root, split, "*", "*_leftImg8bit.png"))
        pairs = []
        for image in images:
            city = os.path.basename(os.path.dirname(image))
            name = os.path.basename(image).replace("_leftImg8bit.png", "_gtFine_labelIds.png")
            label = os.path.join(label_root, split, city, name)
            pairs.append((image, _require_file(label, image)))
        if pairs:
            splits[split] = _pairs_split(split, pairs)
    return splits


def ade20k_splits(input_dir: str) -> dict[str, Split]:
    """`ADEChallengeData2016/images/{training,validation}/*.jpg` and `annotations/.../*.png`.

    `input_dir` may be `ADEChallengeData2016` itself or its parent. A missing (or empty)
    `images/training` or `images/validation` is warned about, naming it.
    """
    root = os.path.join(input_dir, "ADEChallengeData2016")
    if not _isdir(root):
        root = input_dir
    splits, missing = {}, []
    for folder, split in (("training", "train"), ("validation", "val")):
        images = _glob(os.path.join(root, "images", folder, "*.jpg"))
        if not images:
            missing.append((os.path.join(root, "images", folder), split))
        pairs = []
        for image in images:
            stem = os.path.splitext(os.path.basename(image))[0]
            label = os.path.join(root, "annotations", folder, stem + ".png")
            pairs.append((image, _require_file(label, image)))
        if pairs:
            splits[split] = _pairs_split(split, pairs)
    _warn_missing(splits, missing, "is missing or holds no *.jpg")
    return splits


def pascal_context_splits(input_dir: str) -> dict[str, Split]:
    """`JPEGImages/*.jpg`, `SegmentationClassContext/*.png`, `ImageSets/SegmentationContext/*.txt`.

    This is the layout written by mmsegmentation's `tools/dataset_converters/pascal_context.py`
    from the PASCAL VOC 2010 trainval images and the PASCAL in Detail annotations
    (`trainval_merged.json`, via the Detail API): 8-bit grayscale PNGs holding 0..59, with
    0 = background (a class of its own) and 1..59 the 59 frequent classes. Values are kept;
    there is no ignore value: 255, which the converter never writes, is an error like any
    other value above 59 (it marks the other common pc59 files, 255 = background and 0..58
    the classes, which would otherwise be read silently wrong).
    `input_dir` may be `VOC2010` itself, `VOCdevkit` or the folder holding `VOCdevkit`.
    Every list file `ImageSets/SegmentationContext/<split>.txt` is one split; a missing
    `train.txt` or `val.txt` is warned about.

    Raises:
        RawDataError: no `ImageSets/SegmentationContext` folder (the converter has not
            been run), or a listed image or label is missing.
    """
    for root in (
        input_dir,
        os.path.join(input_dir, "VOC2010"),
        os.path.join(input_dir, "VOCdevkit", "VOC2010"),
    ):
        list_dir = os.path.join(root, "ImageSets", "SegmentationContext")
        if _isdir(list_dir):
            break
    else:
        raise RawDataError(
            f"--input_dir={input_dir}: no ImageSets/SegmentationContext/ in it, in VOC2010/ "
            f"or in VOCdevkit/VOC2010/; run {PASCAL_CONTEXT_CONVERTER} VOCdevkit "
            "trainval_merged.json first (it writes the label PNGs and the split lists)"
        )
    splits = {}
    for list_file in _glob(os.path.join(list_dir, "*.txt")):
        split = os.path.splitext(os.path.basename(list_file))[0]
        ids = read_file(list_file).decode().split()
        pairs = []
        for image_id in ids:
            image = os.path.join(root, "JPEGImages", image_id + ".jpg")
            if not tf.io.gfile.exists(image):
                raise RawDataError(f"{list_file}: lists {image_id} but {image} is missing")
            label = os.path.join(root, "SegmentationClassContext", image_id + ".png")
            pairs.append((image, _require_file(label, image)))
        if pairs:
            splits[split] = _pairs_split(split, pairs)
    missing = [
        (os.path.join(list_dir, f"{split}.txt"), split)
        for split in ("train", "val")
        if split not in splits
    ]
    _warn_missing(splits, missing, "is missing or lists no image")
    return splits


def camvid_splits(input_dir: str) -> dict[str, Split]:
    """SegNet layout: each `<split>/*.png` with the same file names in `<split>annot/`."""
    splits = {}
    for split in sorted(tf.io.gfile.listdir(input_dir)):
        split = split.rstrip("/")
        annot = os.path.join(input_dir, split + "annot")
        if split.endswith("annot") or not _isdir(annot):
            continue
        images = _glob(os.path.join(input_dir, split, "*.png"))
        pairs = [
            (image, _require_file(os.path.join(annot, os.path.basename(image)), image))
            for image in images
        ]
        if pairs:
            splits[split] = _pairs_split(split, pairs)
    return splits


def synthetic_splits(
    *, seed: int, num_train: int, num_val: int, height: int, width: int
) -> dict[str, Split]:
    """The generated default dataset (see `ciss_tf.data.synthetic`), encoded as PNG."""

    def split(name: str, size: int) -> Split:
        def examples() -> Iterator[RawExample]:
            for index in range(size):
                image, label = synthetic.generate_example(seed, name, index, height, width)
                filename = f"synthetic_{name}_{index:05d}.png"
                yield RawExample(
                    filename=filename,
                    image_path=f"<synthetic {name} {index}>",
                    label_path=f"<synthetic {name} {index} label>",
                    image=cv2.imencode(".png", image[..., ::-1])[1].tobytes(),
                    label=cv2.imencode(".png", label)[1].tobytes(),
                )

        return Split(size, examples)

    return {name: split(name, size) for name, size in (("train", num_train), ("val", num_val))}
