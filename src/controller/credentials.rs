//! Pod credentials: for each running pod that claims an AgentIdentity, a key
//! pair and an X.509-SVID in the Secret named by the pod's annotation, owned
//! by the pod; rotated before expiry; revoked when the pod finishes or goes.
//!
//! Every decision is made from what is stored (the certificate in the
//! Secret), never from memory, so restarts neither re-mint valid
//! certificates nor forget to rotate.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{future, StreamExt as _};
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference, ByteString};
use kube::{
    api::{Api, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{controller::Action, reflector::ObjectRef},
    ResourceExt,
};
use tracing::Instrument as _;

use super::machinery::{
    cache::Resync,
    gate::GenerationGate,
    intake::{self, every_object, through_intake, SWEEP},
};
use super::{is_not_found, Caches, Context, Error, MANAGER, RECONCILES_IN_FLIGHT};
use crate::api::names::{credential_keys as keys, POD_LABEL};
use crate::{
    api::{AgentIdentity, KeyAlgorithm, AGENT_LABEL},
    pki::{self, cert::PodCertificateRequest},
    state::{AgentPod, CredentialSecret},
    verify::{RevokedCertificate, RevokedToken},
};

/// What to do about one pod's credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodPlan {
    /// Not ours to handle (no label, no Secret annotation).
    Ignore,
    /// The pod may not hold this identity (e.g. created while Writ was not
    /// watching): issue nothing.
    Reject(String),
    /// Finished, deleted, or its identity is gone: revoke what it holds.
    Revoke(String),
    /// Mint a first certificate, or rotate (`rotation`).
    Issue {
        /// A certificate existed and is being replaced.
        rotation: bool,
    },
    /// The stored certificate is good until `rotate_at`.
    Keep {
        /// When to rotate (unix seconds).
        rotate_at: i64,
    },
}

/// Decides what a pod's credential needs. Pure.
pub fn plan_pod(
    pod: &AgentPod,
    identity: Option<&AgentIdentity>,
    stored: Option<crate::state::CertificateFacts<'_>>,
    expected_spiffe_id: &str,
    max_ttl_secs: i64,
    now: i64,
) -> PodPlan {
    let Some(agent) = pod.agent() else { return PodPlan::Ignore };
    if pod.credential_secret().is_none() {
        return PodPlan::Ignore;
    }
    if pod.finished() {
        return PodPlan::Revoke("pod finished".into());
    }
    let Some(identity) = identity else { return PodPlan::Revoke(format!("AgentIdentity {agent} does not exist")) };
    if identity.metadata.deletion_timestamp.is_some() {
        return PodPlan::Revoke(format!("AgentIdentity {agent} is being deleted"));
    }
    if identity.spec.suspended {
        return PodPlan::Revoke(format!("AgentIdentity {agent} is suspended"));
    }
    let sa = pod.service_account();
    if sa != identity.spec.service_account_name {
        return PodPlan::Reject(format!(
            "pod runs as service account {sa:?}, AgentIdentity {agent} requires {:?}",
            identity.spec.service_account_name
        ));
    }
    let Some(cert) = stored else { return PodPlan::Issue { rotation: false } };
    let ttl = identity.spec.credential.ttl.as_secs_i64().min(max_ttl_secs);
    let rotate_before = identity.spec.credential.rotate_before.as_secs_i64().min(ttl / 2);
    let rotate_at = cert.not_after - rotate_before;
    let wrong_identity = cert.spiffe_id != Some(expected_spiffe_id);
    if wrong_identity || now >= rotate_at || cert.not_after - cert.not_before > ttl {
        return PodPlan::Issue { rotation: true };
    }
    PodPlan::Keep { rotate_at }
}

fn pki_algorithm(a: KeyAlgorithm) -> pki::cert::KeyAlgorithm {
    match a {
        KeyAlgorithm::EcdsaP256 => pki::cert::KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::Ed25519 => pki::cert::KeyAlgorithm::Ed25519,
    }
}

