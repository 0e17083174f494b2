r"""The embedded demo: CiSS-Net against capacity-matched controls on synthetic scenes.

    python -m ciss_tf.demo [--workdir=runs/demo] [--ablations=all] [--seed=0] [--data_dir=DIR]

What it does, in `--workdir` (every step is skipped when its output is already there, so
an interrupted run continues where it stopped; delete the folder to start over):

1. writes the synthetic dataset (`ciss_tf.data.synthetic`) as TFRecords into `data/` (or
   into `--data_dir`, so that runs with several `--seed`s can share one dataset);
2. stage 1: trains the tiny PSPNet (with its Pyramid Pooling Module) into `pspnet/`
   (`experiments/demo_pspnet.flags`);
3. stage 2, every run with the same flags, steps and frozen features
   (`experiments/demo.flags`): CiSS-Net (`ciss/`) and two controls, "no context"
   (`--context_mode=none`: the same Base + Bias Net fed an all-uncertain context map at
   every step, so it has the capacity but no information from the p-map) and
   "baseline + p-map" (`--context_mode=pmap`: every action 1, no RL); `--ablations=all`
   adds the gated variant (lambda2 = 0.001) and the gamma and lambda2 sweeps of the
   paper's Tables 2-3;
4. scores every run on the validation split at t = 0..6 (greedy policy) and measures the
   Context Net's gate: the share of pixels kept as context at t = 1, overall and split by
   whether the p-map at t = 1 is right there;
5. exports CiSS-Net as a SavedModel for TF Serving into `export/<step>/` (T = 2) and
   scores the loaded export on the validation images sent as encoded PNGs, as a client
   would (`served` in `results.json`);
6. writes `results.json`, a Figure-1 style panel `figure.png` (input, ground truth, then the
   p-map and the context map at steps 0, 1, 2; uncertain pixels white), TensorBoard scalars
   under `<run>/eval`, and prints the tables.

Trainings run in this process through `training.trainer.train`, each with the config of
`python -m ciss_tf.train --flagfile=experiments/demo[_pspnet].flags --model_dir=... ...`
(one TensorFlow start-up instead of four; the trainer's progress lines appear as usual).
Evaluation is greedy, one traced unroll per run. `results.json`:

    {"steps": {"0": {"miou", "pixel_accuracy"}, "2": .., "4": .., "6": ..},   CiSS-Net
     "ablations": {"baseline", "no_context", "baseline_pmap", "ciss", ...},  mIoU at t = 2
     "kept_fraction": .., "seconds": .., ...}

("baseline" is CiSS-Net's own t = 0; fractions in [0, 1]; further keys hold every run's
scores, the gate statistics and the settings.)
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

from ciss_tf import metrics, train
from ciss_tf.data import datasets, input_pipeline, preprocessing
from ciss_tf.modeling import checkpoints, config, inference, ops
from ciss_tf.serving import exporter
from ciss_tf.training import trainer

DATASET = "synthetic"
PRESET = "tiny"
EVAL_STEPS = (0, 1, 2, 3, 4, 5, 6)
TABLE_STEPS = (0, 2, 4, 6)
HEADLINE_STEP = 2
EVAL_BATCH = 25
GATE_STEP = 1
FIGURE_STEPS = (0, 1, 2)
FIGURE_IMAGES = 4
FIGURE_ZOOM = 2
FIGURE_GAP = 4
FIGURE_HEADER = 18
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

    @property
    def context_mode(self):
        """The `--context_mode` the run trains and is evaluated with."""
        for flag in self.flags:
            if flag.startswith("--context_mode="):
                return flag.split("=", 1)[1]
        return "learned"


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


def train_run(name, flagfile, model_dir, args):
    """Trains one run with `ciss_tf.train` in this process, unless it is already done.

    The run is the `TrainConfig` of `python -m ciss_tf.train --flagfile=<flagfile>
    --model_dir=<model_dir> <args>` (`train.parse_config`; the demo's own flags play no
    part).

    Returns:
      The run's `TrainConfig`.

    Raises:
      DemoError: the flags make no run, or the trainer failed.
    """
    args = [f"--flagfile={flagfile}", f"--model_dir={model_dir}", *args]
    try:
        cfg = train.parse_config(args)
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


def load_run(model_dir, num_classes, context_mode, preset=PRESET):
    """The CiSS-Net of a run (tiny preset by default), restored from its latest checkpoint."""
    model = config.build_model(
        config.ModelConfig(preset=preset, context_mode=context_mode), num_classes
    )
    checkpoints.restore_model(model, model_dir)
    return model


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


def write_eval_summaries(model_dir, scores):
    """TensorBoard scalars `eval/miou` and `eval/pixel_accuracy` with the step t as x axis."""
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))
    with writer.as_default():
        for t, s in scores.items():
            tf.summary.scalar("demo/miou_by_step", s["miou"], step=int(t))
            tf.summary.scalar("demo/pixel_accuracy_by_step", s["pixel_accuracy"], step=int(t))
    writer.flush()


def figure_size(image_height, image_width, num_images=FIGURE_IMAGES):
    """(height, width) of `figure_panel`'s output for images of the given size."""
    columns = 2 + 2 * len(FIGURE_STEPS)
    tile_h, tile_w = image_height * FIGURE_ZOOM, image_width * FIGURE_ZOOM
    return (FIGURE_HEADER + num_images * (tile_h + FIGURE_GAP),
            columns * tile_w + (columns - 1) * FIGURE_GAP)


