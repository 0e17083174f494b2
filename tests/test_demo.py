"""The embedded demo: scoring and gate statistics, the figure, and a tiny run end to end."""

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf import train
from ciss_tf.data import datasets, input_pipeline
from ciss_tf.evaluation import evaluator
from ciss_tf.tools import demo, demo_report, greedy_eval
from ciss_tf.training import run_folder
from tests.helpers.cli import cli_error_line, run_cli

PALETTE = datasets.get_dataset_info("synthetic").palette


def _stub_unroll(labels, small_labels, context, actions):
    """A `greedy_unroll` stand-in returning fixed outputs (for a batch of one image)."""
    arrays = {
        "labels": labels, "small_labels": small_labels, "context": context, "actions": actions
    }
    outputs = {name: tf.constant(value, tf.int32) for name, value in arrays.items()}
    return lambda images: outputs


def test_evaluate_run_scores_steps_and_gate_against_hand_counts():
    steps = len(greedy_eval.EVAL_STEPS)
    labels = np.zeros([1, 16, 16], np.int32)
    labels[0, :, 8:] = 1
    labels[0, 0, 0] = 255  # ignored: never counted
    # Step t predicts class 1 on the first t columns of the left half (wrong), else right.
    predictions = np.stack([labels.clip(0, 1) for _ in range(steps)])
    for t in range(steps):
        predictions[t, 0, :, :t] = 1
    # Stride-8 grid 2 x 2: labels (nearest, corners aligned) [[255, 1], [0, 1]].
    small = np.array([[[[0, 1], [0, 1]]]] * steps, np.int32)
    small[greedy_eval.GATE_STEP, 0, 1, 0] = 1  # wrong at (1, 0); (0, 0) is ignored
    actions = np.zeros([steps - 1, 1, 2, 2], np.int32)
    # Keeps the ignored pixel, a right and the wrong one.
    actions[greedy_eval.GATE_STEP, 0] = [[1, 1], [1, 0]]
    unroll = _stub_unroll(predictions, small, actions, actions)
    dataset = [{"image": tf.zeros([1, 16, 16, 3]), "label": tf.constant(labels)}]

    scores, gate, errors = greedy_eval.evaluate_run(unroll, dataset, num_classes=2)

    for t in greedy_eval.EVAL_STEPS:
        wrong = 16 * t - (1 if t else 0)  # minus the ignored pixel once it is predicted
        class0 = 16 * 8 - 1
        iou0 = (class0 - wrong) / class0
        iou1 = 128 / (128 + wrong)
        assert scores[str(t)]["miou"] == pytest.approx((iou0 + iou1) / 2)
        assert scores[str(t)]["pixel_accuracy"] == pytest.approx(1 - wrong / 255)
    assert gate == pytest.approx(
        {"kept": 3 / 4, "kept_where_right": 1 / 2, "kept_where_wrong": 1.0, "pmap_error": 1 / 3}
    )
    assert errors == [0]


def test_figure_panel_layout_and_uncertain_pixels_white():
    steps = max(demo_report.FIGURE_STEPS) + 1
    labels = np.stack([np.full([1, 16, 24], t, np.int32) for t in range(steps + 1)])
    context = np.zeros([steps, 1, 2, 3], np.int32)
    context[:, 0, 0, 0] = 3  # class 2 kept at the top-left cell, the rest uncertain
    unroll = _stub_unroll(labels, labels[:, :, ::8, ::8], context, (context > 0).astype(int))
    image = np.zeros([1, 16, 24, 3], np.float32)  # the mean pixel after normalisation
    batch = {"image": tf.constant(image), "label": tf.fill([1, 16, 24], 4)}

    panel = demo_report.figure_panel(unroll, [batch, batch], PALETTE)

    assert panel.shape == (*demo_report.figure_size(16, 24, 2), 3) and panel.dtype == np.uint8
    zoom, gap = demo_report.FIGURE_ZOOM, demo_report.FIGURE_GAP
    tile_h, tile_w = 16 * zoom, 24 * zoom

    def tile(row, column):
        top, left = demo_report.FIGURE_HEADER + row * (tile_h + gap), column * (tile_w + gap)
        return panel[top:top + tile_h, left:left + tile_w]

    for row in range(2):
        np.testing.assert_array_equal(tile(row, 0), np.broadcast_to((124, 117, 104), (32, 48, 3)))
        assert (tile(row, 1) == PALETTE[4]).all()
        for k, t in enumerate(demo_report.FIGURE_STEPS):
            assert (tile(row, 2 + 2 * k) == PALETTE[t]).all()
            context_tile = tile(row, 3 + 2 * k)
            # Nearest neighbour with corners aligned: the top-left cell covers 8 x 6 pixels.
            assert (context_tile[: 8 * zoom, : 6 * zoom] == PALETTE[2]).all()
            assert (context_tile[8 * zoom:] == 255).all()
            assert (context_tile[:, 6 * zoom:] == 255).all()


