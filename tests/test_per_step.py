"""`--backprop=per_step` gives the gradient of one tape over the episode.

The per-step pass records the episode without a tape, then recomputes and differentiates
each step on its own (`training/per_step.py`). Here both passes run on the same net, batch
and state, with dropout on and batch norm in the Context Net, in every context mode and for
T = 0, 1, 2 and 4; then through the trainer on two replicas, and resumed.
"""

import dataclasses
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.modeling import config
from ciss_tf.training import losses, per_step
from ciss_tf.training.config import LossConfig, RewardConfig
from tests.helpers.cli import ROOT
from tests.helpers.training_runs import assert_same_weights, train, weights

NUM_CLASSES = 5
# The original's reward on unlabelled pixels, so that per_step must pass it on too.
REWARD = RewardConfig(beta1=0.4, beta2=0.2, window=3, unlabelled_reward="original")
LOSS = LossConfig(gamma=0.8, lambda1=1.5, lambda2=0.1)
GLOBAL_BATCH = 4


def _net(context_mode, dropout=0.3, norm="batch"):
    keras.utils.set_random_seed(0)
    net = config.build_ciss_net(
        NUM_CLASSES, "tiny", context_mode, dropout=dropout, context_encoder_norm=norm,
        random_keep_rate=0.6 if context_mode == "random" else None,
    )
    net(tf.zeros([1, 40, 40, 3]), num_steps=1)
    # Spread the untrained net's classes and actions over the image (as `varied_tiny_net`
    # of tests.helpers.nets), so that rewards, returns and context maps vary per pixel.
    net.bias_net.classifier.kernel.assign(net.bias_net.classifier.kernel * 0.1)
    return net


def _batch():
    images = tf.random.stateless_normal([2, 40, 40, 3], seed=[4, 2], stddev=60.0)
    labels = tf.random.stateless_uniform([2, 40, 40], seed=[4, 3], maxval=NUM_CLASSES,
                                         dtype=tf.int32)
    labels = tf.where(labels == 0, 255, labels)  # some ignored pixels
    return {"image": images, "label": labels, "sample_id": tf.constant([7, 12], tf.int64)}


def _episode(net, batch, num_steps, scale_loss=tf.identity, reduction="mean"):
    """The reference: one tape over `CissNet.call` and `losses.ciss_loss`."""
    with tf.GradientTape() as tape:
        outputs = net(batch["image"], training=True, num_steps=num_steps,
                      sample_ids=batch["sample_id"], seed=5)
        terms = losses.ciss_loss(
            outputs, batch["label"], global_batch_size=GLOBAL_BATCH,
            loss=dataclasses.replace(LOSS, reduction=reduction), reward=REWARD,
        )
        loss = scale_loss(terms["total"])
    return terms, tape.gradient(loss, net.trainable_variables)


def _per_step(net, batch, num_steps, scale_loss=tf.identity, reduction="mean"):
    return per_step.gradients(
        net, batch, net.trainable_variables, global_batch_size=GLOBAL_BATCH,
        num_steps=num_steps, seed=5, loss=dataclasses.replace(LOSS, reduction=reduction),
        reward=REWARD, ignore_label=255, scale_loss=scale_loss,
    )


def _run_both(net, batch, num_steps, per_step_fn=_per_step):
    """Both passes from the same variables and state; each one's terms, grads, end state."""
    start = [v.numpy() for v in net.variables]
    results = []
    for fn in (_episode, per_step_fn):
        for variable, value in zip(net.variables, start, strict=True):
            variable.assign(value)
        terms, grads = fn(net, batch, num_steps)
        results.append((terms, grads, [v.numpy() for v in net.non_trainable_variables]))
    return results


