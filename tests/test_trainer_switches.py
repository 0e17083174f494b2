"""Stage 2's GPU switches across replicas: one step on 2 logical CPUs equals it on 1 device.

`--mixed_precision` (bfloat16, float16 with loss scaling) and `--jit_compile`, each trained
on 1 device and on 2 logical CPU devices with the same global batch. Float32 is in
`test_trainer.py`; stage 1 in `test_trainer_stage1.py`. The combinations TensorFlow cannot
compile are refused at start-up (`trainer._refuse_what_xla_cannot_compile`).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.data import datasets
from ciss_tf.modeling import checkpoints, config
from ciss_tf.training import tasks, trainer
from tests.helpers import training_runs
from tests.helpers.training_runs import train, weights

ONE_STEP = ["--max_steps=1", "--dropout=0", "--deterministic"]
# Low enough that no float16 gradient of the tiny net overflows on 1 device or on 2: the
# default 2^15 overflows on both (tested below), so both would skip the step.
LOW_SCALE = "--initial_loss_scale=64"


def initial_weights(stage):
    """The variables the trainer starts from (seed 3 of `training_runs.TINY`), by name."""
    keras.utils.set_random_seed(3)
    if stage == "ciss":
        model = config.build_ciss_net(8, "tiny", "learned", 0.0)
        model(tf.zeros([1, 48, 48, 3]), num_steps=2)
    else:
        model = config.build_pspnet(8, "tiny", 0.0)
        model(tf.zeros([1, 48, 48, 3]))
    return {checkpoints.stored_name(key): v.numpy()
            for key, v in checkpoints.model_variables(model).items()}


def assert_same_update(one, two, initial, rtol, atol=1e-7):
    """Every trained variable moved by the same update on 1 and on 2 devices.

    `rtol` is relative to the variable's largest move on 1 device: the rounding of the
    compute dtype (bfloat16 keeps 8 significant bits, float16 11) in sums over a batch
    split differently. Measured on a 2-core AMD EPYC: bfloat16 2.6% of the largest move,
    float16 0.7%, XLA in float32 below 1e-5; the tolerances are twice that or more. A
    replica's update counted twice or not at all moves a variable by tens of percent.
    """
    moved = 0
    for name, value in one.items():
        if value.dtype.kind != "f" or "moving_" in name:
            continue
        update = np.abs(value - initial[name]).max()
        moved += update > 0
        # Plus two float32 ulps of the variable (a gamma of 1 moved by 1e-5).
        ulps = 2 * np.spacing(np.abs(value).max())
        np.testing.assert_allclose(two[name], value, rtol=0,
                                   atol=rtol * update + ulps + atol, err_msg=name)
    assert moved > 10


def optimizer_iterations(model_dir, step):
    """`{checkpoint key: value}` of the optimizers' applied-step counters and loss scales."""
    reader = tf.train.load_checkpoint(str(model_dir / f"ckpt-{step}"))
    return {
        key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
        if key.startswith("optimizer") and ("iterations" in key or "dynamic_scale" in key)
    }


@pytest.mark.parametrize("switches, rtol", [
    (["--mixed_precision=mixed_bfloat16"], 0.05),
    (["--mixed_precision=mixed_float16", LOW_SCALE], 0.01),
    # XLA compiles for minutes on 2 logical CPUs: kept out of CI (`bash test.sh -m slow`).
    pytest.param(["--jit_compile"], 1e-5, marks=pytest.mark.slow),
    pytest.param(["--jit_compile", "--mixed_precision=mixed_float16", LOW_SCALE], 0.01,
                 marks=pytest.mark.slow),
], ids=["bfloat16", "float16", "xla", "xla-float16"])
def test_one_step_on_two_replicas_equals_one_device(synthetic_records, tmp_path, switches,
                                                    rtol):
    try:
        train(synthetic_records, tmp_path / "one", *ONE_STEP, *switches)
        train(synthetic_records, tmp_path / "two", *ONE_STEP, *switches, "--num_cpu_devices=2")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert_same_update(weights(tmp_path / "one", 1), weights(tmp_path / "two", 1),
                       initial_weights("ciss"), rtol)
    # Both applied the step (`assert_same_update` saw the weights move on each) and agree
    # on the optimizers' counters and the loss scale.
    assert optimizer_iterations(tmp_path / "two", 1) == optimizer_iterations(tmp_path / "one", 1)


