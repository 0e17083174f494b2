"""Per-group optimizers: each learning-rate group has its own optimizer and poly schedule.

SPEC.md section 5 trains the Base Net (or the whole PSPNet) at one rate and the Bias Net
and Context Net at another; the authors' code gives the Context Net an optimizer of its
own. One optimizer per group (rather than scaling some groups' gradients) equals the
multiplier form for SGD with momentum and also holds for Adam / AdamW. Weight decay (conv
kernels only) is the caffe convention with SGD, `wd / 2 * |w|^2` added to the loss; AdamW
decays at each group's own rate.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf


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


def make_schedule(learning_rate, cfg, max_steps):
    """The poly decay from `learning_rate` to 0 at `max_steps` (`cfg`: `OptimizerConfig`)."""
    return keras.optimizers.schedules.PolynomialDecay(
        learning_rate, max_steps, 0.0, power=cfg.lr_power
    )


def _is_kernel(variable):
    return "kernel" in variable.path


def make_optimizer(schedule, variables, cfg):
    """`cfg.optimizer` on `schedule`; AdamW decays the conv kernels only, like the L2 term."""
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=cfg.momentum)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)
    optimizer.exclude_from_weight_decay(var_list=[v for v in variables if not _is_kernel(v)])
    return optimizer


def make_group_optimizers(groups, cfg, max_steps, initial_loss_scale=None):
    """One built optimizer per group (call under the strategy's scope).

    Args:
      groups: `VariableGroup`s.
      cfg: the `OptimizerConfig`.
      max_steps: where every group's poly schedule reaches 0.
      initial_loss_scale: None, or wrap each in a `LossScaleOptimizer` (mixed_float16)
        whose dynamic scale starts here. They start at the same scale and
        `apply_group_gradients` makes them skip the same steps, so their scales stay equal
        and one of them can scale the loss for all.

    Returns:
      A list of optimizers, `groups`' order; their variables exist before the first step
      (a checkpoint restores into them, and under `tf.distribute` they must be created
      in the strategy's scope, not in the replica step).
    """
    optimizers = []
    for group in groups:
        optimizer = make_optimizer(
            make_schedule(group.learning_rate, cfg, max_steps), group.variables, cfg
        )
        if initial_loss_scale is not None:
            optimizer = keras.optimizers.LossScaleOptimizer(
                optimizer, initial_scale=initial_loss_scale
            )
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


def weight_decay_loss(variables, cfg):
    """`wd / 2 * sum |kernel|^2`, the caffe weight decay, on conv kernels only (SGD)."""
    kernels = [v for v in variables if _is_kernel(v)]
    if not kernels or not cfg.weight_decay or cfg.optimizer != "sgd":
        return tf.constant(0.0)
    return 0.5 * cfg.weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in kernels])


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
