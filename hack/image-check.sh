#!/usr/bin/env bash
# hack/image-check.sh: checks the Dockerfile without a container runtime
# (there is no Docker daemon where CI runs). `make test` runs it after the
# Rust tests; `make image-check` runs it alone.
#
# 1. The build context is what the Dockerfile COPYs, and nothing else: each
#    COPY of the build stage is replayed into an empty directory.
# 2. The build stage's `cargo build` line runs, verbatim, in that directory,
#    with the musl target and musl-tools its first RUN installs.
# 3. The binary the final stage copies is static (no interpreter, no shared
#    libraries), so it runs on distroless/static or scratch.
# 4. That binary runs from a root file system holding nothing but itself and a
#    kubeconfig (and the device nodes a container runtime makes), as the
#    Dockerfile's USER, with that root read-only to it
#    (as the Deployment's readOnlyRootFilesystem): `writ run` against the real
#    API server creates its CA and becomes ready and leader.
#
# Needs root for chroot (or passwordless sudo). The release build is cached in
# WRIT_IMAGE_TARGET (default target/image).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
log() { printf '[image-check] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

dockerfile=Dockerfile
# The build stage: from the first FROM to the second.
build_stage=$(awk '/^FROM /{n++} n==1' "$dockerfile")
final_stage=$(awk '/^FROM /{n++} n==2' "$dockerfile")
[ -n "$build_stage" ] && [ -n "$final_stage" ] || die "$dockerfile must have a build stage and a final stage"

target=$(grep -o -- '--target [a-z0-9_-]*' <<<"$build_stage" | head -1 | cut -d' ' -f2)
[ -n "$target" ] || die "the build stage's cargo build names no --target"
grep -q "rustup target add $target" <<<"$build_stage" || die "the build stage does not add the $target target"
build_cmd=$(grep -E '^RUN cargo build ' <<<"$build_stage" | sed 's/^RUN //')
[ -n "$build_cmd" ] || die "no 'RUN cargo build' line in the build stage"
workdir=$(grep -E '^WORKDIR ' <<<"$build_stage" | tail -1 | cut -d' ' -f2)
user=$(grep -E '^USER ' <<<"$final_stage" | tail -1 | cut -d' ' -f2)
[ -n "$user" ] || die "the final stage sets no USER"
case "${user%%:*}" in 0 | root) die "the final stage runs as root ($user)" ;; esac
copy_from=$(grep -E '^COPY --from=build ' <<<"$final_stage" | head -1)
built=$(awk '{print $3}' <<<"$copy_from")
installed=$(awk '{print $4}' <<<"$copy_from")
entrypoint=$(grep -E '^ENTRYPOINT ' <<<"$final_stage" | sed -E 's/^ENTRYPOINT \["([^"]*)".*/\1/')
[ "$entrypoint" = "$installed" ] || die "ENTRYPOINT $entrypoint is not the copied binary $installed"
case "$built" in "$workdir"/target/*) ;; *) die "the final stage copies $built, not a build output under $workdir/target" ;; esac

# Tools the build stage's first RUN installs.
# The musl standard library comes from rustup's servers, which are not one of
# the package registries every machine here is promised: if it cannot be had,
# the check says so loudly and builds the same context as a static glibc
# binary instead, so everything after the build is still checked.
verbatim=1
if ! rustup target list --installed | grep -qx "$target"; then
  log "rustup target add $target"
  if ! rustup target add "$target" >"$(mktemp)" 2>&1; then
    verbatim=0
    log "WARNING: could not install the $target target; the Dockerfile's own cargo build line is NOT run,"
    log "WARNING: a static glibc build of the same context is checked instead"
  fi
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
  log "installing musl-tools"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
fi

# The processes of the writ this check started (by /proc, without procps).
writ_pids() {
  local d
  for d in /proc/[0-9]*; do
    tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -q -- "^/writ run --namespace $ns " && echo "${d#/proc/}"
  done
  return 0
}

work=$(mktemp -d)
pid=
ns="writ-image-$$"
cleanup() {
  local status=$?
  # A failure after the start shows what writ said (it logs no secrets).
  if [ "$status" != 0 ] && [ -s "$work/writ.log" ]; then
    log "the last lines writ logged:"
    tail -40 "$work/writ.log" >&2
  fi
  if [ -n "$pid" ]; then
    for p in $(writ_pids); do as_root kill "$p" 2>/dev/null || true; done
  fi
  kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  as_root rm -rf "$work"
}
trap cleanup EXIT

# 1. The context, as the COPY lines of the build stage lay it out (a stable
#    path, file times kept: an unchanged tree is not rebuilt). .dockerignore
#    excludes everything else, so each COPY source must be let through.
image_target="${WRIT_IMAGE_TARGET:-$repo/target/image}"
context="$image_target/context"
rm -rf "$context"
mkdir -p "$context"
while read -r _ args; do
  read -r -a parts <<<"$args"
  dest="${parts[-1]}"
  for src in "${parts[@]:0:${#parts[@]}-1}"; do
    [ -e "$src" ] || die "COPY $src: not in the repository"
    grep -qx "!$src" .dockerignore || die "COPY $src: .dockerignore does not let it into the context"
    case "$dest" in
      ./) cp -rp "$src" "$context/" ;;
      ./*) mkdir -p "$context/$(dirname "${dest#./}")" && cp -rp "$src" "$context/${dest#./}" ;;
      *) die "COPY destination $dest: expected a path relative to WORKDIR" ;;
    esac
  done
done < <(grep -E '^COPY ' <<<"$build_stage")

# 2. The build, verbatim, in that context (target directory kept between runs).
binary="$image_target/${built#"$workdir"/target/}"
if [ "$verbatim" = 1 ]; then
  log "in a context of only the COPYed files: $build_cmd"
  (cd "$context" && CARGO_TARGET_DIR="$image_target" bash -c "$build_cmd")
else
  host=$(rustc -vV | sed -n 's/^host: //p')
  fallback="cargo build --release --locked --target $host --bin writ"
  log "in a context of only the COPYed files: RUSTFLAGS='-C target-feature=+crt-static' $fallback"
  (cd "$context" && CARGO_TARGET_DIR="$image_target" RUSTFLAGS='-C target-feature=+crt-static' bash -c "$fallback")
  binary="$image_target/$host/release/writ"
fi
[ -x "$binary" ] || die "the build did not produce $built"

# 3. Static: no program interpreter, no shared libraries.
if readelf -lW "$binary" | grep -q 'Requesting program interpreter'; then
  die "$binary asks for a dynamic loader"
fi
if readelf -dW "$binary" | grep -q '(NEEDED)'; then
  die "$binary needs shared libraries: $(readelf -dW "$binary" | grep NEEDED | tr -s ' ')"
fi
log "static binary: $(du -h "$binary" | cut -f1)"

# 4. Run it from a root holding only itself, a kubeconfig and /dev's null and
#    random devices, as USER.
root="$work/root"
mkdir -p "$root"
cp "$binary" "$root$installed"
kubectl config view --raw --flatten --minify >"$root/kubeconfig"
# The device nodes every container runtime provides.
mkdir -p "$root/dev"
as_root mknod -m 0666 "$root/dev/null" c 1 3
as_root mknod -m 0666 "$root/dev/random" c 1 8
as_root mknod -m 0666 "$root/dev/urandom" c 1 9
chmod 0555 "$root$installed" "$root/dev" "$root" && chmod 0444 "$root/kubeconfig"
as_root chown -R 0:0 "$root"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl create namespace "$ns" >/dev/null
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }
webhook=$(port)
metrics=$(port)
chroot=$(PATH="$PATH:/usr/sbin:/sbin" command -v chroot) || die "chroot not found"
as_root env -i KUBECONFIG=/kubeconfig "$chroot" --userspec="$user" "$root" "$installed" run \
  --namespace "$ns" --trust-domain image.writ.dev \
  --webhook-addr "127.0.0.1:$webhook" --webhook-config-name "$ns" \
  --metrics-addr "127.0.0.1:$metrics" --token-addr 127.0.0.1:0 >"$work/writ.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$metrics/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || die "writ run exited"
  sleep 0.5
done
curl -fs "http://127.0.0.1:$metrics/readyz" >/dev/null || die "not ready after 60 s"
# The scrape is read whole before it is searched: `curl | grep -q` under
# pipefail fails when grep stops reading first and curl is left writing.
leading() { local m; m=$(curl -fs "http://127.0.0.1:$metrics/metrics") && grep -qx 'writ_leader 1' <<<"$m"; }
for _ in $(seq 1 120); do
  leading && break
  kill -0 "$pid" 2>/dev/null || die "writ run exited"
  sleep 0.5
done
leading || die "not leading 60 s after it was ready ($(curl -fs "http://127.0.0.1:$metrics/metrics" | grep '^writ_leader ' || echo 'no writ_leader in /metrics'))"
kubectl -n "$ns" get secret writ-ca >/dev/null || die "no CA Secret in $ns"
running=$(writ_pids | sed -n 1p)
[ -n "$running" ] || die "the writ process is gone"
uid=$(awk '/^Uid:/{print $2}' "/proc/$running/status")
[ "$uid" = "${user%%:*}" ] || die "writ runs as uid $uid, not ${user%%:*}"
how="the Dockerfile's build line"
[ "$verbatim" = 1 ] || how="a static glibc build (NOT the Dockerfile's musl build, see the WARNING above)"
scrape=$(curl -fs "http://127.0.0.1:$metrics/metrics" | wc -c)
log "ok: $how in the Dockerfile's context, static, ran as $user from a read-only root with only $installed, ready and leading (/metrics: $scrape bytes)"
