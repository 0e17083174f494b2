r"""The official PSPNet weights (Caffe) as a stage-1 PSPNet (`ciss_tf.convert.import_pspnet`).

The paper's feature nets are the official PSPNet models (PSPNet-50 on ADE20K, PSPNet-101 on
Cityscapes), released as Caffe models. `--weights` is either the `.caffemodel` itself, read
by `ciss_tf.convert.caffe` (no Caffe needed), or the NumPy dict the original code loads (a
pickle: only load files you trust); the file's content tells which. The model is the PSPNet
the flags describe (`--preset`, `--dataset`, `--stem` must be `deep`); the written
checkpoint (the prefix `--output`) is what stage 1 writes, so stage 2 takes it as
`--init_checkpoint`. Every variable but the auxiliary res4 head must be found with its exact
shape, or nothing is written.

The layer mapping, the conversions, what is checked and how Caffe's PSPNet differs from our
backbone: docs/pspnet_weights.md.
"""

import dataclasses
import os
import pickle
import re

import numpy as np
import tensorflow as tf

from ciss_tf.convert import caffe, imagenet
from ciss_tf.modeling import backbones, checkpoints
from ciss_tf.modeling.backbone import DilatedResNet
from ciss_tf.modeling.layers import ConvWeights

BN_EPSILON = 1e-5
# Names of a batch norm's four tensors in the NumPy dict, in Caffe's blob order.
BN_PARAMS = ("scale", "offset", "mean", "variance")
_NUMPY_MAGIC = b"\x93NUMPY"
_BUILD_SIZE = 33
_MAX_LISTED_PROBLEMS = 5
# The official PSPNet-101 models (Cityscapes, VOC 2012) stride res3 on its 3x3 conv,
# PSPNet-50 (ADE20K) on its first 1x1 conv; a NumPy dict does not say.
OFFICIAL_STRIDE_ON = {(3, 4, 23, 3): "3x3"}
_STRIDED_CONV = {"1x1": "1x1_reduce", "3x3": "3x3"}
_BLOCK_LAYER = re.compile(r"conv([2-5])_(\d+)_(1x1_reduce|3x3|1x1_increase|1x1_proj)")


@dataclasses.dataclass
class ImportReport:
    """What an import did.

    Attributes:
      mapped: `(source tensor, model variable, shape)` for every tensor copied, e.g.
        `("conv1_1_3x3_s2/weights", "feature_net/backbone/conv1_1_3x3/conv/kernel", (3, 3, 3, 64))`.
      skipped: source tensors that the model does not use, e.g. `"conv4_24/weights"`.
      kept: model variables left at their initialisation (the auxiliary head).
    """

    mapped: list[tuple[str, str, tuple[int, ...]]] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)

    def lines(self):
        """One line per tensor, then a summary line."""
        return (
            [f"mapped   {src} {shape} -> {dst}" for src, dst, shape in self.mapped]
            + [f"skipped  {src} (not part of this PSPNet)" for src in self.skipped]
            + [f"kept     {dst} (no counterpart in the official models: initial value)"
               for dst in self.kept]
            + [f"{len(self.mapped)} tensors mapped, {len(self.skipped)} skipped, "
               f"{len(self.kept)} variables kept at initialisation"]
        )


