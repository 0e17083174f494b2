r"""Converts a segmentation dataset into sharded TFRecords for ciss_tf.

    python -m data_prep.build_tfrecords --dataset=camvid \
        --input_dir=../shared/camvid --output_dir=/data/camvid_tfrecord

writes `<split>-NNNNN-of-MMMMM.tfrecord` for every split found in `--input_dir`, labels in
train ids with ignore = 255 (layout: `ciss_tf.data.tfrecord`), or only those named in
`--splits`. Converting the Cityscapes `test` split prints a warning: its labels are
placeholders (all ignore), of no use for training or evaluation (`--splits=train,val`
leaves it out). Every example is decoded and checked first
(`ciss_tf.data.writer.check_example`); a bad one stops the run with one line naming the file
and a non-zero exit, or with `--skip_bad` is listed in a report file. Shards appear only
when every split is complete.

Datasets and expected layouts (`--input_dir`):
  cityscapes      leftImg8bit/<split>/<city>/*_leftImg8bit.png,
                  gtFine/<split>/<city>/*_gtFine_labelIds.png; or, instead of
                  --input_dir, --cityscapes_zip_dir=DIR with the two official zips
                  (read through tensorflow-datasets, see data_prep.tfds_cityscapes);
                  `test` is converted with a warning (see above)
  ade20k          ADEChallengeData2016/images/{training,validation}/*.jpg,
                  ADEChallengeData2016/annotations/{training,validation}/*.png; a
                  missing training/ or validation/ is warned about
  pascal_context  JPEGImages/*.jpg, SegmentationClassContext/*.png (values 0..59, 0 =
                  background; 255 is refused), ImageSets/SegmentationContext/{train,val}.txt,
                  as written by mmsegmentation's tools/dataset_converters/pascal_context.py;
                  a missing train.txt or val.txt is warned about
  camvid          {train,val,test}/*.png with {train,val,test}annot/*.png
  synthetic       generated (ciss_tf.data.synthetic); no --input_dir
"""

import sys

from absl import app, flags

from ciss_tf.data import datasets
from ciss_tf.data.raw_readers import RawDataError
from ciss_tf.tools import cli
from data_prep import builder

_DATASET = flags.DEFINE_enum("dataset", None, list(datasets.DATASET_NAMES), "Dataset to convert.")
_INPUT_DIR = flags.DEFINE_string(
    "input_dir", None, "Folder of the dataset in its released layout (see the module doc)."
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder for the TFRecord shards.")
_CITYSCAPES_ZIP_DIR = flags.DEFINE_string(
    "cityscapes_zip_dir",
    None,
    "Cityscapes only: folder with leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, "
    "read through tensorflow-datasets instead of extracted folders in --input_dir.",
)
_TFDS_DATA_DIR = flags.DEFINE_string(
    "tfds_data_dir",
    None,
    "With --cityscapes_zip_dir: where tensorflow-datasets extracts and prepares the zips "
    "(kept, and reused by later runs). Default: a temporary folder in --output_dir, "
    "deleted at the end.",
)
_SPLITS = flags.DEFINE_list(
    "splits",
    None,
    "Splits to convert, e.g. train,val. Default: every split found (the Cityscapes test "
    "split too, with a warning: its gtFine labels are placeholders, all ignore, of no use "
    "for training or evaluation; --splits=train,val leaves it out).",
)
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards",
    0,
    "Shards per split; 0 = about 256 records per shard (at most 64).",
    lower_bound=0,
)
_MAX_IMAGES_PER_SPLIT = flags.DEFINE_integer(
    "max_images_per_split",
    0,
    "Convert at most this many images per split; 0 = all.",
    lower_bound=0,
)
_SKIP_BAD = flags.DEFINE_bool(
    "skip_bad",
    False,
    "Leave out examples that fail a check and list them in --report_file, "
    "instead of stopping at the first one.",
)
_REPORT_FILE = flags.DEFINE_string(
    "report_file", None, "With --skip_bad: the report; default <output_dir>/skipped.txt."
)
_SYNTHETIC_SEED = flags.DEFINE_integer("synthetic_seed", 0, "Synthetic: generator seed.")
_SYNTHETIC_NUM_TRAIN = flags.DEFINE_integer(
    "synthetic_num_train", 400, "Synthetic: training images.", lower_bound=1
)
_SYNTHETIC_NUM_VAL = flags.DEFINE_integer(
    "synthetic_num_val", 100, "Synthetic: validation images.", lower_bound=1
)
_SYNTHETIC_HEIGHT = flags.DEFINE_integer(
    "synthetic_height", 96, "Synthetic: image height.", lower_bound=32
)
_SYNTHETIC_WIDTH = flags.DEFINE_integer(
    "synthetic_width", 96, "Synthetic: image width.", lower_bound=32
)


def config_from_flags() -> builder.BuildConfig:
    """The `BuildConfig` the parsed flags give."""
    return builder.BuildConfig(
        dataset=_DATASET.value,
        output_dir=_OUTPUT_DIR.value,
        input_dir=_INPUT_DIR.value,
        cityscapes_zip_dir=_CITYSCAPES_ZIP_DIR.value,
        tfds_data_dir=_TFDS_DATA_DIR.value,
        splits=tuple(_SPLITS.value or ()),
        num_shards=_NUM_SHARDS.value,
        max_images_per_split=_MAX_IMAGES_PER_SPLIT.value,
        skip_bad=_SKIP_BAD.value,
        report_file=_REPORT_FILE.value,
        synthetic_seed=_SYNTHETIC_SEED.value,
        synthetic_num_train=_SYNTHETIC_NUM_TRAIN.value,
        synthetic_num_val=_SYNTHETIC_NUM_VAL.value,
        synthetic_height=_SYNTHETIC_HEIGHT.value,
        synthetic_width=_SYNTHETIC_WIDTH.value,
    )


def main(argv: list[str]) -> None:
    """Converts the dataset named by the flags; exits 1 with one `error:` line on bad input."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        builder.build(config_from_flags())
    except RawDataError as error:
        sys.exit(f"error: {error}")


def run() -> None:
    """Console entry point `ciss-build-tfrecords`."""
    # Required only here, so that importing this module elsewhere adds no required flag.
    flags.mark_flags_as_required(["dataset", "output_dir"])
    cli.list_flags_in_help(__name__)
    app.run(main)


if __name__ == "__main__":
    run()
