import math

import cv2
import numpy as np
import pytest
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official  # noqa: N813
from cityscapesscripts.helpers.labels import id2label, labels, trainId2label

from ciss_tf import metrics
from ciss_tf.evaluation import cityscapes

HEIGHT, WIDTH = 64, 128
NUM_CLASSES = 19
BUS_TRAIN_ID, TRAIN_TRAIN_ID = 15, 16

# Label id -> train id, 255 for labels the official evaluation ignores. In the official
# table exactly the labels with ignoreInEval have train id 255 (or -1, license plate, which
# never appears in label-id images), so ignoring 255 on our side drops the same pixels as the
# official script drops from its IoUs.
LABEL_TO_TRAIN = np.full(256, 255, np.uint8)
for _label in labels:
    if _label.id >= 0 and not _label.ignoreInEval:
        LABEL_TO_TRAIN[_label.id] = _label.trainId


def test_ignored_labels_are_exactly_those_without_train_id():
    for label in labels:
        assert label.ignoreInEval == (label.trainId in (255, -1)), label.name
    assert sorted(LABEL_TO_TRAIN[LABEL_TO_TRAIN != 255].tolist()) == list(range(NUM_CLASSES))


def write_ground_truth(gt_dir, city, frame, label_ids, instance_ids):
    folder = gt_dir / city
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{city}_000000_{frame:06d}_gtFine"
    cv2.imwrite(str(folder / f"{stem}_labelIds.png"), label_ids.astype(np.uint8))
    # Official instance images are 16-bit: label_id * 1000 + k on instances.
    cv2.imwrite(str(folder / f"{stem}_instanceIds.png"), instance_ids.astype(np.uint16))
    return f"{stem}_labelIds.png"


