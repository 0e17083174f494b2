"""The norms (`make_norm`) and batch-norm folding (`fold_batch_norm`) of `modeling.layers`."""

import keras
import numpy as np
import tensorflow as tf

from ciss_tf.modeling.layers import fold_batch_norm, make_norm
from tests.helpers.training_runs import new_collective_keys


def test_fold_batch_norm_hand_values_and_keras_equivalence():
    kernel, bias = fold_batch_norm(
        np.full([1, 1, 1, 1], 2.0), gamma=[3.0], beta=[1.0], mean=[0.5], variance=[4.0],
        epsilon=0.0,
    )
    # s = 3 / sqrt(4) = 1.5: kernel 2 * 1.5 = 3, bias 1 - 0.5 * 1.5 = 0.25.
    np.testing.assert_allclose(kernel.ravel(), [3.0])
    np.testing.assert_allclose(bias, [0.25])

    conv = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)
    norm = keras.layers.BatchNormalization(epsilon=1e-5)
    x = tf.random.stateless_normal([2, 7, 7, 4], seed=[1, 2])
    norm(conv(x))
    rng = np.random.default_rng(1)
    norm.moving_mean.assign(rng.normal(size=6))
    norm.moving_variance.assign(rng.uniform(0.1, 3.0, 6))
    norm.gamma.assign(rng.normal(size=6))
    norm.beta.assign(rng.normal(size=6))
    kernel, bias = fold_batch_norm(
        conv.kernel.numpy(), norm.gamma.numpy(), norm.beta.numpy(), norm.moving_mean.numpy(),
        norm.moving_variance.numpy(), norm.epsilon,
    )
    folded = tf.nn.conv2d(x, kernel.astype(np.float32), 1, "SAME") + bias.astype(np.float32)
    np.testing.assert_allclose(folded, norm(conv(x), training=False), rtol=1e-5, atol=1e-5)


def test_per_replica_batch_norm_uses_each_replicas_statistics_by_hand():
    # Two replicas, two images each, one channel: replica 0 sees 0 and 2, replica 1 sees
    # 10 and 14. Per replica (the original): means 1 and 12, variances 1 and 4, so each
    # normalises to -1, +1. Synchronized: mean 6.5 and variance 32.75 over all four.
    new_collective_keys()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        layers = {kind: make_norm(kind, 1, kind) for kind in ("batch_per_replica", "batch")}
        for layer in layers.values():
            layer.build((None, 1, 1, 1))
    assert layers["batch_per_replica"].momentum == 0.95 and layers["batch"].momentum == 0.9
    inputs = strategy.experimental_distribute_values_from_function(
        lambda context: tf.reshape(tf.constant(
            [[0.0, 2.0], [10.0, 14.0]][context.replica_id_in_sync_group]), [2, 1, 1, 1]))

    @tf.function
    def normalise(x):
        return {kind: layer(x, training=True) for kind, layer in layers.items()}

    outputs = strategy.run(normalise, args=(inputs,))
    local = strategy.experimental_local_results
    per_replica = np.concatenate([v.numpy().ravel() for v in local(outputs["batch_per_replica"])])
    synced = np.concatenate([v.numpy().ravel() for v in local(outputs["batch"])])
    eps = 1e-5
    np.testing.assert_allclose(per_replica, [-1 / np.sqrt(1 + eps), 1 / np.sqrt(1 + eps),
                                             -2 / np.sqrt(4 + eps), 2 / np.sqrt(4 + eps)],
                               rtol=1e-5)
    np.testing.assert_allclose(synced, (np.array([0, 2, 10, 14]) - 6.5) / np.sqrt(32.75 + eps),
                               rtol=1e-5)
