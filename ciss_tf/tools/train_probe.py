"""Step time and peak memory of one training stage, each measured in a fresh process.

`measure(TrainProbe(...))` runs `python -m ciss_tf.tools.train_probe '<probe as JSON>'`
and returns what that process measured. The process is the point: its peak resident memory
(`ru_maxrss`, the kernel's high-water mark; TF's `get_memory_info` does not work on CPUs)
is then this stage's alone, not the caller's nor another stage's.
"""

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from ciss_tf.data import datasets
from ciss_tf.modeling.config import ModelConfig
from ciss_tf.training import config, tasks, trainer

_PREFIX = "TRAIN_PROBE_RESULT "


@dataclasses.dataclass(frozen=True)
class TrainProbe:
    """One training stage on one fixed in-memory batch; every other setting the trainer's default.

    Attributes:
      stage: "pspnet" (stage 1) or "ciss" (stage 2).
      preset: the network preset.
      dataset: the dataset that sets the classes.
      crop_size: (height, width) of the batch.
      batch_size: the global batch.
      unroll_steps: T of stage 2.
      repeats: timed steps, after one untimed warm-up step (0: the warm-up step alone, for
        its peak memory; no step time).
      jit_compile, mixed_precision, backprop, grad_accum_steps: as the trainer's flags of
        the same names.
    """

    stage: str
    preset: str
    dataset: str
    crop_size: tuple[int, int]
    batch_size: int
    unroll_steps: int
    repeats: int
    jit_compile: bool = False
    mixed_precision: str = "float32"
    backprop: str = "episode"
    grad_accum_steps: int = 1

    def train_config(self):
        """The `TrainConfig` of `python -m ciss_tf.train` with these settings as flags."""
        return config.TrainConfig(
            model=ModelConfig(stage=self.stage, preset=self.preset),
            model_dir=None,  # nothing is written
            data=config.DataConfig(dataset=self.dataset, crop_size=tuple(self.crop_size),
                                   batch_size=self.batch_size),
            unroll_steps=self.unroll_steps, jit_compile=self.jit_compile,
            mixed_precision=self.mixed_precision, backprop=self.backprop,
            grad_accum_steps=self.grad_accum_steps,
        )


def peak_rss_bytes():
    """The process's resident-memory high-water mark (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status_bytes(field):
    """`VmRSS` or `VmHWM` of /proc/self/status in bytes (None where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Restarts the kernel's high-water mark `VmHWM` (Linux >= 4.0); False if it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_device_bytes():
    """The first GPU's peak allocation since the last reset, or None without a GPU.

    What a GPU run of the table reads (`get_memory_info` does not work on CPUs).
    """
    if not tf.config.list_logical_devices("GPU"):
        return None
    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def measure(probe):
    """Runs `probe` in a fresh Python process.

    Returns:
      dict: `stage`, `batch`, `crop`, `unroll_steps` (None for stage 1), `backprop`,
      `grad_accum_steps`, `mixed_precision`, `first_step_seconds`, `runs`,
      `seconds_per_step` (median of `runs`; None with no repeats), `images_per_second`,
      `rss_after_build_bytes` (model and optimizer built), `peak_rss_bytes` (after the
      last step), `peak_device_bytes` (the GPU's peak over the steps; None on a CPU),
      `step_working_bytes` (the timed steps' resident high-water mark above the resident
      memory before them: the tensors a step holds at once; None without timed steps),
      `rss_before_timed_steps_bytes` and `variables_bytes` (model and optimizer variables).

    Raises:
      RuntimeError: the process failed (the message holds its last stderr line).
    """
    command = [sys.executable, "-m", __name__, json.dumps(dataclasses.asdict(probe))]
    # Large blocks straight from and back to the kernel: with glibc's adaptive threshold
    # freed tensors of a few MB stay in the heap, fragment it, and the high-water mark
    # grows with the number of ops rather than with the tensors alive at once.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    process = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    lines = [line for line in process.stdout.splitlines() if line.startswith(_PREFIX)]
    if process.returncode or not lines:
        last = (process.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"training probe for stage {probe.stage} failed: {last}")
    return json.loads(lines[-1][len(_PREFIX):])


def _run(probe):
    """In the fresh process: builds the trainer, times its steps, returns `measure`'s dict."""
    if probe.mixed_precision != "float32":
        keras.mixed_precision.set_global_policy(probe.mixed_precision)
    keras.utils.set_random_seed(0)
    info = datasets.get_dataset_info(probe.dataset)
    task = tasks.make_task(probe.train_config(), info)
    step_runner = trainer.Trainer(tf.distribute.get_strategy(), task)
    rss_built = peak_rss_bytes()
    if peak_device_bytes() is not None:
        tf.config.experimental.reset_memory_stats("GPU:0")
    height, width = step_runner.cfg.data.crop_size
    batch_size = step_runner.global_batch
    batch = {
        "image": tf.random.stateless_normal([batch_size, height, width, 3], seed=[1, 0]) * 50.0,
        "label": tf.random.stateless_uniform(
            [batch_size, height, width], seed=[1, 1], maxval=info.num_classes, dtype=tf.int32
        ),
        "sample_id": tf.range(batch_size, dtype=tf.int64),
    }
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    times, step_peak, before_steps = [], None, None
    for i in range(probe.repeats + 1):
        if i == 1 and _reset_peak_rss():
            # The timed steps' own high-water mark, above what the traced graph, the
            # weights and the optimizer state hold between steps.
            before_steps = _status_bytes("VmRSS")
        start = time.perf_counter()
        step_runner.train_step(iterator).numpy()
        times.append(time.perf_counter() - start)
    if before_steps is not None:
        step_peak = _status_bytes("VmHWM")
    seconds = float(statistics.median(times[1:])) if probe.repeats else None
    return {
        "stage": probe.stage, "batch": batch_size, "crop": [height, width],
        "unroll_steps": probe.unroll_steps if probe.stage == "ciss" else None,
        "backprop": probe.backprop, "grad_accum_steps": probe.grad_accum_steps,
        "mixed_precision": probe.mixed_precision,
        "first_step_seconds": times[0], "runs": times[1:], "seconds_per_step": seconds,
        "images_per_second": batch_size / seconds if seconds else None,
        "rss_after_build_bytes": rss_built, "peak_rss_bytes": peak_rss_bytes(),
        "peak_device_bytes": peak_device_bytes(),
        "rss_before_timed_steps_bytes": before_steps,
        "step_working_bytes": None if step_peak is None else step_peak - before_steps,
        "variables_bytes": sum(
            int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size
            for v in [*step_runner.model.variables,
                      *(w for o in step_runner.optimizers for w in o.variables)]
        ),
    }


if __name__ == "__main__":
    result = _run(TrainProbe(**json.loads(sys.argv[1])))
    print(_PREFIX + json.dumps(result), flush=True)
