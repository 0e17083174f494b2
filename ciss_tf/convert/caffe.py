"""Reads layer names and weights from a Caffe `.caffemodel`, without Caffe or protobuf.

A `.caffemodel` is one serialised `NetParameter` protocol buffer. Only the few fields that
hold weights are decoded; every other field is skipped by its wire type. Field numbers, as in
`caffe.proto` (BVLC Caffe and the PSPNet fork, `hszhao/PSPNet`):

| message                | fields read                                                |
|------------------------|------------------------------------------------------------|
| `NetParameter`         | 100 `layer`, 2 `layers` (legacy V1 layers)                 |
| `LayerParameter`       | 1 `name`, 2 `type` (string), 7 `blobs`,                    |
|                        | 106 `convolution_param`, 152 `bn_param` (PSPNet fork)      |
| `V1LayerParameter`     | 4 `name`, 5 `type` (enum), 6 `blobs`, 10 `convolution_param` |
| `BlobProto`            | 7 `shape`, 5 `data` (float), 8 `double_data`,              |
|                        | 1-4 `num`/`channels`/`height`/`width` (legacy 4-D shape)   |
| `BlobShape`            | 1 `dim` (int64)                                            |
| `ConvolutionParameter` | 6 `stride` (default 1), 13 `stride_h`                      |
| `BNParameter`          | 4 `eps` (float, default 1e-5)                              |

Repeated numbers are accepted packed or not, as protobuf parsers must. Blobs come back in
Caffe's own layout (a convolution's weights are `[out, in, kh, kw]`); converting them is the
caller's business (`ciss_tf.convert.import_pspnet`).
"""

import dataclasses
import struct

import numpy as np

# Protocol-buffer wire types.
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
# V1LayerParameter.LayerType values of the layers that carry weights, by their V2 type name.
V1_LAYER_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution"}
BN_EPSILON_DEFAULT = 1e-5  # BNParameter.eps default of the PSPNet fork


@dataclasses.dataclass(frozen=True)
class CaffeLayer:
    """One layer of a Caffe net as stored in a `.caffemodel`.

    Attributes:
      name: the layer name (e.g. `conv1_1_3x3_s2/bn`).
      type: the layer type (`Convolution`, `BN`, ...); a legacy V1 layer's enum is given by
        its V2 name when it carries weights (`V1_LAYER_TYPES`), else as `V1:<number>`.
      blobs: the parameter blobs, float32 arrays in Caffe's shapes.
      bn_eps: the epsilon of a PSPNet `BN` layer (`bn_param.eps`), None for other layers.
      stride: the (vertical) stride of a layer with a `convolution_param`, else None.
    """

    name: str
    type: str
    blobs: tuple[np.ndarray, ...]
    bn_eps: float | None = None
    stride: int | None = None


