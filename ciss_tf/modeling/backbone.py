"""Dilated ResNet (v1, caffe style) at output stride 8: PSPNet's backbone.

Layout, as in the official PSPNet and the CiSS-Net feature net (SPEC.md section 1):

* stem (`stem="deep"`, the default): three 3x3 convs (widths 64, 64, 128; the first with
  stride 2), then 3x3 max pool with stride 2 and padding 1;
* or (`stem="resnet"`) the ImageNet ResNet v1 stem of torchvision and Keras: one 7x7 conv
  of `width` channels, stride 2, padding 3, then the same max pool. This variant starts
  from Keras ImageNet weights (`ciss_tf.convert.imagenet`) and therefore also takes Keras's batch
  norm epsilon, 1.001e-5, everywhere;
* res2..res5 of bottleneck blocks (1x1 reduce, 3x3, 1x1 increase, expansion 4);
* res3 downsamples with stride 2 on its first 1x1 conv and projection (caffe ResNet v1,
  the official PSPNet-50), or with `stride_on="3x3"` on its first 3x3 conv and projection
  (the official PSPNet-101 models, Cityscapes and VOC); res4 and res5 keep the resolution
  and dilate their 3x3 convs by 2 and 4.

Every conv is followed by batch norm (epsilon 1e-5 with the deep stem); convs carry no bias.
Padding is explicit and symmetric so that weights converted from caffe give the same outputs.
Depths and widths are parameters: ResNet-50 is `depths=(3, 4, 6, 3)`, ResNet-101
`(3, 4, 23, 3)`, both with `width=64` and `stem_widths=(64, 64, 128)`.

Inference rewrites and weight importers reach the convs through `DilatedResNet.stem_units`,
`blocks` and `named_units`, `Bottleneck.units` and `projection`, and `ConvBN.folded` and
`conv_weights`, never through the layers' attributes.
"""

import keras
import tensorflow as tf

from ciss_tf.modeling import layers, ops

EXPANSION = 4
STEMS = ("deep", "resnet")
STRIDE_ON = ("1x1", "3x3")  # where a downsampling block puts its stride (besides the projection)
KERAS_BN_EPSILON = 1.001e-5  # keras.applications ResNet v1
_STAGE_STRIDES = (1, 2, 1, 1)
_STAGE_DILATIONS = (1, 1, 2, 4)


