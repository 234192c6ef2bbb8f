#!/usr/bin/env bash
# `make bench-scale`: the scale benchmark (benches/scale.rs) on a real API
# server: KUBECONFIG if reachable, else the local control plane (stopped again
# afterwards unless WRIT_KEEP_CLUSTER=1). Writes bench/RESULTS.md.
# Knobs: WRIT_SCALE_N (default 10000), WRIT_SCALE_CONCURRENCY (16),
# WRIT_SCALE_REVOCATIONS (100), WRIT_SCALE_RESULTS (output file).
set -euo pipefail
cd "$(dirname "$0")/.."
started=0
if [ -n "${KUBECONFIG:-}" ] && kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
  echo "[bench-scale] using the cluster in KUBECONFIG=$KUBECONFIG" >&2
else
  eval "$(hack/control-plane.sh up)"
  eval "$(hack/control-plane.sh env)"
  started=1
fi
cleanup() { if [ "$started" = 1 ] && [ "${WRIT_KEEP_CLUSTER:-0}" != 1 ]; then hack/control-plane.sh down || true; fi; }
trap cleanup EXIT
cargo run --quiet -- crds | kubectl apply --server-side --force-conflicts -f - >/dev/null
cargo bench --bench scale
