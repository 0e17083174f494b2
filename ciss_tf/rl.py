"""The reinforcement-learning core: reward (Eq. 4), returns (Eq. 5) and the actor-critic terms.

Plain functions on tensors, so that each can be checked by hand. Shapes follow the unrolled
model: a leading step axis `T`, then `[B, h, w]` at the feature resolution (output stride 8).
"""

import tensorflow as tf

# M(correct_t, correct_{t+1}) of Eq. 4.
REWARD_FIXED = -1.0  # correct -> incorrect
REWARD_GAINED = 1.0  # incorrect -> correct
REWARD_KEPT = 0.5  # correct -> correct
# What an "uncertain" action (K_t = 0) earns on an unlabelled pixel: beta2 as on any pixel,
# or, as in the authors' code, beta1 + beta2 (it shifts labels to L - 1, so unlabelled
# becomes -1 and its test K_t == L + 1 holds for K_t = 0 there).
UNLABELLED_REWARDS = ("beta2", "original")


def box_mean(values, window):
    """Stride-1 `window x window` mean that leaves positions outside the image out of the mean.

    Args:
      values: float `[B, h, w]`.
      window: odd window size.

    Returns:
      float32 `[B, h, w]`: at each pixel, the mean of `values` over the in-image part of the
      window centred on it (at a corner of a 5x5 window: over 3 x 3 = 9 pixels).
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"reward window must be a positive odd number, got {window}")
    values = tf.cast(values, tf.float32)[..., tf.newaxis]
    kernel = tf.ones([window, window, 1, 1], tf.float32)
    sums = tf.nn.conv2d(values, kernel, 1, "SAME")
    counts = tf.nn.conv2d(tf.ones_like(values), kernel, 1, "SAME")
    return (sums / counts)[..., 0]


def context_reward(pred_prev, pred_next, labels, context, *, window=5, beta1=0.4, beta2=0.2,
                   ignore_label=255, unlabelled_reward="beta2"):
    """The per-pixel reward `r_t` of Eq. 4.

        r_t = boxmean(M(correct_t, correct_{t+1})) + beta1 [K_t == L + 1] + beta2 [K_t == 0]

    with M = +1 (incorrect -> correct), -1 (correct -> incorrect), +0.5 (correct -> correct)
    and 0 (incorrect -> incorrect). An ignore-label pixel is never correct (as in the
    original), so it contributes 0 to M, and its context can earn only the beta2 term;
    with `unlabelled_reward="original"` an uncertain action there earns beta1 + beta2, as
    in the authors' code (see `UNLABELLED_REWARDS`).

    Args:
      pred_prev: int `[B, h, w]`, class ids of the p-map at step t.
      pred_next: int `[B, h, w]`, class ids of the p-map at step t + 1.
      labels: int `[B, h, w]`, ground truth at the same resolution.
      context: int `[B, h, w]`, the context map `K_t` in 0..Nc (0 = uncertain).
      window: size of the box over which M is averaged (the region an action influences).
      beta1: reward for keeping a correct prediction as context.
      beta2: reward for declaring a pixel uncertain.
      ignore_label: label value never counted as correct.
      unlabelled_reward: one of `UNLABELLED_REWARDS`.

    Returns:
      float32 `[B, h, w]`.
    """
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    correct_prev = tf.logical_and(valid, tf.equal(tf.cast(pred_prev, tf.int32), labels))
    correct_next = tf.logical_and(valid, tf.equal(tf.cast(pred_next, tf.int32), labels))
    m = tf.where(
        correct_prev,
        tf.where(correct_next, REWARD_KEPT, REWARD_FIXED),
        tf.where(correct_next, REWARD_GAINED, 0.0),
    )
    if unlabelled_reward not in UNLABELLED_REWARDS:
        raise ValueError(f"unlabelled_reward must be one of {UNLABELLED_REWARDS}, "
                         f"got {unlabelled_reward!r}")
    context = tf.cast(context, tf.int32)
    # No context is correct on an unlabelled pixel, except in the original, whose label -1
    # there makes its test K_t == L + 1 hold for K_t = 0.
    target = tf.where(valid, labels + 1, 0 if unlabelled_reward == "original" else -1)
    correct_context = tf.cast(tf.equal(context, target), tf.float32)
    uncertain = tf.cast(tf.equal(context, 0), tf.float32)
    return box_mean(m, window) + beta1 * correct_context + beta2 * uncertain


def discounted_returns(rewards, bootstrap_value, gamma):
    """The n-step returns of Eq. 5 for every step of an episode.

        R_t = sum_{l=0}^{T-1-t} gamma^l r_{t+l} + gamma^(T-t) V_T

    Args:
      rewards: float `[T, ...]`, r_0..r_{T-1}.
      bootstrap_value: float `[...]`, the value `V_T` of the state after the last step.
      gamma: discount factor.

    Returns:
      float32 `[T, ...]`. Targets only: wrap in `tf.stop_gradient` before use in a loss.
    """
    rewards = tf.convert_to_tensor(rewards, tf.float32)
    bootstrap_value = tf.convert_to_tensor(bootstrap_value, tf.float32)
    return tf.scan(
        lambda following, reward: reward + gamma * following,
        rewards,
        initializer=bootstrap_value,
        reverse=True,
    )


def actor_critic_terms(policy_logits, values, actions, returns):
    """Per-pixel policy, value and entropy terms of Eq. 7 (before any reduction).

        A_t = R_t - V_t                       (no gradient)
        L_p = -log pi_t(B_t) * A_t
        L_v = (R_t - V_t)^2
        L_e = sum_k pi_t[k] log pi_t[k]       (negative entropy: minimising it explores)

    Args:
      policy_logits: float `[T, B, h, w, 2]`.
      values: float `[T, B, h, w]`, V_0..V_{T-1}.
      actions: int `[T, B, h, w]` in {0, 1}, the actions taken.
      returns: float `[T, B, h, w]`, R_0..R_{T-1} (treated as constants).

    Returns:
      A dict of float32 `[T, B, h, w]`: `policy`, `value`, `entropy`, `advantage`.
    """
    returns = tf.stop_gradient(tf.cast(returns, tf.float32))
    values = tf.cast(values, tf.float32)
    advantage = tf.stop_gradient(returns - values)
    log_policy = tf.nn.log_softmax(tf.cast(policy_logits, tf.float32))
    log_taken = tf.gather(log_policy, tf.cast(actions, tf.int32), batch_dims=4)
    return {
        "policy": -log_taken * advantage,
        "value": tf.square(returns - values),
        "entropy": tf.reduce_sum(tf.exp(log_policy) * log_policy, axis=-1),
        "advantage": advantage,
    }
