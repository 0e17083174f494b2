"""ciss_tf.export, the command: a checkpoint to a versioned SavedModel, refusals, and its one
`error:` line on bad input (the SavedModel itself: test_exporter.py)."""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import cli_error_line, run_cli

from ciss_tf import export
from ciss_tf.modeling import config
from ciss_tf.serving import exporter

URL = "gs://no-such-bucket"
TINY = config.ModelConfig(preset="tiny")


def test_checkpoint_exports_as_its_step_without_probabilities_unless_asked(
        varied_net, varied_checkpoint, tmp_path, capsys):
    export_dir = tmp_path / "serving"
    target = export.export_checkpoint(TINY, "synthetic", varied_checkpoint, str(export_dir))
    assert sorted(os.listdir(export_dir)) == ["7"]  # the checkpoint's step; no leftovers
    assert target == str(export_dir / "7")
    assert capsys.readouterr().out.strip().splitlines()[-1] == target

    images = np.random.default_rng(0).integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    outputs = tf.saved_model.load(target).signatures["serving_default"](
        images=tf.constant(images)
    )
    # The checkpoint's net, served: as the plain graph of the net built here.
    expected = exporter.ServingModule(varied_net, 2, fast=False).segment(tf.constant(images))
    assert sorted(outputs) == ["context", "labels"]
    np.testing.assert_array_equal(outputs["labels"], expected["labels"])
    np.testing.assert_array_equal(outputs["context"], expected["context"])

    with pytest.raises(ValueError, match=f"{export_dir / '7'} exists already"):
        export.export_checkpoint(TINY, "synthetic", varied_checkpoint, str(export_dir))


def test_a_remote_export_dir_is_refused_before_writing(varied_checkpoint, tmp_path,
                                                      monkeypatch):
    # os.makedirs would have taken the URL for a local folder "gs:" in the working directory.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=f"--export_dir={URL}/serving: outputs are written "
                                         "to local paths only"):
        export.export_checkpoint(TINY, "synthetic", varied_checkpoint, f"{URL}/serving")
    assert not (tmp_path / "gs:").exists()


def test_cli_reports_bad_input_in_one_error_line(tmp_path):
    flagfile = tmp_path / "experiment.flags"
    flagfile.write_text("--preset=tiny\n--dataset=synthetic\n")
    result = run_cli("ciss_tf.export", f"--flagfile={flagfile}",
                     f"--checkpoint={tmp_path / 'nowhere'}", f"--export_dir={tmp_path / 'other'}",
                     check=False)
    assert str(tmp_path / "nowhere") in cli_error_line(result)
    assert not (tmp_path / "other").exists()
