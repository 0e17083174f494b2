"""What `python -m data_prep.build_tfrecords` does, from a typed config instead of flags.

`build(BuildConfig(...))` finds the splits (the dataset's reader, the Cityscapes zips
through tensorflow-datasets, or the synthetic generator), keeps those asked for, and
writes them with `ciss_tf.data.writer`. Any bad input ends in one `RawDataError` whose
message is the command's error line, and leaves nothing behind.
"""

import contextlib
import dataclasses
import os
import tempfile

import tensorflow as tf
from absl import logging

from ciss_tf.data import datasets, raw_readers, writer
from ciss_tf.data.raw_readers import RawDataError, Split


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """One conversion; the fields are the command's flags (see `build_tfrecords`).

    Attributes:
        dataset: registry name (`ciss_tf.data.datasets`).
        output_dir: folder for the shards.
        input_dir: the dataset's folder in its released layout (not for synthetic).
        cityscapes_zip_dir: Cityscapes only, instead of `input_dir`: the official zips.
        tfds_data_dir: with `cityscapes_zip_dir`: tensorflow-datasets' work folder (kept);
            None for a temporary one in `output_dir`.
        splits: splits to convert; empty for all found.
        num_shards: shards per split; 0 for about 256 records per shard.
        max_images_per_split: at most this many images per split; 0 for all.
        skip_bad: leave out bad examples, listed in `report_file`, instead of stopping.
        report_file: with `skip_bad`; None for `<output_dir>/skipped.txt`.
        synthetic_seed, synthetic_num_train, synthetic_num_val, synthetic_height,
        synthetic_width: the generated synthetic dataset.
    """

    dataset: str
    output_dir: str
    input_dir: str | None = None
    cityscapes_zip_dir: str | None = None
    tfds_data_dir: str | None = None
    splits: tuple[str, ...] = ()
    num_shards: int = 0
    max_images_per_split: int = 0
    skip_bad: bool = False
    report_file: str | None = None
    synthetic_seed: int = 0
    synthetic_num_train: int = 400
    synthetic_num_val: int = 100
    synthetic_height: int = 96
    synthetic_width: int = 96


def _find_splits(cfg: BuildConfig, stack: contextlib.ExitStack) -> dict[str, Split]:
    zip_dir, input_dir = cfg.cityscapes_zip_dir, cfg.input_dir
    if zip_dir and cfg.dataset != "cityscapes":
        raise RawDataError("--cityscapes_zip_dir is only for --dataset=cityscapes")
    if zip_dir and input_dir:
        raise RawDataError("give either --input_dir or --cityscapes_zip_dir, not both")
    if cfg.dataset == "synthetic":
        return raw_readers.synthetic_splits(
            seed=cfg.synthetic_seed,
            num_train=cfg.synthetic_num_train,
            num_val=cfg.synthetic_num_val,
            height=cfg.synthetic_height,
            width=cfg.synthetic_width,
        )
    if zip_dir:
        from data_prep import tfds_cityscapes  # tensorflow_datasets is slow to import

        work_dir = cfg.tfds_data_dir
        if not work_dir:
            # The default work folder lives in the output folder, so that one has to exist
            # before the zips are read; a failed run removes it again (see `build`).
            tf.io.gfile.makedirs(cfg.output_dir)
            work_dir = stack.enter_context(
                tempfile.TemporaryDirectory(prefix=".tfds-", dir=cfg.output_dir)
            )
        return tfds_cityscapes.cityscapes_zip_splits(zip_dir, work_dir)
    if not input_dir:
        raise RawDataError(f"--input_dir is required for --dataset={cfg.dataset}")
    return datasets.get_dataset_info(cfg.dataset).read_splits(input_dir)


def _select_splits(cfg: BuildConfig, splits: dict[str, Split]) -> dict[str, Split]:
    """The splits named by `cfg.splits` (default: all), warning about Cityscapes `test`."""
    if cfg.splits:
        for split in cfg.splits:
            if split not in splits:
                raise RawDataError(
                    f"--splits={','.join(cfg.splits)}: no {split!r} split found "
                    f"(found: {', '.join(splits)})"
                )
        splits = {name: split for name, split in splits.items() if name in cfg.splits}
    if cfg.dataset == "cityscapes" and "test" in splits:
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


def build(cfg: BuildConfig) -> dict[str, int]:
    """Converts the dataset `cfg` names; returns the records written per split.

    A run that fails leaves nothing behind: `writer.write_splits` removes its own staging
    folder, and the folders this run created for the output are removed again.

    Raises:
        RawDataError: bad input (flags, files, the output folder); the message is one line
            naming the flag or file at fault.
    """
    spec = datasets.get_dataset_info(cfg.dataset)
    new_folder = None
    try:
        new_folder = _outermost_missing(cfg.output_dir)
        with contextlib.ExitStack() as stack:
            # _find_splits checks the input layout before write_splits creates the output.
            written, skipped = writer.write_splits(
                _select_splits(cfg, _find_splits(cfg, stack)),
                label_map=spec.label_map,
                label_hint=spec.label_hint,
                output_dir=cfg.output_dir,
                num_shards=cfg.num_shards,
                max_per_split=cfg.max_images_per_split,
                skip_bad=cfg.skip_bad,
            )
        if cfg.skip_bad:
            report = cfg.report_file or os.path.join(cfg.output_dir, "skipped.txt")
            writer.write_report(report, skipped)
    except (RawDataError, OSError, tf.errors.OpError) as error:
        if new_folder and tf.io.gfile.exists(new_folder):
            # Cleaning up must not replace the error being reported by another one.
            with contextlib.suppress(tf.errors.OpError):
                tf.io.gfile.rmtree(new_folder)
        if isinstance(error, RawDataError):
            raise
        # An OpError's own message names the file; its str() adds TF's prefixes.
        message = (writer.op_error_reason(error) if isinstance(error, tf.errors.OpError)
                   else str(error))
        raise RawDataError(message) from None
    if cfg.skip_bad and skipped:
        logging.warning("Skipped %d bad examples, listed in %s", len(skipped), report)
    logging.info(
        "Wrote %s to %s", ", ".join(f"{s}: {n}" for s, n in written.items()), cfg.output_dir
    )
    return written
