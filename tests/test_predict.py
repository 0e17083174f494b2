"""ciss_tf.predict: the rendered images by hand, the files written against the model run here
and the one `error:` line on bad input."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.data import preprocessing, synthetic
from ciss_tf.evaluation import visualize
from ciss_tf.modeling import config
from ciss_tf.tools import predict_tool
from tests.helpers.cli import cli_error_line, run_cli

WHITE = [255, 255, 255]
TINY = config.ModelConfig(preset="tiny")


def test_render_paints_classes_uncertain_pixels_white_and_lays_out_the_comparison():
    palette = np.array([[12, 20, 32], [40, 52, 60], [72, 80, 92]], np.uint8)
    image = np.full((2, 3, 3), 100, np.uint8)
    labels = np.array([[[0, 1, 2], [2, 1, 0]], [[1, 1, 1], [2, 2, 2]]])
    context = np.array([[[0, 1, 3], [2, 0, 0]]])  # 0 = uncertain, k = class k - 1 kept
    out = visualize.render(image, labels, context, palette, alpha=0.25)
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
    single = visualize.render(image, labels[:1], context[:0], palette)
    assert set(single) == {"pred_t0", "overlay_t0", "compare"}
    assert single["compare"].shape == (2, 6, 3)


def _read_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder holding an RGBA PNG, a JPEG and a text file."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "a.png"), rng.integers(0, 256, (37, 53, 4), dtype=np.uint8))
    cv2.imwrite(str(folder / "b.jpg"), rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_writes_predictions_context_maps_overlay_and_comparison(varied_net, varied_checkpoint,
                                                                inputs, tmp_path):
    out = tmp_path / "out"
    predict_tool.write_predictions(TINY, "synthetic", varied_checkpoint, str(inputs), str(out),
                              num_steps=2)
    images = {
        "a": _read_rgb(inputs / "a.png"),  # alpha is dropped
        "b": tf.io.decode_jpeg((inputs / "b.jpg").read_bytes(), channels=3).numpy(),
    }
    expected = {}
    for stem, image in images.items():
        size = image.shape[:2]
        outputs = varied_net(preprocessing.normalize_image(image)[tf.newaxis], num_steps=2)
        logits = tf.compat.v1.image.resize_bilinear(outputs["logits"][:, 0], size,
                                                    align_corners=True)
        context = tf.compat.v1.image.resize_nearest_neighbor(
            outputs["context"][:, 0, ..., tf.newaxis], size, align_corners=True
        )[..., 0]
        expected[stem] = (np.argmax(logits, -1), context.numpy())

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


def test_a_broken_input_or_a_remote_output_dir_writes_nothing(varied_checkpoint, inputs,
                                                              tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match=str(broken / "c.png")):
        predict_tool.write_predictions(TINY, "synthetic", varied_checkpoint, str(broken),
                                  str(tmp_path / "out-3"))
    assert not (tmp_path / "out-3").exists()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="--output_dir=gs://no-such-bucket/out: outputs are "
                                         "written to local paths only"):
        predict_tool.write_predictions(TINY, "synthetic", varied_checkpoint, str(inputs),
                                  "gs://no-such-bucket/out")
    assert not (tmp_path / "gs:").exists()


def test_cli_reports_bad_input_in_one_error_line(varied_checkpoint, tmp_path):
    flagfile = tmp_path / "experiment.flags"
    flagfile.write_text("--preset=tiny\n--dataset=synthetic\n")
    result = run_cli("ciss_tf.predict", f"--flagfile={flagfile}",
                     f"--checkpoint={varied_checkpoint}", f"--input={tmp_path / 'missing.png'}",
                     f"--output_dir={tmp_path / 'out'}", check=False)
    assert str(tmp_path / "missing.png") in cli_error_line(result)
    assert not (tmp_path / "out").exists()


def test_inputs_with_the_same_stem_are_refused(tmp_path):
    for name in ("x.png", "x.jpg"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match="same output files"):
        predict_tool.list_images(str(tmp_path))
