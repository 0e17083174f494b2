"""Checkpoint conventions shared by training, evaluation, prediction and export.

Keras 3 layers that keep sub-layers in Python lists (the backbone's blocks, the trunk's
convs, the pyramid branches) are invisible to `tf.train.Checkpoint`'s object graph, so a
plain `tf.train.Checkpoint(model=model)` silently drops most of the network. We therefore
checkpoint a model as a flat dict of its variables keyed by their Keras path relative to
the model (e.g. `feature_net/backbone/conv2_1/3x3/conv/kernel`), plus each Dropout layer's
random-number state (so that a resumed run draws the same masks as an uninterrupted one).

Training writes `tf.train.Checkpoint(model=model_variables(model), optimizer=..., step=...)`
(plus `optimizer_<group>` for every further learning-rate group, see
`training.optimizers.checkpoint_optimizers`) with a
`tf.train.CheckpointManager` into `--model_dir` (files `ckpt-<step>.*`). Other tools
restore only the model. A stage-2 CiSS-Net initialises its feature net from a stage-1
PSPNet checkpoint through the shared `feature_net/` prefix, and optionally its Base Net's
convs from the PSPNet head (`restore_base_net_from_pspnet_head`).
"""

import os

import tensorflow as tf

from ciss_tf.modeling import config

FEATURE_NET_PREFIX = "feature_net/"
# Size of the dummy batch that creates every variable before a checkpoint is restored.
_BUILD_SIZE = 33
# Stage-1 head variable -> the Base Net variable of the same shape and role: the 3x3 conv
# (conv5_4) and the 1x1 classifier (conv6). The norms differ (batch vs group): not copied.
PSPNET_HEAD_TO_BASE_NET = {
    "head/conv/kernel": "base_net/conv/kernel",
    "head/classifier/kernel": "base_net/classifier/kernel",
    "head/classifier/bias": "base_net/classifier/bias",
}
# What to check when a checkpoint does not fit the model built from the flags.
MISMATCH_SUSPECTS = "preset, dataset, context mode or --context_encoder_norm"


def model_variables(model, prefix=""):
    """`{relative path: variable}` for every variable of a built model.

    The path is the chain of layer names from the model down, then the variable's name
    (`bias_net/trunk/c2_conv/kernel`); Dropout random states end in `seed_state`. It follows
    the object structure, not Keras name scopes, so it does not depend on how a layer was
    first built.

    Args:
      model: a built Keras model.
      prefix: keep only the paths that start with it (e.g. `FEATURE_NET_PREFIX`).

    Raises:
      ValueError: if two variables share a path (sibling layers need distinct names).
    """
    variables = {}

    def add(path, variable):
        if path in variables:
            raise ValueError(f"two variables share the checkpoint key {path!r}")
        variables[path] = variable

    def visit(layer, path):
        # Keras 3 keeps a layer's own variables and sub-layers in these lists.
        for variable in layer._trainable_variables + layer._non_trainable_variables:  # noqa: SLF001
            add(path + variable.name, variable)
        for generator in layer._seed_generators:  # noqa: SLF001
            add(path + "seed_state", generator.state)
        for child in layer._layers:  # noqa: SLF001
            visit(child, f"{path}{child.name}/")

    for child in model._layers:  # noqa: SLF001
        visit(child, f"{child.name}/")
    return {k: v for k, v in variables.items() if k.startswith(prefix)}


def resolve(path_or_dir):
    """A checkpoint prefix from a prefix or a directory (its latest checkpoint).

    Raises:
      ValueError: if nothing is there, naming the path.
    """
    if tf.io.gfile.isdir(path_or_dir):
        latest = tf.train.latest_checkpoint(path_or_dir)
        if latest is None:
            raise ValueError(f"no checkpoint in directory {path_or_dir}")
        return latest
    if not tf.io.gfile.exists(path_or_dir + ".index"):
        raise ValueError(f"checkpoint not found: {path_or_dir}")
    return path_or_dir


def save_model(model, prefix):
    """Writes the model's variables alone (tests, conversions); returns the file prefix."""
    return tf.train.Checkpoint(model=model_variables(model)).write(prefix)


