"""ciss_tf.serving.exporter: the SavedModel against the live model, its signatures as a
client sees them, the bytes signature, rejected requests and `input_scale`.

The SavedModel is loaded with plain `tf.saved_model.load` in this process, after checking
that it holds nothing a TF Serving process without ciss_tf could not rebuild: only generic
TensorFlow objects, only TensorFlow's own ops and none that calls back into Python.
"""

import os
import pathlib

import cv2
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from ciss_tf.data import preprocessing
from ciss_tf.evaluation import visualize
from ciss_tf.serving import exporter

# Objects `tf.saved_model.load` rebuilds from TensorFlow alone: a tf.Module, a list of
# variables, the signature map. Anything else (a Keras layer, a registered class) needs its
# Python code.
GENERIC_OBJECTS = {"_generic_user_object", "trackable_list_wrapper", "signature_map"}
PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def _reference(net, images):
    """Labels, last context map and probabilities at step 2 of the live model."""
    size = images.shape[1:3]
    outputs = net(preprocessing.normalize_image(images), num_steps=2)
    logits = tf.compat.v1.image.resize_bilinear(outputs["logits"][2], size, align_corners=True)
    context = tf.compat.v1.image.resize_nearest_neighbor(
        outputs["context"][1][..., tf.newaxis], size, align_corners=True
    )[..., 0]
    return {"labels": np.argmax(logits, -1), "context": context.numpy(),
            "probabilities": tf.nn.softmax(logits).numpy()}


def _png(image):
    return cv2.imencode(".png", image[..., ::-1])[1].tobytes()


@pytest.fixture(scope="module")
def exported(varied_net, tmp_path_factory):
    """The export with probabilities, its proto, the model loaded back, inputs, reference."""
    export_dir = tmp_path_factory.mktemp("export") / "serving"
    target = exporter.export_saved_model(varied_net, str(export_dir), 7, probabilities=True)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(pathlib.Path(target, "saved_model.pb").read_bytes())
    rng = np.random.default_rng(0)
    inputs = {"a": rng.integers(0, 256, (2, 37, 53, 3), dtype=np.uint8),
              "b": rng.integers(0, 256, (1, 64, 48, 3), dtype=np.uint8)}
    reference = {key: _reference(varied_net, images) for key, images in inputs.items()}
    return export_dir, proto, tf.saved_model.load(target), inputs, reference


def test_saved_model_needs_no_python_code(exported):
    _, proto, loaded, _, _ = exported
    [meta_graph] = proto.meta_graphs
    kinds = {node.WhichOneof("kind") for node in meta_graph.object_graph_def.nodes}
    assert {"variable", "bare_concrete_function"} <= kinds  # the walk sees the graph's parts
    identifiers = {node.user_object.identifier for node in meta_graph.object_graph_def.nodes
                   if node.WhichOneof("kind") == "user_object"}
    assert identifiers <= GENERIC_OBJECTS, identifiers
    assert not any(node.registered_name for node in meta_graph.object_graph_def.nodes)
    graph = meta_graph.graph_def
    ops = {node.op for node in graph.node}
    ops |= {node.op for function in graph.library.function for node in function.node_def}
    assert not ops & PYTHON_OPS
    # Every op is TensorFlow's own (or a call of a function of the graph): no custom kernel.
    functions = {function.signature.name for function in graph.library.function}
    assert {op for op in ops - functions if not hasattr(tf.raw_ops, op)} == set()
    assert not type(loaded).__module__.startswith("ciss_tf")


def test_round_trip_matches_the_live_model(exported):
    export_dir, _, loaded, inputs, reference = exported
    assert sorted(os.listdir(export_dir)) == ["7"]  # no leftover temporary folder
    images = loaded.signatures["serving_default"]
    encoded = loaded.signatures["serving_bytes"]
    for key, expected in reference.items():
        assert len(np.unique(expected["labels"])) >= 3
        assert 0.1 < np.mean(expected["context"] == 0) < 0.9
        outputs = images(images=tf.constant(inputs[key]))
        assert outputs["labels"].dtype == tf.int32
        assert outputs["context"].dtype == tf.int32
        np.testing.assert_array_equal(outputs["labels"], expected["labels"])
        np.testing.assert_array_equal(outputs["context"], expected["context"])
        np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"],
                                   atol=1e-5)
    by_bytes = encoded(image_bytes=tf.constant([_png(image) for image in inputs["a"]]))
    by_array = images(images=tf.constant(inputs["a"]))
    for name in ("labels", "context", "probabilities"):
        np.testing.assert_array_equal(by_bytes[name], by_array[name])


