//! Capability tokens: signing keys (ES256 or EdDSA), the claims a token carries, and compact JWS.
//!
//! A token is a JWT (RFC 7519) and a JWT-SVID (SPIFFE JWT-SVID standard): header
//! `{"alg":"ES256","typ":"JWT","kid":"<RFC 7638 thumbprint>"}` (ES256, RFC 7518 §3.4, by default;
//! `EdDSA`/Ed25519, RFC 8037, as an option), `sub` the agent's SPIFFE ID, `aud`, `exp`, and Writ's
//! own claims besides. It is bound to one pod's certificate through `cnf.x5t#S256` (RFC 8705), so
//! it is useless without that pod's private key. Verification lives in [`crate::verify`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Deserializer, Serialize};

use crate::pki::{b64url, b64url_decode, b64url_into, random_bytes, Jwk, PkiError};

/// JWS `alg` of Ed25519 signatures (RFC 8037).
pub const ALG_EDDSA: &str = "EdDSA";
/// JWS `alg` of ECDSA P-256 SHA-256 signatures (RFC 7518 §3.4).
pub const ALG_ES256: &str = "ES256";

/// Longest token accepted by [`decode_unverified`] and the verifier, in bytes. Real tokens are a
/// few kilobytes at most; the bound keeps hostile input cheap to reject.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

const PKCS8_PEM_TAG: &str = "PRIVATE KEY";

/// The algorithm of a token-signing key.
///
/// ES256 is the default: the SPIFFE JWT-SVID standard allows only RS*, ES* and PS*, so every
/// JWT-SVID validator accepts it. EdDSA (Ed25519) is smaller and faster to sign, for verifiers
/// that accept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TokenAlgorithm {
    /// ECDSA on P-256 with SHA-256, `alg` `ES256`.
    #[default]
    Es256,
    /// Ed25519, `alg` `EdDSA`.
    EdDsa,
}

impl TokenAlgorithm {
    /// The JWS `alg` value: `ES256` or `EdDSA`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenAlgorithm::Es256 => ALG_ES256,
            TokenAlgorithm::EdDsa => ALG_EDDSA,
        }
    }

    /// The algorithm named by a JWS `alg` value, if Writ signs with it.
    pub fn from_alg(alg: &str) -> Option<Self> {
        match alg {
            ALG_ES256 => Some(TokenAlgorithm::Es256),
            ALG_EDDSA => Some(TokenAlgorithm::EdDsa),
            _ => None,
        }
    }
}

impl fmt::Display for TokenAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TokenAlgorithm {
    type Err = PkiError;

    /// `ES256` or `EdDSA` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "es256" => Ok(TokenAlgorithm::Es256),
            "eddsa" | "ed25519" => Ok(TokenAlgorithm::EdDsa),
            _ => Err(PkiError::Key(format!("token algorithm {s:?}: must be ES256 or EdDSA"))),
        }
    }
}

/// The private half of a signing key.
enum Pair {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
}

