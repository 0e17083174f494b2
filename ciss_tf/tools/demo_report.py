"""What the demo shows of its results: the tables, the Figure-1 panel, TensorBoard scalars.

    print(demo_report.format_tables(results, runs))
    panel = demo_report.figure_panel(greedy_eval.greedy_unroll(model), batches, palette)

The CamVid report (`experiments/camvid_report.py`) draws its figure with `figure_panel` too.
"""

import os

import cv2
import numpy as np
import tensorflow as tf

from ciss_tf.data import datasets, preprocessing
from ciss_tf.modeling import ops
from ciss_tf.tools.greedy_eval import GATE_STEP

TABLE_STEPS = (0, 2, 4, 6)
HEADLINE_STEP = 2
FIGURE_STEPS = (0, 1, 2)
FIGURE_IMAGES = 4
FIGURE_ZOOM = 2
FIGURE_GAP = 4
FIGURE_HEADER = 18


def write_eval_summaries(model_dir, scores):
    """TensorBoard scalars `eval/miou` and `eval/pixel_accuracy` with the step t as x axis."""
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))
    with writer.as_default():
        for t, s in scores.items():
            tf.summary.scalar("demo/miou_by_step", s["miou"], step=int(t))
            tf.summary.scalar("demo/pixel_accuracy_by_step", s["pixel_accuracy"], step=int(t))
    writer.flush()


def figure_size(image_height, image_width, num_images=FIGURE_IMAGES):
    """(height, width) of `figure_panel`'s output for images of the given size."""
    columns = 2 + 2 * len(FIGURE_STEPS)
    tile_h, tile_w = image_height * FIGURE_ZOOM, image_width * FIGURE_ZOOM
    return (FIGURE_HEADER + num_images * (tile_h + FIGURE_GAP),
            columns * tile_w + (columns - 1) * FIGURE_GAP)


def figure_panel(unroll, batches, palette):
    """Figure 1 of the paper: per image, input | truth | (p-map t, context map t) for t in 0..2.

    Args:
      unroll: `greedy_eval.greedy_unroll(model)`.
      batches: eval batches of one image each, all of the same size.
      palette: uint8 [Nc, 3].

    Returns:
      uint8 RGB image of `figure_size`: white background, one image per row (each tile
      `FIGURE_ZOOM` times the image), column titles on top, uncertain context pixels white.
    """
    rows = []
    for batch in batches:
        image = preprocessing.denormalize_image(batch["image"])[0].numpy()
        outputs = unroll(batch["image"])
        tiles = [image, datasets.colorize(batch["label"][0].numpy(), palette)]
        for t in FIGURE_STEPS:
            tiles.append(datasets.colorize(outputs["labels"][t][0].numpy(), palette))
            context = ops.resize_labels(outputs["context"][t][:1], image.shape[:2])[0].numpy()
            tiles.append(datasets.colorize(context - 1, palette, uncertain=context == 0))
        rows.append([np.kron(tile, np.ones((FIGURE_ZOOM, FIGURE_ZOOM, 1), np.uint8))
                     for tile in tiles])
    tile_h, tile_w = rows[0][0].shape[:2]
    height, width = figure_size(tile_h // FIGURE_ZOOM, tile_w // FIGURE_ZOOM, len(rows))
    canvas = np.full((height, width, 3), 255, np.uint8)
    titles = ["input", "truth"] + [f"{kind} t={t}" for t in FIGURE_STEPS
                                   for kind in ("p-map", "context")]
    for c, title in enumerate(titles):
        cv2.putText(canvas, title, (c * (tile_w + FIGURE_GAP) + 2, FIGURE_HEADER - 5),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    for r, tiles in enumerate(rows):
        top = FIGURE_HEADER + r * (tile_h + FIGURE_GAP)
        for c, tile in enumerate(tiles):
            left = c * (tile_w + FIGURE_GAP)
            canvas[top:top + tile_h, left:left + tile_w] = tile
    return canvas


def format_tables(results, runs):
    """The Table-1, Table-4 (and with the sweeps, Table-2/3) style text of `results`.

    Args:
      results: the demo's results dict (`demo.run_demo`).
      runs: the stage-2 `demo.Run`s it trained (their labels name the rows).
    """
    lines = ["", "Table 1 - CiSS-Net on the synthetic validation split (greedy policy)",
             f"  {'t':>3}  {'mIoU':>6}  {'pixAcc':>6}"]
    for t in TABLE_STEPS:
        s = results["steps"][str(t)]
        lines.append(f"  {t:>3}  {100 * s['miou']:6.2f}  {100 * s['pixel_accuracy']:6.2f}")
    labels = {run.name: run.label for run in runs}
    lines += ["", f"Table 4 - ablations, mIoU at t = {HEADLINE_STEP} (same steps and features)",
              f"  {'method':<44} {'mIoU':>6}  {'kept':>5}"]
    gates = results["gate"]
    rows = [("baseline", "Baseline (CiSS-Net at t = 0)")]
    rows += [(name, labels[name]) for name in ("no_context", "baseline_pmap", "gated", "ciss")
             if name in results["ablations"]]
    for name, label in rows:
        kept = gates.get(name, {}).get("kept")
        kept_text = f"{100 * kept:4.0f}%" if kept is not None else "    -"
        lines.append(f"  {label:<44} {100 * results['ablations'][name]:6.2f}  {kept_text}")
    ciss = gates["ciss"]
    lines += [
        "",
        f"Gate at t = {GATE_STEP} (CiSS-Net): keeps {100 * ciss['kept']:.1f}% of the pixels; "
        f"{100 * ciss['kept_where_right']:.1f}% of those its p-map gets right, "
        f"{100 * ciss['kept_where_wrong']:.1f}% of those it gets wrong "
        f"(p-map error {100 * ciss['pmap_error']:.1f}%).",
        f"Context gain over the capacity-matched control: "
        f"{100 * (results['ablations']['ciss'] - results['ablations']['no_context']):+.2f} mIoU; "
        f"over Baseline + p-map: "
        f"{100 * (results['ablations']['ciss'] - results['ablations']['baseline_pmap']):+.2f}.",
    ]
    for title, sweep in (("Table 2 - gamma", "gamma"), ("Table 3 - lambda2", "lambda2")):
        if sweep in results.get("sweeps", {}):
            lines += ["", f"{title}, mIoU at t = {HEADLINE_STEP}"]
            lines += [f"  {value:>6}  {100 * miou:6.2f}"
                      for value, miou in results["sweeps"][sweep].items()]
    return "\n".join(lines)
