"""Hand-computed checks of the reward (Eq. 4), returns (Eq. 5) and actor-critic terms."""

import numpy as np
import pytest
import tensorflow as tf

from ciss_tf import rl


def _reward(prev, nxt, labels, context, **kwargs):
    batch = lambda a: np.asarray(a, np.int32)[None]  # noqa: E731
    return np.asarray(
        rl.context_reward(batch(prev), batch(nxt), batch(labels), batch(context), **kwargs)
    )[0]


def test_reward_four_cases_of_m():
    labels = [[1, 1, 1, 1]]
    prev = [[0, 1, 1, 0]]  # incorrect, correct, correct, incorrect
    nxt = [[1, 0, 1, 2]]  # correct,   incorrect, correct, incorrect
    context = [[3, 3, 3, 3]]  # wrong context: no beta term
    reward = _reward(prev, nxt, labels, context, window=1)
    np.testing.assert_allclose(reward, [[1.0, -1.0, 0.5, 0.0]])


def test_reward_window_mean_leaves_out_positions_outside_the_image():
    labels = np.zeros([4, 4], np.int32)
    prev = np.ones([4, 4], np.int32)  # all incorrect ...
    nxt = np.ones([4, 4], np.int32)
    nxt[0, 0] = 0  # ... except (0, 0), which becomes correct: M = 1 there, 0 elsewhere
    context = np.full([4, 4], 2)
    reward = _reward(prev, nxt, labels, context, window=5)
    assert reward[0, 0] == pytest.approx(1 / 9)  # the in-image part of the window is 3x3
    assert reward[0, 2] == pytest.approx(1 / 12)  # rows 0..2, cols 0..3
    assert reward[2, 2] == pytest.approx(1 / 16)  # rows 0..3, cols 0..3
    assert reward[3, 3] == pytest.approx(0.0)  # (0, 0) is outside its window


def test_reward_beta_terms():
    labels = [[2, 2, 2]]
    prev = nxt = [[0, 0, 0]]  # incorrect -> incorrect: M = 0
    context = [[3, 0, 1]]  # correct context (label + 1), uncertain, wrong context
    reward = _reward(prev, nxt, labels, context, window=1, beta1=0.4, beta2=0.2)
    np.testing.assert_allclose(reward, [[0.4, 0.2, 0.0]], atol=1e-7)
    reward = _reward(prev, nxt, labels, context, window=1, beta1=1.5, beta2=-0.5)
    np.testing.assert_allclose(reward, [[1.5, -0.5, 0.0]], atol=1e-7)


def test_reward_ignore_label_is_never_correct():
    labels = [[255, 1]]
    prev = nxt = [[255, 1]]  # "equal" to an ignore label, and a real correct -> correct
    context = [[5, 5]]
    reward = _reward(prev, nxt, labels, context, window=1)
    np.testing.assert_allclose(reward, [[0.0, 0.5]])
    # Over a 3-wide window, the ignore pixel counts as M = 0 in its neighbour's mean.
    reward = _reward(prev, nxt, labels, context, window=3)
    np.testing.assert_allclose(reward, [[0.25, 0.25]])


def test_unlabelled_reward_by_hand_on_a_3x3_map():
    # Unlabelled pixels (255) on the diagonal. Each pixel's context: uncertain (0) on the
    # first column, its label + 1 (or 256 where unlabelled) on the second, 7 on the third.
    # The predictions never change and are correct where labelled: M = 0.5 there, 0 on the
    # unlabelled pixels.
    labels = [[255, 2, 3], [1, 255, 3], [1, 2, 255]]
    prev = nxt = [[0, 2, 3], [1, 0, 3], [1, 2, 0]]
    context = [[0, 3, 7], [0, 256, 7], [0, 3, 7]]
    m = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    ours = _reward(prev, nxt, labels, context, window=1, beta1=0.4, beta2=0.2)
    # Uncertain pays beta2 everywhere; label + 1 pays beta1 where labelled, never 256.
    np.testing.assert_allclose(
        ours, m + [[0.2, 0.4, 0], [0.2, 0, 0], [0.2, 0.4, 0]], atol=1e-7)
    # The authors' code: uncertain on the unlabelled pixel (0, 0) pays beta1 + beta2 = 0.6.
    original = _reward(prev, nxt, labels, context, window=1, beta1=0.4, beta2=0.2,
                       unlabelled_reward="original")
    np.testing.assert_allclose(
        original, m + [[0.6, 0.4, 0], [0.2, 0, 0], [0.2, 0.4, 0]], atol=1e-7)
    with pytest.raises(ValueError, match="unlabelled_reward"):
        _reward(prev, nxt, labels, context, unlabelled_reward="other")


def test_reward_rejects_even_window():
    with pytest.raises(ValueError, match="odd"):
        _reward([[0]], [[0]], [[0]], [[0]], window=4)


def test_returns_single_step():
    returns = rl.discounted_returns([[1.0, 2.0]], [10.0, -10.0], gamma=0.9)
    np.testing.assert_allclose(np.asarray(returns), [[10.0, -7.0]])


def test_returns_three_steps_with_bootstrap():
    rewards = np.array([[1.0], [0.5], [-1.0]])
    returns = np.asarray(rl.discounted_returns(rewards, [4.0], gamma=0.5))
    # R2 = -1 + 0.5 * 4 = 1; R1 = 0.5 + 0.5 * 1 = 1; R0 = 1 + 0.5 * 1 = 1.5
    np.testing.assert_allclose(returns, [[1.5], [1.0], [1.0]])
    assert returns.dtype == np.float32


def test_actor_critic_terms_values_and_no_gradient_through_advantage():
    policy_logits = tf.Variable(np.log([[[[[0.25, 0.75]]]]], dtype=np.float32))
    values = tf.Variable([[[[1.0]]]])
    returns = tf.Variable([[[[3.0]]]])
    actions = tf.constant([[[[1]]]])
    with tf.GradientTape(persistent=True) as tape:
        terms = rl.actor_critic_terms(policy_logits, values, actions, returns)
    assert float(terms["advantage"][0, 0, 0, 0]) == pytest.approx(2.0)
    assert float(terms["policy"][0, 0, 0, 0]) == pytest.approx(-np.log(0.75) * 2.0)
    assert float(terms["value"][0, 0, 0, 0]) == pytest.approx(4.0)
    expected_entropy = 0.25 * np.log(0.25) + 0.75 * np.log(0.75)
    assert float(terms["entropy"][0, 0, 0, 0]) == pytest.approx(expected_entropy, rel=1e-6)
    # The policy loss moves only the policy: the advantage is a constant.
    assert tape.gradient(terms["policy"], values) is None
    assert tape.gradient(terms["policy"], returns) is None
    assert tape.gradient(terms["value"], returns) is None
    # d/dV (R - V)^2 = -2 (R - V) = -4
    assert float(tape.gradient(terms["value"], values)[0, 0, 0, 0]) == pytest.approx(-4.0)
