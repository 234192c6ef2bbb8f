//! CapabilityGrant lifecycle: Pending → (AwaitingApproval →) Active →
//! Completed | Expired | Revoked (or Denied), one pod-bound token per bound
//! pod while Active, and revocation of every token when the grant ends.

use std::{sync::Arc, time::Duration};

use kube::{
    api::{Api, Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{finalizer, Event as Finalizer},
    },
    Resource, ResourceExt,
};

use super::{finalized, is_not_found, time, unix, Context, Error, FINALIZER, MANAGER};
use crate::api::conditions::grant::{self as conditions, reason};
use crate::api::names::{credential_keys, ended_grant_marker};
use crate::pki::seal::SealKeys;
use crate::policy::Rule;
use crate::state::metrics::UntrustedLabels;
mod decide;
mod triggers;

pub use decide::{desired_status, next_phase, transition_allowed, Authority, Refusal, World};
pub use triggers::{approval_overdue, controller, expired, grants_for_secret, grants_where};

use crate::{
    api::{
        conditions::{condition, set_condition},
        AgentIdentity, CapabilityGrant, CapabilityGrantStatus, Decision, DelegationPolicy, GrantPhase, TokenRecord,
        APPROVAL_TIMEOUT_REASON, APPROVED_BY_ANNOTATION, REQUESTED_BY_ANNOTATION,
    },
    pki::{self, token},
    state::{AgentPod, CachedGrant, CredentialSecret},
    verify::RevokedToken,
};

fn object(g: &CapabilityGrant) -> String {
    format!("CapabilityGrant {}/{}", g.namespace().unwrap_or_default(), g.name_any())
}

fn token_key(grant: &str) -> String {
    format!("{}{grant}{}", credential_keys::GRANT_PREFIX, credential_keys::GRANT_SUFFIX)
}

/// Reconciles a grant (with its finalizer).
pub async fn reconcile(cached: Arc<CachedGrant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let grant = Arc::new(cached.grant());
    let api: Api<CapabilityGrant> = Api::namespaced(ctx.shared.client.clone(), &grant.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, grant.clone(), |event| async {
        match event {
            Finalizer::Apply(g) => apply(&g, &ctx).await,
            Finalizer::Cleanup(g) => {
                let (trusted, _) = crate::policy::seal::trusted(&g, &ctx.shared.trust.seal_keys(), pki::now_unix());
                end(&trusted, &ctx, g.status.as_ref(), GrantPhase::Revoked, "the grant was deleted").await?;
                Ok(Action::await_change())
            }
        }
    })
    .await;
    ctx.shared.metrics.reconciled("grant", started);
    finalized(result).map_err(|e| Error::Finalizer { object: object(&grant), message: e.to_string() })
}

/// The agent pods a grant binds: every running pod of the agent, or the one
/// named (and, once Active, only the pod of that name it bound then).
fn bound_pods(ctx: &Context, g: &CapabilityGrant) -> Vec<Arc<AgentPod>> {
    let ns = g.namespace().unwrap_or_default();
    // A grant bound to one pod looks that pod up instead of scanning every pod.
    let candidates = match &g.spec.pod {
        Some(name) => {
            ctx.shared.pods.get(&kube::runtime::reflector::ObjectRef::new(name).within(&ns)).into_iter().collect()
        }
        None => ctx.shared.pods.state(),
    };
    let bound_uid = g.status.as_ref().and_then(|s| s.bound_pod_uid.clone());
    candidates
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(&ns)
                && p.agent() == Some(g.spec.agent.as_str())
                && p.credential_secret().is_some()
                && !p.finished()
                && g.spec.pod.as_ref().is_none_or(|name| *name == p.name_any())
                && bound_uid.as_ref().is_none_or(|uid| p.uid().as_ref() == Some(uid))
        })
        .collect()
}

/// The pod `spec.pod` names, from the cache.
fn named_pod(ctx: &Context, g: &CapabilityGrant) -> Option<Arc<AgentPod>> {
    let ns = g.namespace().unwrap_or_default();
    g.spec
        .pod
        .as_ref()
        .and_then(|name| ctx.shared.pods.get(&kube::runtime::reflector::ObjectRef::new(name).within(&ns)))
}

