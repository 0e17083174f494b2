"""Cityscapes straight from the official zips, through tensorflow-datasets' `cityscapes` builder.

The builder (`cityscapes/semantic_segmentation`, tfds 4.9) reads `leftImg8bit_trainvaltest.zip`
and `gtFine_trainvaltest.zip` from its `manual_dir`, extracts them and yields, per image,
`image_id` (`<city>_<seq>_<frame>`), `image_left` and `segmentation_label`, both stored as the
original PNG file bytes; the label holds the official *label ids* (`*_gtFine_labelIds.png`),
so the same Cityscapes label table applies as for the extracted folders. Splits: train,
validation (written as `val`) and test. Both images are read with `SkipDecoding` to get the
original PNG bytes, which the writer checks like any other file. Google Cloud Storage is
never contacted: lookups are disabled and `try_gcs` is off.
"""

import os
from collections.abc import Iterator

import tensorflow as tf

from ciss_tf.data.raw_readers import RawDataError, RawExample, Split

ZIP_FILES = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip")
_SPLITS = {"train": "train", "validation": "val", "test": "test"}


def cityscapes_zip_splits(zip_dir: str, work_dir: str) -> dict[str, Split]:
    """Prepares the tfds dataset in `work_dir` from the zips in `zip_dir` and returns its splits.

    Args:
        zip_dir: folder holding the two official zips.
        work_dir: where tfds extracts the zips and writes its own copy (about twice the
            size of the zips; delete it afterwards).

    Returns:
        {split: Split}; the splits stay readable while `work_dir` exists.

    Raises:
        RawDataError: a zip is missing or tfds cannot prepare the dataset from them.
    """
    for name in ZIP_FILES:
        if not tf.io.gfile.exists(os.path.join(zip_dir, name)):
            raise RawDataError(f"--cityscapes_zip_dir={zip_dir}: {name} is missing")
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import gcs_utils

    gcs_utils._is_gcs_disabled = True
    builder = tfds.builder("cityscapes/semantic_segmentation", data_dir=work_dir, try_gcs=False)
    config = tfds.download.DownloadConfig(
        manual_dir=zip_dir,
        try_download_gcs=False,
        compute_stats=tfds.download.ComputeStatsMode.SKIP,
    )
    try:
        builder.download_and_prepare(
            download_dir=os.path.join(work_dir, "downloads"), download_config=config
        )
    except Exception as e:  # noqa: BLE001 - tfds raises many types; report them all in one line
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise RawDataError(
            f"--cityscapes_zip_dir={zip_dir}: tensorflow-datasets cannot prepare the zips "
            f"({type(e).__name__}: {first_line})"
        ) from None

    def split(tfds_split: str, name: str) -> Split:
        def examples() -> Iterator[RawExample]:
            dataset = builder.as_dataset(
                split=tfds_split,
                shuffle_files=False,
                decoders={
                    "image_left": tfds.decode.SkipDecoding(),
                    "segmentation_label": tfds.decode.SkipDecoding(),
                },
            )
            for example in tfds.as_numpy(dataset):
                image_id = example["image_id"].decode()
                city = image_id.split("_")[0]
                yield RawExample(
                    filename=f"{image_id}_leftImg8bit.png",
                    image_path=f"{ZIP_FILES[0]}:leftImg8bit/{name}/{city}/"
                    f"{image_id}_leftImg8bit.png",
                    label_path=f"{ZIP_FILES[1]}:gtFine/{name}/{city}/"
                    f"{image_id}_gtFine_labelIds.png",
                    image=example["image_left"],
                    label=example["segmentation_label"],
                )

        return Split(builder.info.splits[tfds_split].num_examples, examples)

    return {
        name: split(tfds_split, name)
        for tfds_split, name in _SPLITS.items()
        if tfds_split in builder.info.splits
    }
