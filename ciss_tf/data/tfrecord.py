"""The one TFRecord layout shared by `ciss_tf.data.writer` and the input pipeline (reader).

Each record is a `tf.train.Example` with the DeepLab segmentation keys: the image as stored
on disk (PNG or JPEG bytes, untouched), its file name and size, and the label map already in
train ids (ignore = 255) as a single-channel 8-bit PNG. Shards are named
`<split>-NNNNN-of-MMMMM.tfrecord`.
"""

import os
import re
import struct

import tensorflow as tf

IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_FILENAME = "image/filename"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
LABEL_ENCODED = "image/segmentation/class/encoded"
LABEL_FORMAT = "image/segmentation/class/format"
# The label value of unlabelled pixels in the stored train ids, for every dataset: the one
# definition (the writer writes it, the pipeline, losses and metrics leave it out).
IGNORE_LABEL = 255

_FEATURES = {
    IMAGE_ENCODED: tf.io.FixedLenFeature((), tf.string),
    IMAGE_FORMAT: tf.io.FixedLenFeature((), tf.string),
    IMAGE_FILENAME: tf.io.FixedLenFeature((), tf.string),
    IMAGE_HEIGHT: tf.io.FixedLenFeature((), tf.int64),
    IMAGE_WIDTH: tf.io.FixedLenFeature((), tf.int64),
    LABEL_ENCODED: tf.io.FixedLenFeature((), tf.string),
    LABEL_FORMAT: tf.io.FixedLenFeature((), tf.string),
}

_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")
# A TFRecord is [uint64 length][uint32 crc of length][data][uint32 crc of data].
_HEADER_BYTES = 12
_FOOTER_BYTES = 4


def shard_name(split: str, index: int, num_shards: int) -> str:
    """Returns the file name of shard `index` (0-based) of `num_shards` for `split`."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(
    *,
    image_encoded: bytes,
    image_format: str,
    label_png: bytes,
    filename: str,
    height: int,
    width: int,
) -> tf.train.Example:
    """Builds one record.

    Args:
        image_encoded: the encoded image (PNG or JPEG bytes).
        image_format: "png" or "jpeg".
        label_png: single-channel 8-bit PNG of train ids (ignore = 255).
        filename: the original image file name, carried through to predictions.
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        The `tf.train.Example`; call `SerializeToString()` to write it.
    """
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                IMAGE_ENCODED: _bytes(image_encoded),
                IMAGE_FORMAT: _bytes(image_format.encode()),
                IMAGE_FILENAME: _bytes(filename.encode()),
                IMAGE_HEIGHT: _int64(height),
                IMAGE_WIDTH: _int64(width),
                LABEL_ENCODED: _bytes(label_png),
                LABEL_FORMAT: _bytes(b"png"),
            }
        )
    )


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses and decodes one serialized record (graph-safe, for `tf.data.Dataset.map`).

    Args:
        serialized: scalar string tensor.

    Returns:
        `decode_features(parse_features(serialized))`.
    """
    return decode_features(parse_features(serialized))


def parse_features(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """The stored features of one serialized record, undecoded, keyed as in `make_example`."""
    return tf.io.parse_single_example(serialized, _FEATURES)


def decode_features(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Decodes the features of one record (`parse_features`).

    Separate from `parse_example` for callers that also need the encoded image as stored.

    Args:
        features: the record's features, keyed as in `make_example`.

    Returns:
        A dict with `image` uint8 [H, W, 3], `label` int32 [H, W] (train ids, ignore 255),
        `filename` string scalar. Decoding fails with an `InvalidArgumentError` naming the
        record's file name if the label size differs from the image size.
    """
    filename = features[IMAGE_FILENAME]
    image = tf.io.decode_image(features[IMAGE_ENCODED], channels=3, expand_animations=False)
    label = tf.io.decode_png(features[LABEL_ENCODED], channels=1)
    same_size = tf.debugging.Assert(
        tf.reduce_all(tf.shape(image)[:2] == tf.shape(label)[:2]),
        ["Label size differs from image size in record", filename],
    )
    with tf.control_dependencies([same_size]):
        label = tf.cast(label[..., 0], tf.int32)
    image.set_shape([None, None, 3])
    return {"image": image, "label": label, "filename": filename}


def check_shards(file_pattern: str) -> tuple[list[str], list[int]]:
    """Lists the shards matching a pattern and counts their records without decoding them.

    `list_shards`, then `count_records` of each.

    Args:
        file_pattern: glob such as `/data/train-*-of-*.tfrecord`.

    Returns:
        (sorted shard paths, number of records in each).

    Raises:
        FileNotFoundError: nothing matches, or a shard of a numbered set is missing.
        ValueError: a shard is truncated or not a TFRecord file (the message names it).
    """
    paths = list_shards(file_pattern)
    return paths, [count_records(path) for path in paths]


def list_shards(file_pattern: str) -> list[str]:
    """The sorted shards matching a pattern, checked to form complete `-of-MMMMM` sets.

    Raises:
        FileNotFoundError: nothing matches, or a shard of a numbered set is missing.
    """
    paths = sorted(tf.io.gfile.glob(file_pattern))
    if not paths:
        raise FileNotFoundError(f"No TFRecord file matches {file_pattern}")
    _check_complete_sets(paths)
    return paths


def count_records(path: str) -> int:
    """The records of one TFRecord file, counted from their headers (one seek per record).

    Cheap even for large files; it catches the truncated file that would otherwise
    surface deep inside a running `tf.data` pipeline without a file name.

    Raises:
        ValueError: the file is truncated or not a TFRecord file (the message names it).
    """
    size = tf.io.gfile.stat(path).length
    count = offset = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while offset < size:
            f.seek(offset)
            header = f.read(_HEADER_BYTES)
            if len(header) < _HEADER_BYTES:
                raise ValueError(f"{path}: truncated TFRecord (header at byte {offset})")
            (length,) = struct.unpack("<Q", header[:8])
            offset += _HEADER_BYTES + length + _FOOTER_BYTES
            if offset > size:
                raise ValueError(
                    f"{path}: truncated or not a TFRecord file (record {count} needs "
                    f"{offset} bytes, the file has {size})"
                )
            count += 1
    return count


def _check_complete_sets(paths: list[str]) -> None:
    sets: dict[tuple[str, str, int], set[int]] = {}
    for path in paths:
        match = _SHARD_RE.match(os.path.basename(path))
        if match:
            key = (os.path.dirname(path), match["split"], int(match["count"]))
            sets.setdefault(key, set()).add(int(match["index"]))
    for (directory, split, count), present in sets.items():
        missing = sorted(set(range(count)) - present)
        if missing:
            raise FileNotFoundError(
                "Missing shard " + os.path.join(directory, shard_name(split, missing[0], count))
            )
