r"""The CamVid results of issue 19: JSON, tables, targets, gates, served model, figure.

    python experiments/camvid_report.py --runs=runs/camvid --data_dir=runs/camvid/data \
        [--seeds=0,1,2] [--results_json=experiments/camvid_results.json]

Run by `experiments/camvid.sh` after training, evaluation and export; every model is built
from its run folder's `config.json` (`training.run_folder.load_model`), never from flags.
What it reads and writes: docs/camvid_log.md ("How the report is made").
"""

import dataclasses
import json
import math
import os

import cv2
import numpy as np
from absl import app, flags

from ciss_tf import train
from ciss_tf.data import datasets, input_pipeline, preprocessing
from ciss_tf.modeling import ops
from ciss_tf.serving import exporter
from ciss_tf.tools import demo_report, greedy_eval
from ciss_tf.training import run_folder, summaries

flags.DEFINE_string("runs", "runs/camvid", "Folder of the runs written by camvid.sh.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the stage-2 runs, in report order.")
flags.DEFINE_string(
    "results_json", "experiments/camvid_results.json",
    "Where to write the numbers (the shape of ../shared/CONTRACT.md).",
)
flags.DEFINE_string(
    "results_md", "experiments/RESULTS.md",
    "Where to write RESULTS.md: the report's tables, then --notes.",
)
flags.DEFINE_string(
    "notes", "experiments/camvid_notes.md",
    "Hand-written prose appended to RESULTS.md (choices, what the numbers show, history).",
)
flags.DEFINE_string(
    "figure", "experiments/figures/camvid_context.png",
    "Where the figure is copied for RESULTS.md (besides <runs>/figure.png).",
)
FLAGS = flags.FLAGS

EVAL_STEPS = tuple(range(7))
HEADLINE_STEP = "2"
FIGURE_VAL_IMAGES = (0, 40, 80)
TARGET_GAIN = 1.0  # mIoU points the issue asks CiSS-Net to gain over a reference
_EXPERIMENTS = os.path.dirname(os.path.abspath(__file__))
_RECIPE = train.parse_config([f"--flagfile={os.path.join(_EXPERIMENTS, 'camvid.flags')}"])
SCALE = _RECIPE.input_scale  # the gate and the figure see images as the net was trained
EXPORT_T = _RECIPE.unroll_steps  # camvid.sh exports with camvid.flags


@dataclasses.dataclass(frozen=True)
class Run:
    """A stage-2 run: its key in the JSON, flagfile (= folder prefix), label, seeds."""

    key: str
    flagfile: str
    label: str
    first_seed_only: bool = False
    gated: bool = False  # has a gate worth measuring (not all ones / all zeros)

    def seeds(self, seeds):
        """The seeds this run is trained with."""
        return tuple(seeds[:1]) if self.first_seed_only else tuple(seeds)


RUNS = (
    Run("ciss", "camvid", "CiSS-Net", gated=True),
    Run("no_context", "camvid_no_context", "No context (same Bias Net, all uncertain)"),
    Run("baseline_pmap", "camvid_pmap", "Baseline + p-map"),
    Run("random_gate", "camvid_random_gate", "Random gate (CiSS-Net's keep rate)", gated=True),
    Run("gated", "camvid_gated", "Baseline + gated p-map (lambda2 = 0.001)",
        first_seed_only=True, gated=True),
)
# Studies of the recipe, first seed only: in the report's tables, not in the JSON.
STUDIES = (
    Run("t8", "camvid_t8", "CiSS-Net, T = 8", first_seed_only=True, gated=True),
    Run("warm", "camvid_warm", "CiSS-Net, warm Base Net, 600 steps (previous recipe)",
        first_seed_only=True, gated=True),
)
ALL_RUNS = RUNS + STUDIES
RUN_BY_KEY = {run.key: run for run in ALL_RUNS}


def run_dir(runs, run, seed):
    """The folder of `run` trained with `seed`."""
    return os.path.join(runs, f"{run.flagfile}_s{seed}")


