"""CiSS-Net: the feature net, the Segment Net and the Context Net unrolled over T steps.

Unrolled inference (paper Eq. 2, SPEC.md section 2):

    X         = feature_net(image)                      frozen, no gradient
    logits_0  = base_net(X)                             computed once per image
    for t = 0 .. T-1:
        P_t        = softmax(logits_t)                  no gradient into the S-Net
        pi_t, V_t  = context_net(X, P_t)
        B_t        ~ Bernoulli(pi_t[..., 1])            training; argmax(pi_t) otherwise
        K_t        = B_t * (argmax(logits_t) + 1)       the context map, 0 = uncertain
        logits_t+1 = logits_0 + bias_net(X, K_t)
    V_T = value of the last state (the bootstrap of the returns)

`context_mode` selects the paper's ablations (Table 4) and our controls: "learned" (CiSS-Net),
"pmap" (every action 1: Baseline + p-map, no RL), "none" (every action 0: the same Bias
Net fed an all-uncertain map, so it has the capacity but no information from the p-map) and
"random" (every action an independent Bernoulli(`random_keep_rate`) draw, in training and in
evaluation: a gate that keeps as much context as CiSS-Net's but chooses without looking, so
CiSS-Net minus it is what the Context Net's choice adds; no RL, like "pmap").
"""

import keras
import tensorflow as tf

from ciss_tf.modeling import ops
from ciss_tf.modeling.context_net import ContextNet
from ciss_tf.modeling.pspnet import FeatureNet
from ciss_tf.modeling.segment_net import BaseNet, BiasNet

CONTEXT_MODES = ("learned", "pmap", "none", "random")
# Seed of the random gate's draws when they are not sampled (evaluation, export): fixed, so
# that evaluating a "random" run twice gives the same actions.
RANDOM_GATE_EVAL_SEED = 20170


def sample_actions(keep_probability, step, sample_ids, seed):
    """Bernoulli actions, reproducible per example.

    Each example's noise is keyed by `(seed, step, sample_id)`, not by its position in the
    batch, so the same global batch gives the same actions however it is split across
    replicas, and a resumed run draws what the uninterrupted one would have drawn.

    Args:
      keep_probability: `pi_t[..., 1]`, float `[B, h, w]`.
      step: the unrolled step t (Python int).
      sample_ids: int64 `[B]`, the global index of each example, or None for stateful
        random numbers.
      seed: int, the run's seed.

    Returns:
      int32 `[B, h, w]` in {0, 1}.
    """
    if sample_ids is None:
        noise = tf.random.uniform(tf.shape(keep_probability))
    else:
        sample_ids = tf.cast(sample_ids, tf.int64)
        seeds = tf.stack(
            [tf.fill(tf.shape(sample_ids), tf.constant(seed * 1009 + step, tf.int64)), sample_ids],
            axis=1,
        )
        shape = tf.shape(keep_probability)[1:]
        noise = tf.map_fn(
            lambda s: tf.random.stateless_uniform(shape, seed=s), seeds,
            fn_output_signature=tf.float32,
        )
    return tf.cast(noise < keep_probability, tf.int32)


def image_keys(images):
    """An int64 key per image, from the bits of its pixels and their positions.

    Exact integer arithmetic (wrapping sums are independent of their order), so equal
    images give equal keys in any batch, graph or tool, and different images different
    keys but for a 2^-62 chance.

    Args:
      images: float `[B, H, W, C]`.

    Returns:
      int64 `[B]` in [0, 2^62).
    """
    bits = tf.bitcast(tf.cast(images, tf.float32), tf.int32)
    flat = tf.cast(tf.reshape(bits, [tf.shape(images)[0], -1]), tf.int64)
    weights = tf.range(tf.shape(flat)[1], dtype=tf.int64) % 65521 + 1
    return tf.math.floormod(tf.reduce_sum(flat * weights, axis=1), 2**62)


