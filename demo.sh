#!/usr/bin/env bash
# Sets up .venv (first run only), then runs the embedded demo on the CPU.
# Extra arguments go to the demo, e.g. `bash demo.sh --workdir=/tmp/demo --ablations=all`.
set -euo pipefail
cd "$(dirname "$0")"
source .ci/venv.sh
exec .venv/bin/python -m ciss_tf.demo "$@"
