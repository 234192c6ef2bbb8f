//! What Writ seals on a grant, and how a seal is checked (docs/design.md,
//! "Trust boundary").
//!
//! Three records live where tenants can write, so each carries a seal made
//! with the operator's [`SealKeys`]:
//!
//! * the **admission seal** (annotation `writ.dev/admission-seal`), made by the
//!   mutating webhook at create time over the namespace, the name (or the
//!   `generateName` prefix: names are generated after mutating admission), the
//!   requester stamps, a digest of the spec and the time of sealing. The uid
//!   and `creationTimestamp` do not exist yet, so the time of sealing must lie
//!   close to `creationTimestamp`: a seal copied onto a later object is stale.
//! * the **approval seal** (annotation `writ.dev/approval-seal`), made at the
//!   approval update over the uid, the approver stamp and the decision.
//! * the **status seal** (`status.seal`), made by the controller over the phase,
//!   the activation window, the bound pod's uid, the token records, and the
//!   authority the grant is held to (`authorisedBy`, `approvalDeadline`).
//!
//! The spec digest leaves out `completed` and `approval`, the two fields that
//! may change after admission (each checked on its own).

use aws_lc_rs::digest;
use kube::ResourceExt;

use crate::api::GrantPhase;
use crate::api::{
    CapabilityGrant, CapabilityGrantSpec, CapabilityGrantStatus, ADMISSION_SEAL_ANNOTATION, APPROVAL_SEAL_ANNOTATION,
    APPROVED_BY_ANNOTATION, REQUESTED_BY_ANNOTATION, REQUESTED_GROUPS_ANNOTATION,
};
use crate::pki::seal::{SealError, SealKeys};

const ADMISSION: &str = "writ.dev/grant-admission/v1";
const APPROVAL: &str = "writ.dev/grant-approval/v1";
const STATUS: &str = "writ.dev/grant-status/v1";
const REVIEW: &str = "writ.dev/identity-review/v1";

/// How far the time of sealing may lie from the grant's `creationTimestamp`
/// (admission latency plus clock skew between replicas and the API server).
pub const ADMISSION_SEAL_WINDOW_SECS: i64 = 120;

/// Why a grant's admission or approval is not Writ's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    /// No admission seal, or one that does not verify.
    #[error("its admission seal {what}: it did not pass Writ's admission webhook, or a sealed field (stamps, spec) was changed afterwards")]
    Admission {
        /// What is wrong with the seal.
        what: String,
    },
    /// A seal made far from the object's creation: copied from another object.
    #[error("its admission seal was made at {sealed_at}, not within {ADMISSION_SEAL_WINDOW_SECS}s of its creation at {created}: it was copied from another grant")]
    Stale {
        /// Unix seconds of sealing.
        sealed_at: i64,
        /// Unix seconds of creation.
        created: i64,
    },
    /// An approval decision without a valid approval seal.
    #[error("its approval decision {what}: it did not pass Writ's admission webhook")]
    Approval {
        /// What is wrong with the seal.
        what: String,
    },
}

fn annotation<'a>(g: &'a CapabilityGrant, key: &str) -> &'a str {
    g.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str).unwrap_or("")
}

/// SHA-256 (base64url) of the spec without `completed` and `approval`, as
/// Writ serializes it.
pub fn spec_digest(spec: &CapabilityGrantSpec) -> String {
    let mut fixed = spec.clone();
    fixed.completed = false;
    fixed.approval = None;
    // Serializing our own types cannot fail.
    let json = serde_json::to_vec(&fixed).unwrap_or_default();
    crate::pki::b64url(digest::digest(&digest::SHA256, &json).as_ref())
}

/// The name the admission seal covers: the name, or `generateName:` and the
/// prefix when the name is not assigned yet.
fn sealed_name(g: &CapabilityGrant) -> String {
    match (&g.metadata.name, &g.metadata.generate_name) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        (_, Some(prefix)) => format!("generateName:{prefix}"),
        _ => String::new(),
    }
}

