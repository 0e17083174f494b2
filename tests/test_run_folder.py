"""training/run_folder.py and the inference tools' settings: a run folder is the experiment."""

import copy
import json

import pytest
from absl import flags

from ciss_tf import train as train_command
from ciss_tf.modeling import config
from ciss_tf.tools import command_flags, evaluate_tool
from ciss_tf.training import run_folder
from ciss_tf.training.config import TrainConfig
from tests.helpers.cli import run_cli
from tests.helpers.training_runs import config as tiny_config
from tests.helpers.training_runs import train

# Every sub-config away from its defaults, so that a field lost on the way fails.
EVERYTHING = [
    "--stage=pspnet", "--preset=tiny", "--dataset=camvid", "--context_mode=random",
    "--random_keep_rate=0.3", "--stem=resnet", "--context_encoder_norm=batch_per_replica",
    "--dropout=0.2", "--crop_size=40,56", "--min_scale=0.6", "--max_scale=1.4",
    "--batch_size=6", "--augmentation=original", "--optimizer=adamw", "--momentum=0.8",
    "--weight_decay=0.02", "--lr_power=0.8", "--base_learning_rate=0.03",
    "--context_learning_rate=0.004", "--context_net_learning_rate=0.005", "--gamma=0.7",
    "--lambda1=0.9", "--lambda2=0.06", "--beta1=0.5", "--beta2=0.1", "--reward_window=3",
    "--unlabelled_reward=original", "--max_steps=9", "--unroll_steps=3", "--seed=4",
    "--input_scale=0.5", "--init_checkpoint=/a/b", "--base_init=pspnet",
    "--model_dir=/m", "--data_dir=/d", "--backprop=per_step", "--grad_accum_steps=2",
    "--loss_reduction=sum", "--checkpoint_every=3", "--log_every=2", "--eval_every=5",
    "--imagenet_weights=/w.h5", "--strategy=mirrored", "--num_cpu_devices=2", "--jit_compile",
    "--mixed_precision=mixed_bfloat16", "--initial_loss_scale=8", "--deterministic",
    "--stop_at_step=7", "--max_to_keep=2", "--image_summary_every=3", "--eval_images=4",
]


def _leaves(values, prefix=""):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def test_every_setting_has_its_flag():
    # EVERYTHING moves every field but the backbone (one is registered for the command
    # line): each reached the config through its flag (`command_flags.config_from_flags`).
    defaults = dict(_leaves(run_folder.to_dict(TrainConfig(model=config.ModelConfig(),
                                                           model_dir=None))))
    given = dict(_leaves(run_folder.to_dict(train_command.parse_config(EVERYTHING))))
    assert sorted(k for k in given if given[k] == defaults[k]) == ["model.backbone"]


def test_a_config_survives_its_json_whole():
    cfg = train_command.parse_config(EVERYTHING)
    values = json.loads(json.dumps(run_folder.to_dict(cfg)))
    assert run_folder.from_dict(type(cfg), values, "config.json") == cfg
    assert values["data"]["crop_size"] == [40, 56] and values["model"]["stem"] == "resnet"


def test_an_unknown_setting_is_refused_naming_the_file():
    values = run_folder.to_dict(train_command.parse_config(["--model_dir=/m"]))
    values["data"]["crop"] = 3
    with pytest.raises(ValueError, match=r"run/config.json: unknown setting 'crop'"):
        run_folder.from_dict(type(train_command.parse_config(["--model_dir=/m"])), values,
                             "run/config.json")


def test_resume_refuses_another_model_and_records_other_changes(synthetic_records, tmp_path):
    model_dir = tmp_path / "run"
    train(synthetic_records, model_dir, "--max_steps=1")
    saved = json.loads((model_dir / run_folder.CONFIG_FILE).read_text())
    assert saved["max_steps"] == 1 and saved["model"]["preset"] == "tiny"
    for flag, message in [("--preset=small", "model.preset was tiny, now small"),
                          ("--context_mode=none", "model.context_mode was learned, now none"),
                          ("--dataset=camvid", "data.dataset was synthetic, now camvid")]:
        with pytest.raises(ValueError, match=f"holds a run of another model \\({message}\\)"):
            run_folder.check_resume(tiny_config(synthetic_records, model_dir, flag))
    # Other settings: allowed, the change recorded with the step it took effect at (what
    # the trainer does when it resumes at step 1).
    resumed = tiny_config(synthetic_records, model_dir, "--max_steps=2", "--log_every=2")
    run_folder.check_resume(resumed)
    run_folder.record(resumed, 1)
    changes = [json.loads(line) for line in
               (model_dir / run_folder.CHANGES_FILE).read_text().splitlines()]
    assert changes == [{"step": 1, "changed": {"log_every": [1, 2], "max_steps": [1, 2]}}]
    assert json.loads((model_dir / run_folder.CONFIG_FILE).read_text())["max_steps"] == 2


