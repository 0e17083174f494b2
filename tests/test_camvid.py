"""The CamVid experiment flagfiles, run for two steps each on a few real images.

Uses `../shared/camvid` (skipped when absent): TFRecords of 4 train and 2 val pairs, stage 1
(AdamW, `small` preset), stage 2 on its frozen features (both trained in this process, as
`python -m ciss_tf.train --flagfile=...` would), and the evaluate command on the stage-2
flagfile at the scale the flagfiles train at.
"""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_cli

from ciss_tf import train
from ciss_tf.data import datasets, input_pipeline, writer
from ciss_tf.evaluation import evaluator
from ciss_tf.modeling import checkpoints, config
from ciss_tf.training import trainer

CAMVID = ROOT.parent / "shared" / "camvid"

pytestmark = pytest.mark.skipif(not CAMVID.is_dir(), reason=f"{CAMVID} is absent")


def _subset(target, counts):
    """A CamVid-layout folder with the first `counts[split]` pairs of each split."""
    for split, count in counts.items():
        for folder in (split, f"{split}annot"):
            (target / folder).mkdir(parents=True)
            for name in sorted(os.listdir(CAMVID / split))[:count]:
                shutil.copyfile(CAMVID / folder / name, target / folder / name)


def _variables(prefix, start):
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith(start) and "OPTIMIZER_SLOT" not in name}


def test_camvid_flagfiles_train_both_stages_and_evaluate(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # flagfile paths are relative to the repository root
    _subset(tmp_path / "camvid", {"train": 4, "val": 2})
    data = tmp_path / "records"
    spec = datasets.get_dataset_info("camvid")
    writer.write_splits(spec.read_splits(str(tmp_path / "camvid")), label_map=spec.label_map,
                        label_hint=spec.label_hint, output_dir=str(data))
    short = [f"--data_dir={data}", "--batch_size=2", "--max_steps=2", "--log_every=1",
             "--image_summary_every=0"]
    terms = trainer.train(train.parse_config([
        "--flagfile=experiments/camvid_pspnet.flags", *short,
        f"--model_dir={tmp_path / 'pspnet'}",
    ]))
    assert np.isfinite(terms["total"])
    trainer.train(train.parse_config([
        "--flagfile=experiments/camvid.flags", *short, f"--model_dir={tmp_path / 'ciss'}",
        f"--init_checkpoint={tmp_path / 'pspnet'}",
    ]))
    out = tmp_path / "eval.json"
    # The evaluate command itself, on the experiment's flagfile (training flags in it
    # skipped, its model settings read).
    run_cli("ciss_tf.evaluate", "--flagfile=experiments/camvid.flags", f"--data_dir={data}",
            f"--checkpoint={tmp_path / 'ciss'}", "--eval_steps=0,2", "--eval_scales=0.5",
            f"--output_json={out}")

    # Stage 2 trained on the stage-1 features without changing them.
    stage1 = _variables(str(tmp_path / "pspnet" / "ckpt-2"), "model/feature_net")
    stage2 = _variables(str(tmp_path / "ciss" / "ckpt-2"), "model/feature_net")
    assert len(stage1) > 50 and stage1.keys() == stage2.keys()
    for name, value in stage1.items():
        np.testing.assert_array_equal(stage2[name], value, err_msg=name)
    report = json.loads(out.read_text())
    assert sorted(report["steps"]) == ["0", "2"] and report["num_images"] == 2
    # The command scores what the same checkpoint scores in this process, built with
    # camvid.flags' settings (small preset, batch norm in the Context Net's branches).
    model = config.build_ciss_net(11, "small", context_encoder_norm="batch")
    model(tf.zeros([1, 64, 64, 3]), num_steps=1)
    checkpoints.restore_model(model, str(tmp_path / "ciss"))
    dataset = input_pipeline.eval_dataset(
        input_pipeline.split_file_pattern(str(data), "val"), num_classes=11
    )
    expected = evaluator.evaluate_model(
        model, dataset, num_classes=11, eval_steps=(0, 2), scales=(0.5,)
    )["steps"]
    for t, step in report["steps"].items():
        assert len(step["iou"]) == 11
        for key in ("miou", "pixel_accuracy"):
            assert step[key] == pytest.approx(expected[t][key], rel=1e-6), (t, key)
