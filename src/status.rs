//! `writ status grant|identity|pod NAME -n NS`: why an object is where it is,
//! in the spirit of `cmctl status certificate`.
//!
//! For a grant: its phase and conditions with their reasons, the chain
//! (parent, requester, approver), its tokens (pod, `jti`, expiry: never the
//! token), recent Events, and what to do next when it is stuck. For an
//! identity: its conditions, review, pods with their certificates (serial,
//! expiry, next rotation) and grants. For a pod: its identity, certificate
//! and tokens. Certificates are read from the pod's credential Secret and
//! only their public facts are shown: key material never leaves the Secret.

#![warn(missing_docs)]

use std::fmt::Write as _;

use k8s_openapi::{
    api::core::v1::{Event, Pod, Secret},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{
    api::{Api, ListParams},
    Client, ResourceExt as _,
};
use serde::Serialize;

use crate::{
    api::names::credential_keys as keys,
    api::{AgentIdentity, CapabilityGrant, DelegationPolicy, GrantPhase, AGENT_LABEL},
    controller::credentials::stored_tokens,
    pki::CertificateInfo,
    state::AgentPod,
};

/// How many of the most recent Events a report shows.
pub const RECENT_EVENTS: usize = 10;

/// Why a status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The object does not exist.
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        /// Its kind.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The API server refused or failed a read.
    #[error("reading {what}: {source}")]
    Api {
        /// What was read.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// One condition, as shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionLine {
    /// Its type, e.g. `Issued`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// The machine-readable reason.
    pub reason: String,
    /// The message.
    pub message: String,
    /// When it last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<String>,
}

impl From<&Condition> for ConditionLine {
    fn from(c: &Condition) -> Self {
        Self {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_transition: Some(c.last_transition_time.0.to_string()),
        }
    }
}

/// One Event, as shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventLine {
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The machine-readable reason, e.g. `CertificateRotated`.
    pub reason: String,
    /// The message.
    pub message: String,
    /// How many times it happened.
    pub count: i32,
    /// When it last happened (RFC 3339), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
}

/// One token issued for a grant (never the token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenLine {
    /// The pod holding it.
    pub pod: String,
    /// The grant it is for (in a pod's report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// Its `jti`.
    pub jti: String,
    /// Its expiry (RFC 3339).
    pub expires_at: String,
}

/// The public facts of a pod's identity certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateLine {
    /// Serial number, hex.
    pub serial: String,
    /// The SPIFFE ID it names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// notBefore (RFC 3339).
    pub not_before: String,
    /// notAfter (RFC 3339).
    pub expires_at: String,
    /// When the operator rotates it (RFC 3339).
    pub next_rotation: String,
    /// Whether the private key is present (a revoked credential keeps its certificate, not its key).
    pub live: bool,
    /// Unix seconds of `next_rotation`, for the stuck check.
    #[serde(skip)]
    rotate_at: i64,
}

/// One pod of an identity, with its certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodLine {
    /// The pod.
    pub name: String,
    /// Its phase (`Pending`, `Running`, …).
    pub phase: String,
    /// Its credential Secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_secret: Option<String>,
    /// Its certificate, once issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateLine>,
}

/// One grant of an identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantLine {
    /// The grant.
    pub name: String,
    /// Its phase.
    pub phase: String,
    /// Its task id.
    pub task: String,
    /// When it expires (RFC 3339), once Active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// `writ status grant`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The agent it is for.
    pub agent: String,
    /// The task id.
    pub task: String,
    /// The phase.
    pub phase: String,
    /// Why it is in that phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The parent grant, for a delegated grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Who created it (admission stamp).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Who approved it (admission stamp).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// The delegation chain, from the human requester to this grant's agent.
    pub chain: Vec<String>,
    /// When tokens were first issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    /// When it expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When it ended early.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// When a grant awaiting approval stops waiting (then Denied, `approval-timeout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_deadline: Option<String>,
    /// Conditions with their reasons.
    pub conditions: Vec<ConditionLine>,
    /// Tokens issued (never the tokens).
    pub tokens: Vec<TokenLine>,
    /// Recent Events, oldest first.
    pub events: Vec<EventLine>,
    /// What to do next, when something is stuck or over.
    pub next: Vec<String>,
}

