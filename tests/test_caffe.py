"""ciss_tf.convert.caffe: `.caffemodel` bytes encoded by hand from the protobuf wire format
are read back exactly; malformed files are one error naming the file."""

import re
import struct

import numpy as np
import pytest

from ciss_tf.convert import caffe
from tests.helpers.pspnet_reference import blob, field, packed_floats, string_field, varint


def test_hand_encoder_matches_protobuf_documentation():
    # The protobuf encoding guide's examples: 150 in field 1, and the varint 300.
    assert field(1, 0, varint(150)) == bytes([0x08, 0x96, 0x01])
    assert varint(300) == bytes([0xAC, 0x02])


def test_tiny_caffemodel_written_by_hand_is_read_back_exactly(tmp_path):
    kernel = (np.arange(12, dtype=np.float32) * 0.25 - 1.0).reshape(2, 3, 1, 2)
    bias = np.array([0.5, -2.0], np.float32)
    bn = [np.array(v, np.float32) for v in ([1.5, 0.25], [0.0, -1.0], [0.1, 0.2], [2.0, 3.0])]
    fc = np.array([[1.0, 2.0, 3.0], [-4.0, 5.5, 1e-3]], np.float32)

    conv_layer = (
        string_field(1, "conv1") + string_field(2, "Convolution") + string_field(3, "data")
        + field(6, 2, field(3, 5, struct.pack("<f", 1.0)))  # param { lr_mult: 1 }
        + field(7, 2, blob(kernel))
        # shape dims unpacked, data unpacked (one fixed32 per value)
        + field(7, 2, field(7, 2, field(1, 0, varint(2)))
                 + b"".join(field(5, 5, struct.pack("<f", v)) for v in bias))
        + field(106, 2, field(1, 0, varint(2)) + field(6, 2, varint(2) + varint(2)))
    )
    # Legacy 4-D shape (num, channels, height, width) and packed doubles.
    bn_blobs = b"".join(
        field(7, 2, field(1, 0, varint(1)) + field(2, 0, varint(2))
               + field(3, 0, varint(1)) + field(4, 0, varint(1))
               + packed_floats(8, blob.astype(np.float64), "<d"))
        for blob in bn
    )
    bn_layer = (string_field(1, "conv1/bn") + string_field(2, "BN") + bn_blobs
                + field(152, 2, field(4, 5, struct.pack("<f", 1e-3)) + field(5, 0, b"\x01")))
    legacy = (string_field(4, "fc") + field(5, 0, varint(14))
              + field(6, 2, field(3, 0, varint(2)) + field(4, 0, varint(3))
                       + field(1, 0, varint(1)) + field(2, 0, varint(1))
                       + packed_floats(5, fc)))
    net = (
        string_field(1, "tiny")
        + field(2, 2, legacy)  # a legacy `layers` entry first: read after the new ones
        + field(100, 2, conv_layer)
        + field(99, 1, struct.pack("<d", 7.0))  # unknown fixed64 field: skipped
        + field(6, 2, field(1, 0, varint(1)))  # NetState: skipped
        + field(100, 2, string_field(1, "relu1") + string_field(2, "ReLU"))
        + field(100, 2, bn_layer)
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
    for values, expected in zip(norm.blobs, bn, strict=True):
        np.testing.assert_array_equal(values.ravel(), expected)
    assert norm.bn_eps == pytest.approx(1e-3, rel=1e-6)
    assert dense.blobs[0].shape == (1, 1, 2, 3)
    np.testing.assert_array_equal(dense.blobs[0][0, 0], fc)
    for layer in layers:
        assert all(b.dtype == np.float32 for b in layer.blobs)


@pytest.mark.parametrize("data, message", [
    (field(100, 2, string_field(1, "x") + field(7, 2, field(7, 2, field(1, 0, varint(3)))
                                              + packed_floats(5, [1.0, 2.0]))),
     "layer 'x': a blob of shape (3,) holds 2 values"),
    (field(100, 2, string_field(1, "x"))[:-1], "runs past the end"),
    (varint(100 << 3 | 3), "unsupported wire type 3"),
], ids=["shape", "truncated", "group"])
def test_malformed_caffemodel_is_one_error_naming_the_file(tmp_path, data, message):
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable .caffemodel: ")
                       + f".*{re.escape(message)}"):
        caffe.read_caffemodel(str(path))

