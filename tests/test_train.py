"""`python -m ciss_tf.train` itself: bad input ends the command with one error line.

What the command runs (`training.trainer.train` of `train.parse_config(argv)`) is tested in
process by the files of the training modules: test_trainer.py, test_optimizers.py,
test_tasks.py, test_summaries.py.
"""

from tests.helpers.cli import cli_error_line, run_cli
from tests.helpers.training_runs import TINY


def test_a_missing_data_dir_gives_one_error_line(tmp_path):
    result = run_cli(
        "ciss_tf.train", *TINY, f"--data_dir={tmp_path / 'missing'}",
        f"--model_dir={tmp_path / 'm'}", "--max_steps=1", check=False,
    )
    # A non-zero exit, no traceback, and the last line names the missing folder.
    assert result.returncode != 0
    assert "missing" in cli_error_line(result)
