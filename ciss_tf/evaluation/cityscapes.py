"""Bridge to the official Cityscapes pixel-level evaluation (cityscapesscripts).

The official script reads prediction PNGs holding Cityscapes label ids (not train ids) and
pairs each ground-truth file `<city>_<seq>_<frame>_gtFine_labelIds.png` with the single file
named `<city>_<seq>_<frame>*.png` found anywhere under the results folder. Its iIoU scores
also read the `*_gtFine_instanceIds.png` next to each ground-truth file (instance pixels hold
`label_id * 1000 + k`, other pixels the plain label id).
"""

import contextlib
import glob
import io
import os
import re

import cv2
import numpy as np
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official  # noqa: N813
from cityscapesscripts.helpers import labels as cs_labels

# The part of a Cityscapes file name the official script matches on; it splits names at "_".
_CORE_NAME = re.compile(r"([^_]+)_(\d+)_(\d+)(?=[_.]|$)")


def _train_id_to_label_id_table():
    """Lookup table train id -> label id from the official label list, -1 where undefined.

    `trainId2label` resolves shared train ids to the first label listed, as the official
    tools do; the train ids it maps to labels ignored in evaluation (255, -1) are no classes.
    """
    table = np.full(256, -1, np.int16)
    for train_id, label in cs_labels.trainId2label.items():
        if not label.ignoreInEval:
            table[train_id] = label.id
    return table


_TRAIN_ID_TO_LABEL_ID = _train_id_to_label_id_table()


def train_ids_to_label_ids(pred):
    """Maps a prediction in train ids (0..18) to Cityscapes label ids for the official tools.

    Args:
      pred: int array of train ids, any shape.

    Returns:
      uint8 array of label ids, same shape.

    Raises:
      ValueError: `pred` is not an integer array or holds a value that is not a train id.
    """
    pred = np.asarray(pred)
    if not np.issubdtype(pred.dtype, np.integer):
        raise ValueError(f"train ids must be integers, got dtype {pred.dtype}")
    inside = (pred >= 0) & (pred < _TRAIN_ID_TO_LABEL_ID.size)
    known = np.zeros(pred.shape, bool)
    known[inside] = _TRAIN_ID_TO_LABEL_ID[pred[inside]] >= 0
    if not known.all():
        raise ValueError(f"not Cityscapes train ids: {np.unique(pred[~known])[:5].tolist()}")
    return _TRAIN_ID_TO_LABEL_ID[pred].astype(np.uint8)


def write_prediction(results_dir, original_filename, label_ids):
    """Writes one prediction where the official evaluation will find it.

    The file is `results_dir/<city>_<seq>_<frame>_pred_labelIds.png`, so writing the same
    frame twice replaces it. Nothing else under `results_dir` may start with the same
    `<city>_<seq>_<frame>` and end in `.png`: the official script refuses ambiguous matches.

    Args:
      results_dir: folder of prediction PNGs (created if missing).
      original_filename: name or path of the input image or its ground truth, e.g.
        `frankfurt_000000_000294_leftImg8bit.png` (str, bytes or path).
      label_ids: `[H, W]` int array of Cityscapes label ids (see `train_ids_to_label_ids`),
        the size of the ground truth.

    Returns:
      The path of the written PNG.

    Raises:
      ValueError: the file name has no `<city>_<seq>_<frame>` part, or `label_ids` is not a
        2-D integer array of values in 0..255.
    """
    original_filename = os.fsdecode(original_filename)
    match = _CORE_NAME.match(os.path.basename(original_filename))
    if not match:
        raise ValueError(
            f"{original_filename}: not a Cityscapes file name (<city>_<seq>_<frame>_...)"
        )
    label_ids = np.asarray(label_ids)
    if label_ids.ndim != 2 or not np.issubdtype(label_ids.dtype, np.integer):
        raise ValueError(
            f"label_ids must be a 2-D integer array, got {label_ids.dtype} {label_ids.shape}"
        )
    if label_ids.size and (label_ids.min() < 0 or label_ids.max() > 255):
        raise ValueError(f"label ids outside 0..255 for {original_filename}")
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"{match.group(0)}_pred_labelIds.png")
    _, encoded = cv2.imencode(".png", label_ids.astype(np.uint8))
    # Write then rename, so an interrupted run leaves no truncated PNG to be evaluated.
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        f.write(encoded.tobytes())
    os.replace(temporary, path)
    return path