def random_gate_actions(like, keep_rate, step, sample, sample_ids=None, seed=0):
    """The actions of `context_mode="random"`: Bernoulli(`keep_rate`) per pixel.

    Sampled (training): keyed by `(seed, step, sample_id)` as `sample_actions`. Otherwise
    (evaluation, export): keyed by `(RANDOM_GATE_EVAL_SEED, step, key)`; `CissNet` and the
    fast net pass each image's `image_keys`, so an image gets the same gate in every tool
    (evaluation, export, the report's gate statistics), wherever it sits in a batch; a
    direct call without ids keys by the position in the batch.

    Args:
      like: int `[B, h, w]`, the shape of the actions (the p-map's class ids).
      keep_rate: float in (0, 1].
      step: the unrolled step t (Python int).
      sample: training-time sampling (see above).
      sample_ids: int64 `[B]` or None.
      seed: the run's seed (sampled draws only).

    Returns:
      int32 `[B, h, w]` in {0, 1}.
    """
    keep = tf.fill(tf.shape(like), tf.constant(keep_rate, tf.float32))
    if not sample:
        seed = RANDOM_GATE_EVAL_SEED
        if sample_ids is None:
            sample_ids = tf.range(tf.shape(like, out_type=tf.int64)[0])
    return sample_actions(keep, step, sample_ids, seed)


def context_actions(context_mode, prediction, step, *, policy_logits=None, sample=False,
                    sample_ids=None, seed=0, random_keep_rate=None):
    """The actions `B_t` of step t in every context mode: the one gate rule of the unroll.

    Args:
      context_mode: "learned" (the Context Net's policy), "pmap" (all 1), "none" (all 0)
        or "random" (Bernoulli(`random_keep_rate`), see `random_gate_actions`).
      prediction: int32 `[B, h, w]`, the p-map's class ids (the actions' shape).
      step: the unrolled step t (Python int).
      policy_logits: float `[B, h, w, 2]` ("learned" only).
      sample: draw Bernoulli(pi_t(keep)) (training); otherwise keep where
        pi_t(keep) > pi_t(ignore) (the greedy action).
      sample_ids, seed: keys of the sampled noise (see `sample_actions`).
      random_keep_rate: the random gate's keep rate.

    Returns:
      int32 `[B, h, w]` in {0, 1}.
    """
    if context_mode == "learned":
        if sample:
            keep = tf.nn.softmax(policy_logits)[..., 1]
            return sample_actions(keep, step, sample_ids, seed)
        return tf.cast(policy_logits[..., 1] > policy_logits[..., 0], tf.int32)
    if context_mode == "pmap":
        return tf.ones_like(prediction)
    if context_mode == "random":
        return random_gate_actions(prediction, random_keep_rate, step, sample, sample_ids, seed)
    return tf.zeros_like(prediction)


