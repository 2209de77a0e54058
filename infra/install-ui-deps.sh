#!/usr/bin/env bash
# Browser code the gateway's pages serve themselves (Plotly for the operator console), from
# npm at the versions of the committed lock file, into services/gateway/ui/node_modules
# (git-ignored). Installs only when missing, so a second run is instant.
set -euo pipefail
ui="$(cd "$(dirname "$0")/.." && pwd)/services/gateway/ui"
if [ ! -f "$ui/node_modules/plotly.js-dist-min/plotly.min.js" ]; then
  npm ci --prefix "$ui" --no-audit --no-fund --loglevel=error
fi
