//! Delegated grants: a grant with `spec.parent` may only narrow the authority
//! its parent holds, for no longer than the parent, within the policy's depth,
//! and without cycles.

use jiff::{SignedDuration, Timestamp};

use crate::api::{CapabilityGrant, Duration, GrantPhase, REQUESTED_BY_ANNOTATION};

use super::grant::GrantContext;
use super::rules::{Rule, Violation};

/// The delegation chain as far as it could be established.
pub(crate) struct Chain {
    /// The grant's depth, when the chain up to its root is known.
    pub depth: Option<u32>,
    /// Root requester, then agents down to the grant's agent.
    pub chain: Vec<String>,
}

/// Checks a delegated grant against its ancestors. `caps` are the indices of
/// the grant's well-formed capabilities.
pub(crate) fn check_delegation(
    grant: &CapabilityGrant,
    parent_name: &str,
    ctx: &GrantContext<'_>,
    caps: &[usize],
    out: &mut Vec<Violation>,
) -> Chain {
    let fallback = Chain { depth: None, chain: vec![ctx.requester.username.clone(), grant.spec.agent.clone()] };
    let in_namespace = |g: &CapabilityGrant| g.metadata.namespace.as_deref().is_none_or(|ns| ns == ctx.namespace);
    let Some(parent) =
        ctx.ancestors.first().filter(|p| p.metadata.name.as_deref() == Some(parent_name) && in_namespace(p))
    else {
        out.push(Violation::new(
            "spec.parent",
            Rule::ParentNotFound,
            format!("there is no grant {parent_name} in namespace {} to delegate from", ctx.namespace),
        ));
        return fallback;
    };

    let ancestors = linked_ancestors(grant, ctx.ancestors, out);

    for (i, ancestor) in ancestors.iter().enumerate() {
        if let Some(why) = inactive(ancestor, ctx.now) {
            let name = ancestor.metadata.name.as_deref().unwrap_or("?");
            let message = if i == 0 {
                format!("parent grant {name} {why}; only an Active grant can be delegated from")
            } else {
                format!("grant {name}, an ancestor of parent grant {parent_name}, {why}")
            };
            out.push(Violation::new("spec.parent", Rule::ParentNotActive, message));
        }
    }

    let holder = &parent.spec.agent;
    if ctx.requester.agent.as_deref() != Some(holder.as_str()) {
        out.push(Violation::new(
            "spec.parent",
            Rule::NotParentHolder,
            format!(
                "only agent {holder}, which holds parent grant {parent_name}, may delegate from it; \
                 this request is from {}",
                ctx.requester
            ),
        ));
    }

    if let Some(earlier) = ancestors.iter().find(|a| a.spec.agent == grant.spec.agent) {
        out.push(Violation::new(
            "spec.agent",
            Rule::DelegationCycle,
            format!(
                "agent {} already holds grant {} in this delegation chain; delegate to a different agent",
                grant.spec.agent,
                earlier.metadata.name.as_deref().unwrap_or("?")
            ),
        ));
    }

    check_subset(grant, parent, caps, out);
    if inactive(parent, ctx.now).is_none() {
        check_lifetime(grant, parent, ctx.now, out);
    }

    let root = ancestors.last().unwrap_or(&parent);
    let root_requester = root
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REQUESTED_BY_ANNOTATION).cloned())
        .or_else(|| root.status.as_ref().and_then(|s| s.requested_by.clone()))
        .unwrap_or_else(|| "(unknown)".to_string());
    let mut chain = vec![root_requester];
    chain.extend(ancestors.iter().rev().map(|a| a.spec.agent.clone()));
    chain.push(grant.spec.agent.clone());
    let linked = ancestors.last().is_some_and(|a| a.spec.parent.is_none());
    let depth = u32::try_from(ancestors.len() + 1).ok().filter(|_| linked);
    Chain { depth, chain }
}