fn admission_fields(g: &CapabilityGrant, name: &str, sealed_at: i64) -> [String; 6] {
    let mut groups: Vec<&str> =
        annotation(g, REQUESTED_GROUPS_ANNOTATION).split(',').filter(|s| !s.is_empty()).collect();
    groups.sort_unstable();
    [
        g.namespace().unwrap_or_default(),
        name.to_string(),
        annotation(g, REQUESTED_BY_ANNOTATION).to_string(),
        groups.join(","),
        spec_digest(&g.spec),
        sealed_at.to_string(),
    ]
}

fn as_strs<const N: usize>(fields: &[String; N]) -> [&str; N] {
    std::array::from_fn(|i| fields[i].as_str())
}

/// The admission seal for a grant as stamped (annotation value).
pub fn seal_admission(keys: &SealKeys, g: &CapabilityGrant, now: i64) -> String {
    let fields = admission_fields(g, &sealed_name(g), now);
    format!("{now}.{}", keys.seal(ADMISSION, &as_strs(&fields)))
}

fn split_timed(value: &str) -> Result<(i64, &str), SealError> {
    if value.is_empty() {
        return Err(SealError::Missing);
    }
    let (at, seal) = value.split_once('.').ok_or(SealError::Malformed)?;
    Ok((at.parse().map_err(|_| SealError::Malformed)?, seal))
}

/// Checks the admission seal of a stored grant: it verifies over the grant's
/// namespace, name (or the `generateName` prefix its name starts with),
/// stamps and spec, and was made within [`ADMISSION_SEAL_WINDOW_SECS`] of its
/// `creationTimestamp`.
pub fn verify_admission(keys: &SealKeys, g: &CapabilityGrant, now: i64) -> Result<(), NotAdmitted> {
    let bad = |e: SealError| NotAdmitted::Admission { what: e.to_string().replace("the seal", "is") };
    let (sealed_at, seal) = split_timed(annotation(g, ADMISSION_SEAL_ANNOTATION)).map_err(|e| match e {
        SealError::Missing => NotAdmitted::Admission { what: "is missing".into() },
        e => bad(e),
    })?;
    let name = g.metadata.name.clone().unwrap_or_default();
    let mut candidates = vec![name.clone()];
    if let Some(prefix) = g.metadata.generate_name.as_deref().filter(|p| name.starts_with(*p)) {
        candidates.push(format!("generateName:{prefix}"));
    }
    let mut last = SealError::Mismatch;
    let verified = candidates.iter().any(|n| {
        let fields = admission_fields(g, n, sealed_at);
        match keys.verify(ADMISSION, &as_strs(&fields), seal, now) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        }
    });
    if !verified {
        return Err(bad(last));
    }
    if let Some(created) = g.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()) {
        if (sealed_at - created).abs() > ADMISSION_SEAL_WINDOW_SECS {
            return Err(NotAdmitted::Stale { sealed_at, created });
        }
    }
    Ok(())
}

fn approval_fields(g: &CapabilityGrant, sealed_at: i64) -> [String; 5] {
    let decision = g.spec.approval.as_ref().map(|a| serde_json::to_string(a).unwrap_or_default()).unwrap_or_default();
    [
        g.namespace().unwrap_or_default(),
        g.uid().unwrap_or_default(),
        annotation(g, APPROVED_BY_ANNOTATION).to_string(),
        decision,
        sealed_at.to_string(),
    ]
}

/// The approval seal for a grant whose approval step is being stamped.
pub fn seal_approval(keys: &SealKeys, g: &CapabilityGrant, now: i64) -> String {
    format!("{now}.{}", keys.seal(APPROVAL, &as_strs(&approval_fields(g, now))))
}

