"""Exact inference-time rewrites of a trained CiSS-Net: same greedy outputs, fewer FLOPs.

`FastCissNet(model)` reads the weights of a trained `CissNet` and runs the unrolled greedy
inference of SPEC.md section 2 with these rewrites, each an algebraic identity (results
differ from the plain model by float32 rounding only; the tests bound it). It reaches the
model's layers only through their public hooks (`ConvBN.folded`, `Bottleneck.units`,
`DilatedResNet.blocks`, `PyramidPooling.project`, `ContextTrunk.feature_kernel`, ...).

1. **Batch norm folded** (`layers.fold_batch_norm`). The frozen feature net's batch norms
   become a scale of the conv kernel and a bias:
   `bn(conv(x, W)) = conv(x, W * s) + (beta - mean * s)` with `s = gamma / sqrt(var + eps)`.
2. **X never materialised.** `X = [res5, up(p6), up(p3), up(p2), up(p1)]`: half of its 4096
   channels are bilinear upsamplings of tiny pooled maps (the PPM branches, 1x1 to 6x6).
   Every consumer of `X` is a 3x3 conv, and a conv of an upsampled map is an upsampling of
   per-tap projections: with `U` the (linear, per-channel) upsampling and `S_d` the shift of
   tap `d`, `conv3x3(U p, W) = sum_d S_d U (p W_d)`. The projections `p W_d` cost a few
   MFLOP on the pooled grid, the upsample-and-shift is two small matrix products
   (`conv3x3_of_upsampled`), so every first conv over `X` only convolves res5 (2048
   channels). The encoders' pyramid branches of the Bias Net (4 x 256 channels) and the
   Context Net (4 x 64) get the same treatment at every step.
3. **The X halves fused and cached.** The Base Net's 3x3 conv and the `X` halves of the Bias
   Net's and Context Net's first convs read the same input: one conv with 3 x 512 outputs,
   computed once per image (`t >= 1`; `t = 0` needs only the Base Net's third).
4. **Pyramid pooling as matrix products** (`pyramid_pool`): the same cells as
   `ppm.ceil_avg_pool`, ~15x faster than its integral image on the 60x60x2048 res5.
5. **Nothing that greedy inference does not use.** No dropout, no value head, no bootstrap.
6. **Winograd F(4x4, 3x3)** (`winograd=True`, float32, inputs of a static size): the wide
   stride-1 3x3 convs (at least `winograd_min_channels` inputs: res5's, the fused conv over
   res5, the trunks' inner convs) by `ciss_tf.serving.winograd`, 2.25 multiplications per output
   instead of 9. Rounding grows to ~1e-5 relative per conv (the tests bound it).

The GroupNorms run as in the model (GroupNorm depends on the data and cannot be folded), and
so do the encoders' pyramid branches (a few cells each, whatever their norm).
Use it through `tf.function`; the benchmark and the exporter do (the exporter without
Winograd: a served graph takes images of any size).
"""

import numpy as np
import tensorflow as tf

from ciss_tf.modeling import backbones, ops
from ciss_tf.modeling.backbone import DilatedResNet, stem_pool
from ciss_tf.modeling.ciss_net import context_actions, image_keys
from ciss_tf.serving.winograd import winograd_conv3x3, winograd_kernel


def shifted_interpolation(source_size, target_size):
    """The 1-D factors of `ops.resize_bilinear` shifted by each tap of a 3x3 SAME conv.

    Args:
      source_size: length of the pooled axis (int or scalar tensor).
      target_size: length after upsampling.

    Returns:
      float32 `[3, target_size, source_size]`: entry `[d, y, i]` is the weight of source
      cell `i` in the upsampled value at `y + d - 1`, or 0 where that falls outside (the
      conv's zero padding).
    """
    # Resizing the identity yields exactly the interpolation weights TF itself uses.
    identity = tf.eye(source_size, dtype=tf.float32)[tf.newaxis, :, tf.newaxis, :]
    weights = ops.resize_bilinear(identity, (target_size, 1))[0, :, 0, :]
    padded = tf.pad(weights, [[1, 1], [0, 0]])
    return tf.stack([padded[d : d + target_size] for d in range(3)])


