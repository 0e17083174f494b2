"""Pyramid pooling: the PSPNet Pyramid Pooling Module and the context-map encoders.

One layer serves three places that share the same shape of computation: the feature net's
PPM (bins 1, 2, 3, 6, 512 channels, batch norm), the Bias Net's context encoder (256
channels, GroupNorm) and the Context Net's p-map encoder (64 channels, GroupNorm; batch
norm in the original). Each branch is: average pool with kernel = stride =
ceil(size / bin), 1x1 conv (no bias), normalisation, ReLU, bilinear upsampling back to the
input size.

Each branch's norm, and what its folding and weight hooks return, come from `layers`
(`make_norm`, `fold_conv_norm`, `conv_weights`).
"""

import keras
import tensorflow as tf

from ciss_tf.modeling import layers, ops


def ceil_avg_pool(x, bins):
    """Average pooling with kernel = stride = ceil(size / bins) and no padding.

    This is the PSPNet convention (for a 60x60 map: kernels 60, 30, 20, 10). It is computed
    from an integral image so that it also works when the spatial size is only known at run
    time (SavedModel inputs of any size), where `tf.nn.avg_pool2d` needs static kernels.

    Args:
      x: `[B, H, W, C]` tensor.
      bins: target number of cells per side.

    Returns:
      `[B, (H - kh) // kh + 1, (W - kw) // kw + 1, C]` with `kh = ceil(H / bins)`.
    """
    dtype = x.dtype
    x = tf.cast(x, tf.float32)  # the integral image needs float32 range and precision
    height, width = ops.spatial_size(x)
    kernel_h = (height + bins - 1) // bins
    kernel_w = (width + bins - 1) // bins
    out_h = (height - kernel_h) // kernel_h + 1
    out_w = (width - kernel_w) // kernel_w + 1
    integral = tf.pad(tf.cumsum(tf.cumsum(x, axis=1), axis=2), [[0, 0], [1, 0], [1, 0], [0, 0]])
    integral = tf.gather(integral, tf.range(out_h + 1) * kernel_h, axis=1)
    integral = tf.gather(integral, tf.range(out_w + 1) * kernel_w, axis=2)
    sums = (
        integral[:, 1:, 1:] - integral[:, :-1, 1:] - integral[:, 1:, :-1] + integral[:, :-1, :-1]
    )
    area = tf.cast(kernel_h * kernel_w, tf.float32)
    return tf.cast(sums / area, dtype)


@keras.saving.register_keras_serializable(package="ciss_tf")
class PyramidPooling(keras.layers.Layer):
    """Pyramid pooling branches, returned concatenated in the order bins[::-1] (6, 3, 2, 1).

    The input itself is not included in the output, so callers decide what to concatenate
    (the feature net concatenates res5, the encoders concatenate X and the encoded map).

    Args:
      channels: output channels of each branch.
      bins: pooling grid sizes.
      norm: "batch", "batch_per_replica" or "group" (`layers.make_norm`).

    Example:
      >>> ppm = PyramidPooling(channels=16, bins=(1, 2, 3, 6), norm="group")
      >>> ppm(tf.zeros([1, 12, 12, 8])).shape
      TensorShape([1, 12, 12, 64])
    """

    def __init__(self, channels, bins=(1, 2, 3, 6), norm="batch", **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.bins = tuple(bins)
        self.norm = norm
        self.convs = [
            keras.layers.Conv2D(channels, 1, use_bias=False, name=f"pool{b}_conv")
            for b in self.bins
        ]
        # Both batch norms share their variables' names: a checkpoint of either restores.
        kind = "batch" if norm.startswith("batch") else norm
        self.norms = [
            layers.make_norm(norm, channels, name=f"pool{b}_{kind}_norm") for b in self.bins
        ]

    def build(self, input_shape):
        for conv, norm in zip(self.convs, self.norms, strict=True):
            conv.build(input_shape)
            norm.build(ops.channels_shape(self.channels))

    def project(self, pooled, training=False):
        """The branches before upsampling: `relu(norm(conv1x1(cells)))` per bin.

        Args:
          pooled: one `[B, cells_h, cells_w, C]` map per bin, in `bins` order: the cells of
            `ceil_avg_pool` or of any pooling that computes the same.
          training: the norms' mode.

        Returns:
          A list of `[B, cells_h, cells_w, channels]`, in `bins` order.
        """
        return [
            tf.nn.relu(norm(conv(cells), training=training))
            for cells, conv, norm in zip(pooled, self.convs, self.norms, strict=True)
        ]

    def folded_branches(self):
        """Each branch's 1x1 conv with its batch norm folded in (`layers.fold_batch_norm`).

        Returns:
          A list of `(kernel [1, 1, C, channels], bias [channels])` float64 NumPy pairs,
          in `bins` order.

        Raises:
          ValueError: if the branches use GroupNorm, which depends on the data.
        """
        return [
            layers.fold_conv_norm(conv, norm)
            for conv, norm in zip(self.convs, self.norms, strict=True)
        ]

    def branch_weights(self):
        """`layers.ConvWeights` of each branch's 1x1 conv and batch norm, in `bins` order."""
        return [
            layers.conv_weights(conv, norm)
            for conv, norm in zip(self.convs, self.norms, strict=True)
        ]

    def call(self, inputs, training=False):
        size = ops.spatial_size(inputs)
        pooled = [ceil_avg_pool(inputs, bins) for bins in self.bins]
        branches = [ops.resize_bilinear(y, size) for y in self.project(pooled, training)]
        return tf.concat(branches[::-1], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels * len(self.bins),)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, bins=self.bins, norm=self.norm)
        return config