def _settings(checkpoint, *args):
    """`command_flags.inference_settings` under the command line `args`."""
    flag_values = copy.deepcopy(flags.FLAGS)
    flag_values.unparse_flags()
    flag_values(["tool", *args])
    return command_flags.inference_settings(checkpoint, flag_values)


@pytest.fixture(scope="module")
def stage2_run(synthetic_records, tmp_path_factory):
    """A stage-2 run trained with a batch-norm Context Net, T = 2 and input scale 0.5."""
    model_dir = tmp_path_factory.mktemp("stage2") / "run"
    train(synthetic_records, model_dir, "--max_steps=1", "--context_encoder_norm=batch",
          "--input_scale=0.5", "--dropout=0.2")
    return str(model_dir)


def test_a_run_brings_its_settings_and_flags_override_what_they_name(stage2_run,
                                                                       synthetic_records):
    trained = run_folder.read_config(stage2_run)
    for checkpoint in (stage2_run, f"{stage2_run}/ckpt-1"):
        settings = _settings(checkpoint)
        assert settings.model == trained.model and settings.model.preset == "tiny"
        assert (settings.dataset, settings.unroll_steps, settings.input_scale,
                settings.data_dir, settings.run_dir) == (
                    "synthetic", 2, 0.5, synthetic_records, stage2_run)
    settings = _settings(stage2_run, "--unroll_steps=5", "--input_scale=1.5",
                         "--context_mode=none", "--context_encoder_norm=batch_per_replica",
                         "--data_dir=/x")
    assert (settings.unroll_steps, settings.input_scale, settings.data_dir) == (5, 1.5, "/x")
    assert (settings.model.context_mode, settings.model.context_encoder_norm) == (
        "none", "batch_per_replica")
    assert settings.model.preset == "tiny"  # not the flag's default resnet50


@pytest.mark.parametrize("flag, message", [
    ("--preset=small", "--preset=small contradicts the run .* --preset=tiny"),
    ("--context_encoder_norm=group", "--context_encoder_norm=group contradicts"),
    ("--stem=resnet", "--stem=resnet contradicts"),
    ("--stage=pspnet", "--stage=pspnet contradicts"),
    ("--dataset=camvid", "--dataset=camvid \\(11 classes\\) contradicts"),
])
def test_an_override_the_trained_variables_cannot_take_is_refused(stage2_run, flag, message):
    with pytest.raises(ValueError, match=message):
        _settings(stage2_run, flag)


def test_a_bare_checkpoint_takes_everything_from_the_flags(varied_checkpoint):
    settings = _settings(varied_checkpoint, "--preset=tiny", "--input_scale=0.75")
    assert settings.run_dir is None
    assert settings.model == config.ModelConfig(preset="tiny")
    assert (settings.input_scale, settings.dataset) == (0.75, "synthetic")


def test_evaluate_scores_a_run_without_its_flagfile_as_with_it(stage2_run, synthetic_records,
                                                                tmp_path):
    # The command with the run folder alone, against the tool given the settings the
    # experiment's flagfile would (GroupNorm and scale 1, the flags' defaults, cannot
    # even read this run: the run folder is what supplies them).
    output = tmp_path / "alone.json"
    run_cli("ciss_tf.evaluate", f"--checkpoint={stage2_run}", "--eval_steps=0,2",
            f"--output_json={output}")
    alone = json.loads(output.read_text())
    with_flagfile = evaluate_tool.run_evaluation(evaluate_tool.EvalConfig(
        model=config.ModelConfig(preset="tiny", context_encoder_norm="batch"),
        checkpoint=stage2_run, data_dir=synthetic_records, dataset="synthetic",
        eval_steps=(0, 2), scales=(0.5,),
    ))
    assert alone["steps"] == evaluate_tool.json_ready(with_flagfile["steps"])
    assert alone["eval_scales"] == [0.5] and alone["num_images"] == 2


def test_predict_and_export_refuse_a_stage1_run(synthetic_records, tmp_path):
    model_dir = tmp_path / "pspnet"
    run_folder.record(tiny_config(synthetic_records, model_dir, "--stage=pspnet"), 0)
    assert _settings(str(model_dir)).model.stage == "pspnet"
    with pytest.raises(ValueError, match="a stage-1 PSPNet run; export takes a stage-2"):
        flag_values = copy.deepcopy(flags.FLAGS)
        flag_values.unparse_flags()
        flag_values(["export"])
        command_flags.stage2_settings(str(model_dir), "export", flag_values)
