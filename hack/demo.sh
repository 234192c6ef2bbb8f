#!/usr/bin/env bash
# `make demo`: Writ end to end on a real API server, narrated.
#
# Without a reachable cluster in KUBECONFIG it starts the local control plane
# (hack/control-plane.sh). It runs `writ run` in the background with its
# webhooks registered, applies examples/, plays the kubelet for the agent
# pods, and shows what happens. The cluster and the operator stay up for you
# to explore; `hack/demo.sh down` stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE="${WRIT_CACHE:-$HOME/.cache/writ}/demo"
NS=demo
mkdir -p "$STATE"

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
run() { printf '   $ %s\n' "$*"; "$@" 2>&1 | sed 's/^/     /'; }
play_kubelet() { kubectl -n "$NS" patch pod "$1" --subresource=status --type=merge -p "{\"status\":{\"phase\":\"$2\"}}" >/dev/null; }

if [ "${1:-}" = down ]; then
  [ -f "$STATE/writ.pid" ] && kill "$(cat "$STATE/writ.pid")" 2>/dev/null || true
  rm -f "$STATE/writ.pid"
  hack/control-plane.sh down || true
  exit 0
fi

if [ -n "${KUBECONFIG:-}" ] && kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
  bold "Using the cluster in KUBECONFIG=$KUBECONFIG"
else
  bold "Starting a local control plane (etcd + kube-apiserver + kube-controller-manager on 127.0.0.1)"
  eval "$(hack/control-plane.sh up)"
fi
export KUBECONFIG

bold "Building writ"
cargo build --quiet --bin writ
WRIT="$ROOT/target/debug/writ"

bold "Installing the CRDs"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=30s crd/agentidentities.writ.dev crd/capabilitygrants.writ.dev crd/delegationpolicies.writ.dev >/dev/null
say "kubectl get writ now lists AgentIdentities, DelegationPolicies and CapabilityGrants."

bold "Starting the operator: writ run (webhooks at https://127.0.0.1:18443, metrics at http://127.0.0.1:19090)"
[ -f "$STATE/writ.pid" ] && kill "$(cat "$STATE/writ.pid")" 2>/dev/null || true
nohup "$WRIT" run --namespace writ-system --trust-domain demo.writ.dev \
  --webhook-addr 127.0.0.1:18443 --webhook-url https://127.0.0.1:18443 \
  --metrics-addr 127.0.0.1:19090 --token-addr 127.0.0.1:18444 >"$STATE/writ.log" 2>&1 &
echo $! >"$STATE/writ.pid"
for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:19090/readyz >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs http://127.0.0.1:19090/readyz >/dev/null || { tail -30 "$STATE/writ.log"; exit 1; }
say "ready; log in $STATE/writ.log"

bold "A namespace for the agents, and who may do what there"
# A previous run's namespace goes first (the operator revokes what it held).
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=90s >/dev/null
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NS" create rolebinding demo-users --clusterrole=edit --user=alice --user=bob \
  --group="system:serviceaccounts:$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl create clusterrole writ-demo-user --verb='*' --resource=capabilitygrants.writ.dev --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NS" create rolebinding writ-demo-users --clusterrole=writ-demo-user --user=alice --user=bob \
  --group="system:serviceaccounts:$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
run kubectl -n "$NS" apply -f examples/00-service-accounts.yaml -f examples/01-identities.yaml -f examples/02-delegation-policy.yaml

bold "Agent pods claim their identities (label writ.dev/agent); Writ injects a credential volume"
for agent in planner release-bot; do
  cat <<YAML | kubectl -n "$NS" apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: $agent-0, labels: {writ.dev/agent: $agent}}
spec:
  serviceAccountName: $agent
  automountServiceAccountToken: false
  containers: [{name: agent, image: registry.invalid/agent:1}]
YAML
done
# There is no kubelet: the demo plays it, marking the pods Running.
for agent in planner release-bot; do
  play_kubelet "$agent-0" Running
done
say "An impostor pod (wrong service account) is refused at admission:"
cat <<YAML | kubectl -n "$NS" apply -f - 2>&1 | sed 's/^/     /' || true
apiVersion: v1
kind: Pod
metadata: {name: impostor, labels: {writ.dev/agent: release-bot}}
spec: {serviceAccountName: planner, automountServiceAccountToken: false, containers: [{name: a, image: registry.invalid/a:1}]}
YAML
sleep 2
SECRET=$(kubectl -n "$NS" get pod release-bot-0 -o jsonpath='{.metadata.annotations.writ\.dev/credential-secret}')
say "release-bot-0's credentials are in Secret $SECRET (mounted at /var/run/secrets/writ.dev/):"
kubectl -n "$NS" get secret "$SECRET" -o jsonpath='{.data.tls\.crt}' | base64 -d >"$STATE/release-bot.crt"
run "$WRIT" inspect "$STATE/release-bot.crt"

