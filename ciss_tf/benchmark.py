r"""Speed of CiSS-Net inference and training on this machine: prints a table, writes JSON.

    python -m ciss_tf.benchmark --preset=paper --output_json=bench.json
    python -m ciss_tf.benchmark --preset=tiny [--jit_compile] [--mixed_precision=mixed_bfloat16]

`--preset=paper` is the paper's ADE20K setting: ResNet-50 features, 150 classes, 473x473,
batch 1 (`resnet50` is the same; `resnet101` is Cityscapes: 19 classes, 713x713); `tiny`
is the tiny network on 64x64 inputs with the synthetic dataset's 8 classes. Weights are
random: time and FLOPs do not depend on them.

What is measured
----------------
* **Inference** at t = 0, 1, 2, 4 (`--steps`) along three paths, each a `tf.function`
  (`--jit_compile` compiles them with XLA):

  - `naive`: nothing cached across steps (`CissNet(..., cache_features=False)`): each
    step's Bias Net and Context Net convolve the concatenation `[X, E]` again. This is how
    the authors' code unrolls: it computes `X` and the base logits once per image
    (`feature_net` and `prior_net` in `Networker.__init__`) and concatenates `X` into the
    first conv of both nets at every step (`pspnet_top_cls`, `pspnet_top_plc`).
  - `cached`: the model's default, the `X` halves of those convs computed once per image.
  - `fast`: `fast_inference.FastCissNet`, exact rewrites of the trained model (batch norm
    folded, `X`'s pyramid branches and the encoders' branches convolved on their pooled
    grids, the three `X` convs fused).
  - `winograd`: `fast` with its 3x3 convs of at least `--winograd_min_channels` inputs run
    by Winograd F(4x4, 3x3) (float32 only: skipped under `--mixed_precision`).

  At t = 0 `naive` and `cached` are the same graph (the Base Net alone), timed once. The
  time of one large 3x3 conv (the Base Net's: `h x w x C_X -> 512`, 60x60x4096 -> 512 in
  the paper preset) is measured in the same run as the reference rate of this machine.
  Every timed function runs once untraced-and-untimed per `--warmup`, then all of them
  run in turn, `--repeats` rounds: load from other processes then weighs on all alike.
  Each figure is the median of its rounds. The load average before and after is recorded.
* **FLOPs** of the same graphs, counted by the TF profiler
  (`tf.compat.v1.profiler.profile(..., ProfileOptionBuilder.float_operation())`) on each
  concrete function's graph, and the achieved GFLOP/s. For `winograd` the count holds its
  matrix products, not the tile transforms (additions inside XLA-compiled calls, which the
  profiler does not enter); its rate against the reference conv is therefore taken with
  the FLOPs of the same computation by direct convs (the `fast` graph's).
* **Training**: the real `training.trainer.Trainer` step (SGD, Eq. 7 or PSPNet's loss, weight decay)
  on one fixed in-memory batch (`--train_batch`, crop = the image size, T =
  `--unroll_steps`), stage 1 (PSPNet) and stage 2 (CiSS-Net), each in its own subprocess:
  images per second over `--train_repeats` steps after one warm-up step, and the peak
  resident memory of that process (`resource.getrusage(...).ru_maxrss`, the kernel's
  high-water mark of the whole process: TF's `get_memory_info` does not work on CPUs),
  next to the same figure right after the model and optimizer were built.
* **Input pipeline** alone: `input_pipeline.train_dataset` over JPEG/PNG records written
  into a temporary folder (synthetic scenes at ADE20K's typical 512x683, or 96x96 for
  `tiny`), images per second over `--pipeline_batches` batches after the first, and its
  ratio to the fastest training step.

`--mixed_precision` sets the Keras dtype policy before the models are built (the `fast`
path then computes in that dtype); `--jit_compile` applies to the inference functions and,
as in training, to the replica step. Both flags are the trainer's.

JSON: the top level holds `seconds_t0` and `ratio_t2_t0` (t = 2 over t = 0) of the fastest
exact path (`winograd`, or `fast` where Winograd does not apply), the same of `fast` alone
(`seconds_t0_fast`, `ratio_t2_t0_fast`), `ratio_t2_t0_cached`, `ratio_t2_t0_naive` (t = 2
over t = 0 of the model with and without the cached `X` halves), the speed-ups at t = 2,
the reference conv and the details of every section.
"""

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import keras
import tensorflow as tf
from absl import app, flags, logging