/// `writ status identity`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its SPIFFE ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Its service account.
    pub service_account: String,
    /// Its owner.
    pub owner: String,
    /// When its next access review is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_due_at: Option<String>,
    /// Who reviewed it last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reviewed_by: Option<String>,
    /// While suspended (the kill switch): who suspended it, when and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended: Option<Suspension>,
    /// Conditions with their reasons.
    pub conditions: Vec<ConditionLine>,
    /// Its pods and their certificates.
    pub pods: Vec<PodLine>,
    /// Its grants.
    pub grants: Vec<GrantLine>,
    /// Recent Events, oldest first.
    pub events: Vec<EventLine>,
    /// What to do next, when something is stuck.
    pub next: Vec<String>,
}

/// Who suspended an identity, when and why (admission stamps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Suspension {
    /// The authenticated user who suspended it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Why, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `writ status pod`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    /// Namespace.
    pub namespace: String,
    /// The pod and its certificate.
    pub pod: PodLine,
    /// The AgentIdentity it claims.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The tokens its credential Secret holds (never the tokens).
    pub tokens: Vec<TokenLine>,
    /// Recent Events, oldest first.
    pub events: Vec<EventLine>,
    /// What to do next, when something is stuck.
    pub next: Vec<String>,
}

fn time(t: &Time) -> String {
    t.0.to_string()
}

fn unix_time(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map(|t| t.to_string()).unwrap_or_else(|_| secs.to_string())
}

fn api_error(what: String) -> impl FnOnce(kube::Error) -> StatusError {
    move |source| StatusError::Api { what, source }
}

async fn get<K>(api: &Api<K>, kind: &'static str, ns: &str, name: &str) -> Result<K, StatusError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.map_err(api_error(format!("{kind} {ns}/{name}")))?.ok_or_else(|| StatusError::NotFound {
        kind,
        namespace: ns.to_string(),
        name: name.to_string(),
    })
}

/// The most recent Events about one object, oldest first.
pub async fn recent_events(client: &Client, ns: &str, kind: &str, name: &str) -> Result<Vec<EventLine>, StatusError> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.kind={kind},involvedObject.name={name}"));
    let list = api.list(&lp).await.map_err(api_error(format!("Events of {kind} {ns}/{name}")))?;
    Ok(event_lines(list.items))
}

/// Events as shown: oldest first, the last [`RECENT_EVENTS`].
pub fn event_lines(events: Vec<Event>) -> Vec<EventLine> {
    let last_seen = |e: &Event| -> Option<jiff::Timestamp> {
        e.series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
            .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
            .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    let mut events: Vec<(Option<jiff::Timestamp>, EventLine)> = events
        .into_iter()
        .map(|e| {
            let seen = last_seen(&e);
            let count = e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1).max(1);
            let line = EventLine {
                type_: e.type_.unwrap_or_else(|| "Normal".to_string()),
                reason: e.reason.unwrap_or_default(),
                message: e.message.unwrap_or_default(),
                count,
                last_seen: seen.map(|t| t.to_string()),
            };
            (seen, line)
        })
        .collect();
    events.sort_by_key(|(seen, _)| *seen);
    let skip = events.len().saturating_sub(RECENT_EVENTS);
    events.into_iter().skip(skip).map(|(_, line)| line).collect()
}

/// Reads `writ status grant`.
pub async fn grant(client: &Client, ns: &str, name: &str) -> Result<GrantReport, StatusError> {
    let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), ns);
    let grant = get(&grants, "CapabilityGrant", ns, name).await?;
    let policies: Api<DelegationPolicy> = Api::namespaced(client.clone(), ns);
    // Who may approve is advice: a reader without list on policies still gets the rest.
    let policies = policies.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    let events = recent_events(client, ns, "CapabilityGrant", name).await?;
    Ok(grant_report(&grant, &policies, events))
}

