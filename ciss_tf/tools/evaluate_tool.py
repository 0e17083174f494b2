"""The evaluate tool without its flags: `EvalConfig` -> `run_evaluation`.

Loads the checkpoint, scores the split with `evaluation.evaluator.evaluate_model`, prints
the per-class table, optionally writes Cityscapes label-id PNGs and scores them officially,
and writes the JSON report (its fields: docs/evaluation.md). `ciss_tf.evaluate` builds the
`EvalConfig` from its flags and the run folder.
"""

import dataclasses
import json
import math
import os

import numpy as np
import tensorflow as tf
from absl import logging

from ciss_tf.data import datasets, input_pipeline, tfrecord
from ciss_tf.evaluation import cityscapes
from ciss_tf.evaluation.evaluator import DEFAULT_EVAL_STEPS, evaluate_model
from ciss_tf.modeling import checkpoints
from ciss_tf.modeling.config import ModelConfig
from ciss_tf.tools import cli


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One evaluation (`ciss_tf.evaluate`'s flags of the same names say more).

    Attributes:
      model: the network the checkpoint holds.
      checkpoint: checkpoint prefix, or a folder (its latest).
      data_dir: folder of the TFRecord shards.
      dataset: dataset name (classes, names, eval split).
      split: split scored (None: the dataset's eval split).
      eval_steps: steps t scored.
      scales, flip, crop_size, policy, seed: see `evaluate_model`.
      max_images: score only the first N images (0: all).
      output_json: where the report goes (None: not written).
      cityscapes_results_dir, cityscapes_gt_dir, cityscapes_step: the official Cityscapes
        evaluation of step `cityscapes_step`'s label-id PNGs.
    """

    model: ModelConfig
    checkpoint: str
    data_dir: str
    dataset: str
    split: str | None = None
    eval_steps: tuple[int, ...] = DEFAULT_EVAL_STEPS
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    crop_size: tuple[int, int] | None = None
    policy: str = "greedy"
    seed: int = 0
    max_images: int = 0
    output_json: str | None = None
    cityscapes_results_dir: str | None = None
    cityscapes_gt_dir: str | None = None
    cityscapes_step: int = 2


def cityscapes_writer(results_dir, step):
    """An `on_prediction` callback writing step `step` as official Cityscapes label-id PNGs."""
    def write(filename, labels_by_step):
        label_ids = cityscapes.train_ids_to_label_ids(labels_by_step[step])
        cityscapes.write_prediction(results_dir, filename, label_ids)

    return write


def format_table(results, class_names):
    """Per-class IoU (%) for each step, then mIoU and pixel accuracy."""
    steps = list(results["steps"])
    width = max(12, *(len(n) for n in class_names))
    lines = [f"{'class':<{width}}" + "".join(f"{'t=' + t:>9}" for t in steps)]

    def row(name, values):
        cells = "".join(f"{'-' if math.isnan(v) else f'{100 * v:.2f}':>9}" for v in values)
        return f"{name:<{width}}{cells}"

    for c, name in enumerate(class_names):
        lines.append(row(name, [results["steps"][t]["iou"][c] for t in steps]))
    lines.append(row("mIoU", [results["steps"][t]["miou"] for t in steps]))
    lines.append(row("pixel acc.", [results["steps"][t]["pixel_accuracy"] for t in steps]))
    return "\n".join(lines)


def json_ready(value):
    """NaN -> None (JSON has no NaN), NumPy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path, report):
    """Writes `report` to `path` via a temporary file, so a failed run leaves no partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(json_ready(report), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(temporary, path)


def refuse_earlier_predictions(results_dir):
    """Raises ValueError if `results_dir` already holds PNGs.

    The official evaluation scores whatever PNG under the folder matches each ground-truth
    file, so predictions left from an earlier run would be scored as this run's.
    """
    for folder, _, names in os.walk(results_dir):
        for name in sorted(names):
            if name.endswith(".png"):
                raise ValueError(
                    f"--cityscapes_results_dir {results_dir} already holds prediction PNGs "
                    f"(e.g. {os.path.join(folder, name)}); give an empty or new folder"
                )


def run_evaluation(cfg):
    """Runs the evaluation `cfg` describes; returns the report (also written as JSON).

    Raises:
      ValueError: settings that do not fit together, a missing file or a bad checkpoint
        (the message names the flag or file).
    """
    steps = cfg.eval_steps
    cli.check_local_output(cfg.output_json, "--output_json")
    cli.check_local_output(cfg.cityscapes_results_dir, "--cityscapes_results_dir")
    info = datasets.get_dataset_info(cfg.dataset)
    results_dir, gt_dir = cfg.cityscapes_results_dir, cfg.cityscapes_gt_dir
    if (results_dir or gt_dir) and info.name != "cityscapes":
        raise ValueError("--cityscapes_results_dir/--cityscapes_gt_dir need --dataset=cityscapes")
    if gt_dir and not results_dir:
        raise ValueError("--cityscapes_gt_dir needs --cityscapes_results_dir")
    if gt_dir and not os.path.isdir(gt_dir):
        raise ValueError(f"--cityscapes_gt_dir {gt_dir} is not a directory")
    if results_dir and cfg.cityscapes_step not in steps:
        raise ValueError(
            f"--cityscapes_step={cfg.cityscapes_step} is not one of --eval_steps={steps}"
        )
    if results_dir:
        refuse_earlier_predictions(results_dir)
    split = cfg.split or info.eval_split
    pattern = input_pipeline.split_file_pattern(cfg.data_dir, split)
    _, counts = tfrecord.check_shards(pattern)
    num_images = sum(counts)
    if cfg.max_images > 0:
        num_images = min(num_images, cfg.max_images)
    model, checkpoint = checkpoints.load_model(cfg.model, info.num_classes, cfg.checkpoint)
    logging.info("Evaluating %s on %d %s images at steps %s", checkpoint, num_images, split,
                 list(steps))
    dataset = input_pipeline.eval_dataset(
        pattern, num_classes=info.num_classes, ignore_label=info.ignore_label
    ).take(num_images).apply(tf.data.experimental.assert_cardinality(num_images))
    results = evaluate_model(
        model, dataset, num_classes=info.num_classes, eval_steps=steps,
        ignore_label=info.ignore_label, scales=cfg.scales, flip=cfg.flip,
        crop_size=cfg.crop_size, policy=cfg.policy, seed=cfg.seed,
        on_prediction=cityscapes_writer(results_dir, cfg.cityscapes_step) if results_dir
        else None,
        progress=True,
    )
    report = {
        "steps": results["steps"],
        "checkpoint": checkpoint,
        "dataset": info.name,
        "split": split,
        "num_images": results["num_images"],
        "class_names": list(info.class_names),
        "eval_scales": list(cfg.scales),
        "eval_flip": cfg.flip,
        "crop_size": list(cfg.crop_size) if cfg.crop_size else None,
        "eval_policy": cfg.policy,
        "stage": cfg.model.stage,
    }
    print(format_table(results, info.class_names))
    if gt_dir:
        official = cityscapes.run_official_evaluation(results_dir, gt_dir)
        report["cityscapes"] = {"step": cfg.cityscapes_step, **official}
        ours = results["steps"][str(cfg.cityscapes_step)]["miou"]
        print(
            f"Cityscapes t={cfg.cityscapes_step}: official IoU class "
            f"{official['iou_class']:.4f}, iIoU class {official['iiou_class']:.4f}, IoU "
            f"category {official['iou_category']:.4f}, iIoU category "
            f"{official['iiou_category']:.4f}; ours mIoU {ours:.4f}"
        )
    if cfg.output_json:
        write_json(cfg.output_json, report)
        logging.info("Wrote %s", cfg.output_json)
    return report
