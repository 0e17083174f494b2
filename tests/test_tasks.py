"""`training.tasks`: what each stage initialises, trains in which group, and draws."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.data import datasets
from ciss_tf.evaluation import segmenter
from ciss_tf.modeling import checkpoints, config
from ciss_tf.modeling.config import ModelConfig
from ciss_tf.training import tasks
from ciss_tf.training.config import OptimizerConfig, TrainConfig
from tests.helpers.nets import varied_tiny_net
from tests.helpers.training_runs import train


def test_base_init_pspnet_copies_the_stage1_head_into_the_base_net(synthetic_records, tmp_path):
    keras.utils.set_random_seed(7)
    pspnet = config.build_pspnet(8, "tiny")
    pspnet(tf.zeros([1, 48, 48, 3]))
    # Non-trivial norm values in the head, to show they are not what the Base Net gets.
    pspnet.head.norm.gamma.assign(tf.fill(pspnet.head.norm.gamma.shape, 3.0))
    pspnet.head.norm.beta.assign(tf.fill(pspnet.head.norm.beta.shape, -2.0))
    prefix = checkpoints.save_model(pspnet, str(tmp_path / "stage1" / "ckpt-1"))
    model_dir = tmp_path / "run"
    # Rates 0: the checkpoint of step 1 holds the initial weights.
    train(synthetic_records, model_dir, "--max_steps=1", f"--init_checkpoint={prefix}",
          "--base_init=pspnet", "--base_learning_rate=0", "--context_learning_rate=0")
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
    # Without a stage-1 checkpoint to copy from: refused before anything is written.
    with pytest.raises(ValueError) as error:
        train(synthetic_records, tmp_path / "bad", "--max_steps=1", "--base_init=pspnet")
    assert str(error.value).startswith("--base_init=pspnet"), error.value
    assert not (tmp_path / "bad").exists()


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
