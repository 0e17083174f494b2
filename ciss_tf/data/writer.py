"""The shard writer: checks every raw example, writes the shards of all splits, all or nothing.

The counterpart of `ciss_tf.data.tfrecord` (the layout) and `input_pipeline` (the reader);
its input comes from `ciss_tf.data.raw_readers`.

Shards are first written into a temporary folder inside the output folder and moved into
place only once every split is complete; on any failure the temporary folder is removed,
so a failed run leaves no shard behind (and earlier shards of the same split untouched).
"""

import dataclasses
import itertools
import math
import os
import re

import cv2
import numpy as np
import tensorflow as tf
from absl import logging

from ciss_tf.data import tfrecord
from ciss_tf.data.raw_readers import RawDataError, RawExample, Split

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_PNG_GRAY = 0
_RECORDS_PER_AUTO_SHARD = 256
_MAX_AUTO_SHARDS = 64


@dataclasses.dataclass(frozen=True)
class Skipped:
    """An example left out under `--skip_bad`."""

    split: str
    message: str


def check_example(
    raw: RawExample, label_map: np.ndarray, label_hint: str = ""
) -> tf.train.Example:
    """Decodes and checks one example and builds its record.

    Checks: the image decodes (PNG or JPEG, 3 channels), the label is a single-channel
    8-bit PNG that decodes, both have the same size, and every label value is known to
    `label_map`. The image bytes are stored untouched; the label is stored in train ids.

    Args:
        raw: the example as read from the dataset.
        label_map: int [256] table raw label value -> train id, -1 for invalid values.
        label_hint: appended to the error of an invalid label value (which files the
            dataset takes); empty for none.

    Returns:
        The record.

    Raises:
        RawDataError: the first failed check, naming the file at fault.
    """
    if raw.image.startswith(_PNG_SIGNATURE):
        image_format = "png"
    elif raw.image.startswith(_JPEG_SIGNATURE):
        image_format = "jpeg"
    else:
        raise RawDataError(f"{raw.image_path}: not a PNG or JPEG image")
    try:
        image = tf.io.decode_image(raw.image, channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError as e:
        raise RawDataError(
            f"{raw.image_path}: cannot decode image ({op_error_reason(e)})"
        ) from None

    if not raw.label.startswith(_PNG_SIGNATURE) or len(raw.label) < 26:
        raise RawDataError(f"{raw.label_path}: label is not a PNG file")
    # IHDR: bit depth at byte 24, colour type at byte 25.
    bit_depth, colour_type = raw.label[24], raw.label[25]
    if bit_depth != 8 or colour_type != _PNG_GRAY:
        raise RawDataError(
            f"{raw.label_path}: label must be a single-channel 8-bit PNG "
            f"(found bit depth {bit_depth}, PNG colour type {colour_type})"
        )
    try:
        label = tf.io.decode_png(raw.label, channels=1).numpy()[..., 0]
    except tf.errors.InvalidArgumentError as e:
        raise RawDataError(
            f"{raw.label_path}: cannot decode label ({op_error_reason(e)})"
        ) from None

    height, width = int(image.shape[0]), int(image.shape[1])
    if label.shape != (height, width):
        raise RawDataError(
            f"{raw.label_path}: label is {label.shape[0]}x{label.shape[1]} but image "
            f"{raw.image_path} is {height}x{width}"
        )
    train_ids = label_map[label]
    bad = np.unique(label[train_ids < 0])
    if bad.size:
        raise RawDataError(
            f"{raw.label_path}: invalid label values {bad[:10].tolist()} "
            f"(valid: {_ranges(np.flatnonzero(label_map >= 0))})"
            + (f"; {label_hint}" if label_hint else "")
        )
    label_png = cv2.imencode(".png", train_ids.astype(np.uint8))[1].tobytes()
    return tfrecord.make_example(
        image_encoded=raw.image,
        image_format=image_format,
        label_png=label_png,
        filename=raw.filename,
        height=height,
        width=width,
    )


def _ranges(values: np.ndarray) -> str:
    """Sorted integers as compact ranges: [0, 1, 2, 5, 255] -> "0-2, 5, 255"."""
    runs = np.split(values, np.flatnonzero(np.diff(values) != 1) + 1)
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)


