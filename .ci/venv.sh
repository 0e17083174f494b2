# Sourced by test.sh and demo.sh: creates .venv on first use and installs the project into
# it (again whenever setup.py changes). Needs only Python 3.10+ with venv and pip.
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import ciss_tf, pytest, ruff, xdist" 2>/dev/null \
    || [ setup.py -nt .venv/.installed ]; then
  echo "Installing ciss_tf and its dependencies into .venv (first run: a few minutes)..."
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[test]"
  touch .venv/.installed
fi
