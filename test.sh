#!/usr/bin/env bash
# Sets up .venv (first run only), then lints and runs the test suite.
# Extra arguments go to pytest, e.g. `bash test.sh -m slow` for the long runs.
set -euo pipefail
cd "$(dirname "$0")"
source .ci/venv.sh
.venv/bin/ruff check --config .ci/ruff.toml .
exec .venv/bin/python -m pytest -c .ci/pytest.ini --rootdir=. "$@"