def read_caffemodel(path):
    """The layers of a `.caffemodel` file, in file order.

    Raises:
      ValueError: naming `path`, if it is not a well-formed `NetParameter`.
      OSError: if it cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return parse_net(data)
    except ValueError as error:
        raise ValueError(f"{path}: not a readable .caffemodel: {error}") from None


def parse_net(data):
    """The layers (`layer` first, then legacy `layers`) of a serialised `NetParameter`.

    Args:
      data: the message bytes.

    Returns:
      A list of `CaffeLayer`.

    Raises:
      ValueError: malformed wire data, or a blob whose shape and value count disagree.
    """
    view = memoryview(data)
    layers, legacy = [], []
    for number, wire_type, value in _fields(view, 0, len(view)):
        if number == 100 and wire_type == _BYTES:
            layers.append(_parse_layer(view, *value))
        elif number == 2 and wire_type == _BYTES:
            legacy.append(_parse_v1_layer(view, *value))
    return layers + legacy


def _parse_layer(view, start, end):
    name, layer_type, blobs, eps, stride = "", "", [], None, None
    for number, wire_type, value in _fields(view, start, end):
        if number == 1 and wire_type == _BYTES:
            name = _text(view, *value)
        elif number == 2 and wire_type == _BYTES:
            layer_type = _text(view, *value)
        elif number == 7 and wire_type == _BYTES:
            blobs.append(value)
        elif number == 106 and wire_type == _BYTES:
            stride = _parse_stride(view, *value)
        elif number == 152 and wire_type == _BYTES:
            eps = _parse_bn_eps(view, *value)
    if layer_type == "BN" and eps is None:
        eps = BN_EPSILON_DEFAULT
    return CaffeLayer(name, layer_type, _parse_blobs(view, name, blobs), eps, stride)


def _parse_v1_layer(view, start, end):
    name, layer_type, blobs, stride = "", "", [], None
    for number, wire_type, value in _fields(view, start, end):
        if number == 4 and wire_type == _BYTES:
            name = _text(view, *value)
        elif number == 5 and wire_type == _VARINT:
            layer_type = V1_LAYER_TYPES.get(value, f"V1:{value}")
        elif number == 6 and wire_type == _BYTES:
            blobs.append(value)
        elif number == 10 and wire_type == _BYTES:
            stride = _parse_stride(view, *value)
    return CaffeLayer(name, layer_type, _parse_blobs(view, name, blobs), stride=stride)


def _parse_stride(view, start, end):
    strides, stride_h = [], None
    for number, wire_type, value in _fields(view, start, end):
        if number == 6:
            strides += _repeated_varints(view, wire_type, value)
        elif number == 13 and wire_type == _VARINT:
            stride_h = value
    return stride_h if stride_h is not None else (strides[0] if strides else 1)


def _parse_bn_eps(view, start, end):
    eps = BN_EPSILON_DEFAULT
    for number, wire_type, value in _fields(view, start, end):
        if number == 4 and wire_type == _FIXED32:
            eps = struct.unpack("<f", view[value : value + 4])[0]
    return eps


def _parse_blobs(view, layer_name, spans):
    try:
        return tuple(_parse_blob(view, start, end) for start, end in spans)
    except ValueError as error:
        raise ValueError(f"layer {layer_name!r}: {error}") from None


def _parse_blob(view, start, end):
    """A `BlobProto` as a float32 array of its shape."""
    shape, legacy = None, {}
    floats, doubles = [], []
    for number, wire_type, value in _fields(view, start, end):
        if number == 7 and wire_type == _BYTES:
            shape = [
                dim
                for dim_number, dim_wire, dims in _fields(view, *value)
                if dim_number == 1
                for dim in _repeated_varints(view, dim_wire, dims)
            ]
        elif 1 <= number <= 4 and wire_type == _VARINT:
            legacy[number] = value
        elif number == 5:
            floats.append(_repeated_reals(view, wire_type, value, "<f4"))
        elif number == 8:
            doubles.append(_repeated_reals(view, wire_type, value, "<f8"))
    values = np.concatenate(floats + doubles) if floats or doubles else np.zeros([0])
    if shape is None:
        # Legacy blobs are 4-D (num, channels, height, width), each defaulting to 0.
        shape = [legacy.get(n, 0) for n in (1, 2, 3, 4)] if legacy else [values.size]
    if int(np.prod(shape, dtype=np.int64)) != values.size:
        raise ValueError(f"a blob of shape {tuple(shape)} holds {values.size} values")
    return values.astype(np.float32).reshape(shape)


def _repeated_varints(view, wire_type, value):
    if wire_type == _VARINT:
        return [value]
    if wire_type != _BYTES:
        raise ValueError(f"wire type {wire_type} for a repeated integer")
    start, end = value
    numbers = []
    while start < end:
        number, start = _varint(view, start)
        numbers.append(number)
    if start != end:
        raise ValueError("packed integers overrun their field")
    return numbers


def _repeated_reals(view, wire_type, value, dtype):
    size = np.dtype(dtype).itemsize
    if wire_type == _BYTES:  # packed
        start, end = value
        if (end - start) % size:
            raise ValueError(f"packed {dtype} field of {end - start} bytes")
        return np.frombuffer(view[start:end], dtype)
    if (wire_type, size) in ((_FIXED32, 4), (_FIXED64, 8)):
        return np.frombuffer(view[value : value + size], dtype)
    raise ValueError(f"wire type {wire_type} for a {dtype} value")


def _text(view, start, end):
    return bytes(view[start:end]).decode("utf-8", errors="replace")


def _fields(view, start, end):
    """Yields `(field number, wire type, value)` of a message's fields.

    The value is an int for varints, `(start, end)` offsets for length-delimited fields and
    the offset of the payload for fixed-size fields.
    """
    position = start
    while position < end:
        key, position = _varint(view, position)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError(f"field number 0 at byte {position}")
        if wire_type == _VARINT:
            value, position = _varint(view, position)
        elif wire_type == _BYTES:
            length, position = _varint(view, position)
            value = (position, position + length)
            position += length
        elif wire_type == _FIXED64:
            value = position
            position += 8
        elif wire_type == _FIXED32:
            value = position
            position += 4
        else:  # 3 and 4 are the deprecated groups, unused by caffe.proto
            raise ValueError(f"unsupported wire type {wire_type} at byte {position}")
        if position > end:
            raise ValueError(f"field {number} runs past the end of its message (byte {end})")
        yield number, wire_type, value


def _varint(view, position):
    result, shift = 0, 0
    while True:
        if position >= len(view) or shift > 63:
            raise ValueError(f"truncated or overlong varint at byte {position}")
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
