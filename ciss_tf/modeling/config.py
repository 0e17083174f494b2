"""Model presets and `ModelConfig`: which network a run trains, evaluates or serves.

A preset fixes the shape of the network; the dataset fixes the number of classes. The
paper presets match SPEC.md: dilated ResNet-50 (ADE20K, Pascal Context) or ResNet-101
(Cityscapes), PPM of 4 x 512 channels, Base/Bias/Context Nets 512 wide, pyramid branches of
256 (context-map encoder) and 64 (p-map encoder). `tiny` keeps the same architecture with a
few narrow blocks so that it trains on a CPU in minutes; `small` (1.5M parameters) is
sized to train from scratch on CamVid on a CPU in about an hour.
"""

import dataclasses

import tensorflow as tf

from ciss_tf.modeling import backbones
from ciss_tf.modeling.backbone import STEMS
from ciss_tf.modeling.ciss_net import CONTEXT_MODES, CissNet
from ciss_tf.modeling.pspnet import PSPNet


@dataclasses.dataclass(frozen=True)
class Preset:
    """Widths and depths of the whole network."""

    depths: tuple[int, ...]
    width: int
    stem_widths: tuple[int, ...]
    ppm_channels: int
    channels: int
    bias_branch_channels: int
    context_branch_channels: int
    # The conv of res3_1 that strides: caffe ResNet v1 (PSPNet-50) puts it on the 1x1
    # reduce, the official PSPNet-101 models on the 3x3 (their prototxts; the authors' TF
    # code strides the 1x1 for both, so its ResNet-101 features differ from caffe's).
    stride_on: str = "1x1"

    def feature_net(self, stem="deep", backbone=backbones.DEFAULT):
        """`FeatureNet` keyword arguments: the named backbone sized by this preset."""
        return dict(
            backbone=backbones.config_of(backbone, self, stem), ppm_channels=self.ppm_channels
        )


PRESETS = {
    "resnet50": Preset((3, 4, 6, 3), 64, (64, 64, 128), 512, 512, 256, 64),
    "resnet101": Preset((3, 4, 23, 3), 64, (64, 64, 128), 512, 512, 256, 64, "3x3"),
    "small": Preset((2, 2, 2, 2), 16, (16, 16, 32), 64, 64, 32, 16),
    "tiny": Preset((1, 1, 1, 1), 8, (8, 8, 16), 16, 32, 16, 16),
}

def build_pspnet(num_classes, preset, dropout=0.1, stem="deep", backbone=backbones.DEFAULT):
    """The stage-1 PSPNet of a preset."""
    preset = PRESETS[preset]
    return PSPNet(
        num_classes, feature_net=preset.feature_net(stem, backbone),
        head_channels=preset.channels,
        dropout=dropout, name="pspnet",
    )


def build_ciss_net(num_classes, preset, context_mode="learned", dropout=0.1, stem="deep",
                   context_encoder_norm="group", random_keep_rate=None,
                   backbone=backbones.DEFAULT):
    """The stage-2 CiSS-Net of a preset."""
    preset = PRESETS[preset]
    return CissNet(
        num_classes, feature_net=preset.feature_net(stem, backbone), channels=preset.channels,
        bias_branch_channels=preset.bias_branch_channels,
        context_branch_channels=preset.context_branch_channels, dropout=dropout,
        context_mode=context_mode, context_encoder_norm=context_encoder_norm,
        random_keep_rate=random_keep_rate, name="ciss_net",
    )


STAGES = ("pspnet", "ciss")
CONTEXT_ENCODER_NORMS = ("group", "batch", "batch_per_replica")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network of a run: the stage-1 PSPNet or the stage-2 CiSS-Net of a preset.

    Attributes:
      stage: "pspnet" (stage 1) or "ciss" (stage 2).
      preset: a key of `PRESETS`.
      context_mode: CiSS-Net's gate (`model.CONTEXT_MODES`).
      random_keep_rate: keep rate of `context_mode="random"`, in (0, 1].
      stem: the dilated ResNet's stem (`backbone.STEMS`).
      context_encoder_norm: the Context Net's p-map pyramid branches: "group", "batch"
        (synchronized) or "batch_per_replica" (`layers.make_norm`).
      dropout: dropout rate of the heads.
      backbone: the feature net's backbone, a name of `backbones.names()` (the dilated
        ResNet unless a test or an extension registers another).
    """

    stage: str = "ciss"
    preset: str = "resnet50"
    context_mode: str = "learned"
    random_keep_rate: float | None = None
    stem: str = "deep"
    context_encoder_norm: str = "group"
    dropout: float = 0.1
    backbone: str = backbones.DEFAULT

    def __post_init__(self):
        choices = {"stage": STAGES, "preset": tuple(PRESETS), "context_mode": CONTEXT_MODES,
                   "stem": tuple(STEMS), "context_encoder_norm": CONTEXT_ENCODER_NORMS,
                   "backbone": backbones.names()}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name}={getattr(self, name)}: not one of {allowed}")
        rate = self.random_keep_rate
        if self.context_mode == "random" and not (rate is not None and 0 < rate <= 1):
            raise ValueError(
                f"--random_keep_rate={rate}: --context_mode=random needs it in (0, 1]"
            )


def build_model(cfg, num_classes, image_size=(32, 32)):
    """The model of `cfg` with every variable created (`create_variables`)."""
    if cfg.stage == "pspnet":
        model = build_pspnet(num_classes, cfg.preset, cfg.dropout, cfg.stem, cfg.backbone)
    else:
        model = build_ciss_net(
            num_classes, cfg.preset, cfg.context_mode, cfg.dropout, cfg.stem,
            cfg.context_encoder_norm, cfg.random_keep_rate, cfg.backbone,
        )
    return create_variables(model, image_size)


def create_variables(model, image_size=(32, 32)):
    """`model` (a `PSPNet` or `CissNet`) after one call on zeros of `image_size`.

    CiSS-Net runs one step, so the Bias Net and the Context Net exist even for a run that
    trains none (T = 0) and a checkpoint restores into every variable.
    """
    steps = {"num_steps": 1} if isinstance(model, CissNet) else {}
    model(tf.zeros((1, *image_size, 3)), training=False, **steps)
    return model
