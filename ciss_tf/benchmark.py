r"""Speed of CiSS-Net inference and training on this machine: prints a table, writes JSON.

    python -m ciss_tf.benchmark --preset=paper --output_json=bench.json
    python -m ciss_tf.benchmark --preset=tiny [--jit_compile] [--mixed_precision=mixed_bfloat16]

`--preset=paper` is the paper's ADE20K setting: ResNet-50 features, 150 classes, 473x473,
batch 1 (`resnet50` is the same; `resnet101` is Cityscapes: 19 classes, 713x713); `tiny`
is the tiny network on 64x64 inputs with the synthetic dataset's 8 classes. `--jit_compile`
and `--mixed_precision` are the trainer's flags. The flags make a
`tools.benchmark.BenchmarkConfig` for `tools.benchmark.run_benchmark`; what it measures
and the JSON keys: docs/performance.md.
"""

import os
import sys

from absl import app, flags

# --unroll_steps, --jit_compile, --mixed_precision, --backprop, --grad_accum_steps
from ciss_tf import train  # noqa: F401
from ciss_tf.tools import benchmark, benchmark_report, cli

FLAGS = flags.FLAGS


def define_flags():
    """Defines the benchmark's flags (by `run`, not at import, like the other tools)."""
    # `config` defines --preset for the network alone; the benchmark also takes "paper".
    flags.DEFINE_enum(
        "preset", "paper", list(benchmark.SETTINGS),
        "paper (= resnet50): ADE20K shape, 150 classes, 473x473; resnet101: Cityscapes, "
        "19 classes, 713x713; tiny: tiny network, 8 classes, 64x64.",
        allow_override=True,
    )
    flags.DEFINE_string("output_json", None, "Write the results here as JSON.")
    flags.DEFINE_list("image_size", None, "Input height,width (or one side); default: preset.")
    flags.DEFINE_integer("batch", 1, "Inference batch size.")
    flags.DEFINE_list("steps", ["0", "1", "2", "4"], "Unrolled steps t timed (must hold 0, 2).")
    flags.DEFINE_integer("repeats", 3, "Timed runs of each function; the median is reported.")
    flags.DEFINE_integer("warmup", 1, "Untimed runs of each function first (the first traces).")
    flags.DEFINE_list(
        "sections", list(benchmark.SECTIONS),
        "What to measure: inference (times and FLOPs), train (step throughput and peak "
        "memory, in subprocesses), pipeline (input pipeline throughput).",
    )
    flags.DEFINE_integer(
        "winograd_min_channels", 512,
        "The winograd path runs 3x3 convs with at least this many inputs by Winograd.",
    )
    flags.DEFINE_integer("train_batch", 2, "Global batch of the training steps.")
    flags.DEFINE_integer(
        "train_repeats", 2,
        "Timed training steps after one warm-up step (0: the warm-up step alone, for its "
        "peak memory).",
    )
    flags.DEFINE_integer("pipeline_batches", 20, "Timed input-pipeline batches.")
    flags.DEFINE_list("train_stages", ["pspnet", "ciss"], "Stages the train section measures.")
    flags.DEFINE_list(
        "train_sweep", ["1", "2", "4", "8"],
        "T values at which the train section also measures stage 2 (step time and peak "
        "memory), in every mode of --train_backprops; empty: no sweep.",
    )
    flags.DEFINE_list("train_backprops", ["episode", "per_step"], "Modes of the T sweep.")


def config_from_flags(flag_values=FLAGS):
    """The `benchmark.BenchmarkConfig` the parsed flags give.

    Raises:
      ValueError: flags that do not make a run, or an `--output_json` whose folder does
        not exist (the message names the flag).
    """
    fv = flag_values
    image_size = None
    if fv.image_size:
        try:
            sides = [int(v) for v in fv.image_size]
        except ValueError:
            raise ValueError(f"--image_size must be height,width; got {fv.image_size}") from None
        if len(sides) not in (1, 2):
            raise ValueError(f"--image_size must be one or two sides; got {sides}")
        image_size = (sides[0], sides[-1])
    try:
        steps = tuple(sorted({int(t) for t in fv.steps}))
    except ValueError:
        raise ValueError(f"--steps must be integers; got {fv.steps}") from None
    try:
        sweep = tuple(int(t) for t in fv.train_sweep)
    except ValueError:
        raise ValueError(f"--train_sweep must be integers; got {fv.train_sweep}") from None
    if fv.output_json and not os.path.isdir(os.path.dirname(fv.output_json) or "."):
        raise ValueError(f"--output_json={fv.output_json}: its folder does not exist")
    return benchmark.BenchmarkConfig(
        preset=fv.preset, image_size=image_size, batch=fv.batch, steps=steps,
        repeats=fv.repeats, warmup=fv.warmup, sections=tuple(fv.sections),
        winograd_min_channels=fv.winograd_min_channels, train_batch=fv.train_batch,
        train_repeats=fv.train_repeats, pipeline_batches=fv.pipeline_batches,
        train_stages=tuple(fv.train_stages), train_sweep=sweep,
        train_backprops=tuple(fv.train_backprops), unroll_steps=fv.unroll_steps,
        jit_compile=fv.jit_compile, mixed_precision=fv.mixed_precision,
        backprop=fv.backprop, grad_accum_steps=fv.grad_accum_steps,
    )


def main(argv):
    """Runs the benchmark; bad flags exit with one line on stderr."""
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}")
    try:
        results = benchmark.run_benchmark(config_from_flags())
    except (ValueError, RuntimeError) as error:
        sys.exit(f"error: {error}")
    print(benchmark_report.format_table(results))
    if FLAGS.output_json:
        try:
            benchmark_report.write_json(results, FLAGS.output_json)
        except OSError as error:
            sys.exit(f"error: --output_json={FLAGS.output_json}: {error.strerror}")


def run():
    """Console entry point."""
    define_flags()
    cli.list_flags_in_help(__name__)
    app.run(main)


if __name__ == "__main__":
    run()
