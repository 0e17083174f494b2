"""experiments/camvid_report.py: the results JSON, the targets and the run loader."""

import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from ciss_tf import train
from ciss_tf.data import datasets
from ciss_tf.modeling import checkpoints, config
from ciss_tf.training import run_folder, trainer
from tests.helpers.cli import ENV, ROOT

_SPEC = importlib.util.spec_from_file_location(
    "camvid_report", ROOT / "experiments" / "camvid_report.py"
)
report = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(report)

INFO = datasets.get_dataset_info("camvid")
SEEDS = [0, 1, 2]


def _write_eval(folder, t2_miou, t0_miou=0.4, name="eval.json"):
    """An eval.json whose steps 2..6 score `t2_miou`, steps 0 and 1 `t0_miou`."""
    os.makedirs(folder, exist_ok=True)
    steps = {
        str(t): {"miou": t0_miou if t < 2 else t2_miou, "pixel_accuracy": 0.9,
                 "iou": [t2_miou] * (INFO.num_classes - 1) + [None]}
        for t in range(7)
    }
    with open(os.path.join(folder, name), "w") as f:
        json.dump({"steps": steps}, f)


def _fake_runs(root, t2):
    """Run folders with eval.json files: `t2` maps a run key to its per-seed t = 2 mIoU."""
    _write_eval(root / "pspnet", t2_miou=0.6, t0_miou=0.50)  # stage 1 has step 0 only
    for key, values in t2.items():
        run = report.RUN_BY_KEY[key]
        for seed, value in zip(run.seeds(SEEDS), values, strict=False):
            if value is not None:
                _write_eval(report.run_dir(str(root), run, seed), value)


def _results(root):
    scores = report.collect_scores(str(root), SEEDS)
    pspnet = report.read_steps(str(root / "pspnet" / "eval.json"))
    return report.results_json(pspnet, scores, SEEDS, "the recipe"), scores


def test_results_json_has_the_contract_shape(tmp_path):
    _fake_runs(tmp_path, {
        "ciss": [0.53, 0.52, 0.54], "no_context": [0.51, 0.515, 0.52],
        "baseline_pmap": [0.51, 0.515, 0.52], "random_gate": [0.52, 0.52, None],
        "gated": [0.525], "t8": [0.61], "warm": [0.49],  # studies: report only
    })
    results, scores = _results(tmp_path)
    path = str(tmp_path / "camvid_results.json")
    report.write_json(results, path)
    with open(path) as f:
        written = json.load(f)
    assert written == {
        "pspnet_miou": 0.50,
        "t2_miou": {"ciss": [0.53, 0.52, 0.54], "no_context": [0.51, 0.515, 0.52],
                    "baseline_pmap": [0.51, 0.515, 0.52], "random_gate": [0.52, 0.52, None],
                    "gated": [0.525, None, None]},
        "t0_miou": {"ciss": [0.4] * 3, "no_context": [0.4] * 3, "baseline_pmap": [0.4] * 3,
                    "random_gate": [0.4, 0.4, None], "gated": [0.4, None, None]},
        "seeds": [0, 1, 2],
        "recipe": "the recipe",
    }
    assert not os.path.exists(path + ".tmp")
    lines = report.score_tables(results, scores, INFO, [0.5] * INFO.num_classes, SEEDS)
    assert "| CiSS-Net, T = 8 | 40.00 | 40.00 | 61.00 | 61.00 | 61.00 | 61.00 | 61.00 |" in lines


