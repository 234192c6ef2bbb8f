//! What the operator keeps of a pod's credential Secret.
//!
//! The leader caches every credential Secret, and a `k8s_openapi` `Secret`
//! holds its data as written: a certificate chain (about 1.4 KB of PEM) and a
//! JWT per grant (about 1 KB each), in a `BTreeMap` whose single node is
//! already 544 bytes, next to another for the labels. The controllers only
//! ever read a few facts out of that data (the leaf certificate's serial,
//! validity, SPIFFE ID and thumbprint; each token's `jti`, expiry, key id and
//! bindings), so [`CredentialSecret`] is the same API object decoded into
//! just those facts (with it, the live heap of a leader holding 4,000 pods,
//! credentials and grants went from 47 to 30 MB). It is served by the
//! same `secrets` endpoint, so it watches, caches and is owned like a
//! `Secret`. Key material never enters it: the private key is only noted as
//! present.
//!
//! A credential Secret lives in a tenant's namespace, and anyone who may
//! write Secrets there can write one that looks like Writ's. So a token or
//! certificate read back from a Secret counts only when Writ issued it for
//! that Secret's pod ([`ReadBackTrust`]): a token signed by one of Writ's
//! keys with Writ's issuer, a `jti` of the shape Writ mints and an expiry
//! no later than the operator's hard maximum from now, naming the pod (name
//! and uid) of the Secret's `writ.dev/pod` label and controller owner; a
//! certificate signed by a Writ CA whose subject is that pod. Anything else
//! is held as undecoded (its key is still removed on revocation, but it
//! never reaches the revocation list or a decision), logged at debug without
//! its contents and counted in `writ_untrusted_total`.
//!
//! The check runs while the Secret is decoded, when the token text is at
//! hand: keeping each token's text to check later would cost a kilobyte per
//! token in the cache. The decoder is called by serde (the watch, `get`), so
//! what it checks against is registered once per process with
//! [`trust_read_back`] (the operator's [`Trust`], which follows key and CA
//! rotation in place); with none registered, nothing read back counts.

use std::sync::{Arc, Mutex, RwLock, Weak};

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use serde::Deserialize;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::{
    api::names::{credential_keys as keys, FINALIZER, POD_LABEL},
    api::AGENT_LABEL,
    pki::{
        cert::{parse_certificates, parse_x509, spiffe_id_of},
        token::{self, Claims, Header, TokenAlgorithm},
        CertificateInfo, JwkSet,
    },
    state::{metrics::Metrics, trust::Trust},
};

/// A credential Secret as Writ reads it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "Secret")]
pub struct CredentialSecret {
    /// Name, namespace, creation and deletion timestamps, and finalizers
    /// other than Writ's; no uid (nothing reads it), no labels, annotations,
    /// owner references or field-ownership records, and, once the cache has
    /// it ([`CredentialSecret::trim`]), the `resourceVersion` only when it is
    /// not a plain number (see [`CredentialSecret::resource_version`] and
    /// [`CredentialSecret::finalizers`]).
    pub metadata: ObjectMeta,
    /// Whether Writ's finalizer is on the Secret (a flag, not a list and a
    /// string per Secret).
    writ_finalizer: bool,
    /// The `resourceVersion` when it is a plain number, as every API server
    /// backed by etcd writes it: a `u64` here instead of a string in the
    /// metadata and another in the cache's key for it.
    version: Option<u64>,
    /// The `writ.dev/pod` label: the pod the credential belongs to.
    pub pod: Option<String>,
    /// The `writ.dev/agent` label: the AgentIdentity of that pod.
    pub agent: Option<String>,
    /// The uid of the Secret's controller owner when it is a Pod named as
    /// the `writ.dev/pod` label says (what Writ writes on the Secrets it
    /// creates): with the label, the pod the Secret belongs to.
    owner_uid: Option<PackedUid>,
    /// Whether the private key is there (what marks a live credential).
    pub has_key: bool,
    /// The leaf certificate of `tls.crt`, if present and parseable.
    leaf: Option<StoredCertificate>,
    /// The capability tokens, `grant.<name>.jwt`, by grant name.
    pub tokens: Vec<StoredToken>,
}

/// A capability token held in a credential Secret: the grant it was minted
/// for (from its data key) and, when it decodes, the claims the controllers
/// decide on. Its six strings (grant, key id, `jti`, thumbprint and two
/// uids) are kept end to end in one allocation: apart, they were six heap
/// blocks and a 152-byte struct per token (about 2.5 MB at 10,000 tokens).
#[derive(Clone, PartialEq)]
pub struct StoredToken {
    /// The grant, then (if decoded) the key id, `jti`, thumbprint, grant uid
    /// and pod uid.
    text: Packed<6>,
    /// `exp`.
    exp: i64,
    /// `nbf`.
    nbf: i64,
    /// Whether the token decoded (else `text` is the grant alone).
    decoded: bool,
    /// Whether its header named a key id.
    has_kid: bool,
}

/// Strings kept end to end in one allocation (one heap block instead of one
/// per string, and 16 bytes plus 4 per string inline instead of 24 each).
#[derive(Clone, PartialEq)]
struct Packed<const N: usize> {
    text: Box<str>,
    /// Where each string ends in `text`.
    ends: [u32; N],
}

impl<const N: usize> Packed<N> {
    fn new(parts: [&str; N]) -> Self {
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u32; N];
        for (end, part) in ends.iter_mut().zip(parts) {
            text.push_str(part);
            // What is packed comes from one Secret: at most 1.5 MB (the API server's limit).
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        Self { text: text.into_boxed_str(), ends }
    }

    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..self.ends[i] as usize).unwrap_or_default()
    }
}

