"""Training end to end through the CLI: over-fitting, distribution, resume, NaN guard, logs."""

import glob
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import varied_tiny_net

from ciss_tf.data import datasets
from ciss_tf.evaluation import segmenter
from ciss_tf.modeling import checkpoints, config
from ciss_tf.modeling.config import ModelConfig
from ciss_tf.training import optimizers as optimizers_lib
from ciss_tf.training import summaries, tasks
from ciss_tf.training.config import OptimizerConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")

TINY = [
    "--stage=ciss", "--preset=tiny", "--dataset=synthetic", "--crop_size=48,48",
    "--batch_size=4", "--unroll_steps=2", "--log_every=1", "--image_summary_every=0",
    "--base_learning_rate=0.01", "--context_learning_rate=0.001", "--seed=3",
]


def _run(module, *args, check=True, env=ENV):
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=600,
    )
    if check and result.returncode:
        raise AssertionError(f"{module} failed:\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    _run(
        "data_prep.build_tfrecords", "--dataset=synthetic", f"--output_dir={out}",
        "--synthetic_num_train=8", "--synthetic_num_val=2", "--synthetic_height=48",
        "--synthetic_width=48",
    )
    return str(out)


def _weights(model_dir, step):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, f"ckpt-{step}"))
    names = [
        name for name in reader.get_variable_to_shape_map()
        if name.startswith("model/") and "OPTIMIZER_SLOT" not in name
    ]
    return {name: reader.get_tensor(name) for name in names}


def _assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for name in a:
        if a[name].dtype.kind == "f":
            np.testing.assert_allclose(a[name], b[name], atol=atol, rtol=0, err_msg=name)


