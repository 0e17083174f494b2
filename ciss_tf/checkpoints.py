"""Checkpoint conventions shared by training, evaluation, prediction and export.

Training writes `tf.train.Checkpoint(model=..., optimizer=..., step=...)` with a
`tf.train.CheckpointManager` into `--model_dir` (files `ckpt-<step>.*`). Every other tool
restores only the model, by object path, so optimizer slots are not needed to evaluate.
A stage-2 CiSS-Net initialises its feature net from a stage-1 PSPNet checkpoint through
the shared attribute name `model.feature_net`.
"""

import os

import tensorflow as tf


def resolve(path_or_dir):
    """A checkpoint prefix from a prefix or a directory (its latest checkpoint).

    Raises:
      ValueError: if nothing is there, naming the path.
    """
    if tf.io.gfile.isdir(path_or_dir):
        latest = tf.train.latest_checkpoint(path_or_dir)
        if latest is None:
            raise ValueError(f"no checkpoint in directory {path_or_dir}")
        return latest
    if not tf.io.gfile.exists(path_or_dir + ".index"):
        raise ValueError(f"checkpoint not found: {path_or_dir}")
    return path_or_dir


def restore_model(model, path_or_dir):
    """Restores `model`'s weights (built beforehand) from a training checkpoint.

    Returns:
      The checkpoint prefix that was read.
    """
    path = resolve(path_or_dir)
    status = tf.train.Checkpoint(model=model).restore(path)
    status.expect_partial().assert_existing_objects_matched()
    return path


def restore_feature_net(model, path_or_dir):
    """Loads `model.feature_net` from a stage-1 (PSPNet) or stage-2 checkpoint."""
    path = resolve(path_or_dir)
    reader = tf.train.Checkpoint(model=tf.train.Checkpoint(feature_net=model.feature_net))
    reader.restore(path).expect_partial().assert_existing_objects_matched()
    return path


def step_of(path):
    """The training step encoded in a checkpoint prefix `.../ckpt-<step>`, or 0."""
    suffix = os.path.basename(path).rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0
