r"""Exports a CiSS-Net checkpoint as a versioned SavedModel for TF Serving.

    python -m ciss_tf.export --checkpoint=runs/ade20k --export_dir=export --num_steps=2

writes `export/<version>/` (default version: the checkpoint's training step, or the Unix
time for a checkpoint without one). An existing version is never overwritten: the model is
saved into a hidden folder of `--export_dir` and renamed into place once complete, so a
server watching the folder never sees a half-written version.

The run folder brings the model, dataset, T and input scale it was trained with; flags (or
an experiment's `--flagfile`, needed for a bare checkpoint prefix) override what they name.
The graph and its signatures: `ciss_tf.serving.exporter`; the tool: `tools/export_tool.py`.
"""

from absl import flags

from ciss_tf.serving import exporter
from ciss_tf.tools import command_flags, export_tool

FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags of this tool (done by `run`, so importing defines none)."""
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix, or a folder (its latest).")
    flags.DEFINE_string("export_dir", None, "Base folder of the versioned SavedModels.")
    flags.DEFINE_integer(
        "unroll_steps", 2,
        "T: context steps unrolled by the exported model (default: the run's T, else 2).",
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


def export_from_flags():
    """Exports the checkpoint the flags name; returns the version folder."""
    for name in ("checkpoint", "export_dir"):
        if not FLAGS[name].value:
            raise ValueError(f"--{name} is required")
    settings = command_flags.stage2_settings(FLAGS.checkpoint, "export")
    return export_tool.export_checkpoint(
        settings.model, settings.dataset, FLAGS.checkpoint, FLAGS.export_dir,
        version=FLAGS.version, num_steps=settings.unroll_steps,
        max_image_size=FLAGS.max_image_size, fast=FLAGS.fast, input_scale=settings.input_scale,
        probabilities=FLAGS.probabilities, mixed_precision=FLAGS.mixed_precision,
    )


def run():
    """Console entry point."""
    command_flags.run_tool(define_flags, export_from_flags)


if __name__ == "__main__":
    run()
