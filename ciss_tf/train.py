r"""Trains PSPNet (stage 1) or CiSS-Net (stage 2) under `tf.distribute`.

    python -m ciss_tf.train --flagfile=experiments/ade20k_pspnet.flags   # stage 1
    python -m ciss_tf.train --flagfile=experiments/ade20k.flags \
        --init_checkpoint=runs/ade20k_pspnet                             # stage 2

One custom `tf.function` step run with `strategy.run`: the CiSS-Net step unrolls T steps,
samples Bernoulli actions keyed by each example's global index, accumulates the Eq. 7 loss
(`losses.ciss_loss`) and applies SGD with momentum and poly decay. Per-group learning
rates (SPEC.md section 5): each variable group has its own optimizer with its own poly
schedule, all of the same shape (`variable_groups`): the Base Net (or the whole PSPNet)
at `--base_learning_rate`, the Bias Net and the Context Net at `--context_learning_rate`
(or the Context Net at `--context_net_learning_rate`: the authors' three optimizers). With
SGD + momentum this equals scaling the other groups' gradients by the ratio of the rates;
unlike that, it also holds for Adam / AdamW. Weight decay (kernels only) is the caffe
convention with SGD: `wd / 2 * |w|^2` added to the loss; AdamW decays at each group's rate.

Re-running the same command resumes from the latest checkpoint in `--model_dir`: model,
every group's optimizer and step are restored, and the input stream restarts at element
`step * batch_size` (the pipeline's randomness is keyed by element index, so the resumed
stream equals the uninterrupted one). A non-finite loss stops training before any
checkpoint of the diverged weights is written.
"""

import collections
import dataclasses
import json
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from ciss_tf import checkpoints, cli, config, imagenet, inference, losses
from ciss_tf.data import datasets, input_pipeline

