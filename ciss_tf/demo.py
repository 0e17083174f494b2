r"""The embedded demo, end to end on a CPU: `python -m ciss_tf.demo [--workdir=DIR]`.

    python -m ciss_tf.demo [--workdir=runs/demo] [--ablations=all] [--seed=0] [--data_dir=DIR]

The flags make a `tools.demo.DemoConfig` for `tools.demo.run_demo`; what it runs and
writes: docs/demo.md.
"""

import sys

import tensorflow as tf
from absl import app, flags

from ciss_tf import train
from ciss_tf.tools import cli, demo

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
        cfg = demo.DemoConfig(
            workdir=FLAGS.workdir, ablations=FLAGS.ablations, scale=FLAGS.demo_scale,
            seed=FLAGS.seed, data_seed=FLAGS.data_seed, data_dir=FLAGS.data_dir,
        )
        demo.run_demo(cfg, train.parse_config)
    except (demo.DemoError, OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    except tf.errors.OpError as error:  # e.g. a --workdir or --data_dir that is a file
        sys.exit(f"error: {error.message.strip().splitlines()[0]}")


def run():
    """Console entry point `ciss-demo`."""
    cli.list_flags_in_help(__name__)
    app.run(main)


if __name__ == "__main__":
    run()