from ciss_tf import train
from ciss_tf.data import datasets, input_pipeline, synthetic, tfrecord
from ciss_tf.modeling import config
from ciss_tf.serving.fast_inference import FastCissNet
from ciss_tf.tools import cli
from ciss_tf.training import tasks
from ciss_tf.training import trainer as training_trainer

FLAGS = flags.FLAGS
# Benchmark preset -> (network preset, dataset that sets the classes, image side).
SETTINGS = {
    "paper": ("resnet50", "ade20k", 473),
    "resnet50": ("resnet50", "ade20k", 473),
    "resnet101": ("resnet101", "cityscapes", 713),
    "tiny": ("tiny", "synthetic", 64),
}
# Records of the input-pipeline measurement: ADE20K's typical size, or small for `tiny`.
RECORD_SIZES = {"tiny": (96, 96)}
DEFAULT_RECORD_SIZE = (512, 683)
NUM_RECORDS = 16
_PROBE_PREFIX = "TRAIN_PROBE_RESULT "


def define_flags():
    """Defines the benchmark's flags (by `run`, not at import, like the other tools)."""
    # `config` defines --preset for the network alone; the benchmark also takes "paper".
    flags.DEFINE_enum(
        "preset", "paper", list(SETTINGS),
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
        "sections", ["inference", "train", "pipeline"],
        "What to measure: inference (times and FLOPs), train (step throughput and peak "
        "memory, in subprocesses), pipeline (input pipeline throughput).",
    )
    flags.DEFINE_integer(
        "winograd_min_channels", 512,
        "The winograd path runs 3x3 convs with at least this many inputs by Winograd.",
    )
    flags.DEFINE_integer("train_batch", 2, "Global batch of the training steps.")
    flags.DEFINE_integer("train_repeats", 2, "Timed training steps (after one warm-up step).")
    flags.DEFINE_integer("pipeline_batches", 20, "Timed input-pipeline batches.")
    flags.DEFINE_bool(
        "train_probe", False,
        "Internal: run one training stage (--stage) and print its measurements, then exit.",
    )


def median(values):
    """The median of a non-empty list of numbers."""
    return float(statistics.median(values))


def peak_rss_bytes():
    """The process's resident-memory high-water mark (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def graph_flops(concrete_function):
    """Float operations of a concrete function's graph, counted by the TF profiler."""
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    profile = tf.compat.v1.profiler.profile(concrete_function.graph, options=options)
    return int(profile.total_float_ops)


