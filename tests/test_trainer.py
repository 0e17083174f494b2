"""`training.trainer` in process: 2 replicas = 1 device, exact resume, the NaN guard, errors."""

import glob
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.data import input_pipeline
from ciss_tf.evaluation import evaluator
from ciss_tf.modeling import checkpoints, config
from ciss_tf.training import run_folder, trainer
from tests.helpers.cli import ENV, ROOT
from tests.helpers.training_runs import (
    TINY,
    assert_same_weights,
    new_collective_keys,
    scalars,
    train,
    weights,
)


@pytest.fixture
def log(caplog):
    """The trainer's log lines (absl: "Resumed from", the progress lines)."""
    caplog.set_level(logging.INFO, logger="absl")
    return caplog


def test_two_replicas_equal_one_device(synthetic_records, tmp_path):
    # Three SGD steps with momentum and a weight decay large enough to matter: counted once
    # per replica instead of once in all (the division by the replicas dropped), the
    # kernels move by about 1e-3 more than here (tried); the two runs agree to 1e-5.
    common = ["--max_steps=3", "--checkpoint_every=3", "--dropout=0", "--deterministic",
              "--weight_decay=0.5", "--momentum=0.9"]
    train(synthetic_records, tmp_path / "one", *common)
    train(synthetic_records, tmp_path / "two", *common, "--num_cpu_devices=2")
    one, two = weights(tmp_path / "one", 3), weights(tmp_path / "two", 3)
    # Same global batch, same per-example action noise: the update agrees to float rounding.
    assert_same_weights(one, two, atol=1e-5)
    # The frozen feature net is bit-identical to its initialisation (same seed, built as the
    # trainer builds it); the Base Net moved.
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


def test_resume_equals_uninterrupted(synthetic_records, tmp_path, log):
    common = ["--max_steps=4", "--checkpoint_every=2", "--deterministic"]
    # The straight run also evaluates periodically: its summary at step 4 must be the
    # scores of that step's weights.
    train(synthetic_records, tmp_path / "straight", *common, "--eval_every=4",
          "--eval_images=2")
    assert_periodic_eval_scores_the_checkpoint(synthetic_records, tmp_path / "straight", 4, 2)
    train(synthetic_records, tmp_path / "resumed", *common, "--stop_at_step=2")
    assert tf.train.latest_checkpoint(str(tmp_path / "resumed")).endswith("ckpt-2")
    log.clear()
    train(synthetic_records, tmp_path / "resumed", *common)
    assert any(m.startswith("Resumed from") for m in log.messages)
    assert_same_weights(
        weights(tmp_path / "straight", 4), weights(tmp_path / "resumed", 4), atol=1e-6
    )
    reader = tf.train.load_checkpoint(str(tmp_path / "resumed" / "ckpt-4"))
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 4


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_records, tmp_path):
    # Two good steps, then a learning rate that diverges: the run stops at the first
    # non-finite loss, names the last good checkpoint, and writes none of the diverged
    # weights (here the loss turns NaN first; without the guard the NaN weights are saved).
    model_dir = tmp_path / "diverged"
    train(synthetic_records, model_dir, "--max_steps=2", "--checkpoint_every=1")
    with pytest.raises(trainer.NonFiniteLossError) as error:
        train(synthetic_records, model_dir, "--max_steps=8", "--checkpoint_every=1",
              "--base_learning_rate=1e38", "--context_learning_rate=1e38")
    message = str(error.value)
    match = re.match(r"loss is (nan|inf|-inf) at step (\d+)", message)
    assert match, message
    failed = int(match[2])
    saved = sorted(int(p.split("ckpt-")[1].split(".")[0])
                   for p in glob.glob(str(model_dir / "ckpt-*.index")))
    assert saved == list(range(1, failed)) and failed > 2, (message, saved)
    assert f"last good checkpoint: {model_dir / f'ckpt-{failed - 1}'}" in message
    for step in saved:
        for name, value in weights(model_dir, step).items():
            if value.dtype.kind == "f":
                assert np.isfinite(value).all(), (step, name)


def test_non_finite_weights_are_never_saved(synthetic_records, tmp_path, monkeypatch):
    # The last line of defence before each save: weights found non-finite after step 2
    # stop the run there, and ckpt-2 is not written.
    monkeypatch.setattr(trainer.Trainer, "weights_are_finite",
                        lambda self: int(self.step.numpy()) < 2)
    model_dir = tmp_path / "w"
    with pytest.raises(trainer.NonFiniteLossError, match="non-finite weights at step 2; "
                       "checkpoint not written"):
        train(synthetic_records, model_dir, "--max_steps=3", "--checkpoint_every=1")
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-1")
    assert not glob.glob(str(model_dir / "ckpt-2*"))


