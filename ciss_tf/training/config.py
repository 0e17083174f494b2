"""Typed, frozen settings of a training run, built once from the command line.

`TrainConfig` holds everything `trainer.train` needs; nothing under `ciss_tf.training`
reads flags. `ciss_tf.train` (the command) builds it from its flags; the demo and the tests
build it the same way (`ciss_tf.train.parse_config`) or directly.
"""

import dataclasses

from ciss_tf.modeling.config import ModelConfig

OPTIMIZERS = ("sgd", "adamw")
BASE_INITS = ("fresh", "pspnet")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
BACKPROPS = ("episode", "per_step")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training stream: dataset, shards, crops and batch."""

    dataset: str = "synthetic"
    data_dir: str | None = None
    crop_size: tuple[int, int] = (473, 473)
    min_scale: float = 0.5
    max_scale: float = 2.0
    batch_size: int = 16  # global: all replicas together
    augmentation: str = "pspnet"  # or "original" (`input_pipeline.AUGMENTATIONS`)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer, weight decay and the per-group initial rates of the poly schedules.

    `context_net_learning_rate` None puts the Context Net in the Bias Net's group;
    set, it gives the authors' three groups (SPEC.md section 5).
    """

    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_power: float = 0.9
    base_learning_rate: float = 2e-3
    context_learning_rate: float = 2e-4
    context_net_learning_rate: float | None = None


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Eq. 4's reward: the settings of `rl.context_reward` (its keyword arguments).

    A new reward parameter is a field here and an argument of `rl.context_reward` of the
    same name (and the `ciss_tf.train` flag of that name).
    """

    beta1: float = 0.4
    beta2: float = 0.2
    window: int = 5
    unlabelled_reward: str = "beta2"


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Eq. 5-7: the returns' discount, the loss weights and how each term is reduced.

    `reduction`: "mean" per pixel, or "sum" as the authors' code (`losses.REDUCTIONS`).
    """

    gamma: float = 0.9
    lambda1: float = 1.0
    lambda2: float = 0.05
    reduction: str = "mean"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run (stage 1 or 2, by `model.stage`).

    Attributes:
      model_dir: checkpoints, TensorBoard logs, `train_summary.json`, `config.json` (this
        config, `run_folder`).
      unroll_steps: T, the context steps of a training episode (stage 2).
      input_scale: the scale images are seen at by the periodic evaluation and the image
        panels (the inference tools' `--input_scale`; training crops have their own).
      init_checkpoint: stage 2: the stage-1 checkpoint whose feature net is loaded.
      base_init: stage 2: "fresh" Base Net, or "pspnet" (its convs from the PSPNet head).
      imagenet_weights: stage 1: a Keras ResNet ImageNet weights file for the backbone.
      stop_at_step: checkpoint and stop here, the schedule still that of `max_steps`.
      backprop: stage 2: "episode" (one tape over the unroll) or "per_step" (memory flat in
        T, `training/per_step.py`); the same gradient.
      grad_accum_steps: micro-batches per update (`data.batch_size` stays the update's).
      initial_loss_scale: mixed_float16: where the dynamic loss scale starts.
      Others: as the `ciss_tf.train` flags of the same names say.
    """

    model: ModelConfig
    model_dir: str
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    reward: RewardConfig = RewardConfig()
    loss: LossConfig = LossConfig()
    max_steps: int = 30000
    unroll_steps: int = 8
    seed: int = 0
    input_scale: float = 1.0
    init_checkpoint: str | None = None
    base_init: str = "fresh"
    imagenet_weights: str | None = None
    strategy: str = "default"
    num_cpu_devices: int = 1
    jit_compile: bool = False
    mixed_precision: str = "float32"
    initial_loss_scale: float = 2.0**15
    deterministic: bool = False
    stop_at_step: int | None = None
    backprop: str = "episode"
    grad_accum_steps: int = 1
    checkpoint_every: int = 1000
    max_to_keep: int = 5
    log_every: int = 20
    image_summary_every: int = 500
    eval_every: int = 0
    eval_images: int = 50

    def __post_init__(self):
        if self.backprop not in BACKPROPS:
            raise ValueError(f"--backprop must be one of {BACKPROPS}, got {self.backprop!r}")
        if self.grad_accum_steps < 1 or self.data.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"--grad_accum_steps={self.grad_accum_steps} must be at least 1 and divide "
                f"--batch_size={self.data.batch_size}"
            )
        stage2 = self.model.stage == "ciss"
        if stage2 and self.model.context_mode == "learned" and self.unroll_steps < 1:
            raise ValueError(
                "--unroll_steps must be at least 1 with --context_mode=learned (the Context "
                "Net acts from step 1 on)"
            )