def figure_panel(unroll, batches, palette):
    """Figure 1 of the paper: per image, input | truth | (p-map t, context map t) for t in 0..2.

    Args:
      unroll: `greedy_unroll(model)`.
      batches: eval batches of one image each, all of the same size.
      palette: uint8 [Nc, 3].

    Returns:
      uint8 RGB image of `figure_size`: white background, one image per row (each tile
      `FIGURE_ZOOM` times the image), column titles on top, uncertain context pixels white.
    """
    rows = []
    for batch in batches:
        image = preprocessing.denormalize_image(batch["image"])[0].numpy()
        outputs = unroll(batch["image"])
        tiles = [image, datasets.colorize(batch["label"][0].numpy(), palette)]
        for t in FIGURE_STEPS:
            tiles.append(datasets.colorize(outputs["labels"][t][0].numpy(), palette))
            context = ops.resize_labels(outputs["context"][t][:1], image.shape[:2])[0].numpy()
            tiles.append(datasets.colorize(context - 1, palette, uncertain=context == 0))
        rows.append([np.kron(tile, np.ones((FIGURE_ZOOM, FIGURE_ZOOM, 1), np.uint8))
                     for tile in tiles])
    tile_h, tile_w = rows[0][0].shape[:2]
    height, width = figure_size(tile_h // FIGURE_ZOOM, tile_w // FIGURE_ZOOM, len(rows))
    canvas = np.full((height, width, 3), 255, np.uint8)
    titles = ["input", "truth"] + [f"{kind} t={t}" for t in FIGURE_STEPS
                                   for kind in ("p-map", "context")]
    for c, title in enumerate(titles):
        cv2.putText(canvas, title, (c * (tile_w + FIGURE_GAP) + 2, FIGURE_HEADER - 5),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    for r, tiles in enumerate(rows):
        top = FIGURE_HEADER + r * (tile_h + FIGURE_GAP)
        for c, tile in enumerate(tiles):
            left = c * (tile_w + FIGURE_GAP)
            canvas[top:top + tile_h, left:left + tile_w] = tile
    return canvas


def format_tables(results, runs):
    """The Table-1, Table-4 (and with the sweeps, Table-2/3) style text of `results`."""
    lines = ["", "Table 1 - CiSS-Net on the synthetic validation split (greedy policy)",
             f"  {'t':>3}  {'mIoU':>6}  {'pixAcc':>6}"]
    for t in TABLE_STEPS:
        s = results["steps"][str(t)]
        lines.append(f"  {t:>3}  {100 * s['miou']:6.2f}  {100 * s['pixel_accuracy']:6.2f}")
    labels = {run.name: run.label for run in runs}
    lines += ["", f"Table 4 - ablations, mIoU at t = {HEADLINE_STEP} (same steps and features)",
              f"  {'method':<44} {'mIoU':>6}  {'kept':>5}"]
    gates = results["gate"]
    rows = [("baseline", "Baseline (CiSS-Net at t = 0)")]
    rows += [(name, labels[name]) for name in ("no_context", "baseline_pmap", "gated", "ciss")
             if name in results["ablations"]]
    for name, label in rows:
        kept = gates.get(name, {}).get("kept")
        kept_text = f"{100 * kept:4.0f}%" if kept is not None else "    -"
        lines.append(f"  {label:<44} {100 * results['ablations'][name]:6.2f}  {kept_text}")
    ciss = gates["ciss"]
    lines += [
        "",
        f"Gate at t = {GATE_STEP} (CiSS-Net): keeps {100 * ciss['kept']:.1f}% of the pixels; "
        f"{100 * ciss['kept_where_right']:.1f}% of those its p-map gets right, "
        f"{100 * ciss['kept_where_wrong']:.1f}% of those it gets wrong "
        f"(p-map error {100 * ciss['pmap_error']:.1f}%).",
        f"Context gain over the capacity-matched control: "
        f"{100 * (results['ablations']['ciss'] - results['ablations']['no_context']):+.2f} mIoU; "
        f"over Baseline + p-map: "
        f"{100 * (results['ablations']['ciss'] - results['ablations']['baseline_pmap']):+.2f}.",
    ]
    for title, sweep in (("Table 2 - gamma", "gamma"), ("Table 3 - lambda2", "lambda2")):
        if sweep in results.get("sweeps", {}):
            lines += ["", f"{title}, mIoU at t = {HEADLINE_STEP}"]
            lines += [f"  {value:>6}  {100 * miou:6.2f}"
                      for value, miou in results["sweeps"][sweep].items()]
    return "\n".join(lines)


def run_demo(workdir, ablations="default", scale_name="default", seed=0, data_seed=0,
             data_dir=None):
    """Runs the whole demo (see the module docstring) and returns the results dict."""
    started = time.monotonic()
    scale = SCALES[scale_name]
    info = datasets.get_dataset_info(DATASET)
    data_dir = data_dir or os.path.join(workdir, "data")
    generate_data(data_dir, scale, data_seed)
    common = [f"--data_dir={data_dir}", f"--seed={seed}", *scale.overrides]
    stage1_dir = os.path.join(workdir, "pspnet")
    stage1_flags = os.path.join(_EXPERIMENTS, "demo_pspnet.flags")
    stage2_flags = os.path.join(_EXPERIMENTS, "demo.flags")
    train_run("pspnet", stage1_flags, stage1_dir, common)
    runs = DEFAULT_RUNS + (EXTRA_RUNS if ablations == "all" else ())
    stage2_steps = {
        run.name: train_run(run.name, stage2_flags, os.path.join(workdir, run.name),
                            [*common, f"--init_checkpoint={stage1_dir}", *run.flags]).max_steps
        for run in runs
    }

    log("evaluating every run on the validation split")
    val = input_pipeline.eval_dataset(
        input_pipeline.split_file_pattern(data_dir, info.eval_split),
        num_classes=info.num_classes,
    ).unbatch().batch(EVAL_BATCH).cache()
    scores, gates = {}, {}
    for run in runs:
        model = load_run(os.path.join(workdir, run.name), info.num_classes, run.context_mode)
        unroll = greedy_unroll(model)
        scores[run.name], gates[run.name], step0_errors = evaluate_run(
            unroll, val, info.num_classes
        )
        write_eval_summaries(os.path.join(workdir, run.name), scores[run.name])
        log(f"{run.name}: mIoU " + "  ".join(
            f"t={t} {100 * scores[run.name][str(t)]['miou']:.2f}" for t in TABLE_STEPS))
        if run.name == "ciss":
            ciss_model = model
            # The hardest images at t = 0, chosen before looking at what context does.
            hardest = set(np.argsort(-np.asarray(step0_errors), kind="stable")[:FIGURE_IMAGES])
            batches = [b for i, b in enumerate(val.unbatch().batch(1)) if i in hardest]
            figure_path = os.path.join(workdir, "figure.png")
            cv2.imwrite(figure_path, figure_panel(unroll, batches, info.palette)[..., ::-1])

    log("exporting CiSS-Net as a SavedModel and scoring it through its serving signature")
    served = serve_run(ciss_model, os.path.join(workdir, "export"),
                       stage2_steps["ciss"],
                       input_pipeline.split_file_pattern(data_dir, info.eval_split), info)
    ciss = scores["ciss"]
    headline = str(HEADLINE_STEP)
    results = {
        "steps": {str(t): {k: ciss[str(t)][k] for k in ("miou", "pixel_accuracy")}
                  for t in TABLE_STEPS},
        "ablations": {"baseline": ciss["0"]["miou"],
                      **{run.name: scores[run.name][headline]["miou"] for run in runs}},
        "kept_fraction": gates["ciss"]["kept"],
        "gate": gates,
        "runs": scores,
        "figure": figure_path,
        "served": served,
        "settings": {"scale": scale_name, "seed": seed, "data_seed": data_seed,
                     "image_size": scale.image_size, "num_train": scale.num_train,
                     "num_val": scale.num_val, "class_names": list(info.class_names)},
    }
    if ablations == "all":
        results["sweeps"] = {
            "gamma": {v: scores[name][headline]["miou"] for v, name in GAMMA_SWEEP.items()},
            "lambda2": {v: scores[name][headline]["miou"] for v, name in LAMBDA2_SWEEP.items()},
        }
    results["seconds"] = time.monotonic() - started
    path = os.path.join(workdir, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1, allow_nan=True)
    print(format_tables(results, runs))
    print(f"\nExported CiSS-Net (T = {HEADLINE_STEP}): {served['export']}, scored through "
          f"serving_bytes: mIoU {100 * served['miou']:.2f}")
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
        exporter.export_saved_model(model, export_dir, version, num_steps=HEADLINE_STEP)
    scores = exporter.score_export(target, file_pattern, info.num_classes, info.ignore_label)
    return {"export": target, "miou": scores["miou"],
            "pixel_accuracy": scores["pixel_accuracy"]}
