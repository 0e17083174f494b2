"""Training losses: PSPNet's (stage 1) and CiSS-Net's Eq. 7 (stage 2).

Reduction, chosen so that any split of a global batch across replicas gives the same
gradient: each term is first reduced to one number per image (a mean over its pixels: over
the non-ignored label pixels for cross-entropy, over the h x w feature grid for the RL
terms), summed over the unrolled steps, then summed over the replica's images and divided
by the GLOBAL batch size. Summing the replicas' losses (what `tf.distribute` does with
gradients) therefore yields the mean over the global batch. The original sums every term
over pixels instead; per-pixel means keep the paper's relative weights (lambda1 = 1,
lambda2 = 0.05) while making the scale independent of the crop size, so learning rates
need no rescaling when the crop changes. Returned statistics use the same reduction.
"""

import tensorflow as tf

from ciss_tf import rl
from ciss_tf.modeling import ops
from ciss_tf.modeling.pspnet import AUX_WEIGHT


def segmentation_loss(logits, labels, ignore_label=255):
    """Per-image softmax cross-entropy with logits upsampled to the label size.

    Args:
      logits: float `[B, h, w, Nc]` at the feature resolution.
      labels: int `[B, H, W]` (may hold `ignore_label`).
      ignore_label: label value left out.

    Returns:
      float32 `[B]`: the mean over each image's non-ignored pixels (0 if it has none).
    """
    labels = tf.cast(labels, tf.int32)
    logits = ops.resize_bilinear(tf.cast(logits, tf.float32), ops.spatial_size(labels[..., None]))
    valid = tf.not_equal(labels, ignore_label)
    pixel_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(valid, labels, 0), logits=logits
    )
    valid = tf.cast(valid, tf.float32)
    return tf.reduce_sum(pixel_loss * valid, [1, 2]) / tf.maximum(
        tf.reduce_sum(valid, [1, 2]), 1.0
    )


def pspnet_loss(outputs, labels, *, global_batch_size, ignore_label=255, aux_weight=AUX_WEIGHT):
    """Stage 1: main + `aux_weight` x auxiliary cross-entropy, reduced as the module says."""
    main = segmentation_loss(outputs["logits"], labels, ignore_label)
    aux = segmentation_loss(outputs["aux_logits"], labels, ignore_label)
    scale = 1.0 / global_batch_size
    terms = {
        "segmentation": tf.reduce_sum(main) * scale,
        "auxiliary": tf.reduce_sum(aux) * scale,
    }
    terms["total"] = terms["segmentation"] + aux_weight * terms["auxiliary"]
    return terms


def ciss_loss(outputs, labels, *, global_batch_size, gamma=0.9, lambda1=1.0, lambda2=0.05,
              beta1=0.4, beta2=0.2, window=5, ignore_label=255):
    """Eq. 7: `L = L_p + L_v + lambda1 L_s + lambda2 L_e` over an unrolled episode.

    Args:
      outputs: the dict returned by `CissNet(..., training=True)`; without `policy_logits`
        (the "pmap" and "none" modes) only the segmentation term is used.
      labels: int `[B, H, W]` at the input resolution.
      global_batch_size: images in the global batch (all replicas).
      gamma, lambda1, lambda2, beta1, beta2, window: SPEC.md sections 3 and 4.
      ignore_label: label value left out of the cross-entropy and never correct.

    Returns:
      A dict of float32 scalars: the loss terms `total`, `policy`, `value`, `entropy`,
      `segmentation` (weights not applied, except in `total`), statistics `reward`,
      `return`, `value_estimate`, `policy_entropy`, `kept_fraction`, and
      `segmentation_t<i>` for every step.
    """
    logits = outputs["logits"]
    steps_plus_one, batch = logits.shape[0], tf.shape(logits)[1]
    height_width = ops.spatial_size(logits[0])
    scale = 1.0 / global_batch_size
    flat = tf.reshape(logits, tf.concat([[-1], tf.shape(logits)[2:]], 0))
    tiled_labels = tf.tile(labels, [steps_plus_one, 1, 1])
    per_step = tf.reshape(segmentation_loss(flat, tiled_labels, ignore_label), [-1, batch])
    terms = {
        f"segmentation_t{t}": tf.reduce_sum(per_step[t]) * scale for t in range(steps_plus_one)
    }
    terms["segmentation"] = tf.reduce_sum(per_step) * scale
    steps = float(max(steps_plus_one - 1, 1))
    terms["kept_fraction"] = _mean_per_image(outputs["actions"], scale) / steps
    if "policy_logits" not in outputs:
        terms["total"] = lambda1 * terms["segmentation"]
        return terms

    small_labels = ops.resize_labels(tf.cast(labels, tf.int32), height_width)
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    rewards = tf.stack([
        rl.context_reward(
            predictions[t], predictions[t + 1], small_labels, outputs["context"][t],
            window=window, beta1=beta1, beta2=beta2, ignore_label=ignore_label,
        )
        for t in range(steps_plus_one - 1)
    ])
    returns = rl.discounted_returns(
        rewards, tf.stop_gradient(outputs["bootstrap_value"]), gamma
    )
    pixel_terms = rl.actor_critic_terms(
        outputs["policy_logits"], outputs["values"], outputs["actions"], returns
    )
    for name in ("policy", "value", "entropy"):
        terms[name] = _mean_per_image(pixel_terms[name], scale)
    terms["total"] = (
        terms["policy"] + terms["value"] + lambda1 * terms["segmentation"]
        + lambda2 * terms["entropy"]
    )
    terms["reward"] = _mean_per_image(rewards, scale) / steps
    terms["return"] = _mean_per_image(returns, scale) / steps
    terms["value_estimate"] = _mean_per_image(outputs["values"], scale) / steps
    terms["policy_entropy"] = -terms["entropy"] / steps
    return terms


def _mean_per_image(values, scale):
    """`[T, B, h, w]` -> sum over steps and images of per-image pixel means, times `scale`."""
    return tf.reduce_sum(tf.reduce_mean(tf.cast(values, tf.float32), axis=[2, 3])) * scale
