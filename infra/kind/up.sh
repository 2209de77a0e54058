#!/usr/bin/env bash
# Create the kind cluster (once) and load the locally built images into it.
# Usage: infra/kind/up.sh   (CLUSTER=medops, TAG=dev)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${CLUSTER:-medops}"
TAG="${TAG:-dev}"
command -v kind >/dev/null || { echo "kind is not installed: https://kind.sigs.k8s.io/docs/user/quick-start/" >&2; exit 1; }
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config "$ROOT/infra/kind/cluster.yaml" --wait 120s
fi
for image in gateway monitor pipeline; do
  if docker image inspect "localhost/medops/$image:$TAG" >/dev/null 2>&1; then
    kind load docker-image --name "$CLUSTER" "localhost/medops/$image:$TAG"
  else
    echo "image localhost/medops/$image:$TAG not built yet (make images); skipping" >&2
  fi
done
kubectl config use-context "kind-$CLUSTER"
