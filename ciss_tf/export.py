r"""Exports a CiSS-Net checkpoint as a versioned SavedModel for TF Serving.

    python -m ciss_tf.export --flagfile=experiments/ade20k.flags --checkpoint=runs/ade20k \
        --export_dir=export --num_steps=2

writes `export/<version>/` (default version: the checkpoint's training step, or the Unix
time for a checkpoint without one). An existing version is never overwritten: the model is
saved into a hidden folder of `--export_dir` and renamed into place once complete, so a
server watching the folder never sees a half-written version.

Signatures (whole-image inference at the original size, greedy actions, T = `--num_steps`
fixed at export time):

* `serving_default`: `images` uint8 `[B, H, W, 3]`, RGB, any H and W up to
  `--max_image_size` per side.
* `serving_bytes`: `image_bytes` string `[B]`, encoded PNG / JPEG / BMP / GIF (decoded to
  RGB); all images of one request must have the same size.

Both return `labels` int32 `[B, H, W]` (class ids at step T) and `context` int32 `[B, H, W]`
(the last context map, fed to step T, upsampled nearest; 0 = uncertain, k = class k - 1
kept; all 0 when T = 0); with `--probabilities`, also `probabilities` float32
`[B, H, W, Nc]` (softmax at step T). That is Nc floats per pixel (160 MB for one Cityscapes
image, far above gRPC's default 4 MB message and heavy as REST JSON), hence opt-in.
Normalisation and resizing live inside the graph (`--input_scale` resizes the image before
the network, for models trained at a reduced resolution). A request with a wrong dtype or rank
fails at the signature; wrong channel counts, empty batches or images, images above the
size limit, undecodable bytes and mixed sizes fail with an `InvalidArgumentError` whose
message names the problem.
"""

import os
import shutil
import time

import numpy as np
import tensorflow as tf
from absl import flags, logging

from ciss_tf import checkpoints, fast_inference, inference, metrics
from ciss_tf.data import datasets, input_pipeline, tfrecord

DEFAULT_MAX_IMAGE_SIZE = 2048
FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags of this tool (done by `run`, so importing defines none)."""
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix, or a folder (its latest).")
    flags.DEFINE_string("export_dir", None, "Base folder of the versioned SavedModels.")
    flags.DEFINE_integer("num_steps", 2, "T: context steps unrolled by the exported model.")
    flags.DEFINE_integer(
        "version", None, "Version folder (default: checkpoint step, else Unix time)."
    )
    flags.DEFINE_integer(
        "max_image_size", DEFAULT_MAX_IMAGE_SIZE, "Largest height and width accepted."
    )
    inference.define_input_scale_flag()
    flags.DEFINE_bool(
        "probabilities", False,
        "Also return `probabilities`, float32 [B, H, W, Nc] (softmax at step T), from both "
        "signatures: Nc floats per pixel, so off by default.",
    )
    flags.DEFINE_bool(
        "fast", True,
        "Serve the exact inference-time rewrite (ciss_tf.fast_inference); --nofast serves "
        "the plain model.",
    )


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
        if fast:
            net = fast_inference.FastCissNet(model)

            def unroll(images):
                outputs = net(images, num_steps=num_steps)
                return outputs["logits"], outputs["context"]
        else:
            def unroll(images):
                return inference.unroll(model, images, num_steps)
        self._unroll = unroll

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
            normalized = input_pipeline.normalize_image(images)
        size = (shape[1], shape[2])
        logits, context = self._unroll(inference.rescale_images(normalized, self.input_scale))
        logits = inference.upsample_logits(logits[-1], size)
        labels = tf.argmax(logits, axis=-1, output_type=tf.int32)
        if self.num_steps:
            context = inference.upsample_context(context[-1], size)
        else:
            context = tf.zeros_like(labels)
        outputs = {"labels": labels, "context": context}
        if self.probabilities:
            outputs["probabilities"] = tf.nn.softmax(logits)
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
    target = _check_settings(export_dir, version, num_steps, max_image_size)
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


def _check_settings(export_dir, version, num_steps, max_image_size):
    """The version folder, after checking the settings (ValueError naming the flag)."""
    if version < 0:
        raise ValueError(f"--version must be a non-negative integer, got {version}")
    if num_steps < 0:
        raise ValueError(f"--num_steps must be >= 0, got {num_steps}")
    if max_image_size < 1:
        raise ValueError(f"--max_image_size must be positive, got {max_image_size}")
    inference.check_local_output(export_dir, "--export_dir")
    target = os.path.join(export_dir, str(version))
    if os.path.exists(target):
        raise ValueError(f"{target} exists already; versions are never overwritten (--version)")
    return target


def export_from_flags():
    """Exports the checkpoint the flags name; returns the version folder."""
    for name in ("checkpoint", "export_dir"):
        if not FLAGS[name].value:
            raise ValueError(f"--{name} is required")
    info = datasets.get_dataset_info(FLAGS.dataset)
    path = checkpoints.resolve(FLAGS.checkpoint)
    version = FLAGS.version
    if version is None:
        version = checkpoints.step_of(path) or int(time.time())
    _check_settings(FLAGS.export_dir, version, FLAGS.num_steps, FLAGS.max_image_size)
    model, _ = inference.load_model(info.num_classes, path)
    target = export_saved_model(
        model, FLAGS.export_dir, version, num_steps=FLAGS.num_steps,
        max_image_size=FLAGS.max_image_size, fast=FLAGS.fast, input_scale=FLAGS.input_scale,
        probabilities=FLAGS.probabilities,
    )
    logging.info("Exported %s (T = %d) to %s", path, FLAGS.num_steps, target)
    print(target)
    return target


def run():
    """Console entry point."""
    inference.run_tool(define_flags, export_from_flags)


if __name__ == "__main__":
    run()
