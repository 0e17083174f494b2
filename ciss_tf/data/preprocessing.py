"""Image preprocessing shared by the input pipeline, the inference tools and serving.

The network's input is caffe-style (`normalize_image`); an image the network sees at
another scale is resized by `rescale_images`, its size rounded by the one rule of
`scaled_size`, which the training augmentation uses too.
"""

import tensorflow as tf

from ciss_tf.modeling import ops

MEAN_RGB = (123.68, 116.779, 103.939)


def normalize_image(image: tf.Tensor) -> tf.Tensor:
    """Caffe-style input: RGB minus the ImageNet means, then channels flipped to BGR.

    Args:
        image: uint8 or float RGB tensor [..., 3] (batched or not).

    Returns:
        float32 BGR tensor of the same shape; no division by a std.
    """
    rgb = tf.cast(image, tf.float32) - tf.constant(MEAN_RGB, tf.float32)
    return tf.reverse(rgb, axis=[-1])


def denormalize_image(x: tf.Tensor) -> tf.Tensor:
    """Inverse of `normalize_image`, rounded and clipped to a uint8 RGB tensor [..., 3]."""
    rgb = tf.reverse(tf.cast(x, tf.float32), axis=[-1]) + tf.constant(MEAN_RGB, tf.float32)
    return tf.cast(tf.clip_by_value(tf.round(rgb), 0.0, 255.0), tf.uint8)


def scaled_size(size, scale):
    """`(height, width)` times `scale`, rounded half up, at least 1 pixel: int32 `[2]`.

    Args:
      size: `(height, width)`, Python ints or an int tensor.
      scale: a Python float or a float scalar tensor.
    """
    product = tf.cast(size, tf.float64) * tf.cast(scale, tf.float64)
    return tf.maximum(tf.cast(tf.floor(product + 0.5), tf.int32), 1)


def rescale_images(images, scale):
    """`images` `[B, H, W, C]` resized by `scale` (corners aligned; sizes as `scaled_size`)."""
    if scale == 1.0:
        return images
    return ops.resize_bilinear(images, tf.unstack(scaled_size(tf.shape(images)[1:3], scale)))
