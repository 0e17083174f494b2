"""preprocessing: the caffe-style normalisation shared by training and serving."""

import numpy as np
import tensorflow as tf

from ciss_tf.data import preprocessing


def test_normalize_is_caffe_style_and_inverts():
    x = preprocessing.normalize_image(tf.constant([[[1, 2, 3]]], tf.uint8)).numpy()
    np.testing.assert_allclose(x, [[[3 - 103.939, 2 - 116.779, 1 - 123.68]]], rtol=0, atol=1e-4)
    batch = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    normalised = preprocessing.normalize_image(batch)
    assert normalised.dtype == tf.float32 and normalised.shape == (2, 5, 4, 3)
    np.testing.assert_array_equal(preprocessing.denormalize_image(normalised).numpy(), batch)
