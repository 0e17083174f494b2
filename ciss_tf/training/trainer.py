"""The generic trainer: strategy, distributed step, checkpoints, resume, logging.

`train(cfg)` runs a `TrainConfig` with the task of its stage (`tasks.make_task`): one
custom `tf.function` step run with `strategy.run` (forward, the task's loss plus weight
decay, backward, one optimizer per learning-rate group), progress lines, TensorBoard
summaries, periodic evaluation and checkpoints.

Re-running the same config resumes from the latest checkpoint in `model_dir`: model, every
group's optimizer and step are restored, and the input stream restarts at element
`step * batch_size` (the pipeline's randomness is keyed by element index, so the resumed
stream equals the uninterrupted one). A non-finite loss stops training before any
checkpoint of the diverged weights is written.
"""

import collections
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from ciss_tf.data import datasets, input_pipeline
from ciss_tf.evaluation import evaluator
from ciss_tf.modeling import checkpoints
from ciss_tf.training import gradients, optimizers, run_folder, summaries, tasks


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite."""


def make_strategy(name, num_cpu_devices):
    """The `tf.distribute` strategy called `name` (call before any other TF op)."""
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


class Trainer:
    """Owns the model, optimizers, checkpoint and the distributed train step of a task."""

    def __init__(self, strategy, task):
        cfg = task.cfg
        self.strategy = strategy
        self.task = task
        self.cfg = cfg
        self.info = task.info
        self.global_batch = cfg.data.batch_size
        if self.global_batch % (strategy.num_replicas_in_sync * cfg.grad_accum_steps):
            raise ValueError(
                f"--batch_size={self.global_batch} is not divisible by the "
                f"{strategy.num_replicas_in_sync} replicas times --grad_accum_steps="
                f"{cfg.grad_accum_steps}"
            )
        _refuse_what_xla_cannot_compile(cfg, strategy.num_replicas_in_sync)
        with strategy.scope():
            self.model = task.build_model()
            self.groups = task.variable_groups(self.model)
            self.variables = [v for group in self.groups for v in group.variables]
            self.optimizers = optimizers.make_group_optimizers(
                self.groups, cfg.optimizer, cfg.max_steps,
                initial_loss_scale=(cfg.initial_loss_scale
                                    if cfg.mixed_precision == "mixed_float16" else None),
            )
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        # XLA compiles the gradient computation, not the update: the optimizers' merge
        # calls, the all-reduce and the loss-scale conditionals stay outside the cluster,
        # where XLA fails with several replicas (on logical CPUs: "tf.Variable on a
        # different device"; upstream keras#21366, models#10752 on GPUs).
        self.gradient_fn = (
            tf.function(self.replica_gradients, jit_compile=True) if cfg.jit_compile
            else self.replica_gradients
        )
        self.checkpoint = tf.train.Checkpoint(
            model=checkpoints.model_variables(self.model), step=self.step,
            **optimizers.checkpoint_optimizers(self.groups, self.optimizers),
        )

    def replica_gradients(self, batch):
        """The loss terms of one replica's batch and the gradients of loss + weight decay.

        With `--grad_accum_steps=N` the batch runs as N micro-batches whose gradients add
        up to the whole batch's (`gradients.accumulate`).
        """
        optimizer = self.optimizers[0]
        # The groups' loss scales are equal (see `make_group_optimizers`): one scales.
        scale_loss = (
            optimizer.scale_loss
            if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else tf.identity
        )
        terms, grads = gradients.accumulate(
            lambda micro: self.task.gradients(
                self.model, micro, self.variables, self.global_batch, scale_loss
            ),
            batch, self.cfg.grad_accum_steps,
        )
        with tf.GradientTape() as tape:
            # Replica gradients are summed: each replica carries 1/N of the decay.
            decay = (optimizers.weight_decay_loss(self.variables, self.cfg.optimizer)
                     / self.strategy.num_replicas_in_sync)
            scaled = scale_loss(decay)
        grads = gradients.add_gradients(grads, tape.gradient(scaled, self.variables))
        terms["weight_decay"] = decay
        return terms, grads

    def replica_step(self, batch):
        """Forward, the task's loss, backward and update on one replica's batch.

        Returns the loss terms stacked in the order of `term_names` (set when traced), so
        that one all-reduce sums them all.
        """
        terms, grads = self.gradient_fn(batch)
        optimizers.apply_group_gradients(self.groups, self.optimizers, grads)
        self.term_names = sorted(terms)
        return tf.stack([tf.cast(terms[name], tf.float32) for name in self.term_names])

    @tf.function(autograph=False)
    def train_step(self, iterator):
        """One distributed step; returns its terms, summed over replicas, as one vector.

        Its entries are the terms of `term_names`. Nothing here waits for the host: the
        training loop reads the vectors of several steps at once, at its log steps.
        """
        per_replica = self.strategy.run(self.replica_step, args=(next(iterator),))
        self.step.assign_add(1)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def loss_scale(self):
        """The dynamic loss scale of mixed_float16, or None without loss scaling."""
        optimizer = self.optimizers[0]
        if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return None
        return float(optimizer.dynamic_scale.numpy())

    def dataset(self, start_index):
        """The distributed training stream starting at global element `start_index`."""
        data = self.cfg.data
        pattern = input_pipeline.split_file_pattern(data.data_dir, self.info.train_split)

        def dataset_fn(input_context):
            return input_pipeline.train_dataset(
                pattern, crop_size=data.crop_size, batch_size=self.global_batch,
                seed=self.cfg.seed, num_classes=self.info.num_classes,
                min_scale=data.min_scale, max_scale=data.max_scale,
                augmentation=data.augmentation,
                ignore_label=self.info.ignore_label, start_index=start_index,
                input_context=input_context,
            )

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def weights_are_finite(self):
        """True when every model variable is finite (checked before each save)."""
        return all(
            bool(tf.reduce_all(tf.math.is_finite(v)))
            for v in self.model.variables if tf.as_dtype(v.dtype).is_floating
        )

    def restore_or_initialize(self, model_dir):
        """Resumes from the latest checkpoint of `model_dir`, else lets the task initialise."""
        # Every worker resumes from the chief's checkpoint: the other workers' scratch copies
        # may be missing (local disks) or one save behind, and replicas must start equal.
        latest = tf.train.latest_checkpoint(model_dir)
        if not latest:
            self.task.initialize(self.model)
            return
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError) as error:
            raise ValueError(
                f"{latest} does not match this model (another {checkpoints.MISMATCH_SUSPECTS}? "
                f"other learning-rate groups: --context_net_learning_rate, --unroll_steps=0, "
                f"or stage 2 from before each group had its own optimizer?); use a new "
                f"--model_dir. "
                f"{str(error).splitlines()[0][:200]}"
            ) from None
        logging.info("Resumed from %s at step %d", latest, int(self.step.numpy()))


def _refuse_what_xla_cannot_compile(cfg, replicas):
    """Raises a `ValueError` naming the flags of a `--jit_compile` run TensorFlow fails.

    Synchronized batch norm in training mode (stage 1's backbone, stage 2's Context Net
    with `--context_encoder_norm=batch`) all-reduces inside the XLA function, which
    `tf.distribute` forbids in a nested function ("merge_call called while defining a new
    graph"); stage 1's max-pool gradient has no deterministic XLA kernel.
    """
    if not cfg.jit_compile:
        return
    stage1 = cfg.model.stage == "pspnet"
    if replicas > 1 and (stage1 or cfg.model.context_encoder_norm == "batch"):
        what = "--stage=pspnet" if stage1 else "--context_encoder_norm=batch"
        raise ValueError(
            f"--jit_compile with {replicas} replicas cannot compile the synchronized batch "
            f"norm of {what} (TensorFlow all-reduces inside the XLA function); drop "
            "--jit_compile or train on one device"
        )
    if stage1 and cfg.deterministic:
        raise ValueError(
            "--jit_compile with --deterministic: stage 1's max-pool gradient has no "
            "deterministic XLA kernel; drop one of them"
        )


def _is_chief(strategy):
    return _worker_position(strategy)[1] == 0


def _checkpoint_dir(strategy, model_dir):
    """Chief writes to model_dir; other workers to a scratch folder (TF's documented pattern)."""
    if _is_chief(strategy):
        return model_dir
    return os.path.join(model_dir, "workers", f"worker_{strategy.cluster_resolver.task_id}")


def _preview_batch(info, data_dir):
    """The first image of the eval split (else train), fixed for the whole run."""
    for split in (info.eval_split, info.train_split):
        try:
            pattern = input_pipeline.split_file_pattern(data_dir, split)
        except FileNotFoundError:
            continue
        dataset = input_pipeline.eval_dataset(pattern, num_classes=info.num_classes)
        return next(iter(dataset))
    return None


def train(cfg):
    """Runs the training `cfg` (a `TrainConfig`) says; returns the final step's loss terms."""
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(cfg.strategy, cfg.num_cpu_devices)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.mixed_precision != "float32":
        keras.mixed_precision.set_global_policy(cfg.mixed_precision)
    info = datasets.get_dataset_info(cfg.data.dataset)
    run_folder.check_resume(cfg)
    task = tasks.make_task(cfg, info)
    trainer = Trainer(strategy, task)
    model_dir = cfg.model_dir
    manager = tf.train.CheckpointManager(
        trainer.checkpoint, _checkpoint_dir(strategy, model_dir), cfg.max_to_keep,
        step_counter=trainer.step,
    )
    trainer.restore_or_initialize(model_dir)

    start = int(trainer.step.numpy())
    iterator = iter(trainer.dataset(start * trainer.global_batch))
    chief = _is_chief(strategy)
    if chief:
        run_folder.record(cfg, start)
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "train")) if chief else None
    preview = (_preview_batch(info, cfg.data.data_dir)
               if chief and task.has_image_panel and cfg.image_summary_every else None)
    terms, tick, tick_step, started = {}, time.time(), start, time.time()
    earlier_seconds = (
        (summaries.read_summary(model_dir) or {}).get("seconds", 0.0) if chief else 0.0
    )
    recent = collections.deque(maxlen=summaries.SUMMARY_WINDOW)
    guard = _NonFiniteGuard(trainer)
    pending = []  # (step, terms vector) not yet read on the host
    last_step = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    for step in range(start + 1, last_step + 1):
        pending.append((step, trainer.train_step(iterator)))
        logs = step % cfg.log_every == 0 or step == last_step
        saves = step % cfg.checkpoint_every == 0 or step == last_step
        if logs or saves:
            # One host read for every step since the last one; the guard sees each step.
            for (pending_step, _), values in zip(
                    pending, tf.stack([v for _, v in pending]).numpy(), strict=True):
                terms = dict(zip(trainer.term_names, values.tolist(), strict=True))
                if guard.check(pending_step, terms["total"], manager.latest_checkpoint):
                    recent.append(terms)
            pending = []
        if logs:
            now = time.time()
            steps_per_second = (step - tick_step) / max(now - tick, 1e-9)
            remaining = (cfg.max_steps - step) / max(steps_per_second, 1e-9)
            logging.info(
                "step %d/%d  loss %.4f  %s  %.2f img/s  eta %s", step, cfg.max_steps,
                terms["total"],
                "  ".join(f"{k} {v:.4g}" for k, v in sorted(terms.items()) if k != "total"),
                steps_per_second * trainer.global_batch,
                summaries.format_seconds(remaining),
            )
            if writer is not None:
                summaries.write_scalars(writer, trainer, terms, step, steps_per_second)
            tick, tick_step = now, step
        if preview is not None and (
            step % cfg.image_summary_every == 0 or step == cfg.max_steps
        ):
            panel = task.image_panel(trainer.model, preview)
            with writer.as_default(step=step):
                tf.summary.image("steps/input_gt_pmap_context", panel, max_outputs=len(panel))
        if cfg.eval_every and step % cfg.eval_every == 0:
            _evaluate(trainer, step, chief)
        if saves:
            if not trainer.weights_are_finite():
                raise NonFiniteLossError(
                    f"non-finite weights at step {step}; checkpoint not written"
                )
            manager.save(checkpoint_number=step)
            if chief:
                summaries.write_summary(
                    model_dir, step, cfg.max_steps, earlier_seconds + time.time() - started,
                    recent,
                )
    if writer is not None:
        writer.flush()
    logging.info("Done: %d steps in %s", last_step - start,
                 summaries.format_seconds(time.time() - started))
    return terms