def test_settings_that_make_no_run_are_refused_naming_the_flag(synthetic_records, tmp_path):
    # Refused before anything is written (`python -m ciss_tf.train` turns the ValueError into
    # its one error line: test_train.py).
    with pytest.raises(ValueError) as error:
        train(synthetic_records, tmp_path / "m", "--batch_size=3", "--num_cpu_devices=2")
    assert "--batch_size=3" in str(error.value)
    with pytest.raises(ValueError, match="--unroll_steps"):
        train(synthetic_records, tmp_path / "n", "--unroll_steps=0")
    assert not (tmp_path / "n").exists()


def assert_periodic_eval_scores_the_checkpoint(data_dir, model_dir, step, images):
    """The eval summaries at `step` equal an evaluation of `ckpt-<step>` in this process."""
    logged = scalars(model_dir, "eval")
    steps = sorted(int(tag[len("miou/t"):]) for tag, at in logged
                   if tag.startswith("miou/") and at == step)
    assert steps and steps[0] == 0
    model, _, _ = run_folder.load_model(str(model_dir))
    checkpoints.restore_model(model, str(model_dir / f"ckpt-{step}"))
    pattern = input_pipeline.split_file_pattern(str(data_dir), "val")
    expected = evaluator.evaluate_model(
        model, input_pipeline.eval_dataset(pattern, num_classes=8).take(images),
        num_classes=8, eval_steps=steps,
    )
    for t in steps:
        assert logged[f"miou/t{t}", step] == pytest.approx(expected["steps"][str(t)]["miou"],
                                                           abs=1e-6)


def test_sum_over_workers_counts_each_worker_once():
    # One worker with two replicas: its array enters once, not once per replica.
    new_collective_keys()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    array = np.array([3, 0, 7, 2**40], np.int64)
    np.testing.assert_array_equal(trainer.sum_over_workers(strategy, array), array)


def _free_ports(count):
    """`count` distinct free ports (all bound at once, so never the same one twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _multi_worker_run(data_dir, model_dir, max_steps, *args, attempts=3):
    """Two local workers train to `max_steps`; returns their stderr.

    Free ports are found by binding and releasing them, so another process can take one
    before a worker binds it: when a worker fails (a taken port fails at start-up, before
    anything is written) the other is stopped, and a bind failure is retried on new ports.
    """
    for attempt in range(attempts):
        ports = _free_ports(2)
        cluster = {"worker": [f"localhost:{p}" for p in ports]}
        processes, logs = [], []
        for index in range(2):
            env = dict(ENV, TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ))
            logs.append(tempfile.TemporaryFile("w+"))
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "ciss_tf.train", *TINY, f"--data_dir={data_dir}",
                 f"--model_dir={model_dir}", f"--max_steps={max_steps}",
                 "--strategy=multi_worker", *args],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=logs[-1], text=True,
            ))
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline and any(p.poll() is None for p in processes):
                if any(p.poll() for p in processes):  # one failed: the other would hang
                    break
                time.sleep(0.5)
        finally:
            for process in processes:
                process.kill()
                process.wait()
        errors = []
        for log in logs:
            log.seek(0)
            errors.append(log.read())
            log.close()
        codes = [p.returncode for p in processes]
        if any(codes) and attempt + 1 < attempts and any(
                "Address already in use" in err or "Failed to bind" in err for err in errors):
            continue
        # A worker's own failure first, then one stopped because of it (killed: negative).
        for code, err in sorted(zip(codes, errors, strict=True), key=lambda ce: ce[0] < 0):
            assert code == 0, err[-3000:]
        return errors
    raise AssertionError("unreachable")


@pytest.mark.slow
def test_multi_worker_trains_writes_one_checkpoint_and_resumes_from_the_chiefs(
        synthetic_records, tmp_path):
    # Two worker processes (MultiWorkerMirroredStrategy reads TF_CONFIG at start-up).
    model_dir = tmp_path / "mw"
    _multi_worker_run(synthetic_records, model_dir, 1)
    assert sorted(os.listdir(model_dir))[:1] == ["checkpoint"]
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-1")
    # The other worker's scratch copy is gone (a local disk): it resumes from the chief's
    # checkpoint, at the same step, instead of starting over and hanging the collectives.
    tf.io.gfile.rmtree(str(model_dir / "workers"))
    # With periodic evaluation: each worker scores one of the two val images; the chief's
    # summary holds the scores of both, summed over the workers.
    errors = _multi_worker_run(synthetic_records, model_dir, 2, "--eval_every=2",
                               "--eval_images=2")
    for err in errors:
        assert f"Resumed from {model_dir / 'ckpt-1'} at step 1" in err
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-2")
    assert_periodic_eval_scores_the_checkpoint(synthetic_records, model_dir, 2, 2)


@pytest.mark.slow
def test_multi_worker_trains_with_xla(synthetic_records, tmp_path):
    # XLA compiles each worker's gradient computation; the all-reduce and the update run
    # outside it (the whole step inside failed with several replicas).
    model_dir = tmp_path / "mw_xla"
    _multi_worker_run(synthetic_records, model_dir, 2, "--jit_compile")
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-2")
    step_weights = weights(model_dir, 2)
    assert all(np.isfinite(v).all() for v in step_weights.values() if v.dtype.kind == "f")
