"""ciss_tf.tools.command_flags: the flags the commands share and the inference tools' parser
of experiment flagfiles."""

import copy

import pytest
from absl import flags

from ciss_tf.tools import command_flags


def test_input_scale_must_be_positive():
    # A fresh copy of the shared flags, as a new command line parses them.
    flag_values = copy.deepcopy(flags.FLAGS)
    flag_values.unparse_flags()
    with pytest.raises(flags.IllegalFlagValueError,
                       match="--input_scale must be a positive number"):
        flag_values(["tool", "--input_scale=0"])


@pytest.mark.parametrize("form", ["one_argument", "two_arguments"])
def test_parse_flags_drops_training_flags_of_a_flagfile_in_either_form(tmp_path, monkeypatch,
                                                                      form):
    flag_values = flags.FlagValues()
    flags.DEFINE_string("checkpoint", None, "", flag_values=flag_values)
    flags.DEFINE_integer("num_steps", 0, "", flag_values=flag_values)
    monkeypatch.setattr(flags, "FLAGS", flag_values)
    flagfile = tmp_path / "experiment.flags"
    flagfile.write_text("--checkpoint=ckpt\n--stage=ciss\n--unroll_steps=8\n")
    directive = ([f"--flagfile={flagfile}"] if form == "one_argument"
                 else ["--flagfile", str(flagfile)])
    assert command_flags.parse_flags(["tool", *directive, "--num_steps", "2"]) == ["tool"]
    assert (flag_values.checkpoint, flag_values.num_steps) == ("ckpt", 2)


def test_parse_flags_names_a_flagfile_flag_without_its_file(monkeypatch):
    monkeypatch.setattr(flags, "FLAGS", flags.FlagValues())
    with pytest.raises(SystemExit, match="^error: .*--flagfile"):
        command_flags.parse_flags(["tool", "--flagfile"])