def feature_size(side):
    """Side of the output-stride-8 feature map (three ceil-halvings, as the backbone)."""
    return -(-side // 8)


def time_round_robin(functions, inputs, repeats, warmup):
    """Runs each function `warmup` times untimed, then all of them in turn `repeats` times.

    Args:
      functions: dict name -> callable taking `inputs[name]`.
      inputs: dict name -> argument.
      repeats: timed rounds.
      warmup: untimed calls of each function first.

    Returns:
      dict name -> `(wall seconds, cpu seconds)`, each a list of `repeats` runs. CPU time
      is the process's (all threads): on a loaded machine it moves less than wall time.
    """
    def call(name):
        wall, cpu = time.perf_counter(), time.process_time()
        outputs = functions[name](inputs[name])
        for output in tf.nest.flatten(outputs):
            output.numpy()  # make sure the work is done
        return time.perf_counter() - wall, time.process_time() - cpu

    for name in functions:
        for _ in range(warmup):
            call(name)
    times = {name: ([], []) for name in functions}
    for _ in range(repeats):
        for name in functions:
            wall, cpu = call(name)
            times[name][0].append(wall)
            times[name][1].append(cpu)
    return times


def _settings():
    network, dataset, side = SETTINGS[FLAGS.preset]
    num_classes = datasets.get_dataset_info(dataset).num_classes
    if FLAGS.image_size:
        try:
            sizes = [int(v) for v in FLAGS.image_size]
        except ValueError:
            raise ValueError(f"--image_size must be height,width; got {FLAGS.image_size}") from None
        if len(sizes) not in (1, 2) or min(sizes) < 32:
            raise ValueError(f"--image_size must be one or two sides >= 32; got {sizes}")
        size = (sizes[0], sizes[-1])
    else:
        size = (side, side)
    try:
        steps = sorted({int(t) for t in FLAGS.steps})
    except ValueError:
        raise ValueError(f"--steps must be integers; got {FLAGS.steps}") from None
    if 0 not in steps or 2 not in steps or steps[0] < 0:
        raise ValueError(f"--steps must hold 0 and 2 and no negative step; got {FLAGS.steps}")
    for name in ("batch", "repeats", "train_batch", "train_repeats", "pipeline_batches"):
        if getattr(FLAGS, name) < 1:
            raise ValueError(f"--{name} must be >= 1")
    unknown = set(FLAGS.sections) - {"inference", "train", "pipeline"}
    if unknown:
        raise ValueError(f"--sections: unknown {sorted(unknown)}")
    if FLAGS.output_json and not os.path.isdir(os.path.dirname(FLAGS.output_json) or "."):
        raise ValueError(f"--output_json={FLAGS.output_json}: its folder does not exist")
    return network, dataset, num_classes, size, steps


def _inference_functions(model, fast_nets, steps, jit_compile):
    """tf.functions by (path, t); t = 0 of `naive` and `cached` is one graph.

    `fast_nets` maps the `FastCissNet` paths (`fast`, `winograd`) to their nets.
    """
    def compile_(fn):
        return tf.function(fn, jit_compile=jit_compile, autograph=False)

    def model_fn(t, cache):
        return compile_(lambda images: model(images, training=False, num_steps=t,
                                             cache_features=cache))

    def fast_fn(net, t):
        return compile_(lambda images: net(images, num_steps=t))

    functions = {}
    for t in steps:
        functions[("naive", t)] = model_fn(t, cache=False)
        functions[("cached", t)] = functions[("naive", t)] if t == 0 else model_fn(t, True)
        for path, net in fast_nets.items():
            functions[(path, t)] = fast_fn(net, t)
    return functions


def measure_inference(network, num_classes, size, steps):
    """Times and FLOPs of every (path, t) and of the reference conv."""
    keras.utils.set_random_seed(0)
    model = config.build_ciss_net(num_classes, network)
    images = tf.random.stateless_normal([FLAGS.batch, *size, 3], seed=[0, 0]) * 50.0
    images = tf.cast(images, model.compute_dtype)
    model(images[:, :33, :33], num_steps=1)
    fast_nets = {"fast": FastCissNet(model)}
    if model.compute_dtype == "float32":
        fast_nets["winograd"] = FastCissNet(
            model, winograd=True, winograd_min_channels=FLAGS.winograd_min_channels
        )
    functions = _inference_functions(model, fast_nets, steps, FLAGS.jit_compile)

    # The reference: the Base Net's 3x3 conv over X as one conv, in the same dtype.
    h, w = (feature_size(s) for s in size)
    x_channels, channels = model.feature_net.output_channels, model.base_net.channels
    conv_input = tf.cast(tf.random.stateless_normal([1, h, w, x_channels], seed=[0, 1]),
                         model.compute_dtype)
    conv_kernel = tf.cast(
        tf.random.stateless_normal([3, 3, x_channels, channels], seed=[0, 2]) * 0.01,
        model.compute_dtype,
    )
    conv = tf.function(lambda x: tf.nn.conv2d(x, conv_kernel, 1, "SAME"),
                       jit_compile=FLAGS.jit_compile, autograph=False)

    unique = {}
    for key, fn in functions.items():
        unique.setdefault(id(fn), (key, fn))
    flops = {}
    for key, fn in unique.values():
        logging.info("tracing and counting %s t=%d", *key)
        flops[key] = graph_flops(fn.get_concrete_function(images))
    conv_flops = graph_flops(conv.get_concrete_function(conv_input))
    logging.info("timing %d functions, %d warm-up + %d rounds", len(unique) + 1,
                 FLAGS.warmup, FLAGS.repeats)

    timed = {key: fn for key, fn in unique.values()}
    timed["conv"] = conv
    inputs = {key: images for key in timed}
    inputs["conv"] = conv_input
    times = time_round_robin(timed, inputs, FLAGS.repeats, FLAGS.warmup)

    results = {}  # paths in the order of `functions`: naive, cached, fast, winograd
    for (path, t), fn in functions.items():
        key = unique[id(fn)][0]
        results.setdefault(path, {})[str(t)] = _timing(times[key], flops[key])
    reference = {"shape": f"{h}x{w}x{x_channels} -> {channels}, 3x3",
                 **_timing(times["conv"], conv_flops)}
    return results, reference


def _timing(times, flops):
    wall, cpu = times
    seconds = median(wall)
    return {
        "seconds": seconds, "runs": wall, "cpu_seconds": median(cpu), "cpu_runs": cpu,
        "gflop": flops / 1e9, "gflops_per_second": flops / 1e9 / seconds,
    }


def _train_probe():
    """Child process: builds the trainer for `--stage`, times its steps, prints a JSON line."""
    if FLAGS.mixed_precision != "float32":
        keras.mixed_precision.set_global_policy(FLAGS.mixed_precision)
    keras.utils.set_random_seed(0)
    info = datasets.get_dataset_info(FLAGS.dataset)
    task = tasks.make_task(train.config_from_flags(), info)
    trainer = training_trainer.Trainer(tf.distribute.get_strategy(), task)
    rss_built = peak_rss_bytes()
    height, width = trainer.cfg.data.crop_size
    batch_size = trainer.global_batch
    batch = {
        "image": tf.random.stateless_normal([batch_size, height, width, 3], seed=[1, 0]) * 50.0,
        "label": tf.random.stateless_uniform(
            [batch_size, height, width], seed=[1, 1], maxval=info.num_classes, dtype=tf.int32
        ),
        "sample_id": tf.range(batch_size, dtype=tf.int64),
    }
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    times = []
    for _ in range(FLAGS.train_repeats + 1):
        start = time.perf_counter()
        terms = trainer.train_step(iterator)
        float(terms["total"])
        times.append(time.perf_counter() - start)
    seconds = median(times[1:])
    result = {
        "stage": FLAGS.stage, "batch": batch_size, "crop": [height, width],
        "unroll_steps": FLAGS.unroll_steps if FLAGS.stage == "ciss" else None,
        "first_step_seconds": times[0], "runs": times[1:], "seconds_per_step": seconds,
        "images_per_second": batch_size / seconds,
        "rss_after_build_bytes": rss_built, "peak_rss_bytes": peak_rss_bytes(),
    }
    print(_PROBE_PREFIX + json.dumps(result), flush=True)


def measure_training(network, dataset, size):
    """Runs `_train_probe` for stage 1 and stage 2, each in a fresh process."""
    results = {}
    for stage in ("pspnet", "ciss"):
        logging.info("training probe: stage %s", stage)
        command = [
            sys.executable, "-m", "ciss_tf.benchmark", "--train_probe", f"--stage={stage}",
            f"--preset={network}", f"--dataset={dataset}", f"--batch_size={FLAGS.train_batch}",
            f"--crop_size={size[0]},{size[1]}", f"--unroll_steps={FLAGS.unroll_steps}",
            f"--train_repeats={FLAGS.train_repeats}", f"--jit_compile={FLAGS.jit_compile}",
            f"--mixed_precision={FLAGS.mixed_precision}",
        ]
        process = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in process.stdout.splitlines() if line.startswith(_PROBE_PREFIX)]
        if process.returncode or not lines:
            last = (process.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"training probe for stage {stage} failed: {last}")
        results[stage] = json.loads(lines[-1][len(_PROBE_PREFIX):])
    return results


