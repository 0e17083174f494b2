"""Conv and normalisation utilities shared by every conv + norm unit of the network.

The networks (`backbone`, `ppm`, `pspnet`, `trunk`) build their norms with `make_norm`.
The layers' hooks for the tools that rewrite or import them (`serving.fast_inference`,
`convert.imagenet`, `convert.pspnet_weights`) return what the helpers here compute:
`fold_conv_norm` / `fold_batch_norm` (a frozen batch norm folded into the conv before it)
and `conv_weights` / `ConvWeights` (the variables an importer assigns). These utilities
have their own module because they belong to no one layer: every network takes its norms
from here rather than from the module of one of them.
"""

from typing import NamedTuple

import keras
import numpy as np

GROUP_SIZE = 16  # channels per GroupNorm group (paper, Sec. 4.1)


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
