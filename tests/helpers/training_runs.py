"""Tiny training runs in this process, and what the tests read back from them.

Shared by the training tests. A run is the `TrainConfig` of `python -m ciss_tf.train TINY
--data_dir=... --model_dir=... <args>` (`train.parse_config`), trained by
`training.trainer.train`: one TensorFlow start-up for a whole test file. The two-replica runs
(`--num_cpu_devices=2`) use the two logical CPUs conftest configures.
"""

import contextlib
import glob
import os

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # no public disable_op_determinism

from ciss_tf import train as train_command
from ciss_tf.training import trainer

# Stage 2 on the tiny preset at the synthetic records' own size (48 x 48, conftest).
TINY = [
    "--stage=ciss", "--preset=tiny", "--dataset=synthetic", "--crop_size=48,48",
    "--batch_size=4", "--unroll_steps=2", "--log_every=1", "--image_summary_every=0",
    "--base_learning_rate=0.01", "--context_learning_rate=0.001", "--seed=3",
]


def config(data_dir, model_dir, *args):
    """The `TrainConfig` of `python -m ciss_tf.train TINY <data and model dir> args`."""
    return train_command.parse_config(
        [*TINY, f"--data_dir={data_dir}", f"--model_dir={model_dir}", *map(str, args)]
    )


@contextlib.contextmanager
def no_graph_optimizer():
    """Grappler off: a test runs each graph for a step or a few, its rewrites cost more."""
    saved = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": saved})


def new_collective_keys():
    """Makes the next `MirroredStrategy` of this process number its collectives afresh.

    Every `MirroredStrategy` starts from the same collective group and instance keys: a
    second one in the process, reducing tensors of other shapes, meets the first one's
    instances ("Shape mismatch in the collective instance 100"). TensorFlow's own tests give
    each strategy its own key range through this class attribute.
    """
    tf.distribute.MirroredStrategy._collective_key_base += 1000


def run(cfg):
    """`trainer.train(cfg)` without Grappler; returns the last step's terms.

    `cfg.deterministic` switches op determinism on for the whole process: it is switched off
    again afterwards, so the tests that run next in this process see TensorFlow as it was.
    """
    new_collective_keys()
    was_deterministic = tf_config.is_op_determinism_enabled()
    try:
        with no_graph_optimizer():
            return trainer.train(cfg)
    finally:
        if not was_deterministic:
            tf_config.disable_op_determinism()


def train(data_dir, model_dir, *args):
    """Trains `config(data_dir, model_dir, *args)` here; returns the last step's terms."""
    return run(config(data_dir, model_dir, *args))


def weights(model_dir, step):
    """The model's variables in `model_dir/ckpt-<step>` (no optimizer slots), by name."""
    reader = tf.train.load_checkpoint(os.path.join(model_dir, f"ckpt-{step}"))
    names = [
        name for name in reader.get_variable_to_shape_map()
        if name.startswith("model/") and "OPTIMIZER_SLOT" not in name
    ]
    return {name: reader.get_tensor(name) for name in names}


def assert_same_weights(a, b, atol):
    """Same variable names; every float variable equal to `atol`."""
    assert a.keys() == b.keys()
    for name in a:
        if a[name].dtype.kind == "f":
            np.testing.assert_allclose(a[name], b[name], atol=atol, rtol=0, err_msg=name)


def scalars(model_dir, folder="train"):
    """`{(tag, step): value}` of the TensorBoard events in `model_dir/<folder>`."""
    values = {}
    for path in glob.glob(os.path.join(model_dir, folder, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values[value.tag, event.step] = tf.make_ndarray(value.tensor)
    return values
