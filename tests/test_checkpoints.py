"""Checkpoints hold every variable, and a stage-1 feature net moves into a stage-2 model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.modeling import checkpoints, config


def _built(builder, *args, seed):
    keras.utils.set_random_seed(seed)
    model = builder(*args)
    kwargs = {"num_steps": 1} if builder is config.build_ciss_net else {}
    model(tf.zeros([1, 32, 32, 3]), **kwargs)
    return model


def test_round_trip_restores_every_variable(tmp_path):
    source = _built(config.build_ciss_net, 4, "tiny", seed=1)
    keys = checkpoints.model_variables(source)
    # Everything: trainable, batch-norm statistics, the three Dropout random states.
    assert len(keys) == len(source.variables)
    assert sum(key.endswith("seed_state") for key in keys) == 3
    assert "bias_net/trunk/c1_kernel" in keys and "context_net/trunk/c1_kernel" in keys
    prefix = checkpoints.save_model(source, str(tmp_path / "ckpt"))
    target = _built(config.build_ciss_net, 4, "tiny", seed=2)
    assert checkpoints.restore_model(target, prefix) == prefix
    for a, b in zip(source.variables, target.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_feature_net_from_a_pspnet_checkpoint(tmp_path):
    pspnet = _built(config.build_pspnet, 4, "tiny", seed=1)
    prefix = checkpoints.save_model(pspnet, str(tmp_path / "psp"))
    ciss = _built(config.build_ciss_net, 4, "tiny", seed=2)
    before = [v.numpy() for v in ciss.base_net.variables]
    checkpoints.restore_feature_net(ciss, prefix)
    for a, b in zip(pspnet.feature_net.variables, ciss.feature_net.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(before, ciss.base_net.variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())  # the rest is untouched


def test_missing_variables_and_paths_are_clear_errors(tmp_path):
    prefix = checkpoints.save_model(_built(config.build_ciss_net, 4, "tiny", "none", seed=1),
                                    str(tmp_path / "none"))
    learned = _built(config.build_ciss_net, 4, "tiny", seed=2)
    with pytest.raises(ValueError, match="lacks .* variables.*context_net"):
        checkpoints.restore_model(learned, prefix)
    with pytest.raises(ValueError, match="not found: .*nowhere"):
        checkpoints.restore_model(learned, str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no checkpoint in directory"):
        checkpoints.restore_model(learned, str(tmp_path / "empty"))
    assert checkpoints.step_of("/a/ckpt-1200") == 1200 and checkpoints.step_of("/a/x") == 0


def test_a_batch_norm_context_encoder_checkpoint_names_the_flag(tmp_path):
    def build(norm):
        return config.build_ciss_net(4, "tiny", context_encoder_norm=norm)

    prefix = checkpoints.save_model(_built(build, "batch", seed=1), str(tmp_path / "bn"))
    with pytest.raises(ValueError, match=r"group_norm.*--context_encoder_norm\?"):
        checkpoints.restore_model(_built(build, "group", seed=2), prefix)