/// The report on `grant`, given the policies of its namespace and its Events.
pub fn grant_report(grant: &CapabilityGrant, policies: &[DelegationPolicy], events: Vec<EventLine>) -> GrantReport {
    let status = grant.status.clone().unwrap_or_default();
    let ns = grant.namespace().unwrap_or_default();
    let name = grant.name_any();
    let mut next = Vec::new();
    match status.phase {
        GrantPhase::Pending => next.push(
            "The operator has not acted on it yet: check that a writ replica leads (`kubectl -n writ-system get pods`, \
             metric writ_leader) and its logs."
                .to_string(),
        ),
        GrantPhase::AwaitingApproval => {
            let approvers = approvers_for(grant, policies);
            let who = if approvers.is_empty() {
                "an approver of the DelegationPolicy that authorises it".to_string()
            } else {
                approvers.join(", ")
            };
            let not = status.requested_by.as_deref().map(|r| format!(" (not the requester, {r})")).unwrap_or_default();
            let until = status
                .approval_deadline
                .as_ref()
                .map(|d| format!(" before {} (then it is Denied, approval-timeout)", time(d)))
                .unwrap_or_default();
            next.push(format!(
                "Awaiting approval by {who}{not}{until}: `writ approve {name} -n {ns}`, or `writ deny {name} -n {ns} \
                 --reason TEXT`."
            ));
        }
        GrantPhase::Denied => {
            let rule = denial_rule(&status);
            next.push(format!(
                "Denied{}: a grant is not changed once decided; remove the cause and create a new grant \
                 (`writ check` names the admission rules offline).",
                rule.map(|r| format!(" ({r})")).unwrap_or_default()
            ));
        }
        GrantPhase::Active if status.tokens.is_empty() => next.push(format!(
            "Active without a token: no running pod of agent {} holds it yet (`writ status identity {} -n {ns}`).",
            grant.spec.agent, grant.spec.agent
        )),
        GrantPhase::Expired | GrantPhase::Revoked | GrantPhase::Completed => {
            next.push("Over: its tokens are revoked; more work needs a new grant.".to_string())
        }
        _ => {}
    }
    GrantReport {
        namespace: ns,
        name,
        agent: grant.spec.agent.clone(),
        task: grant.spec.task.id.clone(),
        phase: status.phase.as_str().to_string(),
        reason: status.reason.clone(),
        parent: grant.spec.parent.clone(),
        requested_by: status.requested_by.clone(),
        approved_by: status.approved_by.clone(),
        chain: status.chain.clone(),
        issued_at: status.issued_at.as_ref().map(time),
        expires_at: status.expires_at.as_ref().map(time),
        revoked_at: status.revoked_at.as_ref().map(time),
        approval_deadline: status.approval_deadline.as_ref().map(time),
        conditions: status.conditions.iter().map(ConditionLine::from).collect(),
        tokens: status
            .tokens
            .iter()
            .map(|t| TokenLine { pod: t.pod.clone(), grant: None, jti: t.jti.clone(), expires_at: time(&t.expires_at) })
            .collect(),
        events,
        next,
    }
}

/// The rule or reason a denied grant names: the reason of its first false
/// condition, else the status reason.
fn denial_rule(status: &crate::api::CapabilityGrantStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.status == "False" && !c.reason.is_empty())
        .map(|c| format!("{}: {}", c.reason, c.message))
        .or_else(|| status.reason.clone())
}

