"""ciss_tf.evaluation.evaluator: scores against a brute-force count, the report the tool
writes, its refusals, and agreement with the official Cityscapes evaluation."""

import json
import math
import os

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from cityscapesscripts.helpers.labels import labels as cityscapes_labels

from ciss_tf.data import input_pipeline, preprocessing, synthetic, tfrecord
from ciss_tf.evaluation import cityscapes, evaluator
from ciss_tf.modeling import checkpoints, config, ops
from ciss_tf.tools import evaluate_tool
from tests.helpers.nets import varied_tiny_net

NUM_CLASSES = synthetic.NUM_CLASSES
SIZES = ((37, 53), (29, 41))
TINY = config.ModelConfig(preset="tiny")


def _fixture_arrays(seed=0):
    """Random images and labels (some pixels ignored) of the sizes in SIZES."""
    rng = np.random.default_rng(seed)
    examples = []
    for height, width in SIZES:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        label = rng.integers(0, NUM_CLASSES, (height, width)).astype(np.uint8)
        label[: height // 4, : width // 3] = 255
        examples.append((image, label))
    return examples


def _write_records(path, examples, filenames):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for (image, label), filename in zip(examples, filenames, strict=True):
            example = tfrecord.make_example(
                image_encoded=cv2.imencode(".png", image[..., ::-1])[1].tobytes(),
                image_format="png", label_png=cv2.imencode(".png", label)[1].tobytes(),
                filename=filename, height=image.shape[0], width=image.shape[1],
            )
            writer.write(example.SerializeToString())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("records")
    _write_records(folder / "val-00000-of-00001.tfrecord", _fixture_arrays(),
                   ["a.png", "b.png"])
    return folder


def _dataset(data_dir):
    pattern = input_pipeline.split_file_pattern(str(data_dir), "val")
    return input_pipeline.eval_dataset(pattern, num_classes=NUM_CLASSES)


def _brute_force_scores(predictions, labels):
    """IoU per class, mIoU and pixel accuracy by explicit TP / FP / FN counts."""
    tp = np.zeros(NUM_CLASSES)
    fp = np.zeros(NUM_CLASSES)
    fn = np.zeros(NUM_CLASSES)
    for prediction, label in zip(predictions, labels, strict=True):
        valid = label != 255
        for c in range(NUM_CLASSES):
            tp[c] += np.sum((prediction == c) & (label == c) & valid)
            fp[c] += np.sum((prediction == c) & (label != c) & valid)
            fn[c] += np.sum((prediction != c) & (label == c) & valid)
    iou = [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else math.nan
           for c in range(NUM_CLASSES)]
    counted = sum(np.sum(label != 255) for label in labels)
    return iou, np.nanmean(iou), tp.sum() / counted


def _reference_predictions(net, examples, step, **kwargs):
    """Class ids at `step`, the logits resized back bilinearly with corners aligned."""
    outputs = []
    for i, (image, _) in enumerate(examples):
        x = preprocessing.normalize_image(image)[tf.newaxis]
        logits = net(x, training=False, num_steps=step, sample_ids=[i], **kwargs)["logits"]
        resized = tf.compat.v1.image.resize_bilinear(logits[step], image.shape[:2],
                                                     align_corners=True)
        outputs.append(np.argmax(resized[0], axis=-1))
    return outputs


def test_evaluate_model_with_sampled_actions_matches_brute_force(varied_net, data_dir):
    # Greedy actions: test_run_evaluation_writes_the_contract_json_and_the_table.
    examples = _fixture_arrays()
    results = evaluator.evaluate_model(
        varied_net, _dataset(data_dir), num_classes=NUM_CLASSES, eval_steps=(1,),
        policy="sample", seed=5,
    )
    assert results["num_images"] == 2
    assert list(results["steps"]) == ["1"]
    predictions = _reference_predictions(varied_net, examples, 1, sample=True, seed=5)
    assert len(np.unique(np.concatenate([p.ravel() for p in predictions]))) >= 3
    iou, miou, accuracy = _brute_force_scores(predictions, [label for _, label in examples])
    scores = results["steps"]["1"]
    np.testing.assert_allclose(scores["iou"], iou, rtol=1e-12)
    assert scores["miou"] == pytest.approx(miou, rel=1e-12)
    assert scores["pixel_accuracy"] == pytest.approx(accuracy, rel=1e-12)


def test_evaluate_model_scores_a_pspnet_at_step_0(data_dir):
    keras.utils.set_random_seed(0)
    psp = config.build_pspnet(NUM_CLASSES, "tiny")
    results = evaluator.evaluate_model(
        psp, _dataset(data_dir), num_classes=NUM_CLASSES, eval_steps=(0,)
    )
    examples = _fixture_arrays()

    def labels(image):  # PSPNet's argmax, resized back corner-aligned as the original's Interp
        images = preprocessing.normalize_image(image)[tf.newaxis]
        logits = psp(images, training=False)["logits"]
        return tf.argmax(ops.resize_bilinear(logits, image.shape[:2]), -1)[0].numpy()

    predictions = [labels(image) for image, _ in examples]
    _, miou, accuracy = _brute_force_scores(predictions, [label for _, label in examples])
    assert results["steps"]["0"]["miou"] == pytest.approx(miou, rel=1e-12)
    assert results["steps"]["0"]["pixel_accuracy"] == pytest.approx(accuracy, rel=1e-12)
    with pytest.raises(ValueError, match="step 0 only"):
        evaluator.evaluate_model(psp, _dataset(data_dir), num_classes=NUM_CLASSES,
                                eval_steps=(0, 2))


def test_run_evaluation_writes_the_contract_json_and_the_table(
        varied_net, varied_checkpoint, data_dir, tmp_path, capsys):
    output = tmp_path / "out" / "eval.json"
    evaluate_tool.run_evaluation(evaluate_tool.EvalConfig(
        model=TINY, checkpoint=varied_checkpoint, data_dir=str(data_dir), dataset="synthetic",
        eval_steps=(0, 2), output_json=str(output),
    ))
    examples = _fixture_arrays()
    report = json.loads(output.read_text())
    assert list(report["steps"]) == ["0", "2"]
    for t in (0, 2):
        predictions = _reference_predictions(varied_net, examples, t)
        assert len(np.unique(np.concatenate([p.ravel() for p in predictions]))) >= 3
        iou, miou, accuracy = _brute_force_scores(predictions, [label for _, label in examples])
        scores = report["steps"][str(t)]
        assert scores["miou"] == pytest.approx(miou, rel=1e-12)
        assert scores["pixel_accuracy"] == pytest.approx(accuracy, rel=1e-12)
        # JSON has no NaN: classes absent from both sides are null.
        assert scores["iou"] == [None if math.isnan(v) else pytest.approx(v, rel=1e-12)
                                 for v in iou]
    assert report["num_images"] == 2
    assert report["checkpoint"] == varied_checkpoint
    assert report["class_names"] == list(synthetic.CLASS_NAMES)
    table = capsys.readouterr().out
    assert "balloon" in table and "mIoU" in table


def test_a_missing_checkpoint_or_a_remote_report_is_refused_before_writing(
        varied_checkpoint, data_dir, tmp_path, monkeypatch):
    def run(checkpoint, output_json):
        evaluate_tool.run_evaluation(evaluate_tool.EvalConfig(
            model=TINY, checkpoint=checkpoint, data_dir=str(data_dir), dataset="synthetic",
            output_json=output_json,
        ))

    with pytest.raises(ValueError, match=str(tmp_path / "nowhere")):
        run(str(tmp_path / "nowhere"), str(tmp_path / "nowhere.json"))
    assert not (tmp_path / "nowhere.json").exists()
    url = "gs://no-such-bucket/eval.json"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=f"--output_json={url}: outputs are written to local "
                                         "paths only"):
        run(varied_checkpoint, url)
    assert not (tmp_path / "gs:").exists()