@keras.saving.register_keras_serializable(package="ciss_tf")
class CissNet(keras.Model):
    """The unrolled CiSS-Net.

    Args:
      num_classes: `Nc`.
      feature_net: `FeatureNet` config dict (frozen here: its batch norm runs in inference
        mode and it receives no gradient).
      channels: width of the Base Net, Bias Net and Context Net convs (512).
      bias_branch_channels: pyramid branch width of the context-map encoder (256).
      context_branch_channels: pyramid branch width of the p-map encoder (64).
      dropout: dropout rate of the three nets (0.1).
      context_mode: "learned", "pmap", "none" or "random" (see the module docstring).
      context_encoder_norm: "group" (the paper), "batch" (synchronized across replicas) or
        "batch_per_replica" (the authors' code): the norm of the Context Net's pyramid
        branches (`layers.make_norm`).
      random_keep_rate: the share of actions 1 of the "random" mode, in (0, 1] (unused by
        the other modes).

    Attributes:
      feature_net: the frozen `FeatureNet` (`X`).
      base_net: the `BaseNet`.
      bias_net: the `BiasNet`.
      context_net: the `ContextNet` in "learned" mode, else None.

    Example:
      >>> net = CissNet(4, feature_net=config.PRESETS["tiny"].feature_net(), channels=32,
      ...               bias_branch_channels=16, context_branch_channels=16)
      >>> out = net(tf.zeros([1, 64, 64, 3]), num_steps=2)
      >>> out["logits"].shape, out["context"].shape
      (TensorShape([3, 1, 8, 8, 4]), TensorShape([2, 1, 8, 8]))
    """

    def __init__(self, num_classes, feature_net=None, channels=512, bias_branch_channels=256,
                 context_branch_channels=64, dropout=0.1, context_mode="learned",
                 context_encoder_norm="group", random_keep_rate=None, **kwargs):
        super().__init__(**kwargs)
        if context_mode not in CONTEXT_MODES:
            raise ValueError(f"context_mode must be one of {CONTEXT_MODES}, got {context_mode!r}")
        if context_mode == "random" and not (
            random_keep_rate is not None and 0 < random_keep_rate <= 1
        ):
            raise ValueError(
                f"context_mode 'random' needs random_keep_rate in (0, 1], got {random_keep_rate}"
            )
        self.num_classes = num_classes
        self.feature_net_config = dict(feature_net or {})
        self.channels = channels
        self.bias_branch_channels = bias_branch_channels
        self.context_branch_channels = context_branch_channels
        self.dropout = dropout
        self.context_mode = context_mode
        self.context_encoder_norm = context_encoder_norm
        self.random_keep_rate = random_keep_rate
        self.feature_net = FeatureNet(**self.feature_net_config, freeze_bn=True, name="feature_net")
        self.feature_net.trainable = False
        feature_channels = self.feature_net.output_channels
        self.base_net = BaseNet(num_classes, channels, dropout, name="base_net")
        self.bias_net = BiasNet(
            num_classes, feature_channels, channels, bias_branch_channels, dropout=dropout,
            name="bias_net",
        )
        self.context_net = (
            ContextNet(
                num_classes, feature_channels, channels, context_branch_channels,
                dropout=dropout, norm=context_encoder_norm, name="context_net",
            )
            if context_mode == "learned" else None
        )

    def build(self, input_shape):
        # Every net is built, also those a call with num_steps=0 never runs, so that a
        # checkpoint restores into each variable.
        self.feature_net.build(input_shape)
        self.base_net.build(ops.channels_shape(self.feature_net.output_channels))
        self.bias_net.build()
        if self.context_net is not None:
            self.context_net.build()

    def features(self, images):
        """The domain feature `X` (no gradient: the feature net is frozen)."""
        _, x = self.feature_net(images, training=False)
        return tf.stop_gradient(x)

    def call(self, images, training=False, num_steps=2, sample=None, sample_ids=None, seed=0,
             bootstrap=None, cache_features=True):
        """Unrolls `num_steps` context steps.

        Args:
          images: normalised images `[B, H, W, 3]`.
          training: dropout and batch-norm mode of the trainable nets.
          num_steps: T; predictions are returned for t = 0..T.
          sample: sample the actions (default: `training`); otherwise take the greedy action
            (the random gate: its fixed-seed evaluation draw, see `random_gate_actions`).
          sample_ids: int64 `[B]` global example indices that key the action noise.
          seed: the run's seed for the action noise.
          bootstrap: also evaluate the value of the last state, `V_T` (default: `training`).
          cache_features: compute the `X` half of the Bias and Context Nets' first conv once
            (exact; False gives the plain per-step form, for benchmarks and tests).

        Returns:
          A dict of stacked tensors at output stride 8 (h x w):
          `logits` float `[T+1, B, h, w, Nc]`, `context` int32 `[T, B, h, w]` (`K_t`),
          `actions` int32 `[T, B, h, w]`; in "learned" mode also `policy_logits`
          float32 `[T, B, h, w, 2]`, `values` float32 `[T, B, h, w]` and, with
          `bootstrap`, `bootstrap_value` float32 `[B, h, w]`.
        """
        sample = training if sample is None else sample
        learned = self.context_net is not None
        bootstrap = (training if bootstrap is None else bootstrap) and learned
        x = self.features(images)
        base_logits = self.base_net(x, training=training)
        # With no step to run (and no bootstrap), the X halves would be computed for nothing.
        if cache_features and (num_steps > 0 or bootstrap):
            bias_x, context_x = self.project_features(x)
        else:
            bias_x = context_x = None
        projected = bias_x is not None
        bias_in = bias_x if projected else x
        context_in = context_x if projected else x

        # The random gate's evaluation draw is keyed by the images themselves.
        gate_ids = (image_keys(images) if self.context_mode == "random" and not sample
                    else sample_ids)
        logits, contexts, actions, policies, values = [base_logits], [], [], [], []
        for t in range(num_steps):
            policy_logits = None
            if learned:
                policy_logits, value = self.policy_and_value(
                    context_in, logits[-1], training, projected
                )
                policies.append(policy_logits)
                values.append(value)
            action, context = self.act(
                t, logits[-1], policy_logits, sample=sample, sample_ids=gate_ids, seed=seed
            )
            logits.append(base_logits + self.bias_logits(bias_in, context, training, projected))
            contexts.append(context)
            actions.append(action)

        outputs = {
            "logits": tf.stack(logits),
            "context": stack_steps(contexts, tf.int32, base_logits),
            "actions": stack_steps(actions, tf.int32, base_logits),
        }
        if learned:
            outputs["policy_logits"] = stack_steps(policies, tf.float32, base_logits, (2,))
            outputs["values"] = stack_steps(values, tf.float32, base_logits)
            if bootstrap:
                outputs["bootstrap_value"] = self.policy_and_value(
                    context_in, logits[-1], training, projected
                )[1]
        return outputs

    # The pieces of one unrolled step, shared by `call` and the per-step backward pass
    # (`training/per_step.py`), which recomputes each step on its own. `features` is `X`
    # or, when it comes from `project_features`, the X half of the net's first conv.

    def project_features(self, x):
        """The X halves of the Bias and Context Nets' first convs (None: no Context Net)."""
        context_x = self.context_net.trunk.project_features(x) if self.context_net else None
        return self.bias_net.trunk.project_features(x), context_x

    def policy_and_value(self, features, logits, training, projected=True):
        """`pi_t` (logits `[B, h, w, 2]`) and `V_t` from the p-map of `logits` (no gradient)."""
        probabilities = tf.stop_gradient(tf.nn.softmax(tf.cast(logits, tf.float32)))
        probabilities = tf.cast(probabilities, features.dtype)
        if projected:
            return self.context_net(features, probabilities, training=training)
        return self.context_net.call_concat(features, probabilities, training=training)

    def bias_logits(self, features, context, training, projected=True):
        """`bias_net(X, K_t)`: the correction added to the Base Net's logits."""
        if projected:
            return self.bias_net(features, context, training=training)
        return self.bias_net.call_concat(features, context, training=training)

    def act(self, step, logits, policy_logits, *, sample, sample_ids=None, seed=0):
        """The actions `B_t` and the context map `K_t = B_t * (argmax(logits_t) + 1)`."""
        prediction = tf.argmax(logits, axis=-1, output_type=tf.int32)
        action = context_actions(
            self.context_mode, prediction, step, policy_logits=policy_logits, sample=sample,
            sample_ids=sample_ids, seed=seed, random_keep_rate=self.random_keep_rate,
        )
        return action, action * (prediction + 1)

    def get_config(self):
        return {
            "name": self.name, "num_classes": self.num_classes,
            "feature_net": self.feature_net_config, "channels": self.channels,
            "bias_branch_channels": self.bias_branch_channels,
            "context_branch_channels": self.context_branch_channels,
            "dropout": self.dropout, "context_mode": self.context_mode,
            "context_encoder_norm": self.context_encoder_norm,
            "random_keep_rate": self.random_keep_rate,
        }


def stack_steps(tensors, dtype, like, channels=()):
    """Stacks per-step tensors; with T = 0 returns an empty `[0, B, h, w, *channels]`."""
    if tensors:
        return tf.stack(tensors)
    shape = tf.concat([[0], tf.shape(like)[:3], tf.constant(channels, tf.int32)], axis=0)
    return tf.zeros(shape, dtype)
