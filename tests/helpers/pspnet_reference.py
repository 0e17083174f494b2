"""PSPNet as the official weights hold it, for the importer's tests.

Independent of the importer: layer names and shapes are written out from PSPNet's
architecture, `.caffemodel` bytes are encoded by hand from the protobuf wire format, and
the network is recomputed in NumPy (float64) with Caffe's semantics (symmetric padding,
ceil-mode max pool, `BN` as scale * (x - mean) / sqrt(var + 1e-5) + shift).
"""

import struct

import numpy as np

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


def varint(n):
    """Protobuf's base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def field(number, wire_type, payload):
    """A field: its key, then the payload (length-prefixed for wire type 2)."""
    key = varint(number << 3 | wire_type)
    if wire_type == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def string_field(number, text):
    """A string field."""
    return field(number, 2, text.encode())


def packed_floats(number, values, fmt="<f"):
    """A packed repeated float (or, with `fmt="<d"`, double) field."""
    return field(number, 2, b"".join(struct.pack(fmt, v) for v in np.ravel(values)))


def blob(array):
    """A BlobProto with a packed `shape` and packed float `data`."""
    dims = b"".join(varint(d) for d in array.shape)
    return field(7, 2, field(1, 2, dims)) + packed_floats(5, array)


PSPNET50_STRIDES = {"conv1_1_3x3_s2": 2, "conv3_1_1x1_reduce": 2, "conv3_1_1x1_proj": 2}
PSPNET101_STRIDES = {**PSPNET50_STRIDES, "conv3_1_1x1_reduce": 1, "conv3_1_3x3": 2}


def caffemodel_bytes(weights, strides=PSPNET50_STRIDES):
    """A `.caffemodel` of a weights dict: Caffe names, OIHW kernels, `BN` blobs (1, C, 1, 1)."""
    net = string_field(1, "pspnet") + string_field(3, "data")
    for name, params in weights.items():
        if set(params) == set(BN_NAMES):
            caffe_name, layer_type = name[: -len("_bn")] + "/bn", "BN"
            blobs = [params[k].reshape(1, -1, 1, 1) for k in BN_NAMES]
        else:
            caffe_name, layer_type = name, "Convolution"
            blobs = [params["weights"].transpose(3, 2, 0, 1)]
            blobs += [params["biases"]] if "biases" in params else []
        layer = (string_field(1, caffe_name) + string_field(2, layer_type)
                 + string_field(3, "bottom"))
        layer += b"".join(field(7, 2, blob(b)) for b in blobs)
        if layer_type == "Convolution":
            layer += field(106, 2, field(1, 0, varint(blobs[0].shape[0]))
                           + field(6, 0, varint(strides.get(caffe_name, 1))))
        net += field(100, 2, layer)
        net += field(100, 2, string_field(1, f"{caffe_name}/relu") + string_field(2, "ReLU"))
    return net


def without(weights, layer, name=None):
    """A copy of a weights dict without `layer` (or only without its tensor `name`)."""
    weights = {k: dict(v) for k, v in weights.items()}
    if name is None:
        del weights[layer]
    else:
        del weights[layer][name]
    return weights

