r"""The embedded demo: CiSS-Net against capacity-matched controls on synthetic scenes.

    results = demo.run_demo(demo.DemoConfig(workdir="runs/demo"), train.parse_config)

`ciss_tf.demo` is the command. In `workdir` it writes the synthetic data, trains the tiny
PSPNet (stage 1), then CiSS-Net and its controls (stage 2), scores them at t = 0..6,
exports CiSS-Net and scores the export, and writes `results.json`, `figure.png` and
TensorBoard logs; every step already done is skipped. The steps, the runs and the keys of
`results.json`: docs/demo.md.
"""

import dataclasses
import json
import os
import time

import cv2
import keras
import numpy as np
import tensorflow as tf
from absl import flags

from ciss_tf.data import datasets, input_pipeline
from ciss_tf.modeling import checkpoints
from ciss_tf.serving import exporter
from ciss_tf.tools import demo_report, greedy_eval
from ciss_tf.training import run_folder, trainer

DATASET = "synthetic"
PRESET = "tiny"
EVAL_BATCH = 25
_EXPERIMENTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "experiments"
)


@dataclasses.dataclass(frozen=True)
class Scale:
    """Data size, and the training flags that override the demo flagfiles (none by default)."""

    image_size: int
    num_train: int
    num_val: int
    overrides: tuple[str, ...] = ()


