"""What the commands share: common flags, their `ModelConfig`, the tools' parser.

The inference tools (evaluate, predict, export) parse flagfiles with `parse_flags`, take
what they run from the run folder overridden by the flags given (`inference_settings`)
and report bad input through `run_tool`.

Commands only: library code takes configs (`config.ModelConfig`, `training.config`,
`tools.evaluate_tool.EvalConfig`), never flags. Importing this module defines the common
flags in `absl.flags.FLAGS`.
"""

import dataclasses
import itertools
import math
import sys
import typing

import tensorflow as tf
from absl import app, flags

from ciss_tf.data import datasets
from ciss_tf.modeling import backbones, config
from ciss_tf.modeling.backbone import STEMS
from ciss_tf.modeling.ciss_net import CONTEXT_MODES
from ciss_tf.modeling.config import PRESETS
from ciss_tf.tools import cli
from ciss_tf.training import run_folder

flags.DEFINE_enum(
    "preset", "resnet50", list(PRESETS), "Network size (see ciss_tf/modeling/config.py)."
)
flags.DEFINE_enum(
    "context_mode", "learned", list(CONTEXT_MODES),
    "learned: CiSS-Net; pmap: every action 1 (Baseline + p-map); none: all-uncertain context "
    "(capacity-matched control); random: every action Bernoulli(--random_keep_rate), in "
    "training and evaluation (a gate that keeps context without choosing where).",
)
flags.DEFINE_float(
    "random_keep_rate", None,
    "--context_mode=random: share of pixels kept as context, in (0, 1] (e.g. the share "
    "CiSS-Net's sampled gate keeps at the end of its training).",
)
flags.DEFINE_enum(
    "stem", "deep", list(STEMS),
    "Backbone stem: deep (three 3x3 convs, PSPNet, SPEC.md) or resnet (one 7x7 conv, needed "
    "to start from Keras ImageNet ResNet weights). Both stages must use the same stem.",
)
flags.DEFINE_enum(
    "context_encoder_norm", "group", list(config.CONTEXT_ENCODER_NORMS),
    "Normalisation of the Context Net's p-map pyramid branches: group (the paper: GroupNorm "
    "in every head layer), batch (batch norm with statistics synchronized across replicas) "
    "or batch_per_replica (the authors' code: each replica's own statistics, momentum 0.95). "
    "A checkpoint is read with the value it was trained with (the two batch norms read each "
    "other's).",
)
flags.DEFINE_float("dropout", 0.1, "Dropout rate of the heads.")
flags.DEFINE_enum(
    "backbone", backbones.DEFAULT, list(backbones.names()),
    "The feature net's backbone (ciss_tf/modeling/backbones.py: its contract, and how to "
    "add one).",
)
flags.DEFINE_enum(
    "dataset", "synthetic", list(datasets.DATASET_NAMES),
    "Dataset (ciss_tf/data/datasets.py): its classes, their names and palette.",
)
flags.DEFINE_string("data_dir", None, "Folder of TFRecord shards written by data_prep.")
flags.DEFINE_float(
    "input_scale", 1.0,
    "Inference (evaluation, prediction, serving, the trainer's evaluation and image panels): "
    "each image is resized by this factor before the network and the outputs back to the "
    "image size; the scale the model was trained at (0.5 in the CamVid flagfiles).",
)
flags.register_validator(
    "input_scale", lambda value: math.isfinite(value) and value > 0,
    message="--input_scale must be a positive number",
)

# Every `ModelConfig` field is set by the flag of its name (`model_config`).
MODEL_FLAGS = tuple(field.name for field in dataclasses.fields(config.ModelConfig))


def config_from_flags(cls, flag_values, flag_names=None, parsers=None, given=None,
                      prefix=""):
    """The frozen config dataclass `cls` from the flags named as its fields.

    Nested config fields are built the same way. A field without a flag is an error, so a
    new field cannot be forgotten by the command.

    Args:
      cls: the config class.
      flag_values: the parsed flags.
      flag_names: `{dotted field: flag}` where the flag has another name (e.g.
        `{"reward.window": "reward_window"}`).
      parsers: `{dotted field: fn(flag value) -> field value}` where they differ.
      given: `{dotted field: value}` set by the command itself, not by a flag.
      prefix: the dotted path of `cls` in the outer config (recursion).

    Raises:
      ValueError: a value the config refuses (its message names the flag).
    """
    flag_names, parsers, given = flag_names or {}, parsers or {}, given or {}
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        path = prefix + field.name
        if path in given:
            values[field.name] = given[path]
        elif dataclasses.is_dataclass(hints[field.name]):
            values[field.name] = config_from_flags(
                hints[field.name], flag_values, flag_names, parsers, given, f"{path}."
            )
        else:
            value = flag_values[flag_names.get(path, field.name)].value
            values[field.name] = parsers[path](value) if path in parsers else value
    return cls(**values)