fn object(pod: &AgentPod) -> String {
    format!("Pod {}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Token entries in a credential Secret: `(grant name, jwt)`.
pub fn stored_tokens(secret: &Secret) -> Vec<(String, String)> {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| {
            let grant = k.strip_prefix(keys::GRANT_PREFIX)?.strip_suffix(keys::GRANT_SUFFIX)?;
            Some((grant.to_string(), String::from_utf8_lossy(&v.0).into_owned()))
        })
        .collect()
}

/// Agent pods whose stored certificate is due for rotation at `now` (unix
/// seconds), or no longer fits its identity: the sweep that rotates them,
/// each second, instead of a requeue kept per pod (see [`super::intake`]).
/// Pods with nothing stored yet, finished pods and pods whose identity is
/// gone are left to the changes that concern them.
pub fn rotations_due(
    shared: &crate::state::Shared,
    secrets: &kube::runtime::reflector::Store<CredentialSecret>,
    now: i64,
) -> Vec<ObjectRef<AgentPod>> {
    let max_ttl = shared.config.max_credential_ttl.as_secs_i64();
    shared
        .pods
        .state()
        .iter()
        .filter(|pod| {
            let (Some(agent), Some(secret)) = (pod.agent(), pod.credential_secret()) else { return false };
            let namespace = pod.namespace().unwrap_or_default();
            let Some(stored) = secrets.get(&ObjectRef::new(secret).within(&namespace)) else { return false };
            let Some(cert) = stored.certificate() else { return false };
            let identity = shared.identity(&namespace, agent);
            let spiffe = pki::cert::spiffe_id(&shared.config.trust_domain, &namespace, agent);
            plan_pod(pod, identity.as_deref(), Some(cert), &spiffe, max_ttl, now) == PodPlan::Issue { rotation: true }
        })
        .map(|pod| ObjectRef::from_obj(&**pod))
        .collect()
}

/// Reconciles one agent pod.
pub async fn reconcile(pod: Arc<AgentPod>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let span = tracing::info_span!("pod", namespace = %pod.namespace().unwrap_or_default(), name = %pod.name_any());
    let result = tracing::Instrument::instrument(reconcile_inner(&pod, &ctx), span).await;
    ctx.shared.metrics.reconciled("pod-credentials", started);
    result
}

async fn reconcile_inner(pod: &AgentPod, ctx: &Context) -> Result<Action, Error> {
    let shared = &ctx.shared;
    let namespace = pod.namespace().unwrap_or_default();
    let Some(secret_name) = pod.credential_secret().map(str::to_string) else {
        return Ok(Action::await_change());
    };
    let agent = pod.agent().unwrap_or_default().to_string();
    let identity = shared.identity(&namespace, &agent);
    let spiffe = pki::cert::spiffe_id(&shared.config.trust_domain, &namespace, &agent);
    // A new pod's Secret is not in the cache, and almost always does not
    // exist: that is believed, and the create finds out if the watch merely
    // lagged (409), after which the Secret is read from the API server.
    let mut from_api = false;
    // Each write that finds the Secret changed under it (a 409) decides
    // again on a fresh read; a Secret that keeps changing is left to the
    // changes that concern it.
    for _ in 0..4 {
        let read = if from_api {
            ctx.secret_writes.read_from_api(&namespace, &secret_name).await
        } else {
            ctx.secret_writes.read_or_absent(&namespace, &secret_name).await
        };
        let secret =
            read.map_err(|source| Error::Kube { op: "reading credential Secret of", object: object(pod), source })?;
        // A Secret being deleted (with its namespace, or by hand) is revoked
        // by its own reconcile, which then releases it. Writing a credential
        // into it meanwhile only had that one revoked in turn, a round per
        // write, each adding to the revocation list (267 such writes in one
        // 10,000-pod namespace teardown). Its removal brings the pod back
        // here, and a pod that still needs a credential gets a new Secret.
        if secret.as_ref().is_some_and(|s| s.metadata.deletion_timestamp.is_some()) {
            tracing::debug!(secret = %secret_name, "credential Secret being deleted; waiting for it to go");
            return Ok(Action::await_change());
        }
        // Writ acts only on the Secret it created for this pod: a pod's
        // annotation may name any Secret of its namespace (a tenant's
        // `db-password`, another pod's credential), and Writ must never
        // write to it, own it or revoke what it holds.
        if let Some(foreign) =
            secret.as_deref().filter(|s| !s.belongs_to(&pod.name_any(), &pod.uid().unwrap_or_default()))
        {
            refuse_foreign_secret(ctx, pod, foreign).await;
            return Ok(Action::await_change());
        }
        let stored = secret.as_deref().and_then(CredentialSecret::certificate);
        let now = pki::now_unix();
        let max_ttl = shared.config.max_credential_ttl.as_secs_i64();
        let mut plan = plan_pod(pod, identity.as_deref(), stored, &spiffe, max_ttl, now);
        // A live pod whose credential was revoked under it (its key removed:
        // its agent was suspended) gets nothing new: resuming the agent lets
        // new pods in, and nothing it held comes back. (A revoked certificate
        // whose key is still there is being replaced, and is re-issued.)
        if matches!(plan, PodPlan::Keep { .. } | PodPlan::Issue { .. }) {
            let cut_off = secret.as_deref().filter(|s| s.certificate().is_none()).and_then(CredentialSecret::leaf);
            if let Some(cert) = cut_off {
                if shared.revocations.is_certificate_revoked(cert.serial_hex).await {
                    plan = PodPlan::Ignore;
                }
            }
        }
        return match plan {
            PodPlan::Ignore => Ok(Action::await_change()),
            PodPlan::Reject(reason) => {
                if secret.is_none() {
                    ctx.event(&pod.object_ref(&()), true, "ClaimRejected", "Claim", reason).await;
                }
                Ok(Action::await_change())
            }
            PodPlan::Revoke(reason) => {
                if let Some(secret) = secret {
                    revoke_secret(ctx, pod, &secret, &reason).await?;
                }
                Ok(Action::await_change())
            }
            // The rotation is found by the sweep ([`rotations_due`]), not kept as a requeue.
            PodPlan::Keep { .. } => Ok(Action::await_change()),
            PodPlan::Issue { rotation } => {
                let Some(identity) = identity.as_deref() else { return Ok(Action::await_change()) };
                let first = secret.is_none();
                let version = secret.as_deref().and_then(CredentialSecret::resource_version);
                let issued =
                    match issue(ctx, pod, identity, &secret_name, &spiffe, (rotation, first, version), now).await {
                        // The pod goes with its namespace: nothing to issue, and no retry
                        // (each pod of a deleted namespace was retried every 2 s: 18,676
                        // refused creates while a 4,000-pod namespace emptied).
                        Err(Error::Kube { source, .. }) if super::namespace_terminating(&source) => {
                            tracing::debug!("namespace terminating; no credential issued");
                            return Ok(Action::await_change());
                        }
                        issued => issued?,
                    };
                if !issued {
                    // The Secret exists after all, or changed: decide again on what it holds.
                    from_api = true;
                    continue;
                }
                Ok(Action::await_change())
            }
        };
    }
    Ok(Action::requeue(Duration::from_secs(2)))
}

/// What Writ does when a pod names a Secret it did not create for that pod
/// (see [`CredentialSecret::belongs_to`]): nothing is written, owned or
/// revoked; the pod gets a warning Event, and the refusal is counted
/// (`writ_untrusted_total{what="secret"}`) and logged.
async fn refuse_foreign_secret(ctx: &Context, pod: &AgentPod, secret: &CredentialSecret) {
    let reason = if secret.pod.is_some() && secret.owner_uid().is_some() { "other-pod" } else { "not-created-by-writ" };
    ctx.shared.metrics.untrusted("secret", reason);
    tracing::warn!(pod = %pod.name_any(), namespace = %pod.namespace().unwrap_or_default(), secret = %secret.name_any(),
        reason, "pod names a Secret Writ did not create for it; not writing to it");
    ctx.event(
        &pod.object_ref(&()),
        true,
        "CredentialSecretRefused",
        "Guard",
        format!(
            "Secret {} was not created by Writ for this pod (its writ.dev/pod label and controller owner are not \
             this pod): Writ does not write to it, own it or revoke from it",
            secret.name_any()
        ),
    )
    .await;
}

/// Mints a certificate for `pod` and writes its credential Secret; returns
/// whether it wrote. `first`: the Secret was not found, so it is created,
/// never overwritten: if it exists after all (409), returns `false` without
/// writing, for the caller to read it from the API server and decide again.
/// Otherwise the Secret, read at `version` and found to be this pod's, is
/// applied on that version only (a Secret replaced meanwhile is a 409, and
/// the caller decides again).
async fn issue(
    ctx: &Context,
    pod: &AgentPod,
    identity: &AgentIdentity,
    secret_name: &str,
    spiffe: &str,
    (rotation, first, version): (bool, bool, Option<String>),
    now: i64,
) -> Result<bool, Error> {
    let shared = &ctx.shared;
    let namespace = pod.namespace().unwrap_or_default();
    let ttl = identity.spec.credential.ttl.as_secs_i64().min(shared.config.max_credential_ttl.as_secs_i64());
    let req = PodCertificateRequest {
        spiffe_id: spiffe.to_string(),
        namespace: namespace.clone(),
        pod_name: pod.name_any(),
        pod_uid: pod.uid().unwrap_or_default(),
        key_algorithm: pki_algorithm(identity.spec.credential.key_algorithm),
        not_before: now,
        ttl_secs: ttl,
    };
    let issued = shared.trust.issue(&req).map_err(|source| Error::Pki {
        op: "minting certificate",
        object: object(pod),
        source,
    })?;
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    };
    let bundle = shared.trust.bundle_pem();
    // The SPIFFE Filesystem Delivery files go in this same write: a reader sees all old or all new.
    let data: BTreeMap<String, ByteString> = [
        (keys::CERT.to_string(), issued.chain_pem.clone()),
        (keys::KEY.to_string(), issued.key_pem.clone()),
        (keys::SPIFFE_CREDENTIAL_BUNDLE.to_string(), format!("{}\n{}", issued.key_pem.trim_end(), issued.chain_pem)),
        (keys::spiffe_trust_bundle(&shared.config.trust_domain), bundle.clone()),
        (keys::CA.to_string(), bundle),
        (keys::SPIFFE_ID.to_string(), spiffe.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k, ByteString(v.into_bytes())))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.into()),
            namespace: Some(namespace.clone()),
            owner_references: Some(vec![owner]),
            // Revocation when the garbage collector deletes the Secret with its pod.
            finalizers: Some(vec![super::FINALIZER.to_string()]),
            labels: Some(BTreeMap::from([
                (AGENT_LABEL.to_string(), identity.name_any()),
                (POD_LABEL.to_string(), pod.name_any()),
                ("app.kubernetes.io/managed-by".to_string(), "writ".to_string()),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    };
    let api: Api<Secret> = Api::namespaced(shared.client.clone(), &namespace);
    // A first credential is a plain create (no field-ownership merge in the
    // API server, unlike an apply that creates); a rotation, or a create that
    // finds the Secret already there, is a server-side apply.
    let written = if first {
        let params = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        match api.create(&params, &secret).await {
            Ok(written) => written,
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(false),
            Err(source) => {
                return Err(Error::Kube { op: "creating credential Secret of", object: object(pod), source })
            }
        }
    } else {
        let mut value = serde_json::to_value(&secret).unwrap_or_default();
        value["apiVersion"] = "v1".into();
        value["kind"] = "Secret".into();
        if let Some(version) = version {
            value["metadata"]["resourceVersion"] = version.into();
        }
        match api.patch(secret_name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(value)).await {
            Ok(written) => written,
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(false),
            Err(source) => return Err(Error::Kube { op: "writing credential Secret of", object: object(pod), source }),
        }
    };
    ctx.secret_writes.note_written(&written.metadata);
    // Routine issuance and rotation are recorded in the audit log and the
    // metrics, not as Events: an Event per credential would double the API
    // writes per pod (and per rotation, every hour, for every pod). Events
    // are kept for what needs attention: rejected claims and revocations.
    shared.metrics.credential("certificate", if rotation { "rotated" } else { "issued" });
    if !rotation {
        if let Some(created) = pod.metadata.creation_timestamp.as_ref() {
            shared.metrics.pod_to_credential.observe((now - created.0.as_second()).max(0) as f64);
        }
    }
    tracing::info!(target: "audit", pod = %pod.name_any(), namespace = %namespace, serial = %issued.serial_hex,
        spiffe_id = %spiffe, not_after = issued.not_after, rotation, "pod certificate issued");
    Ok(true)
}

/// A pod reading another pod's credential Secret.
#[derive(Clone, Debug)]
pub struct Exposure {
    /// The pod whose credential Secret it is.
    pub victim: Arc<AgentPod>,
    /// The credential Secret.
    pub secret: Arc<CredentialSecret>,
    /// The field of the reading pod that names it.
    pub field: String,
}

/// The credential Secrets of other pods that `pod` reads (volumes,
/// projected volumes, `env`, `envFrom`): live credentials in Secrets Writ
/// created for another pod that still runs.
pub async fn exposures(ctx: &Context, pod: &k8s_openapi::api::core::v1::Pod) -> Vec<Exposure> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    let namespace = pod.namespace().unwrap_or_default();
    let (name, uid) = (pod.name_any(), pod.uid().unwrap_or_default());
    let mut out = Vec::new();
    for r in crate::state::secret_references(spec) {
        // The cache holds every credential Secret: a Secret it does not hold
        // is no credential, and costs no request.
        let Ok(Some(secret)) = ctx.secret_writes.read_or_absent(&namespace, &r.secret).await else { continue };
        if secret.belongs_to(&name, &uid) || secret.certificate().is_none() {
            continue;
        }
        let (Some(owner), Some(owner_uid)) = (secret.pod.as_deref(), secret.owner_uid()) else { continue };
        let Some(victim) = ctx.shared.pods.get(&ObjectRef::new(owner).within(&namespace)) else { continue };
        if victim.uid().as_deref() == Some(owner_uid.as_str()) && !victim.finished() {
            out.push(Exposure { victim, secret, field: r.field });
        }
    }
    out
}

