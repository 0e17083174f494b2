"""Input pipeline: aligned augmentation, exact resume, evaluation, errors."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.data import input_pipeline as ip
from ciss_tf.data import preprocessing, tfrecord
from tests.helpers.raw_datasets import png

MEAN = np.array(preprocessing.MEAN_RGB, np.float32)


def write_shards(directory: Path, split: str, examples, num_shards: int = 1) -> str:
    """Writes (filename, image, label) triples round-robin into shards; returns the pattern."""
    directory.mkdir(parents=True, exist_ok=True)
    writers = [
        tf.io.TFRecordWriter(str(directory / tfrecord.shard_name(split, i, num_shards)))
        for i in range(num_shards)
    ]
    for k, (filename, image, label) in enumerate(examples):
        example = tfrecord.make_example(
            image_encoded=png(image),
            image_format="png",
            label_png=png(label),
            filename=filename,
            height=image.shape[0],
            width=image.shape[1],
        )
        writers[k % num_shards].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return ip.split_file_pattern(str(directory), split)


def rgb_of(normalised: np.ndarray) -> np.ndarray:
    return normalised[..., ::-1] + MEAN


# --- Training augmentation ----------------------------------------------------------------

H, W = 40, 56


def coordinate_label(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return ((y // 5 * 7 + x // 7) % 50).astype(np.uint8)


def test_augmentation_keeps_image_and_label_aligned(tmp_path):
    # The image stores each pixel's own coordinates (R = y, G = x), which bilinear resizing
    # interpolates exactly, so every output pixel tells which source position it shows;
    # nearest resizing of the label must pick the source pixel nearest to that position.
    y, x = np.mgrid[0:H, 0:W]
    image = np.stack([y, x, np.full_like(y, 200)], -1).astype(np.uint8)
    pattern = write_shards(tmp_path, "train", [("coords.png", image, coordinate_label(y, x))])
    dataset = ip.train_dataset(
        pattern, crop_size=(48, 48), batch_size=4, seed=3, num_classes=50, shuffle_buffer=1
    )
    padded = flipped = upscaled = 0
    for batch in dataset.take(8):
        for image_out, label_out in zip(
            batch["image"].numpy(), batch["label"].numpy(), strict=True
        ):
            pad = label_out == 255
            assert (image_out[pad] == 0).all()  # the mean pixel, normalised
            assert (np.abs(image_out[~pad]).max(-1) > 1).all()  # padding only at ignore
            cy, cx = rgb_of(image_out)[..., 0], rgb_of(image_out)[..., 1]
            near = np.floor(cy + 0.5).astype(int), np.floor(cx + 0.5).astype(int)
            tie = (np.abs(cy % 1 - 0.5) < 1e-3) | (np.abs(cx % 1 - 0.5) < 1e-3)
            check = ~pad & ~tie
            assert check.sum() > 0.5 * (~pad).sum()
            np.testing.assert_array_equal(label_out[check], coordinate_label(*near)[check])
            row = cx[0][~pad[0]]  # the top row always shows some of the image
            padded += pad.any()
            flipped += row[0] > row[-1]
            upscaled += np.abs(np.diff(row)).min() < 0.9
    # The 32 samples cover padding, mirroring and enlargement.
    assert padded and flipped and upscaled and flipped < 32


def constant_examples(n: int, size=(6, 8)):
    """Record k is uniformly coloured (k, 2k, 100) with label k % 5."""
    return [
        (
            f"img_{k}.png",
            np.full((*size, 3), (k, 2 * k, 100), np.uint8),
            np.full(size, k % 5, np.uint8),
        )
        for k in range(n)
    ]


def record_ids(batch) -> list[int]:
    """The record each augmented sample came from, read back from its colour."""
    return [int(round(rgb_of(img)[0, 0, 0])) for img in batch["image"].numpy()]


def flatten(dataset, count: int) -> dict[str, np.ndarray]:
    parts = {"image": [], "label": [], "sample_id": []}
    for batch in dataset.take(count):
        for key in parts:
            parts[key].append(batch[key].numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


@pytest.fixture(scope="module")
def constant_pattern(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("const"), "train", constant_examples(21), 3)


def train(pattern, **kwargs):
    options = dict(crop_size=(4, 4), batch_size=2, seed=11, num_classes=5, shuffle_buffer=4)
    return ip.train_dataset(pattern, **{**options, **kwargs})


def test_epochs_are_permutations_with_fresh_orders(constant_pattern):
    stream = flatten(train(constant_pattern, crop_size=(6, 8), max_scale=1.0, min_scale=1.0), 21)
    np.testing.assert_array_equal(stream["sample_id"], np.arange(42))
    ids = [int(round(rgb_of(img)[0, 0, 0])) for img in stream["image"]]
    assert sorted(ids[:21]) == list(range(21)) and sorted(ids[21:]) == list(range(21))
    assert ids[:21] != ids[21:] and ids[:21] != list(range(21))
    np.testing.assert_array_equal(stream["label"][:, 0, 0], np.array(ids) % 5)


@pytest.mark.parametrize("augmentation", ip.AUGMENTATIONS)
def test_start_index_resumes_the_exact_stream(constant_pattern, augmentation):
    # 21 records per epoch: start inside the first epoch, on the boundary, in the second.
    reference = flatten(train(constant_pattern, augmentation=augmentation), 17)
    for start in (5, 21, 26):
        resumed = flatten(train(constant_pattern, start_index=start,
                                augmentation=augmentation), 4)
        np.testing.assert_array_equal(resumed["sample_id"], np.arange(start, start + 8))
        np.testing.assert_array_equal(resumed["image"], reference["image"][start : start + 8])
        np.testing.assert_array_equal(resumed["label"], reference["label"][start : start + 8])
    other_seed = flatten(train(constant_pattern, seed=12), 4)
    assert not np.array_equal(other_seed["image"], reference["image"][:8])


def context(num_pipelines, pipeline_id):
    return tf.distribute.InputContext(
        num_input_pipelines=num_pipelines, input_pipeline_id=pipeline_id,
        num_replicas_in_sync=num_pipelines,
    )


def test_input_context_splits_the_global_stream(tmp_path):
    # One file for two pipelines: each keeps every other element of the one global stream.
    pattern = write_shards(tmp_path, "train", constant_examples(21), 1)
    reference = flatten(train(pattern, batch_size=1), 12)
    part = flatten(train(pattern, batch_size=4, input_context=context(2, 1), start_index=4), 2)
    assert part["image"].shape[0] == 4  # two batches of 4 // 2
    np.testing.assert_array_equal(part["sample_id"], [5, 7, 9, 11])
    np.testing.assert_array_equal(part["image"], reference["image"][[5, 7, 9, 11]])
    with pytest.raises(ValueError, match="multiple of the 2 input pipelines"):
        train(pattern, input_context=context(2, 1), start_index=3)


def test_pipelines_read_only_their_own_files_and_resume(constant_pattern):
    # Three files (record k in file k % 3) for two pipelines: pipeline 0 reads files 0 and 2
    # (14 records), pipeline 1 file 1 (7 records); each epoch of its own stream shows each
    # of its records once and no other.
    own = {0: [k for k in range(21) if k % 3 != 1], 1: [k for k in range(21) if k % 3 == 1]}
    for i in (0, 1):
        stream = flatten(train(constant_pattern, batch_size=2, input_context=context(2, i)),
                         2 * len(own[i]))
        np.testing.assert_array_equal(stream["sample_id"],
                                      np.arange(2 * len(own[i])) * 2 + i)
        ids = [int(round(rgb_of(img)[0, 0, 0])) for img in stream["image"]]
        epoch = len(own[i])
        assert sorted(ids[:epoch]) == own[i] and sorted(ids[epoch:]) == own[i]
        # Resuming at global element 2 * k starts this pipeline at its element k.
        for start in (6, 14, 20):
            resumed = flatten(train(constant_pattern, batch_size=2, input_context=context(2, i),
                                    start_index=start), 2)
            np.testing.assert_array_equal(resumed["image"],
                                          stream["image"][start // 2 : start // 2 + 2])
            np.testing.assert_array_equal(resumed["sample_id"],
                                          stream["sample_id"][start // 2 : start // 2 + 2])


def resize_then_crop(image, label, *, seed, crop_size, min_scale, max_scale, ignore_label):
    """The augmentation done the direct way: scale the whole image, pad, crop, mirror."""
    crop_h, crop_w = crop_size
    scale_seed, y_seed, x_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4, alg="philox"))
    scale = tf.random.stateless_uniform([], scale_seed, min_scale, max_scale, alg="philox")
    new_size = preprocessing.scaled_size(tf.shape(label), scale)
    image = tf.image.resize(preprocessing.normalize_image(image), new_size, method="bilinear")
    label = tf.image.resize(label[..., None], new_size, method="nearest")[..., 0]
    pad_h, pad_w = tf.maximum(crop_h - new_size[0], 0), tf.maximum(crop_w - new_size[1], 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
    label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=ignore_label)
    top = tf.random.stateless_uniform([], y_seed, 0, new_size[0] + pad_h - crop_h + 1,
                                      dtype=tf.int32, alg="philox")
    left = tf.random.stateless_uniform([], x_seed, 0, new_size[1] + pad_w - crop_w + 1,
                                       dtype=tf.int32, alg="philox")
    image = image[top : top + crop_h, left : left + crop_w]
    label = label[top : top + crop_h, left : left + crop_w]
    if tf.random.stateless_uniform([], flip_seed, alg="philox") < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return image, label


def test_augment_crops_before_resizing_with_the_values_of_resizing_first():
    # Random sizes, crops and scales 0.3-2.7 (enlarged, shrunk, padded): the crop-first
    # augmentation gives what scaling the whole image first gives: the same labels, and
    # image values up to float32 rounding (values below 256, spacing 1.5e-5, six rounded
    # operations in another order; a wrong source pixel moves a value by tens).
    rng = np.random.default_rng(0)
    kinds = set()
    for trial in range(60):
        h, w = (int(v) for v in rng.integers(5, 90, 2))
        image = tf.constant(rng.integers(0, 256, (h, w, 3)), tf.uint8)
        label = tf.constant(rng.integers(0, 20, (h, w)), tf.int32)
        options = dict(seed=tf.constant([trial, 7], tf.int64),
                       crop_size=tuple(int(v) for v in rng.integers(3, 60, 2)),
                       min_scale=0.3, max_scale=2.7, ignore_label=255)
        got = ip.augment(image, label, **options)
        want = resize_then_crop(image, label, **options)
        np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=0, atol=2e-4)
        np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
        kinds.add("padded" if (got[1].numpy() == 255).any() else "inside")
    assert kinds == {"padded", "inside"}


# --- Evaluation ---------------------------------------------------------------------------


def test_eval_dataset_keeps_sizes_order_and_names(tmp_path):
    rng = np.random.default_rng(1)
    examples = [
        (f"eval_{k}.png", rng.integers(0, 256, (5 + k, 7, 3), dtype=np.uint8), None)
        for k in range(3)
    ]
    examples = [
        (n, img, rng.integers(0, 4, img.shape[:2], dtype=np.uint8)) for n, img, _ in examples
    ]
    pattern = write_shards(tmp_path, "val", examples)
    got = list(ip.eval_dataset(pattern, num_classes=4))
    assert [g["filename"].numpy().tolist() for g in got] == [
        [b"eval_0.png"],
        [b"eval_1.png"],
        [b"eval_2.png"],
    ]
    for g, (_, image, label) in zip(got, examples, strict=True):
        assert g["image"].shape == (1, *image.shape) and g["label"].dtype == tf.int32
        np.testing.assert_array_equal(preprocessing.denormalize_image(g["image"][0]).numpy(), image)
        np.testing.assert_array_equal(g["label"][0].numpy(), label)
    padded = next(iter(ip.eval_dataset(pattern, num_classes=4, pad_to_multiple=4)))
    assert padded["image"].shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(padded["label"][0, :5, :7].numpy(), examples[0][2])
    assert (padded["label"][0, 5:].numpy() == 255).all() and (
        padded["label"][0, :, 7:] == 255
    ).numpy().all()
    assert (padded["image"][0, 5:].numpy() == 0).all()


# --- Errors -------------------------------------------------------------------------------


def test_truncated_shard_is_named(tmp_path):
    pattern = write_shards(tmp_path, "train", constant_examples(4), 2)
    shard = tmp_path / "train-00001-of-00002.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"{shard}: truncated"):
        ip.train_dataset(pattern, crop_size=(4, 4), batch_size=1, seed=0, num_classes=5)
    with pytest.raises(ValueError, match=f"{shard}: truncated"):
        ip.eval_dataset(pattern, num_classes=5)


def test_missing_shard_and_missing_split_are_named(tmp_path):
    pattern = write_shards(tmp_path, "train", constant_examples(4), 3)
    (tmp_path / "train-00001-of-00003.tfrecord").unlink()
    with pytest.raises(FileNotFoundError, match="Missing shard .*train-00001-of-00003.tfrecord"):
        ip.eval_dataset(pattern, num_classes=5)
    with pytest.raises(FileNotFoundError, match=f"No 'val' shards in {tmp_path}"):
        ip.split_file_pattern(str(tmp_path), "val")


def test_out_of_range_label_stops_with_the_record_name(tmp_path):
    examples = constant_examples(3)
    examples[1] = ("bad_label.png", examples[1][1], np.full((6, 8), 7, np.uint8))
    pattern = write_shards(tmp_path, "train", examples)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad_label.png"):
        list(ip.eval_dataset(pattern, num_classes=5))
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad_label.png"):
        list(train(pattern).take(3))
    # The ignore label is valid.
    examples[1] = ("ignore.png", examples[1][1], np.full((6, 8), 255, np.uint8))
    assert (
        len(list(ip.eval_dataset(write_shards(tmp_path / "ok", "val", examples), num_classes=5)))
        == 3
    )


def test_label_of_another_size_stops_with_the_record_name(tmp_path):
    examples = [("mismatch.png", np.zeros((6, 8, 3), np.uint8), np.zeros((6, 7), np.uint8))]
    pattern = write_shards(tmp_path, "val", examples)
    with pytest.raises(tf.errors.InvalidArgumentError, match="mismatch.png"):
        list(ip.eval_dataset(pattern, num_classes=5))


def test_original_augmentation_kernel_and_crop_fit_rule_by_hand():
    # A 10 x 20 image at scale 1 (min = max) with a 12 x 12 crop: the short side 10 is below
    # the crop, so the original fits it to 12 + 30 = 42 and the long side to int(20 * 42 / 10)
    # = 84, never padding. The label is each pixel's column (0..19): nearest resizing maps
    # the fitted 84 columns back to int(column * 20 / 84) (TF 1's legacy coordinates).
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (10, 20, 3)), tf.uint8)
    label = tf.constant(np.tile(np.arange(20, dtype=np.int32), (10, 1)))
    options = dict(crop_size=(12, 12), min_scale=1.0, max_scale=1.0, ignore_label=255)
    for trial in range(6):
        _, got = ip.augment_original(image, label, seed=tf.constant([trial, 1], tf.int64),
                                     **options)
        got = got.numpy()
        assert got.shape == (12, 12) and (got != 255).all()
        columns = got[0] if got[0, 0] < got[0, -1] else got[0, ::-1]  # undo a mirror
        fitted = np.floor(np.arange(84) * 20 / 84).astype(int)
        starts = [s for s in range(84 - 11) if (fitted[s : s + 12] == columns).all()]
        assert starts, columns
    # The scaling kernel: bicubic with corners aligned (TF's op), checked at scale 1.5 with
    # no crop to fit (15 x 30 >= 12 x 12) and no jitter visible in the label.
    options = dict(crop_size=(15, 30), min_scale=1.5, max_scale=1.5, ignore_label=255)
    got_image, got_label = ip.augment_original(image, label, seed=tf.constant([0, 2], tf.int64),
                                               **options)
    want = tf.compat.v1.image.resize_nearest_neighbor(label[None, ..., None], (15, 30),
                                                      align_corners=True)[0, ..., 0].numpy()
    assert (got_label.numpy() == want).all() or (got_label.numpy() == want[:, ::-1]).all()
    bicubic = tf.compat.v1.image.resize_bicubic(tf.cast(image, tf.float32)[None], (15, 30),
                                                align_corners=True)[0].numpy()
    rgb = rgb_of(got_image.numpy())
    if (got_label.numpy() != want).any():
        rgb = rgb[:, ::-1]
    # Brightness (+-0.06) and contrast (x 0.9-1.1 about the mean) jitter, then clipping.
    mean = bicubic.mean(axis=(0, 1))
    factor = np.median((rgb - rgb.mean(axis=(0, 1))) / (bicubic - mean + 1e-3))
    assert 0.9 <= factor <= 1.1
    want_rgb = mean + factor * (bicubic - mean)
    inside = (want_rgb > 1) & (want_rgb < 254)  # not clipped
    assert inside.mean() > 0.9
    np.testing.assert_allclose(rgb[inside], want_rgb[inside], atol=0.5)
