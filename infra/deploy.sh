#!/usr/bin/env bash
# Install or upgrade the medops Helm release on the current kubectl context.
# Usage: infra/deploy.sh [PROFILE]   PROFILE: kind-cpu (default), gpu, mesh, external-mlflow
# (NAMESPACE=medops, RELEASE=medops; extra helm flags in HELM_ARGS).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${1:-kind-cpu}"
NAMESPACE="${NAMESPACE:-medops}"
RELEASE="${RELEASE:-medops}"
VALUES="$ROOT/charts/medops/ci/$PROFILE-values.yaml"
[ -f "$VALUES" ] || { echo "unknown profile $PROFILE (no $VALUES)" >&2; exit 2; }
command -v helm >/dev/null || { echo "helm is not installed: https://helm.sh/docs/intro/install/" >&2; exit 1; }
# shellcheck disable=SC2086
helm upgrade --install "$RELEASE" "$ROOT/charts/medops" \
  --namespace "$NAMESPACE" --create-namespace \
  -f "$VALUES" --wait --timeout 15m ${HELM_ARGS:-}
helm test "$RELEASE" --namespace "$NAMESPACE"
