r"""The embedded demo, end to end on a CPU: `python -m ciss_tf.demo [--workdir=DIR]`.

What it runs and writes: `ciss_tf.tools.demo`.
"""

import sys

from absl import app, flags

from ciss_tf.tools import (
    cli,  # noqa: F401  (train: the --seed and --data_dir flags)
    demo,
)

flags.DEFINE_string("workdir", "runs/demo", "Folder of the data, runs and results.")
flags.DEFINE_enum(
    "ablations", "default", ["default", "all"],
    "default: CiSS-Net and the two controls; all: also the gated variant and the gamma and "
    "lambda2 sweeps (Tables 2-4).",
)
flags.DEFINE_enum(
    "demo_scale", "default", ["default", "test"],
    "default: the real demo; test: a few steps on tiny images (for the test suite).",
)
flags.DEFINE_integer("data_seed", 0, "Seed of the synthetic dataset.")
# The demo also reads these two (defined by ciss_tf.train and ciss_tf.tools.command_flags): list
# them in --help.
flags.declare_key_flag("seed")
flags.declare_key_flag("data_dir")

FLAGS = flags.FLAGS


def main(argv):
    """Runs the demo; one error line and a non-zero exit when a step fails."""
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    try:
        demo.run_demo(FLAGS.workdir, FLAGS.ablations, FLAGS.demo_scale, FLAGS.seed,
                      FLAGS.data_seed, FLAGS.data_dir)
    except (demo.DemoError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")


def run():
    """Console entry point `ciss-demo`."""
    cli.list_flags_in_help(__name__)
    app.run(main)


if __name__ == "__main__":
    run()