def tap_major(kernel):
    """A 3x3 kernel `[3, 3, C, O]` laid out as `[C, 3, 3, O]` for `conv3x3_of_upsampled`."""
    return np.transpose(kernel, (2, 0, 1, 3))


def conv3x3_of_upsampled(pooled, kernel, size):
    """`conv3x3(ops.resize_bilinear(pooled, size), W)` (SAME, stride 1, no bias).

    The upsampled map is never built: the nine taps of `W` are applied on the pooled grid,
    then the result is upsampled and shifted by two separable matrix products. Written
    with `matmul` rather than `einsum` so that the graph's FLOP count sees it.

    Args:
      pooled: `[B, g_h, g_w, C]`.
      kernel: `tap_major(W)`, `[C, 3, 3, O]`.
      size: `(height, width)` of the upsampled map.

    Returns:
      `[B, height, width, O]`.
    """
    dtype = pooled.dtype
    channels, outputs = kernel.shape[0], kernel.shape[-1]
    batch, grid_h, grid_w = (tf.shape(pooled)[i] for i in range(3))
    height, width = size
    taps = tf.matmul(
        tf.reshape(pooled, [-1, channels]), tf.reshape(tf.cast(kernel, dtype), [channels, -1])
    )
    # [B, i, j, dy, dx, O] -> [B, i, dy, (dx, j), O]
    taps = tf.transpose(tf.reshape(taps, [batch, grid_h, grid_w, 3, 3, outputs]),
                        [0, 1, 3, 4, 2, 5])
    taps = tf.reshape(taps, [batch, grid_h, 3, 3 * grid_w, outputs])
    cols = _flat_taps(shifted_interpolation(grid_w, width), dtype)  # [W, (dx, j)]
    along_width = tf.matmul(cols, taps)  # [B, i, dy, W, O]
    along_width = tf.reshape(tf.transpose(along_width, [0, 2, 1, 3, 4]),
                             [batch, 3 * grid_h, -1])  # [B, (dy, i), (W, O)]
    rows = _flat_taps(shifted_interpolation(grid_h, height), dtype)  # [H, (dy, i)]
    return tf.reshape(tf.matmul(rows, along_width), [batch, height, width, outputs])


def _flat_taps(shifted, dtype):
    """`[3, n, g]` -> `[n, 3 * g]` with the tap as the slower index."""
    n = tf.shape(shifted)[1]
    return tf.cast(tf.reshape(tf.transpose(shifted, [1, 0, 2]), [n, -1]), dtype)


def _averaging_matrix(size, bins, dtype):
    """`[cells, size]`: row i averages positions [i k, (i + 1) k), k = ceil(size / bins)."""
    kernel = (size + bins - 1) // bins
    cells = size // kernel
    inside = tf.range(size)[tf.newaxis, :] // kernel == tf.range(cells)[:, tf.newaxis]
    return tf.cast(inside, dtype) / tf.cast(kernel, dtype)


def pyramid_pool(x, bins):
    """`[ppm.ceil_avg_pool(x, b) for b in bins]` as two matrix products per map.

    Same cells (kernel = stride = ceil(size / bins), no padding), any static or dynamic
    size, but ~15x faster than the integral image on a 60x60x2048 map: the height
    averages of every bin come from one product, then each bin averages its width.

    Args:
      x: `[B, H, W, C]`.
      bins: grid sizes.

    Returns:
      A list of `[B, cells_h, cells_w, C]`, one per bin.
    """
    height, width = ops.spatial_size(x)
    channels = x.shape[-1]
    rows = [_averaging_matrix(height, b, x.dtype) for b in bins]
    stacked = tf.matmul(tf.concat(rows, 0), tf.reshape(x, [tf.shape(x)[0], height, -1]))
    stacked = tf.reshape(stacked, [tf.shape(x)[0], -1, width, channels])
    pooled, start = [], 0
    for b, row in zip(bins, rows, strict=True):
        count = tf.shape(row)[0]
        pooled.append(tf.matmul(_averaging_matrix(width, b, x.dtype),
                                stacked[:, start : start + count]))
        start += count
    return pooled


