"""Eq. 7 end to end on the tiny model: gradients reach the right nets, reduction is split-safe."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf import config, losses

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def setup():
    keras.utils.set_random_seed(0)
    model = config.build_ciss_net(NUM_CLASSES, "tiny", dropout=0.0)
    images = tf.random.stateless_normal([2, 48, 48, 3], seed=[1, 2])
    labels = tf.random.stateless_uniform([2, 48, 48], [3, 4], 0, NUM_CLASSES, tf.int32)
    labels = tf.tensor_scatter_nd_update(labels, [[0, 0, 0], [1, 5, 5]], [255, 255])
    model(images, num_steps=1)
    return model, images, labels


def _loss(model, images, labels, global_batch, ids, training=True):
    outputs = model(
        images, training=training, num_steps=2, sample=True, bootstrap=True, sample_ids=ids,
        seed=5,
    )
    return losses.ciss_loss(outputs, labels, global_batch_size=global_batch)


def test_gradients_reach_the_three_nets_and_not_the_feature_net(setup):
    model, images, labels = setup
    ids = tf.constant([0, 1], tf.int64)
    with tf.GradientTape(persistent=True) as tape:
        terms = _loss(model, images, labels, 2, ids)
    assert all(np.isfinite(float(v)) for v in terms.values())
    assert not model.feature_net.trainable_variables  # frozen: nothing to update
    for variable in model.feature_net.variables:
        assert tape.gradient(terms["total"], variable) is None
    for net in (model.base_net, model.bias_net, model.context_net):
        grads = tape.gradient(terms["total"], net.trainable_variables)
        norm = sum(float(tf.reduce_sum(tf.abs(g))) for g in grads if g is not None)
        assert norm > 0, net.name
    # The policy and value terms train only the Context Net (the p-map it reads is a
    # constant); the segmentation term never reaches it.
    for name in ("policy", "value"):
        for variable in model.base_net.trainable_variables + model.bias_net.trainable_variables:
            assert tape.gradient(terms[name], variable) is None, (name, variable.path)
    for variable in model.context_net.trainable_variables:
        assert tape.gradient(terms["segmentation"], variable) is None


def test_reduction_is_the_same_for_any_split_of_the_global_batch(setup):
    model, images, labels = setup
    # Inference mode: dropout masks (and, with --context_encoder_norm=batch, the p-map
    # encoder's batch statistics) would otherwise depend on the split.
    ids = tf.constant([7, 8], tf.int64)
    whole = _loss(model, images, labels, 2, ids, training=False)
    halves = [
        _loss(model, images[i:i + 1], labels[i:i + 1], 2, ids[i:i + 1], training=False)
        for i in (0, 1)
    ]
    for name in ("total", "policy", "value", "entropy", "segmentation", "reward"):
        np.testing.assert_allclose(
            # atol: the policy term is a small sum of terms of both signs near 1, so its
            # float32 rounding is absolute (~1e-7), not relative to the sum.
            float(whole[name]), float(halves[0][name]) + float(halves[1][name]), rtol=1e-5,
            atol=2e-7, err_msg=name,
        )


def test_segmentation_loss_hand_computed():
    logits = tf.zeros([1, 2, 2, 4])  # uniform: log(4) per pixel
    labels = tf.constant([[[0, 1, 255, 3]]], tf.int32)  # 1 x 1 x 4 labels, one ignored
    loss = losses.segmentation_loss(logits, tf.reshape(labels, [1, 2, 2]))
    np.testing.assert_allclose(loss.numpy(), [np.log(4.0)], rtol=1e-6)
    logits = tf.constant([[[[2.0, 0.0]]]])
    loss = losses.segmentation_loss(logits, tf.constant([[[1]]]))
    np.testing.assert_allclose(loss.numpy(), [np.log(1 + np.exp(2.0))], rtol=1e-6)


def test_ablation_modes_train_only_the_segmentation_term():
    keras.utils.set_random_seed(0)
    model = config.build_ciss_net(NUM_CLASSES, "tiny", "pmap", dropout=0.0)
    images = tf.random.stateless_normal([1, 32, 32, 3], seed=[1, 2])
    labels = tf.zeros([1, 32, 32], tf.int32)
    terms = losses.ciss_loss(model(images, training=True, num_steps=2), labels,
                             global_batch_size=1, lambda1=2.0)
    np.testing.assert_allclose(float(terms["total"]), 2.0 * float(terms["segmentation"]))
    assert float(terms["kept_fraction"]) == 1.0
    assert "policy" not in terms
