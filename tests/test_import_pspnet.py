"""ciss_tf.convert.import_pspnet, the command: official weights to a stage-1 checkpoint that
stage 2 and evaluation read, and one `error:` line on bad input (the conversion itself:
test_pspnet_weights.py)."""

import numpy as np
import pytest
import tensorflow as tf

from ciss_tf.convert import import_pspnet
from ciss_tf.modeling import checkpoints, config
from tests.helpers.cli import cli_error_line, run_cli
from tests.helpers.pspnet_reference import SIDE, TINY, caffemodel_bytes, random_weights, without


def test_writes_a_checkpoint_that_stage_2_and_evaluation_accept(tmp_path, capsys):
    weights = random_weights(TINY, 8, seed=7)
    good = tmp_path / "pspnet_tiny.caffemodel"
    good.write_bytes(caffemodel_bytes(weights))
    output = tmp_path / "imported" / "ckpt"
    report = import_pspnet.import_checkpoint(
        config.ModelConfig(stage="pspnet", preset="tiny"), "synthetic", str(good), str(output)
    )

    lines = capsys.readouterr().out.splitlines()
    assert lines[:-1] == report.lines()  # the whole mapping report is printed
    assert "mapped   conv1_1_3x3_s2/weights (3, 3, 3, 8) -> " \
        "feature_net/backbone/conv1_1_3x3/conv/kernel" in lines
    assert "kept     aux_head/classifier/bias (no counterpart in the official models: " \
        "initial value)" in lines
    # 25 conv kernels, 24 batch norms of 4 tensors, the classifier's bias.
    assert lines[-2] == "122 tensors mapped, 0 skipped, 7 variables kept at initialisation"
    assert lines[-1] == f"wrote {output} (tiny, 8 classes of synthetic)"

    net = config.build_ciss_net(8, "tiny")
    net(tf.zeros([1, SIDE, SIDE, 3]), num_steps=1)
    checkpoints.restore_feature_net(net, str(output))
    assert net.feature_net.backbone.stem[0].conv.kernel.numpy() == pytest.approx(
        weights["conv1_1_3x3_s2"]["weights"]
    )
    np.testing.assert_array_equal(
        net.feature_net.ppm.norms[3].moving_variance, weights["conv5_1_pool6_conv_bn"]["variance"]
    )
    pspnet = config.build_model(config.ModelConfig(stage="pspnet", preset="tiny"), 8)
    checkpoints.restore_model(pspnet, str(output))  # every variable is there
    np.testing.assert_array_equal(pspnet.head.classifier.bias, weights["conv6"]["biases"])


def test_cli_reports_bad_input_in_one_error_line(tmp_path):
    bad = tmp_path / "missing.npy"
    np.save(bad, without(random_weights(TINY, 8, seed=7), "conv2_1_1x1_increase"))
    result = run_cli("ciss_tf.convert.import_pspnet", "--preset=tiny", "--dataset=synthetic",
                     f"--weights={bad}", f"--output={tmp_path / 'never' / 'ckpt'}",
                     check=False)
    assert cli_error_line(result) == (f"error: {bad}: 1 tensor(s) missing or mis-shaped: "
                                      "conv2_1_1x1_increase missing")
    assert not (tmp_path / "never").exists()
