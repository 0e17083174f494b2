"""What a training run reports: TensorBoard scalars and `train_summary.json`."""

import json
import os

import numpy as np
import tensorflow as tf

from ciss_tf.training.optimizers import make_schedule

SUMMARY_FILE = "train_summary.json"
SUMMARY_WINDOW = 50  # steps averaged into the summary's final_terms


def read_summary(model_dir):
    """The `SUMMARY_FILE` of a run (see `write_summary`), or None when there is none."""
    path = os.path.join(model_dir, SUMMARY_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def write_summary(model_dir, step, max_steps, seconds, recent_terms):
    """Writes `<model_dir>/train_summary.json` next to the checkpoint of `step`.

    `{"step": step, "max_steps": max_steps (the run is finished when they are equal),
    "seconds": training wall time up to that checkpoint, summed over the sessions (a
    resumed session adds to the time recorded before it; work lost to an interruption after
    the last checkpoint is not counted), "final_terms": {term: mean over the last
    `SUMMARY_WINDOW` steps run in this session}}`. `final_terms["kept_fraction"]`
    is the share of context kept by the sampled gate at the end of training (the keep rate
    of `--context_mode=random`, see `experiments/camvid.sh`).
    """
    names = recent_terms[-1].keys() if recent_terms else ()
    summary = {
        "step": int(step),
        "max_steps": max_steps,
        "seconds": float(seconds),
        "final_terms": {
            name: float(np.mean([terms[name] for terms in recent_terms])) for name in names
        },
    }
    path = os.path.join(model_dir, SUMMARY_FILE)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def write_scalars(writer, trainer, terms, step, steps_per_second):
    """The step's terms (tagged by the task), every group's rate and the throughput."""
    with writer.as_default(step=step):
        for name, value in terms.items():
            tf.summary.scalar(trainer.task.summary_tag(name), value)
        for group in trainer.groups:
            # The rate step `step` (counted from 1) used: its schedule at iteration step - 1.
            schedule = make_schedule(group.learning_rate, trainer.cfg.optimizer,
                                     trainer.cfg.max_steps)
            tf.summary.scalar(f"learning_rate/{group.name}", float(schedule(step - 1)))
        tf.summary.scalar("perf/steps_per_second", steps_per_second)
        tf.summary.scalar("perf/images_per_second", steps_per_second * trainer.global_batch)


def format_seconds(seconds):
    """`1h02m03s`."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