def op_error_reason(error: tf.errors.OpError) -> str:
    """The op's own message, without TF's function-node prefix and op suffix."""
    message = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message)
    return re.sub(r"\s*\[Op:\w+\]", "", message).strip().splitlines()[0]


def auto_num_shards(num_examples: int) -> int:
    """About 256 records per shard, at least 1 and at most 64 shards."""
    return max(1, min(_MAX_AUTO_SHARDS, math.ceil(num_examples / _RECORDS_PER_AUTO_SHARD)))


def write_splits(
    splits: dict[str, Split],
    *,
    label_map: np.ndarray,
    output_dir: str,
    num_shards: int = 0,
    max_per_split: int = 0,
    skip_bad: bool = False,
    label_hint: str = "",
) -> tuple[dict[str, int], list[Skipped]]:
    """Checks and writes every split as `<split>-NNNNN-of-MMMMM.tfrecord` in `output_dir`.

    Args:
        splits: the splits to write.
        label_map: int [256] table raw label value -> train id, -1 for invalid values.
        output_dir: destination folder (created if needed). Older shards of the written
            splits are replaced.
        num_shards: shards per split; 0 picks `auto_num_shards`.
        max_per_split: write at most this many examples per split; 0 writes all.
        skip_bad: leave out examples that fail a check instead of stopping.
        label_hint: see `check_example`.

    Returns:
        (records written per split, the examples skipped).

    Raises:
        RawDataError: an example fails a check (without `skip_bad`), or a split ends up
            empty. No shard is left behind.
    """
    tf.io.gfile.makedirs(output_dir)
    staging = os.path.join(output_dir, f".build_tfrecords-{os.getpid()}.tmp")
    if tf.io.gfile.exists(staging):
        tf.io.gfile.rmtree(staging)
    tf.io.gfile.makedirs(staging)
    written, skipped, names = {}, [], {}
    try:
        for split, source in splits.items():
            size = min(source.size, max_per_split) if max_per_split else source.size
            shards = num_shards or auto_num_shards(size)
            names[split] = [tfrecord.shard_name(split, i, shards) for i in range(shards)]
            examples = itertools.islice(source.examples(), size)
            written[split] = 0
            for i, name in enumerate(names[split]):
                # Shard i holds examples [i * size // shards, (i + 1) * size // shards).
                count = (i + 1) * size // shards - i * size // shards
                with tf.io.TFRecordWriter(os.path.join(staging, name)) as writer:
                    for raw in itertools.islice(examples, count):
                        try:
                            record = check_example(raw, label_map, label_hint)
                        except RawDataError as e:
                            if not skip_bad:
                                raise
                            skipped.append(Skipped(split, str(e)))
                            continue
                        writer.write(record.SerializeToString())
                        written[split] += 1
            if not written[split]:
                raise RawDataError(f"split {split!r}: no valid example to write")
            logging.info("%s: %d records in %d shards", split, written[split], shards)
        for split, new_names in names.items():
            _move_into_place(staging, output_dir, split, new_names)
    finally:
        tf.io.gfile.rmtree(staging)
    return written, skipped


def _move_into_place(staging: str, output_dir: str, split: str, new_names: list[str]) -> None:
    old = tf.io.gfile.glob(os.path.join(output_dir, f"{split}-*-of-*.tfrecord"))
    for name in new_names:
        tf.io.gfile.rename(os.path.join(staging, name), os.path.join(output_dir, name), True)
    for path in old:
        if os.path.basename(path) not in new_names:
            tf.io.gfile.remove(path)


def write_report(path: str, skipped: list[Skipped]) -> None:
    """Writes one line `<split><TAB><message naming the file>` per skipped example."""
    with tf.io.gfile.GFile(path, "w") as f:
        for s in skipped:
            f.write(f"{s.split}\t{s.message}\n")
