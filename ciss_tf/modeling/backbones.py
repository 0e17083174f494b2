"""The backbone seam: which network computes the features PSPNet's pyramid pooling reads.

`FeatureNet` builds its backbone from a config `{"name": <registered name>, **arguments}`;
`ModelConfig.backbone` names it and the preset sizes it (`config_of`). The dilated ResNet
(`backbone.DilatedResNet`) is registered as "dilated_resnet", the default.

The contract a backbone keeps (a Keras layer class, registered with `register`):

* its constructor takes its arguments, `freeze_bn` (run every batch norm in inference mode:
  the frozen stage-2 feature net) and the Keras `name`;
* `backbone(images, training=...)` on float images `[B, H, W, 3]` returns `(mid, last)`:
  `last` feeds the Pyramid Pooling Module and so `X`, `mid` the auxiliary head of stage-1
  training (res5 and res4 for the ResNet). Both have output stride 8: `ceil(H / 8)` x
  `ceil(W / 8)`, the grid of the p-maps and context maps;
* `output_channels` gives `(mid channels, last channels)` before it is built, and
  `build(input_shape)` creates every variable without tracing the call;
* `get_config()` returns its arguments.

What reads a backbone's inside checks that it knows it: the exact inference rewrite
(`serving.fast_inference.supports`: the export falls back to the plain model), the ImageNet
initialisation and the PSPNet weight importer (both refuse with one line).
"""

import dataclasses
from collections.abc import Callable

from ciss_tf.modeling.backbone import DilatedResNet

DEFAULT = "dilated_resnet"


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its layer class and how a preset sizes it.

    Attributes:
      layer: the Keras layer class (the contract above).
      arguments: `fn(preset, stem) -> dict` of the layer's constructor arguments for a
        `config.Preset` (its depths and widths) and the model's `stem`.
    """

    layer: type
    arguments: Callable


def _resnet_arguments(preset, stem):
    return dict(depths=preset.depths, width=preset.width, stem_widths=preset.stem_widths,
                stem=stem, stride_on=preset.stride_on)


_BACKBONES = {DEFAULT: BackboneSpec(DilatedResNet, _resnet_arguments)}


def register(name, layer, arguments):
    """Makes backbone `layer` available as `ModelConfig(backbone=name)`.

    Raises:
      ValueError: `name` is taken by another backbone.
    """
    spec = BackboneSpec(layer, arguments)
    if _BACKBONES.setdefault(name, spec) != spec:
        raise ValueError(f"backbone {name!r} is already registered")


def names():
    """The registered backbone names."""
    return tuple(_BACKBONES)


def config_of(name, preset, stem):
    """The backbone config of `FeatureNet`: the registered `name` sized by `preset`."""
    return {"name": name, **_BACKBONES[name].arguments(preset, stem)}


def build(config, freeze_bn, name="backbone"):
    """The backbone layer of a `config_of` config (default: the dilated ResNet-50).

    Raises:
      ValueError: an unregistered name.
    """
    arguments = dict(config or {"name": DEFAULT})
    kind = arguments.pop("name")
    if kind not in _BACKBONES:
        raise ValueError(f"backbone {kind!r} is not one of {names()}")
    return _BACKBONES[kind].layer(**arguments, freeze_bn=freeze_bn, name=name)


def name_of(layer):
    """The registered name of a backbone layer, or None."""
    return next((name for name, spec in _BACKBONES.items() if type(layer) is spec.layer), None)
