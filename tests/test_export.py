"""SavedModel export: a round trip through a separate process against the live model, the
listed signatures, the bytes signature, rejected requests and the CLI's bad input."""

import json
import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import tensorflow as tf
from conftest import cli_error_line, varied_tiny_net

from ciss_tf import predict
from ciss_tf.data import preprocessing, synthetic
from ciss_tf.modeling import checkpoints
from ciss_tf.serving import exporter

# Run in a fresh process: nothing of the exporter's Python objects is available there.
LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    folder, model_dir = sys.argv[1:]
    model = tf.saved_model.load(model_dir)
    images = model.signatures["serving_default"]
    encoded = model.signatures["serving_bytes"]
    inputs = np.load(f"{folder}/inputs.npz")
    png = {name: open(f"{folder}/{name}.png", "rb").read() for name in ("a0", "a1", "b0")}
    outputs = {}
    for key in ("a", "b"):
        for name, value in images(images=tf.constant(inputs[key])).items():
            outputs[f"{key}_{name}"] = value.numpy()
    for name, value in encoded(image_bytes=tf.constant([png["a0"], png["a1"]])).items():
        outputs[f"bytes_{name}"] = value.numpy()
    cases = {
        "float32": lambda: images(images=tf.zeros([1, 8, 8, 3], tf.float32)),
        "channels": lambda: images(images=tf.zeros([1, 8, 8, 4], tf.uint8)),
        "too_large": lambda: images(images=tf.zeros([1, 2049, 8, 3], tf.uint8)),
        "mixed_sizes": lambda: encoded(image_bytes=tf.constant([png["a0"], png["b0"]])),
        "not_an_image": lambda: encoded(image_bytes=tf.constant([b"junk"])),
    }
    errors = {}
    for name, case in cases.items():
        try:
            case()
            errors[name] = None
        except Exception as error:
            errors[name] = f"{type(error).__name__}: {error}"
    np.savez(f"{folder}/outputs.npz", **outputs)
    with open(f"{folder}/errors.json", "w") as f:
        json.dump(errors, f)