def _summaries(model_dir):
    """`{(tag, step): value}` of the TensorBoard events in `model_dir/train`."""
    values = {}
    for path in glob.glob(str(model_dir / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values[value.tag, event.step] = tf.make_ndarray(value.tensor)
    return values


def _tags(model_dir):
    return {tag for tag, _ in _summaries(model_dir)}


def test_overfits_a_few_images_and_logs_every_tag(data_dir, tmp_path):
    # Two images, no augmentation that changes them much: the segmentation loss must fall.
    model_dir = tmp_path / "run"
    result = _run(
        "ciss_tf.train", *TINY, f"--data_dir={data_dir}", f"--model_dir={model_dir}",
        "--max_steps=12", "--min_scale=1.0", "--max_scale=1.0", "--base_learning_rate=0.05",
        "--context_learning_rate=0.01", "--image_summary_every=12", "--dropout=0",
    )
    losses = [
        float(line.split("segmentation ")[1].split()[0])
        for line in result.stderr.splitlines() if " segmentation " in line
    ]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    tags = _tags(model_dir)
    expected = {
        "loss/total", "loss/policy", "loss/value", "loss/entropy", "loss/segmentation",
        "loss/segmentation_t0", "loss/segmentation_t2", "loss/weight_decay", "rl/reward",
        "rl/value_estimate", "rl/policy_entropy", "rl/kept_fraction", "rl/return",
        "learning_rate/base", "learning_rate/context", "perf/steps_per_second",
        "perf/images_per_second", "steps/input_gt_pmap_context",
    }
    assert expected <= tags, expected - tags
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-12")


def test_two_replicas_equal_one_device(data_dir, tmp_path):
    common = [
        *TINY, f"--data_dir={data_dir}", "--max_steps=1", "--dropout=0", "--deterministic",
    ]
    _run("ciss_tf.train", *common, f"--model_dir={tmp_path / 'one'}")
    _run("ciss_tf.train", *common, f"--model_dir={tmp_path / 'two'}", "--num_cpu_devices=2")
    one, two = _weights(tmp_path / "one", 1), _weights(tmp_path / "two", 1)
    # Same global batch, same per-example action noise: the update agrees to float rounding.
    _assert_same_weights(one, two, atol=1e-5)
    # The frozen feature net is bit-identical to its initialisation (same seed, built
    # in-process as the trainer builds it); the Base Net moved.
    keras.utils.set_random_seed(3)
    model = config.build_ciss_net(8, "tiny", "learned", 0.0)
    model(tf.zeros([1, 48, 48, 3]), num_steps=2)
    initial = {
        checkpoints.stored_name(key): v.numpy()
        for key, v in checkpoints.model_variables(model).items()
    }
    feature = [k for k in one if "feature_net" in k]
    base = [k for k in one if "base_net" in k and one[k].dtype.kind == "f"]
    assert feature and base
    for key in feature:
        np.testing.assert_array_equal(one[key], initial[key], err_msg=key)
    assert max(np.abs(one[k] - initial[k]).max() for k in base) > 1e-4


def test_resume_equals_uninterrupted(data_dir, tmp_path):
    common = [
        *TINY, f"--data_dir={data_dir}", "--max_steps=4", "--checkpoint_every=2",
        "--deterministic",
    ]
    _run("ciss_tf.train", *common, f"--model_dir={tmp_path / 'straight'}")
    _run("ciss_tf.train", *common, f"--model_dir={tmp_path / 'resumed'}", "--stop_at_step=2")
    assert tf.train.latest_checkpoint(str(tmp_path / "resumed")).endswith("ckpt-2")
    result = _run("ciss_tf.train", *common, f"--model_dir={tmp_path / 'resumed'}")
    assert "Resumed from" in result.stderr
    _assert_same_weights(
        _weights(tmp_path / "straight", 4), _weights(tmp_path / "resumed", 4), atol=1e-6
    )
    reader = tf.train.load_checkpoint(str(tmp_path / "resumed" / "ckpt-4"))
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 4


def test_adamw_three_groups_on_two_replicas_resume_equals_uninterrupted(data_dir, tmp_path):
    # Stage 2 with AdamW (forbidden while the groups were gradient multipliers) and the
    # authors' three groups, on two replicas: stopped at step 1 and resumed equals straight
    # to step 2 only if every group's moments and step count are checkpointed and restored.
    # (Against one device AdamW agrees only loosely: it divides near-zero gradients by
    # their own magnitude, which amplifies the rounding of the replica sum; the SGD test
    # above compares one and two replicas.)
    common = [
        *TINY, f"--data_dir={data_dir}", "--max_steps=2", "--dropout=0", "--deterministic",
        "--optimizer=adamw", "--weight_decay=0.01", "--context_net_learning_rate=0.0003",
        "--num_cpu_devices=2",
    ]
    _run("ciss_tf.train", *common, f"--model_dir={tmp_path / 'two'}")
    _run("ciss_tf.train", *common, f"--model_dir={tmp_path / 'resumed'}", "--stop_at_step=1")
    first = json.loads((tmp_path / "resumed" / summaries.SUMMARY_FILE).read_text())
    result = _run("ciss_tf.train", *common, f"--model_dir={tmp_path / 'resumed'}")
    assert "Resumed from" in result.stderr
    _assert_same_weights(_weights(tmp_path / "resumed", 2), _weights(tmp_path / "two", 2),
                         atol=1e-6)
    reader = tf.train.load_checkpoint(str(tmp_path / "resumed" / "ckpt-2"))
    names = reader.get_variable_to_shape_map()
    for key in ("optimizer", "optimizer_context", "optimizer_context_net"):
        assert f"{key}/_iterations/.ATTRIBUTES/VARIABLE_VALUE" in names, key
    # Each group's rate on its own poly schedule: step 2 of 2 runs at (1 - 1/2)^0.9 of it.
    scalars = _summaries(tmp_path / "two")
    for tag, rate in (("base", 0.01), ("context", 0.001), ("context_net", 0.0003)):
        assert scalars[f"learning_rate/{tag}", 1] == pytest.approx(rate, rel=1e-6)
        assert scalars[f"learning_rate/{tag}", 2] == pytest.approx(rate * 0.5**0.9, rel=1e-6)
    # The summary counts both sessions' time; its terms average this session's steps.
    summary = json.loads((tmp_path / "resumed" / summaries.SUMMARY_FILE).read_text())
    assert (first["step"], first["max_steps"], summary["step"]) == (1, 2, 2)
    assert summary["seconds"] > first["seconds"] > 0
    assert 0 <= summary["final_terms"]["kept_fraction"] <= 1
    assert summary["final_terms"]["total"] == pytest.approx(
        float(result.stderr.split("step 2/2  loss ")[1].split()[0]), abs=1e-4)


def test_base_init_pspnet_copies_the_stage1_head_into_the_base_net(data_dir, tmp_path):
    keras.utils.set_random_seed(7)
    pspnet = config.build_pspnet(8, "tiny")
    pspnet(tf.zeros([1, 48, 48, 3]))
    # Non-trivial norm values in the head, to show they are not what the Base Net gets.
    pspnet.head.norm.gamma.assign(tf.fill(pspnet.head.norm.gamma.shape, 3.0))
    pspnet.head.norm.beta.assign(tf.fill(pspnet.head.norm.beta.shape, -2.0))
    prefix = checkpoints.save_model(pspnet, str(tmp_path / "stage1" / "ckpt-1"))
    model_dir = tmp_path / "run"
    # Rates 0: the checkpoint of step 1 holds the initial weights.
    _run(
        "ciss_tf.train", *TINY, f"--data_dir={data_dir}", f"--model_dir={model_dir}",
        "--max_steps=1", f"--init_checkpoint={prefix}", "--base_init=pspnet",
        "--base_learning_rate=0", "--context_learning_rate=0",
    )
    reader = tf.train.load_checkpoint(str(model_dir / "ckpt-1"))

    def stored(key):
        return reader.get_tensor(checkpoints.stored_name(key))

    head = pspnet.head
    np.testing.assert_array_equal(stored("base_net/conv/kernel"), head.conv.kernel.numpy())
    np.testing.assert_array_equal(
        stored("base_net/classifier/kernel"), head.classifier.kernel.numpy())
    np.testing.assert_array_equal(stored("base_net/classifier/bias"), head.classifier.bias.numpy())
    np.testing.assert_array_equal(stored("base_net/gn/gamma"), np.ones(32, np.float32))
    np.testing.assert_array_equal(stored("base_net/gn/beta"), np.zeros(32, np.float32))
    result = _run(
        "ciss_tf.train", *TINY, f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'bad'}",
        "--max_steps=1", "--base_init=pspnet", check=False,
    )
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and last.startswith("error: --base_init=pspnet"), last
    assert not (tmp_path / "bad").exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    model_dir = tmp_path / "nan"
    result = _run(
        "ciss_tf.train", *TINY, f"--data_dir={data_dir}", f"--model_dir={model_dir}",
        "--max_steps=8", "--checkpoint_every=1", "--base_learning_rate=1e30",
        "--context_learning_rate=1e30", check=False,
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error:") and ("nan" in last_line or "non-finite" in last_line)
    for index in glob.glob(str(model_dir / "ckpt-*.index")):
        weights = _weights(model_dir, int(index.split("ckpt-")[1].split(".")[0]))
        for name, value in weights.items():
            if value.dtype.kind == "f":
                assert np.isfinite(value).all(), name
    assert not os.path.exists(model_dir / "ckpt-8.index")


def test_bad_flags_give_one_line(data_dir, tmp_path):
    result = _run(
        "ciss_tf.train", *TINY, f"--data_dir={tmp_path / 'missing'}",
        f"--model_dir={tmp_path / 'm'}", "--max_steps=1", check=False,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error:")
    assert "missing" in result.stderr.strip().splitlines()[-1]
    result = _run(
        "ciss_tf.train", *TINY, f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'm'}",
        "--batch_size=3", "--num_cpu_devices=2", check=False,
    )
    assert result.returncode != 0 and "--batch_size=3" in result.stderr.splitlines()[-1]
    result = _run(
        "ciss_tf.train", *TINY, f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'n'}",
        "--unroll_steps=0", check=False,
    )
    assert result.returncode != 0 and "--unroll_steps" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "n").exists()


