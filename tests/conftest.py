"""Shared test set-up (quiet TensorFlow, CPU only, deterministic ops) and the fixtures.

Plain helpers are in `tests.helpers`.
"""

import os

import pytest

from tests.helpers.nets import varied_tiny_net

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def pytest_configure(config):
    """Splits the CPU into two logical devices in every process that runs tests.

    Two-replica training (`--num_cpu_devices=2`) then runs in process. TensorFlow takes
    logical devices only before its runtime starts, which collecting the test modules may do;
    the trainer's `make_strategy` leaves an equal configuration as it is, and everything else
    runs on /cpu:0 as on one device.
    """
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # the xdist controller runs no test
    import tensorflow as tf  # noqa: PLC0415  (after the environment above is set)

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )


@pytest.fixture(scope="session")
def synthetic_records(tmp_path_factory):
    """Folder of synthetic TFRecords (8 train, 2 val, 48x48), written in this process."""
    # Imported here, after the environment above is set.
    from ciss_tf.data import datasets, raw_readers, writer  # noqa: PLC0415

    out = tmp_path_factory.mktemp("synthetic_records")
    writer.write_splits(
        raw_readers.synthetic_splits(seed=0, num_train=8, num_val=2, height=48, width=48),
        label_map=datasets.get_dataset_info("synthetic").label_map, output_dir=str(out),
    )
    return str(out)


@pytest.fixture(scope="session")
def varied_net():
    """`varied_tiny_net` of the synthetic dataset's classes, built once per worker.

    Shared by the evaluation, segmentation, prediction and serving tests: none may change
    its variables.
    """
    from ciss_tf.data import synthetic  # noqa: PLC0415  (after the environment above)

    return varied_tiny_net(synthetic.NUM_CLASSES)


@pytest.fixture(scope="session")
def varied_checkpoint(varied_net, tmp_path_factory):
    """Checkpoint prefix `.../ckpt-7` of `varied_net` (read-only: write outputs elsewhere)."""
    from ciss_tf.modeling import checkpoints  # noqa: PLC0415

    folder = tmp_path_factory.mktemp("varied_checkpoint")
    return checkpoints.save_model(varied_net, str(folder / "ckpt-7"))
