"""PSPNet: the feature net (a backbone + Pyramid Pooling Module) and its heads.

Stage 1 of training fits the whole PSPNet; stage 2 (CiSS-Net) keeps only the feature net,
frozen, whose output is the domain feature `X` (2048 + 4 x 512 = 4096 channels at output
stride 8 for the paper preset). The paper calls this stack "the first four blocks of PSPNet".
"""

import keras
import tensorflow as tf

from ciss_tf.modeling import backbones, ops
from ciss_tf.modeling.layers import conv_weights, make_norm
from ciss_tf.modeling.ppm import PyramidPooling

AUX_WEIGHT = 0.4  # weight of the auxiliary res4 loss in PSPNet training


@keras.saving.register_keras_serializable(package="ciss_tf")
class FeatureNet(keras.layers.Layer):
    """Backbone + PPM: images -> `(mid, X)` with `X = [last, ppm6, ppm3, ppm2, ppm1]`.

    With the dilated ResNet, `mid` is res4 and `last` res5 (the backbone contract:
    `modeling.backbones`).

    Args:
      backbone: the backbone's config `{"name": registered name, **its arguments}`
        (`backbones.config_of`; None: the dilated ResNet-50).
      ppm_channels: channels of each pyramid branch (512 in PSPNet).
      bins: pyramid grid sizes.
      freeze_bn: batch norm in inference mode (always so in CiSS-Net training).

    Attributes:
      backbone: the backbone layer (its `last` output is the first block of `X`).
      ppm: the `PyramidPooling` (batch norm) whose branches fill the rest of `X`.
    """

    def __init__(self, backbone=None, ppm_channels=512, bins=(1, 2, 3, 6), freeze_bn=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.backbone_config = dict(backbone or {"name": backbones.DEFAULT})
        self.ppm_channels = ppm_channels
        self.bins = tuple(bins)
        self.freeze_bn = freeze_bn
        self.backbone = backbones.build(self.backbone_config, freeze_bn)
        self.ppm = PyramidPooling(ppm_channels, bins, norm="batch", name="ppm")

    def build(self, input_shape):
        self.backbone.build(input_shape)
        self.ppm.build(ops.channels_shape(self.backbone.output_channels[1]))

    @property
    def output_channels(self):
        """Channels of `X`."""
        return self.backbone.output_channels[1] + self.ppm_channels * len(self.bins)

    def call(self, images, training=False):
        training = training and not self.freeze_bn
        mid, last = self.backbone(images, training=training)
        x = tf.concat([last, self.ppm(last, training=training)], axis=-1)
        return mid, x

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=self.backbone_config, ppm_channels=self.ppm_channels, bins=self.bins,
            freeze_bn=self.freeze_bn,
        )
        return config


@keras.saving.register_keras_serializable(package="ciss_tf")
class SegmentationHead(keras.layers.Layer):
    """3x3 conv (no bias) + norm + ReLU + dropout + 1x1 classifier (with bias).

    PSPNet's conv5_4/conv6 with batch norm; with GroupNorm, CiSS-Net's Base Net.

    Args:
      num_classes: output channels.
      channels: width of the 3x3 conv (512 for the main head, 256 for the auxiliary one).
      dropout: dropout rate before the classifier.
      norm: "batch" (layer `bn`) or "group" (layer `gn`, 16 channels per group).
    """

    def __init__(self, num_classes, channels=512, dropout=0.1, norm="batch", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.channels = channels
        self.dropout = dropout
        self.norm_type = norm
        self.conv = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name="conv")
        self.norm = make_norm(norm, channels, name="bn" if norm == "batch" else "gn")
        self.drop = keras.layers.Dropout(dropout, name="dropout")
        # Logits in float32 under mixed precision: argmax ties and the softmax need them.
        self.classifier = keras.layers.Conv2D(
            num_classes, 1, dtype="float32", name="classifier"
        )

    def build(self, input_shape):
        self.conv.build(input_shape)
        for layer in (self.norm, self.classifier):
            layer.build(ops.channels_shape(self.channels))

    def conv_weights(self):
        """`ConvWeights` of the 3x3 conv and of the classifier, for weight importers.

        The 3x3 conv's `norm` is its batch norm, or None with GroupNorm (no statistics).
        """
        norm = self.norm if self.norm_type == "batch" else None
        return conv_weights(self.conv, norm), conv_weights(self.classifier)

    def from_conv(self, y, training=False):
        """The layers after the 3x3 conv (norm, ReLU, dropout, classifier), from its output."""
        y = tf.nn.relu(self.norm(y, training=training))
        return self.classifier(self.drop(y, training=training))

    def call(self, x, training=False):
        return self.from_conv(self.conv(x), training)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes, channels=self.channels, dropout=self.dropout,
            norm=self.norm_type,
        )
        return config


@keras.saving.register_keras_serializable(package="ciss_tf")
class PSPNet(keras.Model):
    """PSPNet for stage-1 training: returns `{"logits", "aux_logits"}` at output stride 8.

    The feature net is attribute `feature_net`, so a stage-2 CiSS-Net restores it from a
    stage-1 checkpoint by object path.

    Args:
      num_classes: number of classes.
      feature_net: a `FeatureNet` config dict.
      head_channels: width of the main head (the auxiliary head uses half).
      dropout: dropout rate of both heads.
    """

    def __init__(self, num_classes, feature_net=None, head_channels=512, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.feature_net_config = dict(feature_net or {})
        self.head_channels = head_channels
        self.dropout = dropout
        self.feature_net = FeatureNet(**self.feature_net_config, name="feature_net")
        self.head = SegmentationHead(num_classes, head_channels, dropout, name="head")
        self.aux_head = SegmentationHead(num_classes, head_channels // 2, dropout, name="aux_head")

    def build(self, input_shape):
        self.feature_net.build(input_shape)
        self.head.build(ops.channels_shape(self.feature_net.output_channels))
        self.aux_head.build(ops.channels_shape(self.feature_net.backbone.output_channels[0]))

    def call(self, images, training=False):
        res4, x = self.feature_net(images, training=training)
        return {
            "logits": self.head(x, training=training),
            "aux_logits": self.aux_head(res4, training=training),
        }

    def get_config(self):
        return {
            "name": self.name, "num_classes": self.num_classes,
            "feature_net": self.feature_net_config, "head_channels": self.head_channels,
            "dropout": self.dropout,
        }
