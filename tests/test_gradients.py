"""`gradients.accumulate`: N micro-batches give the update of the whole batch."""

import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.training import gradients
from tests.helpers.training_runs import assert_same_weights, train, weights
from tests.test_per_step import TWO_UPDATES, _assert_close_gradient, _batch, _episode, _net


def test_micro_batches_add_up_to_the_whole_batch():
    # Per-image norms (GroupNorm) and no dropout: each image's loss is the same alone or in
    # a batch (the actions are keyed by sample id), so the sum is the whole batch's.
    net = _net("learned", dropout=0.0, norm="group")
    batch = _batch()
    whole_terms, whole = _episode(net, batch, 2)
    sizes = []

    def gradient_fn(micro):
        sizes.append(int(micro["image"].shape[0]))
        return _episode(net, micro, 2)

    terms, accumulated = gradients.accumulate(gradient_fn, batch, 2)
    assert sizes == [1, 1]
    assert set(terms) == set(whole_terms)
    for name, value in whole_terms.items():
        np.testing.assert_allclose(float(terms[name]), float(value), rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    for variable, expected, got in zip(net.trainable_variables, whole, accumulated,
                                       strict=True):
        _assert_close_gradient(got, expected, variable.path)
    # Each part alone is not the whole: the test would pass a sum that dropped a part.
    _, first = _episode(net, {k: v[:1] for k, v in batch.items()}, 2)
    assert max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(whole, first, strict=True)
               if a is not None) > 1e-4


def test_accumulated_two_replica_per_step_run_gives_the_one_device_update(synthetic_records,
                                                                          tmp_path):
    """Two updates of 2 micro-batches x 2 replicas x 1 image = one update of 4 images."""
    train(synthetic_records, tmp_path / "reference", *TWO_UPDATES)
    train(synthetic_records, tmp_path / "accumulated", *TWO_UPDATES, "--grad_accum_steps=2",
          "--num_cpu_devices=2", "--backprop=per_step")
    for step in (1, 2):
        assert_same_weights(weights(tmp_path / "reference", step),
                            weights(tmp_path / "accumulated", step), atol=2e-6)


def test_accumulation_that_does_not_divide_the_batch_is_refused(synthetic_records, tmp_path):
    with pytest.raises(ValueError, match="--grad_accum_steps=3"):
        train(synthetic_records, tmp_path, "--grad_accum_steps=3")
    with pytest.raises(ValueError, match="--grad_accum_steps=4"):
        train(synthetic_records, tmp_path, "--grad_accum_steps=4", "--num_cpu_devices=2")
    assert not tmp_path.joinpath("checkpoint").exists()