def write_records(directory, count, height, width):
    """Writes `count` synthetic scenes as JPEG + PNG records in two train shards."""
    paths = [os.path.join(directory, tfrecord.shard_name("train", i, 2)) for i in range(2)]
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(tf.io.TFRecordWriter(path)) for path in paths]
        for index in range(count):
            image, label = synthetic.generate_example(0, "train", index, height, width)
            jpeg = cv2.imencode(".jpg", image[..., ::-1])[1].tobytes()
            png = cv2.imencode(".png", label)[1].tobytes()
            example = tfrecord.make_example(
                image_encoded=jpeg, image_format="jpeg", label_png=png,
                filename=f"bench_{index}.jpg", height=height, width=width,
            )
            writers[index % 2].write(example.SerializeToString())
    return os.path.join(directory, "train-*-of-*.tfrecord")


def measure_pipeline(num_classes, size, record_size):
    """Images per second of `input_pipeline.train_dataset` alone."""
    logging.info("input pipeline")
    with tempfile.TemporaryDirectory() as directory:
        pattern = write_records(directory, NUM_RECORDS, *record_size)
        dataset = input_pipeline.train_dataset(
            pattern, crop_size=size, batch_size=FLAGS.train_batch, seed=0,
            num_classes=num_classes,
        )
        iterator = iter(dataset)
        next(iterator)
        start = time.perf_counter()
        for _ in range(FLAGS.pipeline_batches):
            next(iterator)["image"].numpy()
        seconds = time.perf_counter() - start
    return {
        "record_size": list(record_size), "crop": list(size), "batch": FLAGS.train_batch,
        "batches": FLAGS.pipeline_batches, "seconds": seconds,
        "images_per_second": FLAGS.pipeline_batches * FLAGS.train_batch / seconds,
    }