def test_a_cityscapes_results_dir_holding_earlier_predictions_is_refused(tmp_path):
    results_dir = tmp_path / "results"
    earlier = results_dir / "ulm" / "ulm_000000_000000_pred_labelIds.png"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"earlier run")
    # Neither data nor checkpoint exists: the folder must be refused before either is read.
    with pytest.raises(ValueError, match=f"--cityscapes_results_dir {results_dir} already "
                                         "holds prediction PNGs"):
        evaluate_tool.run_evaluation(evaluate_tool.EvalConfig(
            model=TINY, checkpoint=str(tmp_path / "no_checkpoint"),
            data_dir=str(tmp_path / "no_data"), dataset="cityscapes",
            cityscapes_results_dir=str(results_dir),
        ))
    assert earlier.read_bytes() == b"earlier run"


@pytest.mark.parametrize("settings, message", [
    (dict(dataset="camvid", cityscapes_results_dir="r"),
     "--cityscapes_results_dir/--cityscapes_gt_dir need --dataset=cityscapes"),
    (dict(dataset="cityscapes", cityscapes_gt_dir="."),
     "--cityscapes_gt_dir needs --cityscapes_results_dir"),
    (dict(dataset="cityscapes", cityscapes_results_dir="r", cityscapes_gt_dir="no_such_dir"),
     "--cityscapes_gt_dir no_such_dir is not a directory"),
    (dict(dataset="cityscapes", cityscapes_results_dir="r", eval_steps=(0, 2),
          cityscapes_step=4), r"--cityscapes_step=4 is not one of --eval_steps=\(0, 2\)"),
])
def test_official_cityscapes_settings_that_do_not_fit_are_refused_before_reading(
        settings, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        evaluate_tool.run_evaluation(evaluate_tool.EvalConfig(
            model=TINY, checkpoint="no_checkpoint", data_dir="no_data", **settings))
    assert not os.path.exists("r")


def _cityscapes_frames(gt_dir):
    """Two 45 x 61 frames of random Cityscapes label ids, their official ground-truth PNGs
    written into `gt_dir/ulm`; returns (images, train ids, leftImg8bit file names)."""
    label_to_train = np.full(256, 255, np.uint8)
    for label in cityscapes_labels:
        if label.id >= 0 and not label.ignoreInEval:
            label_to_train[label.id] = label.trainId
    rng = np.random.default_rng(1)
    (gt_dir / "ulm").mkdir(parents=True)
    images, train_ids, names = [], [], []
    for frame in range(2):
        label_ids = np.kron(rng.integers(0, 34, (6, 8)), np.ones((8, 8), np.int64))[:45, :61]
        stem = f"ulm_000000_{frame:06d}"
        cv2.imwrite(str(gt_dir / "ulm" / f"{stem}_gtFine_labelIds.png"),
                    label_ids.astype(np.uint8))
        cv2.imwrite(str(gt_dir / "ulm" / f"{stem}_gtFine_instanceIds.png"),
                    label_ids.astype(np.uint16))
        images.append(rng.integers(0, 256, (*label_ids.shape, 3), dtype=np.uint8))
        train_ids.append(label_to_train[label_ids].astype(np.int32))
        names.append(f"{stem}_leftImg8bit.png")
    return images, train_ids, names


def test_the_evaluate_tool_reports_the_official_cityscapes_scores(tmp_path):
    # The whole tool on Cityscapes records: it writes the step's label-id PNGs, runs the
    # official evaluation on them and reports it beside ours (which it equals).
    gt_dir, results_dir = tmp_path / "gt", tmp_path / "results"
    images, train_ids, names = _cityscapes_frames(gt_dir)
    (tmp_path / "records").mkdir()
    _write_records(tmp_path / "records" / "val-00000-of-00001.tfrecord",
                   [(i, t.astype(np.uint8)) for i, t in zip(images, train_ids, strict=True)],
                   names)
    prefix = str(tmp_path / "ckpt" / "ckpt-3")
    checkpoints.save_model(varied_tiny_net(19), prefix)
    report = evaluate_tool.run_evaluation(evaluate_tool.EvalConfig(
        model=TINY, checkpoint=prefix, data_dir=str(tmp_path / "records"),
        dataset="cityscapes", eval_steps=(0, 1), cityscapes_results_dir=str(results_dir),
        cityscapes_gt_dir=str(gt_dir), cityscapes_step=1,
        output_json=str(tmp_path / "eval.json"),
    ))
    assert sorted(os.listdir(results_dir)) == [
        "ulm_000000_000000_pred_labelIds.png", "ulm_000000_000001_pred_labelIds.png"]
    official = cityscapes.run_official_evaluation(str(results_dir), str(gt_dir))
    assert report["cityscapes"] == {"step": 1, **official}
    assert official["iou_class"] == pytest.approx(report["steps"]["1"]["miou"], abs=1e-9)
    assert json.loads((tmp_path / "eval.json").read_text())["cityscapes"]["step"] == 1


def test_our_miou_agrees_with_the_official_cityscapes_evaluation(tmp_path):
    gt_dir, results_dir = tmp_path / "gt", tmp_path / "results"
    images, train_ids, names = _cityscapes_frames(gt_dir)
    dataset = tf.data.Dataset.from_generator(
        lambda: ({"image": preprocessing.normalize_image(image)[tf.newaxis],
                  "label": label[np.newaxis], "filename": [name]}
                 for image, label, name in zip(images, train_ids, names, strict=True)),
        output_signature={
            "image": tf.TensorSpec([1, None, None, 3], tf.float32),
            "label": tf.TensorSpec([1, None, None], tf.int32),
            "filename": tf.TensorSpec([1], tf.string),
        },
    )
    results = evaluator.evaluate_model(
        varied_tiny_net(19), dataset, num_classes=19, eval_steps=(0, 1),
        on_prediction=evaluate_tool.cityscapes_writer(str(results_dir), 1),
    )
    assert sorted(os.listdir(results_dir)) == [
        "ulm_000000_000000_pred_labelIds.png", "ulm_000000_000001_pred_labelIds.png"
    ]
    official = cityscapes.run_official_evaluation(str(results_dir), str(gt_dir))
    ours = results["steps"]["1"]
    assert sum(not math.isnan(v) for v in ours["iou"]) >= 10
    assert official["iou_class"] == pytest.approx(ours["miou"], abs=1e-9)
    by_train_id = {label.trainId: label.name for label in cityscapes_labels
                   if not label.ignoreInEval}
    for train_id, iou in enumerate(ours["iou"]):
        np.testing.assert_allclose(official["class_iou"][by_train_id[train_id]], iou,
                                   atol=1e-9)