SCALES = {
    "default": Scale(image_size=96, num_train=400, num_val=100),
    "test": Scale(
        image_size=48, num_train=8, num_val=3,
        overrides=("--max_steps=2", "--batch_size=2", "--crop_size=48,48", "--unroll_steps=2",
                   "--log_every=1", "--checkpoint_every=2", "--image_summary_every=0"),
    ),
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One stage-2 training run: its folder name, label in the tables and extra flags."""

    name: str
    label: str
    flags: tuple[str, ...] = ()


DEFAULT_RUNS = (
    Run("ciss", "CiSS-Net (lambda2 = 0.05)"),
    Run("no_context", "no context (all uncertain)", ("--context_mode=none",)),
    Run("baseline_pmap", "Baseline + p-map", ("--context_mode=pmap",)),
)
EXTRA_RUNS = (
    Run("gated", "Baseline + gated(p-map) (lambda2 = 0.001)", ("--lambda2=0.001",)),
    Run("gamma_0.1", "gamma = 0.1", ("--gamma=0.1",)),
    Run("gamma_0.3", "gamma = 0.3", ("--gamma=0.3",)),
    Run("lambda2_0.005", "lambda2 = 0.005", ("--lambda2=0.005",)),
    Run("lambda2_0.01", "lambda2 = 0.01", ("--lambda2=0.01",)),
    Run("lambda2_0.02", "lambda2 = 0.02", ("--lambda2=0.02",)),
)
# Tables 2-3: the value of the swept setting -> run name (CiSS-Net holds the paper defaults).
GAMMA_SWEEP = {"0.1": "gamma_0.1", "0.3": "gamma_0.3", "0.9": "ciss"}
LAMBDA2_SWEEP = {
    "0.001": "gated", "0.005": "lambda2_0.005", "0.01": "lambda2_0.01",
    "0.02": "lambda2_0.02", "0.05": "ciss",
}


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """One run of the demo (`ciss_tf.demo`'s flags say more).

    Attributes:
      workdir: folder of the data, the runs and the results.
      ablations: "default" (CiSS-Net and two controls) or "all" (also `EXTRA_RUNS`).
      scale: a key of `SCALES` (`--demo_scale`).
      seed: seed of every training run.
      data_seed: seed of the synthetic dataset.
      data_dir: where the dataset is (or is written); None: `<workdir>/data`.
    """

    workdir: str = "runs/demo"
    ablations: str = "default"
    scale: str = "default"
    seed: int = 0
    data_seed: int = 0
    data_dir: str | None = None

    def __post_init__(self):
        if self.ablations not in ("default", "all"):
            raise ValueError(f"--ablations={self.ablations}: not one of ('default', 'all')")
        if self.scale not in SCALES:
            raise ValueError(f"--demo_scale={self.scale}: not one of {tuple(SCALES)}")


class DemoError(Exception):
    """A step of the demo failed; the message is one line saying which."""


def log(message):
    """One progress line on stdout, time-stamped."""
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def generate_data(data_dir, scale, seed):
    """Writes the synthetic TFRecords unless both splits are already there."""
    if _has_shards(data_dir, "train") and _has_shards(data_dir, "val"):
        log(f"data: reusing {data_dir}")
        return
    from ciss_tf.data import raw_readers, writer  # noqa: PLC0415  (needed only here)

    splits = raw_readers.synthetic_splits(
        seed=seed, num_train=scale.num_train, num_val=scale.num_val,
        height=scale.image_size, width=scale.image_size,
    )
    total = scale.num_train + scale.num_val
    done, last = [0], [time.monotonic()]

    def counted(split):
        def examples():
            for example in split.examples():
                done[0] += 1
                if time.monotonic() - last[0] > 10 or done[0] == total:
                    log(f"data: {done[0]}/{total} images")
                    last[0] = time.monotonic()
                yield example

        return raw_readers.Split(split.size, examples)

    log(f"data: generating {scale.num_train} + {scale.num_val} synthetic "
        f"{scale.image_size}x{scale.image_size} scenes into {data_dir}")
    writer.write_splits(
        {name: counted(split) for name, split in splits.items()},
        label_map=datasets.get_dataset_info(DATASET).label_map, output_dir=data_dir,
    )


def _has_shards(data_dir, split):
    try:
        input_pipeline.split_file_pattern(data_dir, split)
    except FileNotFoundError:
        return False
    return True


def train_run(name, flagfile, model_dir, args, parse_train_config):
    """Trains one run in this process, unless it is already done.

    The run is the `TrainConfig` of `python -m ciss_tf.train --flagfile=<flagfile>
    --model_dir=<model_dir> <args>` (the demo's own flags play no part).

    Args:
      name: the run's name in the progress lines and errors.
      flagfile: its training flagfile.
      model_dir: its folder.
      args: further `ciss_tf.train` flags (they win over the flagfile's).
      parse_train_config: `ciss_tf.train.parse_config`, passed in by the caller so that
        this library imports no command.

    Returns:
      The run's `TrainConfig`.

    Raises:
      DemoError: the flags make no run, or the trainer failed.
    """
    args = [f"--flagfile={flagfile}", f"--model_dir={model_dir}", *args]
    try:
        cfg = parse_train_config(args)
    except (flags.Error, ValueError) as error:
        raise DemoError(f"training {name} failed: {error}") from None
    latest = tf.train.latest_checkpoint(model_dir) if tf.io.gfile.isdir(model_dir) else None
    if latest and checkpoints.step_of(latest) >= cfg.max_steps:
        log(f"{name}: reusing {latest}")
        return cfg
    log(f"{name}: python -m ciss_tf.train {' '.join(args)}")
    started = time.monotonic()
    try:
        keras.backend.clear_session()
        trainer.train(cfg)
    except (ValueError, FileNotFoundError, trainer.NonFiniteLossError) as error:
        raise DemoError(f"training {name} failed: {error}") from None
    except AssertionError as error:  # a checkpoint in model_dir that does not fit the model
        raise DemoError(f"training {name} failed: {model_dir} holds a checkpoint of another "
                        f"model (delete it): {str(error).splitlines()[0][:200]}") from None
    log(f"{name}: trained in {time.monotonic() - started:.0f} s")
    return cfg


def run_demo(cfg, parse_train_config):
    """Runs the whole demo and returns the results dict (docs/demo.md lists its keys).

    Args:
      cfg: a `DemoConfig`.
      parse_train_config: `ciss_tf.train.parse_config` (see `train_run`).

    Raises:
      DemoError: a training run failed.
    """
    started = time.monotonic()
    scale = SCALES[cfg.scale]
    info = datasets.get_dataset_info(DATASET)
    workdir = cfg.workdir
    data_dir = cfg.data_dir or os.path.join(workdir, "data")
    generate_data(data_dir, scale, cfg.data_seed)
    common = [f"--data_dir={data_dir}", f"--seed={cfg.seed}", *scale.overrides]
    stage1_dir = os.path.join(workdir, "pspnet")
    stage1_flags = os.path.join(_EXPERIMENTS, "demo_pspnet.flags")
    stage2_flags = os.path.join(_EXPERIMENTS, "demo.flags")
    train_run("pspnet", stage1_flags, stage1_dir, common, parse_train_config)
    runs = DEFAULT_RUNS + (EXTRA_RUNS if cfg.ablations == "all" else ())
    stage2_steps = {
        run.name: train_run(run.name, stage2_flags, os.path.join(workdir, run.name),
                            [*common, f"--init_checkpoint={stage1_dir}", *run.flags],
                            parse_train_config).max_steps
        for run in runs
    }

    log("evaluating every run on the validation split")
    val = input_pipeline.eval_dataset(
        input_pipeline.split_file_pattern(data_dir, info.eval_split),
        num_classes=info.num_classes,
    ).unbatch().batch(EVAL_BATCH).cache()
    scores, gates = {}, {}
    for run in runs:
        model, _, _ = run_folder.load_model(os.path.join(workdir, run.name))
        unroll = greedy_eval.greedy_unroll(model)
        scores[run.name], gates[run.name], step0_errors = greedy_eval.evaluate_run(
            unroll, val, info.num_classes
        )
        demo_report.write_eval_summaries(os.path.join(workdir, run.name), scores[run.name])
        log(f"{run.name}: mIoU " + "  ".join(
            f"t={t} {100 * scores[run.name][str(t)]['miou']:.2f}"
            for t in demo_report.TABLE_STEPS))
        if run.name == "ciss":
            ciss_model = model
            # The hardest images at t = 0, chosen before looking at what context does.
            hardest = set(np.argsort(-np.asarray(step0_errors),
                                     kind="stable")[:demo_report.FIGURE_IMAGES])
            batches = [b for i, b in enumerate(val.unbatch().batch(1)) if i in hardest]
            figure_path = os.path.join(workdir, "figure.png")
            panel = demo_report.figure_panel(unroll, batches, info.palette)
            cv2.imwrite(figure_path, panel[..., ::-1])

    log("exporting CiSS-Net as a SavedModel and scoring it through its serving signature")
    served = serve_run(ciss_model, os.path.join(workdir, "export"),
                       stage2_steps["ciss"],
                       input_pipeline.split_file_pattern(data_dir, info.eval_split), info)
    ciss = scores["ciss"]
    headline = str(demo_report.HEADLINE_STEP)
    results = {
        "steps": {str(t): {k: ciss[str(t)][k] for k in ("miou", "pixel_accuracy")}
                  for t in demo_report.TABLE_STEPS},
        "ablations": {"baseline": ciss["0"]["miou"],
                      **{run.name: scores[run.name][headline]["miou"] for run in runs}},
        "kept_fraction": gates["ciss"]["kept"],
        "gate": gates,
        "runs": scores,
        "figure": figure_path,
        "served": served,
        "settings": {"scale": cfg.scale, "seed": cfg.seed, "data_seed": cfg.data_seed,
                     "image_size": scale.image_size, "num_train": scale.num_train,
                     "num_val": scale.num_val, "class_names": list(info.class_names)},
    }
    if cfg.ablations == "all":
        results["sweeps"] = {
            "gamma": {v: scores[name][headline]["miou"] for v, name in GAMMA_SWEEP.items()},
            "lambda2": {v: scores[name][headline]["miou"] for v, name in LAMBDA2_SWEEP.items()},
        }
    results["seconds"] = time.monotonic() - started
    path = os.path.join(workdir, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1, allow_nan=True)
    print(demo_report.format_tables(results, runs))
    print(f"\nExported CiSS-Net (T = {demo_report.HEADLINE_STEP}): {served['export']}, scored "
          f"through serving_bytes: mIoU {100 * served['miou']:.2f}")
    print(f"\nResults: {path}\nFigure: {figure_path}\nTensorBoard: tensorboard --logdir={workdir}"
          f"\nTotal: {results['seconds']:.0f} s")
    return results


def serve_run(model, export_dir, version, file_pattern, info):
    """Exports `model` (T = `HEADLINE_STEP`) unless done, then scores the loaded export.

    Returns:
      `{"export": version folder, "miou", "pixel_accuracy"}` of the SavedModel fed the
      encoded validation images, as a TF Serving client would send them.
    """
    target = os.path.join(export_dir, str(version))
    if not os.path.isdir(target):
        exporter.export_saved_model(model, export_dir, version,
                                    num_steps=demo_report.HEADLINE_STEP)
    scores = exporter.score_export(target, file_pattern, info.num_classes, info.ignore_label)
    return {"export": target, "miou": scores["miou"],
            "pixel_accuracy": scores["pixel_accuracy"]}
