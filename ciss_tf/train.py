r"""Trains PSPNet (stage 1) or CiSS-Net (stage 2) under `tf.distribute`: the training command.

    python -m ciss_tf.train --flagfile=experiments/ade20k_pspnet.flags   # stage 1
    python -m ciss_tf.train --flagfile=experiments/ade20k.flags \
        --init_checkpoint=runs/ade20k_pspnet                             # stage 2

The flags are parsed here once into a `training.config.TrainConfig` (`config_from_flags`)
that `training.trainer.train` runs with the task of the stage (`training.tasks`): the
distributed step, one optimizer per learning-rate group (`training.optimizers`, SPEC.md
section 5), checkpoints and exact resume. Re-running the same command resumes from the
latest checkpoint in `--model_dir`. The whole config is saved there as `config.json`
(`training.run_folder`), which the evaluate, predict and export tools read; resuming with
another model is refused, other changed settings are recorded. Every `TrainConfig` field
has the flag of its name (`FLAG_NAMES` lists the two named otherwise).
"""

import copy
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from ciss_tf import rl
from ciss_tf.data import input_pipeline
from ciss_tf.tools import cli, command_flags
from ciss_tf.training import config, losses, trainer

flags.DEFINE_enum("stage", "ciss", ["pspnet", "ciss"], "pspnet: stage 1; ciss: stage 2.")
flags.DEFINE_string("model_dir", None, "Checkpoints and TensorBoard logs (train/, eval/).")
flags.DEFINE_string(
    "init_checkpoint", None,
    "Stage 2: stage-1 checkpoint (file prefix or folder) whose feature net is loaded and "
    "frozen. Without it the feature net keeps random weights (tests only).",
)
flags.DEFINE_enum(
    "base_init", "fresh", list(config.BASE_INITS),
    "Stage 2, fresh start only: fresh: the Base Net starts from its random initialisation "
    "(the paper); pspnet: its 3x3 conv and classifier start as the stage-1 PSPNet head's "
    "(conv5_4, conv6) read from --init_checkpoint, its GroupNorm fresh (our deviation: stage "
    "2 then starts from the PSPNet it has to beat).",
)
flags.DEFINE_string(
    "imagenet_weights", None,
    "Stage 1: a local Keras ResNet50/ResNet101 ImageNet weights file (.h5, include_top=False) "
    "loaded into the backbone before training; needs --stem=resnet "
    "(see ciss_tf/convert/imagenet.py).",
)
flags.DEFINE_integer("batch_size", 16, "Global batch size (all replicas together).")
flags.DEFINE_list("crop_size", ["473", "473"], "Training crop: height,width.")
flags.DEFINE_float("min_scale", 0.5, "Smallest random rescaling factor.")
flags.DEFINE_float("max_scale", 2.0, "Largest random rescaling factor.")
flags.DEFINE_enum(
    "augmentation", "pspnet", list(input_pipeline.AUGMENTATIONS),
    "pspnet: bilinear scaling, padding to the crop, mirror. original: the authors' code "
    "(bicubic with aligned corners, a short side below the crop fitted to it + 30, mirror, "
    "brightness and contrast jitter; docs/faithfulness.md).",
)
flags.DEFINE_integer("max_steps", 30000, "Training steps (poly decay reaches 0 here).")
flags.DEFINE_float("base_learning_rate", 2e-3, "Learning rate of PSPNet / the Base Net.")
flags.DEFINE_float(
    "context_learning_rate", 2e-4, "Learning rate of the Bias Net and the Context Net."
)
flags.DEFINE_float(
    "context_net_learning_rate", None,
    "Learning rate of the Context Net alone (default: --context_learning_rate). Setting it "
    "gives the authors' three groups: base prediction, Bias Net, Context Net (policy).",
)
flags.DEFINE_float("lr_power", 0.9, "Poly decay power.")
flags.DEFINE_enum(
    "optimizer", "sgd", list(config.OPTIMIZERS),
    "sgd: SGD with momentum and L2 decay in the loss (the paper). adamw: AdamW with decoupled "
    "decay (each group at its own rate), for training from scratch on small data.",
)
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float(
    "weight_decay", 1e-4,
    "Decay of the conv kernels: L2 term wd/2 |w|^2 in the loss (sgd), or decoupled (adamw).",
)
flags.DEFINE_integer("unroll_steps", 8, "T: context steps unrolled per episode.")
flags.DEFINE_float("gamma", 0.9, "Discount factor of the returns (Eq. 5).")
flags.DEFINE_float("lambda1", 1.0, "Weight of the segmentation loss (Eq. 7).")
flags.DEFINE_float("lambda2", 0.05, "Weight of the entropy term (Eq. 7).")
flags.DEFINE_float("beta1", 0.4, "Reward for correct context (Eq. 4).")
flags.DEFINE_float("beta2", 0.2, "Reward for 'uncertain' (Eq. 4).")
flags.DEFINE_integer("reward_window", 5, "Side of the window averaging M in Eq. 4 (odd).")
flags.DEFINE_enum(
    "unlabelled_reward", "beta2", list(rl.UNLABELLED_REWARDS),
    "What an uncertain action earns on an unlabelled pixel: beta2, as on any pixel, or "
    "original: beta1 + beta2, as in the authors' code (docs/faithfulness.md).",
)
flags.DEFINE_integer("seed", 0, "Seed of initialisation, input stream and action sampling.")
flags.DEFINE_bool("deterministic", False, "Enable TF op determinism (slower; for tests).")
flags.DEFINE_enum(
    "strategy", "default", list(config.STRATEGIES),
    "default: MirroredStrategy when several GPUs or --num_cpu_devices > 1, else the default "
    "strategy; multi_worker reads TF_CONFIG.",
)
flags.DEFINE_integer(
    "num_cpu_devices", 1,
    "Split the host CPU into N logical devices and train under MirroredStrategy across them "
    "(to exercise distribution without GPUs).",
)
flags.DEFINE_bool("jit_compile", False, "Compile the replica step with XLA.")
flags.DEFINE_enum(
    "mixed_precision", "float32", list(config.PRECISIONS),
    "Keras dtype policy; the class logits (so the p-map, the context map and the reward), "
    "policy, value and losses stay in float32. mixed_float16 adds dynamic loss scaling "
    "(a step with non-finite gradients on any replica is skipped by all).",
)
flags.DEFINE_float(
    "initial_loss_scale", 2.0**15,
    "mixed_float16: the dynamic loss scale's start (halved at each skipped step, doubled "
    "after 2000 good ones).",
)
flags.DEFINE_enum(
    "backprop", "episode", list(config.BACKPROPS),
    "Stage 2's backward pass: episode (one tape over the whole unroll: memory grows with "
    "T) or per_step (the episode recorded without a tape, then each step recomputed and "
    "differentiated on its own: memory flat in T, the same gradient; docs/performance.md).",
)
flags.DEFINE_enum(
    "loss_reduction", "mean", list(losses.REDUCTIONS),
    "mean: every loss term a mean per pixel (learning rates independent of the crop size). "
    "sum: summed over pixels as the authors' code, times 2 images per GPU / --batch_size, "
    "so the original's learning rates mean what they meant there (docs/faithfulness.md).",
)
flags.DEFINE_integer(
    "grad_accum_steps", 1,
    "Micro-batches per update: each update's global --batch_size is split into N parts of "
    "batch_size / N run one after the other, their gradients summed (the same update).",
)
flags.DEFINE_integer(
    "stop_at_step", None,
    "Checkpoint and stop at this step, leaving the schedule of --max_steps unchanged (for "
    "time-sliced or preemptible jobs: re-run the command to continue).",
)
flags.DEFINE_integer("checkpoint_every", 1000, "Steps between checkpoints.")
flags.DEFINE_integer("max_to_keep", 5, "Checkpoints kept.")
flags.DEFINE_integer("log_every", 20, "Steps between progress lines and scalar summaries.")
flags.DEFINE_integer("image_summary_every", 500, "Steps between image panels (0: never).")
flags.DEFINE_integer("eval_every", 0, "Steps between evaluations on the eval split (0: never).")
flags.DEFINE_integer("eval_images", 50, "Images used by the periodic evaluation.")