_POISON_SCRIPT = """
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from ciss_tf.training import optimizers as optimizers_lib
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

@tf.function
def step(bad_replica):
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    value = tf.cast(replica + 1, tf.float32)
    first = tf.fill([3], value)
    first = tf.where(tf.equal(replica, bad_replica), first * np.inf, first)
    second = tf.fill([2], tf.cast(value, tf.float16))
    return optimizers_lib.poison_unless_all_replicas_finite([first, second])

results = {}
for bad in (-1, 1):
    out = strategy.run(step, args=(tf.constant(bad),))
    results[bad] = [[g.numpy().tolist() for g in strategy.experimental_local_results(o)]
                    for o in out]
print(json.dumps(results))
"""


def test_an_overflow_on_one_replica_makes_every_replica_skip():
    result = subprocess.run([sys.executable, "-c", _POISON_SCRIPT], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    # No overflow: each replica keeps its own gradients (1s on replica 0, 2s on replica 1).
    assert results["-1"] == [[[1.0] * 3, [2.0] * 3], [[1.0] * 2, [2.0] * 2]]
    # Replica 1 overflowed: both replicas' gradients become NaN, in their own dtypes.
    for per_variable in results["1"]:
        for values in per_variable:
            assert np.isnan(values).all()


def _conv_variables(name, seed):
    """A built 1x1 conv's kernel and bias, with non-zero values (keras Variables: `.path`)."""
    conv = keras.layers.Conv2D(2, 1, name=name, bias_initializer="ones")
    keras.utils.set_random_seed(seed)
    conv(tf.ones([1, 1, 1, 3]))
    return conv.trainable_variables


def test_sgd_groups_equal_the_gradient_multiplier_form():
    # Hand check, lr_power 1, max_steps 10: the base rate is 0.1 at step 0 and 0.09 at step
    # 1; momentum 0.9 (Keras: v = 0.9 v - lr g, w += v). Gradients g1 = (1, -2), g2 =
    # (0.5, 3), weights from 0: v1 = (-0.1, 0.2) = w1; v2 = 0.9 v1 - 0.09 g2 =
    # (-0.135, -0.09); w2 = (-0.235, 0.11). The context group at 0.01 = the base rate x 0.1
    # moves 10x less, which is what the old multiplier form (its gradients x 0.1, the base
    # schedule) gives: lr x (0.1 g) = (0.1 lr) x g at every step, momentum being linear.
    gradients = [tf.constant([1.0, -2.0]), tf.constant([0.5, 3.0])]
    cfg, max_steps = OptimizerConfig(optimizer="sgd", momentum=0.9, lr_power=1.0), 10
    base, context = keras.Variable(tf.zeros([2])), keras.Variable(tf.zeros([2]))
    groups = [optimizers_lib.VariableGroup("base", (base,), 0.1),
              optimizers_lib.VariableGroup("context", (context,), 0.01)]
    optimizers = optimizers_lib.make_group_optimizers(groups, cfg, max_steps)
    old_base, old_context = keras.Variable(tf.zeros([2])), keras.Variable(tf.zeros([2]))
    old = optimizers_lib.make_optimizer(
        optimizers_lib.make_schedule(0.1, cfg, max_steps), [old_base, old_context], cfg
    )
    for g in gradients:
        optimizers_lib.apply_group_gradients(groups, optimizers, [g, g])
        old.apply_gradients([(g, old_base), (0.1 * g, old_context)])
    np.testing.assert_allclose(base.numpy(), [-0.235, 0.11], rtol=1e-6)
    np.testing.assert_allclose(context.numpy(), [-0.0235, 0.011], rtol=1e-6)
    np.testing.assert_allclose(base.numpy(), old_base.numpy(), rtol=1e-6)
    np.testing.assert_allclose(context.numpy(), old_context.numpy(), rtol=1e-6)


def test_adamw_decays_conv_kernels_only_each_group_at_its_own_rate():
    # AdamW's first step (Keras: m = 0.1 g, v = 0.001 g^2, bias-corrected) moves a weight by
    # lr g / (|g| + eps / sqrt(1 - beta2)), about lr sign(g), and first decays it by
    # w * wd * lr (kernels only): both at the group's own rate.
    rates = {"base": 0.1, "context": 0.01, "context_net": 0.001}
    variables = {name: _conv_variables(name, seed) for seed, name in enumerate(rates)}
    before = {name: [v.numpy() for v in vs] for name, vs in variables.items()}
    groups = [optimizers_lib.VariableGroup(name, tuple(variables[name]), lr)
              for name, lr in rates.items()]
    cfg, max_steps = OptimizerConfig(optimizer="adamw", weight_decay=0.5), 100
    optimizers = optimizers_lib.make_group_optimizers(groups, cfg, max_steps)
    # A zero gradient leaves Adam's step at 0: only the decoupled decay moves weights.
    optimizers_lib.apply_group_gradients(
        groups, optimizers, [tf.zeros_like(v) for g in groups for v in g.variables]
    )
    for name, lr in rates.items():
        for variable, value in zip(variables[name], before[name], strict=True):
            factor = 1 - lr * 0.5 if "kernel" in variable.path else 1.0
            np.testing.assert_allclose(variable.numpy(), factor * value, rtol=1e-6,
                                       err_msg=variable.path)
    fresh = optimizers_lib.make_group_optimizers(groups, cfg, max_steps)
    start = {name: [v.numpy() for v in vs] for name, vs in variables.items()}
    gradient = {"kernel": 2.0, "bias": -3.0}
    optimizers_lib.apply_group_gradients(groups, fresh, [
        tf.fill(v.shape, gradient["kernel" if "kernel" in v.path else "bias"])
        for g in groups for v in g.variables
    ])
    for name, lr in rates.items():
        for variable, value in zip(variables[name], start[name], strict=True):
            kernel = "kernel" in variable.path
            g = gradient["kernel" if kernel else "bias"]
            adam = lr * g / (abs(g) + 1e-7 / np.sqrt(1 - 0.999))
            expected = value * (1 - lr * 0.5 if kernel else 1.0) - adam
            np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-7,
                                       err_msg=variable.path)