def test_float16_overflow_on_one_replica_skips_the_update_on_every_replica(synthetic_records,
                                                                          tmp_path):
    """An inf in one replica's images: no replica updates, every loss scale halves."""
    cfg = training_runs.config(synthetic_records, tmp_path, "--mixed_precision=mixed_float16",
                               "--dropout=0", "--num_cpu_devices=2")
    keras.mixed_precision.set_global_policy("mixed_float16")
    training_runs.new_collective_keys()
    try:
        strategy = trainer.make_strategy("default", 2)
        runner = trainer.Trainer(strategy, tasks.make_task(cfg, datasets.get_dataset_info(
            "synthetic")))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    images = tf.random.stateless_normal([4, 48, 48, 3], seed=[5, 5]) * 50.0
    batch = {"label": tf.zeros([4, 48, 48], tf.int32), "sample_id": tf.range(4, dtype=tf.int64)}

    def step(images):
        dataset = tf.data.Dataset.from_tensors({**batch, "image": images}).repeat()
        values = runner.train_step(iter(strategy.experimental_distribute_dataset(dataset)))
        return dict(zip(runner.term_names, values.numpy().tolist(), strict=True))

    before = [v.numpy() for v in runner.variables]
    scales = [float(o.dynamic_scale.numpy()) for o in runner.optimizers]
    # Image 3, in the second replica's half of the global batch, overflows float16 (max
    # 65504) in the first conv. (A single inf pixel can vanish: max pooling drops NaN.)
    poisoned = tf.concat([images[:3], images[3:] * 1e4], axis=0)
    terms = step(poisoned)
    assert not np.isfinite(terms["total"])
    for variable, value in zip(runner.variables, before, strict=True):
        for replica_value in strategy.experimental_local_results(variable):
            np.testing.assert_array_equal(replica_value.numpy(), value, err_msg=variable.path)
    assert [float(o.dynamic_scale.numpy()) for o in runner.optimizers] == [
        s / 2 for s in scales]
    assert len(runner.optimizers) == 2  # the Base Net's group and the context group
    # The same batch without the inf trains (the loss scale is low enough now or later).
    for _ in range(3):
        if np.isfinite(step(images)["total"]) and any(
                not np.array_equal(v.numpy(), b) for v, b in zip(runner.variables, before,
                                                                strict=True)):
            break
    else:
        pytest.fail("the finite batch never updated the weights")


def test_a_run_of_skipped_steps_stops_training_but_one_does_not():
    class Scaled:
        def loss_scale(self):
            return 8.0

    guard = trainer._NonFiniteGuard(Scaled())  # noqa: SLF001
    for step in range(trainer._NonFiniteGuard.MAX_SKIPPED_STEPS):  # noqa: SLF001
        assert guard.check(step, float("inf"), "ckpt-0") is False
    assert guard.check(99, 1.0, "ckpt-0") is True  # a finite step resets the count
    for step in range(trainer._NonFiniteGuard.MAX_SKIPPED_STEPS):  # noqa: SLF001
        guard.check(step, float("nan"), "ckpt-0")
    with pytest.raises(trainer.NonFiniteLossError, match="20 steps skipped in a row"):
        guard.check(100, float("nan"), "ckpt-0")

    class Unscaled:
        def loss_scale(self):
            return None

    with pytest.raises(trainer.NonFiniteLossError, match="loss is nan at step 3; stopping"):
        trainer._NonFiniteGuard(Unscaled()).check(3, float("nan"), "ckpt-0")  # noqa: SLF001


@pytest.mark.parametrize("args, message", [
    (["--stage=pspnet", "--jit_compile", "--num_cpu_devices=2"],
     "--jit_compile with 2 replicas cannot compile the synchronized batch norm of "
     "--stage=pspnet"),
    (["--context_encoder_norm=batch", "--jit_compile", "--num_cpu_devices=2"],
     "--jit_compile with 2 replicas cannot compile the synchronized batch norm of "
     "--context_encoder_norm=batch"),
    (["--stage=pspnet", "--jit_compile", "--deterministic"],
     "--jit_compile with --deterministic: stage 1's max-pool gradient"),
], ids=["stage1-replicas", "batch-norm-replicas", "stage1-deterministic"])
def test_what_xla_cannot_compile_is_refused_before_anything_is_written(
        synthetic_records, tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        train(synthetic_records, tmp_path / "run", "--max_steps=1", *args)
    assert not (tmp_path / "run").exists()
