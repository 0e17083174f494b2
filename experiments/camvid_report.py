r"""Tables, gate statistics, served-model check and figure of the CamVid runs (RESULTS.md).

    python experiments/camvid_report.py --runs=runs/camvid --data_dir=runs/camvid/data

Run by `experiments/camvid.sh` after training, evaluation and export. Reads the scores
`<runs>/<run>/eval.json` written by `ciss_tf.evaluate`; measures the gate of the learned
runs on the val split at the training scale (share of pixels kept as context at t = 1,
overall and where the p-map is right / wrong, on the stride-8 grid, as the demo does);
scores the exported SavedModel `<runs>/export/<version>/` on the val PNGs through its
`serving_bytes` signature in this process; writes `<runs>/report.md` and
`<runs>/figure.png` (input, truth, p-map and context map at t = 0, 1, 2; uncertain white).
"""

import json
import os

import cv2
from absl import app, flags

from ciss_tf import demo, export, inference, ops
from ciss_tf.data import datasets, input_pipeline

flags.DEFINE_string("runs", "runs/camvid", "Folder of the runs written by camvid.sh.")
FLAGS = flags.FLAGS

PRESET = "small"
SCALE = 0.5  # the flagfiles train at half resolution
RUNS = (  # folder, label, context mode
    ("camvid_no_context", "No context (same Bias Net, all uncertain)", "none"),
    ("camvid_pmap", "Baseline + p-map", "pmap"),
    ("camvid_gated", "Baseline + gated p-map (lambda2 = 0.001)", "learned"),
    ("camvid", "CiSS-Net", "learned"),
)
FIGURE_VAL_IMAGES = (0, 40, 80)


def _scores(run):
    with open(os.path.join(FLAGS.runs, run, "eval.json")) as f:
        return json.load(f)["steps"]


def _val_dataset(info):
    pattern = input_pipeline.split_file_pattern(FLAGS.data_dir, "val")
    return input_pipeline.eval_dataset(pattern, num_classes=info.num_classes)


def _scaled(dataset):
    """Images at the training scale, labels nearest-resized to them (for the gate)."""
    def scale(batch):
        image = inference.rescale_images(batch["image"], SCALE)
        label = ops.resize_labels(batch["label"], ops.spatial_size(image))
        return {"image": image, "label": label}

    return dataset.map(scale)


def gate_statistics(run, context_mode, info):
    """(gate statistics of `demo.evaluate_run`, greedy unroll) of a learned run on val."""
    model = demo.load_run(os.path.join(FLAGS.runs, run), info.num_classes, context_mode, PRESET)
    unroll = demo.greedy_unroll(model)
    _, gate, _ = demo.evaluate_run(unroll, _scaled(_val_dataset(info)), info.num_classes)
    return gate, unroll


def served_scores(info):
    """(version, scores) of the latest export on the val PNGs, through `serving_bytes`."""
    export_dir = os.path.join(FLAGS.runs, "export")
    version = max(os.listdir(export_dir), key=int)
    pattern = input_pipeline.split_file_pattern(FLAGS.data_dir, "val")
    return version, export.score_export(os.path.join(export_dir, version), pattern,
                                        info.num_classes)


def figure(unroll, info):
    """The Figure-1 style panel of a few val images at the training scale."""
    batches = [b for i, b in enumerate(_scaled(_val_dataset(info))) if i in FIGURE_VAL_IMAGES]
    return demo.figure_panel(unroll, batches, info.palette)


def report(info):
    """The markdown of report.md (and writes figure.png)."""
    pspnet = _scores("pspnet")["0"]
    ciss = _scores("camvid")
    lines = ["## Table 1: CiSS-Net on CamVid val (greedy policy)", "",
             "| t | mIoU | pixel acc. |", "|---|---|---|"]
    lines += [f"| {t} | {100 * ciss[t]['miou']:.2f} | {100 * ciss[t]['pixel_accuracy']:.2f} |"
              for t in ("0", "2", "4", "6")]
    gates = {}
    unroll = None
    for run, _, mode in RUNS:
        if mode == "learned":
            gates[run], run_unroll = gate_statistics(run, mode, info)
            unroll = run_unroll if run == "camvid" else unroll
    lines += ["", "## Table 4: ablations, mIoU at t = 2 (t = 0 for the baselines)", "",
              "| method | mIoU | kept at t = 1 | kept where p-map right / wrong |",
              "|---|---|---|---|",
              f"| PSPNet (stage 1, its own head) | {100 * pspnet['miou']:.2f} | - | - |",
              f"| Baseline (CiSS-Net's Base Net, t = 0) | {100 * ciss['0']['miou']:.2f} "
              "| - | - |"]
    for run, label, _ in RUNS:
        gate = gates.get(run)
        kept = (f"{100 * gate['kept']:.1f}% | {100 * gate['kept_where_right']:.1f}% / "
                f"{100 * gate['kept_where_wrong']:.1f}%" if gate else "- | -")
        lines.append(f"| {label} | {100 * _scores(run)['2']['miou']:.2f} | {kept} |")
    lines += ["", "## Per-class IoU (CiSS-Net run)", "",
              "| class | PSPNet | t = 0 | t = 2 |", "|---|---|---|---|"]
    for c, name in enumerate(info.class_names):
        values = [pspnet["iou"][c], ciss["0"]["iou"][c], ciss["2"]["iou"][c]]
        lines.append(f"| {name} | " + " | ".join(
            "-" if v is None else f"{100 * v:.2f}" for v in values) + " |")
    version, served = served_scores(info)
    lines += ["", f"Exported SavedModel (version {version}, T = 2, input scale {SCALE}) on the "
              f"101 val PNGs through `serving_bytes`: mIoU {100 * served['miou']:.2f}, "
              f"pixel accuracy {100 * served['pixel_accuracy']:.2f}."]
    panel = figure(unroll, info)
    # figure_panel zooms its tiles 2x (made for the demo's 96x96 scenes): back to 1x.
    panel = cv2.resize(panel, (panel.shape[1] // 2, panel.shape[0] // 2),
                       interpolation=cv2.INTER_AREA)
    cv2.imwrite(os.path.join(FLAGS.runs, "figure.png"), panel[..., ::-1])
    return "\n".join(lines) + "\n"


def main(argv):
    """Writes report.md and figure.png into --runs and prints the report."""
    del argv
    info = datasets.get_dataset_info("camvid")
    text = report(info)
    with open(os.path.join(FLAGS.runs, "report.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    app.run(main)
