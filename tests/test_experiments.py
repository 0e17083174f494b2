"""Every experiment flagfile parses and builds its model at full size.

Each one's training step, on the tiny preset: test_experiments_train.py.
"""

import functools

import pytest
import tensorflow as tf

from ciss_tf import train
from ciss_tf.data import datasets
from ciss_tf.modeling import config
from tests.helpers.cli import ROOT

FLAGFILES = sorted((ROOT / "experiments").glob("*.flags"))


@functools.cache
def _model_outputs(stage, preset, dataset, context_mode, num_steps, random_keep_rate):
    num_classes = datasets.get_dataset_info(dataset).num_classes
    if stage == "pspnet":
        model = config.build_pspnet(num_classes, preset)
        return {k: tuple(v.shape) for k, v in model(tf.zeros([1, 33, 33, 3])).items()}
    model = config.build_ciss_net(
        num_classes, preset, context_mode, random_keep_rate=random_keep_rate
    )
    outputs = model(tf.zeros([1, 33, 33, 3]), num_steps=num_steps)
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
    cfg = train.parse_config([f"--flagfile={path}"])
    assert cfg.data.data_dir is None and cfg.model_dir is None  # no machine paths
    info = datasets.get_dataset_info(cfg.data.dataset)
    height, width = cfg.data.crop_size
    assert height > 0 and width > 0 and cfg.data.batch_size > 0
    model = cfg.model
    # One step of the model: the same network for every T > 0 (built once per kind).
    shapes = _model_outputs(
        model.stage, model.preset, cfg.data.dataset, model.context_mode,
        min(cfg.unroll_steps, 1), model.random_keep_rate,
    )
    assert shapes["logits"][-1] == info.num_classes
    if model.stage == "ciss":
        assert cfg.optimizer.context_learning_rate <= cfg.optimizer.base_learning_rate
        assert ("policy_logits" in shapes) == (model.context_mode == "learned")


def test_ablations_override_only_what_they_study(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = train.parse_config(["--flagfile=experiments/ade20k_gamma_01.flags"])
    assert (cfg.loss.gamma == 0.1 and cfg.loss.lambda2 == 0.05
            and cfg.optimizer.base_learning_rate == 2e-3)
    cfg = train.parse_config(["--flagfile=experiments/ade20k_pmap.flags"])
    assert cfg.model.context_mode == "pmap" and cfg.data.dataset == "ade20k"
    cfg = train.parse_config(["--flagfile=experiments/camvid.flags"])
    recipe = (cfg.max_steps, cfg.unroll_steps, cfg.optimizer.base_learning_rate)
    cfg = train.parse_config(["--flagfile=experiments/camvid_random_gate.flags"])
    assert (cfg.model.context_mode, cfg.model.random_keep_rate) == ("random", 0.9)
    assert (cfg.max_steps, cfg.unroll_steps, cfg.optimizer.base_learning_rate) == recipe
