"""Training losses: PSPNet's (stage 1) and CiSS-Net's Eq. 7 (stage 2).

Reduction, chosen so that any split of a global batch across replicas gives the same
gradient: each term is first reduced to one number per image, summed over the unrolled
steps, then summed over the replica's images and multiplied by `loss_scale` (1 / the
GLOBAL batch size). Summing the replicas' losses (what `tf.distribute` does with gradients)
therefore yields the mean over the global batch.

* `reduction="mean"` (default): per image, the mean over its pixels (over the non-ignored
  label pixels for cross-entropy, over the h x w feature grid for the RL terms). The scale
  does not depend on the crop size, so learning rates need no rescaling when it changes.
* `reduction="sum"`: the authors' code. Each term summed over its pixels and over the 2
  images of a GPU, the GPUs' gradients averaged: per image the sum over pixels, times
  `ORIGINAL_IMAGES_PER_GPU` / the global batch. Their learning rates mean here what they
  meant there, whatever the number of devices.

The statistics (reward, return, value estimate, policy entropy, kept fraction) are means
per pixel and image in both.
"""

import dataclasses

import tensorflow as tf

from ciss_tf import rl
from ciss_tf.modeling import ops
from ciss_tf.modeling.pspnet import AUX_WEIGHT
from ciss_tf.training.config import LossConfig, RewardConfig

REDUCTIONS = ("mean", "sum")
PAPER_LOSS = LossConfig()  # gamma 0.9, lambda1 1, lambda2 0.05, means per pixel
PAPER_REWARD = RewardConfig()  # beta1 0.4, beta2 0.2, 5 x 5 window
ORIGINAL_IMAGES_PER_GPU = 2


def loss_scale(global_batch_size, reduction="mean"):
    """The factor of every image's reduced loss term (see the module docstring)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return (ORIGINAL_IMAGES_PER_GPU if reduction == "sum" else 1.0) / global_batch_size


def segmentation_loss(logits, labels, ignore_label=255, reduction="mean"):
    """Per-image softmax cross-entropy with logits upsampled to the label size.

    Args:
      logits: float `[B, h, w, Nc]` at the feature resolution.
      labels: int `[B, H, W]` (may hold `ignore_label`).
      ignore_label: label value left out.
      reduction: "mean" or "sum" over each image's non-ignored pixels.

    Returns:
      float32 `[B]`: the mean (0 if there is none) or sum over each image's non-ignored
      pixels.
    """
    labels = tf.cast(labels, tf.int32)
    logits = ops.resize_bilinear(tf.cast(logits, tf.float32), ops.spatial_size(labels[..., None]))
    valid = tf.not_equal(labels, ignore_label)
    pixel_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(valid, labels, 0), logits=logits
    )
    valid = tf.cast(valid, tf.float32)
    total = tf.reduce_sum(pixel_loss * valid, [1, 2])
    if reduction == "sum":
        return total
    return total / tf.maximum(tf.reduce_sum(valid, [1, 2]), 1.0)


def pspnet_loss(outputs, labels, *, global_batch_size, ignore_label=255, aux_weight=AUX_WEIGHT,
                reduction="mean"):
    """Stage 1: main + `aux_weight` x auxiliary cross-entropy, reduced as the module says."""
    main = segmentation_loss(outputs["logits"], labels, ignore_label, reduction)
    aux = segmentation_loss(outputs["aux_logits"], labels, ignore_label, reduction)
    scale = loss_scale(global_batch_size, reduction)
    terms = {
        "segmentation": tf.reduce_sum(main) * scale,
        "auxiliary": tf.reduce_sum(aux) * scale,
    }
    terms["total"] = terms["segmentation"] + aux_weight * terms["auxiliary"]
    return terms


def ciss_loss(outputs, labels, *, global_batch_size, loss=PAPER_LOSS, reward=PAPER_REWARD,
              ignore_label=255):
    """Eq. 7: `L = L_p + L_v + lambda1 L_s + lambda2 L_e` over an unrolled episode.

    The sum over steps of `step_terms`, with the returns of `episode_returns`: the
    per-step backward pass (`training/per_step.py`) adds up the same pieces one step at a
    time.

    Args:
      outputs: the dict returned by `CissNet(..., training=True)`; without `policy_logits`
        (the "pmap", "none" and "random" modes) only the segmentation term is used.
      labels: int `[B, H, W]` at the input resolution.
      global_batch_size: images in the global batch (all replicas).
      loss: the `LossConfig`: gamma, lambda1, lambda2 (SPEC.md section 4) and the
        reduction (`REDUCTIONS`, the module docstring).
      reward: the `RewardConfig` of Eq. 4 (SPEC.md section 3).
      ignore_label: label value left out of the cross-entropy and never correct.

    Returns:
      A dict of float32 scalars: the loss terms `total`, `policy`, `value`, `entropy`,
      `segmentation` (weights not applied, except in `total`), statistics `reward`,
      `return`, `value_estimate`, `policy_entropy`, `kept_fraction`, and
      `segmentation_t<i>` for every step.
    """
    logits = outputs["logits"]
    learned = "policy_logits" in outputs
    rewards = returns = None
    if learned:
        rewards, returns = episode_returns(
            outputs, labels, gamma=loss.gamma, reward=reward, ignore_label=ignore_label
        )
    per_step = []
    for t in range(logits.shape[0]):
        acts = learned and t < logits.shape[0] - 1
        per_step.append(step_terms(
            logits[t], labels, global_batch_size=global_batch_size, reduction=loss.reduction,
            ignore_label=ignore_label,
            policy_logits=outputs["policy_logits"][t] if acts else None,
            values=outputs["values"][t] if acts else None,
            actions=outputs["actions"][t] if acts else None,
            returns=returns[t] if acts else None,
        ))
    return episode_terms(per_step, outputs, rewards, returns,
                         global_batch_size=global_batch_size, lambda1=loss.lambda1,
                         lambda2=loss.lambda2)


def episode_returns(outputs, labels, *, gamma, reward, ignore_label):
    """The rewards r_t (Eq. 4) and returns R_t (Eq. 5) of an episode, both `[T, B, h, w]`.

    Constants of the loss: they depend on the p-maps' class ids, the context maps, the
    labels and the bootstrap value `V_T`, none of which passes a gradient.
    """
    logits = outputs["logits"]
    small_labels = ops.resize_labels(tf.cast(labels, tf.int32), ops.spatial_size(logits[0]))
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    rewards = tf.stack([
        rl.context_reward(
            predictions[t], predictions[t + 1], small_labels, outputs["context"][t],
            ignore_label=ignore_label, **dataclasses.asdict(reward),
        )
        for t in range(logits.shape[0] - 1)
    ])
    returns = rl.discounted_returns(rewards, outputs["bootstrap_value"], gamma)
    return tf.stop_gradient(rewards), tf.stop_gradient(returns)


def step_terms(logits, labels, *, global_batch_size, reduction="mean", ignore_label=255,
               policy_logits=None, values=None, actions=None, returns=None):
    """The loss terms of one unrolled step t, reduced as the module says.

    Args:
      logits: `logits_t`, float `[B, h, w, Nc]`.
      labels: int `[B, H, W]`.
      global_batch_size: images in the global batch.
      reduction: `REDUCTIONS`.
      ignore_label: label value left out of the cross-entropy.
      policy_logits, values, actions, returns: step t's `pi_t` logits `[B, h, w, 2]`,
        `V_t`, `B_t` and `R_t` `[B, h, w]`; None at t = T and in the modes without RL.

    Returns:
      A dict of float32 scalars: `segmentation` and, given the policy, `policy`, `value`
      and `entropy` (unweighted), and the statistic `policy_entropy` (a mean).
    """
    scale = loss_scale(global_batch_size, reduction)
    per_image = segmentation_loss(logits, labels, ignore_label, reduction)
    terms = {"segmentation": tf.reduce_sum(per_image) * scale}
    if policy_logits is not None:
        pixel_terms = rl.actor_critic_terms(
            policy_logits[None], values[None], actions[None], returns[None]
        )
        for name in ("policy", "value", "entropy"):
            terms[name] = _per_image(pixel_terms[name], scale, reduction)
        terms["policy_entropy"] = -_per_image(pixel_terms["entropy"], 1.0 / global_batch_size)
    return terms


def weighted_total(terms, *, lambda1, lambda2):
    """Eq. 7's weighted sum of the loss terms in `terms` (missing terms count 0)."""
    total = lambda1 * terms["segmentation"]
    for name, weight in (("policy", 1.0), ("value", 1.0), ("entropy", lambda2)):
        if name in terms:
            total += weight * terms[name]
    return total


