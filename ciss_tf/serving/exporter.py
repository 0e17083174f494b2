"""The SavedModel for TF Serving: its graph (`ServingModule`), writing and scoring it.

`export_saved_model` writes `export_dir/<version>/` (into a hidden folder renamed into place
once complete, so a server watching the folder never sees a half-written version; an
existing version is never overwritten). Its signatures `serving_default` (uint8 images) and
`serving_bytes` (encoded images) run whole-image inference at the original size with greedy
actions, T fixed at export time, normalisation and resizing inside the graph; `score_export`
scores a loaded export as a client would. The signatures' inputs, outputs and errors:
docs/serving.md.
"""

import os
import shutil

import numpy as np
import tensorflow as tf
from absl import logging

from ciss_tf import metrics
from ciss_tf.data import datasets, preprocessing, tfrecord
from ciss_tf.modeling import inference
from ciss_tf.serving import fast_inference
from ciss_tf.tools import cli

DEFAULT_MAX_IMAGE_SIZE = 2048


class ServingModule(tf.Module):
    """The exported graph: pre-processing, the unrolled model and resizing back.

    Args:
      model: a built, restored `CissNet`.
      num_steps: T.
      max_image_size: largest height and width accepted.
      fast: run `fast_inference.FastCissNet` (the same greedy outputs up to float32
        rounding, fewer FLOPs) instead of the model itself.
      input_scale: images are resized by this factor before the network (the outputs
        still have the request's size).
      probabilities: also return the class probabilities at step T.
    """

    def __init__(self, model, num_steps, max_image_size=DEFAULT_MAX_IMAGE_SIZE, fast=True,
                 input_scale=1.0, probabilities=False):
        super().__init__(name="ciss_serving")
        self.num_steps = num_steps
        self.max_image_size = max_image_size
        self.input_scale = input_scale
        self.probabilities = probabilities
        # The networks live in a closure, out of TensorFlow's object graph: Keras 3 layers
        # hide the sub-layers they keep in lists from it, and a tracked Keras model would be
        # saved with a traced signature of its own (slow, unused). `signatures` tracks the
        # variables the graph reads instead.
        if fast and not fast_inference.supports(model):
            logging.info("The fast inference path does not know this backbone: exporting "
                         "the plain model")
            fast = False
        net = fast_inference.FastCissNet(model) if fast else model

        def segment(images, size):
            return inference.segment(
                net, images, num_steps, size=size, label_steps=[num_steps],
                context_steps=[num_steps - 1] if num_steps else [], probabilities=probabilities,
            )

        self._segment = segment

    def segment(self, images):
        """uint8 RGB `[B, H, W, 3]` -> the output dict of the signatures."""
        shape = tf.shape(images)
        limit = self.max_image_size
        checks = [
            # The signature declares 3 channels, but a concrete function called in-process
            # does not check shapes against it.
            tf.debugging.assert_equal(
                shape[3], 3, message="images must have 3 channels (RGB) in the last axis"
            ),
            tf.debugging.assert_positive(shape[0], message="the request holds no image"),
            tf.debugging.assert_positive(shape[1:3], message="images must be at least 1x1"),
            tf.debugging.assert_less_equal(
                shape[1:3], limit,
                message=f"images must be at most {limit}x{limit} pixels (height, width)",
            ),
        ]
        with tf.control_dependencies(checks):
            normalized = preprocessing.normalize_image(images)
        size = (shape[1], shape[2])
        segmented = self._segment(
            preprocessing.rescale_images(normalized, self.input_scale), size
        )
        labels = segmented["labels"][0]
        outputs = {
            "labels": labels,
            "context": segmented["context"][0] if self.num_steps else tf.zeros_like(labels),
        }
        if self.probabilities:
            outputs["probabilities"] = segmented["probabilities"]
        return outputs

    def decode(self, image_bytes):
        """Encoded images `[B]` of one size -> uint8 RGB `[B, H, W, 3]`."""
        check = tf.debugging.assert_positive(
            tf.size(image_bytes), message="the request holds no image"
        )
        with tf.control_dependencies([check]):
            first_size = tf.shape(_decode(image_bytes[0]))[:2]

        def decode_one(data):
            image = _decode(data)
            same = tf.debugging.assert_equal(
                tf.shape(image)[:2], first_size,
                message="all images of one request must have the same height and width",
            )
            with tf.control_dependencies([same]):
                return tf.identity(image)

        return tf.map_fn(
            decode_one, image_bytes,
            fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
        )

    def signatures(self):
        """Traces `serving_default` and `serving_bytes`; returns their concrete functions.

        They are built here rather than kept as `tf.function` attributes, which
        `tf.saved_model.save` would trace once more; `serving_bytes` calls the function of
        `serving_default`, so the network is traced and stored once. The variables the graph
        reads become `self.serving_variables`, the state the SavedModel stores.
        """
        serve_images = tf.function(
            self.segment,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, "images")],
        )
        serve_bytes = tf.function(
            lambda image_bytes: serve_images(self.decode(image_bytes)),
            input_signature=[tf.TensorSpec([None], tf.string, "image_bytes")],
        )
        signatures = {
            "serving_default": serve_images.get_concrete_function(),
            "serving_bytes": serve_bytes.get_concrete_function(),
        }
        self.serving_variables = list(signatures["serving_default"].variables)
        return signatures