def _assert_close_gradient(got, expected, name):
    """Equal up to float32 rounding of sums taken in another order.

    Relative to the variable's largest entry (2e-5: a few float32 ulps of sums over some
    hundred pixels), plus 1e-7 absolute for entries whose per-pixel contributions cancel
    (a policy bias's two entries are opposite sums).
    """
    scale = float(tf.reduce_max(tf.abs(expected)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0,
                               atol=2e-5 * scale + 1e-7, err_msg=name)


@pytest.mark.parametrize("context_mode", ["learned", "pmap", "none", "random"])
@pytest.mark.parametrize("num_steps", [0, 1, 2, 4])
def test_per_step_gradients_equal_one_tape(context_mode, num_steps):
    if context_mode == "learned" and num_steps == 0:
        pytest.skip("the learned mode trains with T >= 1 (TrainConfig refuses T = 0)")
    net = _net(context_mode)
    (terms, grads, state), (step_terms, step_grads, step_state) = _run_both(
        net, _batch(), num_steps
    )
    assert set(step_terms) == set(terms)
    for name, value in terms.items():
        # Sums of a few float32 numbers in another order.
        np.testing.assert_allclose(float(step_terms[name]), float(value), rtol=1e-5,
                                   atol=1e-7, err_msg=name)
    for variable, expected, got in zip(net.trainable_variables, grads, step_grads, strict=True):
        assert (expected is None) == (got is None), variable.path
        if expected is not None:
            _assert_close_gradient(got, expected, variable.path)
    # The dropout masks were replayed and the state (seed states, batch-norm moving
    # statistics) moved once, as one episode moves it.
    for expected, got in zip(state, step_state, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_per_step_gradients_equal_one_tape_with_the_originals_sums():
    # --loss_reduction=sum: every term 2 / the global batch x its sums (about 400 times the
    # means at 40 x 40 with 5 x 5 grids): per_step must use the same reduction.
    net = _net("learned")
    start = [v.numpy() for v in net.variables]
    results = []
    for fn in (_episode, _per_step):
        for variable, value in zip(net.variables, start, strict=True):
            variable.assign(value)
        results.append(fn(net, _batch(), 2, reduction="sum"))
    (terms, grads), (step_terms, step_grads) = results
    for name, value in terms.items():
        np.testing.assert_allclose(float(step_terms[name]), float(value), rtol=1e-5,
                                   atol=1e-7, err_msg=name)
    for variable, expected, got in zip(net.trainable_variables, grads, step_grads, strict=True):
        if expected is not None:
            _assert_close_gradient(got, expected, variable.path)
    for variable, value in zip(net.variables, start, strict=True):
        variable.assign(value)
    mean_terms, _ = _episode(net, _batch(), 2)
    assert float(terms["segmentation"]) > 100 * float(mean_terms["segmentation"])


def test_per_step_without_state_reset_differs():
    """The equality above needs the replayed dropout masks: without them it fails."""
    net = _net("learned")

    def per_step_without_reset(model, batch, num_steps):
        saved = per_step._state_variables  # noqa: SLF001  (the mutation under test)
        per_step._state_variables = lambda model: []  # noqa: SLF001
        try:
            return _per_step(model, batch, num_steps)
        finally:
            per_step._state_variables = saved  # noqa: SLF001

    (_, grads, _), (_, step_grads, _) = _run_both(net, _batch(), 2, per_step_without_reset)
    differences = [
        float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(grads, step_grads, strict=True)
        if a is not None
    ]
    assert max(differences) > 1e-3


def test_per_step_scales_the_loss_like_the_tape():
    net = _net("learned")
    (_, grads, _), (_, step_grads, _) = _run_both(
        net, _batch(), 2, lambda *a: _per_step(*a, scale_loss=lambda loss: loss * 1024.0)
    )
    for variable, expected, got in zip(net.trainable_variables, grads, step_grads, strict=True):
        _assert_close_gradient(got / 1024.0, expected, variable.path)


@pytest.fixture(scope="module")
def episode_run(synthetic_records, tmp_path_factory):
    """Two updates of the tiny run with one tape over the episode (the reference)."""
    model_dir = tmp_path_factory.mktemp("episode")
    train(synthetic_records, model_dir, *TWO_UPDATES)
    return model_dir


TWO_UPDATES = ["--max_steps=2", "--checkpoint_every=1", "--dropout=0", "--deterministic"]


def test_per_step_on_two_replicas_gives_the_episode_update(synthetic_records, episode_run,
                                                           tmp_path):
    # Two updates: momentum and weight decay carry the first step's gradient into the second.
    train(synthetic_records, tmp_path, *TWO_UPDATES, "--backprop=per_step",
          "--num_cpu_devices=2")
    for step in (1, 2):
        assert_same_weights(weights(episode_run, step), weights(tmp_path, step), atol=2e-6)


def test_per_step_run_from_a_flagfile_resumes_exactly(synthetic_records, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="absl")
    common = [f"--flagfile={ROOT / 'experiments' / 'demo.flags'}", "--crop_size=48,48",
              "--batch_size=4", "--max_steps=4", "--checkpoint_every=2", "--deterministic",
              "--backprop=per_step"]
    train(synthetic_records, tmp_path / "straight", *common)
    train(synthetic_records, tmp_path / "resumed", *common, "--stop_at_step=2")
    caplog.clear()
    train(synthetic_records, tmp_path / "resumed", *common)
    assert any(m.startswith("Resumed from ") for m in caplog.messages)
    assert_same_weights(
        weights(tmp_path / "straight", 4), weights(tmp_path / "resumed", 4), atol=1e-6
    )