/// The delegation chain above `g` (parent first), for the re-check: the
/// parent as resolved, then its ancestors from the cache.
fn ancestors(ctx: &Context, g: &CapabilityGrant, parent: Option<&CapabilityGrant>) -> Vec<CapabilityGrant> {
    let ns = g.namespace().unwrap_or_default();
    let mut chain: Vec<CapabilityGrant> = parent.into_iter().cloned().collect();
    while let Some(next) = chain.last().and_then(|p| p.spec.parent.clone()) {
        if chain.len() >= 16 || chain.iter().any(|a| a.name_any() == next) || next == g.name_any() {
            break;
        }
        match ctx.shared.grants.get(&kube::runtime::reflector::ObjectRef::new(&next).within(&ns)) {
            Some(found) => chain.push(found.grant()),
            None => break,
        }
    }
    chain
}

/// Runs the admission engine again over an admitted grant: its rules with
/// the stamped requester, the current agent, policies and ancestors, and
/// (before activation) that `spec.pod` is a pod of the agent.
fn recheck(
    ctx: &Context,
    g: &CapabilityGrant,
    agent: Option<&AgentIdentity>,
    ancestors: &[CapabilityGrant],
    identities: &[AgentIdentity],
    policies: &[crate::api::DelegationPolicy],
    pod: Option<crate::policy::PodFacts<'_>>,
) -> (Result<(), Refusal>, bool) {
    let ns = g.namespace().unwrap_or_default();
    let Some(requester) = crate::policy::stamped_requester(g, identities) else {
        let v = crate::policy::Violation::new(
            "metadata.annotations",
            Rule::NotAdmitted,
            "the grant carries no requester stamp",
        );
        return (Err(Refusal::from_violations(&[v])), false);
    };
    let limits = ctx.shared.config.limits();
    let gctx = crate::policy::GrantContext {
        namespace: &ns,
        requester: &requester,
        agent,
        policies,
        ancestors,
        now: jiff::Timestamp::now(),
        limits: &limits,
    };
    let mut result = crate::policy::recheck_grant(g, &gctx);
    let before_activation = g.status.as_ref().is_none_or(|s| s.phase != GrantPhase::Active);
    if before_activation {
        let pod_violations = crate::policy::check_bound_pod(g, pod, agent);
        if !pod_violations.is_empty() {
            result = Err(match result {
                Ok(_) => pod_violations,
                Err(mut v) => {
                    v.extend(pod_violations);
                    v
                }
            });
        }
    }
    match result {
        Ok(admission) => (Ok(()), admission.needs_approval),
        Err(v) => (Err(Refusal::from_violations(&v)), false),
    }
}

fn world<'a>(
    ctx: &Context,
    g: &CapabilityGrant,
    agent: Option<&'a AgentIdentity>,
    parent: Option<Option<&'a CapabilityGrant>>,
    keys: &SealKeys,
    now: i64,
) -> World<'a> {
    let ns = g.namespace().unwrap_or_default();
    let policies = ctx.shared.policies_in(&ns);
    let identities = ctx.shared.identities_in(&ns);
    let chain = ancestors(ctx, g, parent.flatten());
    let pod = named_pod(ctx, g);
    let facts =
        pod.as_ref().map(|p| crate::policy::PodFacts { agent: p.agent(), service_account: Some(p.service_account()) });
    let (recheck, needs_approval) = recheck(ctx, g, agent, &chain, &identities, &policies, facts);
    let authority = Authority::of(g, &identities, &policies, &ctx.shared.config.limits());
    let needs_approval = authority.needs_approval.unwrap_or(needs_approval);
    let bound_uid = g.status.as_ref().and_then(|s| s.bound_pod_uid.as_deref());
    let bound_pod_finished = g.spec.pod.is_some()
        && g.status.as_ref().is_some_and(|s| s.phase == GrantPhase::Active)
        && pod.is_none_or(|p| p.finished() || bound_uid.is_some_and(|uid| p.uid().as_deref() != Some(uid)));
    let admitted = crate::policy::seal::verify_grant(keys, g, now).map_err(|e| e.to_string());
    World { agent, parent, admitted, recheck, needs_approval, bound_pod_finished, now, authority }
}

