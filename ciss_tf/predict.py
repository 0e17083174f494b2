r"""Colour-coded predictions and context maps of images (the paper's Figures 1, 4 and 5).

    python -m ciss_tf.predict --flagfile=experiments/ade20k.flags --checkpoint=runs/ade20k \
        --input=photos/ --output_dir=predictions --num_steps=2

`--input` is an image file (PNG, JPEG, BMP or GIF) or a folder of them (not recursive).
Every image runs whole, at its own size (or resized by `--input_scale`, the scale the model
was trained at), with greedy actions. For an input `<stem>.<ext>`
and T = `--num_steps`, `--output_dir` receives PNGs of the input's size:

* `<stem>_pred_t<t>.png`, t = 0..T: the prediction at step t in the dataset's palette.
* `<stem>_context_t<t>.png`, t = 1..T: the context map fed to step t (made from the
  prediction at t - 1): kept pixels in the colour of their class, uncertain pixels white.
* `<stem>_overlay_t<T>.png`: the input blended with the prediction at step T
  (`--overlay_alpha`).
* `<stem>_compare.png`: side by side, the input, the prediction at t = 0, the context map
  of step T and the prediction at step T (only the first two when T = 0).

Every input is decoded before anything is written, so a bad file stops the run with nothing
written.
"""

import os

import cv2
import numpy as np
import tensorflow as tf
from absl import flags, logging

