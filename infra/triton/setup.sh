#!/usr/bin/env bash
# The Triton server venv: the Triton 2.51 binary shipped in the nvidia-pytriton wheel, plus what
# the Python ONNX Runtime backend needs. Triton pins numpy<2, so it gets its own venv.
# Idempotent: a stamp file records a finished install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MEDOPS_TRITON_VENV:-$ROOT/.venv-triton}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
STAMP="$VENV/.medops-triton-installed"
REQS="nvidia-pytriton==0.7.0 onnxruntime>=1.20,<1.23 numpy<2"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$REQS" ]]; then
  exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/pip" install --quiet $REQS
"$VENV/bin/python" - <<'PY'
import pathlib, pytriton
binary = pathlib.Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
assert binary.is_file(), f"tritonserver binary not found at {binary}"
PY
echo "$REQS" > "$STAMP"
echo "Triton venv ready at $VENV"