def model_config(stage, flag_values=flags.FLAGS):
    """The `config.ModelConfig` of stage `stage` ("pspnet" or "ciss") that the flags give.

    Raises:
      ValueError: a flag value the model cannot take (the message names the flag).
    """
    return config_from_flags(config.ModelConfig, flag_values, given={"stage": stage})


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """What an inference tool runs: the model, its dataset and how images are shown to it.

    Attributes:
      model: the `ModelConfig` to build.
      dataset: dataset name (classes, names, palette).
      data_dir: the TFRecord shards (`--data_dir`, else the run's), or None.
      input_scale: the scale each image is seen at.
      unroll_steps: T (the run's, else the tool's `--unroll_steps`), or None if the tool
        has no such flag and the checkpoint no run folder.
      run_dir: the run folder the settings came from, or None (a bare checkpoint).
      train_crop_size: the run's training crop `(height, width)` (PSPNet's evaluation
        window), or None for a bare checkpoint.
    """

    model: config.ModelConfig
    dataset: str
    data_dir: str | None
    input_scale: float
    unroll_steps: int | None
    run_dir: str | None
    train_crop_size: tuple[int, int] | None = None


def inference_settings(checkpoint, flag_values=flags.FLAGS):
    """The settings of an inference tool for `checkpoint`.

    A checkpoint in a run folder (written by `ciss_tf.train`) brings its own model,
    dataset, T, inference scale and data folder; a flag given (on the command line or in a
    flagfile) overrides what it names, within what the trained variables allow
    (`run_folder.override_model`). A bare checkpoint takes everything from the flags.

    Raises:
      ValueError: an override the run cannot take, naming the flag and the run.
    """
    fv = flag_values

    def given(name):
        return name in fv and fv[name].present

    def flag(name, default=None):
        return fv[name].value if name in fv else default

    run_dir = run_folder.run_dir_of(checkpoint)
    if run_dir is None:
        return InferenceSettings(
            model=model_config(flag("stage", "ciss"), fv), dataset=fv.dataset,
            data_dir=fv.data_dir, input_scale=fv.input_scale,
            unroll_steps=flag("unroll_steps"), run_dir=None,
        )
    trained = run_folder.read_config(run_dir)
    overrides = {name: fv[name].value for name in MODEL_FLAGS if given(name)}
    dataset = trained.data.dataset
    if given("dataset") and fv.dataset != dataset:
        classes = datasets.get_dataset_info(fv.dataset).num_classes
        if classes != datasets.get_dataset_info(dataset).num_classes:
            raise ValueError(
                f"--dataset={fv.dataset} ({classes} classes) contradicts the run {run_dir} "
                f"(trained on {dataset})"
            )
        dataset = fv.dataset
    return InferenceSettings(
        model=run_folder.override_model(run_dir, trained.model, **overrides),
        dataset=dataset,
        data_dir=fv.data_dir if given("data_dir") else trained.data.data_dir,
        input_scale=fv.input_scale if given("input_scale") else trained.input_scale,
        unroll_steps=fv.unroll_steps if given("unroll_steps") else trained.unroll_steps,
        run_dir=run_dir, train_crop_size=trained.data.crop_size,
    )


def stage2_settings(checkpoint, tool, flag_values=flags.FLAGS):
    """`inference_settings` of a tool that runs CiSS-Net only (`tool`: its name)."""
    settings = inference_settings(checkpoint, flag_values)
    if settings.model.stage != "ciss":
        raise ValueError(
            f"--checkpoint {checkpoint}: a stage-1 PSPNet run; {tool} takes a stage-2 "
            "CiSS-Net run"
        )
    return settings


def parse_flags(argv):
    """Flags parser of the inference tools: skips foreign flags in flagfiles.

    The tools read an experiment's flagfile (`--flagfile=FILE` or `--flagfile FILE`), which
    also holds training flags; those are dropped (flags given on the command line itself
    must all be known). Pass it to `app.run(main, flags_parser=parse_flags)`.

    Args:
      argv: the full command line, program name first.

    Returns:
      The arguments left after parsing, program name first.
    """
    flag_values = flags.FLAGS
    kept = []
    args = iter(argv[1:])
    try:
        for arg in args:
            name = arg.lstrip("-")
            if name.startswith("flagfile="):
                directive = [arg]
            elif name == "flagfile":
                # `--flagfile FILE`: absl takes the next argument as the file.
                directive = [arg, *itertools.islice(args, 1)]
            else:
                kept.append(arg)
                continue
            expanded = flag_values.read_flags_from_files(directive, force_gnu=False)
            kept.extend(a for a in expanded if _is_defined(a, flag_values))
        return flag_values([argv[0], *kept])
    except flags.Error as error:
        raise SystemExit(f"error: {error}") from None


def _is_defined(arg, flag_values):
    """Whether `--name[=value]` (or `--noname`) names a flag of `flag_values`."""
    if not arg.startswith("-"):
        return True
    name = arg.lstrip("-").split("=", 1)[0]
    return name in flag_values or (name.startswith("no") and name[2:] in flag_values)


def run_tool(define_flags, body):
    """Runs an inference tool: its flags, `body()`, and one `error:` line on bad input.

    Args:
      define_flags: defines the tool's flags (not done at import, see `evaluate`).
      body: the tool itself, reading the parsed flags.
    """

    def main(argv):
        if len(argv) > 1:
            sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}")
        try:
            body()
        except (ValueError, OSError) as error:
            sys.exit(f"error: {error}")
        except tf.errors.OpError as error:
            sys.exit(f"error: {error.message.strip().splitlines()[0]}")

    define_flags()
    cli.list_flags_in_help(define_flags.__module__, __name__)
    app.run(main, flags_parser=parse_flags)
