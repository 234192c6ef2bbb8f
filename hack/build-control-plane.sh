#!/usr/bin/env bash
# Builds the binaries of a real, minimal Kubernetes control plane for tests and
# the demo, from Debian's packages only:
#   etcd                     <- Debian package etcd-server
#   kube-apiserver           <- built from Debian's `kubernetes` source package (1.20.2)
#   kube-controller-manager  <- same
# The result is cached outside the repository (default ~/.cache/writ/bin) and
# reused by later runs; a second call is a no-op.
#
# Why build from source: no container runtime exists on the machines this
# project runs on, and Debian ships the Kubernetes sources but not the server
# binaries. Two fixes are needed for Go >= 1.18: the vendored reflect2 1.0.1
# crashes the API server as soon as custom resources are watched (replaced by
# Debian's 1.0.2), and the OpenAPI definitions must be generated first.
set -euo pipefail

CACHE="${WRIT_CACHE:-$HOME/.cache/writ}"
BIN="$CACHE/bin"
mkdir -p "$BIN"

log() { printf '[build-control-plane] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Bump RECIPE whenever the build below changes in a way that affects the
# binaries: cached binaries from an older recipe are rebuilt.
RECIPE=2
have_kube() {
  [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] &&
    [ "$(cat "$BIN/.recipe" 2>/dev/null)" = "$RECIPE" ]
}
have_all() {
  have_kube && [ -x "$BIN/etcd" ]
}

if have_all; then
  log "cached binaries found in $BIN"
  exit 0
fi

# --- Debian packages -------------------------------------------------------
need_pkgs=()
command -v etcd >/dev/null 2>&1 || need_pkgs+=(etcd-server)
command -v go >/dev/null 2>&1 || need_pkgs+=(golang-go)
[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need_pkgs+=(golang-github-modern-go-reflect2-dev)
command -v dpkg-source >/dev/null 2>&1 || need_pkgs+=(dpkg-dev)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)  # the tests use curl for HTTP

# A deb-src twin of the machine's own Debian source entry (never a host name
# written here: the entry is copied from what the machine already uses).
SRC_LIST=/etc/apt/sources.list.d/writ-deb-src.sources
if [ ! -f "$SRC_LIST" ]; then
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    log "adding deb-src entry $SRC_LIST"
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources | as_root tee "$SRC_LIST" >/dev/null
  elif [ -f /etc/apt/sources.list ]; then
    grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' | as_root tee /etc/apt/sources.list.d/writ-deb-src.list >/dev/null
    SRC_LIST=/etc/apt/sources.list.d/writ-deb-src.list
  fi
  as_root apt-get update -qq
fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

ln -sf "$(command -v etcd)" "$BIN/etcd"

if have_kube; then
  exit 0
fi

# --- Kubernetes from source --------------------------------------------------
WORK="$CACHE/build"
rm -rf "$WORK"
mkdir -p "$WORK/src"
cd "$WORK/src"
log "downloading Debian's kubernetes source package"
apt-get source --download-only kubernetes >/dev/null 2>&1
orig=$(ls kubernetes_*.orig.tar.gz | head -n1)
log "unpacking $orig"
mkdir -p "$WORK/gopath/src/k8s.io"
tar -xzf "$orig" -C "$WORK/src"
tree=$(find "$WORK/src" -maxdepth 1 -mindepth 1 -type d | head -n1)
ln -sfn "$tree" "$WORK/gopath/src/k8s.io/kubernetes"
K="$WORK/gopath/src/k8s.io/kubernetes"

export GOPATH="$WORK/gopath" GO111MODULE=off GOFLAGS=-mod=vendor CGO_ENABLED=0
export GOCACHE="$CACHE/go-build"
unset GOFLAGS
cd "$K"

log "replacing vendored reflect2 1.0.1 with Debian's 1.0.2"
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/go.mod

log "building openapi-gen"
go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen

log "generating OpenAPI definitions"
# As upstream's Makefile.generated_files does: every package with a
# `// +k8s:openapi-gen=` tag in column 0 under pkg/ and staging/, named by its
# import path *inside* k8s.io/kubernetes (GOPATH mode: staging/src/k8s.io/X is
# k8s.io/kubernetes/vendor/k8s.io/X). Plain k8s.io/X paths do not resolve in
# this GOPATH and openapi-gen silently skips them, which leaves the API server
# failing at start-up with "unable to get openapi models".
pkgs=$(grep -rl --include='*.go' '^// *+k8s:openapi-gen=' pkg staging/src 2>/dev/null \
  | grep -v -e '^staging/src/k8s.io/code-generator/' -e '^staging/src/k8s.io/sample-apiserver/' -e '_test.go$' \
  | xargs -n1 dirname | sort -u \
  | sed -e 's#^staging/src/#k8s.io/kubernetes/vendor/#' -e 's#^pkg/#k8s.io/kubernetes/pkg/#' \
  | sort -u | paste -sd, -)
"$WORK/openapi-gen" \
  --input-dirs "$pkgs" \
  --output-package k8s.io/kubernetes/pkg/generated/openapi \
  --output-base "$GOPATH/src" \
  --output-file-base zz_generated.openapi \
  --go-header-file hack/boilerplate/boilerplate.generatego.txt \
  --report-filename /dev/null >/dev/null 2>"$WORK/openapi-gen.log" || {
    tail -20 "$WORK/openapi-gen.log" >&2; exit 1; }
for model in 'k8s.io/api/core/v1.Pod' 'k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1.CustomResourceDefinition'; do
  grep -q "\"$model\"" pkg/generated/openapi/zz_generated.openapi.go || {
    log "OpenAPI generation incomplete: no definition for $model"; tail -20 "$WORK/openapi-gen.log" >&2; exit 1; }
done

# The version is stamped into both packages, as upstream's hack/lib/version.sh
# does: /version is served from client-go's copy, `--version` from
# component-base's (stamping only the latter makes /version say v0.0.0-master).
LDFLAGS="-s -w"
for V in k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version k8s.io/kubernetes/vendor/k8s.io/component-base/version; do
  LDFLAGS="$LDFLAGS -X $V.gitVersion=v1.20.2 -X $V.gitMajor=1 -X $V.gitMinor=20 -X $V.gitTreeState=clean -X $V.buildDate=2021-01-13T00:00:00Z"
done
for cmd in kube-apiserver kube-controller-manager; do
  log "building $cmd (takes a few minutes)"
  go build -ldflags "$LDFLAGS" -o "$BIN/$cmd.tmp" "./cmd/$cmd"
  mv "$BIN/$cmd.tmp" "$BIN/$cmd"
done

echo "$RECIPE" >"$BIN/.recipe"
rm -rf "$WORK/src" "$WORK/gopath"
log "done: $BIN"