/// The claims of a stored token the controllers decide on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenFacts<'a> {
    /// Header `kid`: the signing key.
    pub kid: Option<&'a str>,
    /// `jti`.
    pub jti: &'a str,
    /// `exp`, unix seconds.
    pub exp: i64,
    /// `nbf`, unix seconds: the grant's activation time when it was minted.
    pub nbf: i64,
    /// `cnf.x5t#S256`: the certificate the token is bound to.
    pub thumbprint: &'a str,
    /// `grant.uid`.
    pub grant_uid: &'a str,
    /// `pod.uid`.
    pub pod_uid: &'a str,
}

impl StoredToken {
    /// The token for grant `grant`, with what it says when it decodes.
    pub fn new(grant: &str, facts: Option<TokenFacts<'_>>) -> Self {
        let parts = match &facts {
            Some(f) => [grant, f.kid.unwrap_or_default(), f.jti, f.thumbprint, f.grant_uid, f.pod_uid],
            None => [grant, "", "", "", "", ""],
        };
        Self {
            text: Packed::new(parts),
            exp: facts.map_or(0, |f| f.exp),
            nbf: facts.map_or(0, |f| f.nbf),
            decoded: facts.is_some(),
            has_kid: facts.is_some_and(|f| f.kid.is_some()),
        }
    }

    /// The grant the token was minted for.
    pub fn grant(&self) -> &str {
        self.text.get(0)
    }

    /// What the token says, `None` if it could not be decoded.
    pub fn facts(&self) -> Option<TokenFacts<'_>> {
        self.decoded.then(|| TokenFacts {
            kid: self.has_kid.then(|| self.text.get(1)),
            jti: self.text.get(2),
            exp: self.exp,
            nbf: self.nbf,
            thumbprint: self.text.get(3),
            grant_uid: self.text.get(4),
            pod_uid: self.text.get(5),
        })
    }
}

/// The leaf certificate of a credential Secret, as the controllers read it
/// (its serial, validity, SPIFFE ID and thumbprint; its strings in one
/// allocation).
#[derive(Clone, PartialEq)]
pub struct StoredCertificate {
    /// Serial, SPIFFE ID, thumbprint.
    text: Packed<3>,
    not_before: i64,
    not_after: i64,
    has_spiffe_id: bool,
}

/// What the controllers read of a stored certificate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CertificateFacts<'a> {
    /// Serial number, lowercase hex.
    pub serial_hex: &'a str,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// The SPIFFE ID, if the certificate has one.
    pub spiffe_id: Option<&'a str>,
    /// base64url SHA-256 of the DER (`x5t#S256`).
    pub thumbprint: &'a str,
}

impl StoredCertificate {
    /// What is kept of `info`.
    pub fn new(info: &CertificateInfo) -> Self {
        Self {
            text: Packed::new([&info.serial_hex, info.spiffe_id.as_deref().unwrap_or_default(), &info.thumbprint]),
            not_before: info.not_before,
            not_after: info.not_after,
            has_spiffe_id: info.spiffe_id.is_some(),
        }
    }

    /// Its facts.
    pub fn facts(&self) -> CertificateFacts<'_> {
        CertificateFacts {
            serial_hex: self.text.get(0),
            not_before: self.not_before,
            not_after: self.not_after,
            spiffe_id: self.has_spiffe_id.then(|| self.text.get(1)),
            thumbprint: self.text.get(2),
        }
    }
}

impl std::fmt::Debug for StoredCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.facts().fmt(f)
    }
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken").field("grant", &self.grant()).field("facts", &self.facts()).finish()
    }
}

impl From<Secret> for CredentialSecret {
    fn from(secret: Secret) -> Self {
        let mut metadata = secret.metadata;
        let mut labels = metadata.labels.take().unwrap_or_default();
        let pod = labels.remove(POD_LABEL);
        let agent = labels.remove(AGENT_LABEL);
        // The owning pod is the `writ.dev/pod` label with the controller
        // owner of that name; the garbage collector, not Writ, reads the
        // rest of the owner reference.
        let owner_uid = metadata
            .owner_references
            .take()
            .into_iter()
            .flatten()
            .find(|o| o.controller == Some(true) && o.kind == "Pod" && o.api_version == "v1")
            .filter(|o| Some(&o.name) == pod.as_ref())
            .map(|o| PackedUid::new(&o.uid));
        let namespace = metadata.namespace.clone().unwrap_or_default();
        let uid = owner_uid.as_ref().map(PackedUid::to_string_form);
        let holder = Holder {
            namespace: &namespace,
            pod: pod.as_deref().unwrap_or_default(),
            pod_uid: uid.as_deref().unwrap_or_default(),
            agent: agent.as_deref().unwrap_or_default(),
        };
        let checks = registered();
        let now = crate::pki::now_unix();
        let secret_name = metadata.name.clone().unwrap_or_default();
        let ignored = |what: &'static str, why: Untrusted| {
            tracing::debug!(namespace = %namespace, secret = %secret_name, what, reason = why.reason(),
                "credential read back from a Secret ignored: not issued by Writ for this Secret's pod");
            if let Some(metrics) = checks.first().and_then(|(_, m)| m.upgrade()) {
                metrics.untrusted(what, why.reason());
            }
        };
        let tokens = stored_tokens_of(&secret.data)
            .map(|(grant, jwt)| match read_back(&checks, |c| c.token(jwt, &holder, now)) {
                Ok((h, c)) => StoredToken::new(
                    grant,
                    Some(TokenFacts {
                        kid: h.kid.as_deref(),
                        jti: &c.jti,
                        exp: c.exp,
                        nbf: c.nbf,
                        thumbprint: &c.cnf.x5t_s256,
                        grant_uid: &c.grant.uid,
                        pod_uid: &c.pod.uid,
                    }),
                ),
                Err(why) => {
                    ignored("token", why);
                    StoredToken::new(grant, None)
                }
            })
            .collect();
        let data = secret.data.unwrap_or_default();
        let leaf = data.get(keys::CERT).and_then(|pem| {
            let pem = String::from_utf8_lossy(&pem.0);
            match read_back(&checks, |c| c.certificate(&pem, &holder, now)) {
                Ok(info) => Some(StoredCertificate::new(&info)),
                Err(why) => {
                    ignored("certificate", why);
                    None
                }
            }
        });
        metadata.annotations = None;
        metadata.managed_fields = None;
        metadata.uid = None;
        let mut finalizers = metadata.finalizers.take().unwrap_or_default();
        let all = finalizers.len();
        finalizers.retain(|f| f != FINALIZER);
        let writ_finalizer = finalizers.len() != all;
        metadata.finalizers = (!finalizers.is_empty()).then_some(finalizers);
        let version =
            metadata.resource_version.as_deref().and_then(|rv| rv.parse::<u64>().ok().filter(|v| v.to_string() == rv));
        Self {
            metadata,
            writ_finalizer,
            version,
            pod,
            agent,
            owner_uid,
            has_key: data.contains_key(keys::KEY),
            leaf,
            tokens,
        }
    }
}

