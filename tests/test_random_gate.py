"""The random-gate control (`context_mode="random"`): Baseline + p-map kept at random."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.data import preprocessing
from ciss_tf.modeling import config
from ciss_tf.modeling.ciss_net import CissNet, random_gate_actions
from ciss_tf.serving import exporter
from ciss_tf.serving.fast_inference import FastCissNet
from ciss_tf.tools import greedy_eval

NUM_CLASSES = 5
IMAGES = tf.random.stateless_normal([3, 64, 64, 3], seed=[4, 2]) * 50.0


def _net(rate=0.3):
    keras.utils.set_random_seed(0)
    net = config.build_ciss_net(NUM_CLASSES, "tiny", "random", random_keep_rate=rate)
    net(IMAGES[:1], num_steps=1)
    return net


@pytest.mark.parametrize("rate", [0.3, 0.9, 1.0])
@pytest.mark.parametrize("sample", [True, False])
def test_keep_rate_over_a_large_map_is_the_configured_rate(rate, sample):
    # 4 x 128 x 128 = 65536 independent Bernoulli(rate) draws per step: their mean is within
    # 4 binomial standard deviations sqrt(rate (1 - rate) / n) of the rate.
    like = tf.zeros([4, 128, 128], tf.int32)
    ids = tf.constant([11, 12, 13, 14], tf.int64) if sample else None
    for step in (0, 1):
        actions = random_gate_actions(like, rate, step, sample, ids, seed=5).numpy()
        assert actions.dtype == np.int32
        np.testing.assert_array_equal(np.unique(actions), [1] if rate == 1.0 else [0, 1])
        n = actions.size
        assert abs(actions.mean() - rate) <= 4 * np.sqrt(rate * (1 - rate) / n) + 1e-12, (
            actions.mean())


def test_the_model_keeps_at_the_rate_and_has_no_context_net():
    net = _net(0.3)
    assert net.context_net is None
    out = net(IMAGES, training=True, num_steps=2, sample_ids=tf.range(3, dtype=tf.int64),
              seed=1)
    assert "policy_logits" not in out and "values" not in out
    actions = out["actions"].numpy()
    n = actions.size  # 2 steps x 3 images x 8 x 8
    assert abs(actions.mean() - 0.3) <= 4 * np.sqrt(0.3 * 0.7 / n)
    # The context map is the p-map where kept, uncertain elsewhere.
    prediction = tf.argmax(out["logits"][:-1], -1, tf.int32).numpy()
    np.testing.assert_array_equal(out["context"], actions * (prediction + 1))


def test_training_draws_are_keyed_by_example_and_evaluation_is_reproducible():
    net = _net(0.5)
    ids = tf.constant([7, 8, 9], tf.int64)

    def actions(images, sample_ids, **kwargs):
        return net(images, num_steps=2, sample_ids=sample_ids, **kwargs)["actions"].numpy()

    trained = actions(IMAGES, ids, training=True, seed=1)
    # The same example (id 8) draws the same noise wherever it sits in the batch.
    alone = actions(IMAGES[1:2], ids[1:2], training=True, seed=1)
    np.testing.assert_array_equal(alone[:, 0], trained[:, 1])
    assert (actions(IMAGES, ids, training=True, seed=2) != trained).any()
    # Evaluation: a fixed seed, the same actions every time, with or without sample ids.
    first = actions(IMAGES, None, training=False)
    np.testing.assert_array_equal(actions(IMAGES, None, training=False), first)
    np.testing.assert_array_equal(actions(IMAGES, tf.range(3, dtype=tf.int64)), first)
    assert (first[0] != first[1]).any() and (first[:, 0] != first[:, 1]).any()
    assert 0.3 < first.mean() < 0.7  # not the greedy all-ones of a 0.5 keep rate


def test_keep_rate_is_serialised_and_the_fast_net_draws_the_same_actions(tmp_path):
    net = _net(0.7)
    clone = CissNet.from_config(net.get_config())
    assert clone.random_keep_rate == 0.7 and clone.context_mode == "random"
    saved = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(net))
    assert (saved.random_keep_rate, saved.context_mode) == (0.7, "random")
    clone(IMAGES[:1], num_steps=1)
    clone.set_weights(net.get_weights())
    plain = net(IMAGES, num_steps=3)
    np.testing.assert_array_equal(clone(IMAGES, num_steps=3)["actions"], plain["actions"])
    fast = FastCissNet(net)(IMAGES, num_steps=3)
    np.testing.assert_array_equal(fast["context"], plain["context"])
    np.testing.assert_allclose(fast["logits"], plain["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rate", [None, 0.0, 1.5])
def test_a_keep_rate_outside_0_1_is_refused_naming_the_flag(rate):
    with pytest.raises(ValueError, match="--random_keep_rate"):
        config.ModelConfig(preset="tiny", context_mode="random", random_keep_rate=rate)
    with pytest.raises(ValueError, match="random_keep_rate"):
        config.build_ciss_net(NUM_CLASSES, "tiny", "random", random_keep_rate=rate)


def test_evaluator_export_and_gate_statistics_draw_the_same_gate_for_an_image(tmp_path):
    # The evaluation draw is keyed by the image itself: the plain net (the evaluator's
    # Segmenter unrolls it), the exported fast net loaded back, and the report's greedy
    # unroll give an image the same context map, alone or second in a batch; two
    # different images get different maps.
    net = _net(0.5)
    images = tf.cast(tf.random.stateless_uniform([2, 64, 64, 3], seed=[7, 7], maxval=256,
                                                 dtype=tf.int32), tf.uint8)
    normalised = preprocessing.normalize_image(images)
    plain = net(normalised, num_steps=2)["context"].numpy()
    alone = net(normalised[1:], num_steps=2)["context"].numpy()
    np.testing.assert_array_equal(alone[:, 0], plain[:, 1])
    assert ((plain[:, 0] > 0) != (plain[:, 1] > 0)).any()
    greedy = greedy_eval.greedy_unroll(net, num_steps=2)(normalised[1:])["context"].numpy()
    np.testing.assert_array_equal(greedy[:, 0], plain[:, 1])
    served = tf.saved_model.load(exporter.export_saved_model(net, str(tmp_path), 1))
    context = served.signatures["serving_default"](images=images[1:])["context"].numpy()
    expected = tf.compat.v1.image.resize_nearest_neighbor(
        plain[1, 1][None, ..., None], (64, 64), align_corners=True)[0, ..., 0].numpy()
    np.testing.assert_array_equal(context[0], expected)