def read_weights(path):
    """Reads official PSPNet weights in the NumPy dict's layout.

    Args:
      path: a `.caffemodel` or a `.npy` NumPy dict (told apart by content).

    Returns:
      `(weights, stride_on)`. `weights` is `{layer: {name: array}}`, layer names with `/`
      written `_`; conv `weights` `[kh, kw, in, out]`, optional `biases`; batch norms
      `scale`, `offset`, `mean`, `variance` (vectors, from a `.caffemodel` in Caffe's
      `(1, C, 1, 1)` as the original converter left them). `stride_on` is the conv of
      res3's first block that strides ("1x1" or "3x3") as the `.caffemodel` records it,
      None for a NumPy dict (which records no strides).

    Raises:
      ValueError: naming `path`, if it is missing or in neither format.
    """
    if not os.path.isfile(path):
        raise ValueError(f"weights file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(len(_NUMPY_MAGIC))
    if magic == _NUMPY_MAGIC:
        return _read_numpy_dict(path), None
    try:
        layers = caffe.read_caffemodel(path)
    except ValueError as error:
        raise ValueError(f"{error} (nor is it a NumPy .npy file)") from None
    if not any(layer.blobs for layer in layers):
        raise ValueError(f"{path}: no layer with weights (neither a .caffemodel nor a .npy dict)")
    return caffe_to_numpy_dict(layers, path), res3_stride_on(layers, path)


def res3_stride_on(layers, source="caffemodel"):
    """Which conv of `conv3_1` strides in Caffe layers: "1x1", "3x3", or None if not recorded.

    Raises:
      ValueError: naming `source`, if the strides are neither PSPNet-50's (2 on
        `conv3_1_1x1_reduce`) nor PSPNet-101's (2 on `conv3_1_3x3`).
    """
    strides = {layer.name: layer.stride for layer in layers}
    reduce_stride = strides.get("conv3_1_1x1_reduce")
    conv3x3_stride = strides.get("conv3_1_3x3")
    if reduce_stride is None or conv3x3_stride is None:
        return None
    for stride_on, pattern in (("1x1", (2, 1)), ("3x3", (1, 2))):
        if (reduce_stride, conv3x3_stride) == pattern:
            return stride_on
    raise ValueError(
        f"{source}: conv3_1_1x1_reduce has stride {reduce_stride} and conv3_1_3x3 stride "
        f"{conv3x3_stride}; expected one of them to stride by 2"
    )


def caffe_to_numpy_dict(layers, source="caffemodel"):
    """Caffe layers (`caffe.read_caffemodel`) in the NumPy dict's layout.

    `BN` layers become `{scale, offset, mean, variance}` vectors, `Convolution` layers
    `{weights: [kh, kw, in, out], biases}`; layers of other types that carry blobs are kept
    as `{blob0, blob1, ...}` so that the import reports them as skipped.

    Raises:
      ValueError: naming `source`, for a BN layer without four blobs or with an epsilon
        other than 1e-5, a convolution whose weights are not 4-D, or a repeated name.
    """
    weights = {}
    for layer in layers:
        if not layer.blobs:
            continue
        name = layer.name.replace("/", "_")
        blobs = layer.blobs
        if layer.type == "BN":
            if len(blobs) != 4:
                raise ValueError(
                    f"{source}: BN layer {layer.name} has {len(blobs)} blobs; expected 4 "
                    "(scale, shift, mean, variance)"
                )
            if not np.isclose(layer.bn_eps, BN_EPSILON, rtol=1e-4, atol=0.0):
                raise ValueError(
                    f"{source}: BN layer {layer.name} has eps {layer.bn_eps:g}; our batch norm "
                    f"uses {BN_EPSILON:g}"
                )
            entry = dict(zip(BN_PARAMS, blobs, strict=True))
        elif layer.type == "Convolution":
            if blobs[0].ndim != 4 or len(blobs) > 2:
                raise ValueError(
                    f"{source}: convolution {layer.name} has blobs of shapes "
                    f"{[b.shape for b in blobs]}; expected [out, in, kh, kw] and a bias"
                )
            entry = {"weights": blobs[0].transpose(2, 3, 1, 0)}
            if len(blobs) == 2:
                entry["biases"] = blobs[1]
        else:
            entry = {f"blob{i}": blob for i, blob in enumerate(blobs)}
        if name in weights:
            raise ValueError(f"{source}: two layers with weights are named {name!r}")
        weights[name] = entry
    return weights


def _read_numpy_dict(path):
    try:
        # latin1 reads the Python 2 pickles of the original converter.
        loaded = np.load(path, allow_pickle=True, encoding="latin1")
    except (OSError, ValueError, EOFError, ImportError, AttributeError,
            pickle.UnpicklingError) as error:  # what unpickling a foreign file may raise
        raise ValueError(f"{path}: cannot read the NumPy file: {error}") from None
    table = loaded.item() if loaded.dtype == object and loaded.shape == () else None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(
            f"{path}: expected np.save of a dict {{layer: {{name: array}}}}, found "
            f"{type(table if table is not None else loaded).__name__}"
        )
    return {
        _text(layer).replace("/", "_"): {_text(k): v for k, v in params.items()}
        for layer, params in table.items()
    }


def _text(key):
    return key.decode("latin1") if isinstance(key, bytes) else str(key)


@dataclasses.dataclass(frozen=True)
class _Unit:
    """A source conv (`source`; its batch norm is `source + "_bn"`) and our variables."""

    source: str
    weights: ConvWeights


def _units(model):
    """Every conv of the PSPNet that takes official weights, with its Caffe name."""
    backbone = model.feature_net.backbone
    pyramid = model.feature_net.ppm
    # The backbone's paths are Caffe's names with "/" for "_", but for the stem's strided
    # first conv, which Caffe names `conv1_1_3x3_s2`.
    units = [
        _Unit(f"{name}_s2" if i == 0 else name.replace("/", "_"), unit.conv_weights())
        for i, (name, unit) in enumerate(backbone.named_units())
    ]
    last_block = f"conv5_{backbone.depths[-1]}"
    units += [
        _Unit(f"{last_block}_pool{bins}_conv", weights)
        for bins, weights in zip(pyramid.bins, pyramid.branch_weights(), strict=True)
    ]
    head_conv, classifier = model.head.conv_weights()
    return units + [_Unit("conv5_4", head_conv), _Unit("conv6", classifier)]


def source_depths(weights):
    """Blocks per stage (res2..res5) in the weights: the largest `b` of `conv{s}_{b}_*`."""
    depths = [0, 0, 0, 0]
    for layer in weights:
        match = _BLOCK_LAYER.match(layer)
        if match:
            stage, block = int(match[1]) - 2, int(match[2])
            depths[stage] = max(depths[stage], block)
    return tuple(depths)


def import_weights(model, weights, source="weights", stride_on=None):
    """Copies official PSPNet weights onto a deep-stem `PSPNet`.

    Everything is checked before anything is assigned.

    Args:
      model: a `pspnet.PSPNet` (`config.build_pspnet`), built here if needed.
      weights: `{layer: {name: array}}` (`read_weights`).
      source: the file name used in error messages.
      stride_on: the strided conv of res3 in the source ("1x1" or "3x3"); None (a NumPy
        dict) assumes the official models' (`OFFICIAL_STRIDE_ON`).

    Returns:
      An `ImportReport`.

    Raises:
      ValueError: naming `source`: the backbone has the 7x7 stem, the stage depths or the
        strided conv of res3 differ from the model's, or tensors are missing, mis-shaped,
        non-finite or (variances) negative; the message names them.
    """
    backbone = model.feature_net.backbone
    if not isinstance(backbone, DilatedResNet):
        raise ValueError(
            f"{source}: PSPNet weights fit the dilated_resnet backbone, not "
            f"{backbones.name_of(backbone) or type(backbone).__name__}"
        )
    if backbone.stem_type != "deep":
        raise ValueError(
            f"{source}: PSPNet weights need the deep stem (--stem=deep); the model has "
            f"stem={backbone.stem_type!r}"
        )
    depths = source_depths(weights)
    if depths != backbone.depths:
        raise ValueError(
            f"{source}: holds {depths} blocks in res2..res5, the model (--preset) has "
            f"{backbone.depths} (ResNet-50: (3, 4, 6, 3), ResNet-101: (3, 4, 23, 3))"
        )
    expected = stride_on or OFFICIAL_STRIDE_ON.get(depths, "1x1")
    if backbone.stride_on != expected:
        origin = "as the .caffemodel records" if stride_on else "as in the official models"
        raise ValueError(
            f"{source}: res3 strides on conv3_1_{_STRIDED_CONV[expected]} ({origin}) but on "
            f"conv3_1_{_STRIDED_CONV[backbone.stride_on]} in the model (FeatureNet stride_on="
            f"{backbone.stride_on!r}): the imported net would compute other features"
        )
    if not model.built:
        model(tf.zeros([1, _BUILD_SIZE, _BUILD_SIZE, 3]))
    assignments, problems = _plan(_units(model), weights)
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED_PROBLEMS])
        more = len(problems) - _MAX_LISTED_PROBLEMS
        raise ValueError(
            f"{source}: {len(problems)} tensor(s) missing or mis-shaped: {listed}"
            + (f"; and {more} more" if more > 0 else "")
        )
    paths = {id(v): path for path, v in checkpoints.model_variables(model).items()}
    report = ImportReport()
    used = set()
    for sources, variable, value in assignments:
        variable.assign(value)
        used.update(sources)
        report.mapped.append((" + ".join(sources), paths[id(variable)], tuple(value.shape)))
    report.skipped = [
        f"{layer}/{name}" for layer, params in weights.items() for name in params
        if f"{layer}/{name}" not in used
    ]
    assigned = {id(variable) for _, variable, _ in assignments}
    report.kept = [
        path for path, v in checkpoints.model_variables(model).items()
        if id(v) not in assigned and not path.endswith("seed_state")
    ]
    return report