""")


def _net():
    return varied_tiny_net(synthetic.NUM_CLASSES)


URL = "gs://no-such-bucket"


def _start(args, cwd=None):
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd)


def _finish(process):
    stdout, stderr = process.communicate(timeout=600)
    return process.returncode, stdout, stderr


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


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    net = _net()
    prefix = checkpoints.save_model(net, str(folder / "ckpt-7"))
    flagfile = folder / "experiment.flags"
    flagfile.write_text("--preset=tiny\n--dataset=synthetic\n")
    export = [sys.executable, "-m", "ciss_tf.export", f"--flagfile={flagfile}"]
    export_dir = folder / "serving"
    first = subprocess.run([*export, f"--checkpoint={prefix}", f"--export_dir={export_dir}",
                            "--probabilities"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr

    rng = np.random.default_rng(0)
    inputs = {"a": rng.integers(0, 256, (2, 37, 53, 3), dtype=np.uint8),
              "b": rng.integers(0, 256, (1, 64, 48, 3), dtype=np.uint8)}
    np.savez(folder / "inputs.npz", **inputs)
    for name, image in (("a0", inputs["a"][0]), ("a1", inputs["a"][1]), ("b0", inputs["b"][0])):
        cv2.imwrite(str(folder / f"{name}.png"), image[..., ::-1])
    version = export_dir / "7"
    runs = {
        "load": _start([sys.executable, "-c", LOADER, str(folder), str(version)]),
        "show": _start([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"),
                        "show", "--dir", str(version), "--all"]),
        "again": _start([*export, f"--checkpoint={prefix}", f"--export_dir={export_dir}"]),
        "missing": _start([*export, f"--checkpoint={folder / 'nowhere'}",
                           f"--export_dir={folder / 'other'}"]),
        "scale": _start([*export, f"--checkpoint={prefix}", f"--export_dir={folder / 'other'}",
                         "--input_scale=0"]),
        "url": _start([*export, f"--checkpoint={prefix}", f"--export_dir={URL}/serving"],
                      cwd=folder),
        "lean": _start([*export, f"--checkpoint={prefix}", f"--export_dir={folder / 'lean'}"]),
    }
    reference = {key: _reference(net, images) for key, images in inputs.items()}
    results = {name: _finish(run) for name, run in runs.items()}
    return folder, export_dir, first, reference, results


def test_round_trip_in_another_process_matches_the_live_model(exported):
    folder, export_dir, first, reference, results = exported
    assert sorted(os.listdir(export_dir)) == ["7"]  # the checkpoint's step; no leftovers
    assert first.stdout.strip().splitlines()[-1] == str(export_dir / "7")
    assert results["load"][0] == 0, results["load"][2]
    outputs = np.load(folder / "outputs.npz")
    for key, expected in reference.items():
        assert len(np.unique(expected["labels"])) >= 3
        assert 0.1 < np.mean(expected["context"] == 0) < 0.9
        assert outputs[f"{key}_labels"].dtype == np.int32
        assert outputs[f"{key}_context"].dtype == np.int32
        np.testing.assert_array_equal(outputs[f"{key}_labels"], expected["labels"])
        np.testing.assert_array_equal(outputs[f"{key}_context"], expected["context"])
        np.testing.assert_allclose(outputs[f"{key}_probabilities"], expected["probabilities"],
                                   atol=1e-5)
    for name in ("labels", "context", "probabilities"):
        np.testing.assert_array_equal(outputs[f"bytes_{name}"], outputs[f"a_{name}"])


def test_invalid_requests_fail_with_a_message_naming_the_problem(exported):
    folder = exported[0]
    errors = json.loads((folder / "errors.json").read_text())
    assert "expected to be a uint8 tensor but is a float tensor" in errors["float32"]
    assert "InvalidArgumentError" in errors["channels"]
    assert "images must have 3 channels" in errors["channels"]
    assert "images must be at most 2048x2048 pixels" in errors["too_large"]
    assert "same height and width" in errors["mixed_sizes"]
    assert "InvalidArgumentError" in errors["not_an_image"]


def test_saved_model_cli_lists_both_signatures(exported):
    returncode, stdout, stderr = exported[4]["show"]
    assert returncode == 0, stderr
    default = stdout.split("signature_def['serving_default']")[1]
    assert "inputs['images']" in default and "DT_UINT8" in default
    assert "shape: (-1, -1, -1, 3)" in default.split("outputs[")[0]
    encoded = stdout.split("signature_def['serving_bytes']")[1].split("signature_def[")[0]
    assert "inputs['image_bytes']" in encoded and "DT_STRING" in encoded
    for signature in (default, encoded):
        for output in ("labels", "context", "probabilities"):
            assert f"outputs['{output}']" in signature


def test_probabilities_are_left_out_unless_asked_for(exported):
    folder, _, _, reference, results = exported
    assert results["lean"][0] == 0, results["lean"][2]
    loaded = tf.saved_model.load(str(folder / "lean" / "7"))
    outputs = loaded.signatures["serving_default"](
        images=tf.constant(np.load(folder / "inputs.npz")["a"])
    )
    assert sorted(outputs) == ["context", "labels"]
    np.testing.assert_array_equal(outputs["labels"], reference["a"]["labels"])
    np.testing.assert_array_equal(outputs["context"], reference["a"]["context"])


def test_existing_version_and_missing_checkpoint_are_refused(exported):
    folder, export_dir, _, _, results = exported
    assert str(export_dir / "7") in cli_error_line(results["again"])
    assert str(folder / "nowhere") in cli_error_line(results["missing"])
    assert "--input_scale must be a positive number" in cli_error_line(results["scale"])
    assert not (folder / "other").exists()
    # os.makedirs would have taken the URL for a local folder "gs:" in the working directory.
    assert f"--export_dir={URL}/serving: outputs are written to local paths only" in (
        cli_error_line(results["url"]))
    assert not (folder / "gs:").exists()


def test_input_scale_runs_the_network_on_the_resized_image_and_answers_at_full_size():
    net = _net()
    images = np.random.default_rng(1).integers(0, 256, (1, 37, 53, 3), dtype=np.uint8)
    # 37 x 53 at scale 0.5, rounded half up: 19 x 27.
    small = tf.compat.v1.image.resize_bilinear(
        preprocessing.normalize_image(images), (19, 27), align_corners=True
    )
    outputs = net(small, num_steps=2)
    logits = tf.compat.v1.image.resize_bilinear(outputs["logits"][2], (37, 53),
                                                align_corners=True)
    expected = np.argmax(logits, -1)
    assert len(np.unique(expected)) >= 3

    served = exporter.ServingModule(net, 2, fast=False, input_scale=0.5).segment(
        tf.constant(images)
    )
    np.testing.assert_array_equal(served["labels"], expected)
    labels, context = predict.make_predictor(net, 2, input_scale=0.5)(tf.constant(images[0]))
    np.testing.assert_array_equal(labels[2], expected[0])
    np.testing.assert_array_equal(context[1], served["context"][0])