bold "Certificates rotate before they expire (an identity with 20-second certificates, rotateBefore 10s)"
kubectl -n "$NS" create serviceaccount heartbeat --dry-run=client -o yaml | kubectl -n "$NS" apply -f - >/dev/null
cat <<YAML | kubectl -n "$NS" apply -f - >/dev/null
apiVersion: writ.dev/v1alpha1
kind: AgentIdentity
metadata: {name: heartbeat}
spec:
  class: Agent
  serviceAccountName: heartbeat
  owner: team-platform
  credential: {ttl: 20s, rotateBefore: 10s, keyAlgorithm: Ed25519}
  ceiling: [{action: "k8s:deployments.get", resource: "k8s:staging/deployments/*"}]
---
apiVersion: v1
kind: Pod
metadata: {name: heartbeat-0, labels: {writ.dev/agent: heartbeat}}
spec: {serviceAccountName: heartbeat, automountServiceAccountToken: false, containers: [{name: a, image: registry.invalid/a:1}]}
YAML
play_kubelet heartbeat-0 Running
HB_SECRET=""
for _ in $(seq 1 50); do
  HB_SECRET=$(kubectl -n "$NS" get pod heartbeat-0 -o jsonpath='{.metadata.annotations.writ\.dev/credential-secret}' 2>/dev/null)
  [ -n "$HB_SECRET" ] && kubectl -n "$NS" get secret "$HB_SECRET" >/dev/null 2>&1 && break
  sleep 0.2
done
serial() { kubectl -n "$NS" get secret "$HB_SECRET" -o jsonpath='{.data.tls\.crt}' | base64 -d >"$STATE/hb.crt"; "$WRIT" inspect "$STATE/hb.crt" | grep -m1 '^  serial:' | awk '{print $2}'; }
say "heartbeat-0's certificate now: $(serial)"
say "waiting 12 seconds..."
sleep 12
say "heartbeat-0's certificate now: $(serial)  (new key, new serial; the old serial is on the revocation list)"
# Routine rotation writes no Event (one per pod per rotation would double the
# API writes): it is in the audit log, the metrics and `writ status pod`.
# Events are kept for what needs attention (rejected claims, revocations).
say "Rotation is recorded in the operator's audit log, its metrics and writ status, not as Events:"
run bash -c "sed 's/\x1b\[[0-9;]*m//g' '$STATE/writ.log' | grep 'pod=heartbeat-0' | grep -m1 'rotation=true' || echo '(no rotation logged yet)'"
run bash -c "curl -fs http://127.0.0.1:19090/metrics | grep '^writ_credentials_total{kind=\"certificate\",event=\"rotated\"}' || echo '(no rotation counted yet)'"
run "$WRIT" status pod heartbeat-0 -n "$NS"

bold "alice (release-managers) asks for one task: patch one deployment for 15 minutes"
run kubectl -n "$NS" --as alice --as-group release-managers apply -f examples/03-grant.yaml
sleep 2
run kubectl -n "$NS" get capabilitygrant deploy-web-1234
kubectl -n "$NS" get secret "$SECRET" -o jsonpath='{.data.grant\.deploy-web-1234\.jwt}' | base64 -d >"$STATE/deploy-web-1234.jwt"
say "The token the pod received (claims only; it is useless without the pod's private key):"
run "$WRIT" inspect "$STATE/deploy-web-1234.jwt"
say "A resource server checks it with the certificate the agent presented (trust data from writ-system):"
VERIFY=(--token "$STATE/deploy-web-1234.jwt" --audience deploy-api --action k8s:deployments.patch --resource k8s:staging/deployments/web)
run "$WRIT" verify "${VERIFY[@]}" --cert "$STATE/release-bot.crt" || true
PLANNER_SECRET=$(kubectl -n "$NS" get pod planner-0 -o jsonpath='{.metadata.annotations.writ\.dev/credential-secret}')
kubectl -n "$NS" get secret "$PLANNER_SECRET" -o jsonpath='{.data.tls\.crt}' | base64 -d >"$STATE/planner.crt"
say "Stolen and replayed from another pod, it is refused:"
run "$WRIT" verify "${VERIFY[@]}" --cert "$STATE/planner.crt" || true

