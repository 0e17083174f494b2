"""The export tool without its flags: a checkpoint -> a versioned SavedModel folder.

`export_checkpoint` builds the model, picks the version (the checkpoint's step by default)
and writes it with `serving.exporter.export_saved_model` (the graph and its signatures).
"""

import time

import keras
from absl import logging

from ciss_tf.data import datasets
from ciss_tf.modeling import checkpoints
from ciss_tf.serving import exporter


def export_checkpoint(model_config, dataset, checkpoint, export_dir, *, version=None,
                      num_steps=2, max_image_size=exporter.DEFAULT_MAX_IMAGE_SIZE, fast=True,
                      input_scale=1.0, probabilities=False, mixed_precision="float32"):
    """The tool without its flags: exports a checkpoint, prints and returns the version folder.

    Args:
      model_config: the `config.ModelConfig` the checkpoint was trained with.
      dataset: dataset name (its number of classes).
      checkpoint: checkpoint prefix, or a folder (its latest).
      export_dir: base folder of the versioned SavedModels.
      version: version folder (None: the checkpoint's step, else the Unix time).
      num_steps, max_image_size, fast, input_scale, probabilities: see
        `exporter.export_saved_model`.
      mixed_precision: "float32", or "mixed_bfloat16" (the plain model, built under that
        Keras policy: its convs run in bfloat16).

    Raises:
      ValueError: a missing checkpoint, an existing version or a bad setting (naming it).
    """
    info = datasets.get_dataset_info(dataset)
    path = checkpoints.resolve(checkpoint)
    if version is None:
        version = checkpoints.step_of(path) or int(time.time())
    exporter.check_settings(export_dir, version, num_steps, max_image_size)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(mixed_precision)
    try:
        model, _ = checkpoints.load_model(model_config, info.num_classes, path)
        target = exporter.export_saved_model(
            model, export_dir, version, num_steps=num_steps, max_image_size=max_image_size,
            fast=fast and mixed_precision == "float32", input_scale=input_scale,
            probabilities=probabilities,
        )
    finally:
        keras.mixed_precision.set_global_policy(policy)
    logging.info("Exported %s (T = %d) to %s", path, num_steps, target)
    print(target)
    return target
