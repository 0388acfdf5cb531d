#!/usr/bin/env bash
# Set up a fresh machine (CPU torch unless one is installed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install "torch==2.13.0"
"$PY" -m pip install -e ".[test]"
command -v ffmpeg >/dev/null || true  # imageio-ffmpeg ships its own ffmpeg binary
exec "$PY" -m pytest "$@"