/// Rotates a credential another pod has read: its certificate serial and
/// token ids go on the revocation list (durably) first, then the victim
/// gets a new key and certificate (its grants' tokens are re-minted for it,
/// the certificate having changed). Both pods get an Event; the exposure is
/// counted and audited.
pub async fn rotate_exposed(
    ctx: &Context,
    exposure: &Exposure,
    intruder: &k8s_openapi::api::core::v1::Pod,
) -> Result<(), Error> {
    let shared = &ctx.shared;
    let victim = &*exposure.victim;
    let namespace = victim.namespace().unwrap_or_default();
    let now = pki::now_unix();
    let mut secret = exposure.secret.clone();
    let old_serial = secret.certificate().map(|c| c.serial_hex.to_string()).unwrap_or_default();
    let tokens: Vec<RevokedToken> = secret
        .tokens
        .iter()
        .filter_map(crate::state::StoredToken::facts)
        .map(|f| RevokedToken { jti: f.jti.to_string(), expires_at: f.exp })
        .collect();
    let certs: Vec<RevokedCertificate> = secret
        .certificate()
        .iter()
        .map(|c| RevokedCertificate { serial: c.serial_hex.to_string(), expires_at: c.not_after })
        .collect();
    shared
        .revocations
        .revoke(&namespace, tokens.clone(), certs, now)
        .await
        .map_err(|source| Error::Revocation { object: object(victim), source })?;
    let agent = victim.agent().unwrap_or_default().to_string();
    let identity = shared.identity(&namespace, &agent);
    let spiffe = pki::cert::spiffe_id(&shared.config.trust_domain, &namespace, &agent);
    let mut rotated = false;
    if let Some(identity) = identity.as_deref() {
        for _ in 0..3 {
            if !secret.belongs_to(&victim.name_any(), &victim.uid().unwrap_or_default()) {
                break;
            }
            let version = secret.resource_version();
            if issue(ctx, victim, identity, &secret.name_any(), &spiffe, (true, false, version), now).await? {
                rotated = true;
                break;
            }
            let read = ctx.secret_writes.read_from_api(&namespace, &secret.name_any()).await;
            match read.map_err(|source| Error::Kube {
                op: "reading credential Secret of",
                object: object(victim),
                source,
            })? {
                Some(fresh) => secret = fresh,
                None => break,
            }
        }
    }
    let (intruder_name, field, secret_name) = (intruder.name_any(), &exposure.field, exposure.secret.name_any());
    shared.metrics.untrusted("credential-mount", if rotated { "rotated" } else { "revoked" });
    tracing::warn!(target: "audit", namespace = ?namespace, victim = ?victim.name_any(), intruder = ?intruder_name,
        secret = ?secret_name, field = ?field, serial = ?old_serial, tokens = tokens.len(), rotated,
        "credential Secret read by another pod; its credential revoked and rotated");
    ctx.event(
        &victim.object_ref(&()),
        true,
        "CredentialExposed",
        "Rotate",
        format!(
            "pod {intruder_name} reads this pod's credential Secret {secret_name} ({field}): certificate serial \
             {old_serial} and {} token(s) revoked{}",
            tokens.len(),
            if rotated { ", new key issued" } else { "" }
        ),
    )
    .await;
    ctx.event(
        &kube::Resource::object_ref(intruder, &()),
        true,
        "ForeignCredentialMount",
        "Guard",
        format!(
            "{field}: Secret {secret_name} is the credential Secret of pod {}; that credential was revoked and \
             rotated [foreign-credential-mount]",
            victim.name_any()
        ),
    )
    .await;
    Ok(())
}

