"""The Segment Net (S-Net, paper Eq. 1): Base Net + context encoder + Bias Net.

    logits_0     = base_net(X)                          (t = 0: no context)
    logits_{t+1} = base_net(X) + bias_net(X, K_t)       (t >= 0)

`K_t` is the context map (paper: `K_I`): per pixel 0 = "uncertain" or 1 + the class id the
Context Net chose to keep. The Bias Net learns a per-class correction that is added to
the Base Net's logits before the softmax.
"""

import keras
import tensorflow as tf

from ciss_tf.modeling import ops
from ciss_tf.modeling.ppm import PyramidPooling
from ciss_tf.modeling.pspnet import SegmentationHead
from ciss_tf.modeling.trunk import ContextTrunk


@keras.saving.register_keras_serializable(package="ciss_tf")
class BaseNet(SegmentationHead):
    """3x3 conv (no bias) + GroupNorm + ReLU + dropout + 1x1 conv to `num_classes` (with bias).

    PSPNet's head shape with GroupNorm (16 channels per group), as the paper specifies.

    Args:
      num_classes: number of classes `Nc`.
      channels: width of the 3x3 conv (512).
      dropout: dropout rate (0.1).
    """

    def __init__(self, num_classes, channels=512, dropout=0.1, **kwargs):
        kwargs.pop("norm", None)  # from get_config: always GroupNorm here
        super().__init__(num_classes, channels, dropout, norm="group", **kwargs)


@keras.saving.register_keras_serializable(package="ciss_tf")
class BiasNet(keras.layers.Layer):
    """Context encoder + trunk + 1x1 classifier (no bias): `(X, K_t) -> bias logits`.

    The context map is one-hot encoded with `Nc + 1` channels (uncertain has its own), and
    pyramid branches (256 channels, GroupNorm) add its layout at four scales:
    `E = [onehot(K), b6, b3, b2, b1]`.

    Args:
      num_classes: `Nc`.
      feature_channels: channels of `X`.
      channels: trunk width (512).
      branch_channels: width of each pyramid branch (256).
      bins: pyramid grid sizes.
      dropout: dropout rate.

    Attributes:
      encoder: the `PyramidPooling` of the one-hot map (the branches of `E`).
      trunk: the `ContextTrunk` over `[X, E]`.
      classifier: the 1x1 conv from the trunk's output to the bias logits.
    """

    def __init__(self, num_classes, feature_channels, channels=512, branch_channels=256,
                 bins=(1, 2, 3, 6), dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.feature_channels = feature_channels
        self.channels = channels
        self.branch_channels = branch_channels
        self.bins = tuple(bins)
        self.dropout = dropout
        self.encoder = PyramidPooling(branch_channels, bins, norm="group", name="encoder")
        self.trunk = ContextTrunk(
            feature_channels, num_classes + 1 + branch_channels * len(self.bins), channels,
            dropout, name="trunk",
        )
        self.classifier = keras.layers.Conv2D(
            num_classes, 1, use_bias=False, dtype="float32", name="classifier"
        )

    def build(self, input_shape=None):
        self.encoder.build(ops.channels_shape(self.num_classes + 1))
        self.trunk.build()
        self.classifier.build(ops.channels_shape(self.channels))

    def one_hot(self, context_map, dtype):
        """The first block of `E`: a context map `[B, h, w]` of ints in 0..Nc, one-hot."""
        return tf.one_hot(context_map, self.num_classes + 1, dtype=dtype)

    def encode(self, context_map, dtype):
        """`E` for a context map `[B, h, w]` of ints in 0..Nc."""
        onehot = self.one_hot(context_map, dtype)
        return tf.concat([onehot, self.encoder(onehot)], axis=-1)

    def call(self, projected_features, context_map, training=False):
        """Bias logits from `trunk.project_features(X)` and `K_t`."""
        encoded = self.encode(context_map, projected_features.dtype)
        return self.classifier(self.trunk(projected_features, encoded, training=training))

    def call_concat(self, features, context_map, training=False):
        """The same from `X` itself, with nothing cached (the plain form)."""
        encoded = self.encode(context_map, features.dtype)
        return self.classifier(self.trunk.call_concat(features, encoded, training=training))

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes, feature_channels=self.feature_channels,
            channels=self.channels, branch_channels=self.branch_channels, bins=self.bins,
            dropout=self.dropout,
        )
        return config