class _NumpyWithIn1d:
    """NumPy plus `in1d` (removed in NumPy 2.4), as the official script still calls it.

    Only the official module sees this object, and only during `run_official_evaluation`;
    upstream fix pending in mcordts/cityscapesScripts#196.
    """

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def in1d(ar1, ar2, invert=False):
        """The removed `np.in1d`: flattened membership test."""
        return np.isin(np.ravel(ar1), ar2, invert=invert)


@contextlib.contextmanager
def _official_numpy():
    """Lets the official module run on NumPy versions without `np.in1d`."""
    if hasattr(np, "in1d"):
        yield
        return
    saved = official.np
    official.np = _NumpyWithIn1d()
    try:
        yield
    finally:
        official.np = saved


def _official_args(results_dir):
    """Settings for the official script: quiet, no JSON file, no colours, iIoU on."""
    args = official.CArgs()
    vars(args).update(vars(official.args))
    args.predictionPath = results_dir
    args.predictionWalk = None
    args.evalInstLevelScore = True
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    args.bold = ""
    args.nocol = ""
    return args


def run_official_evaluation(results_dir, gt_dir):
    """Scores the predictions in `results_dir` with the official Cityscapes evaluation.

    Runs `cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling` in this process on
    every `*_gtFine_labelIds.png` under `gt_dir`. Each needs its `*_gtFine_instanceIds.png`
    and exactly one prediction from `write_prediction`. Averages are the official ones:
    over the 19 evaluated classes (7 categories) leaving out those whose score is NaN, that
    is classes absent from both ground truth and prediction.

    Args:
      results_dir: folder holding the prediction PNGs (searched recursively).
      gt_dir: ground-truth folder searched recursively, e.g. `<cityscapes>/gtFine/val`.

    Returns:
      A dict of fractions: `iou_class`, `iiou_class`, `iou_category`, `iiou_category`
      (the four numbers of the Cityscapes benchmark) and `class_iou` (class name -> IoU,
      NaN for classes absent from both sides).

    Raises:
      ValueError: a folder is missing, there is no ground truth, or the official script
        stops (a prediction missing or ambiguous, a size mismatch, an unreadable file); the
        message is the official error line.
    """
    for name, folder in (("results_dir", results_dir), ("gt_dir", gt_dir)):
        if not os.path.isdir(folder):
            raise ValueError(f"{name} {folder} is not a directory")
    pattern = os.path.join(gt_dir, "**", "*_gtFine_labelIds.png")
    gt_files = sorted(glob.glob(pattern, recursive=True))
    if not gt_files:
        raise ValueError(f"gt_dir {gt_dir} holds no *_gtFine_labelIds.png files")
    args = _official_args(results_dir)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), _official_numpy():
            predictions = [official.getPrediction(args, gt) for gt in gt_files]
            results = official.evaluateImgLists(predictions, gt_files, args)
    except SystemExit:
        # The official printError prints "ERROR: ..." to stdout, then calls sys.exit.
        errors = [line for line in log.getvalue().splitlines() if line.startswith("ERROR")]
        raise ValueError(errors[-1] if errors else "official evaluation failed") from None
    return {
        "iou_class": float(results["averageScoreClasses"]),
        "iiou_class": float(results["averageScoreInstClasses"]),
        "iou_category": float(results["averageScoreCategories"]),
        "iiou_category": float(results["averageScoreInstCategories"]),
        "class_iou": {
            label.name: float(results["classScores"][label.name])
            for label in cs_labels.labels
            if label.id >= 0 and not label.ignoreInEval
        },
    }
