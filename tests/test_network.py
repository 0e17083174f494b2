"""Network shapes, presets, GroupNorm, the unrolled steps and the cached X half."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.modeling import config, ops, ppm
from ciss_tf.modeling.backbone import DilatedResNet
from ciss_tf.modeling.ciss_net import CissNet, context_actions, sample_actions
from ciss_tf.modeling.context_net import ContextNet
from ciss_tf.modeling.pspnet import PSPNet
from ciss_tf.modeling.segment_net import BaseNet, BiasNet
from tests.helpers.training_runs import new_collective_keys

NUM_CLASSES = 5


def _tiny(context_mode="learned", dropout=0.0):
    keras.utils.set_random_seed(0)
    return config.build_ciss_net(NUM_CLASSES, "tiny", context_mode, dropout)


def _images(batch=2, size=64, seed=0):
    return tf.random.stateless_normal([batch, size, size, 3], seed=[seed, 1])


@pytest.fixture(scope="module")
def _built_nets():
    """Mode -> (a built `_tiny(mode)`, its initial variable values)."""
    return {}


@pytest.fixture
def tiny(_built_nets):
    """`tiny(mode)`: a built `_tiny(mode)` as first built, shared by the module's tests.

    A test may change its variables, which the next test's `tiny` call puts back.
    """
    def get(context_mode="learned"):
        if context_mode not in _built_nets:
            net = _tiny(context_mode)
            net(_images(1, 33), num_steps=1)
            _built_nets[context_mode] = net, [v.numpy() for v in net.variables]
        net, values = _built_nets[context_mode]
        for variable, value in zip(net.variables, values, strict=True):
            variable.assign(value)
        return net

    return get


def test_ceil_avg_pool_matches_pspnet_pooling_and_dynamic_shapes():
    x = tf.random.stateless_normal([2, 60, 60, 3], seed=[1, 2])
    for bins in (1, 2, 3, 6):
        kernel = -(-60 // bins)
        expected = tf.nn.avg_pool2d(x, kernel, kernel, "VALID")
        np.testing.assert_allclose(ppm.ceil_avg_pool(x, bins), expected, atol=1e-5)
    # 61 pixels with 6 bins: kernel 11, only 5 whole cells fit (the PSPNet convention).
    pool = tf.function(
        lambda t: ppm.ceil_avg_pool(t, 6),
        input_signature=[tf.TensorSpec([None, None, None, 3])],
    )
    y = tf.random.stateless_normal([1, 61, 61, 3], seed=[3, 4])
    np.testing.assert_allclose(pool(y), tf.nn.avg_pool2d(y, 11, 11, "VALID"), atol=1e-5)


def test_backbone_output_stride_8_and_caffe_sizes():
    net = DilatedResNet(depths=(1, 1, 1, 1), width=8, stem_widths=(8, 8, 16))
    res4, res5 = net(tf.zeros([1, 473, 473, 3]))
    assert res4.shape == (1, 60, 60, 128)  # 473 -> 237 -> 119 -> 60, as in PSPNet
    assert res5.shape == (1, 60, 60, 256)


def test_backbone_hooks_name_every_unit_by_its_path_and_fold_it_exactly():
    backbone = DilatedResNet(depths=(1, 2, 1, 1), width=8, stem_widths=(8, 8, 16))
    backbone(_images(1, 33))
    named = backbone.named_units()
    # Three stem convs, three per block and one projection per stage: every conv once.
    assert len(named) == 3 + 3 * 5 + 4 == len(backbone.weights) // 5
    assert [name for name, _ in named[3:7]] == [
        "conv2_1/1x1_proj", "conv2_1/1x1_reduce", "conv2_1/3x3", "conv2_1/1x1_increase"
    ]
    assert named[7][0] == "conv3_1/1x1_proj" and named[11][0] == "conv3_2/1x1_reduce"
    for name, unit in named:
        assert unit.conv_weights().kernel.path == f"{backbone.name}/{name}/conv/kernel"
    rng = np.random.default_rng(0)
    unit = backbone.blocks()[3].units()[1]  # res4's 3x3: dilation 2, explicit padding 2
    for variable in unit.conv_weights().norm:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape))
    x = tf.random.stateless_normal([2, 9, 9, 32], seed=[5, 6])
    kernel, bias = unit.folded()
    folded = tf.nn.relu(tf.nn.conv2d(x, kernel.astype(np.float32), unit.stride, "SAME",
                                     dilations=unit.dilation) + bias.astype(np.float32))
    np.testing.assert_allclose(folded, unit(x), rtol=1e-5, atol=1e-5)


def test_pyramid_hooks_project_the_cells_and_fold_batch_norm_only():
    layer = ppm.PyramidPooling(16, bins=(1, 2, 3, 6), norm="batch")
    x = tf.random.stateless_normal([2, 12, 12, 8], seed=[7, 8])
    layer(x)
    rng = np.random.default_rng(1)
    for weights in layer.branch_weights():
        for variable in weights.norm:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape))
    pooled = [ppm.ceil_avg_pool(x, bins) for bins in layer.bins]
    projected = layer.project(pooled)
    for cells, (kernel, bias), branch in zip(pooled, layer.folded_branches(), projected,
                                             strict=True):
        folded = tf.nn.relu(tf.nn.conv2d(cells, kernel.astype(np.float32), 1, "VALID")
                            + bias.astype(np.float32))
        np.testing.assert_allclose(folded, branch, rtol=1e-5, atol=1e-5)
    # The layer's output is the projected branches upsampled, in the order 6, 3, 2, 1.
    upsampled = [ops.resize_bilinear(p, (12, 12)) for p in projected[::-1]]
    np.testing.assert_allclose(layer(x), tf.concat(upsampled, -1), rtol=1e-6, atol=1e-6)
    group = ppm.PyramidPooling(16, norm="group")
    group(x)
    for hook in (group.folded_branches, group.branch_weights):
        with pytest.raises(ValueError, match="expected a batch norm, got GroupNormalization"):
            hook()


def test_paper_preset_shapes_and_parameter_counts():
    keras.utils.set_random_seed(0)
    net = config.build_ciss_net(150, "resnet50")
    out = net(tf.zeros([1, 33, 33, 3]), num_steps=1)
    assert net.feature_net.output_channels == 4096  # 2048 + 4 x 512
    assert out["logits"].shape == (2, 1, 5, 5, 150)
    # Dilated ResNet-50 with the deep stem: 23.7 M parameters (ImageNet ResNet-50 without
    # its classifier has 23.5 M; the deep stem adds 0.1 M).
    assert net.feature_net.backbone.count_params() == 23_685_312
    bias_trunk = net.bias_net.trunk
    # First Bias-Net conv: 3x3 over [X (4096), onehot (151), 4 x 256 branches] -> 512.
    assert tuple(bias_trunk.kernel.shape) == (3, 3, 4096 + 151 + 1024, 512)
    assert tuple(net.context_net.trunk.kernel.shape) == (3, 3, 4096 + 150 + 256, 512)
    psp = config.build_pspnet(19, "resnet101")  # not called: building 101 layers is slow
    assert [len(stage) for stage in psp.feature_net.backbone.stages] == [3, 4, 23, 3]
    psp = config.build_pspnet(19, "tiny")
    outputs = psp(tf.zeros([1, 33, 33, 3]))
    assert outputs["logits"].shape == (1, 5, 5, 19)
    assert outputs["aux_logits"].shape == (1, 5, 5, 19)


def test_group_norm_has_16_channels_per_group(tiny):
    net = tiny()
    net(_images(1), num_steps=1)
    group_norms = [
        layer for layer in net._flatten_layers()
        if isinstance(layer, keras.layers.GroupNormalization)
    ]
    assert len(group_norms) >= 10
    for layer in group_norms:
        channels = layer.gamma.shape[0]
        assert channels // layer.groups == 16, layer.name


def test_step_zero_is_the_base_net_alone_and_base_logits_are_reused(tiny):
    net = tiny()
    images = _images()
    out = net(images, num_steps=2)
    expected = net.base_net(net.features(images))
    np.testing.assert_allclose(out["logits"][0], expected, atol=1e-5)
    # Changing the Bias Net changes later steps only.
    for weight in net.bias_net.trainable_weights:
        weight.assign(weight + 0.5)
    changed = net(images, num_steps=2)
    np.testing.assert_allclose(changed["logits"][0], out["logits"][0], atol=1e-5)
    assert np.abs(changed["logits"][1] - out["logits"][1]).max() > 1e-3
    # logits_{t+1} = logits_0 + bias_net(X, K_t)
    x = net.features(images)
    bias = net.bias_net.call_concat(x, changed["context"][1])
    np.testing.assert_allclose(changed["logits"][2], changed["logits"][0] + bias, atol=1e-4)


def test_each_output_belongs_to_its_step_and_the_bootstrap_to_the_last_state(tiny):
    # Each output at index t recomputed from step t's state through the step hooks: pi_t
    # and V_t from P_t = softmax(logits_t), the sampled B_t (keyed by t) and K_t, then
    # logits_{t+1} from K_t; the bootstrap from logits_T. The steps' values differ, so an
    # output taken from a neighbouring step fails.
    net = tiny()
    images, ids, steps = _images(), tf.constant([5, 9], tf.int64), 3
    out = net(images, num_steps=steps, sample=True, sample_ids=ids, seed=4, bootstrap=True)
    bias_x, context_x = net.project_features(net.features(images))
    for t in range(steps):
        policy, value = net.policy_and_value(context_x, out["logits"][t], False)
        np.testing.assert_allclose(out["policy_logits"][t], policy, atol=1e-5)
        np.testing.assert_allclose(out["values"][t], value, atol=1e-5)
        action, context = net.act(t, out["logits"][t], policy, sample=True, sample_ids=ids,
                                  seed=4)
        np.testing.assert_array_equal(out["actions"][t], action)
        np.testing.assert_array_equal(out["context"][t], context)
        np.testing.assert_allclose(
            out["logits"][t + 1], out["logits"][0] + net.bias_logits(bias_x, context, False),
            atol=1e-5)
    _, last_value = net.policy_and_value(context_x, out["logits"][steps], False)
    np.testing.assert_allclose(out["bootstrap_value"], last_value, atol=1e-5)
    values = [*out["values"], out["bootstrap_value"]]
    assert min(np.abs(a - b).max() for a, b in zip(values[:-1], values[1:], strict=True)) > 1e-3


def test_context_map_is_action_times_prediction_plus_one(tiny):
    net = tiny()
    out = net(_images(), num_steps=2)
    prediction = np.argmax(out["logits"][:-1], axis=-1)
    np.testing.assert_array_equal(out["context"], np.asarray(out["actions"]) * (prediction + 1))
    # Greedy: keep where pi(keep) > pi(ignore). A constant policy (zero kernel) set to
    # pi(keep) = sigmoid(+-0.1), just above or below 1/2, keeps everything or nothing.
    head = net.context_net.policy_head
    head.kernel.assign(tf.zeros_like(head.kernel))
    for keep_logit, expected in ((0.1, 1), (-0.1, 0)):
        head.bias.assign([0.0, keep_logit])
        out = net(_images(), num_steps=2)
        np.testing.assert_array_equal(out["actions"], np.full(out["actions"].shape, expected))
        np.testing.assert_array_equal(
            out["context"], expected * (np.argmax(out["logits"][:-1], axis=-1) + 1))


@pytest.mark.parametrize("mode", ["pmap", "none"])
def test_ablation_modes(tiny, mode):
    net = tiny(mode)
    assert net.context_net is None
    out = net(_images(), num_steps=2)
    prediction = np.argmax(out["logits"][:-1], axis=-1)
    expected = prediction + 1 if mode == "pmap" else np.zeros_like(prediction)
    np.testing.assert_array_equal(out["context"], expected)
    assert "policy_logits" not in out


def test_sampled_actions_follow_the_policy_and_are_keyed_by_sample_id():
    keep = tf.fill([2, 64, 64], 0.7)
    ids = tf.constant([3, 4], tf.int64)
    first = sample_actions(keep, 0, ids, seed=7).numpy()
    assert abs(first.mean() - 0.7) < 0.02
    np.testing.assert_array_equal(first, sample_actions(keep, 0, ids, seed=7))
    # An example's actions do not depend on its batch neighbours (replica splits agree).
    alone = sample_actions(keep[1:], 0, ids[1:], seed=7).numpy()
    np.testing.assert_array_equal(alone[0], first[1])
    assert (first[0] != first[1]).mean() > 0.2
    assert (sample_actions(keep, 1, ids, seed=7).numpy() != first).mean() > 0.2


def test_training_samples_and_evaluation_is_greedy(tiny):
    net = tiny()
    # Make pi(keep) = 0.7 everywhere: zero policy kernel, bias log-odds.
    head = net.context_net.policy_head
    images = _images()
    net(images, num_steps=1)
    head.kernel.assign(tf.zeros_like(head.kernel))
    head.bias.assign([0.0, np.log(0.7 / 0.3)])
    ids = tf.constant([0, 1], tf.int64)
    sampled = net(images, training=True, num_steps=1, sample_ids=ids)["actions"].numpy()
    assert 0.6 < sampled.mean() < 0.8
    greedy = net(images, training=False, num_steps=1)["actions"].numpy()
    assert greedy.min() == 1


def test_cached_feature_half_equals_plain_concat_at_every_step(tiny):
    net = tiny()
    images = _images()
    cached = net(images, num_steps=4, cache_features=True)
    plain = net(images, num_steps=4, cache_features=False)
    np.testing.assert_allclose(cached["logits"], plain["logits"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cached["values"], plain["values"], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(cached["context"], plain["context"])


def _plain(value):
    """Lists as tuples and dicts with plain values, to compare configs with arguments."""
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    "cls, arguments",
    [
        (BaseNet, dict(num_classes=4, channels=32, dropout=0.3)),
        (BiasNet, dict(num_classes=4, feature_channels=48, channels=32, branch_channels=16,
                       bins=(1, 3), dropout=0.2)),
        (ContextNet, dict(num_classes=4, feature_channels=48, channels=32, branch_channels=16,
                          bins=(2, 4), dropout=0.2, norm="batch")),
        (ppm.PyramidPooling, dict(channels=16, bins=(1, 2), norm="group")),
        (DilatedResNet, dict(depths=(1, 1, 1, 1), width=8, stem_widths=(8, 8, 16),
                             freeze_bn=True, stem="resnet", stride_on="3x3")),
        (PSPNet, dict(num_classes=3, feature_net=dict(depths=(1, 1, 1, 1), width=8,
                                                      stem_widths=(8, 8, 16), ppm_channels=16),
                      head_channels=24, dropout=0.2)),
        (CissNet, dict(num_classes=3, feature_net=dict(depths=(1, 1, 1, 1), width=8,
                                                       stem_widths=(8, 8, 16), ppm_channels=16),
                       channels=32, bias_branch_channels=16, context_branch_channels=16,
                       dropout=0.2, context_mode="random", context_encoder_norm="batch",
                       random_keep_rate=0.4)),
    ],
)
def test_layer_config_holds_every_argument_and_round_trips(cls, arguments):
    # Every constructor argument is given a value other than its default, and must come
    # back from get_config (a layer that forgets one rebuilds with the default).
    expected = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    assert set(arguments) == expected
    layer = cls(**arguments)
    config = layer.get_config()
    for name, value in arguments.items():
        assert _plain(config[name]) == _plain(value), name
    clone = cls.from_config(config)
    assert _plain(clone.get_config()) == _plain(config)


def test_context_encoder_norm_is_the_papers_group_norm_unless_asked():
    def norms(**kwargs):
        net = config.build_ciss_net(NUM_CLASSES, "tiny", **kwargs)
        return {type(norm).__name__ for norm in net.context_net.encoder.norms}

    assert norms() == {"GroupNormalization"}
    assert norms(context_encoder_norm="batch") == {"BatchNormalization"}
    # The original's batch norm has the same variables (a checkpoint of either restores).
    paths = {
        norm: [v.path for v in _tiny_with(norm).context_net.encoder.variables]
        for norm in ("batch", "batch_per_replica")
    }
    assert paths["batch"] == paths["batch_per_replica"]


def _tiny_with(context_encoder_norm):
    net = config.build_ciss_net(NUM_CLASSES, "tiny", context_encoder_norm=context_encoder_norm)
    net(_images(1, 33), num_steps=1)
    return net


def test_per_replica_batch_norm_uses_each_replicas_statistics_by_hand():
    # Two replicas, two images each, one channel: replica 0 sees 0 and 2, replica 1 sees
    # 10 and 14. Per replica (the original): means 1 and 12, variances 1 and 4, so each
    # normalises to -1, +1. Synchronized: mean 6.5 and variance 32.75 over all four.
    new_collective_keys()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        layers = {kind: ppm.make_norm(kind, 1, kind) for kind in ("batch_per_replica", "batch")}
        for layer in layers.values():
            layer.build((None, 1, 1, 1))
    assert layers["batch_per_replica"].momentum == 0.95 and layers["batch"].momentum == 0.9
    inputs = strategy.experimental_distribute_values_from_function(
        lambda context: tf.reshape(tf.constant(
            [[0.0, 2.0], [10.0, 14.0]][context.replica_id_in_sync_group]), [2, 1, 1, 1]))

    @tf.function
    def normalise(x):
        return {kind: layer(x, training=True) for kind, layer in layers.items()}

    outputs = strategy.run(normalise, args=(inputs,))
    local = strategy.experimental_local_results
    per_replica = np.concatenate([v.numpy().ravel() for v in local(outputs["batch_per_replica"])])
    synced = np.concatenate([v.numpy().ravel() for v in local(outputs["batch"])])
    eps = 1e-5
    np.testing.assert_allclose(per_replica, [-1 / np.sqrt(1 + eps), 1 / np.sqrt(1 + eps),
                                             -2 / np.sqrt(4 + eps), 2 / np.sqrt(4 + eps)],
                               rtol=1e-5)
    np.testing.assert_allclose(synced, (np.array([0, 2, 10, 14]) - 6.5) / np.sqrt(32.75 + eps),
                               rtol=1e-5)


def test_model_config_round_trip():
    batch = config.build_ciss_net(NUM_CLASSES, "tiny", context_encoder_norm="batch")
    for model in (_tiny(), batch, config.build_pspnet(3, "tiny")):
        clone = type(model).from_config(model.get_config())
        assert clone.get_config() == model.get_config()
    assert isinstance(config.build_pspnet(3, "tiny"), PSPNet)
    assert isinstance(_tiny(), CissNet)


def test_mixed_precision_keeps_logits_policy_and_values_in_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        net = _tiny()
        outputs = net(_images(), training=True, num_steps=1, sample_ids=tf.constant([0, 1]))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert net.base_net.conv.compute_dtype == "bfloat16"
    for name in ("logits", "policy_logits", "values", "bootstrap_value"):
        assert outputs[name].dtype == tf.float32, name
    # The same weights in float32: step 0 (no sampled action yet) agrees to bfloat16's
    # precision (8 bits of mantissa, about 0.4% per rounding) and not better, so the convs
    # did run in bfloat16.
    reference = _tiny()
    reference(_images(), num_steps=1)
    for target, source in zip(reference.variables, net.variables, strict=True):
        target.assign(tf.cast(source, target.dtype))
    expected = reference(_images(), training=True, num_steps=1, sample_ids=tf.constant([0, 1]))
    for name in ("logits", "values"):
        got, want = outputs[name][0].numpy(), expected[name][0].numpy()
        scale = np.abs(want).max()
        assert np.abs(got - want).max() < 0.05 * scale, name
        assert np.abs(got - want).max() > 1e-5 * scale, name


@pytest.mark.parametrize("mode", ["none", "pmap"])
def test_controls_unrolled_zero_steps_never_touch_the_bias_net(mode, monkeypatch):
    net = _tiny(mode)

    def untouched(*args, **kwargs):
        raise AssertionError("the Bias Net ran")

    for name in ("call", "call_concat"):
        monkeypatch.setattr(net.bias_net, name, untouched)
    monkeypatch.setattr(net.bias_net.trunk, "project_features", untouched)
    outputs = net(_images(), training=True, num_steps=0)
    assert outputs["logits"].shape[0] == 1 and "bootstrap_value" not in outputs
    # No value of the last state to bootstrap without a Context Net, so nothing of the Bias
    # Net is computed (its first conv over X is the largest in the model), yet its variables
    # exist, for a checkpoint to restore into.
    assert net.bias_net.variables


@pytest.mark.parametrize(
    "build", [lambda: config.build_pspnet(NUM_CLASSES, "tiny"), _tiny, lambda: _tiny("none")],
    ids=["pspnet", "learned", "none"],
)
def test_build_creates_every_variable_under_its_layer_before_any_call(build):
    net = build()
    net.build((None, None, None, 3))
    paths = [v.path for v in net.variables]
    assert len(paths) == len(set(paths))
    net(_images(1, 33), **({} if isinstance(net, PSPNet) else {"num_steps": 1}))
    # The first call creates nothing more: `build` built every layer without tracing the net.
    assert [v.path for v in net.variables] == paths
    for layer in net._flatten_layers(include_self=False, recursive=False):
        assert all(v.path.startswith(f"{net.name}/{layer.name}/") for v in layer.weights)
    if isinstance(net, CissNet):
        assert net.bias_net.trunk.kernel.path == f"{net.name}/bias_net/trunk/c1_kernel"


def test_context_actions_of_every_mode():
    prediction = tf.constant([[[3, 1, 2]]])
    policy = tf.constant([[[[0.0, 1.0], [1.0, 0.0], [50.0, -50.0]]]])
    cases = {
        ("learned", False): [1, 0, 0],  # greedy: keep where pi(keep) > pi(ignore)
        ("pmap", False): [1, 1, 1],
        ("none", False): [0, 0, 0],
        ("none", True): [0, 0, 0],
    }
    for (mode, sample), expected in cases.items():
        actions = context_actions(mode, prediction, 0, policy_logits=policy, sample=sample,
                                  sample_ids=tf.constant([5], tf.int64))
        np.testing.assert_array_equal(actions.numpy()[0, 0], expected, str((mode, sample)))
    # Sampled: pi(keep) = sigmoid(+-100) keeps surely or never.
    sure = tf.constant([[[[-100.0, 100.0], [100.0, -100.0], [-100.0, 100.0]]]])
    sampled = context_actions("learned", prediction, 1, policy_logits=sure, sample=True,
                              sample_ids=tf.constant([5], tf.int64), seed=3)
    np.testing.assert_array_equal(sampled.numpy()[0, 0], [1, 0, 1])
    # The random gate keeps everything at rate 1.
    np.testing.assert_array_equal(
        context_actions("random", prediction, 0, random_keep_rate=1.0).numpy()[0, 0], [1, 1, 1]
    )
