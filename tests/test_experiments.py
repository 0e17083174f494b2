"""Every experiment flagfile parses, builds its model and takes a training step."""

import dataclasses
import functools
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf import metrics, train
from ciss_tf.data import datasets, input_pipeline
from ciss_tf.modeling import checkpoints, config, ops
from ciss_tf.training import trainer

ROOT = Path(__file__).resolve().parents[1]
FLAGFILES = sorted((ROOT / "experiments").glob("*.flags"))


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
    cfg = train.parse_config([f"--flagfile={path}"])
    assert cfg.data.data_dir is None and cfg.model_dir is None  # no machine paths
    info = datasets.get_dataset_info(cfg.data.dataset)
    height, width = cfg.data.crop_size
    assert height > 0 and width > 0 and cfg.data.batch_size > 0
    model = cfg.model
    shapes = _model_outputs(
        model.stage, model.preset, cfg.data.dataset, model.context_mode, cfg.unroll_steps,
        model.random_keep_rate,
    )
    assert shapes["logits"][-1] == info.num_classes
    if model.stage == "ciss":
        assert cfg.optimizer.context_learning_rate <= cfg.optimizer.base_learning_rate
        assert ("policy_logits" in shapes) == (model.context_mode == "learned")


def test_ablations_override_only_what_they_study(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = train.parse_config(["--flagfile=experiments/ade20k_gamma_01.flags"])
    assert (cfg.reward.gamma == 0.1 and cfg.reward.lambda2 == 0.05
            and cfg.optimizer.base_learning_rate == 2e-3)
    cfg = train.parse_config(["--flagfile=experiments/ade20k_pmap.flags"])
    assert cfg.model.context_mode == "pmap" and cfg.data.dataset == "ade20k"
    cfg = train.parse_config(["--flagfile=experiments/camvid.flags"])
    recipe = (cfg.max_steps, cfg.unroll_steps, cfg.optimizer.base_learning_rate)
    cfg = train.parse_config(["--flagfile=experiments/camvid_random_gate.flags"])
    assert (cfg.model.context_mode, cfg.model.random_keep_rate) == ("random", 0.9)
    assert (cfg.max_steps, cfg.unroll_steps, cfg.optimizer.base_learning_rate) == recipe


# Each flagfile's own settings (stage, optimizer, context mode, rewards, learning rates,
# image panels), shrunk to the tiny preset on synthetic records so that one step is cheap.
SHRUNK = [
    "--preset=tiny", "--dataset=synthetic", "--crop_size=48,48", "--batch_size=2",
    "--max_steps=1", "--log_every=1",
]
# T is shrunk too: every T >= 2 runs the same unrolled code as T = 2 (T = 0 and 1 stay).
MAX_TEST_UNROLL = 2


@pytest.fixture
def no_graph_optimizer():
    """One step of each graph: Grappler's rewrites would cost more than they save."""
    saved = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    yield
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": saved.get("disable_meta_optimizer", False)}
    )


def _fresh_model(cfg):
    """The model the trainer builds from `cfg`, at its initial weights."""
    keras.utils.set_random_seed(cfg.seed)
    model = config.build_model(
        cfg.model, datasets.get_dataset_info("synthetic").num_classes, (48, 48)
    )
    if cfg.model.stage == "ciss" and cfg.init_checkpoint:  # as the trainer starts stage 2
        checkpoints.restore_feature_net(model, cfg.init_checkpoint)
        if cfg.base_init == "pspnet":
            checkpoints.restore_base_net_from_pspnet_head(model, cfg.init_checkpoint)
    return model