bold "Standard formats: SPIFFE files in the pod, the SPIFFE bundle, OpenID Connect Discovery"
say "The token is a JWT-SVID (ES256, typ JWT, kid; sub the SPIFFE ID, aud, exp), and the pod's volume"
say "is a SPIFFE credential folder (SPIFFE Filesystem Delivery); every container has SPIFFE_CREDENTIAL_FOLDER:"
run kubectl -n "$NS" get pod release-bot-0 -o jsonpath='{range .spec.containers[0].env[*]}{.name}={.value}{"\n"}{end}'
say "The files of Secret $SECRET (the credential bundle: the PKCS#8 key, then the chain, leaf first, no root):"
kubectl -n "$NS" get secret "$SECRET" -o json | python3 -c 'import json,sys; [print("     " + k) for k in sorted(json.load(sys.stdin)["data"])]'
kubectl -n "$NS" get secret "$SECRET" -o jsonpath='{.data.credential-bundle\.private-key\.pem}' | base64 -d | grep -- '-----BEGIN' | sed 's/^/     /'
kubectl get configmap -n writ-system writ-trust-bundle -o jsonpath='{.data.ca\.crt}' >"$STATE/trust-bundle.pem"
say "The discovery document (the issuer is the tokens' iss):"
say "$ curl --cacert trust-bundle.pem https://127.0.0.1:18443/.well-known/openid-configuration"
curl -s --cacert "$STATE/trust-bundle.pem" https://127.0.0.1:18443/.well-known/openid-configuration \
  | python3 -c 'import json,sys; [print("     %s: %s" % (k, json.dumps(v))) for k, v in json.load(sys.stdin).items()]'
say "The SPIFFE bundle (also ConfigMap writ-spiffe-bundle, key bundle.spiffe, beside every writ-trust-bundle):"
curl -s --cacert "$STATE/trust-bundle.pem" https://127.0.0.1:18443/spiffe-bundle >"$STATE/bundle.spiffe"
python3 - "$STATE/bundle.spiffe" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print("     spiffe_sequence %s, spiffe_refresh_hint %ss" % (b["spiffe_sequence"], b["spiffe_refresh_hint"]))
for k in b["keys"]:
    extra = "  x5c: [the CA certificate]" if "x5c" in k else ""
    print("     use=%-9s kty=%-3s crv=%-7s kid=%s%s" % (k["use"], k["kty"], k.get("crv", "-"), k.get("kid", "-"), extra))
PY

bold "Per-call tokens: the agent exchanges its grant token for one tool call (RFC 8693, mutual TLS on :18444)"
sed -e 's/name: deploy-web-1234/name: tool-call/' examples/03-grant.yaml \
  | kubectl -n "$NS" --as alice --as-group release-managers apply -f - | sed 's/^/     /'
sleep 2
mkdir -p "$STATE/creds"
for key in tls.crt tls.key ca.crt grant.tool-call.jwt; do
  kubectl -n "$NS" get secret "$SECRET" -o jsonpath="{.data.${key//./\\.}}" | base64 -d >"$STATE/creds/$key"
done
TOKEN=(--credentials "$STATE/creds" --endpoint https://127.0.0.1:18444 --grant tool-call --resource deploy-api
  --action k8s:deployments.patch --target k8s:staging/deployments/web)
say "$ writ token --grant tool-call --resource deploy-api --action k8s:deployments.patch --target k8s:staging/deployments/web"
"$WRIT" token "${TOKEN[@]}" >"$STATE/per-call.jwt" 2>&1 || true
say "A token for one audience and one capability, for about a minute, tied to the grant token it came from:"
run "$WRIT" inspect "$STATE/per-call.jwt"
PER_CALL=(--token "$STATE/per-call.jwt" --audience deploy-api --action k8s:deployments.patch --resource k8s:staging/deployments/web)
run "$WRIT" verify "${PER_CALL[@]}" --cert "$STATE/creds/tls.crt" || true
say "The grant is revoked: new exchanges are refused, and the per-call token already issued with them:"
run kubectl -n "$NS" delete capabilitygrant tool-call
sleep 2
run "$WRIT" token "${TOKEN[@]}" || true
run "$WRIT" verify "${PER_CALL[@]}" --cert "$STATE/creds/tls.crt" || true

