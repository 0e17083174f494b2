"""The one inference path: images -> labels and context maps at the input size.

The network predicts at output stride 8. Logits go back to the input size with the
original's `Interp` (bilinear, corners aligned: `ops.resize_bilinear`), context maps with
nearest neighbour on the same grid (`ops.resize_labels`). `segment` is used by evaluation
(through `evaluation.segmenter.Segmenter`), prediction, serving, the demo and the
TensorBoard panel; `unroll` gives the raw per-step outputs.
"""

import tensorflow as tf

from ciss_tf.modeling import ops
from ciss_tf.modeling.ciss_net import CissNet
from ciss_tf.modeling.pspnet import PSPNet


def unroll(model, images, num_steps, *, sample=False, sample_ids=None, seed=0):
    """Runs a CiSS-Net for `num_steps` steps, or a PSPNet (step 0 only).

    Args:
      model: a `CissNet`, a `PSPNet` or a `serving.fast_inference.FastCissNet` (greedy).
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
    if isinstance(model, PSPNet):
        if num_steps:
            raise ValueError(f"a PSPNet has step 0 only, asked for {num_steps} steps")
        logits = tf.cast(model(images, training=False)["logits"], tf.float32)
        shape = tf.concat([[0], tf.shape(logits)[:3]], axis=0)
        return logits[tf.newaxis], tf.zeros(shape, tf.int32)
    # A rewrite for inference (`serving.fast_inference.FastCissNet`): greedy actions only.
    if sample:
        raise ValueError(f"a {type(model).__name__} takes greedy actions only")
    outputs = model(images, num_steps=num_steps)
    return outputs["logits"], outputs["context"]


def segment(model, images, num_steps, *, size=None, label_steps=None, context_steps=None,
            probabilities=False, sample=False, sample_ids=None, seed=0):
    """The inference path of every tool: unroll, resize back (corners aligned), argmax.

    Evaluation, prediction, the SavedModel, the demo and the TensorBoard panel all go
    through here, so their labels are the same for the same logits.

    Args:
      model: a `CissNet`, a `PSPNet` (T = 0 only) or a `fast_inference.FastCissNet`.
      images: normalised images, float32 `[B, h', w', 3]`, at the network's input scale.
      num_steps: T.
      size: `(H, W)` of the outputs (default: the images' size).
      label_steps: the steps t whose labels are returned (default 0..T).
      context_steps: the steps t < T whose context maps K_t are returned (default all).
      probabilities: also return the class probabilities of the last of `label_steps`.
      sample, sample_ids, seed: sampled actions instead of greedy ones (see `unroll`).

    Returns:
      A dict: `labels` int32 `[len(label_steps), B, H, W]`; `context` int32
      `[len(context_steps), B, H, W]` (nearest on the logits' grid, 0 = uncertain);
      `small_logits` float32 `[T+1, B, h, w, Nc]` and `small_context` int32 `[T, B, h, w]`
      at stride 8; `probabilities` float32 `[B, H, W, Nc]` when asked.
    """
    if size is None:
        size = ops.spatial_size(images)
    label_steps = range(num_steps + 1) if label_steps is None else label_steps
    context_steps = range(num_steps) if context_steps is None else context_steps
    logits, context = unroll(
        model, images, num_steps, sample=sample, sample_ids=sample_ids, seed=seed
    )
    upsampled = {t: upsample_logits(logits[t], size) for t in label_steps}
    outputs = {
        "labels": _stack_steps(
            [tf.argmax(upsampled[t], -1, output_type=tf.int32) for t in label_steps],
            [0, tf.shape(images)[0], *size],
        ),
        "context": _stack_steps(
            [upsample_context(context[t], size) for t in context_steps],
            [0, tf.shape(images)[0], *size],
        ),
        "small_logits": logits,
        "small_context": context,
    }
    if probabilities:
        outputs["probabilities"] = tf.nn.softmax(upsampled[list(label_steps)[-1]])
    return outputs


def _stack_steps(tensors, empty_shape):
    """`tf.stack(tensors)`, or int32 zeros of `empty_shape` when there is none."""
    if tensors:
        return tf.stack(tensors)
    return tf.zeros(tf.stack(empty_shape), tf.int32)


def upsample_logits(logits, size):
    """Logits `[B, h, w, Nc]` to `size` (bilinear, corners aligned), float32."""
    return ops.resize_bilinear(tf.cast(logits, tf.float32), size)


def upsample_context(context, size):
    """Context maps `[B, h, w]` to `size` (nearest neighbour on the logits' grid)."""
    return ops.resize_labels(context, size)