flags.DEFINE_enum("stage", "ciss", ["pspnet", "ciss"], "pspnet: stage 1; ciss: stage 2.")
flags.DEFINE_string("model_dir", None, "Checkpoints and TensorBoard logs (train/, eval/).")
flags.DEFINE_string(
    "init_checkpoint", None,
    "Stage 2: stage-1 checkpoint (file prefix or folder) whose feature net is loaded and "
    "frozen. Without it the feature net keeps random weights (tests only).",
)
flags.DEFINE_enum(
    "base_init", "fresh", ["fresh", "pspnet"],
    "Stage 2, fresh start only: fresh: the Base Net starts from its random initialisation "
    "(the paper); pspnet: its 3x3 conv and classifier start as the stage-1 PSPNet head's "
    "(conv5_4, conv6) read from --init_checkpoint, its GroupNorm fresh (our deviation: stage "
    "2 then starts from the PSPNet it has to beat).",
)
flags.DEFINE_string(
    "imagenet_weights", None,
    "Stage 1: a local Keras ResNet50/ResNet101 ImageNet weights file (.h5, include_top=False) "
    "loaded into the backbone before training; needs --stem=resnet (see ciss_tf/imagenet.py).",
)
flags.DEFINE_integer("batch_size", 16, "Global batch size (all replicas together).")
flags.DEFINE_list("crop_size", ["473", "473"], "Training crop: height,width.")
flags.DEFINE_float("min_scale", 0.5, "Smallest random rescaling factor.")
flags.DEFINE_float("max_scale", 2.0, "Largest random rescaling factor.")
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
    "optimizer", "sgd", ["sgd", "adamw"],
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
flags.DEFINE_integer("seed", 0, "Seed of initialisation, input stream and action sampling.")
flags.DEFINE_bool("deterministic", False, "Enable TF op determinism (slower; for tests).")
flags.DEFINE_enum(
    "strategy", "default", ["default", "one_device", "mirrored", "multi_worker"],
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
    "mixed_precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"],
    "Keras dtype policy; the class logits (so the p-map, the context map and the reward), "
    "policy, value and losses stay in float32. mixed_float16 adds dynamic loss scaling "
    "(a step with non-finite gradients on any replica is skipped by all).",
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
SUMMARY_FILE = "train_summary.json"
SUMMARY_WINDOW = 50  # steps averaged into the summary's final_terms


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite."""


def _crop_size():
    try:
        height, width = (int(v) for v in FLAGS.crop_size)
    except ValueError:
        raise ValueError(f"--crop_size must be height,width; got {FLAGS.crop_size}") from None
    return height, width


def make_strategy(name, num_cpu_devices):
    """The `tf.distribute` strategy for `--strategy` (call before any other TF op)."""
    if num_cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices
        )
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if gpus and (name == "mirrored" or len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if num_cpu_devices > 1 or name == "mirrored":
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    return tf.distribute.get_strategy()


@dataclasses.dataclass(frozen=True)
class VariableGroup:
    """Variables trained by one optimizer at one initial learning rate.

    Attributes:
      name: "base", "context" or "context_net" (also the TensorBoard tag
        `learning_rate/<name>` and, but for "base", the checkpoint key `optimizer_<name>`).
      variables: the group's trainable variables, in the model's order.
      learning_rate: initial rate of the group's poly schedule.
    """

    name: str
    variables: tuple
    learning_rate: float


def variable_groups(model, stage):
    """The learning-rate groups of `model` from the flags (SPEC.md section 5).

    Stage 1: one group. Stage 2: the Base Net at `--base_learning_rate`; everything else
    trainable (Bias Net, Context Net) at `--context_learning_rate`, or the Context Net in
    a group of its own with `--context_net_learning_rate`. With T = 0 only the Base Net:
    the others get no gradient, so they have no optimizer and are neither updated nor
    decayed (they stay as initialised, like the unused weights of the paper's Baseline).
    """
    variables = model.trainable_variables
    if stage == "pspnet":
        return [VariableGroup("base", tuple(variables), FLAGS.base_learning_rate)]
    base = tuple(model.base_net.trainable_variables)
    groups = [VariableGroup("base", base, FLAGS.base_learning_rate)]
    if FLAGS.unroll_steps == 0:
        return groups
    taken = {id(v) for v in base}
    separate = FLAGS.context_net_learning_rate is not None and model.context_net is not None
    if separate:
        context_net = tuple(model.context_net.trainable_variables)
        taken |= {id(v) for v in context_net}
    rest = tuple(v for v in variables if id(v) not in taken)
    groups.append(VariableGroup("context", rest, FLAGS.context_learning_rate))
    if separate:
        groups.append(
            VariableGroup("context_net", context_net, FLAGS.context_net_learning_rate)
        )
    return groups


def make_schedule(learning_rate):
    """The poly decay from `learning_rate` to 0 at `--max_steps` (every group's shape)."""
    return keras.optimizers.schedules.PolynomialDecay(
        learning_rate, FLAGS.max_steps, 0.0, power=FLAGS.lr_power
    )


def _is_kernel(variable):
    return "kernel" in variable.path


def make_optimizer(schedule, variables):
    """`--optimizer` on `schedule`; AdamW decays the conv kernels only, like the L2 term."""
    if FLAGS.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=FLAGS.momentum)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=FLAGS.weight_decay)
    optimizer.exclude_from_weight_decay(var_list=[v for v in variables if not _is_kernel(v)])
    return optimizer


def make_group_optimizers(groups, loss_scaling=False):
    """One built optimizer per group (call under the strategy's scope).

    Args:
      groups: `VariableGroup`s.
      loss_scaling: wrap each in a `LossScaleOptimizer` (mixed_float16). They start at the
        same scale and `apply_group_gradients` makes them skip the same steps, so their
        scales stay equal and one of them can scale the loss for all.

    Returns:
      A list of optimizers, `groups`' order; their variables exist before the first step
      (a checkpoint restores into them, and under `tf.distribute` they must be created
      in the strategy's scope, not in the replica step).
    """
    optimizers = []
    for group in groups:
        optimizer = make_optimizer(make_schedule(group.learning_rate), group.variables)
        if loss_scaling:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(list(group.variables))
        optimizers.append(optimizer)
    return optimizers


def apply_group_gradients(groups, optimizers, gradients):
    """Applies the gradients of every group's variables with that group's optimizer.

    Args:
      groups: `VariableGroup`s.
      optimizers: `make_group_optimizers(groups, ...)`.
      gradients: one per variable of the groups, in order (replica context), of the loss
        scaled by `optimizers[0].scale_loss` when loss scaling is on.
    """
    scaled = isinstance(optimizers[0], keras.optimizers.LossScaleOptimizer)
    replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    if scaled and (len(groups) > 1 or replicas > 1):
        gradients = poison_unless_all_replicas_finite(gradients)
    start = 0
    for group, optimizer in zip(groups, optimizers, strict=True):
        end = start + len(group.variables)
        optimizer.apply_gradients(zip(gradients[start:end], group.variables, strict=True))
        start = end


