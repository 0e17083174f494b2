"""tf.data pipelines over the TFRecord shards written by `data_prep`.

Training stream and exact resume
--------------------------------
The training stream is infinite and fully determined by the seed: element `k` (its
`sample_id`) is the same in every run. All randomness is stateless and keyed:

* epoch `e = k // N` (N = records in the split) reads the shards in an order drawn from
  (seed, e), interleaves them record by record, and shuffles consecutive windows of
  `shuffle_buffer` records with a permutation drawn from (seed, e, window);
* the augmentation of element `k` draws from (seed, k) only.

So `start_index=k` starts at epoch `k // N` directly and skips only the `k % N` first
serialized records of that epoch, before any decoding or augmentation. Records of an
epoch never cross into the next one. A window shuffle mixes less than a sliding
`Dataset.shuffle` buffer but, unlike it, does not depend on the global TF seed;
the raw readers give the train split in a random order, so any window is already a random
sample of it.

With a `tf.distribute.InputContext` of `n` input pipelines (one per worker):

* when there are at least `n` shard files, pipeline `i` reads only files `i, i + n, ...`
  as a stream of its own (order keyed by (seed, i)); its element `k` is global element
  `k * n + i`. Each worker reads 1/n of the data, and resume is exact for the same `n`;
* with fewer files, pipeline `i` keeps the elements with `k % n == i` of the single
  global stream (it reads every record but decodes only its own), so resume is exact
  whatever the number of workers.

`start_index` must be a multiple of `n`, as `step * global_batch` is.
"""

import tensorflow as tf

from ciss_tf.data import preprocessing, tfrecord
from ciss_tf.data.tfrecord import IGNORE_LABEL

_RNG_ALG = "philox"
# `augment` (PSPNet's: bilinear, padding) or `augment_original` (the authors' code).
AUGMENTATIONS = ("pspnet", "original")
# The original fits a short side below the crop to the crop plus this margin.
ORIGINAL_FIT_MARGIN = 30
_ORDER_KEY = 1
_AUGMENT_KEY = 2


def split_file_pattern(data_dir: str, split: str) -> str:
    """Returns `<data_dir>/<split>-*-of-*.tfrecord`.

    Raises:
        FileNotFoundError: no file matches.
    """
    pattern = f"{data_dir.rstrip('/')}/{split}-*-of-*.tfrecord"
    if not tf.io.gfile.glob(pattern):
        raise FileNotFoundError(
            f"No {split!r} shards in {data_dir} (looked for {pattern}); "
            "write them with `python -m data_prep.build_tfrecords`"
        )
    return pattern


