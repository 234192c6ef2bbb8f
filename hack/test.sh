#!/usr/bin/env bash
# `make test`: unit tests and integration tests against a real kube-apiserver.
#
# The API server: KUBECONFIG if it points at a reachable cluster, otherwise the
# local control plane from hack/control-plane.sh (built from Debian's packages
# and cached in ~/.cache/writ on first use; stopped again afterwards unless
# WRIT_KEEP_CLUSTER=1). There is no silent skip: without an API server the
# integration tests fail.
set -euo pipefail
cd "$(dirname "$0")/.."

started=0
if [ -n "${KUBECONFIG:-}" ] && kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
  echo "[test] using the cluster in KUBECONFIG=$KUBECONFIG" >&2
else
  echo "[test] starting the local control plane (hack/control-plane.sh up)" >&2
  eval "$(hack/control-plane.sh up)"
  eval "$(hack/control-plane.sh env)"
  started=1
fi
cleanup() {
  if [ "$started" = 1 ] && [ "${WRIT_KEEP_CLUSTER:-0}" != 1 ]; then
    hack/control-plane.sh down || true
  fi
}
trap cleanup EXIT

cargo test --all-features -- "$@"
