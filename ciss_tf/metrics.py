"""Segmentation metrics from a dataset-level confusion matrix.

Scores are computed once per dataset from the summed confusion matrix, never averaged over
images. With TP, FP and FN the true positive, false positive and false negative pixel counts of
a class, its intersection over union is IoU = TP / (TP + FP + FN); mIoU is the mean IoU over
the classes that occur in the ground truth or the prediction (TP + FP + FN > 0); the rest are
NaN and left out of the mean. Pixel accuracy is the trace over the total count.

`confusion_matrix` is the NumPy version for host code; `confusion_matrix_tf` computes the same
matrix in a graph (inside `tf.function` or per replica under `tf.distribute`) so evaluation can
sum matrices across steps and replicas without leaving TensorFlow.
"""

import math

import numpy as np
import tensorflow as tf


def _check_range(values, num_classes, what):
    """Raises ValueError if any of `values` lies outside 0..num_classes-1."""
    bad = (values < 0) | (values >= num_classes)
    if np.any(bad):
        shown = np.unique(values[bad])[:5].tolist()
        raise ValueError(
            f"{what} value(s) {shown} outside 0..{num_classes - 1} on non-ignored pixels"
        )


def confusion_matrix(labels, predictions, num_classes, ignore_label=255):
    """Counts (ground truth, prediction) pairs over all non-ignored pixels.

    Args:
      labels: int array (NumPy or tensor) of ground-truth class ids, any shape; may hold
        `ignore_label`.
      predictions: int array of predicted class ids, same shape as `labels`.
      num_classes: number of classes C.
      ignore_label: ground-truth value whose pixels are not counted.

    Returns:
      int64 NumPy array `[C, C]`; entry `[i, j]` counts pixels of ground truth i predicted
      as j (rows = ground truth, columns = prediction).

    Raises:
      ValueError: shapes differ, the arrays are not integers, or a counted pixel has a
        ground-truth or predicted value outside `0..C-1`.
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"labels shape {labels.shape} != predictions shape {predictions.shape}"
        )
    for name, array in (("labels", labels), ("predictions", predictions)):
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must be integers, got dtype {array.dtype}")
    counted = labels != ignore_label
    gt = labels[counted].astype(np.int64)
    pred = predictions[counted].astype(np.int64)
    _check_range(gt, num_classes, "ground-truth")
    _check_range(pred, num_classes, "prediction")
    counts = np.bincount(num_classes * gt + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def confusion_matrix_tf(labels, predictions, num_classes, ignore_label=255):
    """Graph-mode twin of `confusion_matrix`, for use inside `tf.function`.

    Shapes stay static (ignored pixels get weight 0 instead of being removed), so the op
    runs per replica and the results can be summed with `strategy.reduce(SUM, ...)` or
    accumulated in an int64 variable.

    Args:
      labels: int tensor of ground-truth class ids, any shape; may hold `ignore_label`.
      predictions: int tensor of predicted class ids, same shape as `labels`.
      num_classes: number of classes C (a Python int).
      ignore_label: ground-truth value whose pixels are not counted.

    Returns:
      int64 tensor `[C, C]`, rows = ground truth, columns = prediction.

    Raises:
      tf.errors.InvalidArgumentError: at run time, when a counted pixel has a ground-truth
        or predicted value outside `0..C-1` (a graph cannot raise ValueError).
    """
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int64), [-1])
    counted = tf.not_equal(labels, ignore_label)
    # Ignored pixels become (0, 0) with weight 0 so they pass the range checks uncounted.
    gt = tf.where(counted, labels, 0)
    pred = tf.where(counted, predictions, 0)
    checks = []
    for name, values in (("ground-truth", gt), ("prediction", pred)):
        message = f"{name} value outside 0..{num_classes - 1} on a non-ignored pixel"
        checks.append(tf.debugging.assert_non_negative(values, message=message))
        checks.append(tf.debugging.assert_less(values, tf.constant(num_classes, tf.int64),
                                               message=message))
    with tf.control_dependencies(checks):
        counts = tf.math.bincount(
            num_classes * gt + pred,
            weights=tf.cast(counted, tf.int64),
            minlength=num_classes * num_classes,
            maxlength=num_classes * num_classes,
            dtype=tf.int64,
        )
    return tf.reshape(counts, [num_classes, num_classes])


def _ratios(numerator, denominator):
    """Elementwise numerator / denominator as float64, NaN where the denominator is 0."""
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _nanmean(values):
    """Mean of the non-NaN entries, NaN (without a warning) when there are none."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def segmentation_scores(confusion):
    """IoU, mIoU and accuracies from a confusion matrix.

    Args:
      confusion: `[C, C]` counts, rows = ground truth, columns = prediction (for example the
        sum of `confusion_matrix` over a dataset).

    Returns:
      A dict of fractions in [0, 1]:
        `miou`: mean of `iou` over the classes present in ground truth or prediction.
        `pixel_accuracy`: correctly labelled pixels over all counted pixels.
        `iou`: list of C per-class IoUs, NaN for classes absent from both.
        `class_accuracy`: list of C per-class recalls TP / (TP + FN), NaN for classes absent
          from the ground truth.
        `mean_accuracy`: mean of `class_accuracy` over the classes in the ground truth.
      For an all-zero matrix (nothing counted) every score is NaN.

    Raises:
      ValueError: `confusion` is not a square matrix of non-negative counts.
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {confusion.shape}")
    if np.any(confusion < 0):
        raise ValueError("confusion holds negative counts")
    confusion = confusion.astype(np.float64)
    true_positives = np.diag(confusion)
    gt_pixels = confusion.sum(axis=1)
    predicted_pixels = confusion.sum(axis=0)
    iou = _ratios(true_positives, gt_pixels + predicted_pixels - true_positives)
    class_accuracy = _ratios(true_positives, gt_pixels)
    return {
        "miou": _nanmean(iou),
        "pixel_accuracy": float(_ratios(true_positives.sum(), confusion.sum())),
        "iou": iou.tolist(),
        "class_accuracy": class_accuracy.tolist(),
        "mean_accuracy": _nanmean(class_accuracy),
    }