def test_a_run_is_the_flagfile_with_overrides_winning(tmp_path):
    flagfile = tmp_path / "x.flags"
    flagfile.write_text("# comment\n--stage=ciss\n--max_steps=600\n")
    assert train.parse_config([f"--flagfile={flagfile}"]).max_steps == 600
    assert train.parse_config([f"--flagfile={flagfile}", "--max_steps=3"]).max_steps == 3
    flagfile.write_text("--stage=ciss\n--unroll_steps=x\n")
    with pytest.raises(demo.DemoError, match="unroll_steps"):
        demo.train_run("x", str(flagfile), str(tmp_path / "run"), [], train.parse_config)


def test_demo_flagfiles_train_every_run_for_the_same_steps():
    stage2 = os.path.join(demo._EXPERIMENTS, "demo.flags")
    text = Path(stage2).read_text()
    # Budget and capacity are equal by construction: the controls differ by one flag only.
    assert "--context_mode" not in text and "--preset=tiny" in text
    for run in demo.DEFAULT_RUNS + demo.EXTRA_RUNS:
        assert len(run.flags) <= 1
        assert not any(f.startswith(("--max_steps", "--batch_size", "--preset", "--crop_size",
                                     "--unroll_steps")) for f in run.flags)


def test_tiny_demo_end_to_end(tmp_path, capsys):
    workdir = tmp_path / "demo"
    started = time.monotonic()
    returned = demo.run_demo(demo.DemoConfig(workdir=str(workdir), scale="test"),
                             train.parse_config)
    elapsed = time.monotonic() - started
    stdout = capsys.readouterr().out
    assert "Table 1" in stdout and "Table 4" in stdout

    results = json.loads((workdir / "results.json").read_text())
    assert results["runs"] == returned["runs"]
    assert set(results["steps"]) == {"0", "2", "4", "6"}
    assert {"baseline", "no_context", "baseline_pmap", "ciss"} <= set(results["ablations"])
    # Seconds of this run (not milliseconds, not a stale file's).
    assert 0 < results["seconds"] <= elapsed
    # The demo's greedy scores equal the evaluator's (another code path: the Segmenter and
    # its confusion matrices) on the run's checkpoint and the same val images.
    model, _, _ = run_folder.load_model(str(workdir / "ciss"))
    pattern = input_pipeline.split_file_pattern(str(workdir / "data"), "val")
    evaluated = evaluator.evaluate_model(
        model, input_pipeline.eval_dataset(pattern, num_classes=8), num_classes=8,
        eval_steps=(0, 2))["steps"]
    for t in ("0", "2"):
        for key in ("miou", "pixel_accuracy"):
            assert results["runs"]["ciss"][t][key] == pytest.approx(
                evaluated[t][key], abs=1e-6), (t, key)
    # No context feeds the same all-uncertain map at every step: steps >= 1 are one output.
    no_context = results["runs"]["no_context"]
    assert no_context["2"] == no_context["4"] == no_context["6"]
    # The contract's headline numbers are the right steps of the right runs.
    ciss = results["runs"]["ciss"]
    assert results["ablations"]["baseline"] == ciss["0"]["miou"]
    assert results["ablations"]["ciss"] == ciss["2"]["miou"] == results["steps"]["2"]["miou"]
    assert results["ablations"]["no_context"] == results["runs"]["no_context"]["2"]["miou"]
    assert results["kept_fraction"] == results["gate"]["ciss"]["kept"]
    assert results["gate"]["no_context"]["kept"] == 0.0
    assert results["gate"]["baseline_pmap"]["kept"] == 1.0
    # The export, loaded back and fed encoded PNGs, scores what the in-process model does
    # (its fast path may flip an argmax tie on a boundary pixel).
    served = results["served"]
    assert Path(served["export"]).parent == workdir / "export"
    assert abs(served["miou"] - ciss["2"]["miou"]) < 0.01
    assert abs(served["pixel_accuracy"] - ciss["2"]["pixel_accuracy"]) < 0.002

    scale = demo.SCALES["test"]
    figure = cv2.imread(str(workdir / "figure.png"))
    expected = demo_report.figure_size(scale.image_size, scale.image_size,
                                       min(demo_report.FIGURE_IMAGES, scale.num_val))
    assert figure is not None and figure.shape == (*expected, 3)
    for run in ("pspnet", "ciss", "no_context", "baseline_pmap"):
        assert tf.io.gfile.glob(str(workdir / run / "train" / "events.out.tfevents.*")), run


def test_bad_workdir_exits_with_one_line(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    result = run_cli("ciss_tf.demo", f"--workdir={not_a_folder}", "--demo_scale=test",
                     check=False)
    assert str(not_a_folder) in cli_error_line(result)
