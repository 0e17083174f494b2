"""ciss_tf.convert.pspnet_weights: the official PSPNet weights (NumPy dict and .caffemodel)
mapped onto our PSPNet, which then computes Caffe's network (`pspnet_reference`)."""

import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.convert import caffe, pspnet_weights
from ciss_tf.modeling import checkpoints, config
from ciss_tf.modeling.pspnet import FeatureNet, PSPNet
from tests.helpers.pspnet_reference import (
    AUX_HEAD,
    PSPNET101_STRIDES,
    RESNET50,
    SIDE,
    TINY,
    caffemodel_bytes,
    random_weights,
    reference_pspnet,
    without,
)


def test_pspnet50_numpy_dict_imports_completely_and_computes_caffes_network(tmp_path):
    weights = random_weights(RESNET50, 150)
    path = tmp_path / "pspnet50_ade20k.npy"
    np.save(path, weights)

    loaded, stride_on = pspnet_weights.read_weights(str(path))
    model = config.build_pspnet(150, "resnet50")
    report = pspnet_weights.import_weights(model, loaded, str(path), stride_on)

    assert stride_on is None
    sources = {f"{layer}/{name}" for layer, params in weights.items() for name in params}
    assert len(sources) == 61 + 60 * 4 + 1  # convs + BN tensors + conv6 biases
    assert sorted(src for src, _, _ in report.mapped) == sorted(sources)
    assert report.skipped == []
    assert sorted(report.kept) == AUX_HEAD
    assert ("conv3_1_1x1_proj/weights", "feature_net/backbone/conv3_1/1x1_proj/conv/kernel",
            (1, 1, 256, 512)) in report.mapped
    assert ("conv5_3_pool6_conv_bn/variance", "feature_net/ppm/pool6_batch_norm/moving_variance",
            (512,)) in report.mapped
    assert ("conv6/biases", "head/classifier/bias", (150,)) in report.mapped

    images = np.random.default_rng(1).normal(0.0, 50.0, (1, SIDE, SIDE, 3)).astype(np.float32)
    res4, res5, logits = reference_pspnet(weights, images, RESNET50["depths"])
    ours_res4, ours_res5 = model.feature_net.backbone(images)
    ours_logits = model(images)["logits"]
    for ours, ref in ((ours_res4, res4), (ours_res5, res5), (ours_logits, logits)):
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def _tiny_model(stride_on="1x1"):
    feature_net = config.PRESETS["tiny"].feature_net()
    feature_net["backbone"] = dict(feature_net["backbone"], stride_on=stride_on)
    model = PSPNet(8, feature_net=feature_net, head_channels=32, name="pspnet")
    model(tf.zeros([1, SIDE, SIDE, 3]))
    return model


@pytest.fixture(scope="module")
def tiny_model():
    """A tiny PSPNet shared by the tests (building one costs seconds); every successful
    import assigns all its variables but the auxiliary head's, so tests do not interact."""
    return _tiny_model()


def test_caffemodel_equals_numpy_dict_and_stride_on_3x3_matches_caffe(tmp_path, tiny_model):
    weights = random_weights(TINY, 8, seed=3)
    weights["conv4_24"] = {"weights": np.ones([1, 1, 2, 2], np.float32)}  # not PSPNet's
    caffemodel = tmp_path / "tiny.caffemodel"
    caffemodel.write_bytes(caffemodel_bytes(weights))
    npy = tmp_path / "tiny.npy"
    # Python 2 pickles of the original converter may hold bytes keys.
    np.save(npy, {name.encode() if name.startswith("conv2") else name: params
                  for name, params in weights.items()})

    from_npy, from_caffe = tiny_model, _tiny_model()
    report = pspnet_weights.import_weights(from_npy, *pspnet_weights.read_weights(str(npy)))
    caffe_report = pspnet_weights.import_weights(
        from_caffe, *pspnet_weights.read_weights(str(caffemodel))
    )
    assert caffe_report.mapped == report.mapped
    assert caffe_report.skipped == report.skipped == ["conv4_24/weights"]
    npy_variables = checkpoints.model_variables(from_npy)
    caffe_variables = checkpoints.model_variables(from_caffe)
    for _, path, _ in report.mapped:
        np.testing.assert_array_equal(
            caffe_variables[path].numpy(), npy_variables[path].numpy(), err_msg=path
        )

    # PSPNet-101's res3 strides on its 3x3 conv: read from the .caffemodel, refused by a
    # model striding on the 1x1 conv, and computed as Caffe does by one striding on the 3x3.
    caffemodel.write_bytes(caffemodel_bytes(weights, PSPNET101_STRIDES))
    loaded, stride_on = pspnet_weights.read_weights(str(caffemodel))
    assert stride_on == "3x3"
    with pytest.raises(ValueError, match="res3 strides on conv3_1_3x3 .* conv3_1_1x1_reduce"):
        pspnet_weights.import_weights(from_caffe, loaded, "w.caffemodel", stride_on)
    model = _tiny_model("3x3")
    assert FeatureNet.from_config(model.feature_net.get_config()).backbone.stride_on == "3x3"
    pspnet_weights.import_weights(model, loaded, "w.caffemodel", stride_on)
    images = np.random.default_rng(2).normal(0.0, 50.0, (2, SIDE, SIDE, 3)).astype(np.float32)
    *_, expected = reference_pspnet(weights, images, TINY["depths"], stride_on="3x3")
    np.testing.assert_allclose(model(images)["logits"], expected, rtol=1e-4, atol=1e-4)
    *_, other = reference_pspnet(weights, images, TINY["depths"], stride_on="1x1")
    assert np.abs(other - expected).max() > 1e-2  # the placement matters


