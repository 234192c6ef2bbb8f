#!/usr/bin/env bash
# A real, minimal Kubernetes control plane on loopback, for the integration
# tests (`make test`) and the demo: etcd + kube-apiserver +
# kube-controller-manager (v1.20.2, built and cached by
# hack/build-control-plane.sh). There is no kubelet and no container runtime:
# pods are accepted by the API server and stay Pending, which is all Writ needs.
#
# Usage: hack/control-plane.sh up|down|env|status
#   up      start the cluster (building the binaries first if needed) and wait
#           until it is ready; a no-op if it is already running. Prints
#           `export KUBECONFIG=...` (and WRIT_CLUSTER_DIR) on stdout, so
#           `eval "$(hack/control-plane.sh up)"` works; progress goes to stderr.
#   down    stop the processes (TERM, then KILL after a grace period); logs stay.
#   env     print the export lines for the cluster directory.
#   status  exit 0 if the cluster is up (all processes alive and /readyz ok).
#
# Why it looks like this:
# - Everything listens on 127.0.0.1 only, on free ports picked at start-up
#   (override with WRIT_ETCD_PORT, WRIT_ETCD_PEER_PORT, WRIT_APISERVER_PORT).
# - All credentials are generated with openssl on every `up` into the state
#   directory ${WRIT_CLUSTER_DIR:-~/.cache/writ/cluster}, which `up` wipes:
#   a cluster CA, the API server's serving certificate, the service-account
#   signing key pair, and client certificates + kubeconfigs for
#     kubeconfig                  admin          (O=system:masters)
#     kubeconfig-writ-operator    writ-operator  (no groups, nothing bound:
#                                                 for least-privilege RBAC tests)
#     kubeconfig-alice            alice          (O=release-managers)
#     kubeconfig-bob              bob            (O=sre-oncall)
#     kubeconfig-carol            carol          (O=sre-oncall)
#     kubeconfig-mallory          mallory        (no groups)
#     kubeconfig-dave             dave           (O=platform-admins)
# - Authorization is RBAC only; admission includes NamespaceLifecycle,
#   ServiceAccount and the two admission-webhook plugins, so webhooks served at
#   https://127.0.0.1:PORT/... can be tested. The ServiceAccount admission
#   plugin of 1.20 rejects a pod until its namespace's `default` ServiceAccount
#   (it waits ~1-2s for that one) *and* that account's token secret exist
#   (no wait: 504 "No API token found ..., retry after the token is
#   automatically created"). Both are created by the controller manager within
#   a moment of the namespace; `up` waits for them in `default`. Clients that
#   create pods in a brand-new namespace should retry on that 504 (kubectl and
#   client-go do so by themselves, honouring Retry-After) or set
#   automountServiceAccountToken: false on the pod.
# - --endpoint-reconciler-type=none: the `kubernetes` Service exists
#   (10.0.0.1) but has no Endpoints, since Endpoints may not hold a loopback
#   address and nothing in this cluster could use them anyway.
# - The controller manager runs the default controllers (garbage collector,
#   namespace, serviceaccount, serviceaccount-token, deployment, ...), with
#   leader election off and no serving ports at all.
# - The processes are started with setsid and detached from the terminal and
#   from this script's stdout, so they survive the script and `$(...)`
#   returns. Logs: $DIR/logs/*.log, pids: $DIR/*.pid.
#
# Other knobs: WRIT_CACHE (binary cache, default ~/.cache/writ),
# WRIT_UP_TIMEOUT (seconds to wait for readiness, default 120).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${WRIT_CACHE:-$HOME/.cache/writ}"
BIN="$CACHE/bin"
DIR="${WRIT_CLUSTER_DIR:-$HOME/.cache/writ/cluster}"
DIR="${DIR%/}"
# `up` wipes $DIR; this file marks it as ours, so a mistaken WRIT_CLUSTER_DIR
# (say, $HOME) is refused instead of deleted.
MARKER=.writ-control-plane
TIMEOUT="${WRIT_UP_TIMEOUT:-120}"
# Stop order is the reverse of this start order.
COMPONENTS=(etcd kube-apiserver kube-controller-manager)
USERS=(writ-operator alice bob carol mallory dave)

