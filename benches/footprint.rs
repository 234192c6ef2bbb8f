//! What one cached object costs the operator, per kind: the heap of the
//! object and of its entry in the cache (kube's reflector store), counted by
//! a global allocator in glibc's chunk sizes (the request plus its 8-byte
//! header, rounded up to 16, at least 32 bytes), the way the operator's RSS
//! grows with them. No cluster: the objects are what the API server sends for
//! the scale bench's agent pods, their credential Secrets (a real certificate
//! chain, key and token) and their grants, decoded and trimmed as the
//! operator's watches do.
//!
//! `cargo bench --bench footprint` (part of `make bench`). N via
//! `WRIT_FOOTPRINT_N` (default 10,000).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicI64, Ordering},
};

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{reflector, watcher::Event};
use serde_json::json;
use writ::{
    pki::{
        cert::{KeyAlgorithm, PodCertificateRequest},
        token, CertificateAuthority, CertificateIssuer,
    },
    state::{AgentPod, CachedGrant, CredentialSecret},
};

/// Heap in use, in glibc chunk sizes.
static HEAP: AtomicI64 = AtomicI64::new(0);

fn chunk(size: usize) -> i64 {
    (((size + 8 + 15) & !15).max(32)) as i64
}

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged; only a
// counter is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HEAP.fetch_add(chunk(layout.size()), Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HEAP.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
        // SAFETY: allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HEAP.fetch_add(chunk(new_size) - chunk(layout.size()), Ordering::Relaxed);
        // SAFETY: as for `dealloc`, and a new size the caller checked.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

const NS: &str = "scale-123456";
const NOW: &str = "2026-11-30T02:11:12Z";

fn uid(i: usize) -> String {
    format!("{:08x}-1c2d-4e5f-9a8b-{:012x}", i * 7919 % 0xffff_ffff, i)
}

/// Heap per object of `objects` alone, and of the entry a reflector store
/// adds for each (its key, a copy of the name, namespace, uid and
/// `resourceVersion` the object still holds, and its slot in the table).
fn cached<K>(objects: Vec<K>) -> (f64, f64)
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let n = objects.len() as f64;
    let before = HEAP.load(Ordering::Relaxed);
    let alone: Vec<std::sync::Arc<K>> = objects.iter().cloned().map(std::sync::Arc::new).collect();
    let objects_only = (HEAP.load(Ordering::Relaxed) - before - chunk(alone.capacity() * 8)) as f64 / n;
    drop(alone);
    let before = HEAP.load(Ordering::Relaxed);
    let (store, mut writer) = reflector::store::<K>();
    for o in objects {
        writer.apply_watcher_event(&Event::Apply(o));
    }
    // The store keeps its own copy of each object and the original goes: what
    // is left is the entry.
    let entry = (HEAP.load(Ordering::Relaxed) - before) as f64 / n;
    assert_eq!(store.state().len() as f64, n, "every object cached");
    (objects_only, entry)
}

fn pods(n: usize) -> Vec<AgentPod> {
    (0..n)
        .map(|i| {
            let mut p: AgentPod = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": format!("p-{i}"), "namespace": NS, "uid": uid(i),
                    "resourceVersion": format!("{}", 1_200_000 + i), "creationTimestamp": NOW,
                    "labels": {"writ.dev/agent": "worker"},
                    "annotations": {"writ.dev/credential-secret": format!("writ-cred-{:032x}", i)},
                    "managedFields": [{"manager": "bench", "operation": "Update"}]
                },
                "spec": {"serviceAccountName": "worker", "serviceAccount": "worker",
                         "containers": [{"name": "a", "image": "x"}]},
                "status": {"phase": "Running"}
            }))
            .expect("pod");
            p.trim();
            p
        })
        .collect()
}

