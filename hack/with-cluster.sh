#!/usr/bin/env bash
# hack/with-cluster.sh LABEL COMMAND [ARGS...]: runs COMMAND against a real API
# server: KUBECONFIG if it points at a reachable cluster, otherwise the local
# control plane from hack/control-plane.sh (started here and stopped again
# afterwards unless WRIT_KEEP_CLUSTER=1). Used by `make test`, `make bench` and
# `make bench-scale`; there is no silent skip.
set -euo pipefail
cd "$(dirname "$0")/.."
label="$1"
shift
started=0
if [ -n "${KUBECONFIG:-}" ] && kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
  echo "[$label] using the cluster in KUBECONFIG=$KUBECONFIG" >&2
else
  echo "[$label] starting the local control plane (hack/control-plane.sh up)" >&2
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
"$@"
