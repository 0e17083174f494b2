"""The residual trunk shared in shape by the Bias Net and the Context Net.

Both networks read `[X, E]`, the frozen domain feature `X` concatenated with an encoding
`E` of the current state (the context map for the Bias Net, the p-map for the Context Net),
and run (SPEC.md section 1; GroupNorm with 16 channels per group, no conv bias):

    c1 = relu(gn(conv3x3([X, E])))
    c2 = relu(gn(conv3x3(c1)))
    c3 = relu(gn(conv3x3(c2)))
    c4 = relu(gn(conv3x3(c3 + c1)))
    z  = dropout(c4 + c1)

A conv over a concatenation is the sum of convs over its parts, and `X` is the same at every
unrolled step, so `project_features(X)` computes the `X` half of the first conv once per
image and `call` adds the `E` half at each step. `call_concat` is the plain form, kept for
the benchmark's naive path and the tests that prove the two equal. The kernel is stored
whole, in `[X, E]` input-channel order, as in the original; `feature_kernel`,
`encoded_kernel`, `inner_kernels` and `from_first_conv` let an inference rewrite
recombine the convs without reading the layer's internals.
"""

import keras
import tensorflow as tf

from ciss_tf.modeling import ops
from ciss_tf.modeling.layers import make_norm


@keras.saving.register_keras_serializable(package="ciss_tf")
class ContextTrunk(keras.layers.Layer):
    """Four 3x3 conv + GroupNorm + ReLU layers with two residual links, then dropout.

    Args:
      feature_channels: channels of `X`.
      encoded_channels: channels of `E`.
      channels: width of every conv (512 in the paper).
      dropout: dropout rate on the output.
    """

    def __init__(self, feature_channels, encoded_channels, channels=512, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.feature_channels = feature_channels
        self.encoded_channels = encoded_channels
        self.channels = channels
        self.dropout = dropout
        self.norms = [make_norm("group", channels, name=f"c{i}_gn") for i in range(1, 5)]
        self.convs = [
            keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"c{i}_conv")
            for i in range(2, 5)
        ]
        self.drop = keras.layers.Dropout(dropout, name="dropout")

    def build(self, input_shape=None):
        self.kernel = self.add_weight(
            name="c1_kernel",
            shape=(3, 3, self.feature_channels + self.encoded_channels, self.channels),
            initializer="glorot_uniform",
        )
        inner = ops.channels_shape(self.channels)
        for norm in self.norms:
            norm.build(inner)
        for conv in self.convs:
            conv.build(inner)
        super().build(input_shape)

    def _conv1(self, x, kernel):
        return tf.nn.conv2d(x, tf.cast(kernel, x.dtype), 1, "SAME")

    def _first_kernel(self):
        # Built on demand: the X half is asked for before the trunk's first call.
        if not self.built:
            self.build()
        return self.kernel

    def feature_kernel(self):
        """The rows of the first conv's kernel that read `X`: `[3, 3, feature_channels, C]`."""
        return self._first_kernel()[:, :, : self.feature_channels]

    def encoded_kernel(self):
        """The rows of the first conv's kernel that read `E`: `[3, 3, encoded_channels, C]`."""
        return self._first_kernel()[:, :, self.feature_channels :]

    def inner_kernels(self):
        """The kernels of the three inner 3x3 convs (c2, c3, c4), in order."""
        return [conv.kernel for conv in self.convs]

    def project_features(self, features):
        """The `X` half of the first conv: `conv3x3(X)`, reusable across steps."""
        return self._conv1(features, self.feature_kernel())

    def call(self, projected_features, encoded, training=False):
        """Runs the trunk from `project_features(X)` and the step's encoding `E`."""
        c1 = projected_features + self._conv1(encoded, self.encoded_kernel())
        return self.from_first_conv(c1, training)

    def call_concat(self, features, encoded, training=False):
        """The plain form: the first conv over the concatenation `[X, E]`."""
        c1 = self._conv1(tf.concat([features, encoded], axis=-1), self._first_kernel())
        return self.from_first_conv(c1, training)

    def from_first_conv(self, c1, training=False, convs=None):
        """The layers after the first conv, from its pre-normalisation output `c1`.

        `convs` replaces the three inner conv layers by equal callables (the Winograd
        convs of `fast_inference`).
        """
        norm1, norm2, norm3, norm4 = self.norms
        conv2, conv3, conv4 = self.convs if convs is None else convs
        c1 = tf.nn.relu(norm1(c1))
        c2 = tf.nn.relu(norm2(conv2(c1)))
        c3 = tf.nn.relu(norm3(conv3(c2)))
        c4 = tf.nn.relu(norm4(conv4(c3 + c1)))
        return self.drop(c4 + c1, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            feature_channels=self.feature_channels, encoded_channels=self.encoded_channels,
            channels=self.channels, dropout=self.dropout,
        )
        return config
