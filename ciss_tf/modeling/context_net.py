"""The Context Net (C-Net): an actor-critic that decides which predictions become context.

From the state, the domain feature `X` and the soft p-map `P_t = softmax(logits_t)` (the
original feeds probabilities, with no gradient into the S-Net), it predicts per pixel a
policy over two actions (0: ignore the prediction, 1: keep it as context) and a value
(paper Sec. 3.1 and Fig. 3 b: "five layers", the heads sharing all but the last one):

    E      = [P_t, b6, b3, b2, b1]          pyramid branches of 64 channels, GroupNorm
    z      = trunk([X, E])                  as the Bias Net's, own weights
    policy = softmax(conv1x1_2(z))          with bias
    value  = conv1x1_1(z)                   no bias
"""

import keras
import tensorflow as tf

from ciss_tf.modeling import ops
from ciss_tf.modeling.ppm import PyramidPooling
from ciss_tf.modeling.trunk import ContextTrunk


@keras.saving.register_keras_serializable(package="ciss_tf")
class ContextNet(keras.layers.Layer):
    """`(X, P_t) -> (policy_logits [B, h, w, 2], value [B, h, w])`.

    Args:
      num_classes: `Nc` (channels of the p-map).
      feature_channels: channels of `X`.
      channels: trunk width (512).
      branch_channels: width of each pyramid branch (64).
      bins: pyramid grid sizes.
      dropout: dropout rate.
      norm: normalisation of the pyramid branches: "group" (the paper: GroupNorm in every
        head layer), "batch" (synchronized) or "batch_per_replica" (the authors' code;
        `layers.make_norm`).

    Attributes:
      encoder: the `PyramidPooling` of the p-map (the branches of `E`).
      trunk: the `ContextTrunk` over `[X, E]`.
    """

    def __init__(self, num_classes, feature_channels, channels=512, branch_channels=64,
                 bins=(1, 2, 3, 6), dropout=0.1, norm="group", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.feature_channels = feature_channels
        self.channels = channels
        self.branch_channels = branch_channels
        self.bins = tuple(bins)
        self.dropout = dropout
        self.norm = norm
        self.encoder = PyramidPooling(branch_channels, bins, norm=norm, name="encoder")
        self.trunk = ContextTrunk(
            feature_channels, num_classes + branch_channels * len(self.bins), channels,
            dropout, name="trunk",
        )
        self.policy_head = keras.layers.Conv2D(2, 1, name="policy")
        self.value_head = keras.layers.Conv2D(1, 1, use_bias=False, name="value")

    def build(self, input_shape=None):
        self.encoder.build(ops.channels_shape(self.num_classes))
        self.trunk.build()
        for head in (self.policy_head, self.value_head):
            head.build(ops.channels_shape(self.channels))

    def encode(self, probabilities, training):
        """`E` for a p-map of class probabilities `[B, h, w, Nc]`."""
        return tf.concat([probabilities, self.encoder(probabilities, training=training)], -1)

    def policy_logits(self, z):
        """The policy logits `[B, h, w, 2]` (float32) from the trunk's output `z`."""
        return tf.cast(self.policy_head(z), tf.float32)

    def _heads(self, z):
        policy_logits = self.policy_logits(z)
        value = tf.cast(self.value_head(z)[..., 0], tf.float32)
        return policy_logits, value

    def call(self, projected_features, probabilities, training=False):
        """From `trunk.project_features(X)` and `P_t`."""
        encoded = self.encode(probabilities, training)
        return self._heads(self.trunk(projected_features, encoded, training=training))

    def call_concat(self, features, probabilities, training=False):
        """The same from `X` itself, with nothing cached (the plain form)."""
        encoded = self.encode(probabilities, training)
        return self._heads(self.trunk.call_concat(features, encoded, training=training))

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes, feature_channels=self.feature_channels,
            channels=self.channels, branch_channels=self.branch_channels, bins=self.bins,
            dropout=self.dropout, norm=self.norm,
        )
        return config
