r"""Colour-coded predictions and context maps of images (the paper's Figures 1, 4 and 5).

    python -m ciss_tf.predict --checkpoint=runs/ade20k --input=photos/ \
        --output_dir=predictions --num_steps=2

The run folder brings the model, dataset, T and input scale it was trained with; flags (or
an experiment's `--flagfile`, needed for a bare checkpoint prefix) override what they name.

`--input` is an image file (PNG, JPEG, BMP or GIF) or a folder of them (not recursive).
Every image runs whole, at its own size (or resized by `--input_scale`, the scale the model
was trained at), with greedy actions. For an input `<stem>.<ext>`
and T = `--num_steps`, `--output_dir` receives PNGs of the input's size:

* `<stem>_pred_t<t>.png`, t = 0..T: the prediction at step t in the dataset's palette.
* `<stem>_context_t<t>.png`, t = 1..T: the context map fed to step t (made from the
  prediction at t - 1): kept pixels in the colour of their class, uncertain pixels white.
* `<stem>_overlay_t<T>.png`: the input blended with the prediction at step T
  (`--overlay_alpha`).
* `<stem>_compare.png`: side by side, the input, the prediction at t = 0, the context map
  of step T and the prediction at step T (only the first two when T = 0).

Every input is decoded before anything is written, so a bad file stops the run with nothing
written.
"""

from absl import flags

from ciss_tf.tools import command_flags, predict_tool

FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags of this tool (done by `run`, so importing defines none)."""
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix, or a folder (its latest).")
    flags.DEFINE_string("input", None, "An image file or a folder of images.")
    flags.DEFINE_string("output_dir", None, "Folder of the output PNGs (created if missing).")
    flags.DEFINE_integer(
        "unroll_steps", 2, "T: context steps unrolled (default: the run's T, else 2)."
    )
    flags.DEFINE_alias("num_steps", "unroll_steps")
    flags.DEFINE_float("overlay_alpha", 0.5, "Weight of the prediction in the overlay.")


def predict_from_flags():
    """Runs the prediction the flags describe; returns the paths written."""
    for name in ("checkpoint", "input", "output_dir"):
        if not FLAGS[name].value:
            raise ValueError(f"--{name} is required")
    settings = command_flags.stage2_settings(FLAGS.checkpoint, "predict")
    return predict_tool.write_predictions(
        settings.model, settings.dataset, FLAGS.checkpoint, FLAGS.input, FLAGS.output_dir,
        num_steps=settings.unroll_steps, input_scale=settings.input_scale,
        overlay_alpha=FLAGS.overlay_alpha,
    )


def run():
    """Console entry point."""
    command_flags.run_tool(define_flags, predict_from_flags)


if __name__ == "__main__":
    run()
