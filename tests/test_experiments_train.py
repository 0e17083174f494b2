"""Every experiment flagfile takes a training step, shrunk to the tiny preset, in process."""

import contextlib
import dataclasses
import functools
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf import metrics, train
from ciss_tf.data import datasets, input_pipeline
from ciss_tf.modeling import checkpoints, config, ops
from ciss_tf.tools import evaluate_tool
from tests.helpers.cli import ROOT
from tests.helpers.training_runs import run
from tests.test_experiments import FLAGFILES

# Each flagfile's own settings (stage, optimizer, context mode, rewards, learning rates,
# image panels), shrunk to the tiny preset on synthetic records so that one step is cheap.
SHRUNK = [
    "--preset=tiny", "--dataset=synthetic", "--crop_size=48,48", "--batch_size=2",
    "--max_steps=1", "--log_every=1",
]
# T is shrunk too: every T >= 2 runs the same unrolled code as T = 2 (T = 0 and 1 stay).
MAX_TEST_UNROLL = 2


def _fresh_model(model_config, seed, init_checkpoint, base_init):
    """The model the trainer builds from these settings, at its initial weights."""
    keras.utils.set_random_seed(seed)
    model = config.build_model(
        model_config, datasets.get_dataset_info("synthetic").num_classes, (48, 48)
    )
    if model_config.stage == "ciss" and init_checkpoint:  # as the trainer starts stage 2
        checkpoints.restore_feature_net(model, init_checkpoint)
        if base_init == "pspnet":
            checkpoints.restore_base_net_from_pspnet_head(model, init_checkpoint)
    return model


# For the tests that only read it: built once per settings (the sweeps share one).
_initial_model = functools.cache(_fresh_model)


@pytest.fixture(scope="module")
def take_step(synthetic_records, tmp_path_factory):
    """`take_step(flagfile)`: the flagfile's shrunk `TrainConfig`, trained one step.

    Returns `(cfg, model_dir, terms)`. Stage 2 starts from a one-step stage 1 (the
    demo_pspnet flagfile's run), as real runs do. Flagfiles whose shrunk settings are equal
    (camvid_t8 is camvid at T = 2, the three ImageNet stage-1 recipes are one on the tiny
    preset) are one run, trained once.
    """
    runs = {}

    def step(path):
        with contextlib.chdir(ROOT):  # flagfiles include each other relative to the root
            cfg = train.parse_config([f"--flagfile={path}", *SHRUNK,
                                      f"--data_dir={synthetic_records}", "--model_dir=unset"])
        stage1 = (step(ROOT / "experiments" / "demo_pspnet.flags")[1]
                  if cfg.model.stage == "ciss" else None)
        cfg = dataclasses.replace(cfg, model_dir=None, init_checkpoint=stage1,
                                  unroll_steps=min(cfg.unroll_steps, MAX_TEST_UNROLL))
        if cfg not in runs:
            model_dir = str(tmp_path_factory.mktemp(path.stem))
            trained = dataclasses.replace(cfg, model_dir=model_dir)
            runs[cfg] = trained, model_dir, run(trained)
        return runs[cfg]

    return step


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: p.stem)
def test_flagfile_takes_a_training_step(path, take_step):
    cfg, model_dir, terms = take_step(path)
    stage, steps = cfg.model.stage, cfg.unroll_steps
    initial = _initial_model(cfg.model, cfg.seed, cfg.init_checkpoint, cfg.base_init)
    assert np.isfinite(terms["total"])
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "ckpt-1"))
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


def test_baseline_flagfile_trains_and_evaluates_at_t0(synthetic_records, take_step,
                                                      tmp_path):
    # Table 4's Baseline end to end: trained with T = 0 (its flagfile's step above), then
    # scored by the evaluation the evaluate command runs (its config from the same
    # flagfile) at t = 0 exactly as the Base Net's own argmax scores.
    cfg, model_dir, _ = take_step(ROOT / "experiments" / "ade20k_baseline.flags")
    model = _fresh_model(cfg.model, cfg.seed, cfg.init_checkpoint, cfg.base_init)
    tf.train.Checkpoint(model=checkpoints.model_variables(model)).restore(
        os.path.join(model_dir, "ckpt-1")
    ).assert_existing_objects_matched()
    output = tmp_path / "eval.json"
    report = evaluate_tool.run_evaluation(evaluate_tool.EvalConfig(
        model=cfg.model, checkpoint=model_dir, data_dir=synthetic_records,
        dataset=cfg.data.dataset, eval_steps=(0,), scales=(cfg.input_scale,),
        output_json=str(output),
    ))
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
    assert list(scores) == ["0"] and evaluate_tool.json_ready(report)["steps"] == scores
    np.testing.assert_allclose(scores["0"]["miou"], expected, rtol=1e-6)