/// A token-signing key: ECDSA P-256 (ES256) or Ed25519 (EdDSA).
///
/// Cloning shares the key. `Debug` shows only the algorithm and `kid`.
#[derive(Clone)]
pub struct SigningKey {
    pair: Arc<Pair>,
    pkcs8: Arc<Vec<u8>>,
    kid: String,
    /// The public key as published.
    jwk: Arc<Jwk>,
    /// `base64url` of this key's JOSE header, the same for every token it signs.
    encoded_header: Arc<str>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.algorithm().as_str())
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    /// Generates a new random key of the default algorithm (ES256).
    pub fn generate() -> Result<Self, PkiError> {
        Self::generate_for(TokenAlgorithm::default())
    }

    /// Generates a new random key of `algorithm`.
    pub fn generate_for(algorithm: TokenAlgorithm) -> Result<Self, PkiError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        match algorithm {
            TokenAlgorithm::EdDsa => {
                let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| PkiError::Random)?;
                Self::from_pkcs8_der(doc.as_ref())
            }
            TokenAlgorithm::Es256 => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| PkiError::Random)?;
                Self::from_pkcs8_der(doc.as_ref())
            }
        }
    }

    /// Loads a key from unencrypted PKCS#8 DER: Ed25519 (v2 with the public key, as ring and
    /// aws-lc write it, or v1 as OpenSSL does) or ECDSA P-256.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, PkiError> {
        let pair = match Ed25519KeyPair::from_pkcs8(der).or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)) {
            Ok(pair) => Pair::Ed25519(pair),
            Err(_) => Pair::P256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|e| PkiError::Key(format!("not an Ed25519 or ECDSA P-256 PKCS#8 key: {e}")))?,
            ),
        };
        let (jwk, alg) = match &pair {
            Pair::Ed25519(p) => (Jwk::ed25519(p.public_key().as_ref()), ALG_EDDSA),
            Pair::P256(p) => (
                Jwk::p256(p.public_key().as_ref())
                    .ok_or_else(|| PkiError::Key("P-256 public key is not an uncompressed point".into()))?,
                ALG_ES256,
            ),
        };
        let header = Header { alg: alg.into(), typ: Some("JWT".into()), kid: Some(jwk.kid.clone()) };
        let encoded_header = b64url(&serde_json::to_vec(&header)?).into();
        Ok(SigningKey {
            pair: Arc::new(pair),
            pkcs8: Arc::new(der.to_vec()),
            kid: jwk.kid.clone(),
            jwk: Arc::new(jwk),
            encoded_header,
        })
    }

    /// Loads a key from PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem_str: &str) -> Result<Self, PkiError> {
        let block = pem::parse(pem_str).map_err(|e| PkiError::Key(format!("reading PEM: {e}")))?;
        if block.tag() != PKCS8_PEM_TAG {
            return Err(PkiError::Key(format!("expected a {PKCS8_PEM_TAG} PEM block, got {}", block.tag())));
        }
        Self::from_pkcs8_der(block.contents())
    }

    /// The key as PKCS#8 PEM, for storing in a Secret. Secret: never log it.
    pub fn to_pkcs8_pem(&self) -> String {
        crate::pki::pem_lf(&pem::Pem::new(PKCS8_PEM_TAG, self.pkcs8.as_slice()))
    }

    /// The key ID: the RFC 7638 JWK thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signature algorithm of this key.
    pub fn algorithm(&self) -> TokenAlgorithm {
        match *self.pair {
            Pair::Ed25519(_) => TokenAlgorithm::EdDsa,
            Pair::P256(_) => TokenAlgorithm::Es256,
        }
    }

    /// The public key: 32 bytes for Ed25519, the 65-byte uncompressed point for P-256.
    pub fn public_key_bytes(&self) -> &[u8] {
        match &*self.pair {
            Pair::Ed25519(p) => p.public_key().as_ref(),
            Pair::P256(p) => p.public_key().as_ref(),
        }
    }

    /// The public key as a JWK (what the JWKS publishes).
    pub fn public_jwk(&self) -> Jwk {
        (*self.jwk).clone()
    }

    /// Signs raw bytes (a JWS signing input) into a JWS signature (64 bytes either way: Ed25519,
    /// or ECDSA `r || s` as RFC 7518 §3.4 requires); exposed for benchmarks and other JOSE uses.
    pub fn sign_bytes(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        match &*self.pair {
            Pair::Ed25519(p) => Ok(p.sign(message).as_ref().to_vec()),
            Pair::P256(p) => Ok(p
                .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                .map_err(|_| PkiError::Key("ECDSA signing failed".into()))?
                .as_ref()
                .to_vec()),
        }
    }
}

/// The JOSE header of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Signature algorithm: `ES256` or `EdDSA` for tokens Writ signs.
    pub alg: String,
    /// Media type; `JWT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    /// Key ID of the signing key (RFC 7638 thumbprint); absent only in foreign tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// One granted capability: an exact action on an exact resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capability {
    /// `<service>:<verb>`, e.g. `k8s:deployments.patch`.
    pub action: String,
    /// `<scheme>:<path>`, e.g. `k8s:staging/deployments/web`.
    pub resource: String,
}

/// The task a grant was made for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Task identifier, e.g. a ticket or PR number.
    pub id: String,
    /// Free-text intent, shown to approvers and auditors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
}

/// The CapabilityGrant a token was minted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRef {
    /// Namespace of the grant.
    pub namespace: String,
    /// Name of the grant.
    pub name: String,
    /// UID of the grant (distinguishes a re-created grant of the same name).
    pub uid: String,
}

/// The pod a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
}

/// Proof-of-possession confirmation (RFC 7800 `cnf`), bound to a certificate (RFC 8705).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// base64url SHA-256 thumbprint of the pod certificate's DER.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
    /// Per-call tokens issued against a DPoP proof (RFC 9449 §6): the RFC 7638 thumbprint of the
    /// proof's key, the pod's own key, so the token keeps a binding where a gateway terminates TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
}