log() { printf '[control-plane] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

print_env() {
  printf 'export KUBECONFIG=%q\n' "$DIR/kubeconfig"
  printf 'export WRIT_CLUSTER_DIR=%q\n' "$DIR"
}

have_binaries() {
  [ -x "$BIN/etcd" ] && [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]
}

# pid_of NAME: the pid recorded for NAME if that process is still alive and is
# still NAME (pids get reused); prints nothing otherwise.
pid_of() {
  local f="$DIR/$1.pid" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  # /proc/PID/exe may point at a symlink target (etcd -> /usr/bin/etcd), so
  # compare base names of argv[0].
  local argv0
  argv0="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1 || true)"
  [ "$(basename -- "${argv0:-?}")" = "$1" ] && echo "$pid"
  return 0
}

apiserver_ready() {
  [ -f "$DIR/kubeconfig" ] &&
    kubectl --kubeconfig "$DIR/kubeconfig" --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

is_up() {
  local c
  for c in "${COMPONENTS[@]}"; do
    [ -n "$(pid_of "$c")" ] || return 1
  done
  apiserver_ready
}

stop_all() {
  local c pid i i2 alive
  local -a pids=()
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    c="${COMPONENTS[$i]}"
    pid="$(pid_of "$c")"
    if [ -n "$pid" ]; then
      log "stopping $c (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      # Let each one go before the next: the API server should not outlive etcd
      # by much, and the controller manager not the API server.
      for ((i2 = 0; i2 < 100; i2++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$pid" 2>/dev/null; then
        log "$c did not exit after TERM, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        pids+=("$pid")
      fi
    fi
    rm -f "$DIR/$c.pid"
  done
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  done
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] || die "some processes survived KILL: ${pids[*]}"
}

tail_logs() {
  local f
  for f in "$DIR"/logs/*.log; do
    [ -f "$f" ] || continue
    printf '\n===== last lines of %s =====\n' "$f" >&2
    tail -n 30 "$f" >&2
  done
}

# Fails `up`: show why, stop what was started, exit non-zero.
fail_up() {
  log "error: $*"
  tail_logs
  stop_all || true
  log "the cluster is down; logs are in $DIR/logs"
  exit 1
}

# ---------------------------------------------------------------------------
# Ports

port_in_use() {
  # Something accepts connections on 127.0.0.1:$1.
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Prints three free loopback ports, one per line.
pick_ports() {
  if command -v python3 >/dev/null 2>&1 && python3 - <<'EOF' 2>/dev/null; then return 0; fi
import socket
socks = []
for _ in range(3):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
EOF
  # Fallback without python: random ports in 20000-39999 that nobody answers on.
  local n=0 p seen=" "
  while [ "$n" -lt 3 ]; do
    p=$((20000 + RANDOM % 20000))
    case "$seen" in *" $p "*) continue ;; esac
    port_in_use "$p" && continue
    seen="$seen$p "
    echo "$p"
    n=$((n + 1))
  done
}

# ---------------------------------------------------------------------------
# Credentials

gen_key() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; }

write_openssl_conf() {
  # A self-contained config, so the system's openssl.cnf cannot add surprises.
  cat >"$PKI/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = writ-ca
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, IP:127.0.0.1, IP:10.0.0.1
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
EOF
}

# sign NAME SUBJECT EXTENSION-SECTION
sign() {
  local name="$1" subj="$2" ext="$3"
  gen_key "$PKI/$name.key"
  openssl req -new -config "$PKI/openssl.cnf" -key "$PKI/$name.key" -subj "$subj" \
    -out "$PKI/$name.csr"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 \
    -extfile "$PKI/openssl.cnf" -extensions "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr"
}

b64() { base64 -w0 <"$1"; }

# write_kubeconfig FILE CERT-NAME USER
write_kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: writ
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $(b64 "$PKI/$2.crt")
    client-key-data: $(b64 "$PKI/$2.key")
contexts:
- name: $3@writ
  context:
    cluster: writ
    user: $3
current-context: $3@writ
EOF
  chmod 600 "$1"
}

generate_credentials() {
  PKI="$DIR/pki"
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  write_openssl_conf
  gen_key "$PKI/ca.key"
  openssl req -x509 -new -config "$PKI/openssl.cnf" -extensions v3_ca -key "$PKI/ca.key" \
    -subj "/CN=writ-ca" -days 3650 -out "$PKI/ca.crt"
  sign apiserver "/CN=kube-apiserver" server
  gen_key "$PKI/sa.key"
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
  sign admin "/CN=admin/O=system:masters" client
  sign writ-operator "/CN=writ-operator" client
  sign alice "/CN=alice/O=release-managers" client
  sign bob "/CN=bob/O=sre-oncall" client
  sign carol "/CN=carol/O=sre-oncall" client
  sign mallory "/CN=mallory" client
  sign dave "/CN=dave/O=platform-admins" client
  rm -f "$PKI/ca.srl"

  write_kubeconfig "$DIR/kubeconfig" admin admin
  local u
  for u in "${USERS[@]}"; do
    write_kubeconfig "$DIR/kubeconfig-$u" "$u" "$u"
  done
}

# ---------------------------------------------------------------------------
# Processes

# start NAME ARGS...: runs $BIN/NAME detached (own session, no terminal, stdin
# from /dev/null, output to its log, the lock fd closed) and records its pid.
start() {
  local name="$1"
  shift
  # shellcheck disable=SC2016 # $$ and $@ are for the inner shell
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$DIR/$name.pid" "$BIN/$name" "$@" \
    </dev/null >"$DIR/logs/$name.log" 2>&1 9>&- &
  # Wait for the pid file (written before exec).
  local i
  for ((i = 0; i < 50; i++)); do
    [ -s "$DIR/$name.pid" ] && break
    sleep 0.05
  done
  log "started $name (pid $(cat "$DIR/$name.pid" 2>/dev/null || echo '?'), log $DIR/logs/$name.log)"
}

check_alive() {
  local c
  for c in "$@"; do
    [ -n "$(pid_of "$c")" ] || fail_up "$c exited during start-up"
  done
}

# wait_for DESCRIPTION COMMAND...: polls COMMAND until it succeeds, failing the
# start-up if the deadline passes or a process dies.
wait_for() {
  local what="$1"
  shift
  while ! "$@"; do
    check_alive "${STARTED[@]}"
    [ "$SECONDS" -lt "$DEADLINE" ] || fail_up "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.5
  done
  log "$what: ok (${SECONDS}s)"
}

etcd_healthy() {
  curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}

default_sa_ready() {
  # The ServiceAccount admission plugin of 1.20 needs the SA *and* its token
  # secret before it admits a pod.
  local s
  s="$(kubectl --kubeconfig "$DIR/kubeconfig" --request-timeout=5s -n default \
    get serviceaccount default -o 'jsonpath={.secrets[0].name}' 2>/dev/null || true)"
  [ -n "$s" ] &&
    kubectl --kubeconfig "$DIR/kubeconfig" --request-timeout=5s -n default get secret "$s" >/dev/null 2>&1
}

cmd_up() {
  if ! have_binaries; then
    log "binaries missing in $BIN; running hack/build-control-plane.sh"
    "$HERE/build-control-plane.sh"
    have_binaries || die "hack/build-control-plane.sh did not produce the binaries in $BIN"
  fi
  command -v kubectl >/dev/null 2>&1 || die "kubectl not found in PATH"
  command -v openssl >/dev/null 2>&1 || die "openssl not found in PATH"
  command -v curl >/dev/null 2>&1 || die "curl not found in PATH"

  if is_up; then
    log "already running ($DIR)"
    print_env
    return 0
  fi

  SECONDS=0
  DEADLINE="$TIMEOUT"
  # Leftovers of a half-started or broken cluster go first.
  if [ -d "$DIR" ]; then
    if [ ! -f "$DIR/$MARKER" ] && [ -n "$(ls -A "$DIR")" ]; then
      die "$DIR exists and is not a cluster directory made by this script; not wiping it (remove it or set WRIT_CLUSTER_DIR)"
    fi
    stop_all
    rm -rf "$DIR"
  fi
  mkdir -p "$DIR/logs" "$DIR/etcd"
  touch "$DIR/$MARKER"
  chmod 700 "$DIR" "$DIR/etcd"

  local ports
  mapfile -t ports < <(pick_ports)
  [ "${#ports[@]}" -eq 3 ] || die "could not pick free ports"
  ETCD_PORT="${WRIT_ETCD_PORT:-${ports[0]}}"
  ETCD_PEER_PORT="${WRIT_ETCD_PEER_PORT:-${ports[1]}}"
  APISERVER_PORT="${WRIT_APISERVER_PORT:-${ports[2]}}"
  local p
  for p in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT"; do
    port_in_use "$p" && die "port 127.0.0.1:$p is already in use"
  done
  cat >"$DIR/ports.env" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
EOF
  log "state in $DIR; etcd 127.0.0.1:$ETCD_PORT (peer $ETCD_PEER_PORT), kube-apiserver https://127.0.0.1:$APISERVER_PORT"

  log "generating certificates and kubeconfigs"
  generate_credentials
  log "credentials: ok (${SECONDS}s)"

  STARTED=()
  start etcd \
    --name writ \
    --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "writ=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state new \
    --logger zap --log-outputs stderr
  STARTED+=(etcd)
  wait_for "etcd health" etcd_healthy

  start kube-apiserver \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 \
    --advertise-address 127.0.0.1 \
    --secure-port "$APISERVER_PORT" \
    --insecure-port 0 \
    --cert-dir "$DIR/pki" \
    --tls-cert-file "$PKI/apiserver.crt" \
    --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --authorization-mode RBAC \
    --anonymous-auth=false \
    --enable-admission-plugins NamespaceLifecycle,ServiceAccount,MutatingAdmissionWebhook,ValidatingAdmissionWebhook \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --endpoint-reconciler-type none \
    --allow-privileged=true \
    --profiling=false
  STARTED+=(kube-apiserver)
  wait_for "kube-apiserver /readyz" apiserver_ready

  start kube-controller-manager \
    --kubeconfig "$DIR/kubeconfig" \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" \
    --cluster-signing-key-file "$PKI/ca.key" \
    --use-service-account-credentials=false \
    --controllers '*' \
    --leader-elect=false \
    --bind-address 127.0.0.1 \
    --secure-port 0 \
    --port 0 \
    --profiling=false
  STARTED+=(kube-controller-manager)
  wait_for "default/default ServiceAccount and token" default_sa_ready

  log "up in ${SECONDS}s; admin kubeconfig $DIR/kubeconfig"
  print_env
}

cmd_down() {
  if [ ! -d "$DIR" ]; then
    log "nothing to stop ($DIR does not exist)"
    return 0
  fi
  stop_all
  log "down; logs kept in $DIR/logs"
}

cmd_status() {
  if is_up; then
    log "up ($DIR, $(grep APISERVER_PORT "$DIR/ports.env" 2>/dev/null || echo '?'))"
    return 0
  fi
  log "not running ($DIR)"
  return 1
}

with_lock() {
  # Serialise concurrent up/down calls. The lock lives next to the state
  # directory (which `up` wipes); children close fd 9 so they never hold it.
  mkdir -p "$(dirname "$DIR")"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$DIR.lock"
    flock -w 300 9 || die "could not lock $DIR.lock"
  fi
  "$@"
}

case "${1:-}" in
  up) with_lock cmd_up ;;
  down) with_lock cmd_down ;;
  env) print_env ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 up|down|env|status" >&2
    exit 2
    ;;
esac
