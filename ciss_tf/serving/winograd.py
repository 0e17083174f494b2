"""Winograd F(4x4, 3x3): a stride-1 SAME 3x3 conv with 2.25 multiplications per output.

`winograd_conv3x3` computes `tf.nn.conv2d(x, g, 1, "SAME", dilations=d)` as 36 matrix
products on transformed 6x6 tiles, `conv3x3(x, g) = A^T [(G g G^T) * (B^T d B)] A` per tile
(Lavin and Gray, 2016): 2.25 multiplications per output instead of 9. A dilated conv splits
the map into its dilation phases first, where it becomes a plain 3x3 conv. The tile
transforms are additions only and run as XLA-fused kernels; the products stay TF matmuls.
Rounding grows to ~1e-5 relative per conv (the transforms multiply by up to 8 and divide
by 24). The input needs a static size: the tile grid is fixed when the graph is traced.

`fast_inference` runs its wide convs through it (`FastCissNet(model, winograd=True)`).
"""

import numpy as np
import tensorflow as tf

# F(4x4, 3x3): 6x6 input tiles -> 4x4 output tiles (Lavin and Gray, "Fast Algorithms for
# Convolutional Neural Networks", 2016, section 4.2), interpolation points 0, +-1, +-2.
_TILE = 4
_ALPHA = _TILE + 2
_WINOGRAD_BT = np.array([
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
], np.float64)
_WINOGRAD_G = np.array([
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
])
_WINOGRAD_AT = np.array([
    [1, 1, 1, 1, 1, 0],
    [0, 1, -1, 2, -2, 0],
    [0, 1, 1, 4, 4, 0],
    [0, 1, -1, 8, -8, 1],
], np.float64)


def winograd_kernel(kernel):
    """`G g G^T` of every (input, output) channel pair of a 3x3 kernel.

    Args:
      kernel: `[3, 3, C, O]`.

    Returns:
      float64 `[36, C, O]`, tile position major (row, then column).
    """
    kernel = np.asarray(kernel, np.float64)
    transformed = np.einsum("ai,ijco,bj->abco", _WINOGRAD_G, kernel, _WINOGRAD_G)
    return transformed.reshape(_ALPHA * _ALPHA, *kernel.shape[2:])


def _combine(parts, coefficients):
    """`sum_k coefficients[k] * parts[k]`, skipping zeros (the transforms are sparse)."""
    total = None
    for c, part in zip(coefficients, parts, strict=True):
        if c == 0:
            continue
        term = part if c == 1 else -part if c == -1 else part * c
        total = term if total is None else total + term
    return total


def _transform_axis(z, axis, num_tiles, matrix, stride):
    """Applies `matrix` to the overlapping windows of `z` along `axis` (one per tile)."""
    def window(offset):
        index = [slice(None)] * z.shape.rank
        index[axis] = slice(offset, offset + stride * num_tiles, stride)
        return z[tuple(index)]

    parts = [window(k) for k in range(matrix.shape[1])]
    return [_combine(parts, row) for row in matrix]


def _phase_grid(height, width, dilation):
    """Per-phase size and tile counts of a dilated map (each phase a plain 3x3 conv)."""
    phase_h, phase_w = -(-height // dilation), -(-width // dilation)
    return phase_h, phase_w, -(-phase_h // _TILE), -(-phase_w // _TILE)


@tf.function(jit_compile=True, autograph=False)
def _winograd_input(x, dilation):
    """`B^T d B` of every 6x6 tile: 36 maps `[tiles, C]`, one per tile position."""
    _, height, width, channels = x.shape
    phase_h, phase_w, tiles_h, tiles_w = _phase_grid(height, width, dilation)
    if dilation > 1:
        x = tf.space_to_batch_nd(x, [dilation, dilation], [[0, -height % dilation],
                                                           [0, -width % dilation]])
    # One zero row / column of SAME padding in front, enough behind to fill whole tiles.
    z = tf.pad(x, [[0, 0], [1, _TILE * tiles_h + 1 - phase_h],
                   [1, _TILE * tiles_w + 1 - phase_w], [0, 0]])
    rows = _transform_axis(z, 1, tiles_h, _WINOGRAD_BT, _TILE)
    return [tf.reshape(tile, [-1, channels])
            for row in rows for tile in _transform_axis(row, 2, tiles_w, _WINOGRAD_BT, _TILE)]


@tf.function(jit_compile=True, autograph=False)
def _winograd_output(products, shape, dilation):
    """`A^T m A` of the 36 products back to the `[B, H, W, O]` map (inverse of the input)."""
    batch, height, width, outputs = shape
    phase_h, phase_w, tiles_h, tiles_w = _phase_grid(height, width, dilation)
    # Along the tile's rows (index a of products[a * 6 + b]), then along its columns.
    columns = [products[b::_ALPHA] for b in range(_ALPHA)]
    partial = [[_combine(column, _WINOGRAD_AT[i]) for column in columns] for i in range(_TILE)]
    y = tf.stack([tf.stack([_combine(partial[i], _WINOGRAD_AT[j]) for j in range(_TILE)])
                  for i in range(_TILE)])  # [4 (i), 4 (j), tiles, O]
    phases = batch * dilation * dilation
    y = tf.reshape(y, [_TILE, _TILE, phases, tiles_h, tiles_w, outputs])
    y = tf.reshape(tf.transpose(y, [2, 3, 0, 4, 1, 5]),
                   [phases, _TILE * tiles_h, _TILE * tiles_w, outputs])[:, :phase_h, :phase_w]
    if dilation > 1:
        y = tf.batch_to_space(y, [dilation, dilation], [[0, -height % dilation],
                                                        [0, -width % dilation]])
    return y


def winograd_conv3x3(x, transformed, dilation=1):
    """`tf.nn.conv2d(x, g, 1, "SAME", dilations=dilation)` by Winograd F(4x4, 3x3).

    Args:
      x: float32 `[B, H, W, C]` of a static size (the tile grid is fixed when traced).
      transformed: `winograd_kernel(g)` as 36 `[C, O]` tensors.
      dilation: the conv's dilation rate.

    Returns:
      `[B, H, W, O]`.
    """
    if not x.shape[1:].is_fully_defined() or x.shape[0] is None:
        raise ValueError(f"winograd_conv3x3 needs a static input shape, got {x.shape}")
    tiles = _winograd_input(x, dilation)
    products = [tf.matmul(tile, kernel) for tile, kernel in zip(tiles, transformed, strict=True)]
    shape = (*x.shape[:3], transformed[0].shape[-1])
    return _winograd_output(products, shape, dilation)