async fn apply(stored: &CapabilityGrant, ctx: &Context) -> Result<Action, Error> {
    let shared = &ctx.shared;
    let ns = stored.namespace().unwrap_or_default();
    let now = pki::now_unix();
    let mut keys = shared.trust.seal_keys();
    let (mut trusted_grant, mut tampered) = crate::policy::seal::trusted(stored, &keys, now);
    let ended = trusted_grant.status.as_ref().is_some_and(|s| s.phase.is_terminal());
    if !ended && (tampered.is_some() || crate::policy::seal::verify_grant(&keys, stored, now).is_err()) {
        keys = ctx.reload_seal_keys().await;
        (trusted_grant, tampered) = crate::policy::seal::trusted(stored, &keys, now);
    }
    let g = &mut trusted_grant;
    if let Some(why) = &tampered {
        tracing::warn!(grant = %g.name_any(), namespace = %ns, "a grant status not written by Writ was found and is repaired");
        shared.metrics.untrusted.get_or_create(&UntrustedLabels { what: "grant-status", reason: "not-sealed" }).inc();
        ctx.event(&g.object_ref(&()), true, "StatusRepaired", "Repair", why.clone()).await;
    }
    let uid = g.uid().unwrap_or_default();
    let current = g.status.as_ref().map(|s| s.phase).unwrap_or_default();
    // The marker is written before the ended status: with it listed, a
    // grant whose status is not terminal either had its end interrupted (a
    // replica stopped in between: the same decision ends it again) or was
    // given an older status; either way it ends now.
    let ended_before = !current.is_terminal() && shared.revocations.is_token_revoked(&ended_grant_marker(&uid)).await;
    // Ending a grant is final, so "gone" is never taken from a cache alone:
    // a watch that lags (another stream than the one that triggered this
    // reconcile) would deny a grant whose agent or parent was just created.
    let agent = shared.identity_or_api(&ns, &g.spec.agent).await.map_err(|source| Error::Kube {
        op: "reading the agent of",
        object: object(g),
        source,
    })?;
    let parent_obj = match &g.spec.parent {
        None => None,
        Some(p) => Some(match shared.grants.get(&kube::runtime::reflector::ObjectRef::new(p).within(&ns)) {
            Some(found) => Some(Arc::new(found.grant())),
            None => api_grant(ctx, &ns, p).await.map_err(|source| Error::Kube {
                op: "reading the parent of",
                object: object(g),
                source,
            })?,
        }),
    };
    let parent = parent_obj.as_ref().map(|p| p.as_deref());
    let mut w = world(ctx, g, agent.as_deref(), parent, &keys, now);
    if w.recheck.is_err() {
        // A refusal ends the grant for good: confirm it on the API server's
        // identities, policies and pod. The caches may not yet hold a policy,
        // the requesting agent's identity or the bound pod that were just
        // created.
        let listed = ctx.authorities.get(&ns).await.map_err(|source| Error::Write {
            op: "reading the identities and policies for",
            object: object(g),
            source,
        })?;
        let (identities, policies) = &*listed;
        let pod = match &g.spec.pod {
            Some(name) => Api::<k8s_openapi::api::core::v1::Pod>::namespaced(shared.client.clone(), &ns)
                .get_opt(name)
                .await
                .map_err(|source| Error::Kube { op: "reading the bound pod of", object: object(g), source })?,
            None => None,
        };
        let facts = pod.as_ref().map(|p| crate::policy::PodFacts {
            agent: p.metadata.labels.as_ref().and_then(|l| l.get(crate::api::AGENT_LABEL)).map(String::as_str),
            service_account: p.spec.as_ref().and_then(|s| s.service_account_name.as_deref()),
        });
        let chain = ancestors(ctx, g, parent.flatten());
        // The agent as listed, too: a cached one may predate a change (a resume).
        let listed_agent = identities.iter().find(|i| i.name_any() == g.spec.agent).or(agent.as_deref());
        (w.recheck, w.needs_approval) = recheck(ctx, g, listed_agent, &chain, identities, policies, facts);
        w.authority = Authority::of(g, identities, policies, &shared.config.limits());
        w.needs_approval = w.authority.needs_approval.unwrap_or(w.needs_approval);
    }
    w.authority.record(g);
    let (mut phase, mut reason) = next_phase(g, &w);
    if ended_before && !phase.is_terminal() {
        phase = GrantPhase::Revoked;
        reason = "status-tampered: this grant ended earlier and its status was rewritten; it stays ended".into();
    }
    if phase.is_terminal() {
        end(g, ctx, stored.status.as_ref(), phase, &reason).await?;
        return Ok(Action::await_change());
    }
    if phase != GrantPhase::Active {
        write_status(ctx, g, stored.status.as_ref(), phase, &reason, None, vec![]).await?;
        return Ok(Action::await_change());
    }
    // Active: fix the expiry once, then keep every bound pod's token current.
    let status = g.status.clone().unwrap_or_default();
    let decided = ctx.activations.lock().unwrap_or_else(|e| e.into_inner()).get(&uid).copied();
    // Neither the status nor this term knows the activation time, but a
    // token may already be out: a replica stopped between writing it and
    // writing the status. Its `nbf` is that time; taking it keeps the token
    // (a new time would re-mint it, and stretch the grant by the downtime).
    let minted = match (&status.issued_at, decided) {
        (None, None) => minted_at(ctx, g).await?,
        _ => None,
    };
    let created = g.metadata.creation_timestamp.as_ref().map_or(i64::MIN, unix);
    // A repaired status restarts from what tenants cannot write: the earliest
    // token Writ signed for it, else its creation. Either only shortens the
    // grant; a rewritten status never extends it.
    let fallback = if tampered.is_some() { created.clamp(i64::MIN, now) } else { now };
    let issued_at = status
        .issued_at
        .as_ref()
        .map(unix)
        .or(decided.map(|d| d.0))
        .or(minted.map(|nbf| nbf.clamp(created.min(now), now)))
        .unwrap_or(fallback);
    let mut expires_at =
        status.expires_at.as_ref().map(unix).or(decided.map(|d| d.1)).unwrap_or(issued_at + g.spec.ttl.as_secs_i64());
    if let Some(Some(p)) = parent {
        if let Some(pexp) = p.status.as_ref().and_then(|s| s.expires_at.as_ref()) {
            expires_at = expires_at.min(unix(pexp));
        }
    }
    if now >= expires_at {
        end(g, ctx, stored.status.as_ref(), GrantPhase::Expired, "the grant's TTL ran out").await?;
        return Ok(Action::await_change());
    }
    {
        let mut memo = ctx.activations.lock().unwrap_or_else(|e| e.into_inner());
        // Once the cache shows the status, it never shows an older grant
        // again: the memo has done its job (and is not kept per active grant).
        if status.issued_at.is_some() && status.expires_at.is_some() {
            memo.remove(&uid);
        } else {
            memo.insert(uid.clone(), (issued_at, expires_at));
        }
    }
    // A grant bound to a pod binds to that pod's uid at activation.
    if g.spec.pod.is_some() && status.bound_pod_uid.is_none() {
        let uid = named_pod(ctx, g).and_then(|p| p.uid());
        g.status.get_or_insert_with(Default::default).bound_pod_uid = uid;
    }
    let tokens = issue_tokens(ctx, g, parent, issued_at, expires_at).await?;
    if current != GrantPhase::Active {
        if let Some(created) = g.metadata.creation_timestamp.as_ref() {
            shared.metrics.grant_to_active.observe((now - unix(created)).max(0) as f64);
        }
    }
    write_status(ctx, g, stored.status.as_ref(), GrantPhase::Active, &reason, Some((issued_at, expires_at)), tokens)
        .await?;
    // The expiry is found by the sweep ([`expired`]), not kept as a requeue.
    Ok(Action::await_change())
}

