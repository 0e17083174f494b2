import math

import numpy as np
import pytest
import tensorflow as tf

from ciss_tf import metrics


def brute_force_confusion(labels, predictions, num_classes, ignore_label):
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for gt, pred in zip(np.ravel(labels), np.ravel(predictions), strict=True):
        if gt != ignore_label:
            confusion[gt, pred] += 1
    return confusion


def random_case(rng, shape, num_classes, ignore_label=255, ignore_fraction=0.2):
    labels = rng.integers(0, num_classes, size=shape)
    labels[rng.random(shape) < ignore_fraction] = ignore_label
    predictions = rng.integers(0, num_classes, size=shape)
    # Predictions under ignored pixels may be anything the network outputs; make some of
    # them out of range to check they are not looked at.
    ignored = labels == ignore_label
    predictions[ignored] = rng.integers(-3, 300, size=int(ignored.sum()))
    return labels, predictions


@pytest.mark.parametrize(
    "shape,num_classes,dtype",
    [
        ((7,), 2, np.int32),
        ((5, 9), 4, np.int64),
        ((2, 6, 11), 19, np.int32),
        ((3, 1, 4, 5), 7, np.int16),
    ],
)
def test_confusion_matrix_matches_brute_force(shape, num_classes, dtype):
    rng = np.random.default_rng(sum(shape) * num_classes)
    labels, predictions = random_case(rng, shape, num_classes)
    expected = brute_force_confusion(labels, predictions, num_classes, 255)
    got = metrics.confusion_matrix(labels.astype(dtype), predictions.astype(dtype), num_classes)
    assert got.dtype == np.int64
    assert got.shape == (num_classes, num_classes)
    np.testing.assert_array_equal(got, expected)
    assert got.sum() == np.sum(labels != 255)


def test_confusion_matrix_accepts_uint8_and_tensors():
    labels = np.array([[0, 1, 255], [2, 2, 1]], np.uint8)
    predictions = np.array([[0, 2, 200], [2, 1, 1]], np.uint8)
    expected = np.array([[1, 0, 0], [0, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, predictions, 3), expected)
    np.testing.assert_array_equal(
        metrics.confusion_matrix(tf.constant(labels), tf.constant(predictions), 3), expected
    )


def test_confusion_matrix_custom_ignore_label():
    labels = np.array([0, 1, 1, 3, 3])
    predictions = np.array([0, 0, 1, 9, 1])
    np.testing.assert_array_equal(
        metrics.confusion_matrix(labels, predictions, 3, ignore_label=3),
        [[1, 0, 0], [1, 1, 0], [0, 0, 0]],
    )


@pytest.mark.parametrize("bad", [3, -1])
def test_prediction_out_of_range_raises(bad):
    with pytest.raises(ValueError, match=rf"prediction value\(s\) \[{bad}\]"):
        metrics.confusion_matrix(np.array([0, 1, 2]), np.array([0, bad, 2]), 3)


def test_ground_truth_out_of_range_raises_and_names_value():
    with pytest.raises(ValueError, match=r"ground-truth value\(s\) \[7\]"):
        metrics.confusion_matrix(np.array([0, 7, 255]), np.array([0, 1, 2]), 3)


def test_shape_mismatch_and_float_input_raise():
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 3)
    with pytest.raises(ValueError, match="integers"):
        metrics.confusion_matrix(np.zeros(3), np.zeros(3, int), 3)