def test_results_json_holds_the_test_split_beside_val(tmp_path):
    # Val as the fakes write it; test from eval_test.json with other numbers per seed.
    _fake_runs(tmp_path, {"ciss": [0.53, 0.52, 0.54], "no_context": [0.51] * 3,
                          "baseline_pmap": [0.51] * 3, "random_gate": [0.52] * 3,
                          "gated": [0.525]})
    _write_eval(tmp_path / "pspnet", 0.6, t0_miou=0.47, name="eval_test.json")
    test_t2 = {"ciss": [0.46, 0.47, 0.45], "no_context": [0.44, 0.45, 0.46],
               "baseline_pmap": [0.43, None, 0.44], "random_gate": [0.42, 0.41, 0.40],
               "gated": [0.39]}
    for key, values in test_t2.items():
        run = report.RUN_BY_KEY[key]
        for seed, value in zip(run.seeds(SEEDS), values, strict=False):
            if value is not None:
                _write_eval(report.run_dir(str(tmp_path), run, seed), value, t0_miou=0.3,
                            name="eval_test.json")
    pspnet = report.read_steps(str(tmp_path / "pspnet" / "eval.json"))
    pspnet_test = report.read_steps(str(tmp_path / "pspnet" / "eval_test.json"))
    test_scores = report.collect_scores(str(tmp_path), SEEDS, "eval_test.json")
    results = report.results_json(pspnet, report.collect_scores(str(tmp_path), SEEDS), SEEDS,
                                  "r", test=(pspnet_test, test_scores))
    assert results["t2_miou"]["ciss"] == [0.53, 0.52, 0.54]
    assert results["test"] == {
        "pspnet_miou": 0.47,
        "t2_miou": {**test_t2, "gated": [0.39, None, None]},
        "t0_miou": {"ciss": [0.3] * 3, "no_context": [0.3] * 3,
                    "baseline_pmap": [0.3, None, 0.3], "random_gate": [0.3] * 3,
                    "gated": [0.3, None, None]},
    }
    # The targets on test: CiSS-Net 46 vs PSPNet 47 (-1), no context 45 (+1).
    judged = report.targets(results["test"])
    assert judged[0].numbers == "46.00 vs 47.00: -1.00" and not judged[0].met
    assert judged[1].numbers == "46.00 vs 45.00: +1.00" and judged[1].met
    lines = report.score_tables(results["test"], test_scores, INFO, pspnet_test["0"]["iou"],
                                SEEDS, "test")
    assert f"## mIoU on CamVid test (%, mean ± std over seeds {SEEDS})" in lines
    assert "| CiSS-Net | 30.00 ± 0.00 | 46.00 ± 1.00 | 46.00 / 47.00 / 45.00 |" in lines


def test_mean_std_over_seeds_by_hand():
    # Points 53, 52, 54: mean 53; sample std sqrt((0 + 1 + 1) / 2) = 1.
    mean, std = report.mean_std([53.0, 52.0, None, 54.0])
    assert mean == pytest.approx(53.0) and std == pytest.approx(1.0)
    mean, std = report.mean_std([0.7])
    assert mean == 0.7 and np.isnan(std)
    assert all(np.isnan(report.mean_std([None])))


def test_targets_met_by_hand(tmp_path):
    # CiSS-Net 53 ± 1 points against: PSPNet 50 (+3), no context 51.5 (+1.5), p-map
    # 51.5 ± 0.5 (+1.5 >= 1 and > max(1, 0.5)), the random gate 52 (+1).
    _fake_runs(tmp_path, {
        "ciss": [0.53, 0.52, 0.54], "no_context": [0.51, 0.515, 0.52],
        "baseline_pmap": [0.51, 0.515, 0.52], "random_gate": [0.52, 0.52, 0.52],
        "gated": [0.525],
    })
    results, scores = _results(tmp_path)
    judged = report.targets(results)
    assert [t.met for t in judged] == [True, True, True, True]
    assert judged[0].numbers == "53.00 vs 50.00: +3.00"
    assert judged[2].numbers == "53.00 vs 51.50: +1.50; seed std 1.00 / 0.50"
    assert judged[3].numbers == "53.00 vs 52.00: +1.00"
    lines = report.score_tables(results, scores, INFO, [0.5] * INFO.num_classes, SEEDS)
    assert "| CiSS-Net | 40.00 ± 0.00 | 53.00 ± 1.00 | 53.00 / 52.00 / 54.00 |" in lines
    assert any(line.startswith("| CiSS-Net t = 2 >= stage-1 PSPNet + 1.0 | met |")
               for line in lines)