def checkpoint_optimizers(groups, optimizers):
    """`{checkpoint key: optimizer}`: `optimizer` for the "base" group, `optimizer_<group>`.

    The Base Net's (or PSPNet's) optimizer keeps the key of the single optimizer that
    checkpoints held before the groups had their own, so stage-1 runs still resume.
    """
    return {
        "optimizer" if group.name == "base" else f"optimizer_{group.name}": optimizer
        for group, optimizer in zip(groups, optimizers, strict=True)
    }


def weight_decay_loss(variables):
    """`wd / 2 * sum |kernel|^2`, the caffe weight decay, on conv kernels only (SGD)."""
    kernels = [v for v in variables if _is_kernel(v)]
    if not kernels or not FLAGS.weight_decay or FLAGS.optimizer != "sgd":
        return tf.constant(0.0)
    return 0.5 * FLAGS.weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in kernels])


def poison_unless_all_replicas_finite(gradients):
    """This replica's gradients, or all NaN when any replica's are not finite (replica context).

    Keras's LossScaleOptimizer decides whether to skip a step from the gradients of one
    replica before they are summed (or, without merge calls, each replica on its own), so an
    overflow on another replica would be applied and turn the weights NaN. Making every
    replica's gradients non-finite when any replica's are makes all of them skip the step
    and lower the loss scale together. Given the gradients of every variable group, it also
    makes each group's optimizer skip when another group's gradients overflowed.
    """
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
    overflowed = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32)
    )
    return [tf.where(overflowed > 0, tf.constant(np.nan, g.dtype), g) for g in gradients]