/// `grant.<name>.jwt` entries of a Secret's data: `(grant name, jwt)`.
fn stored_tokens_of(
    data: &Option<std::collections::BTreeMap<String, k8s_openapi::ByteString>>,
) -> impl Iterator<Item = (&str, &str)> {
    data.iter().flatten().filter_map(|(k, v)| {
        let grant = k.strip_prefix(keys::GRANT_PREFIX)?.strip_suffix(keys::GRANT_SUFFIX)?;
        Some((grant, std::str::from_utf8(&v.0).unwrap_or_default()))
    })
}

/// A pod uid as 16 bytes when it is a UUID in the API server's form, else
/// as it was written.
#[derive(Clone, Debug, PartialEq)]
enum PackedUid {
    Uuid([u8; 16]),
    Other(Box<str>),
}

impl PackedUid {
    fn new(uid: &str) -> Self {
        match super::agent_pod::parse_uuid(uid) {
            Some(bytes) => Self::Uuid(bytes),
            None => Self::Other(uid.into()),
        }
    }

    fn to_string_form(&self) -> String {
        match self {
            Self::Uuid(bytes) => super::agent_pod::format_uuid(bytes),
            Self::Other(uid) => uid.to_string(),
        }
    }
}

/// The pod a credential read back from a Secret must belong to: the
/// Secret's namespace, its `writ.dev/pod` label, its controller owner's uid
/// and its `writ.dev/agent` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder<'a> {
    /// The Secret's namespace.
    pub namespace: &'a str,
    /// The pod's name.
    pub pod: &'a str,
    /// The pod's uid.
    pub pod_uid: &'a str,
    /// The AgentIdentity the pod claims.
    pub agent: &'a str,
}

/// Why a token or certificate read back from a Secret does not count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// Not a compact JWS or a PEM certificate Writ can read.
    #[error("malformed")]
    Malformed,
    /// Not signed by a key or CA of Writ's (unknown key, bad signature,
    /// another algorithm, a CA certificate).
    #[error("not signed by Writ")]
    Signature,
    /// Signed, but not with Writ's issuer or trust domain.
    #[error("another issuer")]
    Issuer,
    /// Issued for another pod, namespace or identity than the Secret's.
    #[error("another pod")]
    OtherPod,
    /// A `jti` of another shape than Writ mints.
    #[error("jti not as Writ mints it")]
    Jti,
    /// An expiry beyond what Writ issues (its hard maximum from now).
    #[error("expiry beyond the operator's maximum")]
    Expiry,
    /// The Secret names no pod (no `writ.dev/pod` label with a controller
    /// owner of that name), or nothing to check against is registered.
    #[error("no owner to check against")]
    NoHolder,
}

impl Untrusted {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Signature => "signature",
            Self::Issuer => "issuer",
            Self::OtherPod => "other-pod",
            Self::Jti => "jti",
            Self::Expiry => "expiry",
            Self::NoHolder => "no-holder",
        }
    }
}

/// Skew allowed on the expiry bound: a credential minted by another replica
/// whose clock runs ahead still counts.
const READ_BACK_SKEW_SECS: i64 = 60;

/// What a credential read back from a Secret is checked against: Writ's
/// token keys and CA certificates, its issuer and the hard maximum
/// lifetimes. Pure: the keys and CAs are given.
#[derive(Clone, Debug)]
pub struct ReadBackTrust {
    jwks: JwkSet,
    /// DER of each trusted CA certificate.
    anchors: Vec<Vec<u8>>,
    trust_domain: String,
    /// The issuers Writ's tokens may name: [`crate::state::trust::legacy_issuer`] and those given
    /// with [`ReadBackTrust::with_issuers`].
    issuers: Vec<String>,
    max_token_secs: i64,
    max_certificate_secs: i64,
}

impl ReadBackTrust {
    /// Trusts the CA certificates of `bundle_pem` and the keys of `jwks`, for
    /// credentials of `trust_domain` lasting at most `max_token_secs`
    /// (tokens) and `max_certificate_secs` (certificates) from now.
    pub fn new(
        bundle_pem: &str,
        jwks: JwkSet,
        trust_domain: &str,
        max_token_secs: i64,
        max_certificate_secs: i64,
    ) -> Self {
        Self {
            jwks,
            anchors: parse_certificates(bundle_pem.as_bytes()).unwrap_or_default(),
            trust_domain: trust_domain.to_string(),
            issuers: vec![crate::state::trust::legacy_issuer(trust_domain)],
            max_token_secs,
            max_certificate_secs,
        }
    }