fn secrets(n: usize) -> Vec<CredentialSecret> {
    let ca = CertificateAuthority::generate("Writ CA", 1_750_000_000, 86_400).expect("ca");
    let key = token::SigningKey::generate().expect("signing key");
    // Distinct certificates and tokens for a sample; names and uids for all.
    let sample: Vec<Secret> = (0..200)
        .map(|i| {
            let issued = ca
                .issue(&PodCertificateRequest {
                    spiffe_id: format!("spiffe://bench.writ.dev/ns/{NS}/agent/worker"),
                    namespace: NS.into(),
                    pod_name: format!("p-{i}"),
                    pod_uid: uid(i),
                    key_algorithm: KeyAlgorithm::EcdsaP256,
                    not_before: 1_750_000_000,
                    ttl_secs: 3600,
                })
                .expect("certificate");
            let claims = token::Claims {
                iss: "spiffe://bench.writ.dev/writ".into(),
                sub: format!("spiffe://bench.writ.dev/ns/{NS}/agent/worker"),
                aud: vec!["scale-api".into()],
                iat: 1_750_000_000,
                nbf: 1_750_000_000,
                exp: 1_750_001_800,
                jti: token::new_jti().expect("jti"),
                cap: vec![token::Capability {
                    action: "k8s:deployments.patch".into(),
                    resource: "k8s:staging/deployments/web".into(),
                }],
                task: token::Task { id: format!("S-{i}"), intent: None },
                grant: token::GrantRef { namespace: NS.into(), name: format!("g-{i}"), uid: uid(i + 50_000) },
                pod: token::PodRef { name: format!("p-{i}"), uid: uid(i) },
                cnf: token::Confirmation { x5t_s256: issued.thumbprint.clone(), jkt: None },
                act: Some(token::Actor { sub: "admin".into(), act: None }),
                req: "admin".into(),
                apr: None,
                txn: None,
                gjti: None,
            };
            let jwt = token::sign(&key, &claims).expect("token");
            let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {
                    "name": "x", "namespace": NS, "creationTimestamp": NOW,
                    "labels": {"writ.dev/pod": format!("p-{i}"), "writ.dev/agent": "worker",
                               "app.kubernetes.io/managed-by": "writ"},
                    "finalizers": ["writ.dev/revoke"],
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": format!("p-{i}"),
                                         "uid": uid(i), "controller": true}],
                    "managedFields": [{"manager": "writ", "operation": "Update"}]
                },
                "data": {
                    "tls.crt": b64(&issued.chain_pem), "tls.key": b64(&issued.key_pem),
                    "ca.crt": b64(ca.cert_pem()),
                    format!("grant.g-{i}.jwt"): b64(&jwt),
                }
            }))
            .expect("secret")
        })
        .collect();
    (0..n)
        .map(|i| {
            let mut s = sample[i % sample.len()].clone();
            s.metadata.name = Some(format!("writ-cred-{:032x}", i));
            s.metadata.uid = Some(uid(i + 90_000));
            s.metadata.resource_version = Some(format!("{}", 1_300_000 + i));
            let mut cached = CredentialSecret::from(s);
            cached.trim();
            cached
        })
        .collect()
}

fn grants(n: usize) -> Vec<CachedGrant> {
    (0..n)
        .map(|i| {
            let cap = json!({"action": "k8s:deployments.patch", "resource": "k8s:staging/deployments/web"});
            let mut g: CachedGrant = serde_json::from_value(json!({
                "apiVersion": "writ.dev/v1alpha1", "kind": "CapabilityGrant",
                "metadata": {
                    "name": format!("g-{i}"), "namespace": NS, "uid": uid(i + 50_000),
                    "resourceVersion": format!("{}", 1_400_000 + i), "generation": 1, "creationTimestamp": NOW,
                    "annotations": {"writ.dev/requested-by": "admin",
                                    "writ.dev/requested-groups": "system:masters,system:authenticated"},
                    "finalizers": ["writ.dev/revoke"],
                    "managedFields": [{"manager": "kubectl", "operation": "Update"}]
                },
                "spec": {"agent": "worker", "pod": format!("p-{i}"), "task": {"id": format!("S-{i}")},
                         "capabilities": [cap], "audiences": ["scale-api"], "ttl": "30m"},
                "status": {
                    "phase": "Active", "requestedBy": "admin", "requested": [cap], "approved": [cap],
                    "chain": ["admin"], "issuedAt": NOW, "expiresAt": "2026-11-30T02:41:12Z",
                    "reason": "tokens issued to the bound pods", "observedGeneration": 1,
                    "tokens": [{"pod": format!("p-{i}"), "jti": format!("{:022x}", i), "expiresAt": "2026-11-30T02:41:12Z"}],
                    "conditions": [
                        {"type": "Approved", "status": "True", "reason": "NoApprovalRequired",
                         "message": "capabilities approved", "lastTransitionTime": NOW, "observedGeneration": 1},
                        {"type": "Issued", "status": "True", "reason": "TokensIssued",
                         "message": "1 token(s) issued", "lastTransitionTime": NOW, "observedGeneration": 1}
                    ]
                }
            }))
            .expect("grant");
            g.trim();
            g
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("WRIT_FOOTPRINT_N").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let rows = [
        ("agent pod (`AgentPod`)", cached(pods(n))),
        ("credential Secret (`CredentialSecret`)", cached(secrets(n))),
        ("grant (`CachedGrant`)", cached(grants(n))),
    ];
    println!("Heap per cached object, glibc chunk sizes, N = {n} of each kind\n");
    println!("| Kind | Object | Its cache entry | Total |");
    println!("|---|---|---|---|");
    for (kind, (object, entry)) in &rows {
        println!("| {kind} | {object:.0} B | {entry:.0} B | {:.0} B |", object + entry);
    }
    let total: f64 = rows.iter().map(|(_, (o, e))| o + e).sum();
    println!(
        "| one of each (a credential and its grant) | | | **{total:.0} B** ({:.1} MiB at N) |",
        total * n as f64 / 1_048_576.0
    );
}