class Trainer:
    """Owns the strategy, model, optimizers, checkpoints and the distributed train step."""

    def __init__(self, strategy, info):
        self.strategy = strategy
        self.info = info
        self.stage = FLAGS.stage
        self.global_batch = FLAGS.batch_size
        if self.global_batch % strategy.num_replicas_in_sync:
            raise ValueError(
                f"--batch_size={self.global_batch} is not divisible by the "
                f"{strategy.num_replicas_in_sync} replicas"
            )
        if self.stage == "ciss" and FLAGS.context_mode == "learned" and FLAGS.unroll_steps < 1:
            raise ValueError(
                "--unroll_steps must be at least 1 with --context_mode=learned (the Context "
                "Net acts from step 1 on)"
            )
        if FLAGS.base_init == "pspnet" and (self.stage != "ciss" or not FLAGS.init_checkpoint):
            raise ValueError(
                "--base_init=pspnet needs --stage=ciss and --init_checkpoint (the stage-1 "
                "PSPNet whose head starts the Base Net)"
            )
        self.crop = _crop_size()
        with strategy.scope():
            self.model = config.model_from_flags(info.num_classes, self.stage)
            # One step creates every variable, also when training unrolls none (T = 0).
            build = {} if self.stage == "pspnet" else {"num_steps": 1}
            self.model(tf.zeros((1, *self.crop, 3)), training=False, **build)
            self.groups = variable_groups(self.model, self.stage)
            self.variables = [v for group in self.groups for v in group.variables]
            self.optimizers = make_group_optimizers(
                self.groups, loss_scaling=FLAGS.mixed_precision == "mixed_float16"
            )
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.replica_fn = (
            tf.function(self.replica_step, jit_compile=True) if FLAGS.jit_compile
            else self.replica_step
        )
        self.checkpoint = tf.train.Checkpoint(
            model=checkpoints.model_variables(self.model), step=self.step,
            **checkpoint_optimizers(self.groups, self.optimizers),
        )

    def _call_kwargs(self, training):
        if self.stage == "pspnet":
            return {"training": training}
        return {"training": training, "num_steps": FLAGS.unroll_steps}

    def _loss(self, outputs, labels):
        if self.stage == "pspnet":
            return losses.pspnet_loss(
                outputs, labels, global_batch_size=self.global_batch,
                ignore_label=self.info.ignore_label,
            )
        return losses.ciss_loss(
            outputs, labels, global_batch_size=self.global_batch, gamma=FLAGS.gamma,
            lambda1=FLAGS.lambda1, lambda2=FLAGS.lambda2, beta1=FLAGS.beta1, beta2=FLAGS.beta2,
            window=FLAGS.reward_window, ignore_label=self.info.ignore_label,
        )

    def replica_step(self, batch):
        """Forward, Eq. 7 (or PSPNet's loss), backward and update on one replica's batch."""
        kwargs = self._call_kwargs(training=True)
        if self.stage == "ciss":
            kwargs.update(sample_ids=batch["sample_id"], seed=FLAGS.seed)
        with tf.GradientTape() as tape:
            outputs = self.model(batch["image"], **kwargs)
            terms = self._loss(outputs, batch["label"])
            # Replica gradients are summed: each replica carries 1/N of the decay.
            decay = weight_decay_loss(self.variables) / self.strategy.num_replicas_in_sync
            loss = terms["total"] + decay
            # The groups' loss scales are equal (see `make_group_optimizers`): one scales.
            scaled = (
                self.optimizers[0].scale_loss(loss)
                if isinstance(self.optimizers[0], keras.optimizers.LossScaleOptimizer) else loss
            )
        gradients = tape.gradient(scaled, self.variables)
        apply_group_gradients(self.groups, self.optimizers, gradients)
        terms["weight_decay"] = decay
        return terms

    @tf.function
    def train_step(self, iterator):
        """One distributed step; returns the terms summed over replicas (global means)."""
        per_replica = self.strategy.run(self.replica_fn, args=(next(iterator),))
        self.step.assign_add(1)
        return {
            name: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
            for name, value in per_replica.items()
        }

    def dataset(self, start_index):
        """The distributed training stream starting at global element `start_index`."""
        pattern = input_pipeline.split_file_pattern(FLAGS.data_dir, self.info.train_split)

        def dataset_fn(input_context):
            return input_pipeline.train_dataset(
                pattern, crop_size=self.crop, batch_size=self.global_batch, seed=FLAGS.seed,
                num_classes=self.info.num_classes, min_scale=FLAGS.min_scale,
                max_scale=FLAGS.max_scale, ignore_label=self.info.ignore_label,
                start_index=start_index, input_context=input_context,
            )

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def weights_are_finite(self):
        """True when every model variable is finite (checked before each save)."""
        return all(
            bool(tf.reduce_all(tf.math.is_finite(v)))
            for v in self.model.variables if tf.as_dtype(v.dtype).is_floating
        )


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def _checkpoint_dir(strategy, model_dir):
    """Chief writes to model_dir; other workers to a scratch folder (TF's documented pattern)."""
    if _is_chief(strategy):
        return model_dir
    return os.path.join(model_dir, "workers", f"worker_{strategy.cluster_resolver.task_id}")


def _image_panel(trainer, preview):
    """Per step t: input | ground truth | p-map | context map (uncertain white)."""
    outputs = trainer.model(preview["image"], training=False, num_steps=FLAGS.unroll_steps)
    size = preview["label"].shape[1:3]
    image = input_pipeline.denormalize_image(preview["image"])[0].numpy()
    label = datasets.colorize(preview["label"][0].numpy(), trainer.info.palette)
    rows = []
    for t in range(FLAGS.unroll_steps + 1):
        # Resized as evaluation resizes them (corners aligned), so the panel shows its labels.
        logits = inference.upsample_logits(outputs["logits"][t][:1], size)
        pmap = datasets.colorize(tf.argmax(logits, -1)[0].numpy(), trainer.info.palette)
        if t < FLAGS.unroll_steps:
            context = inference.upsample_context(outputs["context"][t][:1], size)[0].numpy()
            context_rgb = datasets.colorize(context - 1, trainer.info.palette, context == 0)
        else:
            context_rgb = np.zeros_like(pmap)
        rows.append(np.concatenate([image, label, pmap, context_rgb], axis=1))
    return np.stack(rows)


def _preview_batch(info):
    """The first image of the eval split (else train), fixed for the whole run."""
    for split in (info.eval_split, info.train_split):
        try:
            pattern = input_pipeline.split_file_pattern(FLAGS.data_dir, split)
        except FileNotFoundError:
            continue
        dataset = input_pipeline.eval_dataset(pattern, num_classes=info.num_classes)
        return next(iter(dataset))
    return None


