"""The benchmark: its small helpers, a tiny run's results, and bad flags (timings not asserted)."""

import json
import time
import types

import pytest
import tensorflow as tf

from ciss_tf import benchmark as benchmark_command
from ciss_tf import train
from ciss_tf.tools import benchmark, benchmark_report, train_probe
from tests.helpers.cli import cli_error_line, run_cli


def test_feature_size_is_pspnet_output_stride_8():
    assert benchmark.feature_size(473) == 60  # 473 -> 237 -> 119 -> 60
    assert benchmark.feature_size(713) == 90
    assert benchmark.feature_size(64) == 8


def test_round_robin_interleaves_and_warms_up():
    calls = []

    def make(name, seconds):
        def fn(x):
            calls.append(name)
            time.sleep(seconds)
            return tf.constant(x)
        return fn

    times = benchmark.time_round_robin(
        {"a": make("a", 0.01), "b": make("b", 0.05)}, {"a": 1.0, "b": 2.0}, repeats=3, warmup=2
    )
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    # Each run's wall time covers its sleep, and sleeping costs (almost) no CPU time.
    for name, sleep in (("a", 0.01), ("b", 0.05)):
        wall, cpu = times[name]
        assert len(wall) == len(cpu) == 3 and min(wall) >= sleep, name
        assert max(cpu) < sleep, name
    assert min(times["b"][0]) > max(times["a"][0])


def test_graph_flops_counts_a_conv_exactly():
    conv = tf.function(lambda x: tf.nn.conv2d(x, tf.ones([3, 3, 4, 6]), 1, "SAME"))
    concrete = conv.get_concrete_function(tf.TensorSpec([1, 5, 7, 4]))
    assert benchmark.graph_flops(concrete) == 2 * 5 * 7 * 6 * 3 * 3 * 4


def test_tiny_run_writes_the_contract_keys(tmp_path):
    cfg = benchmark.BenchmarkConfig(
        preset="tiny", image_size=(32, 32), steps=(0, 2), repeats=1,
        sections=("inference", "pipeline"), winograd_min_channels=128, pipeline_batches=2,
    )
    output = tmp_path / "bench.json"
    started = time.perf_counter()
    benchmark_report.write_json(benchmark.run_benchmark(cfg), str(output))
    elapsed = time.perf_counter() - started
    results = json.loads(output.read_text())
    assert "t=2 / t=0" in benchmark_report.format_table(results)
    inference = results["inference"]
    assert set(inference) == {"naive", "cached", "fast", "winograd"}
    assert results["fastest_path"] == "winograd"
    assert results["seconds_t0"] == inference["winograd"]["0"]["seconds"]
    assert results["seconds_t0_fast"] == inference["fast"]["0"]["seconds"]
    # Each ratio is t = 2 over t = 0 of its own path (not inverted, not across paths).
    for key, path in (("ratio_t2_t0", "winograd"), ("ratio_t2_t0_fast", "fast"),
                      ("ratio_t2_t0_cached", "cached"), ("ratio_t2_t0_naive", "naive")):
        assert results[key] == pytest.approx(
            inference[path]["2"]["seconds"] / inference[path]["0"]["seconds"]
        ), key
    # t = 0 of naive and cached is one graph, timed once.
    assert inference["naive"]["0"]["runs"] == inference["cached"]["0"]["runs"]
    # Tiny net at 32x32: X is 4x4x320, trunks 32 wide. Without the cache, t = 2 convolves
    # X with both trunks' X halves twice instead of once: 2 extra 3x3 convs 320 -> 32; the
    # cached form adds the X half to the E half instead (2 trunks x 2 steps x 4x4x32 adds).
    extra = 2 * (2 * 4 * 4 * 32 * 3 * 3 * 320) - 2 * 2 * 4 * 4 * 32
    gflop = {path: inference[path]["2"]["gflop"] for path in inference}
    assert (gflop["naive"] - gflop["cached"]) * 1e9 == pytest.approx(extra, rel=1e-9)
    assert gflop["fast"] < gflop["cached"]
    # Tiny net at 32x32, convs of >= 128 inputs: only the 3x3 conv over res5 (4x4x256 -> 32
    # for the Base Net at t = 0, fused with both trunks' to 3 x 32 at t >= 1). F(4x4, 3x3)
    # turns a direct 3x3 conv over a 4x4 map (one tile, 9 x 16 multiply-adds per input-
    # output channel pair) into 36 products: 36 / 144 of its count.
    direct = {t: 2 * 4 * 4 * 9 * 256 * out for t, out in (("0", 32), ("2", 96))}
    for t in ("0", "2"):
        saved = inference["fast"][t]["gflop"] - inference["winograd"][t]["gflop"]
        assert saved * 1e9 == pytest.approx(direct[t] * (1 - 36 / 144), rel=1e-9), t
    assert inference["fast"]["0"]["gflop"] < inference["cached"]["0"]["gflop"]
    assert results["conv_reference"]["gflop"] * 1e9 == pytest.approx(2 * 16 * 9 * 320 * 32)
    pipeline = results["input_pipeline"]
    assert pipeline["batches"] == 2 and pipeline["batch"] == 2
    # Two timed batches of two 96x96 JPEG records, inside the run's own time.
    assert (pipeline["record_size"], pipeline["record_format"]) == ([96, 96], "jpeg")
    assert 0 < pipeline["seconds"] < elapsed and 0 < pipeline["cpu_seconds"]
    assert pipeline["images_per_second"] == pytest.approx(4 / pipeline["seconds"])
    assert "train" not in results


