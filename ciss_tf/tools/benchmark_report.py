"""The benchmark's results for people and for files: `format_table` and `write_json`."""

import json
import os


def format_table(results):
    """The human-readable report of a `benchmark.run_benchmark` results dict."""
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
    probes = [(stage, r) for stage, r in results.get("train", {}).items()]
    probes += [("ciss sweep", r) for r in results.get("train_sweep", [])]
    for stage, r in probes:
        steps = f", T={r['unroll_steps']} {r['backprop']}" if r["unroll_steps"] is not None else ""
        device = r.get("peak_device_bytes")
        speed = (f"{r['seconds_per_step']:.2f} s/step, {r['images_per_second']:.3f} img/s"
                 if r["seconds_per_step"] else f"one step {r['first_step_seconds']:.1f} s")
        lines.append(
            f"train {stage} (batch {r['batch']}{steps}): {speed}, "
            f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} "
            f"GiB (after build {r['rss_after_build_bytes'] / 2**30:.2f} GiB)"
            + (f", GPU peak {device / 2**30:.2f} GiB" if device is not None else "")
            + (f", step working set {r['step_working_bytes'] / 2**30:.2f} GiB"
               if r.get("step_working_bytes") is not None else "")
        )
    pipeline = results.get("input_pipeline")
    if pipeline:
        ratio = pipeline.get("ratio_to_fastest_train_step")
        lines.append(
            f"input pipeline: {pipeline['images_per_second']:.1f} img/s"
            f" ({pipeline['images_per_cpu_second']:.1f} per CPU second)"
            + (f" = {ratio:.1f}x the fastest train step" if ratio else "")
        )
    return "\n".join(lines)


def write_json(results, path):
    """Writes `results` to `path` whole or not at all (a `.partial` file, then a rename).

    Raises:
      OSError: the file cannot be written.
    """
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(partial, path)
