"""A run folder is the experiment: the `TrainConfig` a run trains with is saved in it whole.

`ciss_tf.train` writes `<model_dir>/config.json` (`CONFIG_FILE`) when it starts; every tool
that reads a run (evaluate, predict, export, the demo, the CamVid report) takes the model,
dataset, T and inference scale from there (`read_config`, `load_model`), so none needs the
training flagfile. A flag given to such a tool overrides only what it names, and only where
the trained variables allow it (`override_model`).

Resuming in a folder that holds a checkpoint of another model is refused (`record`);
other changed settings (steps, rates, logging) are allowed: `config.json` then holds the
new settings and `config_changes.jsonl` one line per change (the step it took effect at,
each changed field's old and new value).
"""

import dataclasses
import json
import os
import types
import typing

import tensorflow as tf
from absl import logging

from ciss_tf.data import datasets
from ciss_tf.modeling import checkpoints
from ciss_tf.training.config import TrainConfig

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
# ModelConfig fields a tool may change on a trained model: evaluation choices that use the
# same variables (the gate, its keep rate, dropout which inference does not apply).
FREE_MODEL_FIELDS = ("context_mode", "random_keep_rate", "dropout")
# The two batch norms of the Context Net hold the same variables (`layers.make_norm`).
_SAME_VARIABLES = {"batch_per_replica": "batch"}


def to_dict(config):
    """A frozen config dataclass (nested) as JSON-ready dicts, tuples as lists."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls, values, source):
    """The config dataclass `cls` from `to_dict`'s output; missing fields keep defaults.

    Raises:
      ValueError: a field `cls` does not have, naming `source` (e.g. the file).
    """
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{source}: unknown setting {unknown[0]!r} of {cls.__name__}")
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            value = from_dict(kind, value, source)
        elif isinstance(value, list) and _is_tuple(kind):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _is_tuple(kind):
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    return any(typing.get_origin(option) is tuple for option in options)


def run_dir_of(checkpoint):
    """The run folder holding `checkpoint` (a folder or a prefix), or None if it has no config."""
    folder = checkpoint if tf.io.gfile.isdir(checkpoint) else os.path.dirname(checkpoint)
    return folder if tf.io.gfile.exists(os.path.join(folder, CONFIG_FILE)) else None


def read_config(run_dir):
    """The `TrainConfig` a run folder was trained with (its `config.json`).

    Raises:
      ValueError: no `config.json` there, or it is not one (naming the file).
    """
    path = os.path.join(run_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise ValueError(f"{path} not found: not a run folder written by ciss_tf.train")
    try:
        with tf.io.gfile.GFile(path) as f:
            values = json.load(f)
        return from_dict(TrainConfig, values, path)
    except (json.JSONDecodeError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a training config ({error})") from None


def _write_json(path, text):
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(text)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def _num_classes(cfg):
    return datasets.get_dataset_info(cfg.data.dataset).num_classes


def _changes(old, new, prefix=""):
    """`{dotted field: [old, new]}` of the settings that differ between two `to_dict`s."""
    changed = {}
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changed.update(_changes(before, after, f"{prefix}{key}."))
        elif before != after:
            changed[prefix + key] = [before, after]
    return changed


def record(cfg, step):
    """Writes `cfg` to its run folder at the start of training (the chief alone).

    Args:
      cfg: the `TrainConfig` about to train.
      step: the step training starts from (0, or the resumed checkpoint's).

    Raises:
      ValueError: the folder's earlier `config.json` is unreadable (naming it). A
        checkpoint of another model is refused before, by `check_resume`.
    """
    tf.io.gfile.makedirs(cfg.model_dir)
    path = os.path.join(cfg.model_dir, CONFIG_FILE)
    new = to_dict(cfg)
    if tf.io.gfile.exists(path):
        old = to_dict(read_config(cfg.model_dir))
        changed = _changes(old, new)
        if changed:
            with tf.io.gfile.GFile(os.path.join(cfg.model_dir, CHANGES_FILE), "a") as f:
                f.write(json.dumps({"step": step, "changed": changed}) + "\n")
            logging.info("Settings changed since the run's last start: %s",
                         ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in changed.items()))
    _write_json(path, json.dumps(new, indent=1) + "\n")


def check_resume(cfg):
    """Refuses to resume a run folder's checkpoint with a different model or dataset.

    Raises:
      ValueError: one line naming the folder and the first setting that differs.
    """
    if tf.train.latest_checkpoint(cfg.model_dir) is None or run_dir_of(cfg.model_dir) is None:
        return
    old = read_config(cfg.model_dir)
    changed = _changes(to_dict(old.model), to_dict(cfg.model), "model.")
    if _num_classes(old) != _num_classes(cfg):
        changed["data.dataset"] = [old.data.dataset, cfg.data.dataset]
    if changed:
        name, (before, after) = next(iter(changed.items()))
        raise ValueError(
            f"--model_dir {cfg.model_dir} holds a run of another model ({name} was "
            f"{before}, now {after}); resume with its settings or use a new --model_dir"
        )


def override_model(run_dir, trained, **overrides):
    """The trained `ModelConfig` with what a tool's flags name replaced.

    Args:
      run_dir: the run folder (for the error message).
      trained: the `ModelConfig` the run was trained with.
      **overrides: `ModelConfig` fields given by the tool's flags.

    Raises:
      ValueError: an override that the trained variables cannot take (another preset,
        stage, stem or norm), naming the flag and the run.
    """
    for name, value in overrides.items():
        before = getattr(trained, name)
        if name in FREE_MODEL_FIELDS or (
                _SAME_VARIABLES.get(value, value) == _SAME_VARIABLES.get(before, before)):
            continue
        raise ValueError(
            f"--{name}={value} contradicts the run {run_dir} (trained with --{name}={before})"
        )
    return dataclasses.replace(trained, **overrides)


def load_model(checkpoint, **overrides):
    """The model of a run, built as it was trained and restored from `checkpoint`.

    This is the one way a tool rebuilds a trained model.

    Args:
      checkpoint: a run folder (its latest checkpoint) or a checkpoint prefix in one.
      **overrides: `ModelConfig` fields to change (`override_model`).

    Returns:
      (model, checkpoint prefix read, the run's `TrainConfig`).

    Raises:
      ValueError: not a run folder, an override the run cannot take, or a checkpoint that
        does not fit.
    """
    run_dir = run_dir_of(checkpoint)
    if run_dir is None:
        raise ValueError(f"{checkpoint}: no {CONFIG_FILE} beside it (not a run folder)")
    cfg = read_config(run_dir)
    model_config = override_model(run_dir, cfg.model, **overrides)
    model, path = checkpoints.load_model(model_config, _num_classes(cfg), checkpoint)
    return model, path, cfg