/// The approvers of the policies that delegate to the grant's agent and ask
/// for approval.
fn approvers_for(grant: &CapabilityGrant, policies: &[DelegationPolicy]) -> Vec<String> {
    let mut out: Vec<String> = policies
        .iter()
        .filter(|p| p.spec.delegates.iter().any(|d| d.agent == grant.spec.agent || d.agent == "*"))
        .filter_map(|p| p.spec.approval.as_ref())
        .flat_map(|a| a.approvers.iter().map(ToString::to_string))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What `writ status` reads from a credential Secret: whether the key is
/// there, the leaf certificate's public facts, and each token's grant, `jti`
/// and expiry. Read as stored, for diagnosis (the operator verifies what it
/// reads back; this command only shows it); the key and the token texts are
/// dropped here and never printed.
pub struct StoredCredential {
    /// Whether the private key is present (a revoked credential keeps its certificate, not its key).
    pub has_key: bool,
    /// The leaf of `tls.crt`, if it parses.
    pub certificate: Option<CertificateInfo>,
    /// `(grant, jti, exp)` of each token that decodes.
    pub tokens: Vec<(String, String, i64)>,
}

impl StoredCredential {
    /// Reads a credential Secret.
    pub fn read(secret: &Secret) -> Self {
        let data = secret.data.as_ref();
        let has_key = data.is_some_and(|d| d.contains_key(keys::KEY));
        let certificate = data
            .and_then(|d| d.get(keys::CERT))
            .and_then(|pem| CertificateInfo::from_pem(&String::from_utf8_lossy(&pem.0)).ok());
        let tokens = stored_tokens(secret)
            .into_iter()
            .filter_map(|(grant, jwt)| {
                let (_, claims) = crate::pki::token::decode_unverified(&jwt).ok()?;
                Some((grant, claims.jti, claims.exp))
            })
            .collect();
        Self { has_key, certificate, tokens }
    }
}

/// The public facts of a credential Secret's certificate, with its next
/// rotation: `rotateBefore` ahead of notAfter, at most half its lifetime
/// (the operator's rule).
fn certificate_line(secret: &StoredCredential, identity: Option<&AgentIdentity>) -> Option<CertificateLine> {
    let cert = secret.certificate.as_ref()?;
    let lifetime = cert.not_after - cert.not_before;
    let ttl = identity.map_or(lifetime, |i| i.spec.credential.ttl.as_secs_i64().min(lifetime));
    let rotate_before = identity.map_or(ttl / 2, |i| i.spec.credential.rotate_before.as_secs_i64().min(ttl / 2));
    let rotate_at = cert.not_after - rotate_before;
    Some(CertificateLine {
        serial: cert.serial_hex.clone(),
        spiffe_id: cert.spiffe_id.clone(),
        not_before: unix_time(cert.not_before),
        expires_at: unix_time(cert.not_after),
        next_rotation: unix_time(rotate_at),
        live: secret.has_key,
        rotate_at,
    })
}

async fn credential(client: &Client, ns: &str, pod: &AgentPod) -> Result<Option<StoredCredential>, StatusError> {
    let Some(name) = pod.credential_secret() else { return Ok(None) };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets.get_opt(name).await.map_err(api_error(format!("Secret {ns}/{name}")))?;
    Ok(secret.as_ref().map(StoredCredential::read))
}

fn pod_line(pod: &AgentPod, secret: Option<&StoredCredential>, identity: Option<&AgentIdentity>) -> PodLine {
    PodLine {
        name: pod.name_any(),
        phase: pod
            .status
            .phase
            .as_ref()
            .map(|p| serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default())
            .unwrap_or_else(|| "Unknown".to_string()),
        credential_secret: pod.credential_secret().map(str::to_string),
        certificate: secret.and_then(|s| certificate_line(s, identity)),
    }
}

fn as_agent_pod(pod: Pod) -> Option<AgentPod> {
    serde_json::to_value(pod).ok().and_then(|v| serde_json::from_value(v).ok())
}

fn pod_next(line: &PodLine, ns: &str, now: i64) -> Option<String> {
    match &line.certificate {
        None if line.credential_secret.is_none() => Some(format!(
            "Pod {} was not admitted by Writ's pod webhook (no credential Secret named): recreate it with the webhook \
             running.",
            line.name
        )),
        None => Some(format!(
            "Pod {} has no certificate yet: `writ status pod {} -n {ns}` and the operator's Events say why.",
            line.name, line.name
        )),
        Some(c) if c.live && now > c.rotate_at + 60 => Some(format!(
            "The certificate of pod {} is past its rotation point ({}): check that a writ replica leads.",
            line.name, c.next_rotation
        )),
        _ => None,
    }
}

/// Reads `writ status identity`.
pub async fn identity(client: &Client, ns: &str, name: &str, now: i64) -> Result<IdentityReport, StatusError> {
    let identities: Api<AgentIdentity> = Api::namespaced(client.clone(), ns);
    let identity = get(&identities, "AgentIdentity", ns, name).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = pods
        .list(&ListParams::default().labels(&format!("{AGENT_LABEL}={name}")))
        .await
        .map_err(api_error(format!("pods of AgentIdentity {ns}/{name}")))?;
    let mut lines = Vec::new();
    for pod in pods.items.into_iter().filter_map(as_agent_pod) {
        let secret = credential(client, ns, &pod).await?;
        lines.push(pod_line(&pod, secret.as_ref(), Some(&identity)));
    }
    lines.sort_by(|a, b| a.name.cmp(&b.name));
    let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), ns);
    let grants = grants.list(&ListParams::default()).await.map_err(api_error(format!("grants in {ns}")))?;
    let mut grant_lines: Vec<GrantLine> = grants
        .items
        .iter()
        .filter(|g| g.spec.agent == name)
        .map(|g| GrantLine {
            name: g.name_any(),
            phase: g.status.as_ref().map(|s| s.phase).unwrap_or_default().as_str().to_string(),
            task: g.spec.task.id.clone(),
            expires_at: g.status.as_ref().and_then(|s| s.expires_at.as_ref()).map(time),
        })
        .collect();
    grant_lines.sort_by(|a, b| a.name.cmp(&b.name));
    let events = recent_events(client, ns, "AgentIdentity", name).await?;
    Ok(identity_report(&identity, lines, grant_lines, events, now))
}