def _plan(units, weights):
    """`([(source tensors, variable, float32 value)], [problem])` for all units."""
    assignments, problems = [], []

    def fetch(layer, name, shape, vector=False):
        entry = weights.get(layer)
        if entry is None:
            if f"{layer} missing" not in problems:  # once per layer, not per tensor
                problems.append(f"{layer} missing")
            return None
        if name not in entry:
            problems.append(f"{layer}/{name} missing (it has {', '.join(sorted(entry))})")
            return None
        try:
            value = np.asarray(entry[name], np.float32)
        except (TypeError, ValueError):
            problems.append(f"{layer}/{name} is not numeric")
            return None
        # Caffe stores vectors as (1, C, 1, 1) or, in legacy blobs, (1, 1, 1, C).
        if vector and value.size == shape[0] and max(value.shape, default=0) == value.size:
            value = value.reshape(shape)
        if value.shape != tuple(shape):
            problems.append(
                f"{layer}/{name} has shape {value.shape}, the model needs {tuple(shape)}"
            )
            return None
        if not np.all(np.isfinite(value)):
            problems.append(f"{layer}/{name} has non-finite values")
            return None
        return value

    for unit in units:
        target = unit.weights
        kernel = fetch(unit.source, "weights", target.kernel.shape)
        if kernel is not None:
            assignments.append(([f"{unit.source}/weights"], target.kernel, kernel))
        channels = (target.kernel.shape[-1],)
        has_bias = "biases" in weights.get(unit.source, {})
        bias = fetch(unit.source, "biases", channels, vector=True) if (
            has_bias or target.bias is not None) else None
        if target.norm is None:
            if bias is not None:
                assignments.append(([f"{unit.source}/biases"], target.bias, bias))
            continue
        norm_layer = f"{unit.source}_bn"
        for name, variable in zip(BN_PARAMS, target.norm, strict=True):
            value = fetch(norm_layer, name, channels, vector=True)
            if value is None:
                continue
            sources = [f"{norm_layer}/{name}"]
            if name == "mean" and bias is not None:
                value = imagenet.fold_conv_bias(value, bias)
                sources.append(f"{unit.source}/biases")
            if name == "variance" and np.any(value < 0):
                problems.append(
                    f"{norm_layer}/variance has negative values (blobs not in the order "
                    "scale, shift, mean, variance?)"
                )
            assignments.append((sources, variable, value))
    return assignments, problems
