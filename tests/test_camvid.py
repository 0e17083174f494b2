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

from ciss_tf import train
from ciss_tf.data import datasets, input_pipeline, writer
from ciss_tf.modeling import checkpoints, config
from ciss_tf.training import trainer
from tests.helpers.cli import ROOT, run_cli

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
    # The command scores what the same checkpoint predicts in this process, built with
    # camvid.flags' settings (small preset, batch norm in the Context Net's branches), each
    # image at scale 0.5 (sides rounded half up); as PSPNet's multi-scale inference, the
    # logits resized to the scaled image, their softmax to the full image (corners aligned
    # both times); scored by a confusion matrix counted here.
    model = config.build_ciss_net(11, "small", context_encoder_norm="batch")
    model(tf.zeros([1, 64, 64, 3]), num_steps=1)
    checkpoints.restore_model(model, str(tmp_path / "ciss"))
    dataset = input_pipeline.eval_dataset(
        input_pipeline.split_file_pattern(str(data), "val"), num_classes=11
    )
    confusion = {t: np.zeros([11, 11], np.int64) for t in ("0", "2")}
    for batch in dataset:
        height, width = batch["label"].shape[1:]
        small_size = (int(height * 0.5 + 0.5), int(width * 0.5 + 0.5))
        small = tf.compat.v1.image.resize_bilinear(batch["image"], small_size,
                                                   align_corners=True)
        logits = model(small, num_steps=2)["logits"]
        label = batch["label"].numpy()[0]
        for t in confusion:
            probabilities = tf.nn.softmax(tf.compat.v1.image.resize_bilinear(
                logits[int(t)], small_size, align_corners=True))
            predicted = np.argmax(tf.compat.v1.image.resize_bilinear(
                probabilities, (height, width), align_corners=True)[0], -1)
            keep = label != 255
            confusion[t] += np.bincount(11 * label[keep] + predicted[keep],
                                        minlength=121).reshape(11, 11)
    for t, step in report["steps"].items():
        matrix = confusion[t]
        union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
        iou = [None if u == 0 else matrix[c, c] / u for c, u in enumerate(union)]
        assert step["iou"] == pytest.approx(iou, rel=1e-6), t
        present = [v for v in iou if v is not None]
        assert step["miou"] == pytest.approx(sum(present) / len(present), rel=1e-6), t
        assert step["pixel_accuracy"] == pytest.approx(
            np.trace(matrix) / matrix.sum(), rel=1e-6), t