def test_loss_scaled_groups_skip_together_and_keep_one_scale():
    # mixed_float16: one LossScaleOptimizer per group, the loss scaled by the first. An
    # overflow in one group's gradients must make every group skip the step and halve its
    # scale, else the groups' scales (and the unscaling of the shared scaled loss) diverge.
    cfg, max_steps = OptimizerConfig(optimizer="sgd", momentum=0.0, lr_power=0.0), 30000
    base, context = keras.Variable(tf.zeros([2])), keras.Variable(tf.zeros([2]))
    groups = [optimizers_lib.VariableGroup("base", (base,), 0.1),
              optimizers_lib.VariableGroup("context", (context,), 0.01)]
    optimizers = optimizers_lib.make_group_optimizers(groups, cfg, max_steps, loss_scaling=True)
    optimizers_lib.apply_group_gradients(
        groups, optimizers, [tf.ones([2]), tf.constant([1.0, np.inf])]
    )
    np.testing.assert_array_equal(base.numpy(), [0.0, 0.0])
    np.testing.assert_array_equal(context.numpy(), [0.0, 0.0])
    assert [float(o.dynamic_scale) for o in optimizers] == [2.0**14, 2.0**14]
    scale = float(optimizers[0].dynamic_scale)
    optimizers_lib.apply_group_gradients(groups, optimizers, [tf.fill([2], 2.0 * scale)] * 2)
    np.testing.assert_allclose(base.numpy(), [-0.2, -0.2], rtol=1e-6)
    np.testing.assert_allclose(context.numpy(), [-0.02, -0.02], rtol=1e-6)
    assert [int(o.iterations) for o in optimizers] == [1, 1]