def train_dataset(
    file_pattern: str,
    *,
    crop_size: tuple[int, int],
    batch_size: int,
    seed: int,
    num_classes: int,
    min_scale: float = 0.5,
    max_scale: float = 2.0,
    ignore_label: int = IGNORE_LABEL,
    start_index: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    shuffle_buffer: int = 128,
    cycle_length: int = 4,
    augmentation: str = "pspnet",
) -> tf.data.Dataset:
    """The infinite, augmented, batched training stream.

    Augmentation (`augment`, PSPNet style): random scale in [min_scale, max_scale] (image
    bilinear, label nearest), pad to the crop size (image with the mean pixel, label with
    `ignore_label`), one random crop shared by image and label, random mirror, then
    caffe-style normalisation; or the authors' (`augment_original`).

    Args:
        file_pattern: glob of the split's shards (see `split_file_pattern`).
        crop_size: (height, width) of the crops.
        batch_size: global batch size.
        seed: seed of the whole stream.
        num_classes: labels must lie in 0..num_classes-1 or equal `ignore_label`.
        min_scale: smallest random scale factor.
        max_scale: largest random scale factor.
        ignore_label: label of pixels left out of the loss.
        start_index: global index of the first element (to resume: step * batch_size).
        input_context: from `strategy.distribute_datasets_from_function`; None for one
            pipeline.
        shuffle_buffer: records per shuffled window.
        cycle_length: shards read at once.
        augmentation: one of `AUGMENTATIONS`: `augment` or `augment_original`.

    Returns:
        Dataset of dicts: `image` float32 [b, H, W, 3] (normalised), `label` int32
        [b, H, W], `sample_id` int64 [b] (the element's global index), with b the
        per-replica batch size; the last incomplete batch is dropped (never, as the stream
        is infinite).

    Raises:
        FileNotFoundError, ValueError: missing, empty or truncated shards, or a
            `start_index` that is not a multiple of the number of input pipelines.
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
    augment_fn = augment if augmentation == "pspnet" else augment_original
    paths = tfrecord.list_shards(file_pattern)
    num_pipelines, pipeline_id, local_batch = 1, 0, batch_size
    if input_context is not None:
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
        local_batch = input_context.get_per_replica_batch_size(batch_size)
    if start_index < 0 or start_index % num_pipelines:
        raise ValueError(
            f"start_index={start_index} must be a non-negative multiple of the "
            f"{num_pipelines} input pipelines"
        )
    # With a file for every pipeline, each reads only its own files as a stream of its own.
    by_file = 1 < num_pipelines <= len(paths)
    order_seed = _fold([seed, 0], _ORDER_KEY)
    if by_file:
        paths = paths[pipeline_id::num_pipelines]
        order_seed = _fold(order_seed, pipeline_id)
    epoch_size = sum(tfrecord.count_records(path) for path in paths)
    if epoch_size == 0:
        raise ValueError(f"No records in {', '.join(paths)}")
    augment_seed = _fold([seed, 0], _AUGMENT_KEY)

    def epoch_records(epoch):
        epoch_seed = _fold(order_seed, epoch)
        files = tf.random.experimental.stateless_shuffle(
            tf.constant(paths), seed=_fold(epoch_seed, 0), alg=_RNG_ALG
        )
        records = tf.data.Dataset.from_tensor_slices(files).interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(cycle_length, len(paths)),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        windows = records.batch(shuffle_buffer).enumerate()
        return windows.map(
            lambda w, batch: tf.random.experimental.stateless_shuffle(
                batch, seed=_fold(epoch_seed, w + 1), alg=_RNG_ALG
            )
        ).unbatch()

    first = start_index // num_pipelines if by_file else start_index
    first_epoch, offset = divmod(first, epoch_size)
    records = tf.data.Dataset.counter(first_epoch).flat_map(epoch_records).skip(offset)
    if by_file:
        # Element k of this pipeline's stream is global element k * n + i.
        ids = tf.data.Dataset.counter(first).map(lambda k: k * num_pipelines + pipeline_id)
        dataset = tf.data.Dataset.zip((ids, records))
    else:
        dataset = tf.data.Dataset.zip((tf.data.Dataset.counter(start_index), records))
        if num_pipelines > 1:
            dataset = dataset.shard(num_pipelines, pipeline_id)

    def prepare(sample_id, serialized):
        example = _decode(serialized, num_classes, ignore_label)
        image, label = augment_fn(
            example["image"],
            example["label"],
            seed=_fold(augment_seed, sample_id),
            crop_size=crop_size,
            min_scale=min_scale,
            max_scale=max_scale,
            ignore_label=ignore_label,
        )
        return {"image": image, "label": label, "sample_id": sample_id}

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def augment(
    image: tf.Tensor,
    label: tf.Tensor,
    *,
    seed: tf.Tensor,
    crop_size: tuple[int, int],
    min_scale: float,
    max_scale: float,
    ignore_label: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random scale, pad, crop and mirror of one decoded image and its label.

    The result is that of scaling the whole image (image bilinear, label nearest, as
    `tf.image.resize` with half-pixel centres), padding it at the bottom and right up to
    the crop (image with the mean pixel, label with `ignore_label`), cropping and mirroring.
    It is computed in the other order: the crop window is drawn in the scaled frame, and
    only the source pixels that window reads are gathered, cast and interpolated, so the
    cost follows the crop, not the image (a 2048x1024 Cityscapes image at scale 2 would
    otherwise be resized whole to 4096x2048 floats for one 713x713 crop).

    Args:
        image: [H, W, 3] as decoded (uint8 RGB).
        label: int32 [H, W].
        seed: int64 [2] stateless seed; equal seeds give equal results.
        crop_size: (height, width) of the output.
        min_scale: smallest scale factor.
        max_scale: largest scale factor.
        ignore_label: label of the padding.

    Returns:
        (image float32 [crop_h, crop_w, 3] normalised, label int32 [crop_h, crop_w]).
    """
    crop_h, crop_w = crop_size
    scale_seed, y_seed, x_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4, alg=_RNG_ALG)
    )
    scale = tf.random.stateless_uniform([], scale_seed, min_scale, max_scale, alg=_RNG_ALG)
    size = tf.shape(label)
    new_size = preprocessing.scaled_size(size, scale)
    # The window's corner in the scaled frame padded up to the crop.
    top = tf.random.stateless_uniform(
        [], y_seed, 0, tf.maximum(new_size[0], crop_h) - crop_h + 1, dtype=tf.int32,
        alg=_RNG_ALG,
    )
    left = tf.random.stateless_uniform(
        [], x_seed, 0, tf.maximum(new_size[1], crop_w) - crop_w + 1, dtype=tf.int32,
        alg=_RNG_ALG,
    )
    # The window's rows and columns that show the image; the rest is padding.
    rows = tf.range(top, tf.minimum(top + crop_h, new_size[0]))
    cols = tf.range(left, tf.minimum(left + crop_w, new_size[1]))
    image = _bilinear_window(image, rows, cols, size, new_size)
    label = tf.gather(
        tf.gather(label, _nearest_taps(rows, size[0], new_size[0])),
        _nearest_taps(cols, size[1], new_size[1]), axis=1,
    )
    pad_h, pad_w = crop_h - tf.size(rows), crop_w - tf.size(cols)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
    label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=ignore_label)

    mirror = tf.random.stateless_uniform([], flip_seed, alg=_RNG_ALG) < 0.5
    image, label = tf.cond(mirror, lambda: (image[:, ::-1], label[:, ::-1]), lambda: (image, label))
    image.set_shape([crop_h, crop_w, 3])
    label.set_shape([crop_h, crop_w])
    return image, label


