"""Greedy scores of a CiSS-Net run at every step t, and what its gate keeps as context.

    unroll = greedy_eval.greedy_unroll(model)
    scores, gate, step0_errors = greedy_eval.evaluate_run(unroll, dataset, num_classes)

Used by the demo (`ciss_tf.tools.demo`) and the CamVid report (`experiments/camvid_report.py`).
"""

import numpy as np
import tensorflow as tf

from ciss_tf import metrics
from ciss_tf.data import datasets
from ciss_tf.modeling import inference, ops

EVAL_STEPS = (0, 1, 2, 3, 4, 5, 6)
GATE_STEP = 1


def greedy_unroll(model, num_steps=EVAL_STEPS[-1]):
    """The traced greedy unroll used for every score, gate statistic and figure.

    Returns:
      `fn(images)` -> dict: `labels` int32 `[T+1, B, H, W]` (class ids at the input size,
      logits upsampled as `ciss_tf.modeling.inference` does), `small_labels` int32 `[T+1, B, h, w]`
      (the same at stride 8), `context` and `actions` int32 `[T, B, h, w]`.
    """

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def unroll(images):
        outputs = inference.segment(model, images, num_steps, context_steps=())
        context = outputs["small_context"]
        return {
            "labels": outputs["labels"],
            "small_labels": tf.argmax(outputs["small_logits"], -1, tf.int32),
            "context": context,
            # K_t = B_t (argmax + 1): kept exactly where the context map is not uncertain.
            "actions": tf.cast(context > 0, tf.int32),
        }

    return unroll


def evaluate_run(unroll, dataset, num_classes, ignore_label=datasets.IGNORE_LABEL):
    """Scores at every step of `EVAL_STEPS` and the gate statistics at `GATE_STEP`.

    Args:
      unroll: `greedy_unroll(model)`.
      dataset: batches of `image` and `label` (`input_pipeline.eval_dataset`).
      num_classes: Nc.
      ignore_label: label of unscored pixels.

    Returns:
      `(scores, gate, step0_errors)`: `scores` `{"<t>": {"miou", "pixel_accuracy", "iou"}}`
      from one confusion matrix per step over the whole dataset; `gate` `{"kept",
      "kept_where_right", "kept_where_wrong", "pmap_error"}`, measured on the stride-8 grid
      against nearest-downsampled labels: the share of all pixels kept as context
      `K_GATE_STEP`, the same among labelled pixels whose prediction at `GATE_STEP` is right
      (wrong), and the share of labelled pixels predicted wrong (NaN where nothing is
      counted); `step0_errors` the number of wrong pixels at t = 0, per image.
    """
    confusion = np.zeros([len(EVAL_STEPS), num_classes, num_classes], np.int64)
    gate_counts = np.zeros(5, np.int64)  # pixels, kept, right, wrong, kept & right
    kept_wrong, step0_errors = 0, []
    for batch in dataset:
        outputs = {k: v.numpy() for k, v in unroll(batch["image"]).items()}
        labels = batch["label"].numpy()
        for i, t in enumerate(EVAL_STEPS):
            confusion[i] += metrics.confusion_matrix(
                labels, outputs["labels"][t], num_classes, ignore_label
            )
        step0_errors += list(((outputs["labels"][0] != labels)
                              & (labels != ignore_label)).sum(axis=(1, 2)))
        kept = outputs["actions"][GATE_STEP].astype(bool)
        small = ops.resize_labels(tf.constant(labels, tf.int32), kept.shape[1:]).numpy()
        valid = small != ignore_label
        right = valid & (outputs["small_labels"][GATE_STEP] == small)
        wrong = valid & ~right
        gate_counts += [kept.size, kept.sum(), right.sum(), wrong.sum(), (kept & right).sum()]
        kept_wrong += (kept & wrong).sum()
    pixels, kept, right, wrong, kept_right = gate_counts
    gate = {
        "kept": _ratio(kept, pixels),
        "kept_where_right": _ratio(kept_right, right),
        "kept_where_wrong": _ratio(kept_wrong, wrong),
        "pmap_error": _ratio(wrong, right + wrong),
    }
    scores = {}
    for i, t in enumerate(EVAL_STEPS):
        s = metrics.segmentation_scores(confusion[i])
        scores[str(t)] = {"miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"],
                          "iou": [None if np.isnan(v) else v for v in s["iou"]]}
    return scores, gate, step0_errors


def _ratio(numerator, denominator):
    return float(numerator / denominator) if denominator else float("nan")
