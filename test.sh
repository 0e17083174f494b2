#!/usr/bin/env bash
# Sets up .venv (first run only), then lints and runs the test suite.
# Extra arguments go to pytest, e.g. `bash test.sh -m slow` for the long runs.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import ciss_tf, pytest, ruff" 2>/dev/null \
    || [ setup.py -nt .venv/.installed ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[test]"
  touch .venv/.installed
fi
.venv/bin/ruff check --config .ci/ruff.toml .
exec .venv/bin/python -m pytest -c .ci/pytest.ini --rootdir=. "$@"
