//! Every name Writ puts on the wire besides its types: labels, annotations,
//! the finalizer, field managers, and the names and data keys of the Secrets,
//! ConfigMaps and Lease it keeps. Other tools match on these (RBAC
//! `resourceNames`, GitOps ignore rules, the kubectl plugin), so each is
//! written once, here, and changing one is a breaking change.

// Labels and annotations on users' objects.

/// Label a pod carries to claim an AgentIdentity.
pub const AGENT_LABEL: &str = "writ.dev/agent";
/// Label on credential Secrets naming the pod.
pub const POD_LABEL: &str = "writ.dev/pod";
/// Label that exempts a namespace from Writ's webhooks (set on the
/// operator's own namespace and kube-system, so the operator can always start).
pub const IGNORE_NAMESPACE_LABEL: &str = "writ.dev/webhooks";
/// Prefix of the labels and annotations that are Writ's on a pod.
pub const WRIT_PREFIX: &str = "writ.dev/";
/// The `app.kubernetes.io/managed-by` label and the value Writ gives it on
/// the objects it creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "writ");
/// Annotation naming the pod's credential Secret.
pub const CREDENTIAL_SECRET_ANNOTATION: &str = "writ.dev/credential-secret";
/// Admission stamp: the authenticated creator of a grant.
pub const REQUESTED_BY_ANNOTATION: &str = "writ.dev/requested-by";
/// Admission stamp: the authenticated approver of a grant.
pub const APPROVED_BY_ANNOTATION: &str = "writ.dev/approved-by";
/// Admission stamp: the groups of the authenticated creator (comma-separated).
pub const REQUESTED_GROUPS_ANNOTATION: &str = "writ.dev/requested-by-groups";
/// Admission seal: the mutating webhook's HMAC over the grant's namespace,
/// name, requester stamps and spec, and when it sealed them
/// (`<unix seconds>.<seal>`). The controller activates nothing without it.
pub const ADMISSION_SEAL_ANNOTATION: &str = "writ.dev/admission-seal";
/// Approval seal: the mutating webhook's HMAC over the grant's uid, the
/// approver stamp and the decision (`<unix seconds>.<seal>`).
pub const APPROVAL_SEAL_ANNOTATION: &str = "writ.dev/approval-seal";
/// Admission stamp: who suspended an AgentIdentity (the authenticated user).
pub const SUSPENDED_BY_ANNOTATION: &str = "writ.dev/suspended-by";
/// Admission stamp: when an AgentIdentity was suspended (RFC 3339).
pub const SUSPENDED_AT_ANNOTATION: &str = "writ.dev/suspended-at";
/// Why an AgentIdentity was suspended, in words (set by `writ suspend --reason`).
pub const SUSPEND_REASON_ANNOTATION: &str = "writ.dev/suspend-reason";
/// Set by `writ review` to ask admission to record an access review (the
/// value is only a request id; the webhook replaces it with the stamps below).
pub const REVIEW_REQUEST_ANNOTATION: &str = "writ.dev/review-requested";
/// Admission stamp: who recorded the last access review (the authenticated user).
pub const REVIEWED_BY_ANNOTATION: &str = "writ.dev/reviewed-by";
/// Admission stamp: when the last access review was recorded (RFC 3339).
pub const REVIEWED_AT_ANNOTATION: &str = "writ.dev/reviewed-at";
/// The reviewer's note on the last access review (`writ review --note`).
pub const REVIEW_NOTE_ANNOTATION: &str = "writ.dev/review-note";
/// Seal over the review stamps (`<unix seconds>.<seal>`): a review recorded
/// without Writ's webhook does not count.
pub const REVIEW_SEAL_ANNOTATION: &str = "writ.dev/review-seal";

// What Writ writes with.

/// Finalizer on AgentIdentities and CapabilityGrants: revoke before the object goes.
pub const FINALIZER: &str = "writ.dev/revoke";
/// Field manager of everything the controllers and the webhook registration write.
pub const MANAGER: &str = "writ";

// A pod's credentials.

/// Name of the injected credential volume.
pub const VOLUME_NAME: &str = "writ-credentials";
/// Where the credential Secret is mounted in agent containers.
pub const CREDENTIALS_DIR: &str = "/var/run/secrets/writ.dev/";

