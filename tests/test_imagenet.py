"""ImageNet initialisation from a Keras ResNet weights file (built and saved here, offline)."""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

# The writer of the published `resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5` format.
from keras.src.legacy.saving import legacy_h5_format

from ciss_tf.convert import imagenet
from ciss_tf.modeling import config
from ciss_tf.modeling.backbone import KERAS_BN_EPSILON, DilatedResNet


@pytest.fixture(scope="module")
def keras_resnet50(tmp_path_factory):
    """A random Keras ResNet-50 (no top) with non-trivial biases and BN statistics, saved."""
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=(None, None, 3)
    )
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0.0, 0.3, bias.shape)])
        elif isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights([
                rng.uniform(0.5, 1.5, shape), rng.normal(0.0, 0.3, shape),
                rng.normal(0.0, 0.3, shape), rng.uniform(0.2, 2.0, shape),
            ])
    path = tmp_path_factory.mktemp("imagenet") / "resnet50_notop.weights.h5"
    model.save_weights(path)
    return model, path


@pytest.fixture(scope="module")
def loaded(keras_resnet50):
    _, path = keras_resnet50
    backbone = DilatedResNet(stem="resnet")
    mapped = imagenet.load_keras_resnet_weights(backbone, path, depth=50)
    return backbone, mapped


def test_every_variable_is_mapped_with_the_bias_folded(keras_resnet50, loaded):
    source, _ = keras_resnet50
    backbone, mapped = loaded
    # stem + 3 convs per block (16 blocks) + 4 projections; 5 variables each = all of ours.
    assert len(mapped) == 1 + 3 * 16 + 4
    assert len(mapped) * 5 == len(backbone.weights)
    assert mapped[0] == ("conv1", "conv1_7x7")
    assert ("conv3_block1_0", "conv3_1/1x1_proj") in mapped
    assert ("conv5_block3_3", "conv5_3/1x1_increase") in mapped
    layers = {name: layer for _, name, layer in imagenet.layer_mapping(backbone)}
    for prefix, name in mapped:
        kernel, bias = source.get_layer(f"{prefix}_conv").get_weights()
        gamma, beta, mean, variance = source.get_layer(f"{prefix}_bn").get_weights()
        target = layers[name]
        np.testing.assert_array_equal(target.conv.kernel.numpy(), kernel)
        np.testing.assert_array_equal(target.bn.gamma.numpy(), gamma)
        np.testing.assert_array_equal(target.bn.beta.numpy(), beta)
        np.testing.assert_allclose(target.bn.moving_mean.numpy(), mean - bias, rtol=1e-6)
        np.testing.assert_array_equal(target.bn.moving_variance.numpy(), variance)
        assert target.bn.epsilon == KERAS_BN_EPSILON


def test_legacy_h5_file_loads_the_same_weights(keras_resnet50, loaded, tmp_path):
    source, _ = keras_resnet50
    backbone, mapped = loaded
    expected = [w.numpy() for w in backbone.weights]
    for weight in backbone.weights:
        weight.assign(tf.zeros_like(weight))
    path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, source)
    assert imagenet.load_keras_resnet_weights(backbone, path, depth=50) == mapped
    for weight, value in zip(backbone.weights, expected, strict=True):
        np.testing.assert_array_equal(weight.numpy(), value)


def test_stem_res2_res3_reproduce_keras_activations(keras_resnet50, loaded):
    source, _ = keras_resnet50
    backbone, _ = loaded
    # Odd size: checks the 7x7 / max-pool padding and the stride-2 1x1 sampling phase.
    images = tf.random.stateless_normal([2, 61, 61, 3], seed=[3, 4]) * 50.0
    reference = keras.Model(source.input, source.get_layer("conv3_block4_out").output)(images)
    x = backbone.stem[0](images)
    x = tf.nn.max_pool2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), 3, 2, "VALID")
    for block in backbone.stages[0] + backbone.stages[1]:
        x = block(x)
    assert x.shape == reference.shape == (2, 8, 8, 512)
    scale = float(tf.reduce_max(tf.abs(reference)))
    assert scale > 1.0
    np.testing.assert_allclose(x, reference, rtol=1e-4, atol=1e-4 * scale)
    # The full backbone runs at output stride 8 with the same weights.
    res4, res5 = backbone(images)
    assert res4.shape == (2, 8, 8, 1024) and res5.shape == (2, 8, 8, 2048)


def test_resnet_stem_matches_keras_parameter_count_and_config(loaded):
    backbone, _ = loaded
    # Keras ResNet-50 (no top): 23,587,712 parameters, of which one bias per conv channel
    # (stem 64; per block w + w + 4w; per stage a 4w projection).
    conv_channels = 64 + sum(
        6 * w * d + 4 * w for w, d in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)
    )
    assert backbone.count_params() == 23_587_712 - conv_channels
    clone = DilatedResNet.from_config(backbone.get_config())
    assert clone.get_config()["stem"] == "resnet"
    psp = config.build_pspnet(3, "tiny", stem="resnet")
    assert psp.get_config()["feature_net"]["backbone"]["stem"] == "resnet"
    assert psp.feature_net.backbone.stem_type == "resnet"
    with pytest.raises(ValueError, match="stem"):
        DilatedResNet(stem="7x7")


def test_bad_inputs_raise_value_error_naming_the_file(keras_resnet50, tmp_path):
    _, path = keras_resnet50
    resnet50 = DilatedResNet(stem="resnet")
    with pytest.raises(ValueError, match=f"{path}.*depths=\\(3, 4, 23, 3\\)"):
        imagenet.load_keras_resnet_weights(resnet50, path, depth=101)
    with pytest.raises(ValueError, match=f"{path}.*7x7 stem"):
        imagenet.load_keras_resnet_weights(DilatedResNet(), path, depth=50)
    missing = tmp_path / "missing.h5"
    with pytest.raises(ValueError, match=f"not found: {missing}"):
        imagenet.load_keras_resnet_weights(resnet50, missing, depth=50)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match=f"{garbage}: cannot load Keras ResNet-50"):
        imagenet.load_keras_resnet_weights(resnet50, garbage, depth=50)