def test_invalid_requests_fail_with_a_message_naming_the_problem(exported):
    _, _, loaded, inputs, _ = exported
    images = loaded.signatures["serving_default"]
    encoded = loaded.signatures["serving_bytes"]
    cases = {
        "float32": lambda: images(images=tf.zeros([1, 8, 8, 3], tf.float32)),
        "channels": lambda: images(images=tf.zeros([1, 8, 8, 4], tf.uint8)),
        "too_large": lambda: images(images=tf.zeros([1, 2049, 8, 3], tf.uint8)),
        "mixed_sizes": lambda: encoded(image_bytes=tf.constant(
            [_png(inputs["a"][0]), _png(inputs["b"][0])])),
        "not_an_image": lambda: encoded(image_bytes=tf.constant([b"junk"])),
        "no_image": lambda: images(images=tf.zeros([0, 8, 8, 3], tf.uint8)),
        "no_bytes": lambda: encoded(image_bytes=tf.constant([], tf.string)),
        "empty": lambda: images(images=tf.zeros([1, 0, 8, 3], tf.uint8)),
    }
    errors = {}
    for name, case in cases.items():
        with pytest.raises(Exception) as error:  # noqa: PT011  (the message is checked below)
            case()
        errors[name] = f"{error.type.__name__}: {error.value}"
    assert "expected to be a uint8 tensor but is a float tensor" in errors["float32"]
    assert "InvalidArgumentError" in errors["channels"]
    assert "images must have 3 channels" in errors["channels"]
    assert "images must be at most 2048x2048 pixels" in errors["too_large"]
    assert "same height and width" in errors["mixed_sizes"]
    assert "InvalidArgumentError" in errors["not_an_image"]
    assert "the request holds no image" in errors["no_image"]
    assert "the request holds no image" in errors["no_bytes"]
    assert "images must be at least 1x1" in errors["empty"]


def test_signature_defs_list_both_signatures_as_a_client_sees_them(exported):
    # What `saved_model_cli show --all` prints: the meta graph's signature defs.
    signatures = exported[1].meta_graphs[0].signature_def
    assert sorted(signatures) == ["__saved_model_init_op", "serving_bytes", "serving_default"]
    default, encoded = signatures["serving_default"], signatures["serving_bytes"]
    assert list(default.inputs) == ["images"]
    assert default.inputs["images"].dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in default.inputs["images"].tensor_shape.dim] == [-1, -1, -1, 3]
    assert list(encoded.inputs) == ["image_bytes"]
    assert encoded.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    for signature in (default, encoded):
        assert sorted(signature.outputs) == ["context", "labels", "probabilities"]


def test_input_scale_runs_the_network_on_the_resized_image_and_answers_at_full_size(
        varied_net, tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (1, 37, 53, 3), dtype=np.uint8)
    # 37 x 53 at scale 0.5, rounded half up: 19 x 27.
    small = tf.compat.v1.image.resize_bilinear(
        preprocessing.normalize_image(images), (19, 27), align_corners=True
    )
    outputs = varied_net(small, num_steps=2)
    logits = tf.compat.v1.image.resize_bilinear(outputs["logits"][2], (37, 53),
                                                align_corners=True)
    expected = np.argmax(logits, -1)
    assert len(np.unique(expected)) >= 3

    served = exporter.ServingModule(varied_net, 2, fast=False, input_scale=0.5).segment(
        tf.constant(images)
    )
    np.testing.assert_array_equal(served["labels"], expected)
    labels, context = visualize.make_predictor(varied_net, 2, input_scale=0.5)(
        tf.constant(images[0]))
    np.testing.assert_array_equal(labels[2], expected[0])
    np.testing.assert_array_equal(context[1], served["context"][0])
    # What the CamVid chain exports: the fast net at scale 0.5, saved and loaded back (the
    # fast net's folded convs round differently: nearly every pixel agrees). And T = 0: the
    # Base Net alone, its context map all uncertain.
    loaded = tf.saved_model.load(exporter.export_saved_model(
        varied_net, str(tmp_path / "fast"), 1, input_scale=0.5))
    fast = loaded.signatures["serving_default"](images=tf.constant(images))
    assert (fast["labels"].numpy() == expected).mean() > 0.99
    base = tf.compat.v1.image.resize_bilinear(outputs["logits"][0], (37, 53), align_corners=True)
    loaded = tf.saved_model.load(exporter.export_saved_model(
        varied_net, str(tmp_path / "t0"), 1, num_steps=0, input_scale=0.5))
    served_t0 = loaded.signatures["serving_default"](images=tf.constant(images))
    assert (served_t0["labels"].numpy() == np.argmax(base, -1)).mean() > 0.99
    assert (np.argmax(base, -1) != expected).mean() > 0.01
    np.testing.assert_array_equal(served_t0["context"], np.zeros([1, 37, 53]))
