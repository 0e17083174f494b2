"""The exact inference rewrites equal the plain model (float32 rounding only).

Tolerance: logits within 1e-4 absolute + 1e-4 relative of the plain model's (observed
differences are ~5e-6 on logits of magnitude ~5); greedy context maps identical. Winograd
F(4x4, 3x3) rounds more (its transforms multiply by up to 8 and divide by 24): one conv
within 2e-5 of the largest output, the whole unroll within 1e-3 (observed ~1e-5).
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.modeling import config, inference, ops, ppm
from ciss_tf.serving.fast_inference import (
    FastCissNet,
    conv3x3_of_upsampled,
    pyramid_pool,
    shifted_interpolation,
    tap_major,
)
from ciss_tf.serving.winograd import winograd_conv3x3, winograd_kernel

NUM_CLASSES = 5
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def _perturb_statistics(model, seed=0):
    """Random batch-norm statistics and affine parameters, so that folding is exercised."""
    rng = np.random.default_rng(seed)
    for variable in model.variables:
        shape, path = variable.shape, variable.path
        if "moving_variance" in path:
            variable.assign(rng.uniform(0.5, 2.0, shape))
        elif "moving_mean" in path:
            variable.assign(rng.normal(0.0, 0.5, shape))
        elif path.endswith("gamma"):
            variable.assign(rng.uniform(0.5, 1.5, shape))
        elif path.endswith("beta"):
            variable.assign(rng.normal(0.0, 0.3, shape))


def _tiny(context_mode="learned", context_encoder_norm="group"):
    keras.utils.set_random_seed(0)
    model = config.build_ciss_net(
        NUM_CLASSES, "tiny", context_mode, context_encoder_norm=context_encoder_norm,
        random_keep_rate=0.5 if context_mode == "random" else None,
    )
    model(tf.zeros([1, 33, 33, 3]), num_steps=1)
    _perturb_statistics(model)
    if model.context_net is not None:
        # Random weights keep almost nothing; centre the policy so both actions occur.
        model.context_net.policy_head.bias.assign([0.0, 0.3])
    return model


@pytest.fixture(scope="module")
def tiny():
    """`_tiny(context_mode, norm)`, built once per module (the rewrites only read it)."""
    return functools.cache(_tiny)


def _images(batch=2, height=67, width=75, seed=0):
    return tf.random.stateless_normal([batch, height, width, 3], seed=[seed, 1]) * 50.0


def test_shifted_interpolation_hand_values():
    # 2 -> 3 with corners aligned: rows [1, 0], [.5, .5], [0, 1]; tap d reads row y + d - 1.
    shifted = shifted_interpolation(2, 3).numpy()
    np.testing.assert_allclose(shifted[1], [[1, 0], [0.5, 0.5], [0, 1]])
    np.testing.assert_allclose(shifted[0], [[0, 0], [1, 0], [0.5, 0.5]])
    np.testing.assert_allclose(shifted[2], [[0.5, 0.5], [0, 1], [0, 0]])


@pytest.mark.parametrize(
    "grid, size", [((1, 1), (8, 8)), ((2, 3), (13, 17)), ((6, 6), (60, 60)), ((5, 6), (11, 9))]
)
def test_conv_of_upsampled_equals_conv_of_resize(grid, size):
    pooled = tf.random.stateless_normal([2, *grid, 7], seed=[3, 4])
    kernel = tf.random.stateless_normal([3, 3, 7, 5], seed=[5, 6])
    expected = tf.nn.conv2d(ops.resize_bilinear(pooled, size), kernel, 1, "SAME")
    got = conv3x3_of_upsampled(pooled, tap_major(kernel.numpy()), size)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_pyramid_pool_hand_values_and_equals_ceil_avg_pool_at_any_size():
    # 5x5 with 2 bins: kernel 3, one whole cell (rows and columns 0..2): mean 6.
    x = tf.reshape(tf.range(25, dtype=tf.float32), [1, 5, 5, 1])
    np.testing.assert_allclose(pyramid_pool(x, (2,))[0][0, :, :, 0], [[6.0]])
    pool = tf.function(
        lambda t: pyramid_pool(t, (1, 2, 3, 6)),
        input_signature=[tf.TensorSpec([None, None, None, 3])],
    )
    for height, width in ((60, 60), (61, 67), (13, 8)):
        y = tf.random.stateless_normal([2, height, width, 3], seed=[height, width])
        for bins, got in zip((1, 2, 3, 6), pool(y), strict=True):
            np.testing.assert_allclose(got, ppm.ceil_avg_pool(y, bins), rtol=1e-5, atol=1e-5)


def test_folded_feature_net_equals_feature_net(tiny):
    model = tiny("learned", "group")
    fast = FastCissNet(model)
    images = _images()
    _, x = model.feature_net(images, training=False)
    res5, pooled = fast.res5_and_pyramid(images)
    res5_channels = res5.shape[-1]
    np.testing.assert_allclose(res5, x[..., :res5_channels], **TOLERANCE)
    # X's pyramid channels are the upsampled pooled branches, in the order 6, 3, 2, 1.
    upsampled = [ops.resize_bilinear(p, ops.spatial_size(res5)) for p in pooled[::-1]]
    np.testing.assert_allclose(tf.concat(upsampled, -1), x[..., res5_channels:], **TOLERANCE)


def test_fused_x_conv_equals_the_three_plain_x_convs(tiny):
    model = tiny("learned", "group")
    fast = FastCissNet(model)
    images = _images()
    x = model.features(images)
    expected = tf.concat([
        model.base_net.conv(x),
        model.bias_net.trunk.project_features(x),
        model.context_net.trunk.project_features(x),
    ], axis=-1)
    res5, pooled = fast.res5_and_pyramid(images)
    np.testing.assert_allclose(fast._conv_x(res5, pooled, fast.fused_x_kernels), expected,
                               **TOLERANCE)
    np.testing.assert_allclose(
        fast._conv_x(res5, pooled, fast.base_x_kernels), expected[..., : model.channels],
        **TOLERANCE,
    )


@pytest.mark.parametrize(
    "batch,height,width,dilation",
    [(2, 13, 11, 1), (1, 4, 4, 1), (1, 1, 1, 1), (2, 9, 17, 2), (1, 60, 60, 4), (1, 15, 6, 4)],
)
def test_winograd_conv_equals_conv2d(batch, height, width, dilation):
    # Sizes that fill whole 4x4 tiles and that do not, per dilation phase, and a 1x1 map.
    rng = np.random.default_rng(height * width)
    x = rng.normal(size=(batch, height, width, 5)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 5, 7)).astype(np.float32)
    expected = tf.nn.conv2d(x, kernel, 1, "SAME", dilations=dilation).numpy()
    transformed = [tf.constant(k, tf.float32) for k in winograd_kernel(kernel)]
    got = tf.function(lambda x: winograd_conv3x3(x, transformed, dilation))(x).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * np.abs(expected).max())


def test_winograd_kernel_hand_value_and_static_shape_check():
    # G g G^T of the centre tap alone: the outer product of G's middle column with itself.
    kernel = np.zeros([3, 3, 1, 1])
    kernel[1, 1] = 1.0
    middle = np.array([0, -1 / 6, 1 / 6, 1 / 12, -1 / 12, 0])
    np.testing.assert_allclose(winograd_kernel(kernel)[:, 0, 0], np.outer(middle, middle).ravel())
    transformed = [tf.constant(k, tf.float32) for k in winograd_kernel(kernel)]
    dynamic = tf.function(lambda x: winograd_conv3x3(x, transformed),
                          input_signature=[tf.TensorSpec([1, None, None, 1])])
    with pytest.raises(ValueError, match="static input shape"):
        dynamic.get_concrete_function()


@pytest.mark.parametrize(
    "context_mode,winograd,norm", [("learned", False, "group"), ("learned", False, "batch"),
                                   ("pmap", False, "group"), ("none", False, "group"),
                                   ("random", False, "group"), ("learned", True, "group")],
)
def test_fast_unroll_equals_plain_model_at_every_step(tiny, context_mode, winograd, norm):
    model = tiny(context_mode, norm)
    # Every tiny conv is narrow: admit them all, so that each Winograd site is exercised.
    net = FastCissNet(model, winograd=winograd, winograd_min_channels=1)
    if winograd:
        assert net.fused_x_kernels[0].winograd and net.blocks[-1].conv3x3.conv.winograd
        assert all(conv.winograd for convs in net.trunk_convs for conv in convs)
    fast = tf.function(net, autograph=False)
    images = _images()
    # T = 2: step 2 is the first whose context comes from a Bias-Net prediction; later
    # steps run its code again.
    plain = model(images, training=False, num_steps=2, cache_features=False)
    got = fast(images, num_steps=2)
    assert got["logits"].shape == plain["logits"].shape
    tolerance = dict(rtol=1e-3, atol=1e-3) if winograd else TOLERANCE
    for t in range(3):
        np.testing.assert_allclose(got["logits"][t], plain["logits"][t], **tolerance)
    np.testing.assert_array_equal(got["context"], plain["context"])
    kept = float(tf.reduce_mean(tf.cast(plain["context"] > 0, tf.float32)))
    if context_mode in ("learned", "random"):
        assert 0.05 < kept < 0.95  # both actions occur, so the gate's path is compared
    assert fast(images, num_steps=0)["context"].shape == (0, 2, 9, 10)


def _labels_at_t2(net, images):
    """Class ids at t = 2 at the input size, through the one inference path."""
    return inference.segment(net, images, 2, label_steps=[2], context_steps=())["labels"][0]


def test_fast_net_takes_any_size(tiny):
    # Traced once for any size, as served. Its SavedModel round trip: test_exporter.py (the
    # export serves the fast net by default).
    model = tiny("learned", "group")
    fast = FastCissNet(model)
    serve = tf.function(
        lambda images: _labels_at_t2(fast, images),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
        autograph=False,
    )
    for height, width in ((49, 61), (64, 64)):
        images = _images(1, height, width, seed=height)
        expected = _labels_at_t2(model, images)
        labels = serve(images)
        assert labels.shape == (1, height, width)
        # Labels may differ only where two classes' logits tie within float rounding.
        assert float(tf.reduce_mean(tf.cast(labels == expected, tf.float32))) > 0.999