def test_variable_groups_follow_the_flags_and_cover_every_trainable_variable():
    learned = config.build_ciss_net(8, "tiny")
    pmap = config.build_ciss_net(8, "tiny", "pmap")
    for model in (learned, pmap):
        model(tf.zeros([1, 33, 33, 3]), num_steps=1)

    def names(model, unroll_steps, context_net_learning_rate=None):
        cfg = TrainConfig(
            model=ModelConfig(preset="tiny", context_mode=model.context_mode), model_dir=None,
            optimizer=OptimizerConfig(base_learning_rate=0.1, context_learning_rate=0.01,
                                      context_net_learning_rate=context_net_learning_rate),
            unroll_steps=unroll_steps,
        )
        groups = tasks.CissTask(cfg, None).variable_groups(model)
        ids = [id(v) for g in groups for v in g.variables]
        assert len(ids) == len(set(ids))
        return {g.name: ({id(v) for v in g.variables}, g.learning_rate) for g in groups}

    def ids(layer):
        return {id(v) for v in layer.trainable_variables}

    everything = ids(learned)
    assert names(learned, unroll_steps=2) == {
        "base": (ids(learned.base_net), 0.1),
        "context": (everything - ids(learned.base_net), 0.01),
    }
    assert names(learned, unroll_steps=2, context_net_learning_rate=0.003) == {
        "base": (ids(learned.base_net), 0.1),
        "context": (ids(learned.bias_net), 0.01),
        "context_net": (ids(learned.context_net), 0.003),
    }
    # T = 0 (the Baseline: no Context Net acts): the others get no gradient, so they get no
    # optimizer.
    assert names(pmap, unroll_steps=0) == {"base": (ids(pmap.base_net), 0.1)}
    # No Context Net: its rate has nothing to apply to.
    assert names(pmap, unroll_steps=2, context_net_learning_rate=0.003) == {
        "base": (ids(pmap.base_net), 0.1), "context": (ids(pmap.bias_net), 0.01),
    }
    stage1 = TrainConfig(model=ModelConfig(stage="pspnet", preset="tiny"), model_dir=None,
                         optimizer=OptimizerConfig(base_learning_rate=0.1))
    [group] = tasks.PSPNetTask(stage1, None).variable_groups(learned)
    assert {id(v) for v in group.variables} == everything and group.learning_rate == 0.1


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _multi_worker_run(data_dir, model_dir, max_steps):
    """Two local workers train to `max_steps`; returns their stderr."""
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    processes = []
    for index in range(2):
        env = dict(ENV, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        ))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "ciss_tf.train", *TINY, f"--data_dir={data_dir}",
             f"--model_dir={model_dir}", f"--max_steps={max_steps}",
             "--strategy=multi_worker"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    errors = []
    try:
        for process in processes:
            _, err = process.communicate(timeout=600)
            assert process.returncode == 0, err[-3000:]
            errors.append(err)
    finally:
        for process in processes:
            process.kill()
    return errors


