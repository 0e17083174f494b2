"""Resizing ops shared by the network, the loss and inference, and the layers' build shape.

The original code resizes everything with TF1's `resize_images(..., align_corners=True)`
(its `Interp`); the official PSPNet weights were trained that way too, so we keep the same
sampling grid. `tf.image.resize` in TF2 has no `align_corners`, hence the raw ops.
"""

import tensorflow as tf


def resize_bilinear(x, size):
    """Bilinear resize with corner pixels aligned (the original `Interp`).

    Args:
      x: float tensor `[B, H, W, C]`.
      size: target `(height, width)`, ints or scalar tensors.

    Returns:
      `[B, height, width, C]` in the dtype of `x`.
    """
    dtype = x.dtype
    y = tf.raw_ops.ResizeBilinear(
        images=tf.cast(x, tf.float32), size=tf.stack(size), align_corners=True
    )
    return tf.cast(y, dtype)


def resize_nearest(x, size):
    """Nearest-neighbour resize with corners aligned, for label-like tensors `[B, H, W, C]`."""
    return tf.raw_ops.ResizeNearestNeighbor(images=x, size=tf.stack(size), align_corners=True)


def resize_labels(labels, size):
    """Nearest-neighbour resize of int labels `[B, H, W]` to `size`."""
    return resize_nearest(labels[..., tf.newaxis], size)[..., 0]


def channels_shape(channels):
    """An NHWC shape that knows only its channels: all a conv or a norm needs to build.

    The composite layers build their children from it in `build`, so that Keras never has to
    trace a whole network symbolically to create its variables.
    """
    return (None, None, None, channels)


def spatial_size(x):
    """Height and width of a `[B, H, W, C]` tensor: static ints where known, else scalars."""
    dynamic = tf.shape(x)
    return tuple(
        x.shape[i] if x.shape[i] is not None else dynamic[i] for i in (1, 2)
    )
