"""ciss_tf.evaluation.segmenter: PSPNet's window grid, and its multi-scale / flip /
sliding-window protocol against a direct NumPy rendering of it."""

import math

import numpy as np
import tensorflow as tf

from ciss_tf.data import preprocessing, synthetic
from ciss_tf.evaluation import segmenter

NUM_CLASSES = synthetic.NUM_CLASSES


def _resize(x, size):
    """Bilinear, corners aligned: the original `Interp`, through TF1's public API."""
    return tf.compat.v1.image.resize_bilinear(tf.cast(x, tf.float32), size, align_corners=True)


def test_sliding_windows_follow_pspnet_grid():
    # Stride ceil(6 * 2/3) = 4; the last window is shifted back to end at the border.
    assert segmenter.sliding_windows((10, 7), (6, 6)) == [
        (0, 0, 6, 6), (0, 1, 6, 7), (4, 0, 10, 6), (4, 1, 10, 7),
    ]
    # Shorter than the crop along an axis: one window starting at 0, cut at the border.
    assert segmenter.sliding_windows((4, 13), (6, 6)) == [
        (0, 0, 4, 6), (0, 4, 4, 10), (0, 7, 4, 13),
    ]
    # One rounding rule (half up, at least 1) for inference and the training augmentation.
    assert preprocessing.scaled_size((37, 53), 0.5).numpy().tolist() == [19, 27]  # .5 up
    assert preprocessing.scaled_size((3, 3), 0.1).numpy().tolist() == [1, 1]
    assert preprocessing.scaled_size(tf.constant([5, 7]), tf.constant(0.5)).numpy().tolist() == [
        3, 4]  # float32 scale tensors, as the augmentation draws them


def test_scale_one_without_flip_and_a_crop_larger_than_the_image_are_single_pass(varied_net):
    images = tf.random.stateless_normal([1, 37, 53, 3], seed=[3, 4], stddev=60.0)
    single = segmenter.Segmenter(varied_net, (0, 1)).labels(images)
    # The multi-scale and sliding-window path: two scales of 1.0 average to the same
    # probabilities, and a crop larger than the image leaves it whole and unpadded.
    general = segmenter.Segmenter(varied_net, (0, 1), scales=(1.0, 1.0), crop_size=(40, 64))
    assert single.shape == (2, 1, 37, 53)
    np.testing.assert_array_equal(general.labels(images), single)


def test_multi_scale_flip_and_sliding_window_follow_pspnet(varied_net):
    net = varied_net
    image = tf.random.stateless_normal([1, 37, 53, 3], seed=[5, 6], stddev=60.0)
    scales, crop, step = (0.6, 1.0), (24, 24), 1
    segment = segmenter.Segmenter(net, (step,), scales=scales, flip=True, crop_size=crop)
    labels = segment.labels(image)

    # PSPNet's protocol written out directly. At scale 1.0 six 24x24 windows; at 0.6 the
    # 22x32 image is cut into two 22x24 windows padded with 0 to 24x24.
    total = 0.0
    for scale in scales:
        size = (max(1, math.floor(37 * scale + 0.5)), max(1, math.floor(53 * scale + 0.5)))
        scaled = image if size == (37, 53) else _resize(image, size)
        summed = np.zeros([*size, NUM_CLASSES])
        count = np.zeros([*size, 1])
        for top, left, bottom, right in segmenter.sliding_windows(size, crop):
            tile = np.zeros([1, *crop, 3], np.float32)
            tile[0, : bottom - top, : right - left] = scaled[0, top:bottom, left:right]
            batch = np.concatenate([tile, tile[:, :, ::-1]])
            logits = net(batch, training=False, num_steps=step)["logits"][step]
            probabilities = tf.nn.softmax(_resize(logits, crop)).numpy()
            averaged = (probabilities[0] + probabilities[1, :, ::-1]) / 2
            summed[top:bottom, left:right] += averaged[: bottom - top, : right - left]
            count[top:bottom, left:right] += 1
        total += _resize((summed / count)[np.newaxis], (37, 53))[0].numpy()
    expected = np.argmax(total / 2, axis=-1)
    np.testing.assert_array_equal(labels[0, 0], expected)