/// Follows every pod of the cluster (on the leader) and rotates any
/// credential a pod other than its own reads: what the `pod-mounts` webhook
/// (failure policy `Ignore`) let through, or what was created while it was
/// skipped. Each (reading pod, Secret) is handled once per leadership term;
/// a failed rotation is tried again at that pod's next change.
pub async fn guard_credential_mounts(ctx: Arc<Context>) {
    use futures::StreamExt as _;
    use kube::runtime::{watcher, WatchStreamExt as _};
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::all(ctx.shared.client.clone());
    let mut handled = std::collections::HashSet::<(String, String)>::new();
    let events = watcher(api, watcher::Config::default().any_semantic()).default_backoff();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.uid().unwrap_or_default();
                handled.retain(|(u, _)| *u != uid);
                continue;
            }
            _ => continue,
        };
        for exposure in exposures(&ctx, &pod).await {
            let key = (pod.uid().unwrap_or_default(), exposure.secret.name_any());
            if !handled.insert(key.clone()) {
                continue;
            }
            if let Err(e) = rotate_exposed(&ctx, &exposure, &pod).await {
                tracing::warn!(namespace = %pod.namespace().unwrap_or_default(), pod = %pod.name_any(), error = %e,
                    "rotating a credential read by another pod failed");
                handled.remove(&key);
            }
        }
    }
}

/// Revokes everything a credential Secret holds: the certificate serial and
/// every token `jti` go on the revocation list (durably) first, then the key
/// and the tokens are removed from the Secret.
pub async fn revoke_secret(
    ctx: &Context,
    pod: &AgentPod,
    secret: &CredentialSecret,
    reason: &str,
) -> Result<(), Error> {
    let shared = &ctx.shared;
    let now = pki::now_unix();
    let cert = secret.certificate();
    let tokens = &secret.tokens;
    if cert.is_none() && tokens.is_empty() {
        return Ok(());
    }
    let revoked_tokens: Vec<RevokedToken> = tokens
        .iter()
        .filter_map(crate::state::StoredToken::facts)
        .map(|f| RevokedToken { jti: f.jti.to_string(), expires_at: f.exp })
        .collect();
    let revoked_certs: Vec<RevokedCertificate> =
        cert.iter().map(|c| RevokedCertificate { serial: c.serial_hex.to_string(), expires_at: c.not_after }).collect();
    let namespace = secret.namespace().unwrap_or_default();
    shared
        .revocations
        .revoke(&namespace, revoked_tokens.clone(), revoked_certs, now)
        .await
        .map_err(|source| Error::Revocation { object: object(pod), source })?;
    // Through the token writer, so that removals and token writes to this
    // Secret go out one patch at a time, in the order they were asked for.
    let removals = [(keys::KEY.to_string(), None), (keys::SPIFFE_CREDENTIAL_BUNDLE.to_string(), None)]
        .into_iter()
        .chain(tokens.iter().map(|t| (format!("{}{}{}", keys::GRANT_PREFIX, t.grant(), keys::GRANT_SUFFIX), None)));
    match ctx.secret_writes.write_keys(&namespace, &secret.name_any(), removals).await {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => {}
        Err(source) => return Err(Error::Write { op: "removing key material of", object: object(pod), source }),
    }
    if let Some(c) = cert {
        shared.metrics.credential("certificate", "revoked");
        tracing::info!(target: "audit", pod = %pod.name_any(), namespace = %namespace, serial = %c.serial_hex,
            tokens = revoked_tokens.len(), reason, "pod credential revoked");
        ctx.event(
            &pod.object_ref(&()),
            false,
            "CredentialRevoked",
            "Revoke",
            format!("certificate serial {} revoked: {reason}", c.serial_hex),
        )
        .await;
    }
    for _ in &revoked_tokens {
        shared.metrics.credential("token", "revoked");
    }
    Ok(())
}

