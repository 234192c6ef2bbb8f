#!/usr/bin/env bash
# `make bench`: the in-process benchmarks (crypto, webhook), then the grants
# benchmark on a real API server (KUBECONFIG if reachable, else the local
# control plane, stopped again afterwards unless WRIT_KEEP_CLUSTER=1).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench crypto --bench webhook
started=0
if [ -n "${KUBECONFIG:-}" ] && kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
  echo "[bench] using the cluster in KUBECONFIG=$KUBECONFIG" >&2
else
  eval "$(hack/control-plane.sh up)"
  eval "$(hack/control-plane.sh env)"
  started=1
fi
cleanup() { if [ "$started" = 1 ] && [ "${WRIT_KEEP_CLUSTER:-0}" != 1 ]; then hack/control-plane.sh down || true; fi; }
trap cleanup EXIT
cargo run --quiet -- crds | kubectl apply --server-side --force-conflicts -f - >/dev/null
cargo bench --bench grants