@pytest.fixture(scope="module")
def stage1_checkpoint(synthetic_records, tmp_path_factory):
    """A tiny stage-1 PSPNet (one step) that the stage-2 flagfiles start from."""
    model_dir = tmp_path_factory.mktemp("stage1")
    trainer.train(train.parse_config([
        f"--flagfile={ROOT / 'experiments' / 'demo_pspnet.flags'}", *SHRUNK,
        f"--data_dir={synthetic_records}", f"--model_dir={model_dir}",
    ]))
    return str(model_dir)


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: p.stem)
def test_flagfile_takes_a_training_step(path, synthetic_records, stage1_checkpoint, tmp_path,
                                       monkeypatch, no_graph_optimizer):
    monkeypatch.chdir(ROOT)
    model_dir = tmp_path / "run"
    cfg = train.parse_config([f"--flagfile={path}", *SHRUNK,
                              f"--data_dir={synthetic_records}", f"--model_dir={model_dir}"])
    stage, steps = cfg.model.stage, min(cfg.unroll_steps, MAX_TEST_UNROLL)
    cfg = dataclasses.replace(
        cfg, unroll_steps=steps, init_checkpoint=stage1_checkpoint if stage == "ciss" else None
    )  # stage 2 starts from stage 1, as real runs do
    terms = trainer.train(cfg)
    initial = _fresh_model(cfg)
    assert np.isfinite(terms["total"])
    reader = tf.train.load_checkpoint(str(model_dir / "ckpt-1"))
    variables = checkpoints.model_variables(initial)
    assert len(variables) == len(initial.variables)

    def moved(net):
        """Whether any of the net's variables differs from its initial value after the step."""
        prefix = f"{net.name}/"
        keys = [key for key in variables if key.startswith(prefix)]
        assert keys, prefix
        return any(
            not np.array_equal(reader.get_tensor(checkpoints.stored_name(key)),
                               variables[key].numpy())
            for key in keys
        )

    if stage == "pspnet":
        assert moved(initial.feature_net) and moved(initial.head)
        return
    assert sorted(k for k in terms if k.startswith("segmentation_t")) == sorted(
        f"segmentation_t{t}" for t in range(steps + 1)
    )
    assert ("policy" in terms) == (initial.context_net is not None)
    assert moved(initial.base_net)
    # Only what has a gradient moves: with T = 0 (the Baseline) neither the Bias Net nor the
    # Context Net is updated or decayed; the frozen feature net never is.
    assert moved(initial.bias_net) == (steps > 0)
    if initial.context_net is not None:
        assert moved(initial.context_net)
    assert not moved(initial.feature_net)


def test_baseline_flagfile_trains_and_evaluates_at_t0(synthetic_records, tmp_path,
                                                      monkeypatch, no_graph_optimizer):
    # Table 4's Baseline end to end: trained with T = 0, then scored by the evaluate command
    # at t = 0 exactly as the Base Net's own argmax scores in this process.
    monkeypatch.chdir(ROOT)
    model_dir = tmp_path / "baseline"
    flagfile = "--flagfile=experiments/ade20k_baseline.flags"
    cfg = train.parse_config([flagfile, *SHRUNK, f"--data_dir={synthetic_records}",
                              f"--model_dir={model_dir}"])
    trainer.train(cfg)
    model = _fresh_model(cfg)
    tf.train.Checkpoint(model=checkpoints.model_variables(model)).restore(
        str(model_dir / "ckpt-1")
    ).assert_existing_objects_matched()
    output = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, "-m", "ciss_tf.evaluate", flagfile, "--preset=tiny",
         "--dataset=synthetic", f"--data_dir={synthetic_records}",
         f"--checkpoint={model_dir}", "--eval_steps=0", f"--output_json={output}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    num_classes = datasets.get_dataset_info("synthetic").num_classes
    confusion = np.zeros([num_classes, num_classes], np.int64)
    pattern = input_pipeline.split_file_pattern(synthetic_records, "val")
    for batch in input_pipeline.eval_dataset(pattern, num_classes=num_classes):
        # The Base Net's own argmax, resized back as the original's Interp (corners aligned).
        logits = model(batch["image"], training=False, num_steps=0)["logits"][-1]
        predicted = tf.argmax(ops.resize_bilinear(logits, ops.spatial_size(batch["image"])), -1)
        confusion += metrics.confusion_matrix(batch["label"], predicted, num_classes)
    expected = metrics.segmentation_scores(confusion)["miou"]
    scores = json.loads(output.read_text())["steps"]
    assert list(scores) == ["0"]
    np.testing.assert_allclose(scores["0"]["miou"], expected, rtol=1e-6)