def train():
    """Runs training as the flags say; returns the final step's loss terms."""
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(FLAGS.strategy, FLAGS.num_cpu_devices)
    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.mixed_precision != "float32":
        keras.mixed_precision.set_global_policy(FLAGS.mixed_precision)
    info = datasets.get_dataset_info(FLAGS.dataset)
    trainer = Trainer(strategy, info)
    model_dir = FLAGS.model_dir
    manager = tf.train.CheckpointManager(
        trainer.checkpoint, _checkpoint_dir(strategy, model_dir), FLAGS.max_to_keep,
        step_counter=trainer.step,
    )
    # Every worker resumes from the chief's checkpoint: the other workers' scratch copies
    # may be missing (local disks) or one save behind, and replicas must start equal.
    latest = tf.train.latest_checkpoint(model_dir)
    if latest:
        try:
            trainer.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError) as error:
            raise ValueError(
                f"{latest} does not match this model (another {checkpoints.MISMATCH_SUSPECTS}? "
                f"other learning-rate groups: --context_net_learning_rate, --unroll_steps=0, "
                f"or stage 2 from before each group had its own optimizer?); use a new "
                f"--model_dir. "
                f"{str(error).splitlines()[0][:200]}"
            ) from None
        logging.info("Resumed from %s at step %d", latest, int(trainer.step.numpy()))
    elif FLAGS.imagenet_weights and FLAGS.stage == "pspnet":
        depth = {"resnet50": 50, "resnet101": 101}.get(FLAGS.preset)
        if depth is None:
            raise ValueError(
                f"--imagenet_weights needs --preset=resnet50|resnet101, not {FLAGS.preset}"
            )
        imagenet.load_keras_resnet_weights(
            trainer.model.feature_net.backbone, FLAGS.imagenet_weights, depth=depth
        )
        logging.info("Backbone initialised from ImageNet weights %s", FLAGS.imagenet_weights)
    elif FLAGS.init_checkpoint and FLAGS.stage == "ciss":
        path = checkpoints.restore_feature_net(trainer.model, FLAGS.init_checkpoint)
        logging.info("Feature net initialised from %s", path)
        if FLAGS.base_init == "pspnet":
            checkpoints.restore_base_net_from_pspnet_head(trainer.model, path)
            logging.info("Base Net conv and classifier initialised from the head of %s", path)
    elif FLAGS.stage == "ciss":
        logging.warning("No --init_checkpoint: the frozen feature net keeps random weights.")

    start = int(trainer.step.numpy())
    iterator = iter(trainer.dataset(start * trainer.global_batch))
    chief = _is_chief(strategy)
    if chief:
        checkpoints.write_model_config(trainer.model, model_dir)
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "train")) if chief else None
    preview = _preview_batch(info) if chief and FLAGS.stage == "ciss" else None
    terms, tick, tick_step, started = {}, time.time(), start, time.time()
    earlier_seconds = (read_summary(model_dir) or {}).get("seconds", 0.0) if chief else 0.0
    recent = collections.deque(maxlen=SUMMARY_WINDOW)
    last_step = min(FLAGS.max_steps, FLAGS.stop_at_step or FLAGS.max_steps)
    for step in range(start + 1, last_step + 1):
        terms = {name: float(value) for name, value in trainer.train_step(iterator).items()}
        recent.append(terms)
        if not math.isfinite(terms["total"]):
            raise NonFiniteLossError(
                f"loss is {terms['total']} at step {step}; stopping without saving (last "
                f"good checkpoint: {manager.latest_checkpoint}). Lower the learning rate?"
            )
        if step % FLAGS.log_every == 0 or step == last_step:
            now = time.time()
            steps_per_second = (step - tick_step) / max(now - tick, 1e-9)
            remaining = (FLAGS.max_steps - step) / max(steps_per_second, 1e-9)
            logging.info(
                "step %d/%d  loss %.4f  %s  %.2f img/s  eta %s", step, FLAGS.max_steps,
                terms["total"],
                "  ".join(f"{k} {v:.4g}" for k, v in sorted(terms.items()) if k != "total"),
                steps_per_second * trainer.global_batch, _format_seconds(remaining),
            )
            if writer is not None:
                _write_scalars(writer, trainer, terms, step, steps_per_second)
            tick, tick_step = now, step
        if preview is not None and FLAGS.image_summary_every and (
            step % FLAGS.image_summary_every == 0 or step == FLAGS.max_steps
        ):
            with writer.as_default(step=step):
                tf.summary.image(
                    "steps/input_gt_pmap_context", _image_panel(trainer, preview),
                    max_outputs=FLAGS.unroll_steps + 1,
                )
        if FLAGS.eval_every and step % FLAGS.eval_every == 0 and chief:
            _evaluate(trainer, step)
        if step % FLAGS.checkpoint_every == 0 or step == last_step:
            if not trainer.weights_are_finite():
                raise NonFiniteLossError(
                    f"non-finite weights at step {step}; checkpoint not written"
                )
            manager.save(checkpoint_number=step)
            if chief:
                write_summary(model_dir, step, earlier_seconds + time.time() - started, recent)
    if writer is not None:
        writer.flush()
    logging.info("Done: %d steps in %s", last_step - start, _format_seconds(
        time.time() - started))
    return terms


