"""Pyramid pooling: the PSPNet Pyramid Pooling Module and the context-map encoders.

One layer serves three places that share the same shape of computation: the feature net's
PPM (bins 1, 2, 3, 6, 512 channels, batch norm), the Bias Net's context encoder (256
channels, GroupNorm) and the Context Net's p-map encoder (64 channels, GroupNorm; batch
norm in the original). Each branch is: average pool with kernel = stride =
ceil(size / bin), 1x1 conv (no bias), normalisation, ReLU, bilinear upsampling back to the
input size.

It also holds what every conv + norm unit of the network shares with the tools that rewrite
or import it: `fold_batch_norm` (a frozen batch norm folded into the conv before it) and
`ConvWeights` (the variables an importer assigns).
"""

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from ciss_tf.modeling import ops

GROUP_SIZE = 16  # channels per GroupNorm group (paper, Sec. 4.1)


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


def make_norm(norm, channels, name, synchronized=True):
    """Builds the normalisation layer used throughout the network.

    Args:
      norm: "group", "batch", or "batch_per_replica": the authors' batch norm, statistics
        of each replica's own images (each GPU's 2 in the original) and moving averages
        with momentum 0.95 (their `BN` helper), where "batch" has 0.9.
      channels: number of channels normalised (GroupNorm uses 16 per group).
      name: layer name.
      synchronized: for "batch", average statistics across replicas, so that training on
        N devices matches one device with the same global batch.

    Returns:
      A Keras layer.
    """
    if norm == "group":
        if channels % GROUP_SIZE:
            raise ValueError(f"GroupNorm needs a multiple of {GROUP_SIZE} channels, got {channels}")
        return keras.layers.GroupNormalization(
            groups=channels // GROUP_SIZE, epsilon=1e-5, name=name
        )
    if norm == "batch":
        return keras.layers.BatchNormalization(
            momentum=0.9, epsilon=1e-5, synchronized=synchronized, name=name
        )
    if norm == "batch_per_replica":
        return keras.layers.BatchNormalization(
            momentum=0.95, epsilon=1e-5, synchronized=False, name=name
        )
    raise ValueError(
        f"unknown norm {norm!r}; expected 'group', 'batch' or 'batch_per_replica'")


def fold_batch_norm(kernel, gamma, beta, mean, variance, epsilon):
    """Folds an inference-mode batch norm into the preceding bias-free conv.

    Args:
      kernel: conv kernel `[..., C_in, C_out]`.
      gamma, beta, mean, variance: batch-norm parameters `[C_out]` (gamma None = 1,
        beta None = 0).
      epsilon: the batch norm's epsilon.

    Returns:
      `(kernel, bias)` as float64 NumPy arrays such that
      `conv(x, kernel) + bias == bn(conv(x, kernel_in))`.
    """
    kernel = np.asarray(kernel, np.float64)
    mean = np.asarray(mean, np.float64)
    scale = 1.0 / np.sqrt(np.asarray(variance, np.float64) + epsilon)
    if gamma is not None:
        scale = scale * np.asarray(gamma, np.float64)
    bias = -mean * scale
    if beta is not None:
        bias = bias + np.asarray(beta, np.float64)
    return kernel * scale, bias


def fold_conv_norm(conv, norm):
    """`fold_batch_norm` of a bias-free Keras conv and the Keras batch norm after it."""
    _check_batch_norm(norm)
    return fold_batch_norm(
        conv.kernel.numpy(), _numpy(norm.gamma), _numpy(norm.beta), norm.moving_mean.numpy(),
        norm.moving_variance.numpy(), norm.epsilon,
    )


def _check_batch_norm(norm):
    # GroupNorm depends on the data: it has no fixed scale and shift to fold or import.
    if not isinstance(norm, keras.layers.BatchNormalization):
        raise ValueError(f"expected a batch norm, got {type(norm).__name__}")


def _numpy(variable):
    return None if variable is None else variable.numpy()


class ConvWeights(NamedTuple):
    """The variables of a conv and of the batch norm after it, as weight importers see them.

    Attributes:
      kernel: the conv kernel `[kh, kw, C_in, C_out]`.
      bias: the conv's bias `[C_out]`, or None (our convs before a batch norm have none).
      norm: the batch norm's `(gamma, beta, moving_mean, moving_variance)` (Caffe's blob
        order and Keras's `get_weights` order), or None where no batch norm follows.
    """

    kernel: keras.Variable
    bias: keras.Variable | None
    norm: tuple[keras.Variable, keras.Variable, keras.Variable, keras.Variable] | None


def conv_weights(conv, norm=None):
    """`ConvWeights` of a Keras conv and the Keras batch norm (or None) after it."""
    if norm is not None:
        _check_batch_norm(norm)
    return ConvWeights(
        conv.kernel, conv.bias,
        None if norm is None else (norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance),
    )


@keras.saving.register_keras_serializable(package="ciss_tf")
class PyramidPooling(keras.layers.Layer):
    """Pyramid pooling branches, returned concatenated in the order bins[::-1] (6, 3, 2, 1).

    The input itself is not included in the output, so callers decide what to concatenate
    (the feature net concatenates res5, the encoders concatenate X and the encoded map).

    Args:
      channels: output channels of each branch.
      bins: pooling grid sizes.
      norm: "batch", "batch_per_replica" or "group" (`make_norm`).

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
        self.norms = [make_norm(norm, channels, name=f"pool{b}_{kind}_norm") for b in self.bins]

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
        """Each branch's 1x1 conv with its batch norm folded in (`fold_batch_norm`).

        Returns:
          A list of `(kernel [1, 1, C, channels], bias [channels])` float64 NumPy pairs,
          in `bins` order.

        Raises:
          ValueError: if the branches use GroupNorm, which depends on the data.
        """
        return [
            fold_conv_norm(conv, norm) for conv, norm in zip(self.convs, self.norms, strict=True)
        ]

    def branch_weights(self):
        """`ConvWeights` of each branch's 1x1 conv and batch norm, in `bins` order."""
        return [
            conv_weights(conv, norm) for conv, norm in zip(self.convs, self.norms, strict=True)
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