def _flag_values(**overrides):
    """The benchmark command's flags at their defaults, with `overrides`."""
    values = dict(
        preset="paper", output_json=None, image_size=None, batch=1, steps=["0", "1", "2", "4"],
        repeats=3, warmup=1, sections=list(benchmark.SECTIONS), winograd_min_channels=512,
        train_batch=2, train_repeats=2, pipeline_batches=20, unroll_steps=8,
        jit_compile=False, mixed_precision="float32", train_stages=["pspnet", "ciss"],
        train_sweep=["1", "2", "4", "8"], train_backprops=["episode", "per_step"],
        backprop="episode", grad_accum_steps=1,
    )
    return types.SimpleNamespace(**{**values, **overrides})


def test_flags_make_the_config(tmp_path):
    cfg = benchmark_command.config_from_flags(_flag_values(
        preset="tiny", image_size=["40"], steps=["2", "0", "2"],
        output_json=str(tmp_path / "b.json"),
    ))
    assert (cfg.network, cfg.size, cfg.steps) == ("tiny", (40, 40), (0, 2))
    assert benchmark_command.config_from_flags(_flag_values()).size == (473, 473)
    with pytest.raises(ValueError, match="--output_json"):
        benchmark_command.config_from_flags(_flag_values(output_json="/nonexistent/dir/b.json"))
    with pytest.raises(ValueError, match="--image_size"):
        benchmark_command.config_from_flags(_flag_values(image_size=["16"]))
    cfg = benchmark_command.config_from_flags(_flag_values(
        train_stages=["ciss"], train_sweep=["8", "1"], train_backprops=["per_step"],
        backprop="per_step", grad_accum_steps=2,
    ))
    assert (cfg.train_stages, cfg.train_sweep, cfg.train_backprops) == (
        ("ciss",), (8, 1), ("per_step",))
    assert (cfg.backprop, cfg.grad_accum_steps) == ("per_step", 2)
    for bad in (dict(train_sweep=["0"]), dict(train_sweep=["x"]),
                dict(train_backprops=["tape"]), dict(train_stages=["stage3"])):
        with pytest.raises(ValueError, match="--train_"):
            benchmark_command.config_from_flags(_flag_values(**bad))


def test_bad_steps_exit_with_one_line():
    result = run_cli("ciss_tf.benchmark", "--preset=tiny", "--steps=1,3", check=False)
    assert "--steps" in cli_error_line(result)


def test_training_probe_trains_what_the_train_command_would():
    for stage in ("pspnet", "ciss"):
        probe = train_probe.TrainProbe(stage, "tiny", "synthetic", (64, 48), 2, 3, 1,
                                       mixed_precision="mixed_bfloat16", backprop="per_step",
                                       grad_accum_steps=2)
        assert probe.train_config() == train.parse_config([
            f"--stage={stage}", "--preset=tiny", "--dataset=synthetic", "--crop_size=64,48",
            "--batch_size=2", "--unroll_steps=3", "--mixed_precision=mixed_bfloat16",
            "--backprop=per_step", "--grad_accum_steps=2",
        ]), stage


@pytest.mark.slow
def test_full_tiny_run_with_training_and_memory():
    results = benchmark.run_benchmark(
        benchmark.BenchmarkConfig(preset="tiny", repeats=1, train_repeats=1, train_sweep=(1, 4))
    )
    assert [(r["unroll_steps"], r["backprop"]) for r in results["train_sweep"]] == [
        (1, "episode"), (1, "per_step"), (4, "episode"), (4, "per_step")]
    assert "T=4 per_step" in benchmark_report.format_table(results)
    for stage in ("pspnet", "ciss"):
        probe = results["train"][stage]
        assert probe["images_per_second"] == pytest.approx(
            probe["batch"] / probe["seconds_per_step"]), stage
        # Bytes, not KiB: the process holds TensorFlow (> 100 MB) before it builds a net.
        assert probe["peak_rss_bytes"] >= probe["rss_after_build_bytes"] > 100 * 2**20
    assert results["train"]["ciss"]["unroll_steps"] == 8
    pipeline = results["input_pipeline"]
    fastest = max(r["images_per_second"] for r in results["train"].values())
    assert pipeline["ratio_to_fastest_train_step"] == pytest.approx(
        pipeline["images_per_second"] / fastest)
