#!/usr/bin/env bash
# Build the gateway image with podman, without pulling anything from a container registry:
# a Debian bookworm base made with debootstrap, then infra/docker/Dockerfile.gateway on top.
# Needs root (debootstrap), podman and debootstrap (apt-get install podman debootstrap runc).
# Slow (minutes). Usage: infra/podman-build.sh   (TAG=dev, MIRROR=http://deb.debian.org/debian)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${TAG:-dev}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
BASE="localhost/medops-base:bookworm"
# podman needs these on hosts without systemd cgroups or with low default limits.
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
ULIMITS=(--ulimit nofile=65536:65536 --ulimit nproc=8192:8192)

for tool in podman debootstrap runc; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done

if ! "${PODMAN[@]}" image exists "$BASE"; then
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"' EXIT
  # Debian's python3 is 3.11 on bookworm, the version medops pins.
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$MIRROR"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' - "$BASE"
fi

cd "$ROOT"
"${PODMAN[@]}" build "${ULIMITS[@]}" \
  --ignorefile infra/docker/Dockerfile.gateway.dockerignore \
  --build-arg PYTHON_IMAGE="$BASE" \
  -f infra/docker/Dockerfile.gateway -t "localhost/medops/gateway:$TAG" .
echo "built localhost/medops/gateway:$TAG"