/// When a token of `g` already held by one of its bound pods says the grant
/// was activated (its `nbf`; the earliest, if several): tokens minted for
/// this grant (same uid) before its status recorded the time.
async fn minted_at(ctx: &Context, g: &CapabilityGrant) -> Result<Option<i64>, Error> {
    let ns = g.namespace().unwrap_or_default();
    let (name, uid) = (g.name_any(), g.uid().unwrap_or_default());
    let mut earliest: Option<i64> = None;
    for pod in bound_pods(ctx, g) {
        let Some(secret_name) = pod.credential_secret() else { continue };
        // As in [`end`]: a Secret holding a token of ours is read from the
        // API until the cache has our write.
        let secret = ctx.secret_writes.read_or_absent(&ns, secret_name).await.map_err(|source| Error::Kube {
            op: "reading credential Secret for",
            object: object(g),
            source,
        })?;
        let nbf = secret.as_deref().and_then(|s| s.token(&name)?.facts()).filter(|t| t.grant_uid == uid).map(|t| t.nbf);
        earliest = match (earliest, nbf) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(earliest)
}

async fn api_grant(ctx: &Context, ns: &str, name: &str) -> Result<Option<Arc<CapabilityGrant>>, kube::Error> {
    let api: Api<CapabilityGrant> = Api::namespaced(ctx.shared.client.clone(), ns);
    Ok(api.get_opt(name).await?.map(Arc::new))
}

/// The RFC 8693 `act` chain: the parent's agent, its parent's, … and the human requester.
fn actor_chain(ctx: &Context, g: &CapabilityGrant, parent: Option<Option<&CapabilityGrant>>) -> Option<token::Actor> {
    let ns = g.namespace().unwrap_or_default();
    let td = &ctx.shared.config.trust_domain;
    let mut subjects = Vec::new();
    let mut next = parent.flatten().cloned();
    let mut root_requester = g.annotations().get(REQUESTED_BY_ANNOTATION).cloned();
    let mut guard = 0;
    while let Some(p) = next {
        subjects.push(pki::cert::spiffe_id(td, &ns, &p.spec.agent));
        root_requester = p.annotations().get(REQUESTED_BY_ANNOTATION).cloned();
        next = p
            .spec
            .parent
            .as_ref()
            .and_then(|n| ctx.shared.grants.get(&kube::runtime::reflector::ObjectRef::new(n).within(&ns)))
            .map(|a| a.grant());
        guard += 1;
        if guard > 16 {
            break;
        }
    }
    if let Some(r) = root_requester {
        subjects.push(r);
    }
    subjects.into_iter().rev().fold(None, |inner, sub| Some(token::Actor { sub, act: inner.map(Box::new) }))
}

async fn issue_tokens(
    ctx: &Context,
    g: &CapabilityGrant,
    parent: Option<Option<&CapabilityGrant>>,
    issued_at: i64,
    expires_at: i64,
) -> Result<Vec<TokenRecord>, Error> {
    let shared = &ctx.shared;
    let now = pki::now_unix();
    let act = actor_chain(ctx, g, parent);
    // Every bound pod at once: their Secrets are independent, and writes to
    // one Secret from concurrent grants are batched by the writer.
    let issued = futures::future::join_all(
        bound_pods(ctx, g).into_iter().map(|pod| issue_token(ctx, g, pod, act.clone(), issued_at, expires_at, now)),
    )
    .await;
    let mut records = Vec::new();
    for result in issued {
        records.extend(result?);
    }
    // Tokens of pods that are no longer bound are revoked (tokens replaced
    // in place were revoked before they were overwritten).
    let gone: Vec<RevokedToken> = g
        .status
        .iter()
        .flat_map(|s| s.tokens.iter())
        .filter(|t| !records.iter().any(|r| r.pod == t.pod))
        .map(|t| RevokedToken { jti: t.jti.clone(), expires_at: unix(&t.expires_at) })
        .collect();
    if !gone.is_empty() {
        shared
            .revocations
            .revoke(&g.namespace().unwrap_or_default(), gone, vec![], now)
            .await
            .map_err(|source| Error::Revocation { object: object(g), source })?;
    }
    Ok(records)
}

/// Makes sure `pod` holds a current token for `g` and returns its record;
/// `None` when the pod has no credential (yet) or its Secret is gone.
async fn issue_token(
    ctx: &Context,
    g: &CapabilityGrant,
    pod: Arc<AgentPod>,
    act: Option<token::Actor>,
    issued_at: i64,
    expires_at: i64,
    now: i64,
) -> Result<Option<TokenRecord>, Error> {
    let shared = &ctx.shared;
    let ns = g.namespace().unwrap_or_default();
    let key = token_key(&g.name_any());
    let Some(secret_name) = pod.credential_secret() else { return Ok(None) };
    let secret = ctx.secret_writes.read(&ns, secret_name).await.map_err(|source| Error::Kube {
        op: "reading credential Secret for",
        object: object(g),
        source,
    })?;
    let Some(cert) = secret.as_deref().and_then(|s| s.certificate_for(&pod)) else { return Ok(None) };
    let existing = secret.as_deref().and_then(|s| s.token(&g.name_any())?.facts());
    let fresh = existing.filter(|t| {
        t.thumbprint == cert.thumbprint
            && t.grant_uid == g.uid().unwrap_or_default()
            && t.exp == expires_at.min(cert.not_after)
            && t.pod_uid == pod.uid().unwrap_or_default()
            && t.kid.is_some_and(|kid| shared.trust.has_kid(kid, now))
    });
    if let Some(t) = fresh {
        return Ok(Some(TokenRecord { pod: pod.name_any(), jti: t.jti.to_string(), expires_at: time(t.exp) }));
    }
    let claims = token::Claims {
        iss: shared.trust.issuer(),
        sub: pki::cert::spiffe_id(&shared.config.trust_domain, &ns, &g.spec.agent),
        aud: g.spec.audiences.clone(),
        iat: now,
        nbf: issued_at.min(now),
        exp: expires_at.min(cert.not_after),
        jti: token::new_jti().map_err(|source| Error::Pki { op: "making a token id", object: object(g), source })?,
        cap: g
            .spec
            .capabilities
            .iter()
            .map(|c| token::Capability { action: c.action.clone(), resource: c.resource.clone() })
            .collect(),
        task: token::Task { id: g.spec.task.id.clone(), intent: g.spec.task.intent.clone() },
        grant: token::GrantRef { namespace: ns.clone(), name: g.name_any(), uid: g.uid().unwrap_or_default() },
        pod: token::PodRef { name: pod.name_any(), uid: pod.uid().unwrap_or_default() },
        cnf: token::Confirmation { x5t_s256: cert.thumbprint.to_string(), jkt: None },
        act,
        req: g.annotations().get(REQUESTED_BY_ANNOTATION).cloned().unwrap_or_default(),
        apr: g.annotations().get(APPROVED_BY_ANNOTATION).cloned(),
        txn: None,
        gjti: None,
    };
    let jwt = token::sign(&shared.trust.signing_key(), &claims).map_err(|source| Error::Pki {
        op: "signing token",
        object: object(g),
        source,
    })?;
    // The token being replaced (older certificate, key or expiry) is revoked
    // durably before it is overwritten: a crash in between must not lose it.
    let replaced = existing.map(|old| RevokedToken { jti: old.jti.to_string(), expires_at: old.exp });
    if let Some(old) = &replaced {
        shared
            .revocations
            .revoke(&ns, vec![old.clone()], vec![], now)
            .await
            .map_err(|source| Error::Revocation { object: object(g), source })?;
    }
    match ctx.secret_writes.write(&ns, secret_name, &key, Some(jwt)).await {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(source) => return Err(Error::Write { op: "writing token for", object: object(g), source }),
    }
    shared.metrics.credential("token", if replaced.is_some() { "rotated" } else { "issued" });
    tracing::info!(grant = %g.name_any(), namespace = %ns, pod = %pod.name_any(), jti = %claims.jti, exp = claims.exp, "capability token issued");
    Ok(Some(TokenRecord { pod: pod.name_any(), jti: claims.jti, expires_at: time(claims.exp) }))
}

/// Ends a grant: every token `jti` goes on the revocation list (durably),
/// with the grant's [`ended_marker`], then the token files are removed from
/// the pods' Secrets, then status. `g` carries the trusted status
/// ([`trusted`]): only token records Writ sealed are revoked from it, so a
/// rewritten status cannot revoke another grant's tokens.
async fn end(
    g: &CapabilityGrant,
    ctx: &Context,
    stored: Option<&CapabilityGrantStatus>,
    phase: GrantPhase,
    reason: &str,
) -> Result<(), Error> {
    let shared = &ctx.shared;
    let uid = g.uid().unwrap_or_default();
    ctx.activations.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
    let ns = g.namespace().unwrap_or_default();
    let now = pki::now_unix();
    let key = token_key(&g.name_any());
    let mut revoked: Vec<RevokedToken> = g
        .status
        .iter()
        .flat_map(|s| s.tokens.iter())
        .map(|t| RevokedToken { jti: t.jti.clone(), expires_at: unix(&t.expires_at) })
        .collect();
    // The marker lasts while the grant could still be in force: to its
    // sealed expiry, or one operator-maximum TTL for a grant never activated.
    let marker_until = g
        .status
        .as_ref()
        .and_then(|s| s.expires_at.as_ref())
        .map(unix)
        .unwrap_or(now + shared.config.limits().max_grant_ttl.as_secs_i64())
        .max(now + 60);
    revoked.push(RevokedToken { jti: ended_grant_marker(&uid), expires_at: marker_until });
    // Also whatever is stored (a token written just before a crash, before
    // status recorded it): in the one pod a bound grant names (its spec is
    // immutable, and no other pod ever got its token), or any pod of the
    // agent. Read as the cache has them: every token is our write, and a
    // Secret holding one we wrote is read from the API until the cache has
    // caught up with that write; a Secret the cache no longer holds, and we
    // never wrote, is gone. (Read from the API, every grant ended with its
    // namespace asked for each deleted Secret of the agent: 1,764 404s a
    // second while a 10,000-pod scale namespace emptied.)
    let pods: Vec<_> = match &g.spec.pod {
        Some(name) => {
            shared.pods.get(&kube::runtime::reflector::ObjectRef::new(name).within(&ns)).into_iter().collect()
        }
        None => shared.pods.state(),
    }
    .into_iter()
    .filter(|p| p.namespace().as_deref() == Some(&ns) && p.agent() == Some(g.spec.agent.as_str()))
    .collect();
    let mut holding = Vec::new();
    for pod in &pods {
        let Some(secret_name) = pod.credential_secret() else { continue };
        let Some(secret) = ctx.secret_writes.read_or_absent(&ns, secret_name).await.map_err(|source| Error::Kube {
            op: "reading credential Secret for",
            object: object(g),
            source,
        })?
        else {
            continue;
        };
        if let Some(held) = secret.token(&g.name_any()) {
            if let Some(t) = held.facts() {
                if !revoked.iter().any(|r| r.jti == t.jti) {
                    revoked.push(RevokedToken { jti: t.jti.to_string(), expires_at: t.exp });
                }
            }
            holding.push(secret_name.to_string());
        }
    }
    shared
        .revocations
        .revoke(&ns, revoked.clone(), vec![], now)
        .await
        .map_err(|source| Error::Revocation { object: object(g), source })?;
    let removals = holding.iter().map(|secret_name| ctx.secret_writes.write(&ns, secret_name, &key, None));
    for outcome in futures::future::join_all(removals).await {
        match outcome {
            Ok(()) => shared.metrics.credential("token", "revoked"),
            Err(e) if is_not_found(&e) => {}
            Err(source) => return Err(Error::Write { op: "removing token of", object: object(g), source }),
        }
    }
    let tokens = g.status.as_ref().map(|s| s.tokens.clone()).unwrap_or_default();
    if g.metadata.deletion_timestamp.is_none() {
        write_status(ctx, g, stored, phase, reason, None, tokens).await?;
    } else if g.status.as_ref().map(|s| s.phase) != Some(phase) {
        audit(g, phase, reason);
        shared
            .metrics
            .grant_transitions
            .get_or_create(&crate::state::metrics::PhaseLabels { phase: phase.as_str() })
            .inc();
        ctx.event(
            &g.object_ref(&()),
            false,
            phase.as_str(),
            "Revoke",
            format!("{reason}; {} token(s) revoked", revoked.len() - 1),
        )
        .await;
    }
    Ok(())
}

/// The audit line of a transition, from what the API server stored (never
/// from an admission request alone). Values a user chose are written with
/// `?` (quoted, control characters escaped) so none can forge another line
/// or field in the text log format.
fn audit(g: &CapabilityGrant, phase: GrantPhase, reason: &str) {
    let caps: Vec<String> = g.spec.capabilities.iter().map(ToString::to_string).collect();
    tracing::info!(
        target: "audit",
        grant = %g.name_any(),
        namespace = %g.namespace().unwrap_or_default(),
        agent = %g.spec.agent,
        requester = ?g.annotations().get(REQUESTED_BY_ANNOTATION).map(String::as_str).unwrap_or(""),
        approver = ?g.annotations().get(APPROVED_BY_ANNOTATION).map(String::as_str).unwrap_or(""),
        decision = ?g.spec.approval.as_ref().map(|a| a.decision),
        decision_reason = ?g.spec.approval.as_ref().and_then(|a| a.reason.as_deref()).unwrap_or(""),
        requested = ?caps,
        approved = ?if phase == GrantPhase::Active || phase.is_terminal() && g.status.as_ref().is_some_and(|s| !s.approved.is_empty()) { caps.clone() } else { vec![] },
        task_id = ?g.spec.task.id,
        task_intent = ?g.spec.task.intent.as_deref().unwrap_or(""),
        phase = %phase,
        reason = ?reason,
        "grant transition"
    );
}

/// Builds, seals and writes the status for `phase`; Event, audit line and
/// metric on transitions only. `g` carries the trusted status, `stored` is
/// what the API server holds (the write is skipped when they agree).
async fn write_status(
    ctx: &Context,
    g: &CapabilityGrant,
    stored: Option<&CapabilityGrantStatus>,
    phase: GrantPhase,
    reason: &str,
    active: Option<(i64, i64)>,
    tokens: Vec<TokenRecord>,
) -> Result<(), Error> {
    let shared = &ctx.shared;
    let old = g.status.clone().unwrap_or_default();
    if !transition_allowed(old.phase, phase) {
        return Err(Error::Transition { object: object(g), from: old.phase, to: phase });
    }
    let now = pki::now_unix();
    let mut desired = desired_status(g, &old, phase, reason, active, tokens, now);
    desired.seal = None;
    desired.seal = Some(crate::policy::seal::seal_status(&shared.trust.seal_keys(), g, &desired));
    if stored == Some(&desired) {
        return Ok(());
    }
    let api: Api<CapabilityGrant> = Api::namespaced(shared.client.clone(), &g.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "apiVersion": "writ.dev/v1alpha1", "kind": "CapabilityGrant", "status": desired });
    api.patch_status(&g.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(patch))
        .await
        .map_err(|source| Error::Kube { op: "writing status of", object: object(g), source })?;
    if old.phase != phase || stored.is_none() {
        audit(g, phase, reason);
        shared
            .metrics
            .grant_transitions
            .get_or_create(&crate::state::metrics::PhaseLabels { phase: phase.as_str() })
            .inc();
        let warning = matches!(phase, GrantPhase::Denied | GrantPhase::Revoked);
        ctx.event(&g.object_ref(&()), warning, phase.as_str(), "Transition", reason.to_string()).await;
    }
    Ok(())
}

/// The grant controller's name in metrics, logs and back-off.
pub const CONTROLLER: &str = "grant";

/// Error policy: count the error, back off per grant.
pub fn error_policy(g: Arc<CachedGrant>, err: &Error, ctx: Arc<Context>) -> Action {
    super::back_off(&ctx, CONTROLLER, &*g, err, Duration::from_secs(1))
}

#[cfg(test)]
mod tests;