/// Checks a grant's approval seal (only meaningful when `spec.approval` is set).
pub fn verify_approval(keys: &SealKeys, g: &CapabilityGrant, now: i64) -> Result<(), NotAdmitted> {
    let bad = |e: SealError| NotAdmitted::Approval { what: e.to_string().replace("the seal", "has a seal that") };
    let (sealed_at, seal) = split_timed(annotation(g, APPROVAL_SEAL_ANNOTATION)).map_err(|e| match e {
        SealError::Missing => NotAdmitted::Approval { what: "has no approval seal".into() },
        e => bad(e),
    })?;
    keys.verify(APPROVAL, &as_strs(&approval_fields(g, sealed_at)), seal, now).map_err(bad)
}

/// Both seals of a stored grant: admission always, approval when a decision is set.
pub fn verify_grant(keys: &SealKeys, g: &CapabilityGrant, now: i64) -> Result<(), NotAdmitted> {
    verify_admission(keys, g, now)?;
    if g.spec.approval.is_some() {
        verify_approval(keys, g, now)?;
    }
    Ok(())
}

fn status_fields(g: &CapabilityGrant, st: &CapabilityGrantStatus) -> [String; 10] {
    let t = |v: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        v.as_ref().map(|t| t.0.as_second().to_string()).unwrap_or_default()
    };
    let tokens: Vec<String> =
        st.tokens.iter().map(|r| format!("{}/{}/{}", r.pod, r.jti, r.expires_at.0.as_second())).collect();
    [
        g.namespace().unwrap_or_default(),
        g.name_any(),
        g.uid().unwrap_or_default(),
        st.phase.as_str().to_string(),
        t(&st.issued_at),
        t(&st.expires_at),
        st.bound_pod_uid.clone().unwrap_or_default(),
        tokens.join(","),
        st.authorised_by.clone().unwrap_or_default(),
        t(&st.approval_deadline),
    ]
}

/// The controller's seal over a status it writes.
pub fn seal_status(keys: &SealKeys, g: &CapabilityGrant, st: &CapabilityGrantStatus) -> String {
    keys.seal(STATUS, &as_strs(&status_fields(g, st)))
}

/// Whether a stored status is the controller's own: its seal verifies over
/// its phase, activation window, bound pod, tokens and the authority the
/// grant is held to.
pub fn verify_status(
    keys: &SealKeys,
    g: &CapabilityGrant,
    st: &CapabilityGrantStatus,
    now: i64,
) -> Result<(), SealError> {
    let seal = st.seal.as_deref().ok_or(SealError::Missing)?;
    keys.verify(STATUS, &as_strs(&status_fields(g, st)), seal, now)
}

fn review_fields(id: &crate::api::AgentIdentity, sealed_at: i64) -> [String; 6] {
    let get = |key: &str| id.metadata.annotations.as_ref().and_then(|a| a.get(key)).cloned().unwrap_or_default();
    [
        id.namespace().unwrap_or_default(),
        id.name_any(),
        id.uid().unwrap_or_default(),
        get(crate::api::REVIEWED_BY_ANNOTATION),
        get(crate::api::REVIEWED_AT_ANNOTATION),
        sealed_at.to_string(),
    ]
}

/// The seal over an identity's review stamps (annotation value), made by the
/// webhook that stamps them.
pub fn seal_review(keys: &SealKeys, id: &crate::api::AgentIdentity, now: i64) -> String {
    format!("{now}.{}", keys.seal(REVIEW, &as_strs(&review_fields(id, now))))
}

/// Whether an identity's review stamps are Writ's: their seal verifies over
/// the identity's uid, the reviewer and the time of the review.
pub fn verify_review(keys: &SealKeys, id: &crate::api::AgentIdentity, now: i64) -> Result<(), SealError> {
    let value = id.metadata.annotations.as_ref().and_then(|a| a.get(crate::api::REVIEW_SEAL_ANNOTATION));
    let (sealed_at, seal) = split_timed(value.map(String::as_str).unwrap_or(""))?;
    keys.verify(REVIEW, &as_strs(&review_fields(id, sealed_at)), seal, now)
}