/// Reconciles a credential Secret: when it is being deleted (its pod is
/// gone and the garbage collector removes it), revoke what it holds, then
/// release the finalizer. This is how deleted pods' serials get revoked
/// even if the operator was down when the pod went.
pub async fn reconcile_secret(secret: Arc<CredentialSecret>, ctx: Arc<Context>) -> Result<Action, Error> {
    if secret.metadata.deletion_timestamp.is_none() || !secret.has_writ_finalizer() {
        return Ok(Action::await_change());
    }
    let namespace = secret.namespace().unwrap_or_default();
    let pod_name = secret.pod.clone().unwrap_or_default();
    let pod = AgentPod::named(&namespace, &pod_name);
    // The garbage collector deletes it after its pod; anyone else (the
    // namespace going, a person) while the pod still runs.
    let pod_live = ctx
        .shared
        .pods
        .get(&ObjectRef::new(&pod_name).within(&namespace))
        .is_some_and(|p| p.metadata.deletion_timestamp.is_none());
    let reason = if pod_live { "credential Secret deleted" } else { "pod deleted" };
    revoke_secret(&ctx, &pod, &secret, reason).await?;
    // Revoking rewrote the Secret: release the finalizer on that version.
    let Some(secret) = ctx.secret_writes.read(&namespace, &secret.name_any()).await.map_err(|source| Error::Kube {
        op: "reading credential Secret",
        object: format!("Secret {namespace}/{}", secret.name_any()),
        source,
    })?
    else {
        return Ok(Action::await_change());
    };
    let api: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let remaining: Vec<String> = secret.finalizers().into_iter().filter(|f| f != super::FINALIZER).collect();
    let patch = serde_json::json!({
        "metadata": { "finalizers": remaining, "resourceVersion": secret.resource_version() }
    });
    match api.patch(&secret.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(source) => Err(Error::Kube {
            op: "releasing finalizer of",
            object: format!("Secret {namespace}/{}", secret.name_any()),
            source,
        }),
    }
}

/// The pod controller's name in metrics, logs and back-off.
pub const POD_CONTROLLER: &str = "pod-credentials";
/// The credential Secret controller's name in metrics, logs and back-off.
pub const SECRET_CONTROLLER: &str = "credential-secrets";

/// Error policy for credential Secrets: count the error, back off per Secret.
pub fn secret_error_policy(s: Arc<CredentialSecret>, err: &Error, ctx: Arc<Context>) -> Action {
    super::back_off(&ctx, SECRET_CONTROLLER, &*s, err, Duration::from_secs(2))
}

/// Error policy: count the error, back off per pod.
pub fn error_policy(pod: Arc<AgentPod>, err: &Error, ctx: Arc<Context>) -> Action {
    super::back_off(&ctx, POD_CONTROLLER, &*pod, err, Duration::from_secs(2))
}

/// The pod-credentials controller: one reconcile per agent pod, on a change
/// of the pod, of its credential Secret (by its `writ.dev/pod` label) or of
/// its identity's spec or existence, on a full pass, and when a sweep finds
/// its certificate due for rotation.
pub async fn pod_controller(ctx: Arc<Context>, caches: &Caches) {
    let (resync, all) = Resync::channel();
    let pods_store = ctx.shared.pods.clone();
    // A pod's credential depends on its identity's spec and existence, not
    // its status: the status (pod and grant counts) is rewritten about once
    // a second while pods come and go, and re-queueing every pod of the agent
    // on each write kept the controller busy with no-op reconciles while new
    // pods waited for their credentials.
    let identity_gate = GenerationGate::seeded(&caches.identities.store());
    let identity_cache = ctx.shared.identities.clone();
    let requests = futures::stream::select_all([
        caches.pods.changes(&resync).map(|p| ObjectRef::from_obj(&*p)).boxed(),
        // The pod a credential Secret belongs to, by its `writ.dev/pod` label
        // (Writ writes it with the pod as the Secret's owner).
        caches
            .secrets
            .changes(&resync)
            .filter_map(|s| {
                future::ready(s.pod.as_ref().map(|pod| ObjectRef::new(pod).within(&s.namespace().unwrap_or_default())))
            })
            .boxed(),
        caches
            .identities
            .changes(&resync)
            .flat_map(move |id| {
                if !identity_gate.changed(id.as_ref(), &identity_cache) {
                    return futures::stream::iter(Vec::new());
                }
                let ns = id.namespace().unwrap_or_default();
                let name = id.name_any();
                futures::stream::iter(
                    pods_store
                        .state()
                        .iter()
                        .filter(|p| p.namespace().as_deref() == Some(&ns) && p.agent() == Some(name.as_str()))
                        .map(|p| ObjectRef::from_obj(&**p))
                        .collect::<Vec<_>>(),
                )
            })
            .boxed(),
        every_object(all, caches.pods.store()).boxed(),
        {
            let (shared, secrets) = (ctx.shared.clone(), caches.secrets.store());
            intake::every(SWEEP)
                .flat_map(move |()| futures::stream::iter(rotations_due(&shared, &secrets, crate::pki::now_unix())))
                .boxed()
        },
    ]);
    let (controller, intake) = through_intake(caches.pods.store(), requests, RECONCILES_IN_FLIGHT);
    let run = controller.run(super::forgetting_failures(POD_CONTROLLER, reconcile), error_policy, ctx);
    intake.drain(run).instrument(tracing::info_span!("controller", name = POD_CONTROLLER)).await;
}

