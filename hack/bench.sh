#!/usr/bin/env bash
# `make bench`: the in-process benchmarks (crypto, webhook, cache footprint), then the grants
# benchmark on a real API server (hack/with-cluster.sh: KUBECONFIG if
# reachable, else the local control plane, stopped again afterwards unless
# WRIT_KEEP_CLUSTER=1). Every bench builds with the `testing` feature (the
# webhook bench needs the test kit), so the release build is made once.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --features testing --bench crypto --bench webhook --bench footprint
hack/with-cluster.sh bench bash -c '
  cargo run --quiet -- crds | kubectl apply --server-side --force-conflicts -f - >/dev/null
  cargo bench --features testing --bench grants
  EXCHANGES=1000000 cargo bench --features testing --bench exchange'