def summarise(inference, reference):
    """The top-level figures of the JSON from the inference results."""
    def seconds(path, t):
        return inference[path][str(t)]["seconds"]

    best = "winograd" if "winograd" in inference else "fast"
    # The rate of the best path counts the FLOPs of its direct-conv form (see module).
    direct_rate = inference["fast"]["0"]["gflop"] / seconds(best, 0)
    return {
        "fastest_path": best,
        "seconds_t0": seconds(best, 0),
        "seconds_t0_fast": seconds("fast", 0),
        "seconds_t0_model": seconds("cached", 0),
        "ratio_t2_t0": seconds(best, 2) / seconds(best, 0),
        "ratio_t2_t0_fast": seconds("fast", 2) / seconds("fast", 0),
        "ratio_t2_t0_cached": seconds("cached", 2) / seconds("cached", 0),
        "ratio_t2_t0_naive": seconds("naive", 2) / seconds("naive", 0),
        "speedup_t2_cached_over_naive": seconds("naive", 2) / seconds("cached", 2),
        "speedup_t2_fast_over_naive": seconds("naive", 2) / seconds("fast", 2),
        "speedup_t2_fastest_over_naive": seconds("naive", 2) / seconds(best, 2),
        "t0_rate_fraction_of_conv": direct_rate / reference["gflops_per_second"],
        "t0_rate_fraction_of_conv_model": inference["cached"]["0"]["gflops_per_second"]
        / reference["gflops_per_second"],
    }


