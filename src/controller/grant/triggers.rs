//! What makes a grant reconcile: its own change; a change of a pod it binds,
//! of a credential Secret that should hold (or still holds) its token, of its
//! parent grant, of its agent's spec or existence, or of a DelegationPolicy
//! in its namespace; a full pass; and a sweep each second for expiries and
//! approval deadlines.

use futures::StreamExt as _;
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::Instrument as _;

use super::*;
use crate::controller::{
    machinery::{
        cache::Resync,
        gate::GenerationGate,
        intake::{self, every_object, through_intake, SWEEP},
    },
    Caches,
};

/// Reconciles in flight of the grant controller: each grant is re-triggered
/// by its own status write and by its token's Secret write, so a burst of new
/// grants queued behind those at 32 (p99 time to Active 26 s at 10k).
const GRANT_RECONCILES_IN_FLIGHT: u16 = 256;

/// The grant controller, with its triggers.
pub async fn controller(ctx: Arc<Context>, caches: &Caches) {
    let grants = || ctx.shared.grants.clone();
    let (g1, g2, g3, g4, g5, g6) = (grants(), grants(), grants(), grants(), grants(), grants());
    let (identity_gate, policy_gate) =
        (GenerationGate::seeded(&caches.identities.store()), GenerationGate::seeded(&caches.policies.store()));
    let (identity_cache, policy_cache) = (ctx.shared.identities.clone(), ctx.shared.policies.clone());
    let (resync, all) = Resync::channel();
    let each = |refs: Vec<ObjectRef<CachedGrant>>| futures::stream::iter(refs);
    let requests = futures::stream::select_all([
        caches.grants.changes(&resync).map(|g| ObjectRef::from_obj(&*g)).boxed(),
        caches
            .pods
            .changes(&resync)
            .flat_map(move |p| {
                // The grants that bind this pod: its agent's, unless bound to another pod.
                let agent = p.agent().unwrap_or_default().to_string();
                let pod = p.name_any();
                each(grants_where(&g1, &p.namespace().unwrap_or_default(), |g| {
                    g.agent == agent && g.pod.as_ref().is_none_or(|bound| *bound == pod)
                }))
            })
            .boxed(),
        caches.secrets.changes(&resync).flat_map(move |s| each(grants_for_secret(&g2, &s))).boxed(),
        caches
            .grants
            .changes(&resync)
            .flat_map(move |parent| {
                let name = parent.name_any();
                each(grants_where(&g3, &parent.namespace().unwrap_or_default(), |g| g.parent.as_deref() == Some(&name)))
            })
            .boxed(),
        caches
            .identities
            .changes(&resync)
            .flat_map(move |id| {
                if !identity_gate.changed(id.as_ref(), &identity_cache) {
                    return each(Vec::new());
                }
                let name = id.name_any();
                each(grants_where(&g4, &id.namespace().unwrap_or_default(), |g| g.agent == name))
            })
            .boxed(),
        caches
            .policies
            .changes(&resync)
            .flat_map(move |p| {
                if !policy_gate.changed(p.as_ref(), &policy_cache) {
                    return each(Vec::new());
                }
                each(grants_where(&g5, &p.namespace().unwrap_or_default(), |_| true))
            })
            .boxed(),
        every_object(all, caches.grants.store()).boxed(),
        intake::every(SWEEP)
            .flat_map(move |()| {
                let now = crate::pki::now_unix();
                let mut due = expired(&g6, now);
                due.extend(approval_overdue(&g6, now));
                each(due)
            })
            .boxed(),
    ]);
    let (controller, intake) = through_intake(caches.grants.store(), requests, GRANT_RECONCILES_IN_FLIGHT);
    let run = controller.run(crate::controller::forgetting_failures(CONTROLLER, reconcile), error_policy, ctx.clone());
    intake.drain(run).instrument(tracing::info_span!("controller", name = CONTROLLER)).await;
}

/// Index helper for watches: grants of an agent, or children of a grant.
pub fn grants_where(
    ctx_grants: &Store<CachedGrant>,
    ns: &str,
    f: impl Fn(&CachedGrant) -> bool,
) -> Vec<ObjectRef<CachedGrant>> {
    ctx_grants
        .state()
        .iter()
        .filter(|g| g.namespace().as_deref() == Some(ns) && f(g))
        .map(|g| ObjectRef::from_obj(&**g))
        .collect()
}

/// Active grants whose status says they expired by `now` (unix seconds):
/// the sweep that ends them, each second, instead of a requeue kept per
/// active grant (see [`intake`]).
pub fn expired(grants: &Store<CachedGrant>, now: i64) -> Vec<ObjectRef<CachedGrant>> {
    grants
        .state()
        .iter()
        .filter(|g| g.is_active() && g.expires_at.is_some_and(|exp| exp <= now))
        .map(|g| ObjectRef::from_obj(&**g))
        .collect()
}

/// Grants still awaiting approval whose deadline (`status.approvalDeadline`)
/// has come by `now` (unix seconds): swept each second like [`expired`], so
/// each ends Denied (`approval-timeout`) within a second of its deadline.
pub fn approval_overdue(grants: &Store<CachedGrant>, now: i64) -> Vec<ObjectRef<CachedGrant>> {
    grants
        .state()
        .iter()
        .filter(|g| g.phase == GrantPhase::AwaitingApproval && g.approval_deadline.is_some_and(|d| d <= now))
        .map(|g| ObjectRef::from_obj(&**g))
        .collect()
}

/// Grants a credential-Secret change concerns: those of its agent that should
/// hold a token there and whose token is missing or bound to another
/// certificate (the certificate rotated), plus ended grants whose token is
/// still there. Mapping every change to every grant of the agent would make
/// activation quadratic in the number of grants (each token write is itself a
/// Secret change).
pub fn grants_for_secret(ctx_grants: &Store<CachedGrant>, secret: &CredentialSecret) -> Vec<ObjectRef<CachedGrant>> {
    let agent = secret.agent.as_deref().unwrap_or_default();
    let ns = secret.namespace().unwrap_or_default();
    let thumbprint = secret.leaf().map(|c| c.thumbprint);
    let pod = secret.pod.as_deref().unwrap_or_default();
    grants_where(ctx_grants, &ns, |g| {
        if g.agent != agent || g.pod.as_ref().is_some_and(|bound| bound != pod) {
            return false;
        }
        let active = g.is_active();
        match secret.token(&g.name_any()) {
            None => active,
            Some(held) if active => held.facts().map(|t| t.thumbprint) != thumbprint,
            Some(_) => true,
        }
    })
}