def test_targets_missed_by_hand(tmp_path):
    # CiSS-Net 53 ± 2: PSPNet 50 (+3, met); no context 52.5 (+0.5 < 1); p-map 51.5 ± 0.5
    # (+1.5 >= 1 but not above the seed std 2); the random gate 53.5 (-0.5).
    _fake_runs(tmp_path, {
        "ciss": [0.51, 0.53, 0.55], "no_context": [0.525] * 3,
        "baseline_pmap": [0.51, 0.515, 0.52], "random_gate": [0.535] * 3, "gated": [0.5],
    })
    results, _ = _results(tmp_path)
    judged = report.targets(results)
    assert [t.met for t in judged] == [True, False, False, False]
    assert judged[1].numbers == "53.00 vs 52.50: +0.50"
    assert judged[2].numbers == "53.00 vs 51.50: +1.50; seed std 2.00 / 0.50"
    assert judged[3].numbers == "53.00 vs 53.50: -0.50"


def test_a_run_without_numbers_misses_its_target(tmp_path):
    _fake_runs(tmp_path, {"ciss": [0.53, 0.52, 0.54], "no_context": [0.5] * 3,
                          "baseline_pmap": [0.5] * 3})
    results, _ = _results(tmp_path)
    assert results["t2_miou"]["random_gate"] == [None, None, None]
    assert [t.met for t in report.targets(results)] == [True, True, True, False]


def test_wall_time_table_reads_the_train_summaries(tmp_path):
    run = report.RUN_BY_KEY["ciss"]
    folder = report.run_dir(str(tmp_path), run, 1)
    os.makedirs(folder)
    with open(os.path.join(folder, "train_summary.json"), "w") as f:
        json.dump({"step": 300, "max_steps": 300, "seconds": 303.4, "final_terms": {}}, f)
    lines = report.wall_time_table(str(tmp_path), SEEDS)
    assert "| CiSS-Net | 1 | 300 | 5 min 03 s |" in lines
    assert "| CiSS-Net | 0 | - | - |" in lines


def test_loader_builds_the_run_as_trained(synthetic_records, tmp_path):
    # The CamVid flagfiles train the Context Net's branches with batch norm; a loader
    # building the default GroupNorm ones fails ("lacks 8 variables").
    model_dir = tmp_path / "run"
    trainer.train(train.parse_config([
        "--stage=ciss", "--preset=tiny", "--dataset=synthetic", "--crop_size=48,48",
        "--batch_size=2", "--unroll_steps=1", "--context_encoder_norm=batch", "--dropout=0.2",
        "--max_steps=1", "--image_summary_every=0", f"--data_dir={synthetic_records}",
        f"--model_dir={model_dir}",
    ]))
    with pytest.raises(ValueError, match="lacks"):
        checkpoints.load_model(config.ModelConfig(preset="tiny"), 8, str(model_dir))
    loaded, _, _ = run_folder.load_model(str(model_dir))
    assert (loaded.context_encoder_norm, loaded.dropout) == ("batch", 0.2)
    expected = config.build_ciss_net(8, "tiny", context_encoder_norm="batch", dropout=0.2)
    expected(tf.zeros([1, 33, 33, 3]), num_steps=1)
    checkpoints.restore_model(expected, str(model_dir))
    images = tf.random.stateless_normal([2, 48, 48, 3], seed=[1, 2]) * 50.0
    got = loaded(images, num_steps=3)
    want = expected(images, num_steps=3)
    np.testing.assert_array_equal(got["logits"], want["logits"])
    np.testing.assert_array_equal(got["context"], want["context"])


_FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python in camvid.sh: runs `-c` snippets, logs and fakes every tool.
if [ "$1" = "-c" ]; then exec "$REAL_PYTHON" "$@"; fi
echo "$*" >> "$FAKE_LOG"
for arg in "$@"; do
  case $arg in
    --model_dir=*) model_dir=${arg#*=} ;;
    --output_dir=*) mkdir -p "${arg#*=}"; touch "${arg#*=}/val-00000-of-00001.tfrecord" ;;
    --output_json=*) echo '{}' > "${arg#*=}" ;;
    --export_dir=*) mkdir -p "${arg#*=}/1" ;;
    --seed=*) seed=${arg#*=} ;;
  esac
done
if [ "$2" = ciss_tf.train ]; then
  mkdir -p "$model_dir"
  # The CiSS-Net run of seed s keeps 0.7s5 (0.705, 0.715, ...) at the end of its training.
  printf '{"step": 5, "max_steps": 5, "final_terms": {"kept_fraction": 0.7%s5}}' "${seed:-0}" \\
    > "$model_dir/train_summary.json"
fi
"""


def test_camvid_sh_runs_every_run_and_seed_once_with_the_measured_keep_rate(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(_FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "log"
    env = dict(ENV, PYTHON=str(fake), REAL_PYTHON=sys.executable, FAKE_LOG=str(log),
               SEEDS="0 1 2")
    runs = tmp_path / "runs"
    for _ in range(2):  # the second pass finds everything done
        subprocess.run(["bash", "experiments/camvid.sh", str(runs)], cwd=ROOT, env=env,
                       check=True, capture_output=True, timeout=300)
    calls = log.read_text().splitlines()
    trainings = [c for c in calls if c.startswith("-m ciss_tf.train")]
    folders = sorted(c.split("--model_dir=")[1].split()[0].split("/")[-1] for c in trainings)
    assert folders == sorted(
        ["pspnet", "camvid_gated_s0", "camvid_t8_s0", "camvid_warm_s0"] + [
            f"{run}_s{seed}" for seed in (0, 1, 2)
            for run in ("camvid", "camvid_no_context", "camvid_pmap", "camvid_random_gate")
        ]
    )
    for seed in (0, 1, 2):
        for tool, count in (("ciss_tf.train", 1), ("ciss_tf.evaluate", 2)):
            tool_calls = [c for c in calls if c.startswith(f"-m {tool}")
                          and f"camvid_random_gate_s{seed}" in c]
            assert len(tool_calls) == count, tool
            for call in tool_calls:
                assert f"--random_keep_rate=0.7{seed}5" in call.split()
        [call] = [c for c in trainings if f"camvid_s{seed} " in c + " "]
        assert f"--seed={seed}" in call.split()
        assert "--flagfile=experiments/camvid.flags" in call.split()
    evaluations = [c for c in calls if c.startswith("-m ciss_tf.evaluate")]
    # Every run on val and on the test split, once each.
    for split, name in (("val", "eval.json"), ("test", "eval_test.json")):
        scored = [c for c in evaluations if f"--split={split}" in c.split()]
        assert len(scored) == len(trainings), split
        assert all(f"/{name}" in c.split("--output_json=")[1] for c in scored), split
    assert all("--eval_steps=0,1,2,3,4,5,6" in c for c in evaluations if "pspnet" not in c)
    [export_call] = [c for c in calls if c.startswith("-m ciss_tf.export")]
    assert f"--checkpoint={runs}/camvid_s0 " in export_call + " "
    reports = [c for c in calls if c.startswith("experiments/camvid_report.py")]
    assert reports == [f"experiments/camvid_report.py --runs={runs} "
                       f"--data_dir={runs}/data --seeds=0,1,2"] * 2


def test_results_markdown_holds_the_tables_the_figure_and_the_notes():
    tables = "## Targets on test\n\n| target | met |\n"
    text = report.results_markdown(tables, "## Notes\n\nprose.\n", [0, 1, 2], "figures/x.png")
    assert text.startswith("# CamVid") and "seeds 0, 1, 2" in text
    assert tables in text and "![CamVid context maps](figures/x.png)" in text
    # The tables come before the figure, the notes last.
    assert text.index(tables) < text.index("figures/x.png") < text.index("## Notes")
    assert text.endswith("prose.\n")


def test_per_class_table_puts_each_class_step_and_run_in_its_cell():
    # A distinct IoU for every (run, seed, step, class): a swapped class, step or run shows.
    def steps(r, s):
        return {t: {"iou": [(100 * r + 10 * s + int(t) + c / 100) / 1000
                            for c in range(INFO.num_classes)]} for t in ("0", "2")}

    scores = {run.key: [steps(r, s) for s in range(2)] for r, run in enumerate(report.RUNS)}
    pspnet = [c / 50 for c in range(INFO.num_classes)]
    lines = report.per_class_table(scores, INFO, pspnet, "test")
    assert "## Per-class IoU on test" in lines[1]
    rows = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == INFO.num_classes
    for c, row in enumerate(rows):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[0] == INFO.class_names[c]
        expected = [100 * pspnet[c], 100 * np.mean([steps(0, s)["0"]["iou"][c] for s in (0, 1)])]
        expected += [100 * np.mean([steps(r, s)["2"]["iou"][c] for s in (0, 1)])
                     for r in range(len(report.RUNS))]
        assert [float(v) for v in cells[1:]] == pytest.approx(expected, abs=0.006), c


def test_committed_results_markdown_shows_the_numbers_of_the_committed_json():
    # Each run's per-seed t = 2 mIoU in RESULTS.md's headline table of each split equals
    # experiments/camvid_results.json (both written by the report from one run of it).
    results = json.loads((ROOT / "experiments" / "camvid_results.json").read_text())
    text = (ROOT / "experiments" / "RESULTS.md").read_text()
    for split, block in (("val", results), ("test", results.get("test"))):
        if block is None:
            continue
        table = text.split(f"## mIoU on CamVid {split}", 1)[1].split("\n## ", 1)[0]
        assert f"| {100 * block['pspnet_miou']:.2f} |" in table
        for run in report.RUNS:
            row = next(line for line in table.splitlines()
                       if line.startswith(f"| {run.label} |"))
            per_seed = row.strip("|").split("|")[-1].split(" / ")
            values = block["t2_miou"][run.key]
            assert [cell.strip() for cell in per_seed] == [
                "-" if v is None else f"{100 * v:.2f}" for v in values], (split, run.key)


def test_gate_table_rows_hold_each_runs_and_seeds_own_gate(monkeypatch, tmp_path):
    # Stand-ins: a "model" per run folder with its keep rate; its gate statistics made
    # from the folder's name, so a row showing another run's or seed's numbers fails.
    def gate_of(folder):
        digest = sum(map(ord, folder)) % 97
        return {"kept": digest / 100, "kept_where_right": digest / 200,
                "kept_where_wrong": digest / 400}

    monkeypatch.setattr(report.run_folder, "load_model", lambda folder: (types.SimpleNamespace(
        folder=folder, random_keep_rate=0.25 if "random" in folder else None), None, None))
    monkeypatch.setattr(report, "_val_dataset", lambda info: None)
    monkeypatch.setattr(report, "_scaled", lambda dataset: None)
    monkeypatch.setattr(report.greedy_eval, "greedy_unroll", lambda model: model)
    monkeypatch.setattr(report.greedy_eval, "evaluate_run",
                        lambda unroll, dataset, n: (None, gate_of(unroll.folder), None))
    lines, figure = report.gate_table(str(tmp_path), SEEDS, INFO)
    rows = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    expected = [(run, seed) for run in report.ALL_RUNS if run.gated
                for seed in run.seeds(SEEDS)]
    assert len(rows) == len(expected)
    for row, (run, seed) in zip(rows, expected, strict=True):
        gate = gate_of(report.run_dir(str(tmp_path), run, seed))
        rate = "0.250" if run.key == "random_gate" else "-"
        assert row == (f"| {run.label} | {seed} | {rate} | {100 * gate['kept']:.1f}% | "
                       f"{100 * gate['kept_where_right']:.1f}% | "
                       f"{100 * gate['kept_where_wrong']:.1f}% |")
    assert figure.folder == report.run_dir(str(tmp_path), report.RUN_BY_KEY["ciss"], 0)


def test_served_scores_read_the_latest_version_by_number(monkeypatch, tmp_path):
    for version in ("2", "10", "9"):
        (tmp_path / "export" / version).mkdir(parents=True)
    monkeypatch.setattr(report.exporter, "score_export",
                        lambda path, pattern, n: {"path": path, "pattern": pattern, "n": n})
    monkeypatch.setattr(report.input_pipeline, "split_file_pattern",
                        lambda data_dir, split: f"{data_dir}/{split}-*")
    report.FLAGS([sys.argv[0], f"--runs={tmp_path}", f"--data_dir={tmp_path}"])
    try:
        version, scores = report.served_scores(INFO)
    finally:
        report.FLAGS.unparse_flags()  # the other tests of this process see them unparsed
    assert version == "10"
    assert scores == {"path": str(tmp_path / "export" / "10"), "pattern": f"{tmp_path}/val-*",
                      "n": INFO.num_classes}
