#!/usr/bin/env bash
# Debian packages the tests and benchmarks need (nginx: the reverse-proxy baseline of
# bench/gateway.py; chromium: the browser the page tests drive); installs only what is missing,
# so a second run is instant.
set -euo pipefail
packages=(prometheus postgresql nginx chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
