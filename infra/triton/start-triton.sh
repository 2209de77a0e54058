#!/usr/bin/env bash
# Start the Triton 2.51 server from .venv-triton on a model repository, on CPU.
#
#   infra/triton/start-triton.sh --repository DIR [--http-port 8000] [--grpc-port 8001]
#       [--metrics-port 8002] [--work-dir DIR] [--poll-secs N] [-- extra tritonserver flags]
#
# The server runs in the foreground (exec), so the caller's PID is Triton's PID. Models are read
# with `--model-config-name=cpu` (configs/cpu.pbtxt, KIND_CPU, written by the export); a model
# that has only a KIND_GPU config.pbtxt is served from a copy rewritten to KIND_CPU.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${MEDOPS_TRITON_VENV:-$ROOT/.venv-triton}"
REPOSITORY="" HTTP_PORT=8000 GRPC_PORT=8001 METRICS_PORT=8002 WORK_DIR="" POLL_SECS=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --repository) REPOSITORY="$2"; shift 2 ;;
    --http-port) HTTP_PORT="$2"; shift 2 ;;
    --grpc-port) GRPC_PORT="$2"; shift 2 ;;
    --metrics-port) METRICS_PORT="$2"; shift 2 ;;
    --work-dir) WORK_DIR="$2"; shift 2 ;;
    --poll-secs) POLL_SECS="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "start-triton.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n "$REPOSITORY" && -d "$REPOSITORY" ]] || { echo "start-triton.sh: --repository DIR is required" >&2; exit 2; }
[[ -x "$VENV/bin/python" ]] || { echo "start-triton.sh: $VENV missing; run infra/triton/setup.sh" >&2; exit 2; }
REPOSITORY="$(cd "$REPOSITORY" && pwd)"
WORK_DIR="${WORK_DIR:-$(mktemp -d -t medops-triton.XXXXXX)}"
mkdir -p "$WORK_DIR"

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
LIBDIR="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
PYVER="$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
TRITON="$SITE/pytriton/tritonserver"

# Backends: Triton's Python backend with the stub for this interpreter, and our ONNX Runtime
# backend written in Python.
BACKENDS="$WORK_DIR/backends"
mkdir -p "$BACKENDS/python" "$BACKENDS/onnxruntime"
cp -f "$TRITON/backends/python/libtriton_python.so" "$TRITON/backends/python/triton_python_backend_utils.py" "$BACKENDS/python/"
cp -f "$TRITON/python_backend_stubs/$PYVER/triton_python_backend_stub" "$BACKENDS/python/"
cp -f "$HERE/backends/onnxruntime/model.py" "$BACKENDS/onnxruntime/model.py"

# A KIND_GPU-only model cannot load without a GPU: serve a KIND_CPU copy of the repository.
needs_copy=0
for config in "$REPOSITORY"/*/config.pbtxt; do
  [[ -f "$config" ]] || continue
  model_dir="$(dirname "$config")"
  if grep -q KIND_GPU "$config" && [[ ! -f "$model_dir/configs/cpu.pbtxt" ]]; then needs_copy=1; fi
done
if [[ $needs_copy == 1 ]]; then
  rm -rf "$WORK_DIR/repository"
  cp -r "$REPOSITORY" "$WORK_DIR/repository"
  sed -i 's/KIND_GPU/KIND_CPU/g' "$WORK_DIR"/repository/*/config.pbtxt
  REPOSITORY="$WORK_DIR/repository"
fi

CONTROL=(--model-control-mode=none)
if [[ "$POLL_SECS" != 0 ]]; then CONTROL=(--model-control-mode=poll "--repository-poll-secs=$POLL_SECS"); fi

export LD_LIBRARY_PATH="$LIBDIR:$SITE/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$VENV/bin:$PATH"
exec "$TRITON/bin/tritonserver" \
  --model-repository="$REPOSITORY" \
  --model-config-name=cpu \
  --backend-directory="$BACKENDS" \
  --cache-directory="$TRITON/caches" \
  --http-address=127.0.0.1 --http-port="$HTTP_PORT" \
  --grpc-address=127.0.0.1 --grpc-port="$GRPC_PORT" \
  --metrics-address=127.0.0.1 --metrics-port="$METRICS_PORT" \
  --allow-sagemaker=false --allow-vertex-ai=false \
  --strict-readiness=true \
  --exit-on-error=false \
  --exit-timeout-secs=2 \
  "${CONTROL[@]}" "$@"
