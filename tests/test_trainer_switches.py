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
from training_runs import train, weights

from ciss_tf.modeling import checkpoints, config

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
        np.testing.assert_allclose(two[name], value, rtol=0, atol=rtol * update + atol,
                                   err_msg=name)
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
    (["--jit_compile"], 1e-5),
    (["--jit_compile", "--mixed_precision=mixed_float16", LOW_SCALE], 0.01),
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
