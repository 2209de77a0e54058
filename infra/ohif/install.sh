#!/usr/bin/env bash
# The prebuilt OHIF viewer from npm: @ohif/app ships its PWA in dist/ (building it from source
# needs far more memory than these machines have). Only the package's own files are needed, so
# its tarball is fetched with `npm pack` (no dependencies, nothing run) and unpacked into
# .ohif/ (ignored); only when missing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VERSION="${OHIF_VERSION:-3.13.2}"
DEST="$ROOT/.ohif"
if [ -f "$DEST/package/dist/index.html" ] && \
   grep -q "\"version\": \"$VERSION\"" "$DEST/package/package.json"; then
  exit 0
fi
rm -rf "$DEST"
mkdir -p "$DEST"
tarball=$(cd "$DEST" && npm pack --silent "@ohif/app@$VERSION")
tar -xzf "$DEST/$tarball" -C "$DEST"
rm -f "$DEST/$tarball"
test -f "$DEST/package/dist/index.html"