def _decode(data):
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def export_saved_model(model, export_dir, version, *, num_steps=2,
                       max_image_size=DEFAULT_MAX_IMAGE_SIZE, fast=True, input_scale=1.0,
                       probabilities=False):
    """Saves `model` as `export_dir/<version>/` with the two serving signatures.

    Args:
      model: a built, restored `CissNet`.
      export_dir: base folder (created if missing).
      version: non-negative integer.
      num_steps: T, fixed in the graph.
      max_image_size: largest height and width accepted.
      fast: serve `fast_inference.FastCissNet` (see `ServingModule`).
      input_scale: resize factor applied to images before the network.
      probabilities: also return the class probabilities (`ServingModule`).

    Returns:
      The path of the version folder.

    Raises:
      ValueError: the version exists already or is negative, or `num_steps` is negative.
    """
    target = check_settings(export_dir, version, num_steps, max_image_size)
    module = ServingModule(model, num_steps, max_image_size, fast, input_scale, probabilities)
    os.makedirs(export_dir, exist_ok=True)
    # TF Serving loads only folders named by an integer: this one is invisible to it.
    temporary = os.path.join(export_dir, f".incomplete-{version}-{os.getpid()}")
    try:
        tf.saved_model.save(module, temporary, signatures=module.signatures())
        os.rename(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def score_export(version_dir, file_pattern, num_classes, ignore_label=datasets.IGNORE_LABEL):
    """Scores a SavedModel as a client would: each record's encoded image to `serving_bytes`.

    Args:
      version_dir: `export_dir/<version>`.
      file_pattern: TFRecord shards (`input_pipeline.split_file_pattern`).
      num_classes: Nc.
      ignore_label: label of unscored pixels.

    Returns:
      `metrics.segmentation_scores` of the returned `labels` against the records' labels
      (at the original size), plus `num_images`.
    """
    serve = tf.saved_model.load(version_dir).signatures["serving_bytes"]
    confusion = np.zeros([num_classes, num_classes], np.int64)
    count = 0
    for record in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(file_pattern))):
        features = tfrecord.parse_features(record)
        encoded = features[tfrecord.IMAGE_ENCODED]
        labels = tfrecord.decode_features(features)["label"].numpy()
        predicted = serve(image_bytes=encoded[tf.newaxis])["labels"][0].numpy()
        confusion += metrics.confusion_matrix(labels, predicted, num_classes, ignore_label)
        count += 1
    return {**metrics.segmentation_scores(confusion), "num_images": count}


def check_settings(export_dir, version, num_steps, max_image_size):
    """The version folder, after checking the settings (ValueError naming the flag)."""
    if version < 0:
        raise ValueError(f"--version must be a non-negative integer, got {version}")
    if num_steps < 0:
        raise ValueError(f"--num_steps must be >= 0, got {num_steps}")
    if max_image_size < 1:
        raise ValueError(f"--max_image_size must be positive, got {max_image_size}")
    cli.check_local_output(export_dir, "--export_dir")
    target = os.path.join(export_dir, str(version))
    if os.path.exists(target):
        raise ValueError(f"{target} exists already; versions are never overwritten (--version)")
    return target
