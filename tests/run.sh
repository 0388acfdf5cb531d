#!/usr/bin/env bash
# Set up a fresh machine (torch's CPU build unless a torch is installed) and run the whole test suite, with the
# dependency versions of constraints.txt (the set the suite last passed with).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# A bare `pip install torch` from PyPI is the CUDA build (several GB); the tests need only the CPU one. Where the
# package index offers a CPU wheel (as on our CI machines) the pin takes it; elsewhere set TORCH_INDEX_URL to
# PyTorch's CPU index (https://download.pytorch.org/whl/cpu).
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
"$PY" -m pip install -c constraints.txt -e ".[test]"
# Two processes, each taking whole test files: most of the suite's time is spent waiting on servers it started.
exec "$PY" -m pytest -n 2 --dist loadfile "$@"