class _SameConv(tf.Module):
    """A stride-1 SAME conv; by Winograd if `winograd_min_channels` admits it (3x3 only)."""

    def __init__(self, kernel, dtype, dilation=1, winograd_min_channels=None):
        super().__init__()
        self.dilation = dilation
        self.winograd = (winograd_min_channels is not None and kernel.shape[:2] == (3, 3)
                         and kernel.shape[2] >= winograd_min_channels)
        if self.winograd:
            self.kernels = _constants(winograd_kernel(kernel), dtype)
        else:
            self.kernel = tf.Variable(kernel, dtype=dtype, trainable=False)

    def __call__(self, x):
        if self.winograd:
            return winograd_conv3x3(x, self.kernels, self.dilation)
        return tf.nn.conv2d(x, self.kernel, 1, "SAME", dilations=self.dilation)


class _FoldedConv(tf.Module):
    """A `ConvBN` folded: `relu?(conv(x) + bias)`, explicit symmetric pad."""

    def __init__(self, conv_bn, dtype, winograd_min_channels=None):
        super().__init__()
        kernel, bias = conv_bn.folded()
        self.bias = tf.Variable(bias, dtype=dtype, trainable=False)
        self.stride = conv_bn.stride
        self.relu = conv_bn.relu
        if self.stride == 1:
            # Stride 1, odd kernel, pad = dilation * (k - 1) / 2: SAME pads exactly so.
            self.conv = _SameConv(kernel, dtype, conv_bn.dilation, winograd_min_channels)
        else:
            self.kernel = tf.Variable(kernel, dtype=dtype, trainable=False)
            pad = conv_bn.pad
            self.padding = [[0, 0], [pad, pad], [pad, pad], [0, 0]] if pad else "VALID"

    def __call__(self, x):
        if self.stride == 1:
            y = self.conv(x)
        else:
            y = tf.nn.conv2d(x, self.kernel, self.stride, self.padding)
        y = tf.nn.bias_add(y, self.bias)
        return tf.nn.relu(y) if self.relu else y


class _FoldedBottleneck(tf.Module):
    def __init__(self, block, dtype, winograd_min_channels):
        super().__init__()
        reduce, conv3x3, increase = block.units()
        self.reduce = _FoldedConv(reduce, dtype)
        self.conv3x3 = _FoldedConv(conv3x3, dtype, winograd_min_channels)
        self.increase = _FoldedConv(increase, dtype)
        self.proj = None if block.projection is None else _FoldedConv(block.projection, dtype)

    def __call__(self, x):
        shortcut = x if self.proj is None else self.proj(x)
        return tf.nn.relu(self.increase(self.conv3x3(self.reduce(x))) + shortcut)


def _pointwise_relu(x, kernel, bias):
    """`relu(conv1x1(x) + bias)` on a small pooled map."""
    return tf.nn.relu(tf.nn.bias_add(tf.matmul(x, kernel), bias))


def _constants(arrays, dtype):
    """Frozen copies of NumPy weights as (non-trainable) variables of `dtype`."""
    return [tf.Variable(a, dtype=dtype, trainable=False) for a in arrays]


def _split_rows(kernel, sizes):
    """Splits a kernel's input channels into consecutive blocks of `sizes`."""
    blocks, start = [], 0
    for size in sizes:
        blocks.append(kernel[:, :, start : start + size])
        start += size
    return blocks


def supports(model):
    """Whether `FastCissNet` can rewrite `model` (it reads the dilated ResNet's hooks)."""
    return isinstance(model.feature_net.backbone, DilatedResNet)


