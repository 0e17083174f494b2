"""Eq. 7 end to end on the tiny model: gradients reach the right nets, reduction is split-safe."""

import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.modeling import config
from ciss_tf.training import losses
from ciss_tf.training.config import LossConfig, RewardConfig

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
# The hand-computed two-step episode's settings.
HAND_LOSS = LossConfig(gamma=0.5, lambda1=0.5, lambda2=0.1)
HAND_REWARD = RewardConfig(beta1=0.4, beta2=0.2, window=1)


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

    def gradients(name, variables):
        """`(variable, gradient of the term)` pairs, from one backward pass."""
        return zip(variables, tape.gradient(terms[name], variables), strict=True)

    for variable, gradient in gradients("total", model.feature_net.variables):
        assert gradient is None, variable.path
    for net in (model.base_net, model.bias_net, model.context_net):
        grads = tape.gradient(terms["total"], net.trainable_variables)
        norm = sum(float(tf.reduce_sum(tf.abs(g))) for g in grads if g is not None)
        assert norm > 0, net.name
    # The policy and value terms train only the Context Net (the p-map it reads is a
    # constant); the segmentation term never reaches it.
    for name in ("policy", "value"):
        predictions = model.base_net.trainable_variables + model.bias_net.trainable_variables
        for variable, gradient in gradients(name, predictions):
            assert gradient is None, (name, variable.path)
    for variable, gradient in gradients("segmentation", model.context_net.trainable_variables):
        assert gradient is None, variable.path


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


def test_segmentation_loss_upsamples_logits_with_aligned_corners_by_hand():
    # Two classes, logits 2x2 -> labels 3x3: aligned corners put the output's corners on
    # the input's corners and the middle row and column halfway, so class 1's logit z
    # upsampled is [[0, 1, 2], [1, 2, 3], [2, 3, 4]] from [[0, 2], [2, 4]] (class 0: 0).
    # Labels: class 1 on the first row, ignored in the centre, class 0 elsewhere.
    logits = np.zeros([1, 2, 2, 2], np.float32)
    logits[0, :, :, 1] = [[0, 2], [2, 4]]
    labels = np.array([[[1, 1, 1], [0, 255, 0], [0, 0, 0]]])
    z = np.array([[0, 1, 2], [1, 2, 3], [2, 3, 4]], np.float64)
    log_p1 = -np.log1p(np.exp(-z))  # log softmax of class 1 against a 0 logit
    log_p0 = -np.log1p(np.exp(z))
    expected = -np.mean([log_p1[0, 0], log_p1[0, 1], log_p1[0, 2], log_p0[1, 0],
                         log_p0[1, 2], log_p0[2, 0], log_p0[2, 1], log_p0[2, 2]])
    got = losses.segmentation_loss(tf.constant(logits), tf.constant(labels))
    np.testing.assert_allclose(got.numpy(), [expected], rtol=1e-5)


def test_ablation_modes_train_only_the_segmentation_term():
    keras.utils.set_random_seed(0)
    model = config.build_ciss_net(NUM_CLASSES, "tiny", "pmap", dropout=0.0)
    images = tf.random.stateless_normal([1, 32, 32, 3], seed=[1, 2])
    labels = tf.zeros([1, 32, 32], tf.int32)
    terms = losses.ciss_loss(model(images, training=True, num_steps=2), labels,
                             global_batch_size=1, loss=LossConfig(lambda1=2.0))
    np.testing.assert_allclose(float(terms["total"]), 2.0 * float(terms["segmentation"]))
    assert float(terms["kept_fraction"]) == 1.0
    assert "policy" not in terms


def test_two_step_episode_hand_computed():
    outputs, labels, expected = _two_step_episode()
    terms = losses.ciss_loss(outputs, labels, global_batch_size=1, loss=HAND_LOSS,
                             reward=HAND_REWARD)
    for name, value in expected.items():
        np.testing.assert_allclose(float(terms[name]), value, rtol=1e-5, err_msg=name)