/// The report on `identity`, given its pods, grants and Events.
pub fn identity_report(
    identity: &AgentIdentity,
    pods: Vec<PodLine>,
    grants: Vec<GrantLine>,
    events: Vec<EventLine>,
    now: i64,
) -> IdentityReport {
    let status = identity.status.clone().unwrap_or_default();
    let ns = identity.namespace().unwrap_or_default();
    let name = identity.name_any();
    let mut next = Vec::new();
    let suspended = identity.spec.suspended.then(|| {
        let annotation = |key: &str| identity.annotations().get(key).cloned();
        Suspension {
            by: annotation(crate::api::SUSPENDED_BY_ANNOTATION),
            at: annotation(crate::api::SUSPENDED_AT_ANNOTATION),
            reason: annotation(crate::api::SUSPEND_REASON_ANNOTATION),
        }
    });
    if suspended.is_some() {
        next.push(format!(
            "Suspended: its grants are ended and its pods' certificates revoked; `writ resume {name} -n {ns}` lets new \
             pods and grants in again."
        ));
    }
    for c in status.conditions.iter().filter(|c| c.status == "True") {
        if c.type_ == "ReviewOverdue" {
            next.push(format!(
                "The access review is overdue ({}): new grants for it may be refused (rule review-overdue) until its \
                 owner ({}) records a review.",
                c.message, identity.spec.owner
            ));
        }
    }
    for c in status.conditions.iter().filter(|c| c.type_ == "Ready" && c.status == "False") {
        next.push(format!("Not ready ({}): {}", c.reason, c.message));
    }
    next.extend(pods.iter().filter_map(|p| pod_next(p, &ns, now)));
    IdentityReport {
        namespace: ns,
        name,
        spiffe_id: status.spiffe_id.clone(),
        service_account: identity.spec.service_account_name.clone(),
        owner: identity.spec.owner.clone(),
        review_due_at: status.review_due_at.as_ref().map(time),
        last_reviewed_by: status.last_reviewed_by.clone(),
        suspended,
        conditions: status.conditions.iter().map(ConditionLine::from).collect(),
        pods,
        grants,
        events,
        next,
    }
}

/// Reads `writ status pod`.
pub async fn pod(client: &Client, ns: &str, name: &str, now: i64) -> Result<PodReport, StatusError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = get(&pods, "Pod", ns, name).await?;
    let pod = as_agent_pod(pod).ok_or_else(|| StatusError::NotFound {
        kind: "Pod",
        namespace: ns.to_string(),
        name: name.to_string(),
    })?;
    let agent = pod.agent().map(str::to_string);
    let identity = match &agent {
        Some(a) => {
            let identities: Api<AgentIdentity> = Api::namespaced(client.clone(), ns);
            identities.get_opt(a).await.map_err(api_error(format!("AgentIdentity {ns}/{a}")))?
        }
        None => None,
    };
    let secret = credential(client, ns, &pod).await?;
    let line = pod_line(&pod, secret.as_ref(), identity.as_ref());
    let tokens = secret
        .iter()
        .flat_map(|s| s.tokens.iter())
        .map(|(grant, jti, exp)| TokenLine {
            pod: name.to_string(),
            grant: Some(grant.clone()),
            jti: jti.clone(),
            expires_at: unix_time(*exp),
        })
        .collect();
    let events = recent_events(client, ns, "Pod", name).await?;
    let mut next = Vec::new();
    if agent.is_none() {
        next.push(format!("Pod {name} claims no AgentIdentity (label {AGENT_LABEL}): Writ gives it nothing."));
    } else if identity.is_none() {
        next.push(format!("AgentIdentity {} does not exist in {ns}.", agent.as_deref().unwrap_or_default()));
    }
    if agent.is_some() {
        next.extend(pod_next(&line, ns, now));
    }
    Ok(PodReport { namespace: ns.to_string(), pod: line, agent, tokens, events, next })
}

fn render_conditions(out: &mut String, conditions: &[ConditionLine]) {
    if conditions.is_empty() {
        return;
    }
    out.push_str("Conditions:\n");
    for c in conditions {
        let _ = write!(out, "  {}={} ({})", c.type_, c.status, c.reason);
        if !c.message.is_empty() {
            let _ = write!(out, ": {}", c.message);
        }
        out.push('\n');
    }
}