    /// Also accepts tokens naming one of `issuers` (the operator's issuer, and previous ones
    /// while their tokens may live).
    pub fn with_issuers(mut self, issuers: impl IntoIterator<Item = String>) -> Self {
        self.issuers.extend(issuers);
        self
    }

    /// The claims of `jwt` when Writ minted it for `holder` and its bounds
    /// hold at `now`. Expired tokens count (they were Writ's).
    pub fn token(&self, jwt: &str, holder: &Holder<'_>, now: i64) -> Result<(Header, Claims), Untrusted> {
        if holder.pod.is_empty() || holder.pod_uid.is_empty() {
            return Err(Untrusted::NoHolder);
        }
        let parsed = token::parse(jwt.trim()).map_err(|_| Untrusted::Malformed)?;
        let key = parsed
            .header
            .kid
            .as_deref()
            .and_then(|kid| self.jwks.find(kid))
            .and_then(|k| k.verifying_key())
            .ok_or(Untrusted::Signature)?;
        // ES256 or EdDSA, and only with a key of that algorithm.
        if TokenAlgorithm::from_alg(&parsed.header.alg) != Some(key.algorithm())
            || !key.verify(parsed.signing_input.as_bytes(), &parsed.signature)
        {
            return Err(Untrusted::Signature);
        }
        let c = parsed.claims;
        if !self.issuers.contains(&c.iss) {
            return Err(Untrusted::Issuer);
        }
        let spiffe = crate::pki::cert::spiffe_id(&self.trust_domain, holder.namespace, holder.agent);
        if c.pod.name != holder.pod
            || c.pod.uid != holder.pod_uid
            || c.grant.namespace != holder.namespace
            || c.sub != spiffe
        {
            return Err(Untrusted::OtherPod);
        }
        if !is_minted_jti(&c.jti) {
            return Err(Untrusted::Jti);
        }
        if c.exp > now + self.max_token_secs + READ_BACK_SKEW_SECS {
            return Err(Untrusted::Expiry);
        }
        Ok((parsed.header, c))
    }

    /// What the leaf certificate of `pem` says when a Writ CA signed it for
    /// `holder` and its bounds hold at `now`. Expired certificates count.
    pub fn certificate(&self, pem: &str, holder: &Holder<'_>, now: i64) -> Result<CertificateInfo, Untrusted> {
        if holder.pod.is_empty() || holder.pod_uid.is_empty() {
            return Err(Untrusted::NoHolder);
        }
        let ders = parse_certificates(pem.as_bytes()).map_err(|_| Untrusted::Malformed)?;
        let der = ders.first().ok_or(Untrusted::Malformed)?;
        let leaf = parse_x509(der).map_err(|_| Untrusted::Malformed)?;
        if leaf.is_ca() {
            return Err(Untrusted::Signature);
        }
        let signed = self.anchors.iter().any(|anchor| {
            X509Certificate::from_der(anchor).is_ok_and(|(_, ca)| {
                ca.subject().as_raw() == leaf.issuer().as_raw() && leaf.verify_signature(Some(ca.public_key())).is_ok()
            })
        });
        if !signed {
            return Err(Untrusted::Signature);
        }
        let subject = leaf.subject();
        let cn = first_value(subject.iter_common_name());
        let org = first_value(subject.iter_organization());
        let uid = first_value(subject.iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER));
        if cn.as_deref() != Some(holder.pod)
            || org.as_deref() != Some(holder.namespace)
            || uid.as_deref() != Some(holder.pod_uid)
        {
            return Err(Untrusted::OtherPod);
        }
        let prefix = format!("spiffe://{}/ns/{}/", self.trust_domain, holder.namespace);
        if !spiffe_id_of(&leaf).is_some_and(|id| id.starts_with(&prefix)) {
            return Err(Untrusted::Issuer);
        }
        if leaf.validity().not_after.timestamp() > now + self.max_certificate_secs + READ_BACK_SKEW_SECS {
            return Err(Untrusted::Expiry);
        }
        CertificateInfo::from_der(der).map_err(|_| Untrusted::Malformed)
    }
}

/// The first value of a subject attribute, as text.
fn first_value<'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> Option<String> {
    values.next().and_then(|v| v.as_str().ok()).map(str::to_string)
}