def test_sum_reduction_is_the_originals_sums_over_a_gpus_two_images():
    # The same episode for both images of one GPU of the authors' code: each loss term
    # summed over steps, pixels (two here) and the two images; the GPUs' gradients are
    # averaged, so a global batch of 4 (two GPUs) halves it. The statistics stay means.
    outputs, labels, means = _two_step_episode()
    twice = {k: tf.concat([v, v], axis=0 if k == "bootstrap_value" else 1)
             for k, v in outputs.items()}
    labels = tf.concat([labels, labels], 0)
    options = dict(loss=dataclasses.replace(HAND_LOSS, reduction="sum"), reward=HAND_REWARD)
    sums = {name: 2 * 2 * means[name] for name in ("policy", "value", "entropy",
                                                   "segmentation")}
    original = sums["value"] + sums["policy"] + 0.5 * sums["segmentation"] + 0.1 * sums["entropy"]
    for global_batch, gpus in ((2, 1), (4, 2)):
        terms = losses.ciss_loss(twice, labels, global_batch_size=global_batch, **options)
        np.testing.assert_allclose(float(terms["total"]), original / gpus, rtol=1e-5)
        for name, value in sums.items():
            np.testing.assert_allclose(float(terms[name]), value / gpus, rtol=1e-5)
    for name in ("reward", "return", "value_estimate", "kept_fraction"):
        np.testing.assert_allclose(float(terms[name]), means[name] / 2, rtol=1e-5)
    mean_terms = losses.ciss_loss(twice, labels, global_batch_size=2, loss=HAND_LOSS,
                                  reward=HAND_REWARD)
    np.testing.assert_allclose(float(terms["policy_entropy"]),
                               float(mean_terms["policy_entropy"]) / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        losses.loss_scale(2, "median")


def _two_step_episode():
    """Eq. 4-7 on a two-step episode of one image with two pixels, a and b.

    Classes 0 and 1; labels a = 0, b = 1. Each step's predictions, the context maps K_t,
    actions, values and the bootstrap value are chosen so that pairing any of them with a
    neighbouring step changes the loss: r_t must compare p-maps t and t + 1 and reward K_t;
    R_1 must bootstrap from V_2, not V_1.
    """
    ln = math.log
    logits = tf.constant([
        [[[2.0, 0.0], [1.0, 0.0]]],  # t = 0: a -> 0 (right), b -> 0 (wrong)
        [[[0.0, 1.0], [0.0, 2.0]]],  # t = 1: a -> 1 (wrong), b -> 1 (right)
        [[[1.0, 0.0], [0.0, 1.0]]],  # t = 2: a -> 0 (right), b -> 1 (right)
    ])[:, None]  # [T + 1 = 3, B = 1, h = 1, w = 2, Nc = 2]
    labels = tf.constant([[[0, 1]]])
    outputs = {
        "logits": logits,
        # K_0 keeps a's p-map (class 0 -> 1); K_1 keeps b's (class 1 -> 2).
        "context": tf.constant([[[[1, 0]]], [[[0, 2]]]]),
        "actions": tf.constant([[[[1, 0]]], [[[0, 1]]]]),
        # Softmax [1/4, 3/4] from [0, ln 3], [1/2, 1/2] from [0, 0], [3/4, 1/4] from [ln 3, 0].
        "policy_logits": tf.constant([
            [[[[0.0, ln(3)], [0.0, 0.0]]]],
            [[[[ln(3), 0.0], [0.0, ln(3)]]]],
        ]),
        "values": tf.constant([[[[0.1, 0.2]]], [[[0.3, -0.4]]]]),  # V_0, V_1
        "bootstrap_value": tf.constant([[[1.0, 2.0]]]),  # V_2
    }
    # Rewards (Eq. 4, window 1: M of the pixel itself):
    #   r_0 a: right -> wrong M = -1, K_0 = 1 = label + 1: + 0.4      -> -0.6
    #   r_0 b: wrong -> right M = +1, K_0 = 0 (uncertain): + 0.2      ->  1.2
    #   r_1 a: wrong -> right M = +1, K_1 = 0: + 0.2                  ->  1.2
    #   r_1 b: right -> right M = 0.5, K_1 = 2 = label + 1: + 0.4     ->  0.9
    # Returns (Eq. 5, gamma 0.5): R_1 = r_1 + 0.5 V_2 = (1.2 + 0.5, 0.9 + 1.0) = (1.7, 1.9)
    #                             R_0 = r_0 + 0.5 R_1 = (-0.6 + 0.85, 1.2 + 0.95) = (0.25, 2.15)
    # Advantages R - V: t = 0 (0.15, 1.95); t = 1 (1.4, 2.3).
    # Log-probabilities of the actions taken: t = 0 a: ln 3/4 (keep), b: ln 1/2 (ignore);
    #                                         t = 1 a: ln 3/4 (ignore), b: ln 3/4 (keep).
    # Each term: mean over the two pixels per step, summed over the steps.
    policy = (-ln(0.75) * 0.15 - ln(0.5) * 1.95) / 2 + (-ln(0.75) * 1.4 - ln(0.75) * 2.3) / 2
    value = (0.15**2 + 1.95**2) / 2 + (1.4**2 + 2.3**2) / 2
    e_quarter = 0.25 * ln(0.25) + 0.75 * ln(0.75)  # sum p log p of [1/4, 3/4] and [3/4, 1/4]
    e_half = ln(0.5)
    entropy = (e_quarter + e_half) / 2 + (e_quarter + e_quarter) / 2
    # Cross-entropy ln(sum exp) - logit of the label, per step (a, b):
    e = math.e
    segmentation_t = [
        ((ln(e**2 + 1) - 2) + ln(e + 1)) / 2,
        (ln(1 + e) + (ln(1 + e**2) - 2)) / 2,
        ((ln(e + 1) - 1) + (ln(1 + e) - 1)) / 2,
    ]
    expected = {
        "policy": policy, "value": value, "entropy": entropy,
        "segmentation": sum(segmentation_t),
        **{f"segmentation_t{t}": v for t, v in enumerate(segmentation_t)},
        "total": policy + value + 0.5 * sum(segmentation_t) + 0.1 * entropy,
        # Statistics: per-step means, averaged over the T = 2 steps.
        "reward": ((-0.6 + 1.2) / 2 + (1.2 + 0.9) / 2) / 2,
        "return": ((0.25 + 2.15) / 2 + (1.7 + 1.9) / 2) / 2,
        "value_estimate": ((0.1 + 0.2) / 2 + (0.3 - 0.4) / 2) / 2,
        "kept_fraction": (1 / 2 + 1 / 2) / 2,
    }
    return outputs, labels, expected