def restore_model(model, path_or_dir, prefix=""):
    """Restores a built model's weights (or those under `prefix`) from a checkpoint.

    Returns:
      The checkpoint prefix that was read.

    Raises:
      ValueError: if the checkpoint is missing or lacks one of the model's variables.
    """
    path = resolve(path_or_dir)
    wanted = model_variables(model, prefix)
    stored = _stored_model_shapes(path)
    present = {key: v for key, v in wanted.items() if _escape(key) in stored}
    # Dropout random states exist only when dropout > 0; they never matter for inference.
    missing = [key for key in wanted if key not in present and not key.endswith("seed_state")]
    if missing:
        raise ValueError(
            f"checkpoint {path} lacks {len(missing)} variables of {model.name}, e.g. "
            f"{missing[0]!r} (different {MISMATCH_SUSPECTS}?)"
        )
    tf.train.Checkpoint(model=present).restore(path).expect_partial()
    return path


def restore_feature_net(model, path_or_dir):
    """Loads `model.feature_net` from a stage-1 (PSPNet) or stage-2 checkpoint."""
    return restore_model(model, path_or_dir, FEATURE_NET_PREFIX)


def restore_base_net_from_pspnet_head(model, path_or_dir):
    """Copies a stage-1 PSPNet head's 3x3 conv and classifier into a CiSS-Net's Base Net.

    The Base Net has the head's shape with GroupNorm instead of batch norm: its norm and
    everything else keep their values (a deviation from the paper, which trains the Base
    Net from its initialisation; see `--base_init` of `ciss_tf.train`).

    Args:
      model: a built `CissNet`.
      path_or_dir: a stage-1 checkpoint (prefix or folder).

    Returns:
      The checkpoint prefix that was read.

    Raises:
      ValueError: the checkpoint is missing, holds no PSPNet head, or its head's shapes
        differ from the Base Net's.
    """
    path = resolve(path_or_dir)
    stored = _stored_model_shapes(path)
    variables = model_variables(model)
    targets = {}
    for source, target in PSPNET_HEAD_TO_BASE_NET.items():
        shape = stored.get(_escape(source))
        if shape is None:
            raise ValueError(f"checkpoint {path} holds no PSPNet head ({source!r} missing)")
        if tuple(shape) != tuple(variables[target].shape):
            raise ValueError(
                f"checkpoint {path}: {source} has shape {tuple(shape)}, {target} has "
                f"{tuple(variables[target].shape)} (different {MISMATCH_SUSPECTS}?)"
            )
        targets[source] = variables[target]
    tf.train.Checkpoint(model=targets).restore(path).expect_partial()
    return path


def _stored_model_shapes(path):
    """`{escaped model key: shape}` of the model variables a checkpoint holds."""
    return {
        name.split("/.ATTRIBUTES")[0].removeprefix("model/"): shape
        for name, shape in tf.train.load_checkpoint(path).get_variable_to_shape_map().items()
        if name.startswith("model/") and name.endswith("/.ATTRIBUTES/VARIABLE_VALUE")
    }


def _escape(key):
    # How tf.train.Checkpoint spells a dict key with slashes in a checkpoint name.
    return key.replace(".", "..").replace("/", ".S")


def stored_name(key):
    """The name under which a checkpoint stores the `model_variables` entry `key`."""
    return f"model/{_escape(key)}/.ATTRIBUTES/VARIABLE_VALUE"


def step_of(path):
    """The training step encoded in a checkpoint prefix `.../ckpt-<step>`, or 0."""
    suffix = os.path.basename(path).rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def load_model(model_config, num_classes, checkpoint):
    """The model of a `config.ModelConfig`, restored from a checkpoint.

    Args:
      model_config: the `config.ModelConfig` the checkpoint was trained with.
      num_classes: classes of the dataset.
      checkpoint: checkpoint prefix or folder (its latest checkpoint).

    Returns:
      (model, checkpoint prefix read).

    Raises:
      ValueError: no checkpoint there, it is unreadable, or it does not fit the model
        (the message names the checkpoint).
    """
    path = resolve(checkpoint)
    model = config.build_model(model_config, num_classes, (_BUILD_SIZE, _BUILD_SIZE))
    return _restored(model, path), path


def _restored(model, path):
    """The built `model` restored from the checkpoint prefix `path`."""
    try:
        restore_model(model, path)
    except tf.errors.OpError as error:
        lines = str(error.message).strip().splitlines() or [""]
        raise ValueError(f"cannot read checkpoint {path}: {lines[0][:300]}") from None
    return model
