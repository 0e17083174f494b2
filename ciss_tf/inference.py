"""Inference at the original image size, shared by evaluation, prediction and export.

The network predicts at output stride 8. Logits go back to the input size with the
original's `Interp` (bilinear, corners aligned: `ops.resize_bilinear`), context maps with
nearest neighbour on the same grid (`ops.resize_labels`).

`Segmenter` adds PSPNet's evaluation protocol on top of the unrolled steps:

* multi-scale: the image is resized by each factor of `scales` (corners aligned, like the
  logits), its class probabilities are resized back and averaged over the scales;
* flip: each window also runs mirrored; its probabilities, mirrored back, are averaged in;
* sliding window: a (scaled) image taller or wider than `crop_size` is covered by
  crop-sized windows with a stride of 2/3 of the crop, the last window of a row or column
  flush with the border; a window smaller than the crop (the image is smaller along that
  axis) is padded at the bottom / right with 0, the mean pixel after normalisation.
  Probabilities of overlapping windows are averaged. An image that fits in the crop runs
  whole, without padding: our network takes any size (PSPNet's Caffe net took one), so
  whole-image inference is what a crop larger than the image means here.

Every window runs the full unroll on its own: its context maps come from its own p-maps.
Probabilities are those of each requested step t (softmax of that step's logits), so one
unroll to `max(steps)` gives every step.

The module also holds what the three command-line tools share: building the model from
the flags (or from a run folder's saved config, `load_run`) and restoring a checkpoint,
the flags parser that lets them read an experiment's flagfile (which also holds training
flags), and the check that their outputs are local paths.
"""

import itertools
import math
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags

from ciss_tf import checkpoints, cli, config, ops
from ciss_tf.model import CissNet

POLICIES = ("greedy", "sample")
STRIDE_RATE = 2 / 3
# Size of the dummy batch that creates every variable before a checkpoint is restored.
_BUILD_SIZE = 33


def unroll(model, images, num_steps, *, sample=False, sample_ids=None, seed=0):
    """Runs a CiSS-Net for `num_steps` steps, or a PSPNet (step 0 only).

    Args:
      model: a `CissNet` or a `PSPNet`.
      images: normalised images, float32 `[B, H, W, 3]`.
      num_steps: T.
      sample: sample the actions instead of taking the greedy one.
      sample_ids: int64 `[B]` keys of the action noise (see `model.sample_actions`).
      seed: seed of the action noise.

    Returns:
      (logits float32 `[T+1, B, h, w, Nc]`, context int32 `[T, B, h, w]`), at stride 8.

    Raises:
      ValueError: a PSPNet asked for steps beyond 0.
    """
    if isinstance(model, CissNet):
        outputs = model(
            images, training=False, num_steps=num_steps, sample=sample, sample_ids=sample_ids,
            seed=seed, bootstrap=False,
        )
        return tf.cast(outputs["logits"], tf.float32), outputs["context"]
    if num_steps:
        raise ValueError(f"a {type(model).__name__} has step 0 only, asked for {num_steps} steps")
    logits = tf.cast(model(images, training=False)["logits"], tf.float32)
    shape = tf.concat([[0], tf.shape(logits)[:3]], axis=0)
    return logits[tf.newaxis], tf.zeros(shape, tf.int32)


def upsample_logits(logits, size):
    """Logits `[B, h, w, Nc]` to `size` (bilinear, corners aligned), float32."""
    return ops.resize_bilinear(tf.cast(logits, tf.float32), size)


def upsample_context(context, size):
    """Context maps `[B, h, w]` to `size` (nearest neighbour on the logits' grid)."""
    return ops.resize_labels(context, size)


def scaled_size(size, scale):
    """`(height, width)` times `scale`, rounded half up, at least 1 pixel."""
    return tuple(max(1, math.floor(s * scale + 0.5)) for s in size)


def rescale_images(images, scale):
    """`images` `[B, H, W, C]` resized by `scale` (sizes as `scaled_size`; any shape)."""
    if scale == 1.0:
        return images
    size = tf.cast(tf.shape(images)[1:3], tf.float64)
    scaled = tf.maximum(tf.cast(tf.floor(size * scale + 0.5), tf.int32), 1)
    return ops.resize_bilinear(images, tf.unstack(scaled))


