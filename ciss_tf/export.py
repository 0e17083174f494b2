r"""Exports a CiSS-Net checkpoint as a versioned SavedModel for TF Serving.

    python -m ciss_tf.export --flagfile=experiments/ade20k.flags --checkpoint=runs/ade20k \
        --export_dir=export --num_steps=2

writes `export/<version>/` (default version: the checkpoint's training step, or the Unix
time for a checkpoint without one). An existing version is never overwritten: the model is
saved into a hidden folder of `--export_dir` and renamed into place once complete, so a
server watching the folder never sees a half-written version.

The graph and its signatures: `ciss_tf.serving.exporter`.
"""

import time

import keras
from absl import flags, logging

from ciss_tf.data import datasets
from ciss_tf.modeling import checkpoints
from ciss_tf.serving import exporter
from ciss_tf.tools import command_flags

FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags of this tool (done by `run`, so importing defines none)."""
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix, or a folder (its latest).")
    flags.DEFINE_string("export_dir", None, "Base folder of the versioned SavedModels.")
    flags.DEFINE_integer(
        "unroll_steps", 2,
        "T: context steps unrolled by the exported model (an experiment's flagfile gives its "
        "own).",
    )
    flags.DEFINE_alias("num_steps", "unroll_steps")
    flags.DEFINE_integer(
        "version", None, "Version folder (default: checkpoint step, else Unix time)."
    )
    flags.DEFINE_integer(
        "max_image_size", exporter.DEFAULT_MAX_IMAGE_SIZE, "Largest height and width accepted."
    )
    flags.DEFINE_bool(
        "probabilities", False,
        "Also return `probabilities`, float32 [B, H, W, Nc] (softmax at step T), from both "
        "signatures: Nc floats per pixel, so off by default.",
    )
    flags.DEFINE_bool(
        "fast", True,
        "Serve the exact inference-time rewrite (ciss_tf.serving.fast_inference); --nofast serves "
        "the plain model.",
    )
    flags.DEFINE_enum(
        "mixed_precision", "float32", ["float32", "mixed_bfloat16"],
        "mixed_bfloat16: the exported network computes in bfloat16 (the plain model: the fast "
        "rewrite is float32 only); the class logits, the signatures and their outputs stay "
        "as in float32.",
    )


def export_checkpoint(model_config, dataset, checkpoint, export_dir, *, version=None,
                      num_steps=2, max_image_size=exporter.DEFAULT_MAX_IMAGE_SIZE, fast=True,
                      input_scale=1.0, probabilities=False, mixed_precision="float32"):
    """The tool without its flags: exports a checkpoint, prints and returns the version folder.

    Args:
      model_config: the `config.ModelConfig` the checkpoint was trained with.
      dataset: dataset name (its number of classes).
      checkpoint: checkpoint prefix, or a folder (its latest).
      export_dir: base folder of the versioned SavedModels.
      version: version folder (None: the checkpoint's step, else the Unix time).
      num_steps, max_image_size, fast, input_scale, probabilities: see
        `exporter.export_saved_model`.
      mixed_precision: "float32", or "mixed_bfloat16" (the plain model, built under that
        Keras policy: its convs run in bfloat16).

    Raises:
      ValueError: a missing checkpoint, an existing version or a bad setting (naming it).
    """
    info = datasets.get_dataset_info(dataset)
    path = checkpoints.resolve(checkpoint)
    if version is None:
        version = checkpoints.step_of(path) or int(time.time())
    exporter.check_settings(export_dir, version, num_steps, max_image_size)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(mixed_precision)
    try:
        model, _ = checkpoints.load_model(model_config, info.num_classes, path)
        target = exporter.export_saved_model(
            model, export_dir, version, num_steps=num_steps, max_image_size=max_image_size,
            fast=fast and mixed_precision == "float32", input_scale=input_scale,
            probabilities=probabilities,
        )
    finally:
        keras.mixed_precision.set_global_policy(policy)
    logging.info("Exported %s (T = %d) to %s", path, num_steps, target)
    print(target)
    return target


def export_from_flags():
    """Exports the checkpoint the flags name; returns the version folder."""
    for name in ("checkpoint", "export_dir"):
        if not FLAGS[name].value:
            raise ValueError(f"--{name} is required")
    return export_checkpoint(
        command_flags.model_config("ciss"), FLAGS.dataset, FLAGS.checkpoint, FLAGS.export_dir,
        version=FLAGS.version, num_steps=FLAGS.unroll_steps,
        max_image_size=FLAGS.max_image_size, fast=FLAGS.fast, input_scale=FLAGS.input_scale,
        probabilities=FLAGS.probabilities, mixed_precision=FLAGS.mixed_precision,
    )


def run():
    """Console entry point."""
    command_flags.run_tool(define_flags, export_from_flags)


if __name__ == "__main__":
    run()
