r"""Converts a segmentation dataset into sharded TFRecords for ciss_tf.

    python -m data_prep.build_tfrecords --dataset=camvid \
        --input_dir=../shared/camvid --output_dir=/data/camvid_tfrecord

writes `<split>-NNNNN-of-MMMMM.tfrecord` for every split found in `--input_dir`, labels in
train ids with ignore = 255 (layout: `ciss_tf.data.tfrecord`), or only those named in
`--splits`. Converting the Cityscapes `test` split prints a warning: its labels are
placeholders (all ignore), of no use for training or evaluation (`--splits=train,val`
leaves it out). Every example is decoded and checked first
(`data_prep.writer.check_example`); a bad one stops the run with one line naming the file
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

import contextlib
import os
import sys
import tempfile

import tensorflow as tf
from absl import app, flags, logging

from ciss_tf.data import datasets
from ciss_tf.tools import cli
from data_prep import sources, writer

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


def _find_splits(dataset: str, stack: contextlib.ExitStack) -> dict[str, sources.Split]:
    zip_dir, input_dir = _CITYSCAPES_ZIP_DIR.value, _INPUT_DIR.value
    if zip_dir and dataset != "cityscapes":
        raise sources.DataPrepError("--cityscapes_zip_dir is only for --dataset=cityscapes")
    if zip_dir and input_dir:
        raise sources.DataPrepError("give either --input_dir or --cityscapes_zip_dir, not both")
    if dataset == "synthetic":
        return sources.synthetic_splits(
            seed=_SYNTHETIC_SEED.value,
            num_train=_SYNTHETIC_NUM_TRAIN.value,
            num_val=_SYNTHETIC_NUM_VAL.value,
            height=_SYNTHETIC_HEIGHT.value,
            width=_SYNTHETIC_WIDTH.value,
        )
    if zip_dir:
        from data_prep import tfds_cityscapes  # tensorflow_datasets is slow to import

        work_dir = _TFDS_DATA_DIR.value
        if not work_dir:
            # The default work folder lives in the output folder, so that one has to exist
            # before the zips are read; a failed run removes it again (see `main`).
            tf.io.gfile.makedirs(_OUTPUT_DIR.value)
            work_dir = stack.enter_context(
                tempfile.TemporaryDirectory(prefix=".tfds-", dir=_OUTPUT_DIR.value)
            )
        return tfds_cityscapes.cityscapes_zip_splits(zip_dir, work_dir)
    if not input_dir:
        raise sources.DataPrepError(f"--input_dir is required for --dataset={dataset}")
    return sources.folder_splits(dataset, input_dir)


def _select_splits(
    dataset: str, splits: dict[str, sources.Split]
) -> dict[str, sources.Split]:
    """The splits named by `--splits` (default: all), warning about Cityscapes `test`."""
    if _SPLITS.value:
        for split in _SPLITS.value:
            if split not in splits:
                raise sources.DataPrepError(
                    f"--splits={','.join(_SPLITS.value)}: no {split!r} split found "
                    f"(found: {', '.join(splits)})"
                )
        splits = {name: split for name, split in splits.items() if name in _SPLITS.value}
    if dataset == "cityscapes" and "test" in splits:
        logging.warning(
            "Converting the Cityscapes test split (%d images): its gtFine labels are "
            "placeholders (all ignore), of no use for training or evaluation; --splits=%s "
            "leaves it out",
            splits["test"].size,
            ",".join(name for name in splits if name != "test") or "train,val",
        )
    return splits


def _outermost_missing(path: str) -> str | None:
    """The outermost folder on `path` that does not exist yet; None if `path` exists."""
    missing = None
    while path and not tf.io.gfile.exists(path):
        missing, path = path, os.path.dirname(path)
        if path == missing:  # a root that does not exist
            break
    return missing


def main(argv: list[str]) -> None:
    """Converts the dataset named by the flags; exits 1 with one `error:` line on bad input.

    A run that fails leaves nothing behind: `writer.write_splits` removes its own staging
    folder, and the folders this run created for the output are removed again.
    """
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    dataset, output_dir = _DATASET.value, _OUTPUT_DIR.value
    new_folder = None
    try:
        new_folder = _outermost_missing(output_dir)
        with contextlib.ExitStack() as stack:
            # _find_splits checks the input layout before write_splits creates the output.
            written, skipped = writer.write_splits(
                _select_splits(dataset, _find_splits(dataset, stack)),
                label_map=sources.LABEL_MAPS[dataset],
                label_hint=sources.LABEL_HINTS.get(dataset, ""),
                output_dir=output_dir,
                num_shards=_NUM_SHARDS.value,
                max_per_split=_MAX_IMAGES_PER_SPLIT.value,
                skip_bad=_SKIP_BAD.value,
            )
        if _SKIP_BAD.value:
            report = _REPORT_FILE.value or os.path.join(output_dir, "skipped.txt")
            writer.write_report(report, skipped)
    except (sources.DataPrepError, OSError, tf.errors.OpError) as error:
        if new_folder and tf.io.gfile.exists(new_folder):
            # Cleaning up must not replace the error being reported by another one.
            with contextlib.suppress(tf.errors.OpError):
                tf.io.gfile.rmtree(new_folder)
        # An OpError's own message names the file; its str() adds TF's prefixes.
        message = (writer.op_error_reason(error) if isinstance(error, tf.errors.OpError)
                   else str(error))
        sys.exit(f"error: {message}")
    if _SKIP_BAD.value and skipped:
        logging.warning("Skipped %d bad examples, listed in %s", len(skipped), report)
    logging.info("Wrote %s to %s", ", ".join(f"{s}: {n}" for s, n in written.items()), output_dir)


def run() -> None:
    """Console entry point `ciss-build-tfrecords`."""
    # Required only here, so that importing this module elsewhere adds no required flag.
    flags.mark_flags_as_required(["dataset", "output_dir"])
    cli.list_flags_in_help(__name__)
    app.run(main)


if __name__ == "__main__":
    run()
