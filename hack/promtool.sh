#!/usr/bin/env bash
# Runs Prometheus' promtool with the given arguments, fetching it first when
# it is not on the PATH: Debian's `prometheus` package ships it. The package
# is downloaded with apt-get (never installed: no service is started) and
# promtool alone is unpacked into ${WRIT_CACHE:-~/.cache/writ}/promtool, once.
#
# Usage: hack/promtool.sh check rules manifests/monitoring/prometheus-rules.yaml
#        hack/promtool.sh test rules manifests/monitoring/tests/*.yaml
#        hack/promtool.sh path     # print the promtool in use
#
# Fails (never skips) when promtool cannot be found or fetched.
set -euo pipefail
CACHE="${WRIT_CACHE:-$HOME/.cache/writ}"
DEST="$CACHE/promtool"
BIN="$DEST/usr/bin/promtool"

find_promtool() {
  if command -v promtool >/dev/null 2>&1; then
    command -v promtool
  elif [ -x "$BIN" ]; then
    echo "$BIN"
  else
    return 1
  fi
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

fetch_promtool() {
  command -v apt-get >/dev/null 2>&1 || { echo "promtool is not on the PATH and apt-get is missing: install Prometheus' promtool" >&2; exit 1; }
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  echo "fetching promtool from Debian's prometheus package into $DEST" >&2
  if ! (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); then
    as_root apt-get update -qq
    (cd "$tmp" && apt-get download -qq prometheus >/dev/null)
  fi
  mkdir -p "$tmp/x"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  mkdir -p "$DEST/usr/bin"
  install -m 0755 "$tmp/x/usr/bin/promtool" "$BIN.part"
  mv "$BIN.part" "$BIN"
}

promtool="$(find_promtool)" || { fetch_promtool; promtool="$(find_promtool)"; }
if [ "${1:-}" = path ]; then
  echo "$promtool"
  exit 0
fi
exec "$promtool" "$@"