class _NonFiniteGuard:
    """Stops training on a non-finite loss, or, with loss scaling, on a run of them.

    Without loss scaling (float32, mixed_bfloat16) a non-finite loss means divergence: the
    run stops at once. With mixed_float16 a float16 overflow (in the forward or the
    backward pass, on any replica) makes every replica skip the update and halves the loss
    scale, so a non-finite loss is a skipped step, not a diverged model: training goes on
    unless `MAX_SKIPPED_STEPS` steps in a row are skipped (the scale has fallen by 2^20).
    """

    MAX_SKIPPED_STEPS = 20

    def __init__(self, trainer):
        self.trainer = trainer
        self.skipped_in_a_row = 0

    def check(self, step, loss, last_checkpoint):
        """True for a finite loss, False for a skipped step; raises when the run must stop.

        Raises:
          NonFiniteLossError: the loss at `step` is not finite and the run must stop.
        """
        if math.isfinite(loss):
            self.skipped_in_a_row = 0
            return True
        scale = self.trainer.loss_scale()
        if scale is not None and self.skipped_in_a_row < self.MAX_SKIPPED_STEPS:
            self.skipped_in_a_row += 1
            logging.warning("step %d: loss is %s, update skipped by every replica; loss scale "
                            "now %g", step, loss, scale)
            return False
        raise NonFiniteLossError(
            f"loss is {loss} at step {step}"
            + (f" ({self.skipped_in_a_row} steps skipped in a row)" if scale is not None else "")
            + f"; stopping without saving (last good checkpoint: {last_checkpoint}). Lower the "
            "learning rate?"
        )


