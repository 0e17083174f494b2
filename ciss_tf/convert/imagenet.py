"""ImageNet initialisation of the backbone from a local Keras ResNet weights file.

Stage 1 (PSPNet) may start its dilated ResNet from the ImageNet weights of
`keras.applications.ResNet50` / `ResNet101` instead of from scratch. The file is read from
disk only (nothing is downloaded): the standard
`resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5` /
`resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5`, or a file written by
`model.save_weights` from a `ResNet50/101(include_top=False)` model (`.weights.h5`).

Keras ResNet v1 has the 7x7 stem, so the backbone must be built with `stem="resnet"`
(`--stem=resnet`), not the deep three-3x3 stem of SPEC.md, and with the matching depths
(ResNet-50: `(3, 4, 6, 3)`, ResNet-101: `(3, 4, 23, 3)`; `width=64`, presets `resnet50` and
`resnet101`). Both put the stride of a stage's first block on its first 1x1 conv and on the
projection, as our caffe-style backbone does, so the mapping is one to one:

| Keras ResNet layers                  | `DilatedResNet(stem="resnet")` layer |
|--------------------------------------|--------------------------------------|
| `conv1_conv` + `conv1_bn`            | `conv1_7x7` (conv + bn)              |
| `conv{s}_block{b}_1_conv` + `_1_bn`  | `conv{s}_{b}/1x1_reduce`             |
| `conv{s}_block{b}_2_conv` + `_2_bn`  | `conv{s}_{b}/3x3`                    |
| `conv{s}_block{b}_3_conv` + `_3_bn`  | `conv{s}_{b}/1x1_increase`           |
| `conv{s}_block1_0_conv` + `_0_bn`    | `conv{s}_1/1x1_proj`                 |

for stages `s` = 2..5 and blocks `b` = 1..depth of the stage. Every backbone variable is
covered; the PPM and both PSPNet heads keep their random initialisation.

Conversions:

* Keras ResNet convs carry a bias and ours do not. Each conv feeds a batch norm, so the bias
  is folded exactly into that norm's moving mean: `mean' = mean - bias` (in training mode
  the batch mean absorbs the bias anyway).
* Keras uses batch norm epsilon 1.001e-5; the `resnet`-stem backbone uses the same value
  (the deep stem keeps PSPNet's 1e-5), so the converted layers compute the same function.
* res4 and res5 are dilated (stride 1, dilation 2 and 4) where Keras ResNet strides by 2:
  the weights are reused as they are, as PSPNet and DeepLab do, so only the stem, res2 and
  res3 reproduce the Keras activations exactly.
* Input: Keras ResNet v1 expects caffe-style input (`imagenet_utils.preprocess_input` mode
  "caffe": BGR, ImageNet means subtracted, no scaling), which is exactly our
  `ciss_tf.data.preprocessing.normalize_image`; no change of input pipeline is needed.
"""

import os
import re

import keras
import tensorflow as tf

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
      The mapped layers, as `(keras_prefix, ciss_name)` pairs (see the module docstring).

    Raises:
      ValueError: naming `path`, if the file is missing or unreadable or does not hold
        ResNet-`depth` weights, or if the backbone does not have that architecture.
    """
    if depth not in KERAS_RESNETS:
        raise ValueError(f"{path}: depth must be one of {sorted(KERAS_RESNETS)}, got {depth}")
    depths, builder = KERAS_RESNETS[depth]
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