def augment_original(
    image: tf.Tensor,
    label: tf.Tensor,
    *,
    seed: tf.Tensor,
    crop_size: tuple[int, int],
    min_scale: float,
    max_scale: float,
    ignore_label: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The authors' training augmentation (their `datasets/data.py`), keyed as `augment`.

    Random scale (sides rounded half to even, as `tf.round`), the image resized bicubically
    with corners aligned and the label by nearest neighbour; if a side is then below the
    crop, the image is resized again so that its shorter side is the crop's longer one plus
    `ORIGINAL_FIT_MARGIN` (bicubic and nearest, TF 1's legacy coordinates, the longer side
    truncated), never padded; a random crop, a random mirror; then brightness +-16/255 and
    contrast 0.9-1.1, clipped to 0..255, and the caffe normalisation.

    Args and returns as `augment` (`ignore_label` unused: nothing is padded).
    """
    del ignore_label
    crop_h, crop_w = crop_size
    scale_seed, y_seed, x_seed, flip_seed, bright_seed, contrast_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 6, alg=_RNG_ALG)
    )
    scale = tf.random.stateless_uniform([], scale_seed, min_scale, max_scale, alg=_RNG_ALG)
    size = tf.cast(tf.round(scale * tf.cast(tf.shape(label), tf.float32)), tf.int32)
    image = tf.raw_ops.ResizeBicubic(images=tf.cast(image, tf.float32)[None], size=size,
                                     align_corners=True)[0]
    label = tf.raw_ops.ResizeNearestNeighbor(images=label[None, ..., None], size=size,
                                             align_corners=True)[0, ..., 0]
    image, label = tf.cond(
        tf.logical_or(size[0] < crop_h, size[1] < crop_w),
        lambda: _fit_shorter_side(image, label, max(crop_size) + ORIGINAL_FIT_MARGIN),
        lambda: (image, label),
    )
    fitted = tf.shape(label)
    top = tf.random.stateless_uniform(
        [], y_seed, 0, fitted[0] - crop_h + 1, dtype=tf.int32, alg=_RNG_ALG)
    left = tf.random.stateless_uniform(
        [], x_seed, 0, fitted[1] - crop_w + 1, dtype=tf.int32, alg=_RNG_ALG)
    image = image[top : top + crop_h, left : left + crop_w]
    label = label[top : top + crop_h, left : left + crop_w]
    mirror = tf.random.stateless_uniform([], flip_seed, alg=_RNG_ALG) < 0.5
    image, label = tf.cond(mirror, lambda: (image[:, ::-1], label[:, ::-1]), lambda: (image, label))
    image = tf.image.stateless_random_brightness(image, 16.0 / 255.0, bright_seed)
    image = tf.image.stateless_random_contrast(image, 0.9, 1.1, contrast_seed)
    image = preprocessing.normalize_image(tf.clip_by_value(image, 0.0, 255.0))
    image.set_shape([crop_h, crop_w, 3])
    label.set_shape([crop_h, crop_w])
    return image, label


def _fit_shorter_side(image, label, shorter):
    """Both resized so that the shorter side is `shorter` (the original's `crop + 30`)."""
    height, width = tf.unstack(tf.shape(label))
    longer = lambda a, b: tf.cast(b * shorter / a, tf.int32)  # noqa: E731  (truncates)
    size = tf.cond(height <= width, lambda: tf.stack([shorter, longer(height, width)]),
                   lambda: tf.stack([longer(width, height), shorter]))
    image = tf.raw_ops.ResizeBicubic(images=image[None], size=size)[0]
    label = tf.raw_ops.ResizeNearestNeighbor(images=label[None, ..., None], size=size)
    return image, label[0, ..., 0]


def _nearest_taps(out_index, in_size, out_size):
    """Source index of each output index, as TF's half-pixel nearest resize picks it."""
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    position = tf.floor((tf.cast(out_index, tf.float32) + 0.5) * scale)
    return tf.clip_by_value(tf.cast(position, tf.int32), 0, in_size - 1)


def _linear_taps(out_index, in_size, out_size):
    """(lower, upper, weight of upper) of each output index, as TF's half-pixel bilinear."""
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    position = (tf.cast(out_index, tf.float32) + 0.5) * scale - 0.5
    lower = tf.floor(position)
    return (
        tf.maximum(tf.cast(lower, tf.int32), 0),
        tf.minimum(tf.cast(tf.math.ceil(position), tf.int32), in_size - 1),
        position - lower,
    )


def _bilinear_window(image, rows, cols, size, new_size):
    """Normalised pixels `rows` x `cols` of `image` bilinearly resized to `new_size`.

    Only the source rows the window reads are gathered and cast; the columns are
    interpolated from the span of columns it reads. The values are those of
    `tf.image.resize` on the whole normalised image up to float32 rounding (the order of
    the operations differs).
    """
    top, bottom, dy = _linear_taps(rows, size[0], new_size[0])
    left, right, dx = _linear_taps(cols, size[1], new_size[1])
    first, last = left[0], right[-1] + 1
    upper = tf.cast(tf.gather(image, top)[:, first:last], tf.float32)
    lower = tf.cast(tf.gather(image, bottom)[:, first:last], tf.float32)
    along_cols = upper + (lower - upper) * dy[:, None, None]
    west = tf.gather(along_cols, left - first, axis=1)
    east = tf.gather(along_cols, right - first, axis=1)
    return preprocessing.normalize_image(west + (east - west) * dx[None, :, None])


def eval_dataset(
    file_pattern: str,
    *,
    num_classes: int,
    ignore_label: int = IGNORE_LABEL,
    pad_to_multiple: int = 1,
) -> tf.data.Dataset:
    """Whole images at their original size, in shard order, batch 1.

    Args:
        file_pattern: glob of the split's shards (see `split_file_pattern`).
        num_classes: labels must lie in 0..num_classes-1 or equal `ignore_label`.
        ignore_label: label of pixels left out of the scores.
        pad_to_multiple: pad height and width at the bottom / right up to a multiple of
            this (image with the mean pixel, label with `ignore_label`, so the padding is
            never scored); 1 keeps the original size.

    Returns:
        Dataset of dicts: `image` float32 [1, H, W, 3] (normalised), `label` int32
        [1, H, W], `filename` string [1].
    """
    paths, _ = tfrecord.check_shards(file_pattern)

    def prepare(serialized):
        example = _decode(serialized, num_classes, ignore_label)
        image = preprocessing.normalize_image(example["image"])
        label = example["label"]
        size = tf.shape(label)
        pad = (-size) % pad_to_multiple
        image = tf.pad(image, [[0, pad[0]], [0, pad[1]], [0, 0]])
        label = tf.pad(label, [[0, pad[0]], [0, pad[1]]], constant_values=ignore_label)
        return {"image": image, "label": label, "filename": example["filename"]}

    dataset = tf.data.TFRecordDataset(paths).map(
        prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return dataset.batch(1).prefetch(tf.data.AUTOTUNE)


def _decode(serialized: tf.Tensor, num_classes: int, ignore_label: int) -> dict[str, tf.Tensor]:
    """Parses a record and stops with an error naming it if a label value is invalid."""
    example = tfrecord.parse_example(serialized)
    label = example["label"]
    valid = ((label >= 0) & (label < num_classes)) | (label == ignore_label)
    check = tf.debugging.Assert(
        tf.reduce_all(valid),
        [
            f"Label value outside 0..{num_classes - 1} and not {ignore_label} in record",
            example["filename"],
            "values:",
            tf.boolean_mask(label, ~valid)[:5],
        ],
    )
    with tf.control_dependencies([check]):
        example["label"] = tf.identity(label)
    return example


def _fold(seed, data) -> tf.Tensor:
    """A new stateless seed [2] from `seed` and an integer key."""
    return tf.random.experimental.stateless_fold_in(
        tf.cast(seed, tf.int64), tf.cast(data, tf.int64), alg=_RNG_ALG
    )