def _evaluate(trainer, step, chief):
    """Periodic evaluation on the first `eval_images` of the eval split; the chief reports.

    Every worker calls it: each scores its share of the images (eagerly, on its own copy
    of the weights) and the confusion matrices are summed over the workers through the
    strategy, so no worker waits in an all-reduce while the chief evaluates alone.
    """
    info = trainer.info
    workers, worker = _worker_position(trainer.strategy)
    pattern = input_pipeline.split_file_pattern(trainer.cfg.data.data_dir, info.eval_split)
    dataset = input_pipeline.eval_dataset(pattern, num_classes=info.num_classes).take(
        trainer.cfg.eval_images
    ).shard(workers, worker)

    def over_workers(confusion, count):
        packed = np.append(confusion.ravel(), count)
        total = sum_over_workers(trainer.strategy, packed)
        return total[:-1].reshape(confusion.shape), int(total[-1])

    results = evaluator.evaluate_model(
        trainer.model, dataset, num_classes=info.num_classes,
        eval_steps=trainer.task.eval_steps, scales=(trainer.cfg.input_scale,),
        combine=over_workers if workers > 1 else None,
    )
    if not chief:
        return
    writer = tf.summary.create_file_writer(os.path.join(trainer.cfg.model_dir, "eval"))
    with writer.as_default(step=step):
        for t, scores in results["steps"].items():
            tf.summary.scalar(f"miou/t{t}", scores["miou"])
            tf.summary.scalar(f"pixel_accuracy/t{t}", scores["pixel_accuracy"])
    writer.flush()
    logging.info(
        "eval at step %d: %s", step,
        "  ".join(f"t={t} mIoU {s['miou']:.4f}" for t, s in results["steps"].items()),
    )


def _worker_position(strategy):
    """(number of workers, this worker's index), the chief first; (1, 0) on one machine."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not spec:
        return 1, 0
    chiefs = len(spec.get("chief", []))
    # No task type (a single process) counts as the chief, as before.
    index = (0 if resolver.task_type in (None, "chief")
             else chiefs + (resolver.task_id or 0))
    return chiefs + len(spec.get("worker", [])), index


def sum_over_workers(strategy, array):
    """The sum over the workers of each worker's int64 `array` (an all-reduce; all call it).

    Each worker's array enters once: on its first local replica, zeros on the others.
    """
    value = tf.constant(array, tf.int64)
    local_replicas = len(strategy.extended.worker_devices)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context: value if context.replica_id_in_sync_group % local_replicas == 0
        else tf.zeros_like(value)
    )
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
