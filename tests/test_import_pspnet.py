"""Importing the official PSPNet weights: NumPy dict and .caffemodel, mapping, errors.

The references here are independent of the importer: layer names and shapes are written
out from PSPNet's architecture, `.caffemodel` bytes are encoded by hand from the protobuf
wire format, and the network is recomputed in NumPy (float64) with Caffe's semantics
(symmetric padding, ceil-mode max pool, `BN` as scale * (x - mean) / sqrt(var + 1e-5) + shift).
"""

import re
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import cli_error_line

from ciss_tf.convert import caffe, pspnet_weights
from ciss_tf.modeling import checkpoints, config
from ciss_tf.modeling.pspnet import FeatureNet, PSPNet

BN_NAMES = ("scale", "offset", "mean", "variance")
RESNET50 = dict(depths=(3, 4, 6, 3), width=64, stem=(64, 64, 128), ppm=512, head=512)
TINY = dict(depths=(1, 1, 1, 1), width=8, stem=(8, 8, 16), ppm=16, head=32)
AUX_HEAD = sorted(
    f"aux_head/{v}" for v in ("conv/kernel", "bn/gamma", "bn/beta", "bn/moving_mean",
                              "bn/moving_variance", "classifier/kernel", "classifier/bias")
)
# 41 -> stem 21 (odd: Caffe's ceil-mode pool agrees) -> pool 11 -> res3..res5 6x6, where
# every pyramid cell (6, 3, 2, 1 pixels) tiles the map exactly.
SIDE = 41


# ---------------------------------------------------------------- PSPNet, written out


def pspnet_conv_shapes(depths, width, stem, ppm, head):
    """Caffe name -> HWIO shape of every conv followed by a BN, in network order."""
    shapes, channels = {}, 3
    for name, out in zip(("conv1_1_3x3_s2", "conv1_2_3x3", "conv1_3_3x3"), stem, strict=True):
        shapes[name] = (3, 3, channels, out)
        channels = out
    for stage, depth in enumerate(depths):
        mid = width * 2**stage
        for block in range(1, depth + 1):
            prefix = f"conv{stage + 2}_{block}"
            shapes[f"{prefix}_1x1_reduce"] = (1, 1, channels, mid)
            shapes[f"{prefix}_3x3"] = (3, 3, mid, mid)
            shapes[f"{prefix}_1x1_increase"] = (1, 1, mid, 4 * mid)
            if block == 1:
                shapes[f"{prefix}_1x1_proj"] = (1, 1, channels, 4 * mid)
            channels = 4 * mid
    for bins in (1, 2, 3, 6):
        shapes[f"conv5_{depths[-1]}_pool{bins}_conv"] = (1, 1, channels, ppm)
    shapes["conv5_4"] = (3, 3, channels + 4 * ppm, head)
    return shapes


