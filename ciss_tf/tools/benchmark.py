"""Speed of CiSS-Net inference, training and input on this machine, as a results dict.

    results = benchmark.run_benchmark(benchmark.BenchmarkConfig(preset="tiny"))

`ciss_tf.benchmark` is the command; `benchmark_report` prints and writes the results. What
is measured, how, and the keys of the results: docs/performance.md. Weights are random:
time and FLOPs do not depend on them.
"""

import contextlib
import dataclasses
import os
import statistics
import tempfile
import time

import cv2
import keras
import tensorflow as tf
from absl import logging

from ciss_tf.data import datasets, input_pipeline, synthetic, tfrecord
from ciss_tf.modeling import config
from ciss_tf.modeling.config import STAGES
from ciss_tf.serving.fast_inference import FastCissNet
from ciss_tf.tools import train_probe
from ciss_tf.training.config import BACKPROPS, PRECISIONS

# Benchmark preset -> (network preset, dataset that sets the classes, image side).
SETTINGS = {
    "paper": ("resnet50", "ade20k", 473),
    "resnet50": ("resnet50", "ade20k", 473),
    "resnet101": ("resnet101", "cityscapes", 713),
    "tiny": ("tiny", "synthetic", 64),
}
SECTIONS = ("inference", "train", "pipeline")
# Records of the input-pipeline measurement, (height, width, image format): Cityscapes'
# PNGs for its preset, ADE20K's typical JPEG otherwise, small for `tiny`.
RECORDS = {"tiny": (96, 96, "jpeg"), "resnet101": (1024, 2048, "png")}
DEFAULT_RECORDS = (512, 683, "jpeg")
NUM_RECORDS = 16


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """What to measure (`ciss_tf.benchmark`'s flags of the same names say more).

    Attributes:
      preset: a key of `SETTINGS`.
      image_size: (height, width) of the inputs; None: the preset's.
      steps: the unrolled steps t timed; must hold 0 and 2.
      sections: what to measure, a subset of `SECTIONS`.
      train_stages: the stages the training section measures.
      train_sweep: the T values of the training section's sweep of stage 2, each measured
        with every mode of `train_backprops` (empty: no sweep).
      unroll_steps, jit_compile, mixed_precision, backprop, grad_accum_steps: as the
        trainer's flags.
    """

    preset: str = "paper"
    image_size: tuple[int, int] | None = None
    batch: int = 1
    steps: tuple[int, ...] = (0, 1, 2, 4)
    repeats: int = 3
    warmup: int = 1
    sections: tuple[str, ...] = SECTIONS
    winograd_min_channels: int = 512
    train_batch: int = 2
    train_repeats: int = 2
    pipeline_batches: int = 20
    train_stages: tuple[str, ...] = ("pspnet", "ciss")
    train_sweep: tuple[int, ...] = (1, 2, 4, 8)
    train_backprops: tuple[str, ...] = BACKPROPS
    unroll_steps: int = 8
    jit_compile: bool = False
    mixed_precision: str = "float32"
    backprop: str = "episode"
    grad_accum_steps: int = 1

    def __post_init__(self):
        if self.preset not in SETTINGS:
            raise ValueError(f"--preset={self.preset}: not one of {tuple(SETTINGS)}")
        if self.image_size is not None and min(self.image_size) < 32:
            raise ValueError(f"--image_size must be sides >= 32; got {list(self.image_size)}")
        if 0 not in self.steps or 2 not in self.steps or min(self.steps) < 0:
            raise ValueError(
                f"--steps must hold 0 and 2 and no negative step; got {list(self.steps)}"
            )
        for name in ("batch", "repeats", "train_batch", "pipeline_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1")
        if self.train_repeats < 0:
            raise ValueError("--train_repeats must be >= 0")
        unknown = set(self.sections) - set(SECTIONS)
        if unknown:
            raise ValueError(f"--sections: unknown {sorted(unknown)}")
        if set(self.train_stages) - set(STAGES) or set(self.train_backprops) - set(BACKPROPS):
            raise ValueError(
                f"--train_stages must be in {STAGES} and --train_backprops in {BACKPROPS}"
            )
        if min(self.train_sweep, default=1) < 1:
            raise ValueError(f"--train_sweep must be T values >= 1; got {list(self.train_sweep)}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"--mixed_precision={self.mixed_precision}: not one of {PRECISIONS}")

    @property
    def network(self):
        """The network preset."""
        return SETTINGS[self.preset][0]

    @property
    def dataset(self):
        """The dataset that sets the number of classes."""
        return SETTINGS[self.preset][1]

    @property
    def size(self):
        """(height, width) of the inputs."""
        side = SETTINGS[self.preset][2]
        return tuple(self.image_size) if self.image_size else (side, side)


def median(values):
    """The median of a non-empty list of numbers."""
    return float(statistics.median(values))


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


def measure_inference(cfg, num_classes):
    """Times and FLOPs of every (path, t) and of the reference conv."""
    keras.utils.set_random_seed(0)
    model = config.build_ciss_net(num_classes, cfg.network)
    images = tf.random.stateless_normal([cfg.batch, *cfg.size, 3], seed=[0, 0]) * 50.0
    images = tf.cast(images, model.compute_dtype)
    model(images[:, :33, :33], num_steps=1)
    fast_nets = {"fast": FastCissNet(model)}
    if model.compute_dtype == "float32":
        fast_nets["winograd"] = FastCissNet(
            model, winograd=True, winograd_min_channels=cfg.winograd_min_channels
        )
    functions = _inference_functions(model, fast_nets, cfg.steps, cfg.jit_compile)

    # The reference: the Base Net's 3x3 conv over X as one conv, in the same dtype.
    h, w = (feature_size(s) for s in cfg.size)
    x_channels, channels = model.feature_net.output_channels, model.base_net.channels
    conv_input = tf.cast(tf.random.stateless_normal([1, h, w, x_channels], seed=[0, 1]),
                         model.compute_dtype)
    conv_kernel = tf.cast(
        tf.random.stateless_normal([3, 3, x_channels, channels], seed=[0, 2]) * 0.01,
        model.compute_dtype,
    )
    conv = tf.function(lambda x: tf.nn.conv2d(x, conv_kernel, 1, "SAME"),
                       jit_compile=cfg.jit_compile, autograph=False)

    unique = {}
    for key, fn in functions.items():
        unique.setdefault(id(fn), (key, fn))
    flops = {}
    for key, fn in unique.values():
        logging.info("tracing and counting %s t=%d", *key)
        flops[key] = graph_flops(fn.get_concrete_function(images))
    conv_flops = graph_flops(conv.get_concrete_function(conv_input))
    logging.info("timing %d functions, %d warm-up + %d rounds", len(unique) + 1,
                 cfg.warmup, cfg.repeats)

    timed = {key: fn for key, fn in unique.values()}
    timed["conv"] = conv
    inputs = {key: images for key in timed}
    inputs["conv"] = conv_input
    times = time_round_robin(timed, inputs, cfg.repeats, cfg.warmup)

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


def measure_training(cfg):
    """`train_probe.measure` of each stage of `cfg.train_stages`, each in a fresh process.

    Returns:
      (stages, sweep): `{stage: probe}` at `cfg`'s settings, and the probes of stage 2 for
      every T of `cfg.train_sweep` in every mode of `cfg.train_backprops`.
    """
    def probe(stage, unroll_steps, backprop):
        logging.info("training probe: stage %s, T = %d, %s", stage, unroll_steps, backprop)
        return train_probe.measure(train_probe.TrainProbe(
            stage=stage, preset=cfg.network, dataset=cfg.dataset, crop_size=cfg.size,
            batch_size=cfg.train_batch, unroll_steps=unroll_steps,
            repeats=cfg.train_repeats, jit_compile=cfg.jit_compile,
            mixed_precision=cfg.mixed_precision, backprop=backprop,
            grad_accum_steps=cfg.grad_accum_steps,
        ))

    stages = {stage: probe(stage, cfg.unroll_steps, cfg.backprop) for stage in cfg.train_stages}
    sweep = [probe("ciss", t, backprop)
             for t in cfg.train_sweep for backprop in cfg.train_backprops]
    return stages, sweep


def write_records(directory, count, height, width, image_format="jpeg"):
    """Writes `count` synthetic scenes (image as `image_format`, label PNG) in two shards."""
    paths = [os.path.join(directory, tfrecord.shard_name("train", i, 2)) for i in range(2)]
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(tf.io.TFRecordWriter(path)) for path in paths]
        for index in range(count):
            image, label = synthetic.generate_example(0, "train", index, height, width)
            suffix = ".jpg" if image_format == "jpeg" else ".png"
            encoded = cv2.imencode(suffix, image[..., ::-1])[1].tobytes()
            png = cv2.imencode(".png", label)[1].tobytes()
            example = tfrecord.make_example(
                image_encoded=encoded, image_format=image_format, label_png=png,
                filename=f"bench_{index}{suffix}", height=height, width=width,
            )
            writers[index % 2].write(example.SerializeToString())
    return os.path.join(directory, "train-*-of-*.tfrecord")


