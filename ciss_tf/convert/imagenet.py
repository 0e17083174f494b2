"""ImageNet initialisation of the backbone from a local Keras ResNet weights file.

Stage 1 (PSPNet) may start its dilated ResNet from the ImageNet weights of
`keras.applications.ResNet50` / `ResNet101` instead of from scratch. The file is read from
disk only (nothing is downloaded): the standard
`resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5` /
`resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5`, or a file written by
`model.save_weights` from a `ResNet50/101(include_top=False)` model (`.weights.h5`). The
backbone must have Keras's 7x7 stem (`stem="resnet"`, presets `resnet50` / `resnet101`).
Every backbone variable is covered; the PPM and both PSPNet heads keep their random
initialisation.

The layer mapping and the conversions (conv biases folded into the batch norms, Keras's
batch-norm epsilon, dilated res4 / res5): docs/datasets.md, "ImageNet initialisation".
"""

import os
import re

import keras
import tensorflow as tf

from ciss_tf.modeling import backbones
from ciss_tf.modeling.backbone import DilatedResNet

KERAS_RESNETS = {
    50: ((3, 4, 6, 3), keras.applications.ResNet50),
    101: ((3, 4, 23, 3), keras.applications.ResNet101),
}
KERAS_WIDTH = 64
# A bottleneck unit of `DilatedResNet.named_units` -> the index of its conv in a Keras block.
_KERAS_PART = {"1x1_proj": 0, "1x1_reduce": 1, "3x3": 2, "1x1_increase": 3}
_BLOCK_UNIT = re.compile(r"conv(\d+)_(\d+)/(\w+)")


def fold_conv_bias(moving_mean, bias):
    """Moving mean of a bias-free conv + BN equal to conv-with-`bias` + BN(`moving_mean`)."""
    return moving_mean - bias


def layer_mapping(backbone):
    """`(keras_prefix, ciss_name, conv_bn_unit)` for every conv + BN of a 7x7-stem backbone.

    `keras_prefix` names the Keras layers `<prefix>_conv` and `<prefix>_bn`; `ciss_name` is
    the path of our `ConvBN` inside the backbone (`DilatedResNet.named_units`).
    """
    pairs = []
    for name, unit in backbone.named_units():
        match = _BLOCK_UNIT.fullmatch(name)
        prefix = (f"conv{match[1]}_block{match[2]}_{_KERAS_PART[match[3]]}" if match
                  else "conv1")
        pairs.append((prefix, name, unit))
    return pairs


def load_keras_resnet_weights(backbone, path, depth=50):
    """Copies Keras ImageNet ResNet v1 weights from a local file onto `backbone`.

    Args:
      backbone: a `DilatedResNet` with `stem="resnet"`, `width=64` and the depths of
        ResNet-`depth` (e.g. `model.feature_net.backbone` of `build_pspnet(..., stem="resnet")`).
        Built here with a dummy input if it has not been called yet.
      path: the Keras weights file (`..._notop.h5`, or `.weights.h5` from `save_weights`).
      depth: 50 or 101.

    Returns:
      The mapped layers, as `(keras_prefix, ciss_name)` pairs (docs/datasets.md lists them).

    Raises:
      ValueError: naming `path`, if the file is missing or unreadable or does not hold
        ResNet-`depth` weights, or if the backbone does not have that architecture.
    """
    if depth not in KERAS_RESNETS:
        raise ValueError(f"{path}: depth must be one of {sorted(KERAS_RESNETS)}, got {depth}")
    depths, builder = KERAS_RESNETS[depth]
    if not isinstance(backbone, DilatedResNet):
        raise ValueError(
            f"{path}: Keras ResNet weights fit the dilated_resnet backbone, not "
            f"{backbones.name_of(backbone) or type(backbone).__name__}"
        )
    if backbone.stem_type != "resnet":
        raise ValueError(
            f"{path}: Keras ResNet weights need the 7x7 stem (stem='resnet', --stem=resnet); "
            f"the backbone has stem={backbone.stem_type!r}"
        )
    if backbone.depths != depths or backbone.width != KERAS_WIDTH:
        raise ValueError(
            f"{path}: ResNet-{depth} weights need depths={depths} and width={KERAS_WIDTH}; the "
            f"backbone has depths={backbone.depths} and width={backbone.width}"
        )
    if not os.path.isfile(path):
        raise ValueError(f"ImageNet weights file not found: {path}")
    try:
        # An absolute path, so that a file named "imagenet" is never taken for the download.
        source = builder(
            weights=os.path.abspath(path), include_top=False, input_shape=(None, None, 3)
        )
    except (OSError, ValueError, KeyError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"{path}: cannot load Keras ResNet-{depth} weights (expected the include_top=False "
            f"file): {reason}"
        ) from error

    if not backbone.built:
        backbone(tf.zeros([1, 32, 32, 3]))
    mapped = []
    for prefix, name, target in layer_mapping(backbone):
        kernel, bias = source.get_layer(f"{prefix}_conv").get_weights()
        gamma, beta, mean, variance = source.get_layer(f"{prefix}_bn").get_weights()
        weights = target.conv_weights()
        weights.kernel.assign(kernel)
        for variable, value in zip(
            weights.norm, (gamma, beta, fold_conv_bias(mean, bias), variance), strict=True
        ):
            variable.assign(value)
        mapped.append((prefix, name))
    return mapped