FLAGS = flags.FLAGS


def _crop_size(values):
    try:
        height, width = (int(v) for v in values)
    except ValueError:
        raise ValueError(f"--crop_size must be height,width; got {values}") from None
    return height, width


# `TrainConfig` fields whose flag has another name, and flag values that need converting.
FLAG_NAMES = {"reward.window": "reward_window", "loss.reduction": "loss_reduction"}
PARSERS = {"data.crop_size": _crop_size}


def config_from_flags(flag_values=FLAGS):
    """The `TrainConfig` the parsed flags give.

    Raises:
      ValueError: flags that do not make a run (the message names the flag).
    """
    return command_flags.config_from_flags(config.TrainConfig, flag_values, FLAG_NAMES, PARSERS)


def parse_config(args):
    """The `TrainConfig` of `python -m ciss_tf.train <args>`, global flags untouched.

    For callers that train in process (the demo, tests): the arguments are parsed into a
    copy of the flags reset to their defaults, as a fresh command line would be.

    Raises:
      flags.Error: an unknown flag or a bad value.
      ValueError: flags that do not make a run.
    """
    flag_values = copy.deepcopy(FLAGS)
    # Parsing the copy's --verbosity sets the process's log levels (absl): keep the caller's,
    # else an in-process run would silence its own progress lines.
    loggers = (logging.root, absl_logging.get_absl_logger())
    levels = [logger.level for logger in loggers]
    try:
        flag_values.unparse_flags()
        flag_values(["train", *args])
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    return config_from_flags(flag_values)


def main(argv):
    """Trains; one error line and a non-zero exit on bad flags, data or divergence."""
    del argv
    if not FLAGS.model_dir:
        sys.exit("error: --model_dir is required")
    if not FLAGS.data_dir:
        sys.exit("error: --data_dir is required (TFRecords written by data_prep)")
    try:
        trainer.train(config_from_flags())
    except (ValueError, FileNotFoundError, trainer.NonFiniteLossError) as error:
        sys.exit(f"error: {error}")


def run():
    """Console entry point."""
    cli.list_flags_in_help(__name__, command_flags.__name__)
    app.run(main)


if __name__ == "__main__":
    run()
