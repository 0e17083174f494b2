"""Stage 1 (PSPNet, synchronized batch norm) on 2 logical CPUs equals it on 1 device.

Synchronized batch norm normalises each replica's images with the global batch's
statistics, so the same global batch gives the same weights and moving statistics however
it is split. In float32 three steps move the moving averages three times; in bfloat16 and
float16 the backbone's rounding compounds through every layer, so there the 2-replica step
must land as close to the float32 step as the 1-device step does.
"""

import keras
import numpy as np
import pytest

from tests.helpers.training_runs import train, weights
from tests.test_trainer_switches import LOW_SCALE, assert_same_update, initial_weights

STAGE1 = ["--stage=pspnet", "--dropout=0", "--deterministic"]


def _train_both(records, folder, *args):
    try:
        train(records, folder / "one", *STAGE1, *args)
        train(records, folder / "two", *STAGE1, *args, "--num_cpu_devices=2")
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_stage1_on_two_replicas_equals_one_device(synthetic_records, tmp_path):
    _train_both(synthetic_records, tmp_path, "--max_steps=3", "--checkpoint_every=3")
    one, two = weights(tmp_path / "one", 3), weights(tmp_path / "two", 3)
    assert_same_update(one, two, initial_weights("pspnet"), rtol=1e-5)
    # The moving statistics are the global batch's (relative: the first convs see images
    # of scale 50, their variances are large).
    moving = [name for name in one if "moving_" in name]
    assert len(moving) > 20
    for name in moving:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def float32_step(synthetic_records, tmp_path_factory):
    """The weights after one float32 step on 1 device (the reference of the low precisions)."""
    folder = tmp_path_factory.mktemp("float32")
    train(synthetic_records, folder, *STAGE1, "--max_steps=1")
    return weights(folder, 1)


@pytest.mark.parametrize("precision", [
    ["--mixed_precision=mixed_bfloat16"], ["--mixed_precision=mixed_float16", LOW_SCALE],
], ids=["bfloat16", "float16"])
def test_low_precision_stage1_on_two_replicas_is_as_close_to_float32(
        synthetic_records, tmp_path, float32_step, precision):
    """Splitting the batch adds no error beyond the compute dtype's own.

    Per variable, the 2-replica step is within twice the 1-device step's distance from the
    float32 step, plus 1e-4 (a tenth of an update): a replica's update counted twice or not
    at all lands a whole update (about 1e-3) away. The slack: Keras computes batch
    statistics in float32 and casts them back to float16; the two runs' float32 sums
    differ in their last bits, and a channel whose statistic sits at a float16 rounding
    boundary rounds one ulp apart. On one machine that put a batch-norm gamma at 1.3e-4
    from float32 on 2 replicas against 5.7e-5 on 1 device (2.2x; 1.6e-5 beyond the
    factor); on another it did not happen.
    """
    _train_both(synthetic_records, tmp_path, "--max_steps=1", *precision)
    one, two = weights(tmp_path / "one", 1), weights(tmp_path / "two", 1)
    initial = initial_weights("pspnet")
    checked = 0
    for name, reference in float32_step.items():
        if reference.dtype.kind != "f" or "moving_" in name:
            continue
        own_error = np.abs(one[name] - reference).max()
        if np.abs(reference - initial[name]).max() == 0:
            continue
        checked += 1
        assert np.abs(two[name] - reference).max() <= 2 * own_error + 1e-4, name
    assert checked > 20
