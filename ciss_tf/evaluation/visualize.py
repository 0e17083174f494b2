"""Pictures of a model's predictions: the paper's Figures 1, 4 and 5.

`make_predictor` runs a model on one image through the one unroll-and-resize path
(`modeling.inference.segment`) and gives the prediction of every step and the context maps;
`render` turns them into coloured images (the predict tool writes them as PNGs).
"""

import numpy as np
import tensorflow as tf

from ciss_tf.data import datasets, preprocessing
from ciss_tf.modeling import inference


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