def random_weights(arch, num_classes, seed=0):
    """A NumPy dict in the original's layout with every PSPNet layer, random values."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in pspnet_conv_shapes(**arch).items():
        fan_in = shape[0] * shape[1] * shape[2]
        weights[name] = {
            "weights": rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        }
        channels = shape[3]
        weights[f"{name}_bn"] = {
            "scale": rng.uniform(0.5, 1.0, channels).astype(np.float32),
            "offset": rng.normal(0.0, 0.2, channels).astype(np.float32),
            "mean": rng.normal(0.0, 0.2, channels).astype(np.float32),
            "variance": rng.uniform(0.5, 1.5, channels).astype(np.float32),
        }
    weights["conv6"] = {
        "weights": rng.normal(0.0, 0.05, (1, 1, arch["head"], num_classes)).astype(np.float32),
        "biases": rng.normal(0.0, 0.5, num_classes).astype(np.float32),
    }
    return weights


# ---------------------------------------------------------------- NumPy reference (Caffe)


def _conv(x, layer, weights, stride=1, dilation=1):
    kernel = weights[layer]["weights"].astype(np.float64)
    size = kernel.shape[0]
    pad = dilation * (size - 1) // 2
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h = (x.shape[1] - dilation * (size - 1) - 1) // stride + 1
    out_w = (x.shape[2] - dilation * (size - 1) - 1) // stride + 1
    out = 0.0
    for i in range(size):
        for j in range(size):
            patch = x[:, i * dilation :: stride, j * dilation :: stride][:, :out_h, :out_w]
            # 2-D and contiguous, so that the product runs in BLAS.
            out = out + np.ascontiguousarray(patch).reshape(-1, x.shape[3]) @ kernel[i, j]
    out = out.reshape(x.shape[0], out_h, out_w, kernel.shape[3])
    return out + weights[layer].get("biases", 0.0)


def _bn(x, layer, weights):
    p = {k: v.astype(np.float64) for k, v in weights[layer].items()}
    return p["scale"] * (x - p["mean"]) / np.sqrt(p["variance"] + 1e-5) + p["offset"]


def _conv_bn(x, layer, weights, relu=True, **kwargs):
    y = _bn(_conv(x, layer, weights, **kwargs), f"{layer}_bn", weights)
    return np.maximum(y, 0.0) if relu else y


def _caffe_max_pool(x, kernel=3, stride=2, pad=1):
    """Caffe's pooling: output size rounded up, the last window clipped to the image."""
    def out_size(n):
        size = -(-(n + 2 * pad - kernel) // stride) + 1
        return size - 1 if (size - 1) * stride >= n + pad else size

    out_h, out_w = out_size(x.shape[1]), out_size(x.shape[2])
    padded = np.full(
        (x.shape[0], (out_h - 1) * stride + kernel, (out_w - 1) * stride + kernel, x.shape[3]),
        -np.inf,
    )
    padded[:, pad : pad + x.shape[1], pad : pad + x.shape[2]] = x[
        :, : padded.shape[1] - pad, : padded.shape[2] - pad
    ]
    return np.max([
        padded[:, i :: stride, j :: stride][:, :out_h, :out_w]
        for i in range(kernel) for j in range(kernel)
    ], axis=0)


def _align_corners_matrix(out, cells):
    matrix = np.zeros([out, cells])
    for i in range(out):
        src = i * (cells - 1) / (out - 1) if cells > 1 else 0.0
        low = int(np.floor(src))
        high = min(low + 1, cells - 1)
        matrix[i, low] += 1.0 - (src - low)
        matrix[i, high] += src - low
    return matrix


def reference_pspnet(weights, images, depths, stride_on="1x1"):
    """`(res4, res5, logits)` of Caffe's PSPNet, for res5 sizes the pyramid tiles exactly."""
    x = images.astype(np.float64)
    for name in ("conv1_1_3x3_s2", "conv1_2_3x3", "conv1_3_3x3"):
        x = _conv_bn(x, name, weights, stride=2 if name.endswith("s2") else 1)
    x = _caffe_max_pool(x)
    outputs = []
    for stage, depth in enumerate(depths):
        dilation = (1, 1, 2, 4)[stage]
        for block in range(1, depth + 1):
            prefix = f"conv{stage + 2}_{block}"
            stride = 2 if stage == 1 and block == 1 else 1
            shortcut = (
                _conv_bn(x, f"{prefix}_1x1_proj", weights, relu=False, stride=stride)
                if block == 1 else x
            )
            y = _conv_bn(x, f"{prefix}_1x1_reduce", weights,
                         stride=stride if stride_on == "1x1" else 1)
            y = _conv_bn(y, f"{prefix}_3x3", weights, dilation=dilation,
                         stride=stride if stride_on == "3x3" else 1)
            y = _conv_bn(y, f"{prefix}_1x1_increase", weights, relu=False)
            x = np.maximum(y + shortcut, 0.0)
        outputs.append(x)
    res5 = outputs[3]
    batch, side, _, channels = res5.shape
    concat = [res5]
    for bins in (6, 3, 2, 1):
        cell = side // bins
        pooled = res5.reshape(batch, bins, cell, bins, cell, channels).mean(axis=(2, 4))
        branch = _conv_bn(pooled, f"conv5_{depths[-1]}_pool{bins}_conv", weights)
        up = _align_corners_matrix(side, bins)
        concat.append(np.einsum("ip,jq,npqc->nijc", up, up, branch))
    head = _conv_bn(np.concatenate(concat, axis=-1), "conv5_4", weights)
    return outputs[2], res5, _conv(head, "conv6", weights)


# ---------------------------------------------------------------- protobuf, by hand


def _varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _field(number, wire_type, payload):
    key = _varint(number << 3 | wire_type)
    if wire_type == 2:
        return key + _varint(len(payload)) + payload
    return key + payload


def _string(number, text):
    return _field(number, 2, text.encode())


def _packed_floats(number, values, fmt="<f"):
    return _field(number, 2, b"".join(struct.pack(fmt, v) for v in np.ravel(values)))


def _blob(array):
    """A BlobProto with a packed `shape` and packed float `data`."""
    dims = b"".join(_varint(d) for d in array.shape)
    return _field(7, 2, _field(1, 2, dims)) + _packed_floats(5, array)


PSPNET50_STRIDES = {"conv1_1_3x3_s2": 2, "conv3_1_1x1_reduce": 2, "conv3_1_1x1_proj": 2}
PSPNET101_STRIDES = {**PSPNET50_STRIDES, "conv3_1_1x1_reduce": 1, "conv3_1_3x3": 2}


def caffemodel_bytes(weights, strides=PSPNET50_STRIDES):
    """A `.caffemodel` of a weights dict: Caffe names, OIHW kernels, `BN` blobs (1, C, 1, 1)."""
    net = _string(1, "pspnet") + _string(3, "data")
    for name, params in weights.items():
        if set(params) == set(BN_NAMES):
            caffe_name, layer_type = name[: -len("_bn")] + "/bn", "BN"
            blobs = [params[k].reshape(1, -1, 1, 1) for k in BN_NAMES]
        else:
            caffe_name, layer_type = name, "Convolution"
            blobs = [params["weights"].transpose(3, 2, 0, 1)]
            blobs += [params["biases"]] if "biases" in params else []
        layer = _string(1, caffe_name) + _string(2, layer_type) + _string(3, "bottom")
        layer += b"".join(_field(7, 2, _blob(b)) for b in blobs)
        if layer_type == "Convolution":
            layer += _field(106, 2, _field(1, 0, _varint(blobs[0].shape[0]))
                            + _field(6, 0, _varint(strides.get(caffe_name, 1))))
        net += _field(100, 2, layer)
        net += _field(100, 2, _string(1, f"{caffe_name}/relu") + _string(2, "ReLU"))
    return net


# ---------------------------------------------------------------- tests


def test_hand_encoder_matches_protobuf_documentation():
    # The protobuf encoding guide's examples: 150 in field 1, and the varint 300.
    assert _field(1, 0, _varint(150)) == bytes([0x08, 0x96, 0x01])
    assert _varint(300) == bytes([0xAC, 0x02])


def test_tiny_caffemodel_written_by_hand_is_read_back_exactly(tmp_path):
    kernel = (np.arange(12, dtype=np.float32) * 0.25 - 1.0).reshape(2, 3, 1, 2)
    bias = np.array([0.5, -2.0], np.float32)
    bn = [np.array(v, np.float32) for v in ([1.5, 0.25], [0.0, -1.0], [0.1, 0.2], [2.0, 3.0])]
    fc = np.array([[1.0, 2.0, 3.0], [-4.0, 5.5, 1e-3]], np.float32)

    conv_layer = (
        _string(1, "conv1") + _string(2, "Convolution") + _string(3, "data")
        + _field(6, 2, _field(3, 5, struct.pack("<f", 1.0)))  # param { lr_mult: 1 }
        + _field(7, 2, _blob(kernel))
        # shape dims unpacked, data unpacked (one fixed32 per value)
        + _field(7, 2, _field(7, 2, _field(1, 0, _varint(2)))
                 + b"".join(_field(5, 5, struct.pack("<f", v)) for v in bias))
        + _field(106, 2, _field(1, 0, _varint(2)) + _field(6, 2, _varint(2) + _varint(2)))
    )
    # Legacy 4-D shape (num, channels, height, width) and packed doubles.
    bn_blobs = b"".join(
        _field(7, 2, _field(1, 0, _varint(1)) + _field(2, 0, _varint(2))
               + _field(3, 0, _varint(1)) + _field(4, 0, _varint(1))
               + _packed_floats(8, blob.astype(np.float64), "<d"))
        for blob in bn
    )
    bn_layer = (_string(1, "conv1/bn") + _string(2, "BN") + bn_blobs
                + _field(152, 2, _field(4, 5, struct.pack("<f", 1e-3)) + _field(5, 0, b"\x01")))
    legacy = (_string(4, "fc") + _field(5, 0, _varint(14))
              + _field(6, 2, _field(3, 0, _varint(2)) + _field(4, 0, _varint(3))
                       + _field(1, 0, _varint(1)) + _field(2, 0, _varint(1))
                       + _packed_floats(5, fc)))
    net = (
        _string(1, "tiny")
        + _field(2, 2, legacy)  # a legacy `layers` entry first: read after the new ones
        + _field(100, 2, conv_layer)
        + _field(99, 1, struct.pack("<d", 7.0))  # unknown fixed64 field: skipped
        + _field(6, 2, _field(1, 0, _varint(1)))  # NetState: skipped
        + _field(100, 2, _string(1, "relu1") + _string(2, "ReLU"))
        + _field(100, 2, bn_layer)
    )
    path = tmp_path / "tiny.caffemodel"
    path.write_bytes(net)

    layers = caffe.read_caffemodel(str(path))

    assert [(la.name, la.type) for la in layers] == [
        ("conv1", "Convolution"), ("relu1", "ReLU"), ("conv1/bn", "BN"), ("fc", "InnerProduct"),
    ]
    conv, relu, norm, dense = layers
    np.testing.assert_array_equal(conv.blobs[0], kernel)
    np.testing.assert_array_equal(conv.blobs[1], bias)
    assert conv.stride == 2 and conv.bn_eps is None
    assert relu.blobs == () and relu.stride is None
    assert [b.shape for b in norm.blobs] == [(1, 2, 1, 1)] * 4
    for blob, expected in zip(norm.blobs, bn, strict=True):
        np.testing.assert_array_equal(blob.ravel(), expected)
    assert norm.bn_eps == pytest.approx(1e-3, rel=1e-6)
    assert dense.blobs[0].shape == (1, 1, 2, 3)
    np.testing.assert_array_equal(dense.blobs[0][0, 0], fc)
    for layer in layers:
        assert all(b.dtype == np.float32 for b in layer.blobs)


@pytest.mark.parametrize("data, message", [
    (_field(100, 2, _string(1, "x") + _field(7, 2, _field(7, 2, _field(1, 0, _varint(3)))
                                              + _packed_floats(5, [1.0, 2.0]))),
     "layer 'x': a blob of shape (3,) holds 2 values"),
    (_field(100, 2, _string(1, "x"))[:-1], "runs past the end"),
    (_varint(100 << 3 | 3), "unsupported wire type 3"),
], ids=["shape", "truncated", "group"])
def test_malformed_caffemodel_is_one_error_naming_the_file(tmp_path, data, message):
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable .caffemodel: ")
                       + f".*{re.escape(message)}"):
        caffe.read_caffemodel(str(path))


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
    feature_net = dict(config.PRESETS["tiny"].feature_net(), stride_on=stride_on)
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
    assert FeatureNet.from_config(model.feature_net.get_config()).stride_on == "3x3"
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


