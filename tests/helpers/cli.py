"""Running a command as a user would, and reading its one-line error."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What a command run by a test sees: the same quiet, CPU-only TensorFlow as the tests.
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def run_cli(module, *args, check=True, env=None, timeout=600):
    """Runs `python -m module args` from the repository root; returns the CompletedProcess.

    With `check`, a non-zero exit fails the test with the command's stderr tail. Keep it for
    what needs a process boundary: the error-line contract, `--help`, multi-worker runs.
    """
    result = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env or ENV,
        capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode:
        raise AssertionError(f"{module} failed:\n{result.stderr[-4000:]}")
    return result


def cli_error_line(result):
    """The `error: ...` line of a failed CLI run (a CompletedProcess or (code, out, err))."""
    if isinstance(result, subprocess.CompletedProcess):
        result = (result.returncode, result.stdout, result.stderr)
    returncode, _, stderr = result
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode != 0
    assert "Traceback" not in stderr
    assert lines[-1].startswith("error: "), stderr
    return lines[-1]
