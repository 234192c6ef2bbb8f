#!/usr/bin/env bash
# `make bench-scale`: the scale benchmark (benches/scale.rs) on a real API
# server (hack/with-cluster.sh: KUBECONFIG if reachable, else the local control
# plane, stopped again afterwards unless WRIT_KEEP_CLUSTER=1). Writes
# bench/RESULTS.md.
# Knobs: WRIT_SCALE_N (default 10000), WRIT_SCALE_CONCURRENCY (16), WRIT_BENCH_BIN
# (run that operator binary instead of this build's, e.g. the image's musl build),
# WRIT_SCALE_REVOCATIONS (100), WRIT_SCALE_RESULTS (output file), WRIT_SCALE_KEEP
# (leave the objects and the operator's namespace in place),
# WRIT_SCALE_METRICS_DIR (save the API server's and the operator's /metrics, and
# per-process CPU seconds and TCP opens, before and after the empty-cluster raw
# phase and the backlog phase).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/with-cluster.sh bench-scale bash -c '
  cargo run --quiet -- crds | kubectl apply --server-side --force-conflicts -f - >/dev/null
  cargo bench --bench scale'
