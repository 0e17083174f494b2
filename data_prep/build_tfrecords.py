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

import dataclasses
import sys

from absl import app, flags

from ciss_tf.data import datasets
from ciss_tf.data.raw_readers import RawDataError
from ciss_tf.tools import cli
from data_prep import builder

# One source for the defaults: the config's fields (every flag below is one field, same name).
_DEFAULTS = builder.BuildConfig(dataset="", output_dir="")

flags.DEFINE_enum("dataset", None, list(datasets.DATASET_NAMES), "Dataset to convert.")
flags.DEFINE_string(
    "input_dir", None, "Folder of the dataset in its released layout (see the module doc)."
)
flags.DEFINE_string("output_dir", None, "Folder for the TFRecord shards.")
flags.DEFINE_string(
    "cityscapes_zip_dir",
    None,
    "Cityscapes only: folder with leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, "
    "read through tensorflow-datasets instead of extracted folders in --input_dir.",
)
flags.DEFINE_string(
    "tfds_data_dir",
    None,
    "With --cityscapes_zip_dir: where tensorflow-datasets extracts and prepares the zips "
    "(kept, and reused by later runs). Default: a temporary folder in --output_dir, "
    "deleted at the end.",
)
flags.DEFINE_list(
    "splits",
    None,
    "Splits to convert, e.g. train,val. Default: every split found (the Cityscapes test "
    "split too, with a warning: its gtFine labels are placeholders, all ignore, of no use "
    "for training or evaluation; --splits=train,val leaves it out).",
)
flags.DEFINE_integer(
    "num_shards",
    _DEFAULTS.num_shards,
    "Shards per split; 0 = about 256 records per shard (at most 64).",
    lower_bound=0,
)
flags.DEFINE_integer(
    "max_images_per_split",
    _DEFAULTS.max_images_per_split,
    "Convert at most this many images per split; 0 = all.",
    lower_bound=0,
)
flags.DEFINE_bool(
    "skip_bad",
    _DEFAULTS.skip_bad,
    "Leave out examples that fail a check and list them in --report_file, "
    "instead of stopping at the first one.",
)
flags.DEFINE_string(
    "report_file", None, "With --skip_bad: the report; default <output_dir>/skipped.txt."
)
flags.DEFINE_integer("synthetic_seed", _DEFAULTS.synthetic_seed, "Synthetic: generator seed.")
flags.DEFINE_integer(
    "synthetic_num_train", _DEFAULTS.synthetic_num_train, "Synthetic: training images.",
    lower_bound=1,
)
flags.DEFINE_integer(
    "synthetic_num_val", _DEFAULTS.synthetic_num_val, "Synthetic: validation images.", lower_bound=1
)
flags.DEFINE_integer(
    "synthetic_height", _DEFAULTS.synthetic_height, "Synthetic: image height.", lower_bound=32
)
flags.DEFINE_integer(
    "synthetic_width", _DEFAULTS.synthetic_width, "Synthetic: image width.", lower_bound=32
)


def config_from_flags() -> builder.BuildConfig:
    """The `BuildConfig` the parsed flags give (each field from the flag of its name)."""
    values = {f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(builder.BuildConfig)}
    return builder.BuildConfig(**{**values, "splits": tuple(values["splits"] or ())})


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