/// The status the controller can trust: the stored one when its seal
/// verifies (or when there is none yet), otherwise a fresh Pending status,
/// with why the stored one was refused. Status is writable by whoever may
/// write `capabilitygrants/status`; nothing in it counts unless Writ sealed it.
pub fn trusted(stored: &CapabilityGrant, keys: &SealKeys, now: i64) -> (CapabilityGrant, Option<String>) {
    let mut g = stored.clone();
    let Some(st) = stored.status.as_ref() else { return (g, None) };
    let fresh = st.seal.is_none()
        && st.phase == GrantPhase::Pending
        && st.issued_at.is_none()
        && st.expires_at.is_none()
        && st.tokens.is_empty()
        && st.bound_pod_uid.is_none()
        && st.authorised_by.is_none()
        && st.approval_deadline.is_none();
    if fresh {
        return (g, None);
    }
    match verify_status(keys, stored, st, now) {
        Ok(()) => (g, None),
        Err(e) => {
            g.status = Some(CapabilityGrantStatus::default());
            (g, Some(format!("status-tampered: the stored status is not Writ's ({e}); it was repaired")))
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::Duration;
    use crate::api::{ApprovalDecision, Decision, GrantPhase, TokenRecord};
    use crate::policy::testing::{annotate, grant};

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("ts"))
    }

    fn admitted(keys: &SealKeys, now: i64) -> CapabilityGrant {
        let g = grant(
            "ns",
            "g",
            "bot",
            &[("k8s:deployments.get", "k8s:staging/deployments/web")],
            Duration::from_secs(600),
        );
        let g = annotate(annotate(g, REQUESTED_BY_ANNOTATION, "alice"), REQUESTED_GROUPS_ANNOTATION, "b,a");
        let seal = seal_admission(keys, &g, now);
        let mut g = annotate(g, ADMISSION_SEAL_ANNOTATION, &seal);
        g.metadata.creation_timestamp = Some(at(now + 1));
        g.metadata.uid = Some("uid-1".into());
        g
    }

    #[test]
    fn an_admission_seal_holds_the_stamps_and_the_spec_but_not_completion() {
        let keys = SealKeys::generate().expect("keys");
        let g = admitted(&keys, 1_000);
        assert_eq!(verify_admission(&keys, &g, 1_001), Ok(()));
        let mut done = g.clone();
        done.spec.completed = true;
        assert_eq!(verify_admission(&keys, &done, 1_001), Ok(()), "completion keeps the seal");

        let forged = annotate(g.clone(), REQUESTED_BY_ANNOTATION, "mallory");
        assert!(matches!(verify_admission(&keys, &forged, 1_001), Err(NotAdmitted::Admission { .. })));
        let mut wider = g.clone();
        wider.spec.capabilities[0].resource = "k8s:prod/deployments/web".into();
        assert!(matches!(verify_admission(&keys, &wider, 1_001), Err(NotAdmitted::Admission { .. })));
        let mut renamed = g.clone();
        renamed.metadata.name = Some("g2".into());
        assert!(matches!(verify_admission(&keys, &renamed, 1_001), Err(NotAdmitted::Admission { .. })));
        let mut unsealed = g.clone();
        unsealed.metadata.annotations.as_mut().expect("annotations").remove(ADMISSION_SEAL_ANNOTATION);
        let err = verify_admission(&keys, &unsealed, 1_001).expect_err("unsealed");
        assert!(err.to_string().contains("is missing"), "{err}");
        let other = SealKeys::generate().expect("keys");
        assert!(matches!(verify_admission(&other, &g, 1_001), Err(NotAdmitted::Admission { .. })));
    }

    #[test]
    fn a_seal_copied_onto_a_grant_created_later_is_stale() {
        let keys = SealKeys::generate().expect("keys");
        let mut g = admitted(&keys, 1_000);
        g.metadata.creation_timestamp = Some(at(1_000 + ADMISSION_SEAL_WINDOW_SECS + 1));
        assert!(matches!(verify_admission(&keys, &g, 5_000), Err(NotAdmitted::Stale { .. })));
    }

    #[test]
    fn a_generated_name_is_sealed_by_its_prefix() {
        let keys = SealKeys::generate().expect("keys");
        let mut g =
            grant("ns", "", "bot", &[("k8s:deployments.get", "k8s:staging/deployments/web")], Duration::from_secs(600));
        g.metadata.name = None;
        g.metadata.generate_name = Some("task-".into());
        let seal = seal_admission(&keys, &g, 50);
        let mut g = annotate(g, ADMISSION_SEAL_ANNOTATION, &seal);
        g.metadata.name = Some("task-x7k2p".into());
        assert_eq!(verify_admission(&keys, &g, 60), Ok(()));
        g.metadata.name = Some("other".into());
        assert!(verify_admission(&keys, &g, 60).is_err());
    }

    #[test]
    fn an_approval_counts_only_with_its_seal_over_uid_approver_and_decision() {
        let keys = SealKeys::generate().expect("keys");
        let mut g = admitted(&keys, 1_000);
        g.spec.approval = Some(ApprovalDecision { decision: Decision::Approved, reason: None });
        let g = annotate(g, APPROVED_BY_ANNOTATION, "bob");
        let err = verify_grant(&keys, &g, 1_100).expect_err("no approval seal");
        assert!(err.to_string().contains("no approval seal"), "{err}");
        let seal = seal_approval(&keys, &g, 1_100);
        let g = annotate(g, APPROVAL_SEAL_ANNOTATION, &seal);
        assert_eq!(verify_grant(&keys, &g, 1_100), Ok(()));
        assert_eq!(verify_admission(&keys, &g, 1_100), Ok(()), "the approval does not break the admission seal");
        let forged = annotate(g.clone(), APPROVED_BY_ANNOTATION, "mallory");
        assert!(verify_grant(&keys, &forged, 1_100).is_err());
        let mut other_uid = g.clone();
        other_uid.metadata.uid = Some("uid-2".into());
        assert!(verify_grant(&keys, &other_uid, 1_100).is_err());
    }

    #[test]
    fn a_status_seal_covers_phase_window_pod_and_tokens() {
        let keys = SealKeys::generate().expect("keys");
        let g = admitted(&keys, 1_000);
        let mut st = CapabilityGrantStatus {
            phase: GrantPhase::Active,
            issued_at: Some(at(1_010)),
            expires_at: Some(at(1_610)),
            bound_pod_uid: Some("pod-uid".into()),
            tokens: vec![TokenRecord { pod: "bot-0".into(), jti: "j1".into(), expires_at: at(1_610) }],
            ..Default::default()
        };
        st.seal = Some(seal_status(&keys, &g, &st));
        assert_eq!(verify_status(&keys, &g, &st, 1_100), Ok(()));
        let mut later = st.clone();
        later.expires_at = Some(at(90_000));
        assert_eq!(verify_status(&keys, &g, &later, 1_100), Err(SealError::Mismatch));
        let mut revived = st.clone();
        revived.phase = GrantPhase::Pending;
        assert_eq!(verify_status(&keys, &g, &revived, 1_100), Err(SealError::Mismatch));
        let mut injected = st.clone();
        injected.tokens.push(TokenRecord { pod: "victim".into(), jti: "theirs".into(), expires_at: at(1_610) });
        assert_eq!(verify_status(&keys, &g, &injected, 1_100), Err(SealError::Mismatch));
        let mut unsealed = st.clone();
        unsealed.seal = None;
        assert_eq!(verify_status(&keys, &g, &unsealed, 1_100), Err(SealError::Missing));
        // The authority the grant is held to: its policy and approval deadline.
        let mut friendlier = st.clone();
        friendlier.authorised_by = Some("a-friendlier-policy".into());
        assert_eq!(verify_status(&keys, &g, &friendlier, 1_100), Err(SealError::Mismatch));
        let mut waits_longer = st.clone();
        waits_longer.approval_deadline = Some(at(90_000));
        assert_eq!(verify_status(&keys, &g, &waits_longer, 1_100), Err(SealError::Mismatch));
    }
}
