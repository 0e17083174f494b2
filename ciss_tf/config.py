"""Model presets and the flags that choose them, shared by every tool.

A preset fixes the shape of the network; the dataset fixes the number of classes. The
paper presets match SPEC.md: dilated ResNet-50 (ADE20K, Pascal Context) or ResNet-101
(Cityscapes), PPM of 4 x 512 channels, Base/Bias/Context Nets 512 wide, pyramid branches of
256 (context-map encoder) and 64 (p-map encoder). `tiny` keeps the same architecture with a
few narrow blocks so that it trains on a CPU in minutes; `small` (1.5M parameters) is
sized to train from scratch on CamVid on a CPU in about an hour.
"""

import dataclasses

from absl import flags

from ciss_tf.backbone import STEMS
from ciss_tf.model import CONTEXT_MODES, CissNet
from ciss_tf.pspnet import PSPNet


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

    def feature_net(self, stem="deep"):
        """`FeatureNet` keyword arguments, with the given backbone stem."""
        return dict(
            depths=self.depths, width=self.width, stem_widths=self.stem_widths,
            ppm_channels=self.ppm_channels, stem=stem, stride_on=self.stride_on,
        )


PRESETS = {
    "resnet50": Preset((3, 4, 6, 3), 64, (64, 64, 128), 512, 512, 256, 64),
    "resnet101": Preset((3, 4, 23, 3), 64, (64, 64, 128), 512, 512, 256, 64, "3x3"),
    "small": Preset((2, 2, 2, 2), 16, (16, 16, 32), 64, 64, 32, 16),
    "tiny": Preset((1, 1, 1, 1), 8, (8, 8, 16), 16, 32, 16, 16),
}

flags.DEFINE_enum("preset", "resnet50", list(PRESETS), "Network size (see ciss_tf/config.py).")
flags.DEFINE_enum(
    "context_mode", "learned", list(CONTEXT_MODES),
    "learned: CiSS-Net; pmap: every action 1 (Baseline + p-map); none: all-uncertain context "
    "(capacity-matched control); random: every action Bernoulli(--random_keep_rate), in "
    "training and evaluation (a gate that keeps context without choosing where).",
)
flags.DEFINE_float(
    "random_keep_rate", None,
    "--context_mode=random: share of pixels kept as context, in (0, 1] (e.g. the share "
    "CiSS-Net's sampled gate keeps at the end of its training).",
)
flags.DEFINE_enum(
    "stem", "deep", list(STEMS),
    "Backbone stem: deep (three 3x3 convs, PSPNet, SPEC.md) or resnet (one 7x7 conv, needed "
    "to start from Keras ImageNet ResNet weights). Both stages must use the same stem.",
)
flags.DEFINE_enum(
    "context_encoder_norm", "group", ["group", "batch"],
    "Normalisation of the Context Net's p-map pyramid branches: group (the paper: GroupNorm "
    "in every head layer) or batch (the authors' code). A checkpoint is read with the value "
    "it was trained with.",
)
flags.DEFINE_float("dropout", 0.1, "Dropout rate of the heads.")
flags.DEFINE_string(
    "dataset", "synthetic",
    "Dataset name (cityscapes, ade20k, pascal_context, camvid, synthetic): sets the classes, "
    "their names and palette.",
)
flags.DEFINE_string("data_dir", None, "Folder of TFRecord shards written by data_prep.")


def build_pspnet(num_classes, preset, dropout=0.1, stem="deep"):
    """The stage-1 PSPNet of a preset."""
    preset = PRESETS[preset]
    return PSPNet(
        num_classes, feature_net=preset.feature_net(stem), head_channels=preset.channels,
        dropout=dropout, name="pspnet",
    )


def build_ciss_net(num_classes, preset, context_mode="learned", dropout=0.1, stem="deep",
                   context_encoder_norm="group", random_keep_rate=None):
    """The stage-2 CiSS-Net of a preset."""
    preset = PRESETS[preset]
    return CissNet(
        num_classes, feature_net=preset.feature_net(stem), channels=preset.channels,
        bias_branch_channels=preset.bias_branch_channels,
        context_branch_channels=preset.context_branch_channels, dropout=dropout,
        context_mode=context_mode, context_encoder_norm=context_encoder_norm,
        random_keep_rate=random_keep_rate, name="ciss_net",
    )


def model_from_flags(num_classes, stage="ciss"):
    """The model the command-line flags describe (`stage` is "pspnet" or "ciss").

    Raises:
      ValueError: `--context_mode=random` without a `--random_keep_rate` in (0, 1].
    """
    flag_values = flags.FLAGS
    if stage == "pspnet":
        return build_pspnet(
            num_classes, flag_values.preset, flag_values.dropout, flag_values.stem
        )
    rate = flag_values.random_keep_rate
    if flag_values.context_mode == "random" and not (rate is not None and 0 < rate <= 1):
        raise ValueError(f"--random_keep_rate={rate}: --context_mode=random needs it in (0, 1]")
    return build_ciss_net(
        num_classes, flag_values.preset, flag_values.context_mode, flag_values.dropout,
        flag_values.stem, flag_values.context_encoder_norm, rate,
    )