def measure_pipeline(cfg, num_classes):
    """Images per second of `input_pipeline.train_dataset` alone, and per CPU second.

    The rate per CPU second (the process's CPU time over the timed batches) is the rate of
    one core: it changes little when other processes load the machine, unlike the wall rate.
    """
    logging.info("input pipeline")
    height, width, image_format = RECORDS.get(cfg.preset, DEFAULT_RECORDS)
    with tempfile.TemporaryDirectory() as directory:
        pattern = write_records(directory, NUM_RECORDS, height, width, image_format)
        dataset = input_pipeline.train_dataset(
            pattern, crop_size=cfg.size, batch_size=cfg.train_batch, seed=0,
            num_classes=num_classes,
        )
        iterator = iter(dataset)
        next(iterator)
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(cfg.pipeline_batches):
            next(iterator)["image"].numpy()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    images = cfg.pipeline_batches * cfg.train_batch
    return {
        "record_size": [height, width], "record_format": image_format, "crop": list(cfg.size),
        "batch": cfg.train_batch, "batches": cfg.pipeline_batches, "seconds": seconds,
        "cpu_seconds": cpu_seconds, "images_per_second": images / seconds,
        "images_per_cpu_second": images / cpu_seconds,
    }


def summarise(inference, reference):
    """The top-level figures of the results from the inference results."""
    def seconds(path, t):
        return inference[path][str(t)]["seconds"]

    best = "winograd" if "winograd" in inference else "fast"
    # Winograd's graph hides its tile transforms from the profiler: rate it by the FLOPs of
    # the same computation as direct convs (the `fast` graph's).
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