def _without(weights, layer, name=None):
    weights = {k: dict(v) for k, v in weights.items()}
    if name is None:
        del weights[layer]
    else:
        del weights[layer][name]
    return weights


def _reshaped(weights, layer, name, shape):
    weights = {k: dict(v) for k, v in weights.items()}
    weights[layer][name] = np.zeros(shape, np.float32)
    return weights


TINY_WEIGHTS = random_weights(TINY, 8, seed=6)


@pytest.mark.parametrize("weights, message", [
    (_without(TINY_WEIGHTS, "conv3_1_3x3_bn"),
     r"w.npy: 1 tensor\(s\) missing or mis-shaped: conv3_1_3x3_bn missing$"),
    (_without(TINY_WEIGHTS, "conv5_4_bn", "variance"),
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


def _run(args):
    return subprocess.Popen(
        [sys.executable, "-m", "ciss_tf.convert.import_pspnet", "--preset=tiny",
         "--dataset=synthetic", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_cli_writes_a_checkpoint_that_stage_2_and_evaluation_accept(tmp_path, tiny_model):
    weights = random_weights(TINY, 8, seed=7)
    good = tmp_path / "pspnet_tiny.caffemodel"
    good.write_bytes(caffemodel_bytes(weights))
    bad = tmp_path / "missing.npy"
    np.save(bad, _without(weights, "conv2_1_1x1_increase"))
    output = tmp_path / "imported" / "ckpt"
    failing = _run([f"--weights={bad}", f"--output={tmp_path / 'never' / 'ckpt'}"])
    running = _run([f"--weights={good}", f"--output={output}"])
    stdout, stderr = running.communicate(timeout=600)
    failed = failing.communicate(timeout=600)

    assert running.returncode == 0, stderr
    lines = stdout.splitlines()
    assert "mapped   conv1_1_3x3_s2/weights (3, 3, 3, 8) -> " \
        "feature_net/backbone/conv1_1_3x3/conv/kernel" in lines
    assert "kept     aux_head/classifier/bias (no counterpart in the official models: " \
        "initial value)" in lines
    # 25 conv kernels, 24 batch norms of 4 tensors, the classifier's bias.
    assert lines[-2] == "122 tensors mapped, 0 skipped, 7 variables kept at initialisation"
    assert lines[-1] == f"wrote {output} (tiny, 8 classes of synthetic)"

    net = config.build_ciss_net(8, "tiny")
    net(tf.zeros([1, SIDE, SIDE, 3]), num_steps=1)
    checkpoints.restore_feature_net(net, str(output))
    assert net.feature_net.backbone.stem[0].conv.kernel.numpy() == pytest.approx(
        weights["conv1_1_3x3_s2"]["weights"]
    )
    np.testing.assert_array_equal(
        net.feature_net.ppm.norms[3].moving_variance, weights["conv5_1_pool6_conv_bn"]["variance"]
    )
    checkpoints.restore_model(tiny_model, str(output))  # every variable is there
    np.testing.assert_array_equal(tiny_model.head.classifier.bias, weights["conv6"]["biases"])

    error = cli_error_line((failing.returncode, *failed))
    assert error == (f"error: {bad}: 1 tensor(s) missing or mis-shaped: "
                     "conv2_1_1x1_increase missing")
    assert not (tmp_path / "never").exists()
