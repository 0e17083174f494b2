"""modeling/backbones.py, the backbone seam: a second backbone defined only here trains,
evaluates and exports by config alone; what knows the ResNet's inside refuses or falls back."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.convert import imagenet
from ciss_tf.modeling import backbones, config
from ciss_tf.serving import exporter
from ciss_tf.serving.fast_inference import FastCissNet
from ciss_tf.tools import evaluate_tool, export_tool
from ciss_tf.training import run_folder
from ciss_tf.training.config import DataConfig, TrainConfig
from tests.helpers.training_runs import run


class PlainBackbone(keras.layers.Layer):
    """Three stride-2 convs (`mid`, output stride 8), then a dilated conv (`last`)."""

    def __init__(self, width=8, freeze_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.freeze_bn = freeze_bn
        self.convs = [keras.layers.Conv2D(width * 2**min(i, 1), 3, strides=2, padding="same",
                                          name=f"down{i}") for i in range(3)]
        self.norm = keras.layers.BatchNormalization(name="bn")
        self.last = keras.layers.Conv2D(width * 4, 3, dilation_rate=2, padding="same",
                                        name="last")

    @property
    def output_channels(self):
        return self.width * 2, self.width * 4

    def build(self, input_shape):
        channels = input_shape[-1]
        for conv in self.convs:
            conv.build((None, None, None, channels))
            channels = conv.filters
        self.norm.build((None, None, None, channels))
        self.last.build((None, None, None, channels))

    def call(self, images, training=False):
        x = images
        for conv in self.convs:
            x = tf.nn.relu(conv(x))
        mid = self.norm(x, training=training and not self.freeze_bn)
        return mid, tf.nn.relu(self.last(mid))

    def get_config(self):
        return {**super().get_config(), "width": self.width, "freeze_bn": self.freeze_bn}


backbones.register("plain_test", PlainBackbone, lambda preset, stem: {"width": preset.width})
MODEL = config.ModelConfig(stage="ciss", preset="tiny", backbone="plain_test")


def test_the_contract_output_stride_8_and_channels():
    for stage in ("pspnet", "ciss"):
        net = config.build_model(dataclasses.replace(MODEL, stage=stage), 5, (33, 47))
        assert type(net.feature_net.backbone) is PlainBackbone
        assert net.feature_net.backbone.width == config.PRESETS["tiny"].width
        out = net(tf.zeros([2, 33, 47, 3]), **({"num_steps": 1} if stage == "ciss" else {}))
        logits = out["logits"][-1] if stage == "ciss" else out["logits"]
        assert logits.shape == (2, 5, 6, 5)  # ceil(33 / 8), ceil(47 / 8), as the ResNet
    assert backbones.name_of(net.feature_net.backbone) == "plain_test"
    with pytest.raises(ValueError, match="already registered"):
        backbones.register("plain_test", keras.layers.Layer, lambda preset, stem: {})
    with pytest.raises(ValueError, match="--backbone=resnet: not one of"):
        config.ModelConfig(backbone="resnet")


def test_a_second_backbone_trains_evaluates_and_exports_by_config_alone(synthetic_records,
                                                                         tmp_path):
    def train(stage, folder, **settings):
        cfg = TrainConfig(
            model=dataclasses.replace(MODEL, stage=stage), model_dir=str(tmp_path / folder),
            data=DataConfig(data_dir=synthetic_records, crop_size=(48, 48), batch_size=2),
            max_steps=2, unroll_steps=1, image_summary_every=0, **settings,
        )
        run(cfg)
        return cfg

    stage1 = train("pspnet", "pspnet")
    stage2 = train("ciss", "ciss", init_checkpoint=stage1.model_dir)
    model, path, trained = run_folder.load_model(stage2.model_dir)
    assert trained.model.backbone == "plain_test" and path.endswith("ckpt-2")
    # Stage 2 read the frozen feature net from stage 1 through the seam, unchanged.
    stage1_model, _, _ = run_folder.load_model(stage1.model_dir)
    for ours, theirs in zip(model.feature_net.variables, stage1_model.feature_net.variables,
                            strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())

    report = evaluate_tool.run_evaluation(evaluate_tool.EvalConfig(
        model=trained.model, checkpoint=stage2.model_dir, data_dir=synthetic_records,
        dataset="synthetic", eval_steps=(1,),
    ))
    # The fast path knows only the ResNet: asked for, the export serves the plain model.
    with pytest.raises(ValueError, match="dilated_resnet backbone only, not plain_test"):
        FastCissNet(model)
    version = export_tool.export_checkpoint(
        trained.model, "synthetic", stage2.model_dir, str(tmp_path / "export"), num_steps=1,
        fast=True,
    )
    served = exporter.score_export(version, f"{synthetic_records}/val-*", 8)
    np.testing.assert_allclose(served["miou"], report["steps"]["1"]["miou"], atol=1e-6)


def test_the_imagenet_initialisation_refuses_another_backbone(tmp_path):
    net = config.build_model(dataclasses.replace(MODEL, stage="pspnet"), 5)
    with pytest.raises(ValueError, match="fit the dilated_resnet backbone, not plain_test"):
        imagenet.load_keras_resnet_weights(net.feature_net.backbone, str(tmp_path / "w.h5"),
                                           depth=50)
