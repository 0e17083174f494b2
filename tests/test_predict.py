"""Prediction: the rendered images by hand, and the CLI's files against the model run here."""

import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import cli_error_line, varied_tiny_net

from ciss_tf import predict
from ciss_tf.data import preprocessing, synthetic
from ciss_tf.modeling import checkpoints
from ciss_tf.tools import command_flags

WHITE = [255, 255, 255]


def _net():
    return varied_tiny_net(synthetic.NUM_CLASSES)


def test_render_paints_classes_uncertain_pixels_white_and_lays_out_the_comparison():
    palette = np.array([[12, 20, 32], [40, 52, 60], [72, 80, 92]], np.uint8)
    image = np.full((2, 3, 3), 100, np.uint8)
    labels = np.array([[[0, 1, 2], [2, 1, 0]], [[1, 1, 1], [2, 2, 2]]])
    context = np.array([[[0, 1, 3], [2, 0, 0]]])  # 0 = uncertain, k = class k - 1 kept
    out = predict.render(image, labels, context, palette, alpha=0.25)
    assert set(out) == {"pred_t0", "pred_t1", "context_t1", "overlay_t1", "compare"}
    np.testing.assert_array_equal(out["pred_t0"], palette[labels[0]])
    np.testing.assert_array_equal(out["context_t1"], [
        [WHITE, palette[0], palette[2]], [palette[1], WHITE, WHITE],
    ])
    # 0.75 * 100 + 0.25 * colour of the prediction at the last step.
    np.testing.assert_array_equal(out["overlay_t1"][0, 0], [85, 88, 90])
    np.testing.assert_array_equal(out["overlay_t1"][1, 2], [93, 95, 98])
    np.testing.assert_array_equal(out["compare"], np.concatenate(
        [image, out["pred_t0"], out["context_t1"], out["pred_t1"]], axis=1
    ))
    single = predict.render(image, labels[:1], context[:0], palette)
    assert set(single) == {"pred_t0", "overlay_t0", "compare"}
    assert single["compare"].shape == (2, 6, 3)


def _start(args, cwd=None):
    return subprocess.Popen(
        [sys.executable, "-m", "ciss_tf.predict", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=cwd,
    )


def _finish(process):
    stdout, stderr = process.communicate(timeout=600)
    return process.returncode, stdout, stderr


def _read_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def test_cli_writes_predictions_context_maps_overlay_and_comparison(tmp_path):
    net = _net()
    prefix = checkpoints.save_model(net, str(tmp_path / "ckpt-1"))
    flagfile = tmp_path / "experiment.flags"
    flagfile.write_text("--preset=tiny\n--dataset=synthetic\n")
    rng = np.random.default_rng(0)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rgba = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    cv2.imwrite(str(inputs / "a.png"), rgba)  # alpha is dropped
    cv2.imwrite(str(inputs / "b.jpg"), rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
    (inputs / "notes.txt").write_text("not an image")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    common = [f"--flagfile={flagfile}", f"--checkpoint={prefix}"]
    out = tmp_path / "out"
    runs = [
        _start([*common, f"--input={inputs}", f"--output_dir={out}", "--num_steps=2"]),
        _start([*common, f"--input={tmp_path / 'missing.png'}", f"--output_dir={out}-2"]),
        _start([*common, f"--input={broken}", f"--output_dir={out}-3"]),
        _start([*common, f"--input={inputs}", "--output_dir=gs://no-such-bucket/out"],
               cwd=tmp_path),
    ]
    images = {
        "a": _read_rgb(inputs / "a.png"),
        "b": tf.io.decode_jpeg((inputs / "b.jpg").read_bytes(), channels=3).numpy(),
    }
    expected = {}
    for stem, image in images.items():
        size = image.shape[:2]
        outputs = net(preprocessing.normalize_image(image)[tf.newaxis], num_steps=2)
        logits = tf.compat.v1.image.resize_bilinear(outputs["logits"][:, 0], size,
                                                    align_corners=True)
        context = tf.compat.v1.image.resize_nearest_neighbor(
            outputs["context"][:, 0, ..., tf.newaxis], size, align_corners=True
        )[..., 0]
        expected[stem] = (np.argmax(logits, -1), context.numpy())
    ok, missing, bad, remote = (_finish(run) for run in runs)

    assert ok[0] == 0, ok[2]
    suffixes = ["pred_t0", "pred_t1", "pred_t2", "context_t1", "context_t2", "overlay_t2",
                "compare"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}_{suffix}.png" for stem in images for suffix in suffixes
    )
    palette = synthetic.PALETTE
    for stem, image in images.items():
        labels, context = expected[stem]
        height, width = image.shape[:2]
        for t in range(3):
            np.testing.assert_array_equal(_read_rgb(out / f"{stem}_pred_t{t}.png"),
                                          palette[labels[t]])
        for t in (1, 2):
            painted = _read_rgb(out / f"{stem}_context_t{t}.png")
            uncertain = context[t - 1] == 0
            assert 0.1 < uncertain.mean() < 0.9
            assert np.all(painted[uncertain] == WHITE)
            np.testing.assert_array_equal(painted[~uncertain],
                                          palette[context[t - 1][~uncertain] - 1])
        overlay = _read_rgb(out / f"{stem}_overlay_t2.png").astype(np.float64)
        np.testing.assert_allclose(overlay, 0.5 * image + 0.5 * palette[labels[2]], atol=0.5)
        compare = _read_rgb(out / f"{stem}_compare.png")
        assert compare.shape == (height, 4 * width, 3)
        np.testing.assert_array_equal(compare[:, :width], image)
        np.testing.assert_array_equal(compare[:, 2 * width : 3 * width],
                                      _read_rgb(out / f"{stem}_context_t2.png"))

    assert str(tmp_path / "missing.png") in cli_error_line(missing)
    assert str(broken / "c.png") in cli_error_line(bad)
    assert not (tmp_path / "out-3").exists()
    assert "--output_dir=gs://no-such-bucket/out: outputs are written to local paths only" in (
        cli_error_line(remote))
    assert not (tmp_path / "gs:").exists()


def test_inputs_with_the_same_stem_are_refused(tmp_path):
    for name in ("x.png", "x.jpg"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match="same output files"):
        predict.list_images(str(tmp_path))


@pytest.mark.parametrize("form", ["one_argument", "two_arguments"])
def test_parse_flags_drops_training_flags_of_a_flagfile_in_either_form(tmp_path, monkeypatch,
                                                                      form):
    flag_values = flags.FlagValues()
    flags.DEFINE_string("checkpoint", None, "", flag_values=flag_values)
    flags.DEFINE_integer("num_steps", 0, "", flag_values=flag_values)
    monkeypatch.setattr(flags, "FLAGS", flag_values)
    flagfile = tmp_path / "experiment.flags"
    flagfile.write_text("--checkpoint=ckpt\n--stage=ciss\n--unroll_steps=8\n")
    directive = ([f"--flagfile={flagfile}"] if form == "one_argument"
                 else ["--flagfile", str(flagfile)])
    assert command_flags.parse_flags(["tool", *directive, "--num_steps", "2"]) == ["tool"]
    assert (flag_values.checkpoint, flag_values.num_steps) == ("ckpt", 2)


def test_parse_flags_names_a_flagfile_flag_without_its_file(monkeypatch):
    monkeypatch.setattr(flags, "FLAGS", flags.FlagValues())
    with pytest.raises(SystemExit, match="^error: .*--flagfile"):
        command_flags.parse_flags(["tool", "--flagfile"])