/// Data keys of a pod's credential Secret (and so file names in
/// [`CREDENTIALS_DIR`]).
pub mod credential_keys {
    /// Certificate chain (leaf first).
    pub const CERT: &str = "tls.crt";
    /// The pod's private key (PKCS#8 PEM).
    pub const KEY: &str = "tls.key";
    /// The trust bundle.
    pub const CA: &str = "ca.crt";
    /// The SPIFFE ID.
    pub const SPIFFE_ID: &str = "spiffe-id";
    /// SPIFFE Filesystem Delivery §2.1: the PKCS#8 private key, then the chain leaf first
    /// without the root, in one file (one read gets a matching key and certificate).
    pub const SPIFFE_CREDENTIAL_BUNDLE: &str = "credential-bundle.private-key.pem";
    /// SPIFFE Filesystem Delivery §2.2: `<trust-domain>.spiffe-trust-bundle.pem`, the trust
    /// domain's CA certificates.
    pub fn spiffe_trust_bundle(trust_domain: &str) -> String {
        format!("{trust_domain}.spiffe-trust-bundle.pem")
    }
    /// Prefix of capability tokens: `grant.<grant-name>.jwt`.
    pub const GRANT_PREFIX: &str = "grant.";
    /// Suffix of capability tokens.
    pub const GRANT_SUFFIX: &str = ".jwt";
}

// Trust material, in the operator's namespace.

/// Secret holding the generated CA (`tls.crt`, `tls.key`, and `previous.crt`
/// with earlier CA certificates still trusted after a rotation).
pub const CA_SECRET: &str = "writ-ca";
/// Key in the CA Secret with CA certificates kept in the bundle after rotation.
pub const PREVIOUS_CA_KEY: &str = "previous.crt";
/// Key in the CA Secret mapping each previous CA's serial to the unix time
/// after which nothing it signed can still be valid (it leaves the bundle then).
pub const PREVIOUS_CA_RETIRE_KEY: &str = "previous.json";
/// Secret holding the token-signing key set.
pub const SIGNING_SECRET: &str = "writ-signing-keys";
/// Key in the signing Secret holding the current signing key, PKCS#8 PEM.
pub const SIGNING_KEY_KEY: &str = "signing-key.pem";
/// Key in the signing Secret holding the rotation state (previous public keys, issuers), JSON.
pub const KEYSET_KEY: &str = "keyset.json";
/// Secret holding the keys that seal admission stamps and grant status.
pub const SEAL_SECRET: &str = "writ-seal-keys";
/// Key in the seal Secret holding the seal key set (JSON).
pub const SEAL_KEYS_KEY: &str = "seal-keys.json";

// What Writ publishes.

/// ConfigMap with the CA bundle (`ca.crt`), in the operator namespace and
/// every namespace with an AgentIdentity.
pub const TRUST_BUNDLE_CONFIGMAP: &str = "writ-trust-bundle";
/// Data key of the CA bundle in [`TRUST_BUNDLE_CONFIGMAP`].
pub const TRUST_BUNDLE_KEY: &str = "ca.crt";
/// ConfigMap with the JWKS (`jwks.json`) in the operator namespace.
pub const JWKS_CONFIGMAP: &str = "writ-jwks";
/// Data key of the JWKS in [`JWKS_CONFIGMAP`].
pub const JWKS_KEY: &str = "jwks.json";
/// ConfigMap with the SPIFFE bundle (`bundle.spiffe`), beside every trust bundle ConfigMap.
pub const SPIFFE_BUNDLE_CONFIGMAP: &str = "writ-spiffe-bundle";
/// Data key of the SPIFFE bundle in [`SPIFFE_BUNDLE_CONFIGMAP`].
pub const SPIFFE_BUNDLE_KEY: &str = "bundle.spiffe";
/// The ConfigMap holding the revocation list's first part (and the name the
/// others extend: `writ-revocations-1` …).
pub const REVOCATIONS_CONFIGMAP: &str = "writ-revocations";
/// The revocation list's data key, the same in every part.
pub const REVOCATIONS_KEY: &str = "revocations.json";
/// The revocation-list entry that marks a grant as ended for good (its
/// `grant:<uid>` id is no token's): a status rewritten afterwards cannot
/// revive it.
pub fn ended_grant_marker(uid: &str) -> String {
    format!("grant:{uid}")
}

// Coordination.

/// The leader-election Lease.
pub const LEASE_NAME: &str = "writ-leader";
/// The `reportingController` of the Events Writ records.
pub const EVENT_REPORTER: &str = "writ";
/// The name of the webhook configurations (`--webhook-config-name`'s default).
pub const WEBHOOK_CONFIG_NAME: &str = "writ";
