"""Evaluation: scores against a brute-force count, PSPNet's multi-scale / flip / sliding-window
protocol against a direct NumPy rendering of it, the CLI's JSON and its bad-input errors, and
agreement with the official Cityscapes evaluation."""

import json
import math
import os
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from cityscapesscripts.helpers.labels import labels as cityscapes_labels
from conftest import cli_error_line, varied_tiny_net

from ciss_tf.data import input_pipeline, preprocessing, synthetic, tfrecord
from ciss_tf.evaluation import cityscapes, evaluator, segmenter
from ciss_tf.modeling import checkpoints, config, ops

NUM_CLASSES = synthetic.NUM_CLASSES
SIZES = ((37, 53), (29, 41))


def _net(num_classes=NUM_CLASSES):
    return varied_tiny_net(num_classes)


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
def net():
    return _net()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("records")
    _write_records(folder / "val-00000-of-00001.tfrecord", _fixture_arrays(),
                   ["a.png", "b.png"])
    return folder


def _dataset(data_dir):
    pattern = input_pipeline.split_file_pattern(str(data_dir), "val")
    return input_pipeline.eval_dataset(pattern, num_classes=NUM_CLASSES)


def _resize(x, size):
    """Bilinear, corners aligned: the original `Interp`, through TF1's public API."""
    return tf.compat.v1.image.resize_bilinear(tf.cast(x, tf.float32), size, align_corners=True)


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
    outputs = []
    for i, (image, _) in enumerate(examples):
        x = preprocessing.normalize_image(image)[tf.newaxis]
        logits = net(x, training=False, num_steps=step, sample_ids=[i], **kwargs)["logits"]
        outputs.append(np.argmax(_resize(logits[step], image.shape[:2])[0], axis=-1))
    return outputs


def test_sliding_windows_follow_pspnet_grid():
    # Stride ceil(6 * 2/3) = 4; the last window is shifted back to end at the border.
    assert segmenter.sliding_windows((10, 7), (6, 6)) == [
        (0, 0, 6, 6), (0, 1, 6, 7), (4, 0, 10, 6), (4, 1, 10, 7),
    ]
    # Shorter than the crop along an axis: one window starting at 0, cut at the border.
    assert segmenter.sliding_windows((4, 13), (6, 6)) == [
        (0, 0, 4, 6), (0, 4, 4, 10), (0, 7, 4, 13),
    ]
    # One rounding rule (half up, at least 1) for inference and the training augmentation.
    assert preprocessing.scaled_size((37, 53), 0.5).numpy().tolist() == [19, 27]  # .5 up
    assert preprocessing.scaled_size((3, 3), 0.1).numpy().tolist() == [1, 1]
    assert preprocessing.scaled_size(tf.constant([5, 7]), tf.constant(0.5)).numpy().tolist() == [
        3, 4]  # float32 scale tensors, as the augmentation draws them


@pytest.mark.parametrize("policy", ["greedy", "sample"])
def test_evaluate_model_matches_brute_force(net, data_dir, policy):
    examples = _fixture_arrays()
    steps = (0, 2) if policy == "greedy" else (1,)
    results = evaluator.evaluate_model(
        net, _dataset(data_dir), num_classes=NUM_CLASSES, eval_steps=steps, policy=policy,
        seed=5,
    )
    assert results["num_images"] == 2
    assert list(results["steps"]) == [str(t) for t in steps]
    for t in steps:
        predictions = _reference_predictions(
            net, examples, t, sample=policy == "sample", seed=5
        )
        assert len(np.unique(np.concatenate([p.ravel() for p in predictions]))) >= 3
        iou, miou, accuracy = _brute_force_scores(predictions, [lab for _, lab in examples])
        scores = results["steps"][str(t)]
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


def test_scale_one_without_flip_and_a_crop_larger_than_the_image_are_single_pass(net):
    images = tf.random.stateless_normal([1, 37, 53, 3], seed=[3, 4], stddev=60.0)
    single = segmenter.Segmenter(net, (0, 1)).labels(images)
    # The multi-scale and sliding-window path: two scales of 1.0 average to the same
    # probabilities, and a crop larger than the image leaves it whole and unpadded.
    general = segmenter.Segmenter(net, (0, 1), scales=(1.0, 1.0), crop_size=(40, 64))
    assert single.shape == (2, 1, 37, 53)
    np.testing.assert_array_equal(general.labels(images), single)


def test_multi_scale_flip_and_sliding_window_follow_pspnet(net):
    image = tf.random.stateless_normal([1, 37, 53, 3], seed=[5, 6], stddev=60.0)
    scales, crop, step = (0.6, 1.0), (24, 24), 1
    segment = segmenter.Segmenter(net, (step,), scales=scales, flip=True, crop_size=crop)
    labels = segment.labels(image)

    # PSPNet's protocol written out directly. At scale 1.0 six 24x24 windows; at 0.6 the
    # 22x32 image is cut into two 22x24 windows padded with 0 to 24x24.
    total = 0.0
    for scale in scales:
        size = (max(1, math.floor(37 * scale + 0.5)), max(1, math.floor(53 * scale + 0.5)))
        scaled = image if size == (37, 53) else _resize(image, size)
        summed = np.zeros([*size, NUM_CLASSES])
        count = np.zeros([*size, 1])
        for top, left, bottom, right in segmenter.sliding_windows(size, crop):
            tile = np.zeros([1, *crop, 3], np.float32)
            tile[0, : bottom - top, : right - left] = scaled[0, top:bottom, left:right]
            batch = np.concatenate([tile, tile[:, :, ::-1]])
            logits = net(batch, training=False, num_steps=step)["logits"][step]
            probabilities = tf.nn.softmax(_resize(logits, crop)).numpy()
            averaged = (probabilities[0] + probabilities[1, :, ::-1]) / 2
            summed[top:bottom, left:right] += averaged[: bottom - top, : right - left]
            count[top:bottom, left:right] += 1
        total += _resize((summed / count)[np.newaxis], (37, 53))[0].numpy()
    expected = np.argmax(total / 2, axis=-1)
    np.testing.assert_array_equal(labels[0, 0], expected)