def format_table(results):
    """The human-readable report of a results dict."""
    lines = [
        f"CiSS-Net benchmark: preset {results['preset']} ({results['network']}, "
        f"{results['num_classes']} classes, {results['image_size'][0]}x"
        f"{results['image_size'][1]}, batch {results['batch']}), {results['mixed_precision']}"
        f", jit_compile={results['jit_compile']}; load average (1 min) "
        f"{results['load_average']['start'][0]:.1f} -> {results['load_average']['end'][0]:.1f}",
    ]
    inference = results.get("inference")
    if inference:
        steps = list(inference["naive"])
        lines.append(f"{'path':<9}" + "".join(f"{'t=' + t:>24}" for t in steps))
        lines.append(f"{'':<9}" + f"{'s / GFLOP / GFLOP/s':>24}" * len(steps))
        for path in inference:
            cells = "".join(
                f"{r['seconds']:>8.3f}{r['gflop']:>8.1f}{r['gflops_per_second']:>8.1f}"
                for r in inference[path].values()
            )
            lines.append(f"{path:<9}{cells}")
        ref = results["conv_reference"]
        lines.append(
            f"one 3x3 conv {ref['shape']}: {ref['seconds']:.3f} s, {ref['gflop']:.1f} GFLOP, "
            f"{ref['gflops_per_second']:.1f} GFLOP/s"
        )
        best = results["fastest_path"]
        lines.append(
            f"t=2 / t=0: {best} {results['ratio_t2_t0']:.2f}, fast "
            f"{results['ratio_t2_t0_fast']:.2f}, cached {results['ratio_t2_t0_cached']:.2f}, "
            f"naive {results['ratio_t2_t0_naive']:.2f}; speed-up at t=2 over naive: cached "
            f"{results['speedup_t2_cached_over_naive']:.2f}x, fast "
            f"{results['speedup_t2_fast_over_naive']:.2f}x, {best} "
            f"{results['speedup_t2_fastest_over_naive']:.2f}x"
        )
        lines.append(
            f"t=0 rate / conv rate (direct-conv FLOPs): {best} "
            f"{results['t0_rate_fraction_of_conv']:.0%}, model "
            f"{results['t0_rate_fraction_of_conv_model']:.0%}"
        )
    for stage, r in results.get("train", {}).items():
        steps = f", T={r['unroll_steps']}" if r["unroll_steps"] is not None else ""
        lines.append(
            f"train {stage} (batch {r['batch']}{steps}): {r['seconds_per_step']:.2f} s/step, "
            f"{r['images_per_second']:.3f} img/s, peak RSS {r['peak_rss_bytes'] / 2**30:.2f} "
            f"GiB (after build {r['rss_after_build_bytes'] / 2**30:.2f} GiB)"
        )
    pipeline = results.get("input_pipeline")
    if pipeline:
        ratio = pipeline.get("ratio_to_fastest_train_step")
        lines.append(
            f"input pipeline: {pipeline['images_per_second']:.1f} img/s"
            + (f" = {ratio:.1f}x the fastest train step" if ratio else "")
        )
    return "\n".join(lines)


def benchmark():
    """Measures what `--sections` asks; returns the results dict."""
    network, dataset, num_classes, size, steps = _settings()
    if FLAGS.mixed_precision != "float32":
        keras.mixed_precision.set_global_policy(FLAGS.mixed_precision)
    results = {
        "preset": FLAGS.preset, "network": network, "dataset": dataset,
        "num_classes": num_classes, "image_size": list(size), "batch": FLAGS.batch,
        "steps": steps, "repeats": FLAGS.repeats, "warmup": FLAGS.warmup,
        "jit_compile": FLAGS.jit_compile, "mixed_precision": FLAGS.mixed_precision,
        "tensorflow": tf.__version__, "cpu_count": os.cpu_count(),
    }
    load_start = os.getloadavg()
    if "inference" in FLAGS.sections:
        inference, reference = measure_inference(network, num_classes, size, steps)
        results.update(summarise(inference, reference))
        results["conv_reference"] = reference
        results["inference"] = inference
    if "train" in FLAGS.sections:
        results["train"] = measure_training(network, dataset, size)
    if "pipeline" in FLAGS.sections:
        record_size = RECORD_SIZES.get(FLAGS.preset, DEFAULT_RECORD_SIZE)
        pipeline = measure_pipeline(num_classes, size, record_size)
        if "train" in results:
            fastest = max(r["images_per_second"] for r in results["train"].values())
            pipeline["ratio_to_fastest_train_step"] = pipeline["images_per_second"] / fastest
        results["input_pipeline"] = pipeline
    results["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
    return results


def main(argv):
    """Runs the benchmark; bad flags exit with one line on stderr."""
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}")
    if FLAGS.train_probe:
        _train_probe()
        return
    try:
        results = benchmark()
    except (ValueError, RuntimeError) as error:
        sys.exit(f"error: {error}")
    print(format_table(results))
    if FLAGS.output_json:
        partial = FLAGS.output_json + ".partial"
        try:
            with open(partial, "w") as f:
                json.dump(results, f, indent=1)
            os.replace(partial, FLAGS.output_json)
        except OSError as error:
            sys.exit(f"error: --output_json={FLAGS.output_json}: {error.strerror}")


def run():
    """Console entry point."""
    define_flags()
    cli.list_flags_in_help(__name__)
    app.run(main)


if __name__ == "__main__":
    run()