@pytest.mark.slow
def test_multi_worker_trains_writes_one_checkpoint_and_resumes_from_the_chiefs(
        data_dir, tmp_path):
    model_dir = tmp_path / "mw"
    _multi_worker_run(data_dir, model_dir, 1)
    assert sorted(os.listdir(model_dir))[:1] == ["checkpoint"]
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-1")
    # The other worker's scratch copy is gone (a local disk): it resumes from the chief's
    # checkpoint, at the same step, instead of starting over and hanging the collectives.
    tf.io.gfile.rmtree(str(model_dir / "workers"))
    errors = _multi_worker_run(data_dir, model_dir, 2)
    for err in errors:
        assert f"Resumed from {model_dir / 'ckpt-1'} at step 1" in err
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-2")


def test_tensorboard_panel_shows_the_labels_evaluation_scores():
    # The panel's p-maps are the Segmenter's labels (corners aligned), not a half-pixel
    # resize of the same logits, which moves class boundaries by up to a few pixels.
    info = datasets.get_dataset_info("synthetic")
    model = varied_tiny_net(info.num_classes)
    images = tf.random.stateless_normal([1, 37, 53, 3], seed=[4, 2], stddev=60.0)
    preview = {"image": images, "label": tf.zeros([1, 37, 53], tf.int32)}
    cfg = TrainConfig(model=ModelConfig(preset="tiny"), model_dir=None, unroll_steps=2)
    panel = tasks.CissTask(cfg, info).image_panel(model, preview)
    expected = segmenter.Segmenter(model, (0, 1, 2)).labels(images).numpy()[:, 0]
    assert panel.shape == (3, 37, 4 * 53, 3)
    for t in range(3):
        np.testing.assert_array_equal(
            panel[t][:, 2 * 53:3 * 53], datasets.colorize(expected[t], info.palette), str(t)
        )
