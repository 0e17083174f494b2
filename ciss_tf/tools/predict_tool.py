"""The predict tool without its flags: images in, coloured predictions and context maps out.

`write_predictions` writes, for every input image, the PNGs that `ciss_tf.predict`'s
docstring lists; every input is decoded before anything is written.
"""

import os

import cv2
import numpy as np
import tensorflow as tf
from absl import logging

from ciss_tf.data import datasets
from ciss_tf.evaluation import visualize
from ciss_tf.modeling import checkpoints
from ciss_tf.tools import cli

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


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
    predict = visualize.make_predictor(model, num_steps, input_scale)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for file in files:
        image = read_image(file)
        labels, context = (t.numpy() for t in predict(tf.constant(image)))
        outputs = visualize.render(image, labels, context, info.palette, overlay_alpha)
        for suffix, rgb in outputs.items():
            path = os.path.join(output_dir, f"{_stem(file)}_{suffix}.png")
            _write_png(path, rgb)
            written.append(path)
        logging.info("%s -> %s_*.png", file, os.path.join(output_dir, _stem(file)))
    return written