/// The credential-Secrets controller: one reconcile per credential Secret,
/// on its change and on a full pass.
pub async fn secret_controller(ctx: Arc<Context>, caches: &Caches) {
    let (resync, all) = Resync::channel();
    let secrets = &caches.secrets;
    let requests = futures::stream::select(
        secrets.changes(&resync).map(|s| ObjectRef::from_obj(&*s)),
        every_object(all, secrets.store()),
    );
    let (controller, intake) = through_intake(secrets.store(), requests, RECONCILES_IN_FLIGHT);
    let run = controller.run(super::forgetting_failures(SECRET_CONTROLLER, reconcile_secret), secret_error_policy, ctx);
    intake.drain(run).instrument(tracing::info_span!("controller", name = SECRET_CONTROLLER)).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use base64::Engine;
    use http::Method;
    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    use super::*;
    use crate::state::Shared;
    use crate::testing::{ApiServer, Reply};

    const NS: &str = "team";
    const SECRET: &str = "worker-0-writ";

    #[test]
    fn what_a_pods_credential_needs_as_a_table() {
        let (spiffe, other) = ("spiffe://td/ns/team/agent/worker", "spiffe://td/ns/team/agent/other");
        let now = 1_800_000_000;
        let identity = AgentIdentity::test(NS, "worker");
        // The identity's credential: 1 h, rotated 20 min before expiry (the defaults).
        let (ttl, before) =
            (identity.spec.credential.ttl.as_secs_i64(), identity.spec.credential.rotate_before.as_secs_i64());
        let cert = |not_before: i64, not_after: i64, id: &'static str| crate::state::CertificateFacts {
            serial_hex: "01",
            not_before,
            not_after,
            spiffe_id: Some(id),
            thumbprint: "t",
        };
        let fresh = cert(now - 60, now - 60 + ttl, spiffe);
        let running = AgentPod::test(NS, "worker-0", "worker");
        let mut deleting_identity = identity.clone();
        deleting_identity.metadata.deletion_timestamp = Some(crate::state::time(now));
        let mut unlabelled = running.clone();
        unlabelled.agent = None;
        let mut no_secret = running.clone();
        no_secret.credential_secret = None;
        type Case<'a> =
            (&'a str, AgentPod, Option<&'a AgentIdentity>, Option<crate::state::CertificateFacts<'a>>, PodPlan);
        let suspended = identity.clone().suspended();
        let cases: Vec<Case> = vec![
            ("no agent label", unlabelled, Some(&identity), None, PodPlan::Ignore),
            ("no credential Secret named", no_secret, Some(&identity), None, PodPlan::Ignore),
            (
                "finished",
                running.clone().in_phase(crate::state::PodPhase::Succeeded),
                Some(&identity),
                Some(fresh),
                PodPlan::Revoke("pod finished".into()),
            ),
            (
                "no identity",
                running.clone(),
                None,
                Some(fresh),
                PodPlan::Revoke("AgentIdentity worker does not exist".into()),
            ),
            (
                "identity being deleted",
                running.clone(),
                Some(&deleting_identity),
                Some(fresh),
                PodPlan::Revoke("AgentIdentity worker is being deleted".into()),
            ),
            (
                "identity suspended",
                running.clone(),
                Some(&suspended),
                Some(fresh),
                PodPlan::Revoke("AgentIdentity worker is suspended".into()),
            ),
            (
                "another service account",
                running.clone().running_as("intruder"),
                Some(&identity),
                None,
                PodPlan::Reject(
                    "pod runs as service account \"intruder\", AgentIdentity worker requires \"worker\"".into(),
                ),
            ),
            ("no certificate yet", running.clone(), Some(&identity), None, PodPlan::Issue { rotation: false }),
            (
                "a fresh certificate",
                running.clone(),
                Some(&identity),
                Some(fresh),
                PodPlan::Keep { rotate_at: fresh.not_after - before },
            ),
            (
                "due for rotation",
                running.clone(),
                Some(&identity),
                Some(cert(now - ttl + 60, now + 60, spiffe)),
                PodPlan::Issue { rotation: true },
            ),
            (
                "another identity's certificate",
                running.clone(),
                Some(&identity),
                Some(cert(now - 60, now - 60 + ttl, other)),
                PodPlan::Issue { rotation: true },
            ),
            (
                "longer than the identity allows",
                running.clone(),
                Some(&identity),
                Some(cert(now - 60, now + 2 * ttl, spiffe)),
                PodPlan::Issue { rotation: true },
            ),
        ];
        for (what, pod, identity, stored, want) in cases {
            assert_eq!(plan_pod(&pod, identity, stored, spiffe, 86_400, now), want, "{what}");
        }
    }

    /// What the fake API server holds as the pod's credential Secret.
    type Existing = Arc<Mutex<Option<serde_json::Value>>>;

    /// The test kit's API server: creates of the pod's credential Secret
    /// conflict (it exists, the cache has not seen it yet), reads of it
    /// return `existing`; other writes succeed and other reads find nothing.
    fn fake_api(existing: Existing, log: ApiServer) -> kube::Client {
        let conflict = Reply::of_status(
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409}),
        );
        fake_api_refusing_creates(existing, log, conflict)
    }

    /// [`fake_api`] with creates of Secrets refused with `refusal` (a Status).
    fn fake_api_refusing_creates(existing: Existing, log: ApiServer, refusal: Reply) -> kube::Client {
        fake_api_refusing(existing, log, refusal, |method, path| {
            method == Method::POST && path == format!("/api/v1/namespaces/{NS}/secrets")
        })
    }

    /// [`fake_api`] with the requests `refused` picks refused with `refusal`.
    fn fake_api_refusing(
        existing: Existing,
        log: ApiServer,
        refusal: Reply,
        refused: fn(&Method, &str) -> bool,
    ) -> kube::Client {
        log.answering(move |req| {
            if refused(&req.method, &req.path) {
                return refusal.clone();
            }
            match req.method {
                Method::GET if req.path == format!("/api/v1/namespaces/{NS}/secrets/{SECRET}") => {
                    existing.lock().expect("existing").clone().map_or_else(Reply::not_found, Reply::ok)
                }
                Method::POST | Method::PUT | Method::PATCH => Reply::created(req.body.clone()),
                _ => Reply::not_found(),
            }
        })
    }

    async fn context(client: kube::Client) -> Arc<Context> {
        let (identities, mut iw) = reflector::store::<AgentIdentity>();
        iw.apply_watcher_event(&watcher::Event::Apply(
            AgentIdentity::test(NS, "worker").running_as("worker").ceiling(&[("a", "r")]),
        ));
        let (secrets, mut sw) = reflector::store::<CredentialSecret>();
        sw.apply_watcher_event(&watcher::Event::InitDone);
        let (pods, mut pw) = reflector::store::<AgentPod>();
        pw.apply_watcher_event(&watcher::Event::Apply((*pod()).clone()));
        let shared = Arc::new(Shared::test(client).await.identities(identities).pods(pods).build());
        Context::test(shared, secrets)
    }

    fn pod() -> Arc<AgentPod> {
        let mut pod: AgentPod = serde_json::from_value(json!({
            "metadata": {"name": "worker-0", "namespace": NS, "uid": "u-1",
                         "labels": {"writ.dev/agent": "worker"},
                         "annotations": {"writ.dev/credential-secret": SECRET}},
            "spec": {"serviceAccountName": "worker"},
            "status": {"phase": "Running"}
        }))
        .expect("pod");
        pod.trim();
        Arc::new(pod)
    }

    /// The Secret as the operator would have written it for `pod`.
    fn credential_secret(ctx: &Context, pod: &AgentPod) -> serde_json::Value {
        let spiffe = pki::cert::spiffe_id(&ctx.shared.config.trust_domain, NS, "worker");
        let issued = ctx
            .shared
            .trust
            .issue(&PodCertificateRequest {
                spiffe_id: spiffe.clone(),
                namespace: NS.into(),
                pod_name: pod.name_any(),
                pod_uid: pod.uid().unwrap_or_default(),
                key_algorithm: pki::cert::KeyAlgorithm::EcdsaP256,
                not_before: pki::now_unix(),
                ttl_secs: 3600,
            })
            .expect("certificate");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NS, "resourceVersion": "42", "labels": owned_labels(),
                         "ownerReferences": owner_of(pod)},
            "data": {keys::CERT: b64(&issued.chain_pem), keys::KEY: b64(&issued.key_pem),
                     keys::CA: b64(&ctx.shared.trust.bundle_pem()), keys::SPIFFE_ID: b64(&spiffe)}
        })
    }

    /// The labels Writ puts on the Secret it creates for `worker-0`.
    fn owned_labels() -> serde_json::Value {
        json!({POD_LABEL: "worker-0", AGENT_LABEL: "worker", "app.kubernetes.io/managed-by": "writ"})
    }

    /// The controller owner Writ puts on the Secret it creates for `pod`.
    fn owner_of(pod: &AgentPod) -> serde_json::Value {
        json!([{"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid(), "controller": true}])
    }

    fn credential_requests(log: &ApiServer) -> Vec<(Method, String)> {
        let secrets = format!("/api/v1/namespaces/{NS}/secrets");
        log.requests().into_iter().filter(|r| r.path.starts_with(&secrets)).map(|r| (r.method, r.path)).collect()
    }

    #[tokio::test]
    async fn a_new_pods_secret_is_created_without_a_read_and_kept_if_the_create_finds_it() {
        let (existing, log) = (Existing::default(), ApiServer::new());
        let ctx = context(fake_api(existing.clone(), log.clone())).await;
        let pod = pod();
        // The Secret exists on the server (another leader wrote it just now)
        // but the cache has not seen it.
        *existing.lock().expect("existing") = Some(credential_secret(&ctx, &pod));
        log.drain();
        let action = reconcile(pod.clone(), ctx.clone()).await.expect("reconciled");
        let secrets = format!("/api/v1/namespaces/{NS}/secrets");
        assert_eq!(
            credential_requests(&log),
            vec![(Method::POST, secrets.clone()), (Method::GET, format!("{secrets}/{SECRET}"))],
            "no read before the create; after its 409, one read and no overwrite of a valid credential"
        );
        assert_eq!(action, Action::await_change(), "no requeue is kept per pod");

        // Its rotation is found by the sweep, from the cached credential.
        let stored = existing.lock().expect("existing").clone().expect("stored");
        let stored = CredentialSecret::from(serde_json::from_value::<Secret>(stored).expect("secret"));
        let not_after = stored.certificate().expect("a certificate").not_after;
        let (secrets, mut writer) = reflector::store::<CredentialSecret>();
        writer.apply_watcher_event(&watcher::Event::Apply(stored));
        let now = pki::now_unix();
        assert!(rotations_due(&ctx.shared, &secrets, now).is_empty(), "not due while the certificate is fresh");
        let due = rotations_due(&ctx.shared, &secrets, not_after);
        assert_eq!(due, vec![ObjectRef::from_obj(&*pod)], "due by its expiry");
    }

    #[tokio::test]
    async fn a_pod_in_a_terminating_namespace_gets_one_refused_create_and_no_retry() {
        let log = ApiServer::new();
        let refusal = Reply::namespace_terminating(NS, "secrets", SECRET);
        let ctx = context(fake_api_refusing_creates(Existing::default(), log.clone(), refusal)).await;
        log.drain();
        let action = reconcile(pod(), ctx.clone()).await.expect("not an error: nothing to retry");
        assert_eq!(action, Action::await_change());
        assert_eq!(credential_requests(&log), vec![(Method::POST, format!("/api/v1/namespaces/{NS}/secrets"))]);

        // Any other refusal is an error (retried by the error policy).
        let forbidden =
            Reply::of_status(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                               "reason": "Forbidden", "message": "secrets is forbidden: RBAC"}));
        let ctx = context(fake_api_refusing_creates(Existing::default(), log.clone(), forbidden)).await;
        assert!(reconcile(pod(), ctx).await.is_err(), "an RBAC refusal is not the namespace going away");
    }

    #[tokio::test]
    async fn a_pod_that_keeps_failing_is_retried_ever_later_until_it_reconciles() {
        let log = ApiServer::new();
        let forbidden =
            Reply::of_status(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                               "reason": "Forbidden", "message": "secrets is forbidden: RBAC"}));
        let ctx = context(fake_api_refusing_creates(Existing::default(), log, forbidden)).await;
        let reconcile = crate::controller::forgetting_failures(POD_CONTROLLER, reconcile);
        // What the log gets at `warn`.
        #[derive(Clone, Default)]
        struct Log(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Log {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("log").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let warned = Log::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer({
                let warned = warned.clone();
                move || warned.clone()
            })
            .finish();
        let dispatch = tracing::Dispatch::new(subscriber);
        let mut delays = Vec::new();
        for _ in 0..5 {
            let err = reconcile(pod(), ctx.clone()).await.expect_err("the create is refused");
            delays.push(tracing::dispatcher::with_default(&dispatch, || error_policy(pod(), &err, ctx.clone())));
        }
        let secs = |n| Action::requeue(Duration::from_secs(n));
        assert_eq!(
            delays,
            vec![secs(2), secs(4), secs(8), secs(16), secs(32)],
            "each failure in a row doubles the wait"
        );
        let warned = String::from_utf8(warned.0.lock().expect("log").clone()).expect("utf-8");
        let lines: Vec<&str> = warned.lines().filter(|l| l.contains("reconcile failed")).collect();
        assert_eq!(lines.len(), 3, "the 1st, 2nd and 4th failure at warn, not the 3rd and 5th:\n{warned}");
        assert!(lines[2].contains("failures=4") && lines[2].contains("retry_in_secs=16"), "{warned}");
        assert!(lines[0].contains("name=\"worker-0\"") && lines[0].contains("RBAC"), "{warned}");
        assert_eq!(ctx.retries.len(), 1);

        // Another pod starts at the first delay.
        let mut other = (*pod()).clone();
        other.metadata.name = Some("worker-1".into());
        let other = Arc::new(other);
        let err = reconcile(other.clone(), ctx.clone()).await.expect_err("refused too");
        assert_eq!(error_policy(other, &err, ctx.clone()), secs(2));
        let err = reconcile(pod(), ctx.clone()).await.expect_err("refused again");
        assert_eq!(error_policy(pod(), &err, ctx.clone()), secs(64), "the first pod: doubled again");
        assert_eq!(ctx.retries.len(), 2);

        // A reconcile that succeeds forgets the pod's failures.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        async fn flaky(_pod: Arc<AgentPod>, _ctx: Arc<Context>) -> Result<Action, Error> {
            CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Action::await_change())
        }
        let flaky = crate::controller::forgetting_failures(POD_CONTROLLER, flaky);
        flaky(pod(), ctx.clone()).await.expect("reconciled");
        assert_eq!(CALLS.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(ctx.retries.len(), 1, "worker-0 forgotten, worker-1 still backing off");
        assert_eq!(ctx.shared.metrics.reconcile_retrying.get(), 1, "writ_reconcile_retrying follows");
        let err = reconcile(pod(), ctx.clone()).await.expect_err("refused again");
        assert_eq!(error_policy(pod(), &err, ctx.clone()), secs(2), "after a success the back-off starts over");
        // The leadership term ends with its context: nothing waits any more.
        let metrics = ctx.shared.metrics.clone();
        assert_eq!(metrics.reconcile_retrying.get(), 2);
        drop(ctx);
        assert_eq!(metrics.reconcile_retrying.get(), 0);
    }

    #[tokio::test]
    async fn nothing_is_written_into_a_secret_being_deleted() {
        let (existing, log) = (Existing::default(), ApiServer::new());
        let ctx = context(fake_api(existing.clone(), log.clone())).await;
        // Revoked (no key) and being deleted, Writ's finalizer still on it:
        // what a pod's reconcile reads while its namespace is deleted.
        let mut deleting = credential_secret(&ctx, &pod());
        deleting["data"].as_object_mut().expect("data").remove(keys::KEY);
        deleting["metadata"]["deletionTimestamp"] = json!("2026-12-04T06:06:59Z");
        deleting["metadata"]["finalizers"] = json!([crate::api::names::FINALIZER]);
        *existing.lock().expect("existing") = Some(deleting);
        log.drain();
        let action = reconcile(pod(), ctx).await.expect("reconciled");
        let secrets = format!("/api/v1/namespaces/{NS}/secrets");
        assert_eq!(
            credential_requests(&log),
            vec![(Method::POST, secrets.clone()), (Method::GET, format!("{secrets}/{SECRET}"))],
            "no certificate is applied over a Secret being deleted"
        );
        assert_eq!(action, Action::await_change(), "its removal brings the pod back");
    }

    #[tokio::test]
    async fn a_secret_found_by_the_create_without_a_valid_certificate_is_replaced() {
        let (existing, log) = (Existing::default(), ApiServer::new());
        let ctx = context(fake_api(existing.clone(), log.clone())).await;
        // Writ's Secret for this pod, left over with no certificate in it.
        *existing.lock().expect("existing") = Some(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NS, "resourceVersion": "42", "labels": owned_labels(),
                         "ownerReferences": owner_of(&pod())}, "data": {}
        }));
        log.drain();
        reconcile(pod(), ctx).await.expect("reconciled");
        let secrets = format!("/api/v1/namespaces/{NS}/secrets");
        assert_eq!(
            credential_requests(&log),
            vec![
                (Method::POST, secrets.clone()),
                (Method::GET, format!("{secrets}/{SECRET}")),
                (Method::PATCH, format!("{secrets}/{SECRET}")),
            ],
            "the create's 409 leads to a read, then the certificate is applied over it"
        );
    }

    #[tokio::test]
    async fn a_secret_writ_did_not_create_for_the_pod_is_never_written_owned_or_revoked() {
        let valid = |ctx: &Context| credential_secret(ctx, &pod());
        type Make = fn(&mut serde_json::Value);
        let cases: [(&str, Make); 3] = [
            // A tenant's own Secret, named by the pod's annotation.
            ("db-password", |s| {
                s["metadata"]["labels"] = json!({});
                s["metadata"]["ownerReferences"] = json!([]);
                s["data"] = json!({"password": "aHVudGVyMg=="});
            }),
            // Another pod's credential Secret.
            ("another pod's", |s| {
                s["metadata"]["labels"][POD_LABEL] = json!("victim");
                s["metadata"]["ownerReferences"][0]["name"] = json!("victim");
                s["metadata"]["ownerReferences"][0]["uid"] = json!("victim-uid");
            }),
            // The right label, but owned by another pod (or by none).
            ("owned by another uid", |s| s["metadata"]["ownerReferences"][0]["uid"] = json!("u-2")),
        ];
        for (what, make) in cases {
            let (existing, log) = (Existing::default(), ApiServer::new());
            let ctx = context(fake_api(existing.clone(), log.clone())).await;
            let mut foreign = valid(&ctx);
            make(&mut foreign);
            *existing.lock().expect("existing") = Some(foreign);
            log.drain();
            // Writ would issue (a new pod) ...
            reconcile(pod(), ctx.clone()).await.expect("reconciled");
            // ... or revoke (the pod finished).
            let mut done = (*pod()).clone();
            done.status.phase = Some(crate::state::PodPhase::Succeeded);
            reconcile(Arc::new(done), ctx.clone()).await.expect("reconciled");
            let secrets = format!("/api/v1/namespaces/{NS}/secrets");
            let writes: Vec<_> = credential_requests(&log).into_iter().filter(|(m, _)| *m != Method::GET).collect();
            assert!(
                !writes.is_empty() && writes.iter().all(|(m, p)| *m == Method::POST && *p == secrets),
                "{what}: only creates (refused: it exists), never a write to it: {writes:?}"
            );
            let revoked = log
                .requests()
                .iter()
                .any(|r| r.method != Method::GET && r.path.contains("configmaps/writ-revocations"));
            assert!(!revoked, "{what}: nothing revoked");
            let refused = ctx.shared.metrics.render();
            assert!(refused.contains("writ_untrusted_total{what=\"secret\""), "{what}: counted\n{refused}");
        }
    }
}