fn render_events(out: &mut String, events: &[EventLine], none: &str) {
    if events.is_empty() {
        let _ = writeln!(out, "Events: none{none}");
        return;
    }
    out.push_str("Events:\n");
    for e in events {
        let times = if e.count > 1 { format!(" (x{})", e.count) } else { String::new() };
        let _ = writeln!(
            out,
            "  {}  {:<7} {}{}: {}",
            e.last_seen.as_deref().unwrap_or("-"),
            e.type_,
            e.reason,
            times,
            e.message
        );
    }
}

fn render_next(out: &mut String, next: &[String]) {
    for n in next {
        let _ = writeln!(out, "Next: {n}");
    }
}

fn render_pod(out: &mut String, indent: &str, p: &PodLine) {
    let _ = writeln!(out, "{indent}{} ({})", p.name, p.phase);
    match &p.certificate {
        Some(c) => {
            let _ = writeln!(
                out,
                "{indent}  certificate: serial {}, expires {}, next rotation {}{}",
                c.serial,
                c.expires_at,
                c.next_rotation,
                if c.live { "" } else { " (revoked: no key)" }
            );
        }
        None => {
            let _ = writeln!(out, "{indent}  certificate: none yet");
        }
    }
}

impl GrantReport {
    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "CapabilityGrant {}/{}", self.namespace, self.name);
        let _ = writeln!(out, "Agent: {}   Task: {}", self.agent, self.task);
        let _ = write!(out, "Phase: {}", self.phase);
        if let Some(r) = &self.reason {
            let _ = write!(out, " ({r})");
        }
        out.push('\n');
        if let Some(p) = &self.parent {
            let _ = writeln!(out, "Parent: {p}");
        }
        let _ = writeln!(out, "Requested by: {}", self.requested_by.as_deref().unwrap_or("-"));
        if let Some(a) = &self.approved_by {
            let _ = writeln!(out, "Approved by: {a}");
        }
        if !self.chain.is_empty() {
            let _ = writeln!(out, "Chain: {}", self.chain.join(" -> "));
        }
        for (label, value) in [("Issued", &self.issued_at), ("Expires", &self.expires_at), ("Ended", &self.revoked_at)]
        {
            if let Some(v) = value {
                let _ = writeln!(out, "{label}: {v}");
            }
        }
        render_conditions(&mut out, &self.conditions);
        if !self.tokens.is_empty() {
            out.push_str("Tokens:\n");
            for t in &self.tokens {
                let _ = writeln!(out, "  pod {}  jti {}  expires {}", t.pod, t.jti, t.expires_at);
            }
        }
        render_events(&mut out, &self.events, "");
        render_next(&mut out, &self.next);
        out
    }
}

impl IdentityReport {
    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "AgentIdentity {}/{}", self.namespace, self.name);
        if let Some(s) = &self.spiffe_id {
            let _ = writeln!(out, "SPIFFE ID: {s}");
        }
        let _ = writeln!(out, "Service account: {}   Owner: {}", self.service_account, self.owner);
        let _ = writeln!(
            out,
            "Review: due {}, last by {}",
            self.review_due_at.as_deref().unwrap_or("-"),
            self.last_reviewed_by.as_deref().unwrap_or("-")
        );
        if let Some(s) = &self.suspended {
            let _ = writeln!(
                out,
                "SUSPENDED by {} at {}: {}",
                s.by.as_deref().unwrap_or("-"),
                s.at.as_deref().unwrap_or("-"),
                s.reason.as_deref().unwrap_or("(no reason given)")
            );
        }
        render_conditions(&mut out, &self.conditions);
        if self.pods.is_empty() {
            out.push_str("Pods: none\n");
        } else {
            out.push_str("Pods:\n");
            for p in &self.pods {
                render_pod(&mut out, "  ", p);
            }
        }
        if !self.grants.is_empty() {
            out.push_str("Grants:\n");
            for g in &self.grants {
                let _ = writeln!(
                    out,
                    "  {} ({}) task {}{}",
                    g.name,
                    g.phase,
                    g.task,
                    g.expires_at.as_deref().map(|e| format!(", expires {e}")).unwrap_or_default()
                );
            }
        }
        render_events(&mut out, &self.events, "");
        render_next(&mut out, &self.next);
        out
    }
}

