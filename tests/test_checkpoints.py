"""Checkpoints hold every variable, and a stage-1 feature net moves into a stage-2 model."""

import hashlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.modeling import checkpoints, config


def _built(builder, *args, seed, **kwargs):
    keras.utils.set_random_seed(seed)
    model = builder(*args, **kwargs)
    steps = {"num_steps": 1} if builder is config.build_ciss_net else {}
    model(tf.zeros([1, 32, 32, 3]), **steps)
    return model


@pytest.fixture(scope="module")
def _built_models():
    """(builder, args, seed, kwargs) -> (the built model, its initial variable values)."""
    return {}


@pytest.fixture
def built(_built_models):
    """`built(builder, *args, seed=s, **kwargs)`: `_built`'s model as first built.

    Models are shared by the module's tests (building one costs seconds); restoring into
    one changes its variables, which the next `built` call puts back.
    """
    def get(builder, *args, seed, **kwargs):
        key = (builder, args, seed, tuple(sorted(kwargs.items())))
        if key not in _built_models:
            model = _built(builder, *args, seed=seed, **kwargs)
            _built_models[key] = model, [v.numpy() for v in model.variables]
        model, values = _built_models[key]
        for variable, value in zip(model.variables, values, strict=True):
            variable.assign(value)
        return model

    return get


def test_round_trip_restores_every_variable(built, tmp_path):
    source = built(config.build_ciss_net, 4, "tiny", seed=1)
    keys = checkpoints.model_variables(source)
    # Everything: trainable, batch-norm statistics, the three Dropout random states.
    assert len(keys) == len(source.variables)
    assert sum(key.endswith("seed_state") for key in keys) == 3
    assert "bias_net/trunk/c1_kernel" in keys and "context_net/trunk/c1_kernel" in keys
    prefix = checkpoints.save_model(source, str(tmp_path / "ckpt"))
    target = built(config.build_ciss_net, 4, "tiny", seed=2)
    assert checkpoints.restore_model(target, prefix) == prefix
    for a, b in zip(source.variables, target.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_feature_net_from_a_pspnet_checkpoint(built, tmp_path):
    pspnet = built(config.build_pspnet, 4, "tiny", seed=1)
    prefix = checkpoints.save_model(pspnet, str(tmp_path / "psp"))
    ciss = built(config.build_ciss_net, 4, "tiny", seed=2)
    before = [v.numpy() for v in ciss.base_net.variables]
    checkpoints.restore_feature_net(ciss, prefix)
    for a, b in zip(pspnet.feature_net.variables, ciss.feature_net.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(before, ciss.base_net.variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())  # the rest is untouched


def test_missing_variables_and_paths_are_clear_errors(built, tmp_path):
    prefix = checkpoints.save_model(built(config.build_ciss_net, 4, "tiny", "none", seed=1),
                                    str(tmp_path / "none"))
    learned = built(config.build_ciss_net, 4, "tiny", seed=2)
    with pytest.raises(ValueError, match="lacks .* variables.*context_net"):
        checkpoints.restore_model(learned, prefix)
    with pytest.raises(ValueError, match="not found: .*nowhere"):
        checkpoints.restore_model(learned, str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no checkpoint in directory"):
        checkpoints.restore_model(learned, str(tmp_path / "empty"))
    assert checkpoints.step_of("/a/ckpt-1200") == 1200 and checkpoints.step_of("/a/x") == 0


def test_a_batch_norm_context_encoder_checkpoint_names_the_flag(built, tmp_path):
    batch_norm = built(config.build_ciss_net, 4, "tiny", seed=1, context_encoder_norm="batch")
    prefix = checkpoints.save_model(batch_norm, str(tmp_path / "bn"))
    group_norm = built(config.build_ciss_net, 4, "tiny", seed=2)  # the default: GroupNorm
    with pytest.raises(ValueError, match=r"group_norm.*--context_encoder_norm\?"):
        checkpoints.restore_model(group_norm, prefix)


# The checkpoint keys of the tiny nets (`checkpoints.model_variables`: paths built from
# Keras's layer tree). A Keras release that renames what they walk changes every run's keys;
# this fails first. To migrate: WORKSPACE.md, "Checkpoint keys".
GOLDEN_KEYS = {
    "ciss_net": (175, "4725692ba95bf2b9", "base_net/classifier/bias",
                 "feature_net/ppm/pool6_conv/kernel"),
    "pspnet": (131, "7d26439b8509c0b1", "aux_head/bn/beta", "head/dropout/seed_state"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_KEYS))
def test_checkpoint_keys_of_the_tiny_nets_are_the_golden_ones(name):
    keras.utils.set_random_seed(0)
    if name == "ciss_net":
        model = config.build_ciss_net(8, "tiny")
        model(tf.zeros([1, 33, 33, 3]), num_steps=1)
    else:
        model = config.build_pspnet(8, "tiny")
        model(tf.zeros([1, 33, 33, 3]))
    keys = sorted(checkpoints.model_variables(model))
    count, digest, first, last = GOLDEN_KEYS[name]
    assert (len(keys), keys[0], keys[-1]) == (count, first, last), keys
    assert hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16] == digest, keys