def define_input_scale_flag():
    """`--input_scale` of the tools that run whole images (predict, export)."""
    flags.DEFINE_float(
        "input_scale", 1.0,
        "Resize each image by this factor before the network and the outputs back to the "
        "image size: the scale the model was trained at (e.g. 0.5 for the CamVid flagfiles).",
    )
    flags.register_validator(
        "input_scale", lambda value: math.isfinite(value) and value > 0,
        message="--input_scale must be a positive number",
    )


def sliding_windows(size, crop_size, stride_rate=STRIDE_RATE):
    """PSPNet's window grid over an image.

    Along each axis the stride is `ceil(crop * stride_rate)`; window k starts at
    `k * stride`, is cut at the border and then shifted back so that it is `crop` long
    again (or starts at 0 if the image is shorter than the crop).

    Args:
      size: image `(height, width)`.
      crop_size: window `(height, width)`.
      stride_rate: stride as a fraction of the crop (2/3: windows overlap by 1/3).

    Returns:
      A list of `(top, left, bottom, right)`, row by row.
    """
    def starts(length, crop):
        stride = math.ceil(crop * stride_rate)
        count = max(math.ceil((length - crop) / stride), 0) + 1
        spans = []
        for k in range(count):
            end = min(k * stride + crop, length)
            spans.append((max(end - crop, 0), end))
        return spans

    return [
        (top, left, bottom, right)
        for top, bottom in starts(size[0], crop_size[0])
        for left, right in starts(size[1], crop_size[1])
    ]


