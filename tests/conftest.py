"""Shared test set-up: quiet TensorFlow, CPU only, deterministic ops."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ROOT = Path(__file__).resolve().parents[1]
# What a command run by a test sees: the same quiet, CPU-only TensorFlow as the tests.
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


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


def run_cli(module, *args, check=True, env=None, timeout=600):
    """Runs `python -m module args` from the repository root; returns the CompletedProcess.

    With `check`, a non-zero exit fails the test with the command's stderr tail. Keep it for
    what needs a process boundary: the error-line contract, `--help`, multi-worker runs.
    """
    result = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env or ENV,
        capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode:
        raise AssertionError(f"{module} failed:\n{result.stderr[-4000:]}")
    return result


def varied_tiny_net(num_classes):
    """A random tiny CiSS-Net whose predictions vary over the image at every step.

    Untrained, one class wins almost everywhere. Centring the Base Net's logits and the
    policy on a probe image and shrinking the Bias Net's output spreads the classes and keeps
    about half of the pixels as context.
    """
    import keras  # noqa: PLC0415  (after the environment above is set)
    import tensorflow as tf  # noqa: PLC0415

    from ciss_tf.modeling import config  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    net = config.build_ciss_net(num_classes, "tiny")
    probe = tf.random.stateless_normal([1, 37, 53, 3], seed=[0, 1], stddev=60.0)
    net(probe, num_steps=1)
    net.bias_net.classifier.kernel.assign(net.bias_net.classifier.kernel * 0.1)
    for bias, output in ((net.base_net.classifier.bias, "logits"),
                         (net.context_net.policy_head.bias, "policy_logits")):
        mean = tf.reduce_mean(net(probe, num_steps=1)[output][0], axis=[0, 1, 2])
        bias.assign(bias - mean)
    return net


def cli_error_line(result):
    """The `error: ...` line of a failed CLI run (a CompletedProcess or (code, out, err))."""
    if isinstance(result, subprocess.CompletedProcess):
        result = (result.returncode, result.stdout, result.stderr)
    returncode, _, stderr = result
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode != 0
    assert "Traceback" not in stderr
    assert lines[-1].startswith("error: "), stderr
    return lines[-1]


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
