"""PSPNet's evaluation protocol on top of the unrolled steps (`Segmenter`).

* multi-scale: the image is resized by each factor of `scales` (corners aligned, like the
  logits), its class probabilities are resized back and averaged over the scales;
* flip: each window also runs mirrored; its probabilities, mirrored back, are averaged in;
* sliding window: a (scaled) image taller or wider than `crop_size` is covered by
  crop-sized windows with a stride of 2/3 of the crop, the last window of a row or column
  flush with the border; a window smaller than the crop (the image is smaller along that
  axis) is padded at the bottom / right with 0, the mean pixel after normalisation.
  Probabilities of overlapping windows are averaged. An image that fits in the crop runs
  whole, without padding (`inference.segment`): our network takes any size.

Every window runs the full unroll on its own: its context maps come from its own p-maps.
Probabilities are those of each requested step t (softmax of that step's logits), so one
unroll to `max(steps)` gives every step.
"""

import math

import numpy as np
import tensorflow as tf

from ciss_tf.data import preprocessing
from ciss_tf.modeling import inference, ops

POLICIES = ("greedy", "sample")
STRIDE_RATE = 2 / 3


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
        logits, _ = inference.unroll(
            self.model, images, max(self.steps), sample=self.sample, sample_ids=sample_ids,
            seed=self.seed,
        )
        return tf.gather(logits, self.steps)

    def _whole_image_labels_fn(self, images, sample_ids):
        # argmax of the logits is that of the probabilities: no softmax over the full image.
        return inference.segment(
            self.model, images, max(self.steps), label_steps=self.steps, context_steps=(),
            sample=self.sample, sample_ids=sample_ids, seed=self.seed,
        )["labels"]

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
            scale_size = tuple(int(v) for v in preprocessing.scaled_size(size, scale))
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
        probabilities = tf.nn.softmax(inference.upsample_logits(logits, padded))
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