class FastCissNet(tf.Module):
    """Greedy CiSS-Net inference from a trained `CissNet`, rewritten for speed (see module).

    Weights are copied (folded) at construction: rebuild it after the model changes. The
    GroupNorm layers and the trunks' inner convs are the model's own objects.

    Args:
      model: a built `CissNet` (any `context_mode`).
      winograd: run the 3x3 convs with at least `winograd_min_channels` inputs by
        Winograd F(4x4, 3x3) (rewrite 6). Float32 only; the graph then needs images of a
        static size.
      winograd_min_channels: below it the direct conv wins on a CPU (measured: at 256
        inputs they tie, at 512 Winograd is about 2x faster).

    Example:
      >>> fast = FastCissNet(model)
      >>> outputs = tf.function(fast)(images, num_steps=2)
      >>> outputs["logits"].shape  # [T + 1, B, h, w, Nc], as model(images)["logits"]
    """

    def __init__(self, model, winograd=False, winograd_min_channels=512):
        super().__init__(name="fast_ciss_net")
        if not supports(model):
            backbone = model.feature_net.backbone
            raise ValueError(
                "the fast inference path rewrites the dilated_resnet backbone only, not "
                f"{backbones.name_of(backbone) or type(backbone).__name__}"
            )
        dtype = tf.as_dtype(model.compute_dtype)
        if winograd and dtype != tf.float32:
            raise ValueError(f"Winograd convs need float32, the model computes in {dtype.name}")
        wide = winograd_min_channels if winograd else None
        self.dtype = dtype
        self.context_mode = model.context_mode
        self.random_keep_rate = model.random_keep_rate
        feature_net = model.feature_net
        backbone = feature_net.backbone
        self.stem = [_FoldedConv(unit, dtype) for unit in backbone.stem_units()]
        self.blocks = [_FoldedBottleneck(b, dtype, wide) for b in backbone.blocks()]
        self.bins = feature_net.bins
        self.ppm = [
            (tf.Variable(kernel[0, 0], dtype=dtype, trainable=False),
             tf.Variable(bias, dtype=dtype, trainable=False))
            for kernel, bias in feature_net.ppm.folded_branches()
        ]
        res5_channels = backbone.output_channels[1]
        ppm_sizes = [feature_net.ppm_channels] * len(self.bins)
        # Kernels over X, output blocks [base | bias trunk | context trunk], input blocks
        # [res5 | ppm6 | ppm3 | ppm2 | ppm1] (the order of X).
        base_conv, _ = model.base_net.conv_weights()
        x_kernels = [base_conv.kernel.numpy()]
        self.trunks = [model.bias_net.trunk]
        if model.context_net is not None:
            self.trunks.append(model.context_net.trunk)
        x_kernels += [trunk.feature_kernel().numpy() for trunk in self.trunks]
        fused = np.concatenate(x_kernels, axis=-1)
        res5_kernel, *branch_kernels = _split_rows(fused, [res5_channels, *ppm_sizes])
        channels = model.base_net.channels
        # X's branches are in the order bins[::-1]; kept in the order of `self.bins`. The
        # Base Net's block is also kept alone: t = 0 needs nothing else.
        branch_kernels = [tap_major(k) for k in branch_kernels[::-1]]
        self.base_x_kernels = [
            _SameConv(res5_kernel[..., :channels], dtype, winograd_min_channels=wide),
            *_constants([k[..., :channels] for k in branch_kernels], dtype),
        ]
        self.fused_x_kernels = [_SameConv(res5_kernel, dtype, winograd_min_channels=wide),
                                *_constants(branch_kernels, dtype)]
        # The trunks' inner convs: the model's own layers unless Winograd replaces them.
        self.trunk_convs = [
            [_SameConv(kernel.numpy(), dtype, winograd_min_channels=wide)
             for kernel in trunk.inner_kernels()] if winograd else None
            for trunk in self.trunks
        ]
        self.base_net = model.base_net
        self.bias_net = model.bias_net
        self.bias_e_kernels = self._encoder_kernels(self.bias_net, dtype)
        self.context_net = model.context_net
        if self.context_net is not None:
            self.context_e_kernels = self._encoder_kernels(self.context_net, dtype)

    @staticmethod
    def _encoder_kernels(net, dtype):
        """The E half of a trunk's first kernel: (map kernel, branch kernels in bins order)."""
        e_kernel = net.trunk.encoded_kernel().numpy()
        # E = [map, encoder branches]: the map has the channels the branches leave.
        encoder = net.encoder
        branch_sizes = [encoder.channels] * len(encoder.bins)
        map_kernel, *branches = _split_rows(
            e_kernel, [e_kernel.shape[2] - sum(branch_sizes), *branch_sizes]
        )
        return (tf.Variable(map_kernel, dtype=dtype, trainable=False),
                _constants([tap_major(k) for k in branches[::-1]], dtype))

    def res5_and_pyramid(self, images):
        """The feature net with batch norm folded: res5 and the PPM's pooled branches."""
        x = tf.cast(images, self.dtype)
        for conv in self.stem:
            x = conv(x)
        x = stem_pool(x)
        for block in self.blocks:
            x = block(x)
        pooled = [
            _pointwise_relu(cells, kernel, bias)
            for cells, (kernel, bias) in zip(pyramid_pool(x, self.bins), self.ppm, strict=True)
        ]
        return x, pooled

    @staticmethod
    def _conv_x(res5, pooled, kernels):
        """`conv3x3(X)` from res5 and the pooled PPM branches, kernels split as X is."""
        res5_conv, *branch_kernels = kernels
        y = res5_conv(res5)
        size = ops.spatial_size(res5)
        for branch, kernel in zip(pooled, branch_kernels, strict=True):
            y += conv3x3_of_upsampled(branch, kernel, size)
        return y

    def _encoded_conv(self, kernels, encoded_map, branches):
        """The E half of a trunk's first conv: the map itself plus its pyramid branches."""
        map_kernel, branch_kernels = kernels
        y = tf.nn.conv2d(encoded_map, map_kernel, 1, "SAME")
        size = ops.spatial_size(encoded_map)
        for branch, kernel in zip(branches, branch_kernels, strict=True):
            y += conv3x3_of_upsampled(branch, kernel, size)
        return y

    @staticmethod
    def _branches(net, encoded_map):
        """The pyramid branches of a net's encoder (its own layers, inference mode)."""
        encoder = net.encoder
        return encoder.project(pyramid_pool(encoded_map, encoder.bins), training=False)

    def _bias_logits(self, projected, context_map):
        net = self.bias_net
        onehot = net.one_hot(context_map, self.dtype)
        branches = self._branches(net, onehot)
        c1 = projected + self._encoded_conv(self.bias_e_kernels, onehot, branches)
        return net.classifier(net.trunk.from_first_conv(c1, convs=self.trunk_convs[0]))

    def _policy_logits(self, projected, logits):
        """The Context Net's policy logits (float32) for the p-map of `logits`."""
        probabilities = tf.cast(tf.nn.softmax(tf.cast(logits, tf.float32)), self.dtype)
        branches = self._branches(self.context_net, probabilities)
        c1 = projected + self._encoded_conv(self.context_e_kernels, probabilities, branches)
        z = self.context_net.trunk.from_first_conv(c1, convs=self.trunk_convs[1])
        return self.context_net.policy_logits(z)

    def __call__(self, images, num_steps=2):
        """Greedy unrolled inference, as `CissNet(images, training=False)`.

        Args:
          images: normalised images `[B, H, W, 3]`.
          num_steps: T (Python int).

        Returns:
          `{"logits": [T + 1, B, h, w, Nc], "context": int32 [T, B, h, w]}`.
        """
        res5, pooled = self.res5_and_pyramid(images)
        channels = self.base_net.channels
        if num_steps == 0:
            base_x = self._conv_x(res5, pooled, self.base_x_kernels)
        else:
            fused = self._conv_x(res5, pooled, self.fused_x_kernels)
            base_x = fused[..., :channels]
            bias_x = fused[..., channels : 2 * channels]
            context_x = fused[..., 2 * channels :]
        base_logits = self.base_net.from_conv(base_x)
        gate_ids = image_keys(images) if self.context_mode == "random" else None
        logits, contexts = [base_logits], []
        for t in range(num_steps):
            prediction = tf.argmax(logits[-1], axis=-1, output_type=tf.int32)
            policy_logits = (self._policy_logits(context_x, logits[-1])
                             if self.context_mode == "learned" else None)
            # Greedy; the random gate's evaluation draw (keyed by the image, as CissNet's).
            action = context_actions(self.context_mode, prediction, t,
                                     policy_logits=policy_logits, sample_ids=gate_ids,
                                     random_keep_rate=self.random_keep_rate)
            context = action * (prediction + 1)
            logits.append(base_logits + self._bias_logits(bias_x, context))
            contexts.append(context)
        size = tf.shape(base_logits)[:3]
        context = (tf.stack(contexts) if contexts
                   else tf.zeros(tf.concat([[0], size], 0), tf.int32))
        return {"logits": tf.stack(logits), "context": context}