def episode_terms(per_step, outputs, rewards, returns, *, global_batch_size, lambda1,
                  lambda2):
    """`ciss_loss`'s dict from the `step_terms` of t = 0..T and the episode's statistics.

    Args:
      per_step: `step_terms` of every step t = 0..T, in order.
      outputs: the episode (`actions`, and `values` in "learned" mode).
      rewards, returns: `episode_returns`, or None without RL.
      global_batch_size, lambda1, lambda2: as `ciss_loss`.
    """
    scale = 1.0 / global_batch_size  # of the statistics, means in either reduction
    terms = {f"segmentation_t{t}": step["segmentation"] for t, step in enumerate(per_step)}
    terms["segmentation"] = tf.add_n(list(terms.values()))
    steps = float(max(len(per_step) - 1, 1))
    terms["kept_fraction"] = _per_image(outputs["actions"], scale) / steps
    if rewards is None:
        terms["total"] = lambda1 * terms["segmentation"]
        return terms
    for name in ("policy", "value", "entropy", "policy_entropy"):
        terms[name] = tf.add_n([step[name] for step in per_step if name in step])
    terms["total"] = weighted_total(terms, lambda1=lambda1, lambda2=lambda2)
    terms["reward"] = _per_image(rewards, scale) / steps
    terms["return"] = _per_image(returns, scale) / steps
    terms["value_estimate"] = _per_image(outputs["values"], scale) / steps
    terms["policy_entropy"] /= steps
    return terms


def _per_image(values, scale, reduction="mean"):
    """`[T, B, h, w]` -> sum over steps and images of per-image means (or sums), x scale."""
    reduce = tf.reduce_sum if reduction == "sum" else tf.reduce_mean
    return tf.reduce_sum(reduce(tf.cast(values, tf.float32), axis=[2, 3])) * scale

