"""The installed commands: every console script answers --help with its flags, quietly."""

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers.cli import ROOT

BIN = Path(sys.executable).parent

# Flags each command must list in its --help: its own and the shared ones it reads.
EXPECTED_FLAGS = {
    "ciss-train": ["max_steps", "unroll_steps", "base_learning_rate", "preset", "dataset"],
    "ciss-evaluate": ["checkpoint", "eval_steps", "eval_policy", "eval_scales", "preset"],
    "ciss-export": ["checkpoint", "export_dir", "num_steps", "input_scale", "preset"],
    "ciss-predict": ["checkpoint", "input", "output_dir", "input_scale", "preset"],
    "ciss-demo": ["workdir", "ablations", "seed", "data_dir"],
    "ciss-benchmark": ["preset", "output_json", "steps"],
    "ciss-import-pspnet": ["weights", "output", "preset"],
    "ciss-build-tfrecords": ["dataset", "input_dir", "output_dir"],
}
# What TensorFlow prints at start-up unless told otherwise.
STARTUP_NOISE = ("oneDNN", "cuda", "absl::InitializeLog")


def _quiet_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return dict(env, **extra)


def _run_all(commands):
    """Runs `{key: (argv, env)}` concurrently (each pays a TensorFlow import)."""
    processes = {
        key: subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        for key, (argv, env) in commands.items()
    }
    results = {}
    for key, process in processes.items():
        out, err = process.communicate(timeout=600)
        results[key] = (process.returncode, out, err)
    return results


def test_setup_declares_and_installs_every_command():
    declared = re.findall(r'"(ciss-[a-z-]+)=', (ROOT / "setup.py").read_text())
    installed = {
        ep.name for ep in importlib.metadata.distribution("ciss_tf").entry_points
        if ep.group == "console_scripts"
    }
    # Whether each target exists (ciss-demo once pointed at a missing function) is what
    # running the installed scripts below shows: they cannot all be imported in one process.
    assert sorted(declared) == sorted(EXPECTED_FLAGS) == sorted(installed)


def test_every_console_script_lists_its_flags_without_tensorflow_noise():
    commands = {name: ([str(BIN / name), "--help"], _quiet_env()) for name in EXPECTED_FLAGS}
    # A user who sets TF_CPP_MIN_LOG_LEVEL asks for TensorFlow's own lines: nothing is held.
    commands["verbose"] = ([str(BIN / "ciss-train"), "--help"],
                           _quiet_env(TF_CPP_MIN_LOG_LEVEL="0"))
    results = _run_all(commands)
    verbose = results.pop("verbose")
    for name, (_, out, err) in results.items():
        # absl's --help exits with status 1, as a crash would: the traceback tells them apart.
        assert "Traceback" not in err and "Try --helpfull" in out, f"{name}: {err[-2000:]}"
        for flag in EXPECTED_FLAGS[name]:
            assert f"  --{flag}:" in out, f"{name} --help does not list --{flag}"
        noise = [line for line in err.splitlines() if any(n in line for n in STARTUP_NOISE)]
        assert not noise, f"{name}: {noise}"
    assert "Trains PSPNet" in results["ciss-train"][1]  # the command's docstring as usage
    # Which lines TensorFlow prints depends on the CPU (no oneDNN line on every x86).
    assert any(n in verbose[2] for n in STARTUP_NOISE), verbose[2][-2000:]


_FAKE_TENSORFLOW = """
import os
os.write(2, b"fake tensorflow: missing libcudart\\n")
raise ImportError("fake tensorflow failed")
"""


def test_a_failing_tensorflow_import_shows_what_it_printed(tmp_path):
    # The held-back start-up lines are the diagnosis when the import itself fails.
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(_FAKE_TENSORFLOW)
    env = _quiet_env(PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    result = subprocess.run([sys.executable, "-c", "import ciss_tf"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "fake tensorflow: missing libcudart" in result.stderr
    assert "ImportError: fake tensorflow failed" in result.stderr