def read_steps(path):
    """The `steps` of an `eval.json`, or None when the file is missing."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["steps"]


def collect_scores(runs, seeds, name="eval.json"):
    """`{run key: [eval steps or None per seed of `seeds`]}` read from the run folders.

    `name`: `eval.json` (val) or `eval_test.json` (the test split).
    """
    return {
        run.key: [
            read_steps(os.path.join(run_dir(runs, run, seed), name))
            if seed in run.seeds(seeds) else None
            for seed in seeds
        ]
        for run in ALL_RUNS
    }


def split_block(pspnet_steps, scores):
    """`{"pspnet_miou", "t2_miou": {key: [per seed]}, "t0_miou": {...}}` of one split."""
    def miou(step):
        return {
            run.key: [None if s is None else s[step]["miou"] for s in scores[run.key]]
            for run in RUNS
        }

    return {
        "pspnet_miou": pspnet_steps["0"]["miou"],
        "t2_miou": miou(HEADLINE_STEP),
        "t0_miou": miou("0"),
    }


def results_json(pspnet_steps, scores, seeds, recipe, test=None):
    """The CONTRACT.md dict of `experiments/camvid_results.json`.

    Args:
      pspnet_steps: the stage-1 PSPNet's `eval.json` steps (val).
      scores: `collect_scores(...)` of val.
      seeds: the seeds, in order.
      recipe: how the numbers were produced (flagfiles, command).
      test: (the PSPNet's steps, `collect_scores(..., "eval_test.json")`) of the test
        split, or None when it was not evaluated.

    Returns:
      `{"pspnet_miou", "t2_miou": {key: [per seed]}, "t0_miou": {...}, "seeds", "recipe"}`
      on val, and the same numbers on the test split under `"test"`.
    """
    results = split_block(pspnet_steps, scores)
    results.update(seeds=[int(s) for s in seeds], recipe=recipe)
    if test is not None:
        results["test"] = split_block(*test)
    return results


def mean_std(values):
    """(mean, sample std) of the values that are not None; NaN where undefined."""
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return float(np.mean(values)), std


def _points(values):
    return [None if v is None else 100.0 * v for v in values]


@dataclasses.dataclass(frozen=True)
class Target:
    """One target of issue 19, and whether the numbers meet it."""

    text: str
    met: bool
    numbers: str


def targets(results):
    """The targets judged on one split's block of `results_json(...)` (mIoU at t = 2).

    CiSS-Net's mean over seeds must be: at least `TARGET_GAIN` above the stage-1 PSPNet;
    at least `TARGET_GAIN` above "no context"; at least `TARGET_GAIN` above "Baseline +
    p-map" and that gain above the seed std of either run; above the random gate. A
    target whose numbers are missing is missed (comparisons with NaN are false).
    """
    t2 = {key: _points(values) for key, values in results["t2_miou"].items()}
    ciss, ciss_std = mean_std(t2["ciss"])
    pspnet = 100.0 * results["pspnet_miou"]

    def versus(key):
        mean, std = mean_std(t2.get(key, []))
        return mean, std, ciss - mean

    out = []
    gain = ciss - pspnet
    out.append(Target(
        f"CiSS-Net t = 2 >= stage-1 PSPNet + {TARGET_GAIN:.1f}", gain >= TARGET_GAIN,
        f"{ciss:.2f} vs {pspnet:.2f}: {gain:+.2f}",
    ))
    mean, _, gain = versus("no_context")
    out.append(Target(
        f"CiSS-Net - no context >= +{TARGET_GAIN:.1f}", gain >= TARGET_GAIN,
        f"{ciss:.2f} vs {mean:.2f}: {gain:+.2f}",
    ))
    mean, std, gain = versus("baseline_pmap")
    noise = max(ciss_std, std)
    out.append(Target(
        f"CiSS-Net - Baseline + p-map >= +{TARGET_GAIN:.1f} and > the seed std",
        gain >= TARGET_GAIN and gain > noise,
        f"{ciss:.2f} vs {mean:.2f}: {gain:+.2f}; seed std {ciss_std:.2f} / {std:.2f}",
    ))
    mean, _, gain = versus("random_gate")
    out.append(Target(
        "CiSS-Net above the random gate", gain > 0, f"{ciss:.2f} vs {mean:.2f}: {gain:+.2f}"
    ))
    return out


def _mean_pm_std(values):
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def score_tables(results, scores, info, pspnet_iou, seeds, split="val"):
    """Markdown lines of one split: targets, the headline table, every step, per class.

    Args:
      results: that split's block of `results_json(...)`.
      scores: `collect_scores(...)` of that split.
      info: the CamVid `DatasetSpec` (class names).
      pspnet_iou: the stage-1 PSPNet's IoU per class on that split.
      seeds: the seeds, in order.
      split: "val" or "test" (the headings).
    """
    lines = [f"## Targets on {split} (mIoU points at t = 2, mean over seeds)", "",
             "| target | met | numbers |", "|---|---|---|"]
    lines += [f"| {t.text} | {'met' if t.met else 'MISSED'} | {t.numbers} |"
              for t in targets(results)]
    lines += ["", f"## mIoU on CamVid {split} (%, mean ± std over seeds {seeds})", "",
              "| method | t = 0 | t = 2 | t = 2 per seed |", "|---|---|---|---|",
              f"| PSPNet (stage 1, its own head) | {100 * results['pspnet_miou']:.2f} | - | - |"]
    for run in RUNS:
        t2 = _points(results["t2_miou"][run.key])
        per_seed = " / ".join("-" if v is None else f"{v:.2f}" for v in t2)
        lines.append(f"| {run.label} | {_mean_pm_std(_points(results['t0_miou'][run.key]))} "
                     f"| {_mean_pm_std(t2)} | {per_seed} |")
    lines += ["", f"## mIoU on {split} at every step t (%, mean ± std over seeds)", "",
              "| method | " + " | ".join(f"t = {t}" for t in EVAL_STEPS) + " |",
              "|---|" + "---|" * len(EVAL_STEPS)]
    for run in ALL_RUNS:
        cells = [
            _mean_pm_std([None if s is None else 100 * s[str(t)]["miou"]
                          for s in scores[run.key]])
            for t in EVAL_STEPS
        ]
        lines.append(f"| {run.label} | " + " | ".join(cells) + " |")
    return lines + per_class_table(scores, info, pspnet_iou, split)


def per_class_table(scores, info, pspnet_iou, split="val"):
    """Markdown lines: IoU per class (%, mean over seeds): PSPNet, CiSS-Net's t = 0, t = 2."""
    header = ["class", "PSPNet", "CiSS-Net t = 0"] + [f"{run.label} t = 2" for run in RUNS]
    lines = ["", f"## Per-class IoU on {split} (%, mean over seeds)", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for c, name in enumerate(info.class_names):
        cells = [_iou_cell([pspnet_iou[c]]),
                 _iou_cell([s["0"]["iou"][c] for s in scores["ciss"] if s])]
        cells += [_iou_cell([s[HEADLINE_STEP]["iou"][c] for s in scores[run.key] if s])
                  for run in RUNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _iou_cell(values):
    values = [v for v in values if v is not None]
    return f"{100 * np.mean(values):.2f}" if values else "-"


def _format_seconds(seconds):
    if seconds is None:
        return "-"
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s"


def wall_time_table(runs, seeds):
    """Markdown lines: steps and training wall time of every run (`train_summary.json`)."""
    lines = ["", "## Wall time of training (summed over resumed sessions)", "",
             "| run | seed | steps | wall time |", "|---|---|---|---|"]
    folders = [("Stage 1 PSPNet", "-", os.path.join(runs, "pspnet"))] + [
        (run.label, seed, run_dir(runs, run, seed))
        for run in ALL_RUNS for seed in run.seeds(seeds)
    ]
    for label, seed, folder in folders:
        summary = summaries.read_summary(folder) or {}
        lines.append(f"| {label} | {seed} | {summary.get('step', '-')} | "
                     f"{_format_seconds(summary.get('seconds'))} |")
    return lines


def _val_dataset(info):
    pattern = input_pipeline.split_file_pattern(FLAGS.data_dir, "val")
    return input_pipeline.eval_dataset(pattern, num_classes=info.num_classes)


def _scaled(dataset):
    """Images at the training scale, labels nearest-resized to them (for the gate)."""
    def scale(batch):
        image = preprocessing.rescale_images(batch["image"], SCALE)
        label = ops.resize_labels(batch["label"], ops.spatial_size(image))
        return {"image": image, "label": label}

    return dataset.map(scale)


def gate_table(runs, seeds, info):
    """(markdown lines of the gate statistics, the first seed's CiSS-Net greedy unroll)."""
    lines = ["", f"## Gate at t = {greedy_eval.GATE_STEP} on val (greedy; stride-8 grid)", "",
             "| run | seed | keep rate | kept | kept where p-map right | where wrong |",
             "|---|---|---|---|---|---|"]
    figure_unroll = None
    for run in ALL_RUNS:
        if not run.gated:
            continue
        for seed in run.seeds(seeds):
            model, _, _ = run_folder.load_model(run_dir(runs, run, seed))
            unroll = greedy_eval.greedy_unroll(model)
            _, gate, _ = greedy_eval.evaluate_run(unroll, _scaled(_val_dataset(info)),
                                                  info.num_classes)
            if run.key == "ciss" and figure_unroll is None:
                figure_unroll = unroll
            rate = "-" if model.random_keep_rate is None else f"{model.random_keep_rate:.3f}"
            lines.append(
                f"| {run.label} | {seed} | {rate} | {100 * gate['kept']:.1f}% | "
                f"{100 * gate['kept_where_right']:.1f}% | {100 * gate['kept_where_wrong']:.1f}% |"
            )
    return lines, figure_unroll


def served_scores(info):
    """(version, scores) of the latest export on the val PNGs, through `serving_bytes`."""
    export_dir = os.path.join(FLAGS.runs, "export")
    version = max(os.listdir(export_dir), key=int)
    pattern = input_pipeline.split_file_pattern(FLAGS.data_dir, "val")
    return version, exporter.score_export(os.path.join(export_dir, version), pattern,
                                        info.num_classes)


def write_figure(unroll, info):
    """The Figure-1 style panel of a few val images at the training scale."""
    batches = [b for i, b in enumerate(_scaled(_val_dataset(info))) if i in FIGURE_VAL_IMAGES]
    panel = demo_report.figure_panel(unroll, batches, info.palette)
    # figure_panel zooms its tiles 2x (made for the demo's 96x96 scenes): back to 1x.
    panel = cv2.resize(panel, (panel.shape[1] // 2, panel.shape[0] // 2),
                       interpolation=cv2.INTER_AREA)
    for path in (os.path.join(FLAGS.runs, "figure.png"), FLAGS.figure):
        cv2.imwrite(path, panel[..., ::-1])


def flagfile_settings(name):
    """The settings lines of `experiments/<name>.flags`, joined (no comments, no includes)."""
    with open(os.path.join(_EXPERIMENTS, f"{name}.flags")) as f:
        lines = [line.strip() for line in f]
    return " ".join(line for line in lines
                    if line and not line.startswith(("#", "--flagfile")))


def recipe(seeds):
    """The `recipe` string of the JSON: the command and the flagfiles' settings."""
    return (
        f"bash experiments/camvid.sh (seeds {','.join(str(s) for s in seeds)}): stage 1 "
        f"experiments/camvid_pspnet.flags [{flagfile_settings('camvid_pspnet')}]; stage 2 "
        f"experiments/camvid.flags [{flagfile_settings('camvid')}] with --seed=<seed>, and "
        "the controls camvid_no_context, camvid_pmap, camvid_random_gate (--random_keep_rate "
        "= the seed's CiSS-Net sampled kept fraction at the end of training), camvid_gated "
        "(first seed only); scored on CamVid test (233 images) and val (101) at 480x360 "
        "with --eval_scales=0.5, greedy"
    )


def write_json(results, path):
    """Writes `results` as JSON (a complete file or none: written aside, then renamed)."""
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)


def main(argv):
    """Writes the JSON, report.md, RESULTS.md and the figure; prints the report."""
    del argv
    info = datasets.get_dataset_info("camvid")
    seeds = [int(s) for s in FLAGS.seeds]
    pspnet = read_steps(os.path.join(FLAGS.runs, "pspnet", "eval.json"))
    scores = collect_scores(FLAGS.runs, seeds)
    pspnet_test = read_steps(os.path.join(FLAGS.runs, "pspnet", "eval_test.json"))
    test_scores = collect_scores(FLAGS.runs, seeds, "eval_test.json")
    results = results_json(pspnet, scores, seeds, recipe(seeds),
                           test=(pspnet_test, test_scores) if pspnet_test else None)
    write_json(results, FLAGS.results_json)
    lines = []
    if pspnet_test:
        lines += score_tables(results["test"], test_scores, info, pspnet_test["0"]["iou"],
                              seeds, "test") + [""]
    lines += score_tables(results, scores, info, pspnet["0"]["iou"], seeds, "val")
    gate_lines, unroll = gate_table(FLAGS.runs, seeds, info)
    lines += gate_lines + wall_time_table(FLAGS.runs, seeds)
    version, served = served_scores(info)
    lines += ["", f"Exported SavedModel (version {version}, T = {EXPORT_T}, input scale {SCALE}) "
              f"on the "
              f"101 val PNGs through `serving_bytes`: mIoU {100 * served['miou']:.2f}, "
              f"pixel accuracy {100 * served['pixel_accuracy']:.2f}."]
    write_figure(unroll, info)
    text = "\n".join(lines) + "\n"
    with open(os.path.join(FLAGS.runs, "report.md"), "w") as f:
        f.write(text)
    with open(FLAGS.notes) as f:
        notes = f.read()
    write_text(results_markdown(text, notes, seeds, os.path.relpath(
        FLAGS.figure, os.path.dirname(os.path.abspath(FLAGS.results_md))
    )), FLAGS.results_md)
    print(text)


def results_markdown(tables, notes, seeds, figure):
    """RESULTS.md: what ran and how to rerun it, the report's tables, the figure, the notes."""
    seed_list = ", ".join(str(s) for s in seeds)
    return f"""# CamVid: CiSS-Net end to end on a 2-core CPU

Written by `experiments/camvid_report.py` from the runs of `bash experiments/camvid.sh`
(the prose after the tables comes from `experiments/camvid_notes.md`): every number below
is read from the runs, so this file and `experiments/camvid_results.json` cannot disagree.
CamVid (`../shared/camvid`: SegNet split, 367 train / 101 val / 233 test images of 480x360,
11 classes, void ignored) is the real benchmark of this project; mIoU is scored at the
original 480x360 on the test split first, then on val. Val is sequence 0016E5 only, the
sequence of 204 of the 367 training images: it measures fit to a seen sequence. Test is
0001TP (62) and Seq05VD (171), a sequence no training image comes from: it measures the
cross-sequence generalisation that CamVid results in the literature report. Recipes are
chosen on val; test is evaluated once per finished recipe. Stage 1 trains once; stage 2
runs CiSS-Net and its controls on the same frozen features with seeds {seed_list}.

```bash
bash experiments/camvid.sh runs/camvid            # CamVid read from ../shared/camvid (CAMVID=...)
SEEDS="0" bash experiments/camvid.sh runs/camvid  # one seed only
```

{tables}
## Figure: context maps on CamVid val

![CamVid context maps]({figure})

Three val images at the training scale, the first seed's CiSS-Net; columns: input, ground
truth, then the p-map and the context map at t = 0, 1, 2 (the context map of step t is the
one fed to step t + 1; uncertain pixels white).

{notes.strip()}
"""


def write_text(text, path):
    """Writes `text` to `path` (a complete file or none: written aside, then renamed)."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    app.run(main)