def test_conv_bias_before_batch_norm_is_folded_exactly(tiny_model):
    weights = random_weights(TINY, 8, seed=4)
    weights["conv2_1_3x3"]["biases"] = np.linspace(-1.0, 1.0, 8, dtype=np.float32)
    model = tiny_model
    report = pspnet_weights.import_weights(model, weights)
    assert ("conv2_1_3x3_bn/mean + conv2_1_3x3/biases",
            "feature_net/backbone/conv2_1/3x3/bn/moving_mean", (8,)) in report.mapped
    images = np.random.default_rng(5).normal(0.0, 50.0, (1, SIDE, SIDE, 3)).astype(np.float32)
    *_, expected = reference_pspnet(weights, images, TINY["depths"])
    np.testing.assert_allclose(model(images)["logits"], expected, rtol=1e-4, atol=1e-4)


def _reshaped(weights, layer, name, shape):
    weights = {k: dict(v) for k, v in weights.items()}
    weights[layer][name] = np.zeros(shape, np.float32)
    return weights


TINY_WEIGHTS = random_weights(TINY, 8, seed=6)


@pytest.mark.parametrize("weights, message", [
    (without(TINY_WEIGHTS, "conv3_1_3x3_bn"),
     r"w.npy: 1 tensor\(s\) missing or mis-shaped: conv3_1_3x3_bn missing$"),
    (without(TINY_WEIGHTS, "conv5_4_bn", "variance"),
     r"conv5_4_bn/variance missing \(it has mean, offset, scale\)$"),
    (_reshaped(TINY_WEIGHTS, "conv6", "weights", (1, 1, 32, 19)),
     r"conv6/weights has shape \(1, 1, 32, 19\), the model needs \(1, 1, 32, 8\)$"),
    (_reshaped(TINY_WEIGHTS, "conv2_1_1x1_proj", "weights", (1, 1, 16, 33)),
     r"conv2_1_1x1_proj/weights has shape \(1, 1, 16, 33\)"),
    (_reshaped(TINY_WEIGHTS, "conv1_2_3x3_bn", "variance", (1, 4, 1, 1)),
     r"conv1_2_3x3_bn/variance has shape \(1, 4, 1, 1\), the model needs \(8,\)$"),
    ({**TINY_WEIGHTS, "conv4_2_1x1_reduce": {"weights": np.zeros([1, 1, 64, 32])}},
     r"holds \(1, 1, 2, 1\) blocks in res2..res5, the model \(--preset\) has \(1, 1, 1, 1\)"),
], ids=["layer", "tensor", "classes", "kernel", "vector", "depth"])
def test_missing_or_mis_shaped_tensor_is_an_error_naming_it(tiny_model, weights, message):
    model = tiny_model
    before = [v.numpy() for v in model.weights]
    with pytest.raises(ValueError, match=message):
        pspnet_weights.import_weights(model, weights, "w.npy")
    for variable, value in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)  # nothing assigned


def test_negative_variance_and_bn_epsilon_are_refused(tiny_model):
    weights = _reshaped(TINY_WEIGHTS, "conv1_2_3x3_bn", "variance", (8,))
    weights["conv1_2_3x3_bn"]["variance"] -= 1.0
    with pytest.raises(ValueError, match="conv1_2_3x3_bn/variance has negative values"):
        pspnet_weights.import_weights(tiny_model, weights, "w.npy")
    layer = caffe.CaffeLayer("conv1/bn", "BN", tuple(np.ones([4, 1, 2, 1, 1], np.float32)), 1e-3)
    with pytest.raises(ValueError, match="BN layer conv1/bn has eps 0.001; our batch norm"):
        pspnet_weights.caffe_to_numpy_dict([layer], "w.caffemodel")

