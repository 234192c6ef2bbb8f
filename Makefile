# Writ — make targets. The two you need: `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
WRIT_CACHE ?= $(HOME)/.cache/writ
export WRIT_CACHE

.DEFAULT_GOAL := build
.PHONY: image-check deploy manifests build test unit crds lint fmt demo control-plane control-plane-down bench bench-scale clean

build:
	$(CARGO) build --all-targets

## Unit tests, then the integration tests on a real kube-apiserver + etcd
## (started on loopback by hack/control-plane.sh unless KUBECONFIG points at a
## reachable cluster).
test: build
	hack/test.sh

unit:
	$(CARGO) test --lib --bins

manifests:
	$(CARGO) run --quiet -- webhooks > manifests/webhooks.yaml

crds:
	rm -f crds/*.yaml && $(CARGO) run --quiet -- crds --dir crds

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

control-plane:
	hack/control-plane.sh up

control-plane-down:
	hack/control-plane.sh down

## Install into the cluster in KUBECONFIG (build and push the image first; IMAGE overrides it).
IMAGE ?= ghcr.io/writ-dev/writ:0.1.0
deploy:
	@kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1 || { echo "make deploy needs a reachable cluster in KUBECONFIG" >&2; exit 1; }
	kubectl kustomize manifests/ | sed 's#ghcr.io/writ-dev/writ:0.1.0#$(IMAGE)#' | kubectl apply --server-side -f -

demo:
	hack/demo.sh

## The Dockerfile without a container runtime (part of `make test`).
image-check:
	hack/with-cluster.sh image-check hack/image-check.sh

bench:
	hack/bench.sh

## 10,000 pods and grants on the real control plane; writes bench/RESULTS.md.
bench-scale:
	hack/bench-scale.sh

clean:
	$(CARGO) clean