def random_scene(rng):
    """Label ids in 8x8 cells over all label ids (ignored ones too) plus instance boxes.

    Bus and train never occur in the ground truth: bus is predicted (IoU 0, counted in the
    mean), train never is (NaN, left out of the mean).
    """
    allowed = [label.id for label in labels if label.id >= 0 and label.name not in ("bus", "train")]
    cells = rng.choice(allowed, size=(HEIGHT // 8, WIDTH // 8))
    label_ids = np.kron(cells, np.ones((8, 8), np.int64))
    # Instance classes painted as plain cells stay "groups" (instance map = label id).
    instance_ids = label_ids.copy()
    for k, name in enumerate(["person", "rider", "car", "car", "truck", "bicycle", "caravan"]):
        label_id = next(label.id for label in labels if label.name == name)
        top, left = rng.integers(0, HEIGHT - 12), rng.integers(0, WIDTH - 20)
        box = np.s_[top : top + rng.integers(4, 12), left : left + rng.integers(5, 20)]
        label_ids[box] = label_id
        instance_ids[box] = label_id * 1000 + k
    return label_ids, instance_ids


def noisy_prediction(rng, gt_train_ids):
    """Train ids: ground truth with ~35% pixels replaced by any class except train."""
    anything = rng.integers(0, NUM_CLASSES, gt_train_ids.shape)
    pred = np.where(gt_train_ids == 255, anything, gt_train_ids)
    noise = rng.random(pred.shape) < 0.35
    choices = [k for k in range(NUM_CLASSES) if k != TRAIN_TRAIN_ID]
    pred[noise] = rng.choice(choices, size=int(noise.sum()))
    return pred


@pytest.fixture
def cityscapes_val(tmp_path):
    """Three 64x128 frames in two cities, their predictions, and our confusion matrix."""
    rng = np.random.default_rng(2024)
    gt_dir = tmp_path / "gtFine" / "val"
    results_dir = tmp_path / "results"
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for city, frame in [("frankfurt", 19), ("frankfurt", 294), ("lindau", 19)]:
        label_ids, instance_ids = random_scene(rng)
        gt_name = write_ground_truth(gt_dir, city, frame, label_ids, instance_ids)
        gt_train = LABEL_TO_TRAIN[label_ids]
        pred_train = noisy_prediction(rng, gt_train)
        image_name = gt_name.replace("gtFine_labelIds", "leftImg8bit")
        cityscapes.write_prediction(
            results_dir, image_name, cityscapes.train_ids_to_label_ids(pred_train)
        )
        confusion += metrics.confusion_matrix(gt_train, pred_train, NUM_CLASSES)
    return results_dir, gt_dir, confusion


def test_miou_equals_official_iou_class(cityscapes_val):
    results_dir, gt_dir, confusion = cityscapes_val
    official_scores = cityscapes.run_official_evaluation(str(results_dir), str(gt_dir))
    ours = metrics.segmentation_scores(confusion)

    # The official script computes a per-label IoU for all 34 label ids; ignoreInEval labels
    # and labels with TP + FP + FN = 0 are NaN and its average skips NaN. Its FN is the full
    # ground-truth row (our predictions are all evaluated labels) and its FP the column over
    # non-ignored ground-truth rows, i.e. our train-id matrix with 255 left out. So both means
    # run over the same set: classes present in ground truth or prediction.
    assert math.isnan(ours["iou"][TRAIN_TRAIN_ID])
    assert ours["iou"][BUS_TRAIN_ID] == 0.0
    official_iou = [official_scores["class_iou"][trainId2label[k].name] for k in range(NUM_CLASSES)]
    np.testing.assert_allclose(official_iou, ours["iou"], rtol=0, atol=1e-9, equal_nan=True)
    assert official_scores["iou_class"] == pytest.approx(ours["miou"], abs=1e-6)
    assert 0.3 < ours["miou"] < 0.9

    # Category IoU: merge the train ids of each category (void has none) and score again.
    categories = sorted({trainId2label[k].category for k in range(NUM_CLASSES)})
    merge = np.zeros((NUM_CLASSES, len(categories)), np.int64)
    for k in range(NUM_CLASSES):
        merge[k, categories.index(trainId2label[k].category)] = 1
    category_scores = metrics.segmentation_scores(merge.T @ confusion @ merge)
    assert official_scores["iou_category"] == pytest.approx(category_scores["miou"], abs=1e-6)

    assert 0.0 < official_scores["iiou_class"] < 1.0
    assert 0.0 < official_scores["iiou_category"] < 1.0


def test_hand_computed_single_car(tmp_path):
    gt_dir = tmp_path / "gtFine" / "val"
    road, car = 7, 26
    label_ids = np.full((HEIGHT, WIDTH), road)
    label_ids[10:20, 30:50] = car  # 200 pixels
    instance_ids = np.where(label_ids == car, car * 1000, label_ids)
    gt_name = write_ground_truth(gt_dir, "ulm", 5, label_ids, instance_ids)
    pred = np.full((HEIGHT, WIDTH), road)
    pred[10:20, 30:45] = car  # 150 of the car's pixels found, 50 missed
    pred[40:43, 0:10] = car  # 30 road pixels called car
    cityscapes.write_prediction(tmp_path / "results", gt_name, pred)

    scores = cityscapes.run_official_evaluation(str(tmp_path / "results"), str(gt_dir))

    # road: TP = all - 200 car - 30 false car, FN = 30, FP = 50
    road_iou = (HEIGHT * WIDTH - 230) / (HEIGHT * WIDTH - 150)
    car_iou = 150 / (150 + 30 + 50)
    assert scores["class_iou"]["road"] == pytest.approx(road_iou)
    assert scores["class_iou"]["car"] == pytest.approx(car_iou)
    assert math.isnan(scores["class_iou"]["sky"])
    assert scores["iou_class"] == pytest.approx((road_iou + car_iou) / 2)
    assert scores["iou_category"] == pytest.approx((road_iou + car_iou) / 2)
    # iIoU weights instance pixels by (average car size / this car's size); FP stay unweighted.
    weight = official.args.avgClassSize["car"] / 200
    car_iiou = 150 * weight / (150 * weight + 30 + 50 * weight)
    assert scores["iiou_class"] == pytest.approx(car_iiou)
    assert scores["iiou_category"] == pytest.approx(car_iiou)


def test_perfect_prediction_scores_one(tmp_path):
    rng = np.random.default_rng(5)
    gt_dir = tmp_path / "gtFine" / "val"
    label_ids, instance_ids = random_scene(rng)
    gt_name = write_ground_truth(gt_dir, "bonn", 7, label_ids, instance_ids)
    # Ignored ground truth may be predicted as anything; take road.
    pred_train = np.where(LABEL_TO_TRAIN[label_ids] == 255, 0, LABEL_TO_TRAIN[label_ids])
    cityscapes.write_prediction(
        tmp_path / "results", gt_name, cityscapes.train_ids_to_label_ids(pred_train)
    )
    scores = cityscapes.run_official_evaluation(str(tmp_path / "results"), str(gt_dir))
    for key in ("iou_class", "iiou_class", "iou_category", "iiou_category"):
        assert scores[key] == pytest.approx(1.0), key
    # No JSON export next to the predictions, and the official module is left as found.
    assert [p.suffix for p in (tmp_path / "results").iterdir()] == [".png"]
    assert official.np is np


def test_missing_prediction_names_ground_truth(tmp_path):
    gt_dir = tmp_path / "gtFine" / "val"
    label_ids = np.full((HEIGHT, WIDTH), 7)
    write_ground_truth(gt_dir, "ulm", 1, label_ids, label_ids)
    write_ground_truth(gt_dir, "ulm", 2, label_ids, label_ids)
    cityscapes.write_prediction(tmp_path / "results", "ulm_000000_000001_x.png", label_ids)
    with pytest.raises(ValueError, match="Found no prediction .*ulm_000000_000002_gtFine"):
        cityscapes.run_official_evaluation(str(tmp_path / "results"), str(gt_dir))


def test_bad_folders_raise(tmp_path):
    (tmp_path / "results").mkdir()
    with pytest.raises(ValueError, match="gt_dir .*is not a directory"):
        cityscapes.run_official_evaluation(str(tmp_path / "results"), str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="holds no"):
        cityscapes.run_official_evaluation(str(tmp_path / "results"), str(tmp_path))


def test_train_ids_to_label_ids_follows_official_table():
    train_ids = np.arange(NUM_CLASSES).reshape(1, NUM_CLASSES)
    label_ids = cityscapes.train_ids_to_label_ids(train_ids)
    assert label_ids.dtype == np.uint8 and label_ids.shape == train_ids.shape
    for k in range(NUM_CLASSES):
        assert id2label[int(label_ids[0, k])].trainId == k
    # Spot values from the Cityscapes label table.
    assert label_ids[0, 0] == 7  # road
    assert label_ids[0, 13] == 26  # car
    assert label_ids[0, 18] == 33  # bicycle
    np.testing.assert_array_equal(LABEL_TO_TRAIN[label_ids], train_ids)


@pytest.mark.parametrize("bad", [19, 255, -1])
def test_train_ids_to_label_ids_rejects_non_train_ids(bad):
    with pytest.raises(ValueError, match=rf"\[{bad}\]"):
        cityscapes.train_ids_to_label_ids(np.array([0, bad, 3]))


def test_write_prediction_name_and_content(tmp_path):
    label_ids = np.arange(24, dtype=np.int32).reshape(4, 6) + 7
    image_path = b"/data/leftImg8bit/val/frankfurt/frankfurt_000001_011835_leftImg8bit.png"
    path = cityscapes.write_prediction(tmp_path / "out", image_path, label_ids)
    assert path == str(tmp_path / "out" / "frankfurt_000001_011835_pred_labelIds.png")
    np.testing.assert_array_equal(cv2.imread(path, cv2.IMREAD_UNCHANGED), label_ids)
    # The official matcher finds it for the matching ground truth.
    args = cityscapes._official_args(str(tmp_path / "out"))
    assert official.getPrediction(args, "x/frankfurt_000001_011835_gtFine_labelIds.png") == path
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "frankfurt_000001_011835_pred_labelIds.png"
    ]


@pytest.mark.parametrize(
    "name,array,message",
    [
        ("frankfurt.png", np.zeros((2, 2), np.uint8), "not a Cityscapes file name"),
        ("a_000000_000001_x.png", np.zeros((2, 2, 3), np.uint8), "2-D integer"),
        ("a_000000_000001_x.png", np.zeros((2, 2), np.float32), "2-D integer"),
        ("a_000000_000001_x.png", np.full((2, 2), 256), "outside 0..255"),
    ],
)
def test_write_prediction_rejects_bad_input(tmp_path, name, array, message):
    with pytest.raises(ValueError, match=message):
        cityscapes.write_prediction(tmp_path / "out", name, array)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