/// Whether `jti` has the shape [`token::new_jti`] gives: 128 bits in
/// base64url without padding (22 characters).
pub fn is_minted_jti(jti: &str) -> bool {
    jti.len() == 22 && jti.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The first check that accepts, else why the first one refused
/// ([`Untrusted::NoHolder`] with none registered).
fn read_back<T>(
    checks: &[(Arc<ReadBackTrust>, Weak<Metrics>)],
    check: impl Fn(&ReadBackTrust) -> Result<T, Untrusted>,
) -> Result<T, Untrusted> {
    let mut first = None;
    for (c, _) in checks {
        match check(c) {
            Ok(v) => return Ok(v),
            Err(why) => {
                first.get_or_insert(why);
            }
        }
    }
    Err(first.unwrap_or(Untrusted::NoHolder))
}

/// A check built from trust material: the bundle and key ids it was built
/// from, and the check.
type Built = (String, Vec<String>, Arc<ReadBackTrust>);

/// A registered source of [`ReadBackTrust`].
enum Source {
    /// The operator's trust material (followed through its rotations) and
    /// its bounds, with the last check built from it and the bundle and key
    /// ids it was built from.
    Trust {
        trust: Weak<Trust>,
        trust_domain: String,
        max_token_secs: i64,
        max_certificate_secs: i64,
        built: Mutex<Option<Built>>,
    },
    /// A fixed check (unit tests).
    #[cfg(test)]
    Fixed(Weak<ReadBackTrust>),
}

struct Registered {
    source: Source,
    metrics: Weak<Metrics>,
}

impl Registered {
    fn live(&self) -> bool {
        match &self.source {
            Source::Trust { trust, .. } => trust.strong_count() > 0,
            #[cfg(test)]
            Source::Fixed(check) => check.strong_count() > 0,
        }
    }

    fn check(&self, now: i64) -> Option<Arc<ReadBackTrust>> {
        match &self.source {
            #[cfg(test)]
            Source::Fixed(check) => check.upgrade(),
            Source::Trust { trust, trust_domain, max_token_secs, max_certificate_secs, built } => {
                let trust = trust.upgrade()?;
                let bundle = trust.bundle_pem();
                let jwks = trust.jwks(now);
                let issuers = trust.issuers(now);
                // What the check is built from besides the bundle: the key ids and the issuers.
                let kids: Vec<String> =
                    jwks.keys.iter().map(|k| k.kid.clone()).chain(issuers.iter().map(|i| format!("iss {i}"))).collect();
                let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((b, k, check)) = built.as_ref() {
                    if *b == bundle && *k == kids {
                        return Some(check.clone());
                    }
                }
                let check = Arc::new(
                    ReadBackTrust::new(&bundle, jwks, trust_domain, *max_token_secs, *max_certificate_secs)
                        .with_issuers(issuers),
                );
                *built = Some((bundle, kids, check.clone()));
                Some(check)
            }
        }
    }
}

static REGISTERED: RwLock<Vec<Registered>> = RwLock::new(Vec::new());

fn register(source: Source, metrics: &Arc<Metrics>) {
    let mut all = REGISTERED.write().unwrap_or_else(|e| e.into_inner());
    all.retain(Registered::live);
    all.push(Registered { source, metrics: Arc::downgrade(metrics) });
}

/// Registers what credentials read back from Secrets are checked against
/// in this process: `trust`'s CAs and token keys (as they are at each read,
/// so rotations are followed), tokens lasting at most `max_token_secs` and
/// certificates at most `max_certificate_secs`. Ignored credentials are
/// counted in `metrics`. A registration ends with its `Trust`.
pub fn trust_read_back(
    trust: &Arc<Trust>,
    trust_domain: &str,
    max_token_secs: i64,
    max_certificate_secs: i64,
    metrics: &Arc<Metrics>,
) {
    register(
        Source::Trust {
            trust: Arc::downgrade(trust),
            trust_domain: trust_domain.to_string(),
            max_token_secs,
            max_certificate_secs,
            built: Mutex::new(None),
        },
        metrics,
    );
}

/// Registers a fixed check (for tests); it ends with `check`.
#[cfg(test)]
pub(crate) fn fixed_read_back(check: &Arc<ReadBackTrust>, metrics: &Arc<Metrics>) {
    register(Source::Fixed(Arc::downgrade(check)), metrics);
}

/// The checks of every live registration.
fn registered() -> Vec<(Arc<ReadBackTrust>, Weak<Metrics>)> {
    let all = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
    let now = crate::pki::now_unix();
    all.iter().filter_map(|r| Some((r.check(now)?, r.metrics.clone()))).collect()
}

super::served_as!(CredentialSecret, k8s_openapi::api::core::v1::Secret);

impl CredentialSecret {
    /// The stored certificate of a live credential: `None` without a private
    /// key (a revoked credential keeps its certificate but not its key).
    pub fn certificate(&self) -> Option<CertificateFacts<'_>> {
        self.leaf().filter(|_| self.has_key)
    }

    /// The leaf certificate of `tls.crt`, if present and parseable (live or
    /// not).
    pub fn leaf(&self) -> Option<CertificateFacts<'_>> {
        self.leaf.as_ref().map(StoredCertificate::facts)
    }

    /// The `resourceVersion` the API server gave this version of the
    /// Secret (the same as `ResourceExt::resource_version`, which reads only
    /// the metadata and so must not be used on a `CredentialSecret`).
    pub fn resource_version(&self) -> Option<String> {
        self.version.map(|v| v.to_string()).or_else(|| self.metadata.resource_version.clone())
    }

    /// Drops the metadata's `resourceVersion` when it is kept as a number,
    /// once the watch has read it: applied to every watch event before the
    /// cache stores it. Not before: the watch resumes from each event's
    /// `resourceVersion`, and re-lists everything when one has none.
    pub fn trim(&mut self) {
        if self.version.is_some() {
            self.metadata.resource_version = None;
        }
    }

    /// Whether Writ's finalizer (`writ.dev/revoke`) is on the Secret.
    pub fn has_writ_finalizer(&self) -> bool {
        self.writ_finalizer
    }

    /// Every finalizer on the Secret, Writ's too (`ResourceExt::finalizers`
    /// would miss it: it is kept as a flag).
    pub fn finalizers(&self) -> Vec<String> {
        let others = self.metadata.finalizers.iter().flatten().cloned();
        self.writ_finalizer.then(|| FINALIZER.to_string()).into_iter().chain(others).collect()
    }

    /// The `resourceVersion` as a number, when it is one (`None` for an
    /// opaque one: it cannot be ordered).
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// The token held for grant `grant`, if any.
    pub fn token(&self, grant: &str) -> Option<&StoredToken> {
        self.tokens.iter().find(|t| t.grant() == grant)
    }

    /// The uid of the pod the Secret belongs to: its controller owner, a
    /// Pod named as its `writ.dev/pod` label.
    pub fn owner_uid(&self) -> Option<String> {
        self.owner_uid.as_ref().map(PackedUid::to_string_form)
    }

    /// Whether this is the credential Secret Writ created for the pod
    /// `name` with uid `uid`: its `writ.dev/pod` label and controller owner
    /// are that pod. The only Secret Writ writes a pod's credential into.
    pub fn belongs_to(&self, name: &str, uid: &str) -> bool {
        !uid.is_empty() && self.pod.as_deref() == Some(name) && self.owner_uid().as_deref() == Some(uid)
    }

    /// [`certificate`](Self::certificate) when the Secret belongs to `pod`
    /// ([`belongs_to`](Self::belongs_to)): what a pod's tokens may be bound to.
    pub fn certificate_for(&self, pod: &super::AgentPod) -> Option<CertificateFacts<'_>> {
        let uid = pod.uid().unwrap_or_default();
        self.certificate().filter(|_| self.belongs_to(&kube::ResourceExt::name_any(pod), &uid))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;
    use crate::pki::{
        ca::{CertificateAuthority, CertificateIssuer},
        cert::{IssuedCertificate, KeyAlgorithm, PodCertificateRequest},
    };

    const NOW: i64 = 1_750_000_000;
    const TD: &str = "test.writ.dev";

    /// A CA and a token key registered as Writ's for read-back (kept alive
    /// with the world).
    struct World {
        ca: CertificateAuthority,
        key: token::SigningKey,
        check: Arc<ReadBackTrust>,
        _metrics: Arc<Metrics>,
    }

    fn world() -> World {
        let ca = CertificateAuthority::generate("Writ CA", NOW, 86_400).expect("ca");
        let key = token::SigningKey::generate().expect("signing key");
        let check =
            Arc::new(ReadBackTrust::new(ca.cert_pem(), JwkSet { keys: vec![key.public_jwk()] }, TD, 3600, 86_400));
        let metrics = Arc::new(Metrics::default());
        fixed_read_back(&check, &metrics);
        World { ca, key, check, _metrics: metrics }
    }

    /// A certificate of `ca` for pod `p` (uid `u`) of agent `bot` in `ns`.
    fn issue_by(ca: &CertificateAuthority, key_algorithm: KeyAlgorithm) -> IssuedCertificate {
        ca.issue(&PodCertificateRequest {
            spiffe_id: format!("spiffe://{TD}/ns/ns/agent/bot"),
            namespace: "ns".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
            key_algorithm,
            not_before: NOW,
            ttl_secs: 600,
        })
        .expect("issue")
    }

    fn issue(w: &World, key_algorithm: KeyAlgorithm) -> IssuedCertificate {
        issue_by(&w.ca, key_algorithm)
    }

    /// Claims as Writ mints them for pod `p` of agent `bot` in `ns`.
    fn claims(thumbprint: &str) -> Claims {
        let mut c = token::tests::sample_claims(thumbprint, NOW);
        c.iss = format!("spiffe://{TD}/writ");
        c.sub = format!("spiffe://{TD}/ns/ns/agent/bot");
        c.grant.namespace = "ns".into();
        c.pod = token::PodRef { name: "p".into(), uid: "u".into() };
        c
    }

    const HOLDER: Holder<'static> = Holder { namespace: "ns", pod: "p", pod_uid: "u", agent: "bot" };

    fn secret(data: &[(&str, String)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("writ-cred-1".into()),
                namespace: Some("ns".into()),
                resource_version: Some("7".into()),
                labels: Some(BTreeMap::from([
                    (POD_LABEL.to_string(), "p".to_string()),
                    (AGENT_LABEL.to_string(), "bot".to_string()),
                    ("app.kubernetes.io/managed-by".to_string(), "writ".to_string()),
                ])),
                annotations: Some(BTreeMap::from([("note".to_string(), "x".to_string())])),
                owner_references: Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: "p".into(),
                    uid: "u".into(),
                    controller: Some(true),
                    block_owner_deletion: None,
                }]),
                ..Default::default()
            },
            data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes()))).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_facts_and_drops_the_material() {
        let w = world();
        let issued = issue(&w, KeyAlgorithm::Ed25519);
        let jwt = token::sign(&w.key, &claims(&issued.thumbprint)).expect("sign");
        let s = CredentialSecret::from(secret(&[
            (keys::CERT, issued.chain_pem.clone()),
            (keys::KEY, issued.key_pem.clone()),
            ("grant.g1.jwt", jwt.clone()),
            ("grant.bad.jwt", "not a jwt".into()),
        ]));
        assert_eq!((s.pod.as_deref(), s.agent.as_deref()), (Some("p"), Some("bot")));
        assert!(s.metadata.labels.is_none() && s.metadata.annotations.is_none());
        assert_eq!(s.owner_uid().as_deref(), Some("u"));
        assert!(s.belongs_to("p", "u") && !s.belongs_to("p", "other") && !s.belongs_to("q", "u"));
        assert_eq!((s.resource_version().as_deref(), s.version()), (Some("7"), Some(7)));
        let wire = kube::ResourceExt::resource_version(&s);
        assert_eq!(wire.as_deref(), Some("7"), "the watch reads it from the decoded object");
        let mut cached = s.clone();
        cached.trim();
        assert_eq!((cached.resource_version().as_deref(), cached.version()), (Some("7"), Some(7)));
        assert!(cached.metadata.resource_version.is_none() && cached.metadata.uid.is_none(), "kept once, as a number");
        let cert = s.certificate().expect("a live certificate");
        let info = CertificateInfo::from_pem(&issued.chain_pem).expect("leaf");
        assert_eq!(
            (cert.serial_hex, cert.not_before, cert.not_after, cert.spiffe_id, cert.thumbprint),
            (
                info.serial_hex.as_str(),
                info.not_before,
                info.not_after,
                info.spiffe_id.as_deref(),
                info.thumbprint.as_str()
            )
        );
        assert_eq!(cert.thumbprint, issued.thumbprint);
        let facts = s.token("g1").and_then(StoredToken::facts).expect("decoded token");
        let (header, claims) = token::decode_unverified(&jwt).expect("sample decodes");
        assert_eq!(facts.jti, claims.jti);
        assert_eq!((facts.exp, facts.nbf), (claims.exp, claims.nbf));
        assert_eq!(facts.kid, header.kid.as_deref());
        assert_eq!(facts.thumbprint, issued.thumbprint);
        assert_eq!((facts.grant_uid, facts.pod_uid), (claims.grant.uid.as_str(), claims.pod.uid.as_str()));
        // An undecodable token is still held (and so still removed on revocation).
        assert_eq!(s.token("bad").map(|t| (t.grant(), t.facts().is_none())), Some(("bad", true)));
        // Nothing of the key or the raw token is kept.
        let kept = format!("{s:?}");
        assert!(!kept.contains("PRIVATE KEY") && !kept.contains(&jwt), "{kept}");
    }

    #[test]
    fn a_stored_token_gives_back_each_string_as_it_was() {
        let facts = TokenFacts {
            kid: Some("k-1"),
            jti: "j\u{e9}",
            exp: 42,
            nbf: 7,
            thumbprint: "",
            grant_uid: "g-uid",
            pod_uid: "p",
        };
        let t = StoredToken::new("grant-a", Some(facts));
        assert_eq!((t.grant(), t.facts()), ("grant-a", Some(facts)));
        let no_kid = TokenFacts { kid: None, ..facts };
        assert_eq!(StoredToken::new("g", Some(no_kid)).facts(), Some(no_kid));
        let empty_kid = TokenFacts { kid: Some(""), ..facts };
        assert_eq!(
            StoredToken::new("g", Some(empty_kid)).facts(),
            Some(empty_kid),
            "an empty kid is not an absent one"
        );
        let undecoded = StoredToken::new("g", None);
        assert_eq!((undecoded.grant(), undecoded.facts()), ("g", None));
    }

    #[test]
    fn writs_finalizer_is_a_flag_and_the_others_stay() {
        for (on, expected) in [
            (vec![], vec![]),
            (vec![FINALIZER], vec![FINALIZER]),
            (vec!["other/f", FINALIZER], vec![FINALIZER, "other/f"]),
            (vec!["other/f"], vec!["other/f"]),
        ] {
            let mut s = secret(&[]);
            s.metadata.finalizers = Some(on.iter().map(|f| f.to_string()).collect());
            let cached = CredentialSecret::from(s);
            assert_eq!(cached.finalizers(), expected, "{on:?}");
            assert_eq!(cached.has_writ_finalizer(), on.contains(&FINALIZER), "{on:?}");
            assert!(!cached.metadata.finalizers.iter().flatten().any(|f| f == FINALIZER), "kept once, as the flag");
        }
    }

    #[test]
    fn an_opaque_resource_version_is_kept_as_it_is() {
        for (rv, number) in [("007", None), ("abc", None), ("18446744073709551616", None), ("42", Some(42))] {
            let mut s = secret(&[]);
            s.metadata.resource_version = Some(rv.into());
            let mut cached = CredentialSecret::from(s);
            cached.trim();
            assert_eq!((cached.resource_version().as_deref(), cached.version()), (Some(rv), number), "{rv}");
        }
    }

    #[test]
    fn a_certificate_without_its_key_is_not_a_live_credential() {
        let w = world();
        let issued = issue(&w, KeyAlgorithm::EcdsaP256);
        let s = CredentialSecret::from(secret(&[(keys::CERT, issued.chain_pem)]));
        assert!(s.leaf().is_some() && s.certificate().is_none());
        let empty = CredentialSecret::from(secret(&[]));
        assert!(empty.leaf().is_none() && empty.tokens.is_empty() && !empty.has_key);
    }

    #[test]
    fn it_is_the_secrets_resource() {
        use kube::Resource as _;
        assert_eq!(CredentialSecret::url_path(&(), Some("ci")), Secret::url_path(&(), Some("ci")));
        assert_eq!(
            (CredentialSecret::kind(&()), CredentialSecret::api_version(&())),
            (Secret::kind(&()), Secret::api_version(&()))
        );
    }

    #[test]
    fn decodes_from_the_watch_as_a_secret_does() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "ns", "labels": {"writ.dev/pod": "p"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u", "controller": true}]},
            "data": {"tls.key": "eA=="}
        });
        let s: CredentialSecret = serde_json::from_value(json).expect("decodes");
        assert_eq!(s.pod.as_deref(), Some("p"));
        assert!(s.has_key && s.leaf().is_none());
        assert!(s.metadata.owner_references.is_none(), "the owner is the pod label");
    }

    #[test]
    fn a_token_counts_only_when_writ_signed_it_for_the_secrets_pod_within_bounds() {
        let w = world();
        let issued = issue(&w, KeyAlgorithm::EcdsaP256);
        let good = claims(&issued.thumbprint);
        let now = NOW + 10;
        let signed = |c: &Claims| token::sign(&w.key, c).expect("sign");
        assert!(w.check.token(&signed(&good), &HOLDER, now).is_ok());
        let other_key = token::SigningKey::generate().expect("key");
        let unsigned = {
            let jwt = signed(&good);
            let (head, _) = jwt.rsplit_once('.').expect("three parts");
            format!("{head}.")
        };
        let mut huge_jti = good.clone();
        huge_jti.jti = "x".repeat(47_000);
        let mut far = good.clone();
        far.exp = now + 10 * 365 * 86_400;
        let mut other_pod = good.clone();
        other_pod.pod.uid = "victim-uid".into();
        let mut other_ns = good.clone();
        other_ns.grant.namespace = "elsewhere".into();
        let mut other_iss = good.clone();
        other_iss.iss = "spiffe://evil.example/writ".into();
        for (what, jwt, why) in [
            ("another key", token::sign(&other_key, &good).expect("sign"), Untrusted::Signature),
            ("no signature", unsigned, Untrusted::Signature),
            ("not a token", "grant-me-everything".to_string(), Untrusted::Malformed),
            ("a 47 kB jti", signed(&huge_jti), Untrusted::Jti),
            ("an expiry ten years on", signed(&far), Untrusted::Expiry),
            ("another pod's uid", signed(&other_pod), Untrusted::OtherPod),
            ("another namespace", signed(&other_ns), Untrusted::OtherPod),
            ("another issuer", signed(&other_iss), Untrusted::Issuer),
        ] {
            assert_eq!(w.check.token(&jwt, &HOLDER, now).map(|_| ()), Err(why), "{what}");
        }
        // The operator's configured issuer counts once given; an EdDSA key works as an ES256 one does.
        let mut https_iss = good.clone();
        https_iss.iss = "https://writ-webhook.writ-system.svc".into();
        assert_eq!(w.check.token(&signed(&https_iss), &HOLDER, now).map(|_| ()), Err(Untrusted::Issuer));
        let ed = token::SigningKey::generate_for(TokenAlgorithm::EdDsa).expect("key");
        let both = ReadBackTrust::new(
            w.ca.cert_pem(),
            JwkSet { keys: vec![w.key.public_jwk(), ed.public_jwk()] },
            TD,
            3600,
            86_400,
        )
        .with_issuers([https_iss.iss.clone()]);
        assert!(both.token(&signed(&https_iss), &HOLDER, now).is_ok());
        assert!(both.token(&token::sign(&ed, &good).expect("sign"), &HOLDER, now).is_ok());
        let unowned = Holder { pod_uid: "", ..HOLDER };
        assert_eq!(w.check.token(&signed(&good), &unowned, now).map(|_| ()), Err(Untrusted::NoHolder));
        assert!(is_minted_jti(&token::new_jti().expect("jti")) && !is_minted_jti("short"));
    }

    #[test]
    fn a_certificate_counts_only_when_a_writ_ca_signed_it_for_the_secrets_pod() {
        let w = world();
        let issued = issue(&w, KeyAlgorithm::EcdsaP256);
        let now = NOW + 10;
        let info = w.check.certificate(&issued.chain_pem, &HOLDER, now).expect("Writ's, for this pod");
        assert_eq!(info.serial_hex, issued.serial_hex);
        let other_ca = CertificateAuthority::generate("Writ CA", NOW, 86_400).expect("ca");
        let forged = issue_by(&other_ca, KeyAlgorithm::EcdsaP256);
        assert_eq!(w.check.certificate(&forged.chain_pem, &HOLDER, now).map(|_| ()), Err(Untrusted::Signature));
        assert_eq!(
            w.check.certificate(w.ca.cert_pem(), &HOLDER, now).map(|_| ()),
            Err(Untrusted::Signature),
            "the CA itself is no pod's certificate"
        );
        for holder in [
            Holder { pod: "victim", ..HOLDER },
            Holder { pod_uid: "victim-uid", ..HOLDER },
            Holder { namespace: "elsewhere", ..HOLDER },
        ] {
            assert_eq!(w.check.certificate(&issued.chain_pem, &holder, now).map(|_| ()), Err(Untrusted::OtherPod));
        }
        let strict = ReadBackTrust::new(w.ca.cert_pem(), JwkSet::default(), TD, 3600, 60);
        assert_eq!(
            strict.certificate(&issued.chain_pem, &HOLDER, NOW - 3600).map(|_| ()),
            Err(Untrusted::Expiry),
            "lasting beyond the maximum from now"
        );
        assert_eq!(w.check.certificate("junk", &HOLDER, now).map(|_| ()), Err(Untrusted::Malformed));
    }

    #[test]
    fn a_forged_secret_yields_nothing_to_revoke() {
        let _w = world();
        let stranger = token::SigningKey::generate().expect("key");
        let other_ca = CertificateAuthority::generate("Writ CA", NOW, 86_400).expect("ca");
        let forged_cert = issue_by(&other_ca, KeyAlgorithm::EcdsaP256);
        let mut c = claims(&forged_cert.thumbprint);
        c.jti = "j".repeat(40_000);
        c.exp = i64::MAX / 2;
        let s = CredentialSecret::from(secret(&[
            (keys::CERT, forged_cert.chain_pem.clone()),
            (keys::KEY, forged_cert.key_pem.clone()),
            ("grant.a.jwt", token::sign(&stranger, &c).expect("sign")),
            ("grant.b.jwt", "eyJhbGciOiJub25lIn0.eyJqdGkiOiJ4In0.".into()),
        ]));
        assert!(s.certificate().is_none() && s.leaf().is_none(), "another CA's certificate is not Writ's");
        assert_eq!(s.tokens.len(), 2, "still held, so still removed on revocation");
        assert!(s.tokens.iter().all(|t| t.facts().is_none()), "nothing of theirs reaches the revocation list");
    }

    #[test]
    fn a_secret_without_a_pod_owner_belongs_to_no_pod() {
        let w = world();
        let issued = issue(&w, KeyAlgorithm::EcdsaP256);
        let mut raw = secret(&[(keys::CERT, issued.chain_pem.clone()), (keys::KEY, issued.key_pem.clone())]);
        raw.metadata.owner_references = None;
        let s = CredentialSecret::from(raw);
        assert!(!s.belongs_to("p", "u") && s.owner_uid().is_none());
        assert!(s.certificate().is_none(), "a credential counts only in its pod's Secret");
    }
}