impl PodReport {
    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Pod {}/{}", self.namespace, self.pod.name);
        let _ = writeln!(out, "Agent: {}", self.agent.as_deref().unwrap_or("-"));
        if let Some(s) = &self.pod.credential_secret {
            let _ = writeln!(out, "Credential Secret: {s}");
        }
        render_pod(&mut out, "", &self.pod);
        if !self.tokens.is_empty() {
            out.push_str("Tokens:\n");
            for t in &self.tokens {
                let _ = writeln!(
                    out,
                    "  grant {}  jti {}  expires {}",
                    t.grant.as_deref().unwrap_or("-"),
                    t.jti,
                    t.expires_at
                );
            }
        }
        // Routine issuance and rotation write no Event (one per pod per
        // rotation would double the API writes); the audit log and the
        // metrics record them.
        render_events(
            &mut out,
            &self.events,
            " (issuance and rotation are recorded in the operator's audit log and writ_credentials_total, not as Events)",
        );
        render_next(&mut out, &self.next);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(yaml: &str) -> CapabilityGrant {
        serde_saphyr::from_str(yaml).expect("grant")
    }

    const GRANT: &str = "apiVersion: writ.dev/v1alpha1\nkind: CapabilityGrant\nmetadata: {name: cleanup, namespace: ci}\n\
        spec:\n  agent: release-bot\n  task: {id: OPS-77}\n  capabilities: [{action: 'k8s:deployments.delete', resource: 'k8s:staging/deployments/web'}]\n  audiences: [deploy-api]\n  ttl: 10m\n";

    fn policy() -> DelegationPolicy {
        serde_saphyr::from_str(
            "apiVersion: writ.dev/v1alpha1\nkind: DelegationPolicy\nmetadata: {name: release-flow, namespace: ci}\n\
             spec:\n  delegators: [{group: release-managers}]\n  delegates: [{agent: release-bot}]\n  capabilities: [{action: 'k8s:deployments.*', resource: 'k8s:staging/deployments/*'}]\n  maxTTL: 30m\n  approval:\n    required: [{action: 'k8s:deployments.delete', resource: 'k8s:*/deployments/*'}]\n    approvers: [{group: sre-oncall}, {user: carol}]\n",
        )
        .expect("policy")
    }

    #[test]
    fn awaiting_approval_names_who_may_approve() {
        let mut g = grant(GRANT);
        g.status = Some(crate::api::CapabilityGrantStatus {
            phase: GrantPhase::AwaitingApproval,
            requested_by: Some("alice".into()),
            ..Default::default()
        });
        let report = grant_report(&g, &[policy()], vec![]);
        assert_eq!(report.phase, "AwaitingApproval");
        assert_eq!(
            report.next,
            vec!["Awaiting approval by group sre-oncall, user carol (not the requester, alice): `writ approve cleanup -n ci`, \
                  or `writ deny cleanup -n ci --reason TEXT`."
                .to_string()]
        );
        let text = report.render();
        assert!(text.contains("Phase: AwaitingApproval\n"), "{text}");
        assert!(text.contains("Requested by: alice\n"), "{text}");
        assert!(text.contains("Events: none\n"), "{text}");
    }

    #[test]
    fn denied_names_the_rule_and_tokens_show_no_secret() {
        let mut g = grant(GRANT);
        let condition = Condition {
            type_: "Approved".into(),
            status: "False".into(),
            reason: "approval-timeout".into(),
            message: "no approver decided before the deadline".into(),
            last_transition_time: Time(jiff::Timestamp::from_second(1_800_000_000).expect("ts")),
            observed_generation: None,
        };
        g.status = Some(crate::api::CapabilityGrantStatus {
            phase: GrantPhase::Denied,
            conditions: vec![condition],
            tokens: vec![crate::api::TokenRecord {
                pod: "bot-0".into(),
                jti: "j-1".into(),
                expires_at: Time(jiff::Timestamp::from_second(1_800_000_600).expect("ts")),
            }],
            ..Default::default()
        });
        let report = grant_report(&g, &[], vec![]);
        assert!(report.next[0].starts_with("Denied (approval-timeout: no approver decided before the deadline)"));
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(
            json["tokens"][0],
            serde_json::json!({"pod": "bot-0", "jti": "j-1", "expiresAt": "2027-01-15T08:10:00Z"})
        );
        assert_eq!(json["conditions"][0]["reason"], "approval-timeout");
    }