from ciss_tf.data import datasets, preprocessing
from ciss_tf.modeling import checkpoints, inference
from ciss_tf.tools import cli, command_flags

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags of this tool (done by `run`, so importing defines none)."""
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix, or a folder (its latest).")
    flags.DEFINE_string("input", None, "An image file or a folder of images.")
    flags.DEFINE_string("output_dir", None, "Folder of the output PNGs (created if missing).")
    flags.DEFINE_integer(
        "unroll_steps", 2, "T: context steps unrolled (an experiment's flagfile gives its own)."
    )
    flags.DEFINE_alias("num_steps", "unroll_steps")
    flags.DEFINE_float("overlay_alpha", 0.5, "Weight of the prediction in the overlay.")


def list_images(path):
    """The image files named by `--input` (a file, or a folder's images, sorted).

    Raises:
      ValueError: the path does not exist, a folder holds no image, or two inputs share a
        stem (their outputs would collide).
    """
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, name) for name in os.listdir(path)
            if name.lower().endswith(IMAGE_EXTENSIONS)
            and os.path.isfile(os.path.join(path, name))
        )
        if not files:
            raise ValueError(f"--input {path} holds no {'/'.join(IMAGE_EXTENSIONS)} image")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise ValueError(f"--input {path} does not exist")
    stems = {}
    for file in files:
        stem = _stem(file)
        if stem in stems:
            raise ValueError(f"{stems[stem]} and {file} would write the same output files")
        stems[stem] = file
    return files


def read_image(path):
    """uint8 RGB `[H, W, 3]` of an image file.

    Raises:
      ValueError: unreadable or not an image, naming the file.
    """
    try:
        data = tf.io.read_file(path)
        return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
        raise ValueError(f"{path}: cannot read it as an image") from None


def make_predictor(model, num_steps, input_scale=1.0):
    """A compiled function: uint8 image `[H, W, 3]` -> (labels `[T+1, H, W]`, context `[T, H, W]`).

    `context[t - 1]` is the context map fed to step t, upsampled nearest; 0 = uncertain.
    The network sees the image resized by `input_scale`; the outputs have its own size.
    """
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def predict(image):
        size = tf.unstack(tf.shape(image)[:2])
        images = preprocessing.rescale_images(
            preprocessing.normalize_image(image)[tf.newaxis], input_scale
        )
        outputs = inference.segment(model, images, num_steps, size=size)
        return outputs["labels"][:, 0], outputs["context"][:, 0]

    return predict


def render(image, labels, context, palette, alpha=0.5):
    """The output images of one input, by file-name suffix (see the module docstring).

    Args:
      image: uint8 RGB `[H, W, 3]`.
      labels: int `[T+1, H, W]` class ids at steps 0..T.
      context: int `[T, H, W]` context maps fed to steps 1..T (0 = uncertain).
      palette: uint8 `[Nc, 3]`.
      alpha: weight of the prediction in the overlay.

    Returns:
      A dict `suffix -> uint8 RGB image`, e.g. `"pred_t0"`, `"context_t1"`, `"compare"`.
    """
    num_steps = len(labels) - 1
    outputs = {
        f"pred_t{t}": datasets.colorize(labels[t], palette) for t in range(num_steps + 1)
    }
    for t in range(1, num_steps + 1):
        outputs[f"context_t{t}"] = datasets.colorize(
            context[t - 1] - 1, palette, uncertain=context[t - 1] == 0
        )
    last = outputs[f"pred_t{num_steps}"]
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * last.astype(np.float32)
    outputs[f"overlay_t{num_steps}"] = np.clip(np.round(blend), 0, 255).astype(np.uint8)
    panels = [image, outputs["pred_t0"]]
    if num_steps:
        panels += [outputs[f"context_t{num_steps}"], last]
    outputs["compare"] = np.concatenate(panels, axis=1)
    return outputs


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _write_png(path, rgb):
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"cannot encode {path}")
    with open(path, "wb") as f:
        f.write(encoded.tobytes())


def write_predictions(model_config, dataset, checkpoint, input_path, output_dir, *,
                      num_steps=2, input_scale=1.0, overlay_alpha=0.5):
    """The tool without its flags: writes the PNGs of every input; returns their paths.

    Args:
      model_config: the `config.ModelConfig` the checkpoint was trained with.
      dataset: dataset name (its classes and palette).
      checkpoint: checkpoint prefix, or a folder (its latest).
      input_path: an image file or a folder of images (`list_images`).
      output_dir: folder of the output PNGs (created if missing).
      num_steps: T.
      input_scale: the network sees each image resized by this factor.
      overlay_alpha: weight of the prediction in the overlay.

    Raises:
      ValueError: a bad setting, input or checkpoint (naming it); nothing is written then.
    """
    cli.check_local_output(output_dir, "--output_dir")
    if num_steps < 0:
        raise ValueError(f"--num_steps must be >= 0, got {num_steps}")
    if not 0.0 <= overlay_alpha <= 1.0:
        raise ValueError(f"--overlay_alpha must lie in [0, 1], got {overlay_alpha}")
    info = datasets.get_dataset_info(dataset)
    files = list_images(input_path)
    for file in files:
        read_image(file)
    model, checkpoint = checkpoints.load_model(model_config, info.num_classes, checkpoint)
    logging.info("Predicting %d image(s) with %s", len(files), checkpoint)
    predict = make_predictor(model, num_steps, input_scale)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for file in files:
        image = read_image(file)
        labels, context = (t.numpy() for t in predict(tf.constant(image)))
        outputs = render(image, labels, context, info.palette, overlay_alpha)
        for suffix, rgb in outputs.items():
            path = os.path.join(output_dir, f"{_stem(file)}_{suffix}.png")
            _write_png(path, rgb)
            written.append(path)
        logging.info("%s -> %s_*.png", file, os.path.join(output_dir, _stem(file)))
    return written


def predict_from_flags():
    """Runs the prediction the flags describe; returns the paths written."""
    for name in ("checkpoint", "input", "output_dir"):
        if not FLAGS[name].value:
            raise ValueError(f"--{name} is required")
    return write_predictions(
        command_flags.model_config("ciss"), FLAGS.dataset, FLAGS.checkpoint, FLAGS.input,
        FLAGS.output_dir, num_steps=FLAGS.unroll_steps, input_scale=FLAGS.input_scale,
        overlay_alpha=FLAGS.overlay_alpha,
    )


def run():
    """Console entry point."""
    command_flags.run_tool(define_flags, predict_from_flags)


if __name__ == "__main__":
    run()
