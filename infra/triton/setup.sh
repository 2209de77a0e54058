#!/usr/bin/env bash
# The Triton server venv (filled in with the serving work).
set -euo pipefail
