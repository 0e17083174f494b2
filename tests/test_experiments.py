"""Every experiment flagfile parses for the trainer and builds its model at a tiny input."""

import functools
from pathlib import Path

import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from ciss_tf import config, train  # noqa: F401  (defines the flags the files set)
from ciss_tf.data import datasets

ROOT = Path(__file__).resolve().parents[1]
FLAGFILES = sorted((ROOT / "experiments").glob("*.flags"))
FLAGS = flags.FLAGS


@functools.cache
def _model_outputs(stage, preset, dataset, context_mode, unroll_steps, random_keep_rate):
    num_classes = datasets.get_dataset_info(dataset).num_classes
    if stage == "pspnet":
        model = config.build_pspnet(num_classes, preset)
        return {k: tuple(v.shape) for k, v in model(tf.zeros([1, 33, 33, 3])).items()}
    model = config.build_ciss_net(
        num_classes, preset, context_mode, random_keep_rate=random_keep_rate
    )
    outputs = model(tf.zeros([1, 33, 33, 3]), num_steps=min(unroll_steps, 1))
    return {k: tuple(v.shape) for k, v in outputs.items()}


def test_there_is_a_flagfile_per_dataset_stage_and_ablation():
    names = {path.stem for path in FLAGFILES}
    for dataset in ("cityscapes", "ade20k", "pascal_context", "camvid", "demo"):
        assert {dataset, f"{dataset}_pspnet"} <= names
    assert {
        "ade20k_gamma_01", "ade20k_gamma_03", "ade20k_lambda2_0001", "ade20k_lambda2_0005",
        "ade20k_lambda2_001", "ade20k_lambda2_002", "ade20k_baseline", "ade20k_pmap",
        "ade20k_gated", "ade20k_no_context",
    } <= names


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: p.stem)
def test_flagfile_parses_and_builds(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # flagfiles include each other relative to the repository root
    text = path.read_text()
    assert text.startswith("#"), "each flagfile starts with a comment saying what it reproduces"
    with flagsaver.flagsaver():
        FLAGS(["train", f"--flagfile={path}"])
        assert FLAGS.data_dir is None and FLAGS.model_dir is None  # no machine paths
        info = datasets.get_dataset_info(FLAGS.dataset)
        height, width = (int(v) for v in FLAGS.crop_size)
        assert height > 0 and width > 0 and FLAGS.batch_size > 0
        shapes = _model_outputs(
            FLAGS.stage, FLAGS.preset, FLAGS.dataset, FLAGS.context_mode, FLAGS.unroll_steps,
            FLAGS.random_keep_rate,
        )
        assert shapes["logits"][-1] == info.num_classes
        if FLAGS.stage == "ciss":
            assert FLAGS.context_learning_rate <= FLAGS.base_learning_rate
            assert ("policy_logits" in shapes) == (FLAGS.context_mode == "learned")


def test_ablations_override_only_what_they_study(monkeypatch):
    monkeypatch.chdir(ROOT)
    with flagsaver.flagsaver():
        FLAGS(["train", "--flagfile=experiments/ade20k_gamma_01.flags"])
        assert FLAGS.gamma == 0.1 and FLAGS.lambda2 == 0.05 and FLAGS.base_learning_rate == 2e-3
    with flagsaver.flagsaver():
        FLAGS(["train", "--flagfile=experiments/ade20k_pmap.flags"])
        assert FLAGS.context_mode == "pmap" and FLAGS.dataset == "ade20k"
    with flagsaver.flagsaver():
        FLAGS(["train", "--flagfile=experiments/camvid.flags"])
        recipe = (FLAGS.max_steps, FLAGS.unroll_steps, FLAGS.base_learning_rate)
    with flagsaver.flagsaver():
        FLAGS(["train", "--flagfile=experiments/camvid_random_gate.flags"])
        assert (FLAGS.context_mode, FLAGS.random_keep_rate) == ("random", 0.9)
        assert (FLAGS.max_steps, FLAGS.unroll_steps, FLAGS.base_learning_rate) == recipe
