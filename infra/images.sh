#!/usr/bin/env bash
# Build the gateway, monitor and pipeline images from the repository root.
# Usage: infra/images.sh [gateway|monitor|pipeline ...]
#   ENGINE=docker|podman  REGISTRY=localhost/medops  TAG=dev  PUSH=1 (push after building)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENGINE="${ENGINE:-docker}"
REGISTRY="${REGISTRY:-localhost/medops}"
TAG="${TAG:-dev}"
targets=("$@")
# IMAGES="gateway monitor" works too (CI passes one per job)
[ ${#targets[@]} -gt 0 ] || read -r -a targets <<< "${IMAGES:-}"
[ ${#targets[@]} -gt 0 ] || targets=(gateway monitor pipeline)
cd "$ROOT"
for name in "${targets[@]}"; do
  dockerfile="infra/docker/Dockerfile.$name"
  [ -f "$dockerfile" ] || { echo "no $dockerfile" >&2; exit 2; }
  if [ "$ENGINE" = docker ]; then
    DOCKER_BUILDKIT=1 docker build -f "$dockerfile" -t "$REGISTRY/$name:$TAG" .
  else
    "$ENGINE" build --ignorefile "$dockerfile.dockerignore" -f "$dockerfile" -t "$REGISTRY/$name:$TAG" .
  fi
  if [ "${PUSH:-0}" = 1 ]; then
    "$ENGINE" push "$REGISTRY/$name:$TAG"
  fi
done
