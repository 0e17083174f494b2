"""ciss_tf.export, the command: a checkpoint to a versioned SavedModel, refusals, and its one
`error:` line on bad input (the SavedModel itself: test_exporter.py)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.data import preprocessing
from ciss_tf.modeling import config
from ciss_tf.tools import export_tool
from tests.helpers.cli import cli_error_line, run_cli

URL = "gs://no-such-bucket"
TINY = config.ModelConfig(preset="tiny")


def test_checkpoint_exports_as_its_step_without_probabilities_unless_asked(
        varied_net, varied_checkpoint, tmp_path, capsys):
    export_dir = tmp_path / "serving"
    target = export_tool.export_checkpoint(TINY, "synthetic", varied_checkpoint, str(export_dir))
    assert sorted(os.listdir(export_dir)) == ["7"]  # the checkpoint's step; no leftovers
    assert target == str(export_dir / "7")
    assert capsys.readouterr().out.strip().splitlines()[-1] == target

    images = np.random.default_rng(0).integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    outputs = tf.saved_model.load(target).signatures["serving_default"](
        images=tf.constant(images)
    )
    # The checkpoint's net, served: the live net built here on the normalised images, its
    # step-2 logits and step-1 context map resized to the image with aligned corners (the
    # fast graph's folded convs round differently: nearly every pixel agrees).
    live = varied_net(preprocessing.normalize_image(images), num_steps=2)
    labels = np.argmax(tf.compat.v1.image.resize_bilinear(
        live["logits"][2], (37, 53), align_corners=True), -1)
    context = tf.compat.v1.image.resize_nearest_neighbor(
        live["context"][1][..., tf.newaxis], (37, 53), align_corners=True)[..., 0]
    assert sorted(outputs) == ["context", "labels"]
    assert (outputs["labels"].numpy() == labels).mean() > 0.99
    assert (outputs["context"].numpy() == context.numpy()).mean() > 0.99
    assert len(np.unique(labels)) >= 3 and len(np.unique(context)) >= 3

    with pytest.raises(ValueError, match=f"{export_dir / '7'} exists already"):
        export_tool.export_checkpoint(TINY, "synthetic", varied_checkpoint, str(export_dir))


def test_bfloat16_export_serves_the_float32_predictions_in_bfloat16(varied_checkpoint,
                                                                    tmp_path):
    float32 = export_tool.export_checkpoint(TINY, "synthetic", varied_checkpoint,
                                       str(tmp_path / "f32"), probabilities=True)
    bfloat16 = export_tool.export_checkpoint(TINY, "synthetic", varied_checkpoint,
                                        str(tmp_path / "bf16"), probabilities=True,
                                        mixed_precision="mixed_bfloat16")
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    images = tf.constant(
        np.random.default_rng(1).integers(0, 256, (2, 37, 53, 3), dtype=np.uint8))
    want, got = (tf.saved_model.load(path).signatures["serving_default"](images=images)
                 for path in (float32, bfloat16))
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in want.items()}
    # The graph computes in bfloat16 (8 significant bits): the probabilities differ, by
    # about bfloat16's rounding, and most labels agree.
    difference = float(tf.reduce_max(tf.abs(got["probabilities"] - want["probabilities"])))
    assert 1e-4 < difference < 0.1
    assert float(tf.reduce_mean(tf.cast(got["labels"] == want["labels"], tf.float32))) > 0.9
    graph = tf.saved_model.load(bfloat16).signatures["serving_default"].graph.as_graph_def()
    types = [tf.as_dtype(n.attr["T"].type) for f in graph.library.function
             for n in f.node_def if n.op == "Conv2D"]
    # The convs run in bfloat16 but for the float32 classifiers of the class logits.
    assert types.count(tf.bfloat16) > 3 * types.count(tf.float32) > 0


def test_a_remote_export_dir_is_refused_before_writing(varied_checkpoint, tmp_path,
                                                      monkeypatch):
    # os.makedirs would have taken the URL for a local folder "gs:" in the working directory.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=f"--export_dir={URL}/serving: outputs are written "
                                         "to local paths only"):
        export_tool.export_checkpoint(TINY, "synthetic", varied_checkpoint, f"{URL}/serving")
    assert not (tmp_path / "gs:").exists()


def test_cli_reports_bad_input_in_one_error_line(tmp_path):
    flagfile = tmp_path / "experiment.flags"
    flagfile.write_text("--preset=tiny\n--dataset=synthetic\n")
    result = run_cli("ciss_tf.export", f"--flagfile={flagfile}",
                     f"--checkpoint={tmp_path / 'nowhere'}", f"--export_dir={tmp_path / 'other'}",
                     check=False)
    assert str(tmp_path / "nowhere") in cli_error_line(result)
    assert not (tmp_path / "other").exists()
