"""Scoring a model on a dataset, in process: the trainer, the demo and the evaluate tool.

Scores come from one confusion matrix per step summed over the whole split, at the original
image resolution (`ciss_tf.metrics`). One unroll to `max(eval_steps)` gives every step.
`scales`, `flip` and `crop_size` switch on PSPNet's multi-scale, mirrored and
sliding-window inference (`ciss_tf.evaluation.segmenter.Segmenter`). The evaluate tool
(checkpoint, tables, JSON report, official Cityscapes scores) is `tools/evaluate_tool.py`.
"""

import os
import sys
import time

import numpy as np
import tensorflow as tf

from ciss_tf import metrics
from ciss_tf.data import datasets
from ciss_tf.evaluation import segmenter

DEFAULT_EVAL_STEPS = (0, 2, 4, 6)


def evaluate_model(model, dataset, *, num_classes, eval_steps=DEFAULT_EVAL_STEPS,
                   ignore_label=datasets.IGNORE_LABEL, scales=(1.0,), flip=False,
                   crop_size=None, policy="greedy", seed=0, on_prediction=None,
                   progress=False, combine=None):
    """Scores a model on a dataset at several unrolled steps.

    Args:
      model: a `CissNet` (or a `PSPNet` with `eval_steps=(0,)`).
      dataset: batches of `image` (normalised) `[B, H, W, 3]` and `label` `[B, H, W]`, and
        `filename` `[B]` if `on_prediction` is given (`input_pipeline.eval_dataset`).
      num_classes: Nc.
      eval_steps: steps t to score.
      ignore_label: label of pixels left out of the scores.
      scales: image scales averaged (see `segmenter.Segmenter`).
      flip: also average the mirrored image.
      crop_size: sliding-window `(height, width)`, or None for whole images.
      policy: "greedy" or "sample".
      seed: seed of the sampled actions (keyed by the image's index in `dataset`).
      on_prediction: optional `fn(filename, {t: int32 [H, W] class ids})`, called per image.
      progress: show a progress bar on stderr.
      combine: optional `fn(confusion, count) -> (confusion, count)` applied to this
        dataset's int64 confusion matrices `[len(eval_steps), Nc, Nc]` and image count
        before scoring: the trainer sums them over workers that each scored a share.

    Returns:
      `{"steps": {"<t>": scores}, "num_images": n}`, with `scores` the dict of
      `metrics.segmentation_scores` (`miou`, `pixel_accuracy`, `iou`, ...).

    Raises:
      ValueError: bad settings, or `dataset` is empty.
    """
    steps = tuple(eval_steps)
    segment = segmenter.Segmenter(
        model, steps, scales=scales, flip=flip, crop_size=crop_size, policy=policy, seed=seed
    )

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None], tf.int32),
        tf.TensorSpec([len(steps), None, None, None], tf.int32),
    ])
    def confusions(labels, predictions):
        return tf.map_fn(
            lambda p: metrics.confusion_matrix_tf(labels, p, num_classes, ignore_label),
            predictions, fn_output_signature=tf.int64,
        )

    total = int(dataset.cardinality())
    bar = ProgressBar(total if total >= 0 else None) if progress else None
    confusion = np.zeros([len(steps), num_classes, num_classes], np.int64)
    count = 0
    for batch in dataset:
        batch_size = int(batch["label"].shape[0])
        sample_ids = tf.range(count, count + batch_size, dtype=tf.int64)
        predictions = segment.labels(batch["image"], sample_ids)
        confusion += confusions(tf.cast(batch["label"], tf.int32), predictions).numpy()
        if on_prediction is not None:
            predictions = predictions.numpy()
            for i, filename in enumerate(batch["filename"].numpy()):
                on_prediction(
                    os.fsdecode(filename), {t: predictions[s, i] for s, t in enumerate(steps)}
                )
        count += batch_size
        if bar is not None:
            bar.update(count)
    if bar is not None:
        bar.close()
    if combine is not None:
        confusion, count = combine(confusion, count)
    if count == 0:
        raise ValueError("no images to evaluate")
    return {
        "steps": {
            str(t): metrics.segmentation_scores(confusion[s]) for s, t in enumerate(steps)
        },
        "num_images": count,
    }


class ProgressBar:
    """A one-line text bar on stderr: redrawn in place on a terminal, else every 10 s."""

    def __init__(self, total, stream=None, interval=10.0):
        self.total = total
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.interval = interval
        self.started = self.last = time.monotonic()
        self.count = 0

    def update(self, count, force=False):
        self.count = count
        now = time.monotonic()
        if not (force or self.interactive or now - self.last >= self.interval):
            return
        self.last = now
        rate = count / max(now - self.started, 1e-9)
        if self.total:
            filled = int(30 * count / self.total)
            eta = (self.total - count) / max(rate, 1e-9)
            text = (f"[{'#' * filled}{'.' * (30 - filled)}] {count}/{self.total} images  "
                    f"{rate:.2f} img/s  eta {int(eta) // 60}:{int(eta) % 60:02d}")
        else:
            text = f"{count} images  {rate:.2f} img/s"
        self.stream.write(("\r" if self.interactive else "") + text
                          + ("" if self.interactive else "\n"))
        self.stream.flush()

    def close(self):
        self.update(self.count, force=True)
        if self.interactive:
            self.stream.write("\n")