class ConvBN(keras.layers.Layer):
    """Conv (no bias, symmetric explicit padding) + batch norm + optional ReLU.

    The unit that inference rewrites and weight importers work on.

    Attributes:
      filters: the conv's output channels.
      stride: the conv's stride (both axes).
      dilation: the conv's dilation rate (both axes).
      pad: the zero padding on each side, `dilation * (kernel_size - 1) // 2`.
      relu: whether a ReLU follows the batch norm.
    """

    def __init__(self, filters, kernel_size, stride=1, dilation=1, relu=True, epsilon=1e-5,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.stride = stride
        self.dilation = dilation
        self.relu = relu
        self.pad = dilation * (kernel_size - 1) // 2
        self.conv = keras.layers.Conv2D(
            filters, kernel_size, strides=stride, dilation_rate=dilation, padding="valid",
            use_bias=False, name="conv",
        )
        self.bn = layers.make_norm("batch", filters, name="bn")
        # make_norm has PSPNet's 1e-5; layers that take Keras ImageNet weights need Keras's.
        self.bn.epsilon = epsilon

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(ops.channels_shape(self.filters))

    def folded(self):
        """The conv with the batch norm (inference mode) folded in: float64 `(kernel, bias)`.

        `relu?(conv(pad(x), kernel, stride, dilation) + bias)` equals the layer's output.
        """
        return layers.fold_conv_norm(self.conv, self.bn)

    def conv_weights(self):
        """The `ConvWeights` (kernel and batch norm) that importers assign."""
        return layers.conv_weights(self.conv, self.bn)

    def call(self, x, training=False):
        if self.pad:
            x = tf.pad(x, [[0, 0], [self.pad, self.pad], [self.pad, self.pad], [0, 0]])
        x = self.bn(self.conv(x), training=training)
        return tf.nn.relu(x) if self.relu else x


class Bottleneck(keras.layers.Layer):
    """ResNet v1 bottleneck; the stride sits on the first 1x1 conv or on the 3x3 conv.

    Attributes:
      filters: the block's output channels, `width * EXPANSION`.
    """

    def __init__(self, width, stride, dilation, project, epsilon, stride_on="1x1", **kwargs):
        super().__init__(**kwargs)
        self.filters = width * EXPANSION
        reduce_stride, conv3x3_stride = (stride, 1) if stride_on == "1x1" else (1, stride)
        self.reduce = ConvBN(width, 1, stride=reduce_stride, epsilon=epsilon, name="1x1_reduce")
        self.conv3x3 = ConvBN(
            width, 3, stride=conv3x3_stride, dilation=dilation, epsilon=epsilon, name="3x3"
        )
        self.increase = ConvBN(
            self.filters, 1, relu=False, epsilon=epsilon, name="1x1_increase"
        )
        self.proj = (
            ConvBN(self.filters, 1, stride=stride, relu=False, epsilon=epsilon, name="1x1_proj")
            if project else None
        )

    def build(self, input_shape):
        if self.proj is not None:
            self.proj.build(input_shape)
        shape = input_shape
        for unit in self.units():
            unit.build(shape)
            shape = ops.channels_shape(unit.filters)

    def units(self):
        """The residual branch's `ConvBN` units in order: 1x1 reduce, 3x3, 1x1 increase."""
        return self.reduce, self.conv3x3, self.increase

    @property
    def projection(self):
        """The shortcut's `ConvBN` (1x1, no ReLU), or None where the shortcut is the input."""
        return self.proj

    def call(self, x, training=False):
        shortcut = x if self.proj is None else self.proj(x, training=training)
        y = self.reduce(x, training=training)
        y = self.conv3x3(y, training=training)
        y = self.increase(y, training=training)
        return tf.nn.relu(y + shortcut)


def stem_pool(x):
    """The 3x3 max pool with stride 2 and padding 1 between the stem and res2."""
    # Inputs are post-ReLU (>= 0), so zero padding equals caffe's -inf padding here.
    x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    return tf.nn.max_pool2d(x, 3, 2, "VALID")


@keras.saving.register_keras_serializable(package="ciss_tf")
class DilatedResNet(keras.layers.Layer):
    """Dilated ResNet returning `(res4, res5)` at 1/8 of the input resolution.

    res4 feeds PSPNet's auxiliary head; res5 feeds the Pyramid Pooling Module.

    Args:
      depths: blocks in res2..res5.
      width: bottleneck width of res2 (doubled at each stage).
      stem_widths: channels of the three convs of the deep stem (unused by the 7x7 stem,
        which has `width` channels as in ResNet).
      stem: "deep" (three 3x3 convs, PSPNet) or "resnet" (one 7x7 conv, ImageNet ResNet v1).
      freeze_bn: run every batch norm in inference mode and keep its statistics fixed, as
        the CiSS-Net feature net does (and PSPNet fine-tuning with small batches may).
      stride_on: "1x1" (caffe ResNet v1, PSPNet-50) or "3x3" (the official PSPNet-101
        models): the conv of res3's first block that strides, besides the projection. Both
        give the same shapes and variables.

    Example:
      >>> net = DilatedResNet(depths=(1, 1, 1, 1), width=8, stem_widths=(8, 8, 16))
      >>> [t.shape for t in net(tf.zeros([1, 64, 64, 3]))]
      [TensorShape([1, 8, 8, 128]), TensorShape([1, 8, 8, 256])]
    """

    def __init__(self, depths=(3, 4, 6, 3), width=64, stem_widths=(64, 64, 128),
                 freeze_bn=False, stem="deep", stride_on="1x1", **kwargs):
        super().__init__(**kwargs)
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if stride_on not in STRIDE_ON:
            raise ValueError(f"stride_on must be one of {STRIDE_ON}, got {stride_on!r}")
        self.stride_on = stride_on
        self.depths = tuple(depths)
        self.width = width
        self.stem_widths = tuple(stem_widths)
        self.freeze_bn = freeze_bn
        # `self.stem` holds the stem layers (its name is part of the checkpoint object path).
        self.stem_type = stem
        if stem == "deep":
            epsilon = 1e-5
            self.stem = [
                ConvBN(w, 3, stride=2 if i == 0 else 1, name=f"conv1_{i + 1}_3x3")
                for i, w in enumerate(self.stem_widths)
            ]
        else:
            epsilon = KERAS_BN_EPSILON
            self.stem = [ConvBN(width, 7, stride=2, epsilon=epsilon, name="conv1_7x7")]
        self.stages = []
        for stage, depth in enumerate(self.depths):
            stage_width = width * 2**stage
            self.stages.append([
                Bottleneck(
                    stage_width,
                    stride=_STAGE_STRIDES[stage] if block == 0 else 1,
                    dilation=_STAGE_DILATIONS[stage],
                    project=block == 0,
                    epsilon=epsilon,
                    stride_on=stride_on,
                    name=f"conv{stage + 2}_{block + 1}",
                )
                for block in range(depth)
            ])

    def build(self, input_shape):
        shape = input_shape
        for layer in [*self.stem, *self.blocks()]:
            layer.build(shape)
            shape = ops.channels_shape(layer.filters)

    @property
    def output_channels(self):
        """Channels of res4 and res5."""
        return self.width * 4 * EXPANSION, self.width * 8 * EXPANSION

    def stem_units(self):
        """The stem's `ConvBN` units in order (then comes `stem_pool`)."""
        return list(self.stem)

    def blocks(self):
        """The `Bottleneck` blocks of res2..res5 in order (res5's last block gives res5)."""
        return [block for blocks in self.stages for block in blocks]

    def named_units(self):
        """Every `ConvBN` with its path in the backbone, the names weight importers map.

        The paths follow the official PSPNet's Caffe layer names: the stem's
        (`conv1_1_3x3`, ... or `conv1_7x7`), then per block `conv{s}_{b}/1x1_proj` (first
        blocks only), `conv{s}_{b}/1x1_reduce`, `conv{s}_{b}/3x3`, `conv{s}_{b}/1x1_increase`.

        Returns:
          A list of `(path, ConvBN)`, stem first, then the blocks in order.
        """
        named = [(unit.name, unit) for unit in self.stem]
        for block in self.blocks():
            shortcut = [] if block.projection is None else [block.projection]
            named += [(f"{block.name}/{unit.name}", unit) for unit in [*shortcut, *block.units()]]
        return named

    def call(self, images, training=False):
        training = training and not self.freeze_bn
        x = images
        for layer in self.stem:
            x = layer(x, training=training)
        x = stem_pool(x)
        outputs = []
        for blocks in self.stages:
            for block in blocks:
                x = block(x, training=training)
            outputs.append(x)
        return outputs[2], outputs[3]

    def get_config(self):
        config = super().get_config()
        config.update(
            depths=self.depths, width=self.width, stem_widths=self.stem_widths,
            freeze_bn=self.freeze_bn, stem=self.stem_type, stride_on=self.stride_on,
        )
        return config