/// One link of a delegation chain (RFC 8693 `act`): who acted, and on whose behalf they acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The acting party (a user, or an agent's SPIFFE ID).
    pub sub: String,
    /// The party before it in the chain, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

/// The claims of a capability token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer (the operator's issuer URL or name).
    pub iss: String,
    /// Subject: the agent's SPIFFE ID; must equal the URI SAN of the presented certificate.
    pub sub: String,
    /// Audiences: the resource servers the token is for. A single string is accepted on input.
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Not valid before, unix seconds.
    pub nbf: i64,
    /// Expiry, unix seconds (never after the grant's expiry).
    pub exp: i64,
    /// Unique token ID, used for revocation.
    pub jti: String,
    /// The approved capabilities.
    pub cap: Vec<Capability>,
    /// The task the grant is for.
    pub task: Task,
    /// The grant the token was minted for.
    pub grant: GrantRef,
    /// The pod the token is bound to.
    pub pod: PodRef,
    /// Certificate binding.
    pub cnf: Confirmation,
    /// Delegation chain, most recent actor first (RFC 8693).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// Who requested the grant (authenticated user from admission).
    pub req: String,
    /// Who approved the grant, when approval was required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apr: Option<String>,
    /// Per-call tokens only (`POST /token`): the id of the call they were issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    /// Per-call tokens only: the `jti` of the grant token they were exchanged for. A verifier
    /// refuses the token when either its `jti` or its `gjti` is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gjti: Option<String>,
}

impl Claims {
    /// Whether `cap` contains exactly this action on exactly this resource.
    pub fn grants(&self, action: &str, resource: &str) -> bool {
        self.cap.iter().any(|c| c.action == action && c.resource == resource)
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Signs `claims` with `key` into a compact JWS (`header.payload.signature`).
pub fn sign(key: &SigningKey, claims: &Claims) -> Result<String, PkiError> {
    let mut payload = Vec::with_capacity(1024);
    serde_json::to_writer(&mut payload, claims)?;
    // header "." payload "." signature, each base64url without padding; one allocation.
    let header = &*key.encoded_header;
    let mut token = String::with_capacity(header.len() + 1 + b64url_len(payload.len()) + 1 + b64url_len(64));
    token.push_str(header);
    token.push('.');
    b64url_into(&payload, &mut token);
    let signature = key.sign_bytes(token.as_bytes())?;
    token.push('.');
    b64url_into(&signature, &mut token);
    Ok(token)
}

/// Length of `n` bytes in base64url without padding.
const fn b64url_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// A compact JWS split and decoded, signature not yet checked.
pub(crate) struct ParsedToken<'a> {
    pub(crate) header: Header,
    pub(crate) claims: Claims,
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub(crate) signing_input: &'a str,
    pub(crate) signature: Vec<u8>,
}

/// Splits and decodes a compact JWS without checking the signature.
pub(crate) fn parse(token: &str) -> Result<ParsedToken<'_>, PkiError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(PkiError::Token(format!("longer than {MAX_TOKEN_LEN} bytes")));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(PkiError::Token("expected three '.'-separated parts".into()));
    };
    let decode = |part: &str, what: &str| {
        b64url_decode(part).map_err(|e| PkiError::Token(format!("{what} is not base64url: {e}")))
    };
    let header: Header = serde_json::from_slice(&decode(h, "header")?)
        .map_err(|e| PkiError::Token(format!("header is not a JOSE header: {e}")))?;
    let claims: Claims = serde_json::from_slice(&decode(p, "payload")?)
        .map_err(|e| PkiError::Token(format!("payload is not Writ claims: {e}")))?;
    let signature = decode(s, "signature")?;
    let signing_input = &token[..h.len() + 1 + p.len()];
    Ok(ParsedToken { header, claims, signing_input, signature })
}

/// Decodes a token's header and claims **without verifying anything** (for `writ inspect`).
///
/// Never use the result for an access decision: use [`crate::verify::Verifier`].
pub fn decode_unverified(token: &str) -> Result<(Header, Claims), PkiError> {
    let parsed = parse(token.trim())?;
    Ok((parsed.header, parsed.claims))
}