def run_benchmark(cfg):
    """Measures the sections of `cfg` (a `BenchmarkConfig`); returns the results dict.

    Sets the Keras dtype policy to `cfg.mixed_precision` (before any model is built).

    Raises:
      RuntimeError: a training probe failed.
    """
    num_classes = datasets.get_dataset_info(cfg.dataset).num_classes
    if cfg.mixed_precision != "float32":
        keras.mixed_precision.set_global_policy(cfg.mixed_precision)
    results = {
        "preset": cfg.preset, "network": cfg.network, "dataset": cfg.dataset,
        "num_classes": num_classes, "image_size": list(cfg.size), "batch": cfg.batch,
        "steps": list(cfg.steps), "repeats": cfg.repeats, "warmup": cfg.warmup,
        "jit_compile": cfg.jit_compile, "mixed_precision": cfg.mixed_precision,
        "tensorflow": tf.__version__, "cpu_count": os.cpu_count(),
    }
    load_start = os.getloadavg()
    if "inference" in cfg.sections:
        inference, reference = measure_inference(cfg, num_classes)
        results.update(summarise(inference, reference))
        results["conv_reference"] = reference
        results["inference"] = inference
    if "train" in cfg.sections:
        results["train"], results["train_sweep"] = measure_training(cfg)
    if "pipeline" in cfg.sections:
        pipeline = measure_pipeline(cfg, num_classes)
        fastest = max((r["images_per_second"] or 0 for r in results.get("train", {}).values()),
                      default=0)
        if fastest:
            pipeline["ratio_to_fastest_train_step"] = pipeline["images_per_second"] / fastest
        results["input_pipeline"] = pipeline
    results["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
    return results