def read_summary(model_dir):
    """The `SUMMARY_FILE` of a run (see `write_summary`), or None when there is none."""
    path = os.path.join(model_dir, SUMMARY_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def write_summary(model_dir, step, seconds, recent_terms):
    """Writes `<model_dir>/train_summary.json` next to the checkpoint of `step`.

    `{"step": step, "max_steps": --max_steps (the run is finished when they are equal),
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
        "max_steps": FLAGS.max_steps,
        "seconds": float(seconds),
        "final_terms": {
            name: float(np.mean([terms[name] for terms in recent_terms])) for name in names
        },
    }
    path = os.path.join(model_dir, SUMMARY_FILE)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def _write_scalars(writer, trainer, terms, step, steps_per_second):
    with writer.as_default(step=step):
        for name, value in terms.items():
            group = "loss" if name in (
                "total", "policy", "value", "entropy", "segmentation", "auxiliary",
                "weight_decay",
            ) or name.startswith("segmentation_t") else "rl"
            tf.summary.scalar(f"{group}/{name}", value)
        for group in trainer.groups:
            # The rate step `step` (counted from 1) used: its schedule at iteration step - 1.
            tf.summary.scalar(
                f"learning_rate/{group.name}", float(make_schedule(group.learning_rate)(step - 1))
            )
        tf.summary.scalar("perf/steps_per_second", steps_per_second)
        tf.summary.scalar("perf/images_per_second", steps_per_second * trainer.global_batch)


def _evaluate(trainer, step):
    from ciss_tf import evaluate  # noqa: PLC0415  (the evaluator is optional at import)

    info = trainer.info
    pattern = input_pipeline.split_file_pattern(FLAGS.data_dir, info.eval_split)
    dataset = input_pipeline.eval_dataset(pattern, num_classes=info.num_classes).take(
        FLAGS.eval_images
    )
    eval_steps = [0] if trainer.stage == "pspnet" else sorted({0, 2, FLAGS.unroll_steps})
    results = evaluate.evaluate_model(
        trainer.model, dataset, num_classes=info.num_classes, eval_steps=eval_steps
    )
    writer = tf.summary.create_file_writer(os.path.join(FLAGS.model_dir, "eval"))
    with writer.as_default(step=step):
        for t, scores in results["steps"].items():
            tf.summary.scalar(f"miou/t{t}", scores["miou"])
            tf.summary.scalar(f"pixel_accuracy/t{t}", scores["pixel_accuracy"])
    writer.flush()
    logging.info(
        "eval at step %d: %s", step,
        "  ".join(f"t={t} mIoU {s['miou']:.4f}" for t, s in results["steps"].items()),
    )


def _format_seconds(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def main(argv):
    """Trains; one error line and a non-zero exit on bad flags, data or divergence."""
    del argv
    if not FLAGS.model_dir:
        sys.exit("error: --model_dir is required")
    if not FLAGS.data_dir:
        sys.exit("error: --data_dir is required (TFRecords written by data_prep)")
    try:
        train()
    except (ValueError, FileNotFoundError, NonFiniteLossError) as error:
        sys.exit(f"error: {error}")


def run():
    """Console entry point."""
    cli.list_flags_in_help(__name__, config.__name__)
    app.run(main)


if __name__ == "__main__":
    run()