def test_scores_hand_computed_three_classes():
    # rows = ground truth, columns = prediction
    confusion = np.array([[4, 1, 0], [2, 5, 1], [0, 1, 2]])
    scores = metrics.segmentation_scores(confusion)
    # class 0: TP 4, FN 1, FP 2 -> 4/7
    # class 1: TP 5, FN 3, FP 2 -> 5/10
    # class 2: TP 2, FN 1, FP 1 -> 2/4
    np.testing.assert_allclose(scores["iou"], [4 / 7, 0.5, 0.5])
    assert scores["miou"] == pytest.approx((4 / 7 + 1.0) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(11 / 16)
    np.testing.assert_allclose(scores["class_accuracy"], [4 / 5, 5 / 8, 2 / 3])
    assert scores["mean_accuracy"] == pytest.approx((4 / 5 + 5 / 8 + 2 / 3) / 3)


def test_scores_unequal_ious():
    confusion = np.array([[5, 0, 1], [0, 0, 0], [3, 2, 4]])
    scores = metrics.segmentation_scores(confusion)
    # class 1 is never in the ground truth but predicted twice: IoU 0, counted in the mean.
    np.testing.assert_allclose(scores["iou"], [5 / 9, 0.0, 4 / 10])
    assert scores["miou"] == pytest.approx((5 / 9 + 0.4) / 3)
    assert math.isnan(scores["class_accuracy"][1])
    assert scores["mean_accuracy"] == pytest.approx((5 / 6 + 4 / 9) / 2)


def test_absent_class_is_nan_and_left_out_of_mean():
    confusion = np.array([[2, 0, 2], [0, 0, 0], [0, 0, 4]])
    scores = metrics.segmentation_scores(confusion)
    assert scores["iou"][0] == pytest.approx(0.5)
    assert math.isnan(scores["iou"][1])
    assert scores["iou"][2] == pytest.approx(4 / 6)
    assert scores["miou"] == pytest.approx((0.5 + 4 / 6) / 2)
    assert scores["pixel_accuracy"] == pytest.approx(6 / 8)
    assert isinstance(scores["iou"], list)


def test_all_zero_confusion_gives_nan():
    scores = metrics.segmentation_scores(np.zeros((3, 3), np.int64))
    assert math.isnan(scores["miou"])
    assert math.isnan(scores["pixel_accuracy"])
    assert all(math.isnan(v) for v in scores["iou"])


def test_perfect_prediction_scores_one():
    labels = np.array([[0, 1], [2, 255]])
    predictions = np.where(labels == 255, 0, labels)
    scores = metrics.segmentation_scores(metrics.confusion_matrix(labels, predictions, 4))
    assert scores["miou"] == 1.0
    assert scores["pixel_accuracy"] == 1.0
    assert math.isnan(scores["iou"][3])


def test_scores_reject_bad_matrix():
    with pytest.raises(ValueError, match="square"):
        metrics.segmentation_scores(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="negative"):
        metrics.segmentation_scores(np.array([[1, -1], [0, 1]]))


def test_tf_confusion_matrix_equals_numpy_in_graph():
    num_classes = 6
    graph_fn = tf.function(
        lambda labels, predictions: metrics.confusion_matrix_tf(labels, predictions, num_classes),
        input_signature=[tf.TensorSpec([None, None, None], tf.int32)] * 2,
    )
    rng = np.random.default_rng(3)
    for shape in [(1, 4, 5), (2, 17, 9), (3, 1, 1)]:
        labels, predictions = random_case(rng, shape, num_classes)
        got = graph_fn(tf.constant(labels, tf.int32), tf.constant(predictions, tf.int32))
        assert got.dtype == tf.int64
        expected = metrics.confusion_matrix(labels, predictions, num_classes)
        np.testing.assert_array_equal(got.numpy(), expected)


def test_tf_confusion_matrix_eager_uint8_and_custom_ignore():
    labels = tf.constant([[0, 1, 3], [3, 2, 2]], tf.uint8)
    predictions = tf.constant([[0, 2, 250], [1, 2, 1]], tf.uint8)
    got = metrics.confusion_matrix_tf(labels, predictions, 3, ignore_label=3)
    expected = metrics.confusion_matrix(labels, predictions, 3, ignore_label=3)
    np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(got.numpy(), [[1, 0, 0], [0, 0, 1], [0, 1, 1]])


@pytest.mark.parametrize("gt,pred", [([0, 1], [0, 3]), ([0, 1], [-1, 0]), ([5, 1], [0, 0])])
def test_tf_confusion_matrix_out_of_range_fails_in_graph(gt, pred):
    graph_fn = tf.function(lambda a, b: metrics.confusion_matrix_tf(a, b, 3))
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside 0..2"):
        graph_fn(tf.constant(gt), tf.constant(pred))


def test_tf_confusion_matrix_accumulates_over_batches():
    # The evaluator's pattern: per-batch matrices summed into an int64 variable in a graph.
    num_classes = 5
    total = tf.Variable(tf.zeros([num_classes, num_classes], tf.int64))

    @tf.function
    def accumulate(labels, predictions):
        total.assign_add(metrics.confusion_matrix_tf(labels, predictions, num_classes))

    rng = np.random.default_rng(11)
    batches = [random_case(rng, (2, 8, 8), num_classes) for _ in range(3)]
    for labels, predictions in batches:
        accumulate(tf.constant(labels), tf.constant(predictions))
    all_labels = np.concatenate([labels for labels, _ in batches])
    all_predictions = np.concatenate([predictions for _, predictions in batches])
    np.testing.assert_array_equal(
        total.numpy(), brute_force_confusion(all_labels, all_predictions, num_classes, 255)
    )
