# Writ — make targets. The two you need: `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
WRIT_CACHE ?= $(HOME)/.cache/writ
export WRIT_CACHE

.DEFAULT_GOAL := build
.PHONY: manifests build test unit integration crds crds-check lint fmt demo control-plane control-plane-down bench bench-scale clean

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

demo:
	hack/demo.sh

bench:
	$(CARGO) bench --bench crypto --bench webhook

clean:
	$(CARGO) clean