/// The ancestors that form a chain from the parent up to the root, reporting
/// grants that repeat (a cycle) or parents that cannot be found. Extra
/// ancestors beyond the root are ignored.
fn linked_ancestors<'a>(
    grant: &CapabilityGrant,
    ancestors: &'a [CapabilityGrant],
    out: &mut Vec<Violation>,
) -> Vec<&'a CapabilityGrant> {
    let mut seen: Vec<&str> = grant.metadata.name.as_deref().into_iter().collect();
    let mut linked = Vec::new();
    for (i, ancestor) in ancestors.iter().enumerate() {
        let name = ancestor.metadata.name.as_deref().unwrap_or("");
        if seen.contains(&name) {
            out.push(Violation::new(
                "spec.parent",
                Rule::DelegationCycle,
                format!("grant {name} appears twice in the delegation chain"),
            ));
            return linked;
        }
        seen.push(name);
        linked.push(ancestor);
        let Some(next) = &ancestor.spec.parent else {
            return linked;
        };
        if ancestors.get(i + 1).and_then(|a| a.metadata.name.as_deref()) == Some(next.as_str()) {
            continue;
        }
        if seen.contains(&next.as_str()) {
            out.push(Violation::new(
                "spec.parent",
                Rule::DelegationCycle,
                format!("grant {name} names {next} as its parent, which is already in the delegation chain"),
            ));
        } else {
            out.push(Violation::new(
                "spec.parent",
                Rule::ParentNotFound,
                format!("grant {name}, in the chain above this one, names parent {next}, which does not exist"),
            ));
        }
        return linked;
    }
    linked
}

/// Why a grant cannot be delegated from, or `None` when it is Active.
fn inactive(g: &CapabilityGrant, now: Timestamp) -> Option<String> {
    let status = g.status.as_ref();
    let phase = status.map(|s| s.phase).unwrap_or_default();
    if phase != GrantPhase::Active {
        return Some(format!("is {phase}, not Active"));
    }
    if g.spec.completed {
        return Some("is completed".to_string());
    }
    match status.and_then(|s| s.expires_at.as_ref()) {
        Some(exp) if exp.0 <= now => Some(format!("expired at {}", exp.0)),
        Some(_) => None,
        None => Some("has no expiry yet".to_string()),
    }
}

/// Every capability and audience of the grant is one of the parent's.
fn check_subset(grant: &CapabilityGrant, parent: &CapabilityGrant, caps: &[usize], out: &mut Vec<Violation>) {
    let parent_name = parent.metadata.name.as_deref().unwrap_or("?");
    // What the parent holds: what it asked for, narrowed to what was issued once it is known.
    let approved = parent.status.as_ref().map(|s| s.approved.as_slice()).unwrap_or_default();
    for &i in caps {
        let cap = &grant.spec.capabilities[i];
        let held = parent.spec.capabilities.contains(cap) && (approved.is_empty() || approved.contains(cap));
        if !held {
            out.push(Violation::new(
                format!("spec.capabilities[{i}]"),
                Rule::NotSubsetOfParent,
                format!("{cap} is not held by parent grant {parent_name}; delegation may only narrow"),
            ));
        }
    }
    for (i, aud) in grant.spec.audiences.iter().enumerate() {
        if !parent.spec.audiences.contains(aud) {
            out.push(Violation::new(
                format!("spec.audiences[{i}]"),
                Rule::NotSubsetOfParent,
                format!("audience {aud} is not an audience of parent grant {parent_name}"),
            ));
        }
    }
}

/// The grant, if activated now, ends no later than its parent.
fn check_lifetime(grant: &CapabilityGrant, parent: &CapabilityGrant, now: Timestamp, out: &mut Vec<Violation>) {
    let Some(parent_expiry) = parent.status.as_ref().and_then(|s| s.expires_at.as_ref()).map(|t| t.0) else {
        return;
    };
    let ends = now.checked_add(SignedDuration::from_secs(grant.spec.ttl.as_secs_i64()));
    if ends.is_ok_and(|end| end <= parent_expiry) {
        return;
    }
    let left = Duration::from_secs(u64::try_from(parent_expiry.as_second() - now.as_second()).unwrap_or(0));
    out.push(Violation::new(
        "spec.ttl",
        Rule::OutlivesParent,
        format!(
            "parent grant {} expires at {parent_expiry}, in {left}; a ttl of {} would outlive it",
            parent.metadata.name.as_deref().unwrap_or("?"),
            grant.spec.ttl
        ),
    ));
}
