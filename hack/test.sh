#!/usr/bin/env bash
# `make test`: unit tests and integration tests against a real kube-apiserver,
# then the image check.
#
# The API server: KUBECONFIG if it points at a reachable cluster, otherwise the
# local control plane from hack/control-plane.sh (built from Debian's packages
# and cached in ~/.cache/writ on first use; stopped again afterwards unless
# WRIT_KEEP_CLUSTER=1), see hack/with-cluster.sh. There is no silent skip:
# without an API server the integration tests fail.
set -euo pipefail
cd "$(dirname "$0")/.."
# A full run (no test filter) also checks the Dockerfile (hack/image-check.sh):
# a static release build from its context, run as its USER on the same API server.
if [ "$#" -eq 0 ]; then
  hack/with-cluster.sh test bash -c 'cargo test --all-features && hack/image-check.sh'
else
  hack/with-cluster.sh test cargo test --all-features -- "$@"
fi
