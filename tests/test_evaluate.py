"""ciss_tf.evaluate, the command: an experiment's flagfile and one `error:` line on bad input
(what it runs, `evaluate_tool.run_evaluation`: test_evaluator.py)."""

from tests.helpers.cli import cli_error_line, run_cli


def test_cli_reports_bad_input_in_one_error_line(varied_checkpoint, tmp_path):
    flagfile = tmp_path / "experiment.flags"
    # --unroll_steps is a training flag: the evaluator skips it in a flagfile.
    flagfile.write_text("--preset=tiny\n--dataset=synthetic\n--unroll_steps=8\n")
    result = run_cli("ciss_tf.evaluate", f"--flagfile={flagfile}",
                     f"--data_dir={tmp_path}", f"--checkpoint={varied_checkpoint}",
                     "--eval_steps=0,two", f"--output_json={tmp_path / 'eval.json'}",
                     check=False)
    assert "--eval_steps" in cli_error_line(result)
    assert not (tmp_path / "eval.json").exists()