class Segmenter:
    """Class ids of chosen steps at the size of the input images.

    Args:
      model: a `CissNet` (or a `PSPNet`, with `steps=(0,)`).
      steps: steps t whose predictions are wanted, e.g. `(0, 2, 4, 6)`; the model is
        unrolled once, to `max(steps)`.
      scales: image scale factors (PSPNet's multi-scale: `0.5, 0.75, ..., 1.75`).
      flip: also run every window mirrored.
      crop_size: `(height, width)` of the sliding window, None for whole images.
      policy: "greedy" (argmax of the policy) or "sample" (Bernoulli actions keyed by
        `(seed, step, sample id)`).
      seed: seed of sampled actions.

    Example:
      >>> segmenter = Segmenter(net, (0, 2))
      >>> segmenter.labels(images).shape   # [2 steps, B, H, W]
    """

    def __init__(self, model, steps, *, scales=(1.0,), flip=False, crop_size=None,
                 policy="greedy", seed=0):
        steps = tuple(int(t) for t in steps)
        if not steps or min(steps) < 0:
            raise ValueError(f"steps must be non-negative integers, got {steps}")
        scales = tuple(float(s) for s in scales)
        if not scales or min(scales) <= 0:
            raise ValueError(f"scales must be positive, got {scales}")
        if crop_size is not None:
            crop_size = tuple(int(c) for c in crop_size)
            if len(crop_size) != 2 or min(crop_size) < 1:
                raise ValueError(f"crop_size must be (height, width) > 0, got {crop_size}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.model = model
        self.steps = steps
        self.scales = scales
        self.flip = flip
        self.crop_size = crop_size
        self.sample = policy == "sample"
        self.seed = seed
        self._single_pass = scales == (1.0,) and not flip and crop_size is None
        signature = [
            tf.TensorSpec([None, None, None, 3], tf.float32),
            tf.TensorSpec([None], tf.int64),
        ]
        self._step_logits = tf.function(self._step_logits_fn, input_signature=signature)
        self._whole_image_labels = tf.function(
            self._whole_image_labels_fn, input_signature=signature
        )

    def _step_logits_fn(self, images, sample_ids):
        """Logits of the requested steps, `[S, B, h, w, Nc]`."""
        logits, _ = unroll(
            self.model, images, max(self.steps), sample=self.sample, sample_ids=sample_ids,
            seed=self.seed,
        )
        return tf.gather(logits, self.steps)

    def _whole_image_labels_fn(self, images, sample_ids):
        size = tf.unstack(tf.shape(images)[1:3])
        logits = self._step_logits_fn(images, sample_ids)
        # argmax of the logits is that of the probabilities: no softmax over the full image.
        return tf.stack([
            tf.argmax(upsample_logits(logits[s], size), axis=-1, output_type=tf.int32)
            for s in range(len(self.steps))
        ])

    def labels(self, images, sample_ids=None):
        """Class ids `[S, B, H, W]` int32 of the requested steps, at the input size.

        Args:
          images: normalised images `[B, H, W, 3]`.
          sample_ids: int64 `[B]` global indices of the images (keys of sampled actions);
            default 0, 1, ...

        Returns:
          int32 tensor, `labels[s]` for step `steps[s]`.
        """
        if self._single_pass:
            return self._whole_image_labels(*_inputs(images, sample_ids))
        return tf.stack([
            tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            for probabilities in self.probabilities(images, sample_ids)
        ])

    def probabilities(self, images, sample_ids=None):
        """Class probabilities averaged over scales, flips and windows, one step at a time.

        Args:
          images: normalised images `[B, H, W, 3]`.
          sample_ids: as for `labels`.

        Yields:
          For each requested step in order, float32 `[B, H, W, Nc]` (one step at a time
          keeps a single full-size map in memory).
        """
        images, sample_ids = _inputs(images, sample_ids)
        size = tuple(int(d) for d in images.shape[1:3])
        # Low-resolution logits of every window are kept; full-size maps are built per step.
        views_by_scale = [
            (scale_size, [
                (window, padded, self._window_logits(scaled, window, padded, sample_ids))
                for window, padded in self._windows(scale_size)
            ])
            for scale_size, scaled in self._scaled_images(images, size)
        ]
        for s in range(len(self.steps)):
            total = 0.0
            for scale_size, views in views_by_scale:
                num_classes = views[0][2].shape[-1]
                summed = np.zeros([images.shape[0], *scale_size, num_classes], np.float32)
                count = np.zeros([*scale_size, 1], np.float32)
                for (top, left, bottom, right), padded, logits in views:
                    probabilities = self._window_probabilities(logits[s], padded)
                    summed[:, top:bottom, left:right] += probabilities[
                        :, : bottom - top, : right - left
                    ].numpy()
                    count[top:bottom, left:right] += 1.0
                averaged = tf.constant(summed / count)
                if scale_size != size:
                    averaged = ops.resize_bilinear(averaged, size)
                total += averaged
            yield total / len(self.scales)

    def _scaled_images(self, images, size):
        for scale in self.scales:
            scale_size = scaled_size(size, scale)
            yield scale_size, (
                images if scale_size == size else ops.resize_bilinear(images, scale_size)
            )

    def _windows(self, size):
        """(window, padded window size) pairs covering an image of `size`."""
        crop = self.crop_size
        if crop is None or (size[0] <= crop[0] and size[1] <= crop[1]):
            return [((0, 0, *size), size)]
        return [(window, crop) for window in sliding_windows(size, crop)]

    def _window_logits(self, images, window, padded, sample_ids):
        top, left, bottom, right = window
        tile = images[:, top:bottom, left:right]
        tile = tf.pad(tile, [[0, 0], [0, padded[0] - (bottom - top)],
                             [0, padded[1] - (right - left)], [0, 0]])
        if self.flip:
            tile = tf.concat([tile, tile[:, :, ::-1]], axis=0)
            sample_ids = tf.concat([sample_ids, sample_ids], axis=0)
        return self._step_logits(tile, sample_ids)

    def _window_probabilities(self, logits, padded):
        """Softmax at the window size; with `flip`, averaged with the mirrored half."""
        probabilities = tf.nn.softmax(upsample_logits(logits, padded))
        if not self.flip:
            return probabilities
        plain, mirrored = tf.split(probabilities, 2, axis=0)
        return (plain + mirrored[:, :, ::-1]) / 2.0


def _inputs(images, sample_ids):
    """Images as float32 and sample ids as int64 (default 0, 1, ...)."""
    images = tf.convert_to_tensor(images, tf.float32)
    if sample_ids is None:
        sample_ids = tf.range(tf.shape(images)[0], dtype=tf.int64)
    return images, tf.cast(sample_ids, tf.int64)


def load_model(num_classes, checkpoint, stage="ciss"):
    """The model the flags describe (`config.model_from_flags`), restored from a checkpoint.

    Args:
      num_classes: classes of the dataset.
      checkpoint: checkpoint prefix or folder (its latest checkpoint).
      stage: "ciss" or "pspnet".

    Returns:
      (model, checkpoint prefix read).

    Raises:
      ValueError: no checkpoint there, it is unreadable, or it does not fit the model
        (the message names the checkpoint).
    """
    path = checkpoints.resolve(checkpoint)
    return _restored(config.model_from_flags(num_classes, stage), path), path


def load_run(run_dir):
    """The model of a training run, built as it was trained, and its latest checkpoint.

    The model comes from the run's `model_config.json` (written by the trainer), not from
    flags: the caller needs no flagfile, and settings given on the training command line
    (e.g. `--random_keep_rate`) are kept.

    Args:
      run_dir: the run's `--model_dir`.

    Returns:
      (model, checkpoint prefix read).

    Raises:
      ValueError: no config or checkpoint there, or they do not fit each other.
    """
    path = checkpoints.resolve(run_dir)
    return _restored(checkpoints.model_from_config(run_dir), path), path


def _restored(model, path):
    """`model` built and restored from the checkpoint prefix `path`."""
    dummy = tf.zeros([1, _BUILD_SIZE, _BUILD_SIZE, 3])
    # One step creates every variable (Bias Net and Context Net included).
    model(dummy, training=False, **({"num_steps": 1} if isinstance(model, CissNet) else {}))
    try:
        checkpoints.restore_model(model, path)
    except tf.errors.OpError as error:
        lines = str(error.message).strip().splitlines() or [""]
        raise ValueError(f"cannot read checkpoint {path}: {lines[0][:300]}") from None
    return model


def check_local_output(path, flag):
    """Raises ValueError naming `flag` when the output `path` is a URL (gs://, s3://, ...).

    The tools commit what they write with a local rename (TF Serving never sees half a
    version; a report is whole or absent). Object stores have no atomic rename, and Python's
    `os` functions would take `gs://bucket/x` for a local folder named `gs:`: a run would
    seem to succeed and leave its output next to the working directory.
    """
    if path and "://" in path:
        raise ValueError(
            f"{flag}={path}: outputs are written to local paths only (committed by a local "
            "rename); write locally, then copy (e.g. gsutil -m cp -r)"
        )


def parse_flags(argv):
    """Flags parser of the inference tools: skips foreign flags in flagfiles.

    The tools read an experiment's flagfile (`--flagfile=FILE` or `--flagfile FILE`), which
    also holds training flags; those are dropped (flags given on the command line itself
    must all be known). Pass it to `app.run(main, flags_parser=parse_flags)`.

    Args:
      argv: the full command line, program name first.

    Returns:
      The arguments left after parsing, program name first.
    """
    flag_values = flags.FLAGS
    kept = []
    args = iter(argv[1:])
    try:
        for arg in args:
            name = arg.lstrip("-")
            if name.startswith("flagfile="):
                directive = [arg]
            elif name == "flagfile":
                # `--flagfile FILE`: absl takes the next argument as the file.
                directive = [arg, *itertools.islice(args, 1)]
            else:
                kept.append(arg)
                continue
            expanded = flag_values.read_flags_from_files(directive, force_gnu=False)
            kept.extend(a for a in expanded if _is_defined(a, flag_values))
        return flag_values([argv[0], *kept])
    except flags.Error as error:
        raise SystemExit(f"error: {error}") from None


def _is_defined(arg, flag_values):
    """Whether `--name[=value]` (or `--noname`) names a flag of `flag_values`."""
    if not arg.startswith("-"):
        return True
    name = arg.lstrip("-").split("=", 1)[0]
    return name in flag_values or (name.startswith("no") and name[2:] in flag_values)


def run_tool(define_flags, body):
    """Runs an inference tool: its flags, `body()`, and one `error:` line on bad input.

    Args:
      define_flags: defines the tool's flags (not done at import, see `evaluate`).
      body: the tool itself, reading the parsed flags.
    """

    def main(argv):
        if len(argv) > 1:
            sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}")
        try:
            body()
        except (ValueError, OSError) as error:
            sys.exit(f"error: {error}")
        except tf.errors.OpError as error:
            sys.exit(f"error: {error.message.strip().splitlines()[0]}")

    define_flags()
    cli.list_flags_in_help(define_flags.__module__, config.__name__, __name__)
    app.run(main, flags_parser=parse_flags)