bold "An over-broad grant is rejected before it exists"
cat <<YAML | kubectl -n "$NS" --as alice --as-group release-managers apply -f - 2>&1 | sed 's/^/     /' || true
apiVersion: writ.dev/v1alpha1
kind: CapabilityGrant
metadata: {name: everything}
spec:
  agent: release-bot
  task: {id: YOLO-1}
  capabilities: [{action: "k8s:deployments.*", resource: "k8s:prod/deployments/*"}]
  audiences: [deploy-api]
  ttl: 2h
YAML

bold "Deleting a deployment needs an SRE's approval"
run kubectl -n "$NS" --as alice --as-group release-managers apply -f examples/04-grant-needs-approval.yaml
sleep 2
run kubectl -n "$NS" get capabilitygrant cleanup-old-canary
say "alice cannot approve her own request:"
kubectl -n "$NS" --as alice --as-group release-managers patch capabilitygrant cleanup-old-canary --type=merge \
  -p '{"spec":{"approval":{"decision":"Approved"}}}' 2>&1 | sed 's/^/     /' || true
say "bob (sre-oncall) can (this is what 'writ approve cleanup-old-canary' does, as the caller):"
run kubectl -n "$NS" --as bob --as-group sre-oncall patch capabilitygrant cleanup-old-canary --type=merge -p '{"spec":{"approval":{"decision":"Approved"}}}'
sleep 2
run kubectl -n "$NS" get capabilitygrant cleanup-old-canary

bold "A short grant expires by itself (ttl 10s)"
sed -e 's/name: deploy-web-1234/name: quick-look/' -e 's/ttl: 15m/ttl: 10s/' examples/03-grant.yaml \
  | kubectl -n "$NS" --as alice --as-group release-managers apply -f - | sed 's/^/     /'
sleep 2
run kubectl -n "$NS" get capabilitygrant quick-look
say "waiting 10 seconds..."
sleep 10
run kubectl -n "$NS" get capabilitygrant quick-look

bold "Delegation: alice -> planner -> release-bot, and the cascade when the parent ends"
cat <<YAML | kubectl -n "$NS" --as alice --as-group release-managers apply -f - | sed 's/^/     /'
apiVersion: writ.dev/v1alpha1
kind: CapabilityGrant
metadata: {name: plan-web-1234}
spec:
  agent: planner
  task: {id: PR-1234, intent: plan the web v2 rollout}
  capabilities: [{action: "k8s:deployments.patch", resource: "k8s:staging/deployments/web"}]
  audiences: [deploy-api]
  ttl: 20m
YAML
sleep 2
cat <<YAML | kubectl -n "$NS" --as "system:serviceaccount:$NS:planner" --as-group system:serviceaccounts --as-group "system:serviceaccounts:$NS" apply -f - | sed 's/^/     /'
apiVersion: writ.dev/v1alpha1
kind: CapabilityGrant
metadata: {name: exec-web-1234}
spec:
  agent: release-bot
  parent: plan-web-1234
  task: {id: PR-1234, intent: patch the canary}
  capabilities: [{action: "k8s:deployments.patch", resource: "k8s:staging/deployments/web"}]
  audiences: [deploy-api]
  ttl: 10m
YAML
sleep 2
run kubectl -n "$NS" get capabilitygrant plan-web-1234 exec-web-1234
say "the planner finishes its task; its sub-grant is revoked with it:"
run kubectl -n "$NS" patch capabilitygrant plan-web-1234 --type=merge -p '{"spec":{"completed":true}}'
sleep 2
run kubectl -n "$NS" get capabilitygrant plan-web-1234 exec-web-1234

bold "Everything Writ manages"
run kubectl -n "$NS" get writ
say "Revoked tokens and certificates are published: curl -k https://127.0.0.1:18443/revocations"
say "JWKS: curl -k https://127.0.0.1:18443/.well-known/jwks.json"
say "SPIFFE bundle: curl -k https://127.0.0.1:18443/spiffe-bundle; discovery: curl -k https://127.0.0.1:18443/.well-known/openid-configuration"
say "Metrics: curl http://127.0.0.1:19090/metrics"

bold "The cluster and the operator are still running"
say "export KUBECONFIG=$KUBECONFIG"
say "kubectl -n $NS get writ; kubectl -n $NS describe capabilitygrant deploy-web-1234"
say "Stop everything with: hack/demo.sh down"
