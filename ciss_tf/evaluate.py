r"""Evaluates a CiSS-Net checkpoint: mIoU and pixel accuracy at chosen steps (Table 1).

    python -m ciss_tf.evaluate --checkpoint=runs/ade20k --data_dir=DIR \
        --eval_steps=0,2,4,6 --output_json=eval.json

A run folder (or a checkpoint in one) brings the model, dataset and inference scale it was
trained with (`tools.command_flags.inference_settings`); a flag or flagfile overrides only
what it names. A bare checkpoint prefix needs the experiment's `--flagfile`.

Scores come from one confusion matrix per step summed over the whole split, at the original
image resolution; `--eval_scales`, `--eval_flip` and `--crop_size` switch on PSPNet's
multi-scale, mirrored and sliding-window inference. What is scored and the fields of the
JSON file: docs/evaluation.md.

The flags become a `tools.evaluate_tool.EvalConfig` run by `evaluate_tool.run_evaluation`;
`evaluation.evaluator.evaluate_model` is the in-process entry point (the trainer and the
demo call it).
Importing this module defines no flags (`run` does): training has its own `--crop_size` and
`--seed`.
"""

import math

from absl import flags

from ciss_tf.evaluation import evaluator, segmenter
from ciss_tf.tools import command_flags, evaluate_tool

FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags of this tool (done by `run`, not at import: see the docstring)."""
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix, or a folder (its latest).")
    flags.DEFINE_enum(
        "stage", "ciss", ["pspnet", "ciss"],
        "ciss: CiSS-Net; pspnet: a stage-1 PSPNet (step 0 only: --eval_steps defaults to 0). "
        "Default: the run folder's stage, else ciss.",
    )
    flags.DEFINE_string("split", None, "Split to evaluate (default: the dataset's eval split).")
    flags.DEFINE_list(
        "eval_steps", [str(t) for t in evaluator.DEFAULT_EVAL_STEPS],
        "Steps t to score, e.g. 0,2,4,6."
    )
    flags.DEFINE_string("output_json", None, "Write the scores here as JSON.")
    flags.DEFINE_list(
        "eval_scales", None,
        "Image scales averaged (PSPNet: 0.5,0.75,1.0,1.25,1.5,1.75); default --input_scale.",
    )
    flags.DEFINE_bool("eval_flip", False, "Also average the mirrored image's probabilities.")
    flags.DEFINE_list(
        "crop_size", None,
        "Sliding-window size height,width (or one number for a square) for images larger "
        "than it. Default: a run folder's training crop (as its flagfile's), else whole "
        "images.",
    )
    flags.DEFINE_enum(
        "eval_policy", "greedy", list(segmenter.POLICIES),
        "greedy: argmax of the Context Net's policy; sample: Bernoulli actions.",
    )
    flags.DEFINE_integer("seed", 0, "Seed of the sampled actions (--eval_policy=sample).")
    flags.DEFINE_integer("max_eval_images", 0, "Evaluate only the first N images (0: all).")
    flags.DEFINE_string(
        "cityscapes_results_dir", None,
        "Cityscapes: write label-id PNGs of --cityscapes_step here, named after the inputs.",
    )
    flags.DEFINE_string(
        "cityscapes_gt_dir", None,
        "Cityscapes: ground-truth folder (e.g. gtFine/val) for the official evaluation of "
        "the PNGs in --cityscapes_results_dir.",
    )
    flags.DEFINE_integer(
        "cityscapes_step", 2, "Step whose predictions are written (one of --eval_steps)."
    )


def _parse_steps(values):
    """`--eval_steps` as non-negative integers, without duplicates, in order."""
    try:
        steps = [int(v) for v in values]
    except (TypeError, ValueError):
        steps = None
    if not steps or min(steps) < 0:
        raise ValueError(f"--eval_steps must be non-negative integers, e.g. 0,2,4,6; got {values}")
    return tuple(dict.fromkeys(steps))


def _parse_scales(values):
    """`--eval_scales` as positive floats."""
    try:
        scales = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        scales = ()
    if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
        raise ValueError(f"--eval_scales must be positive numbers; got {values}")
    return scales


def _parse_crop_size(values):
    """`--crop_size` as `(height, width)` from `h,w` or `s` (square); None when unset."""
    if not values:
        return None
    try:
        sizes = [int(v) for v in values]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise ValueError(f"--crop_size must be height,width (positive integers); got {values}")
    return (sizes[0], sizes[-1])


def config_from_flags():
    """The `EvalConfig` the parsed flags and the run folder give (errors name the flag)."""
    if not FLAGS.checkpoint:
        raise ValueError("--checkpoint is required")
    settings = command_flags.inference_settings(FLAGS.checkpoint)
    steps = _parse_steps(FLAGS.eval_steps)
    if settings.model.stage == "pspnet":
        if FLAGS["eval_steps"].present and steps != (0,):
            raise ValueError(f"--stage=pspnet has step 0 only; got --eval_steps={steps}")
        steps = (0,)
    scales = _parse_scales(FLAGS.eval_scales or [settings.input_scale])
    # Unset, a run folder's training crop is the window, as its flagfile's --crop_size.
    crop_size = (_parse_crop_size(FLAGS.crop_size) if FLAGS["crop_size"].present
                 else settings.train_crop_size)
    if not settings.data_dir:
        raise ValueError("--data_dir is required (TFRecords written by data_prep)")
    return evaluate_tool.EvalConfig(
        model=settings.model, checkpoint=FLAGS.checkpoint, data_dir=settings.data_dir,
        dataset=settings.dataset, split=FLAGS.split, eval_steps=steps,
        scales=scales, flip=FLAGS.eval_flip, crop_size=crop_size, policy=FLAGS.eval_policy,
        seed=FLAGS.seed, max_images=FLAGS.max_eval_images, output_json=FLAGS.output_json,
        cityscapes_results_dir=FLAGS.cityscapes_results_dir,
        cityscapes_gt_dir=FLAGS.cityscapes_gt_dir, cityscapes_step=FLAGS.cityscapes_step,
    )


def run():
    """Console entry point."""
    command_flags.run_tool(
        define_flags, lambda: evaluate_tool.run_evaluation(config_from_flags())
    )


if __name__ == "__main__":
    run()
