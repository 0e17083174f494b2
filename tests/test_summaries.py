"""`training.summaries` of a real run: the progress lines and every TensorBoard tag."""

import logging

import numpy as np
import tensorflow as tf
from training_runs import scalars, train


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
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-12")