    #[test]
    fn identity_next_steps_name_overdue_reviews_and_pods_without_fresh_certificates() {
        let mut identity: AgentIdentity = serde_saphyr::from_str(
            "apiVersion: writ.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: release-bot, namespace: ci}\n\
             spec: {class: Agent, serviceAccountName: release-bot, owner: team-platform}\n",
        )
        .expect("identity");
        identity.status = Some(crate::api::AgentIdentityStatus {
            conditions: vec![Condition {
                type_: "ReviewOverdue".into(),
                status: "True".into(),
                reason: "ReviewOverdue".into(),
                message: "access review due at 2027-01-01T00:00:00Z".into(),
                last_transition_time: Time(jiff::Timestamp::from_second(1_800_000_000).expect("ts")),
                observed_generation: None,
            }],
            ..Default::default()
        });
        let late = CertificateLine {
            serial: "0a".into(),
            spiffe_id: None,
            not_before: unix_time(1_800_000_000),
            expires_at: unix_time(1_800_003_600),
            next_rotation: unix_time(1_800_002_400),
            live: true,
            rotate_at: 1_800_002_400,
        };
        let pods = vec![
            PodLine {
                name: "bot-0".into(),
                phase: "Running".into(),
                credential_secret: Some("s0".into()),
                certificate: None,
            },
            PodLine {
                name: "bot-1".into(),
                phase: "Running".into(),
                credential_secret: Some("s1".into()),
                certificate: Some(late),
            },
            PodLine { name: "bot-2".into(), phase: "Pending".into(), credential_secret: None, certificate: None },
        ];
        let report = identity_report(&identity, pods, vec![], vec![], 1_800_002_400 + 120);
        assert_eq!(report.next.len(), 4, "{:?}", report.next);
        assert!(report.next[0].starts_with("The access review is overdue (access review due at"), "{}", report.next[0]);
        assert!(report.next[0].contains("owner (team-platform)"), "{}", report.next[0]);
        assert!(report.next[1].starts_with("Pod bot-0 has no certificate yet"), "{}", report.next[1]);
        assert!(
            report.next[2].starts_with("The certificate of pod bot-1 is past its rotation point"),
            "{}",
            report.next[2]
        );
        assert!(report.next[3].starts_with("Pod bot-2 was not admitted"), "{}", report.next[3]);
        let text = report.render();
        assert!(
            text.contains("certificate: serial 0a, expires 2027-01-15T09:00:00Z, next rotation 2027-01-15T08:40:00Z"),
            "{text}"
        );
        assert!(text.contains("certificate: none yet"), "{text}");
    }

    #[test]
    fn a_suspended_identity_says_who_suspended_it_when_and_why() {
        let identity: AgentIdentity = serde_saphyr::from_str(
            "apiVersion: writ.dev/v1alpha1\nkind: AgentIdentity\nmetadata:\n  name: release-bot\n  namespace: ci\n  \
             annotations: {writ.dev/suspended-by: carol, writ.dev/suspended-at: '2027-01-15T08:00:00Z', \
             writ.dev/suspend-reason: incident 42}\n\
             spec: {class: Agent, serviceAccountName: release-bot, owner: team-platform, suspended: true}\n",
        )
        .expect("identity");
        let report = identity_report(&identity, vec![], vec![], vec![], 1_800_000_000);
        let s = report.suspended.as_ref().expect("suspended");
        assert_eq!((s.by.as_deref(), s.reason.as_deref()), (Some("carol"), Some("incident 42")));
        assert!(
            report.render().contains("SUSPENDED by carol at 2027-01-15T08:00:00Z: incident 42\n"),
            "{}",
            report.render()
        );
        assert!(report.next[0].contains("`writ resume release-bot -n ci`"), "{:?}", report.next);
    }

    #[test]
    fn events_are_the_latest_oldest_first() {
        let events: Vec<Event> = (0..15)
            .map(|i| Event {
                reason: Some(format!("R{i}")),
                message: Some("m".into()),
                type_: Some("Normal".into()),
                last_timestamp: Some(Time(jiff::Timestamp::from_second(1_800_000_000 + i).expect("ts"))),
                ..Default::default()
            })
            .rev()
            .collect();
        let lines = event_lines(events);
        assert_eq!(lines.len(), RECENT_EVENTS);
        assert_eq!(lines[0].reason, "R5");
        assert_eq!(lines[9].reason, "R14");
    }
}