/// A new token ID: 128 random bits, base64url (22 characters).
pub fn new_jti() -> Result<String, PkiError> {
    Ok(b64url(&random_bytes::<16>()?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Claims as the controller would mint them, for tests across the crate.
    pub(crate) fn sample_claims(thumbprint: &str, now: i64) -> Claims {
        Claims {
            iss: "https://writ.writ-system.svc".into(),
            sub: "spiffe://cluster.local/ns/ci/agent/release-bot".into(),
            aud: vec!["deploy-api".into()],
            iat: now,
            nbf: now,
            exp: now + 900,
            jti: new_jti().expect("jti"),
            cap: vec![Capability {
                action: "k8s:deployments.patch".into(),
                resource: "k8s:staging/deployments/web".into(),
            }],
            task: Task { id: "PR-1234".into(), intent: Some("roll out web v2".into()) },
            grant: GrantRef { namespace: "ci".into(), name: "deploy-web-1234".into(), uid: "grant-uid".into() },
            pod: PodRef { name: "release-bot-7d9f-abcde".into(), uid: "pod-uid".into() },
            cnf: Confirmation { x5t_s256: thumbprint.into(), jkt: None },
            act: Some(Actor {
                sub: "spiffe://cluster.local/ns/ci/agent/planner".into(),
                act: Some(Box::new(Actor { sub: "alice@example.com".into(), act: None })),
            }),
            req: "alice@example.com".into(),
            apr: None,
            txn: None,
            gjti: None,
        }
    }

    #[test]
    fn token_round_trips_through_sign_and_decode() {
        // ES256 by default; EdDSA as the option. The signature verifies with aws-lc directly.
        for (key, alg) in [
            (SigningKey::generate().expect("key"), "ES256"),
            (SigningKey::generate_for(TokenAlgorithm::EdDsa).expect("key"), "EdDSA"),
        ] {
            let verification: &'static dyn aws_lc_rs::signature::VerificationAlgorithm = match key.algorithm() {
                TokenAlgorithm::Es256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                TokenAlgorithm::EdDsa => &aws_lc_rs::signature::ED25519,
            };
            let claims = sample_claims("thumb", 1_750_000_000);
            let token = sign(&key, &claims).expect("sign");
            assert_eq!(token.split('.').count(), 3);
            let (header, decoded) = decode_unverified(&token).expect("decode");
            assert_eq!(header, Header { alg: alg.into(), typ: Some("JWT".into()), kid: Some(key.kid().into()) });
            assert_eq!(key.algorithm().as_str(), alg);
            assert_eq!(decoded, claims);
            let parsed = parse(&token).expect("parse");
            assert_eq!(parsed.signature.len(), 64, "JWS signatures are 64 bytes for both (ES256 is r || s)");
            let public = aws_lc_rs::signature::UnparsedPublicKey::new(verification, key.public_key_bytes());
            public.verify(parsed.signing_input.as_bytes(), &parsed.signature).expect("signature verifies");
        }
    }

    #[test]
    fn token_algorithms_parse_from_their_jws_names() {
        assert_eq!("ES256".parse::<TokenAlgorithm>().ok(), Some(TokenAlgorithm::Es256));
        assert_eq!("EdDSA".parse::<TokenAlgorithm>().ok(), Some(TokenAlgorithm::EdDsa));
        assert_eq!(TokenAlgorithm::default(), TokenAlgorithm::Es256);
        let err = "HS256".parse::<TokenAlgorithm>().expect_err("refused");
        assert!(err.to_string().contains("must be ES256 or EdDSA"), "{err}");
        assert_eq!(TokenAlgorithm::from_alg("none"), None);
        assert_eq!(TokenAlgorithm::EdDsa.to_string(), "EdDSA");
    }

    #[test]
    fn claims_serialise_with_the_documented_names() {
        let mut claims = sample_claims("thumb", 100);
        let json = serde_json::to_value(&claims).expect("json");
        assert_eq!(json["cnf"]["x5t#S256"], "thumb");
        assert_eq!(json["act"]["act"]["sub"], "alice@example.com");
        assert!(json["act"]["act"].get("act").is_none(), "empty act is skipped");
        assert!(json.get("apr").is_none(), "absent approver is skipped");
        assert_eq!(json["task"]["intent"], "roll out web v2");
        claims.task.intent = None;
        claims.act = None;
        claims.apr = Some("bob@example.com".into());
        let json = serde_json::to_value(&claims).expect("json");
        assert!(json["task"].get("intent").is_none());
        assert!(json.get("act").is_none());
        assert_eq!(json["apr"], "bob@example.com");
        let keys: Vec<&str> = json.as_object().expect("object").keys().map(String::as_str).collect();
        for k in ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "cap", "task", "grant", "pod", "cnf", "req", "apr"] {
            assert!(keys.contains(&k), "{k} missing");
        }
    }

    #[test]
    fn a_single_string_audience_is_accepted() {
        let mut json = serde_json::to_value(sample_claims("t", 1)).expect("json");
        json["aud"] = serde_json::Value::String("deploy-api".into());
        let claims: Claims = serde_json::from_value(json).expect("claims");
        assert_eq!(claims.aud, vec!["deploy-api".to_owned()]);
    }

    #[test]
    fn signing_key_round_trips_through_pkcs8_pem() {
        for alg in [TokenAlgorithm::Es256, TokenAlgorithm::EdDsa] {
            let key = SigningKey::generate_for(alg).expect("key");
            let pem = key.to_pkcs8_pem();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            let back = SigningKey::from_pkcs8_pem(&pem).expect("load");
            assert_eq!(back.kid(), key.kid());
            assert_eq!(back.algorithm(), alg);
            assert_eq!(back.public_key_bytes(), key.public_key_bytes());
        }
        assert!(SigningKey::from_pkcs8_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
        assert!(SigningKey::from_pkcs8_der(b"junk").is_err());
    }

    #[test]
    fn openssl_style_pkcs8_v1_keys_load() {
        // RFC 8410 §10.3 example private key (PKCS#8 v1, no public key), as `openssl genpkey` writes.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let key = SigningKey::from_pkcs8_pem(pem).expect("v1 key");
        assert_eq!(key.public_key_bytes().len(), 32);
        // RFC 8410 §10.1 public key for that private key.
        assert_eq!(b64url(key.public_key_bytes()), "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE");
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint_of_the_public_jwk() {
        let key = SigningKey::generate().expect("key");
        let jwk = key.public_jwk();
        assert_eq!((jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str()), ("EC", "P-256", "ES256"));
        assert_eq!(jwk.thumbprint(), key.kid());
        let point = key.public_key_bytes();
        let canonical =
            format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, b64url(&point[1..33]), b64url(&point[33..]));
        let expected = b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref());
        assert_eq!(key.kid(), expected);

        let key = SigningKey::generate_for(TokenAlgorithm::EdDsa).expect("key");
        let jwk = key.public_jwk();
        assert_eq!(jwk.kid, key.kid());
        assert_eq!(jwk.thumbprint(), key.kid());
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64url(key.public_key_bytes()));
        let expected = b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref());
        assert_eq!(key.kid(), expected);
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = SigningKey::generate().expect("key");
        let debug = format!("{key:?}");
        assert!(debug.contains(key.kid()) && debug.contains("<redacted>"));
        assert!(!debug.contains("PRIVATE"));
    }

    #[test]
    fn jtis_are_128_bit_and_unique() {
        let a = new_jti().expect("jti");
        let b = new_jti().expect("jti");
        assert_eq!(a.len(), 22);
        assert_eq!(b64url_decode(&a).expect("b64").len(), 16);
        assert_ne!(a, b);
    }

    #[test]
    fn malformed_tokens_are_rejected_with_a_reason() {
        let key = SigningKey::generate().expect("key");
        let token = sign(&key, &sample_claims("t", 1)).expect("sign");
        let (h, rest) = token.split_once('.').expect("dot");
        for bad in [
            String::new(),
            "a.b".into(),
            "a.b.c.d".into(),
            format!("{h}.!!!.sig"),
            format!("{}.{rest}", b64url(b"not json")),
            format!("{h}.{}.AAAA", b64url(b"{\"sub\":\"x\"}")),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(matches!(decode_unverified(&bad), Err(PkiError::Token(_))), "{bad:.40}");
        }
    }

    #[test]
    fn grants_is_an_exact_match() {
        let claims = sample_claims("t", 1);
        assert!(claims.grants("k8s:deployments.patch", "k8s:staging/deployments/web"));
        assert!(!claims.grants("k8s:deployments.patch", "k8s:staging/deployments/*"));
        assert!(!claims.grants("k8s:deployments.*", "k8s:staging/deployments/web"));
        assert!(!claims.grants("k8s:deployments.patch", "k8s:staging/deployments/web2"));
    }

    proptest::proptest! {
        #[test]
        fn decode_unverified_never_panics(s in ".{0,512}") {
            let _ = decode_unverified(&s);
        }

        #[test]
        fn decode_unverified_never_panics_on_jws_shaped_input(
            h in "[A-Za-z0-9_-]{0,64}", p in "[A-Za-z0-9_-]{0,256}", s in "[A-Za-z0-9_-]{0,96}"
        ) {
            let _ = decode_unverified(&format!("{h}.{p}.{s}"));
        }
    }
}
