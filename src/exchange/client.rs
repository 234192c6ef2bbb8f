//! The agent's side of the token exchange (`writ token`): reads the pod's
//! credential folder, authenticates with its certificate over mutual TLS,
//! trusts the Writ CA of the folder's `ca.crt`, and exchanges a grant token
//! for a per-call token.

use std::{path::Path, sync::Arc};

use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, RootCertStore,
};

use super::{ExchangeResponse, CAPABILITY_DETAIL_TYPE, GRANT_TYPE, TOKEN_TYPE_JWT};

/// Errors of the agent's side of the exchange.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A credential file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The credentials or the endpoint URL are unusable.
    #[error("{0}")]
    Setup(String),
    /// Connecting or talking to the token endpoint failed.
    #[error("token endpoint {0}")]
    Transport(String),
    /// The token endpoint refused the exchange (its OAuth error and description).
    #[error("refused ({status}): {error}: {description}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// OAuth `error`.
        error: String,
        /// OAuth `error_description`.
        description: String,
    },
}

/// What to ask for.
#[derive(Clone, Debug)]
pub struct TokenRequest<'a> {
    /// The credential folder (`tls.crt`, `tls.key`, `ca.crt`, `grant.<name>.jwt`).
    pub dir: &'a Path,
    /// The grant whose token is exchanged.
    pub grant: &'a str,
    /// The audience (RFC 8707 `resource`).
    pub resource: &'a str,
    /// The action.
    pub action: &'a str,
    /// The resource the action is on.
    pub target: &'a str,
    /// The token endpoint's base URL, e.g. `https://writ-webhook.writ-system.svc:8444`.
    pub endpoint: &'a str,
    /// Bind the token to the pod's key with a DPoP proof as well (RFC 9449).
    pub dpop: bool,
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, ClientError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|source| ClientError::Read { path: path.display().to_string(), source })
}

/// Exchanges the grant's token for a per-call token.
pub async fn request_token(req: &TokenRequest<'_>) -> Result<ExchangeResponse, ClientError> {
    let setup = |e: &dyn std::fmt::Display| ClientError::Setup(e.to_string());
    let cert_pem = read(req.dir, "tls.crt")?;
    let key_pem = read(req.dir, "tls.key")?;
    let ca_pem = read(req.dir, "ca.crt")?;
    let grant_token = String::from_utf8_lossy(&read(req.dir, &format!("grant.{}.jwt", req.grant))?).trim().to_string();

    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<_, _>>().map_err(|e| setup(&e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| setup(&e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&ca_pem) {
        roots.add(ca.map_err(|e| setup(&e))?).map_err(|e| setup(&e))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| setup(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key.clone_key())
        .map_err(|e| setup(&e))?;

    let base = req.endpoint.trim_end_matches('/');
    let authority = base
        .strip_prefix("https://")
        .ok_or_else(|| ClientError::Setup(format!("--endpoint {base:?} must be an https:// URL")))?;
    let authority = authority.split('/').next().unwrap_or(authority);
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let port = authority.strip_prefix(host).and_then(|p| p.strip_prefix(':')).unwrap_or("443");
    let host_bare = host.trim_matches(['[', ']']);
    let name = ServerName::try_from(host_bare.to_string()).map_err(|e| setup(&e))?;
    let url = format!("{base}/token");

    let details =
        serde_json::json!([{ "type": CAPABILITY_DETAIL_TYPE, "actions": [req.action], "locations": [req.target] }]);
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", GRANT_TYPE)
        .append_pair("subject_token", &grant_token)
        .append_pair("subject_token_type", TOKEN_TYPE_JWT)
        .append_pair("resource", req.resource)
        .append_pair("authorization_details", &details.to_string())
        .finish();
    let mut builder = http::Request::post(&url)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if req.dpop {
        builder = builder.header("DPoP", dpop_proof(&key_pem, &url)?);
    }
    let request = builder.body(Full::new(bytes::Bytes::from(form))).map_err(|e| setup(&e))?;

    let transport = |e: &dyn std::fmt::Display| ClientError::Transport(format!("{url}: {e}"));
    let tcp = tokio::net::TcpStream::connect(format!("{host_bare}:{port}")).await.map_err(|e| transport(&e))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| transport(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| transport(&e))?;
    tokio::spawn(conn);
    let response = sender.send_request(request).await.map_err(|e| transport(&e))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| transport(&e))?.to_bytes();
    if status == 200 {
        return serde_json::from_slice(&body).map_err(|e| transport(&e));
    }
    let err: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Err(ClientError::Refused {
        status,
        error: err["error"].as_str().unwrap_or("").to_string(),
        description: err["error_description"].as_str().unwrap_or("").to_string(),
    })
}

/// A DPoP proof for `POST url`, signed with the pod's key (P-256 `ES256` or Ed25519 `EdDSA`).
fn dpop_proof(key_pem: &[u8], url: &str) -> Result<String, ClientError> {
    use crate::pki::b64url;
    use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
    let block = pem::parse(key_pem).map_err(|e| ClientError::Setup(format!("tls.key: {e}")))?;
    let der = block.contents();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let claims = serde_json::json!({
        "jti": crate::pki::token::new_jti().map_err(|e| ClientError::Setup(e.to_string()))?,
        "htm": "POST",
        "htu": url,
        "iat": crate::pki::now_unix(),
    });
    let payload = b64url(claims.to_string().as_bytes());
    if let Ok(key) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
        let point = key.public_key().as_ref();
        let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256",
            "jwk": {"kty": "EC", "crv": "P-256", "x": b64url(&point[1..33]), "y": b64url(&point[33..65])}});
        let input = format!("{}.{payload}", b64url(header.to_string().as_bytes()));
        let sig = key.sign(&rng, input.as_bytes()).map_err(|_| ClientError::Setup("signing the DPoP proof".into()))?;
        return Ok(format!("{input}.{}", b64url(sig.as_ref())));
    }
    let key = Ed25519KeyPair::from_pkcs8(der)
        .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(der))
        .map_err(|_| ClientError::Setup("tls.key is neither a P-256 nor an Ed25519 PKCS#8 key".into()))?;
    let header = serde_json::json!({"typ": "dpop+jwt", "alg": "EdDSA",
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64url(key.public_key().as_ref())}});
    let input = format!("{}.{payload}", b64url(header.to_string().as_bytes()));
    Ok(format!("{input}.{}", b64url(key.sign(input.as_bytes()).as_ref())))
}
