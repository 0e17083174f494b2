"""`training.summaries` of a real run: the progress lines and every TensorBoard tag."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers.training_runs import scalars, train


def test_overfits_a_few_images_and_logs_every_tag(synthetic_records, tmp_path, caplog):
    # Two images, no augmentation that changes them much: the segmentation loss must fall.
    caplog.set_level(logging.INFO, logger="absl")
    model_dir = tmp_path / "run"
    train(
        synthetic_records, model_dir, "--max_steps=12", "--min_scale=1.0", "--max_scale=1.0",
        "--base_learning_rate=0.05", "--context_learning_rate=0.01",
        "--image_summary_every=12", "--dropout=0",
    )
    losses = [
        float(line.split("segmentation ")[1].split()[0])
        for line in caplog.messages if " segmentation " in line
    ]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    tags = {tag for tag, _ in scalars(model_dir)}
    expected = {
        "loss/total", "loss/policy", "loss/value", "loss/entropy", "loss/segmentation",
        "loss/segmentation_t0", "loss/segmentation_t2", "loss/weight_decay", "rl/reward",
        "rl/value_estimate", "rl/policy_entropy", "rl/kept_fraction", "rl/return",
        "learning_rate/base", "learning_rate/context", "perf/steps_per_second",
        "perf/images_per_second", "steps/input_gt_pmap_context",
    }
    assert expected <= tags, expected - tags
    # The values: each step's scalars are the terms of its progress line, the
    # segmentation term is the sum of its steps t, the rates follow the poly schedule
    # (step k runs at lr (1 - (k - 1) / 12)^0.9), images per second = steps per second x 4.
    values = scalars(model_dir)
    lines = [line for line in caplog.messages if " segmentation " in line]
    for step, line in enumerate(lines, 1):
        fields = line.split()
        logged = dict(zip(fields[4::2], fields[5::2], strict=False))
        assert float(values["loss/total", step]) == pytest.approx(float(fields[3]), rel=1e-3)
        for term in ("policy", "value", "segmentation"):
            assert float(values[f"loss/{term}", step]) == pytest.approx(
                float(logged[term]), rel=1e-3, abs=1e-4), (step, term)
        assert float(values["loss/segmentation", step]) == pytest.approx(
            sum(float(values[f"loss/segmentation_t{t}", step]) for t in (0, 1, 2)), rel=1e-5)
        assert float(values["learning_rate/base", step]) == pytest.approx(
            0.05 * (1 - (step - 1) / 12) ** 0.9, rel=1e-5)
        assert float(values["learning_rate/context", step]) == pytest.approx(
            0.01 * (1 - (step - 1) / 12) ** 0.9, rel=1e-5)
        assert float(values["perf/images_per_second", step]) == pytest.approx(
            4 * float(values["perf/steps_per_second", step]), rel=1e-5)
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-12")