def _start(args, cwd=None):
    return subprocess.Popen(
        [sys.executable, "-m", "ciss_tf.evaluate", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=cwd,
    )


def _finish(process):
    stdout, stderr = process.communicate(timeout=600)
    return process.returncode, stdout, stderr


def test_cli_writes_contract_json_and_reports_bad_input(net, data_dir, tmp_path):
    prefix = checkpoints.save_model(net, str(tmp_path / "ckpt" / "ckpt-3"))
    flagfile = tmp_path / "experiment.flags"
    # --unroll_steps is a training flag: the evaluator skips it in a flagfile.
    flagfile.write_text("--preset=tiny\n--dataset=synthetic\n--unroll_steps=8\n")
    common = [f"--flagfile={flagfile}", f"--data_dir={data_dir}"]
    output = tmp_path / "out" / "eval.json"
    url = "gs://no-such-bucket/eval.json"
    # The runs go in parallel: most of their time is importing TensorFlow.
    runs = [
        _start([*common, f"--checkpoint={prefix}", "--eval_steps=0,2",
                f"--output_json={output}"]),
        _start([*common, f"--checkpoint={tmp_path / 'nowhere'}",
                f"--output_json={tmp_path / 'nowhere.json'}"]),
        _start([*common, f"--checkpoint={prefix}", "--eval_steps=0,two"]),
        _start([*common, f"--checkpoint={prefix}", f"--output_json={url}"], cwd=tmp_path),
    ]
    examples = _fixture_arrays()
    expected = {
        str(t): _brute_force_scores(_reference_predictions(net, examples, t),
                                    [label for _, label in examples])
        for t in (0, 2)
    }
    ok, missing, bad_steps, remote = (_finish(run) for run in runs)

    assert ok[0] == 0, ok[2]
    report = json.loads(output.read_text())
    assert list(report["steps"]) == ["0", "2"]
    for t, (iou, miou, accuracy) in expected.items():
        scores = report["steps"][t]
        assert scores["miou"] == pytest.approx(miou, rel=1e-12)
        assert scores["pixel_accuracy"] == pytest.approx(accuracy, rel=1e-12)
        # JSON has no NaN: classes absent from both sides are null.
        assert scores["iou"] == [None if math.isnan(v) else pytest.approx(v, rel=1e-12)
                                 for v in iou]
    assert report["num_images"] == 2
    assert report["checkpoint"] == prefix
    assert report["class_names"] == list(synthetic.CLASS_NAMES)
    assert "balloon" in ok[1] and "mIoU" in ok[1]

    assert str(tmp_path / "nowhere") in cli_error_line(missing)
    assert not (tmp_path / "nowhere.json").exists()
    assert "--eval_steps" in cli_error_line(bad_steps)
    assert f"--output_json={url}: outputs are written to local paths only" in (
        cli_error_line(remote))
    assert not (tmp_path / "gs:").exists()


def test_cli_refuses_a_cityscapes_results_dir_holding_earlier_predictions(tmp_path):
    flagfile = tmp_path / "experiment.flags"
    flagfile.write_text("--preset=tiny\n--dataset=cityscapes\n")
    results_dir = tmp_path / "results"
    earlier = results_dir / "ulm" / "ulm_000000_000000_pred_labelIds.png"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"earlier run")
    # Neither data nor checkpoint exists: the folder must be refused before either is read.
    error = cli_error_line(_finish(_start([
        f"--flagfile={flagfile}", f"--data_dir={tmp_path / 'no_data'}",
        f"--checkpoint={tmp_path / 'no_checkpoint'}", f"--cityscapes_results_dir={results_dir}",
    ])))
    assert f"--cityscapes_results_dir {results_dir} already holds prediction PNGs" in error
    assert earlier.read_bytes() == b"earlier run"


def test_our_miou_agrees_with_the_official_cityscapes_evaluation(tmp_path):
    label_to_train = np.full(256, 255, np.uint8)
    for label in cityscapes_labels:
        if label.id >= 0 and not label.ignoreInEval:
            label_to_train[label.id] = label.trainId
    rng = np.random.default_rng(1)
    gt_dir, results_dir = tmp_path / "gt", tmp_path / "results"
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
    net = _net(19)
    results = evaluator.evaluate_model(
        net, dataset, num_classes=19, eval_steps=(0, 1),
        on_prediction=evaluator.cityscapes_writer(str(results_dir), 1),
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
