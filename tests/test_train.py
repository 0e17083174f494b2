"""Training end to end through the CLI: over-fitting, distribution, resume, NaN guard, logs."""

import glob
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver
from conftest import varied_tiny_net

from ciss_tf import checkpoints, config, inference, train
from ciss_tf.data import datasets

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
    tags = set()
    for path in glob.glob(str(model_dir / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
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
        "model/" + key.replace("/", ".S") + "/.ATTRIBUTES/VARIABLE_VALUE": v.numpy()
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
from ciss_tf import train
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

@tf.function
def step(bad_replica):
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    value = tf.cast(replica + 1, tf.float32)
    first = tf.fill([3], value)
    first = tf.where(tf.equal(replica, bad_replica), first * np.inf, first)
    second = tf.fill([2], tf.cast(value, tf.float16))
    return train.poison_unless_all_replicas_finite([first, second])

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


def test_adamw_decays_conv_kernels_only_and_needs_one_learning_rate_group():
    conv = keras.layers.Conv2D(2, 1, name="conv")
    norm = keras.layers.BatchNormalization(name="bn")
    norm(conv(tf.ones([1, 1, 1, 3])))
    variables = conv.trainable_variables + norm.trainable_variables
    before = [v.numpy() for v in variables]
    if not train.FLAGS.is_parsed():  # flag defaults, as a command line without flags gives
        train.FLAGS.mark_as_parsed()
    with flagsaver.flagsaver(optimizer="adamw", stage="pspnet", weight_decay=0.1):
        optimizer = train.make_optimizer(0.5, variables)
        # A zero gradient leaves Adam's step at 0: only the decoupled decay moves weights.
        optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    for variable, value in zip(variables, before, strict=True):
        factor = 1 - 0.5 * 0.1 if "kernel" in variable.path else 1.0
        np.testing.assert_allclose(variable.numpy(), factor * value, rtol=1e-6,
                                   err_msg=variable.path)
    with flagsaver.flagsaver(optimizer="adamw", stage="ciss"):
        with pytest.raises(ValueError, match="--optimizer=adamw needs --stage=pspnet"):
            train.make_optimizer(0.5, variables)


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
    if not train.FLAGS.is_parsed():
        train.FLAGS.mark_as_parsed()
    with flagsaver.flagsaver(unroll_steps=2):
        panel = train._image_panel(SimpleNamespace(model=model, info=info), preview)
    expected = inference.Segmenter(model, (0, 1, 2)).labels(images).numpy()[:, 0]
    assert panel.shape == (3, 37, 4 * 53, 3)
    for t in range(3):
        np.testing.assert_array_equal(
            panel[t][:, 2 * 53:3 * 53], datasets.colorize(expected[t], info.palette), str(t)
        )
