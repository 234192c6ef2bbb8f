//! The HTTPS listener shared by the webhooks and the trust endpoints: rustls
//! (TLS 1.2+ only, aws-lc-rs provider) with a reloadable serving certificate.
//!
//! Client certificates are requested, never required ([`ClientTrust`]): the
//! API server presents none unless configured to, and webhooks answer it
//! either way. Each request carries what its connection's certificate proved
//! ([`PeerCertificate`]): a chain to Writ's CA, to the webhook client CA
//! (`--webhook-client-ca`), or to neither (then it counts as none).

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::{
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        ClientHello, ResolvesServerCert, WebPkiClientVerifier,
    },
    sign::CertifiedKey,
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Errors of the TLS listener.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The serving certificate or key could not be read.
    #[error("loading the serving certificate: {0}")]
    Certificate(String),
    /// Binding the listener failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The current serving certificate; replaced in place on rotation, so the
/// next handshake uses the new one.
#[derive(Debug, Default)]
pub struct CertSlot(RwLock<Option<Arc<CertifiedKey>>>);

impl CertSlot {
    /// Installs a certificate chain and key (PEM).
    pub fn set(&self, chain_pem: &str, key_pem: &str) -> Result<(), ServerError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| ServerError::Certificate(e.to_string()))?;
        if chain.is_empty() {
            return Err(ServerError::Certificate("no certificate in PEM".into()));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| ServerError::Certificate(e.to_string()))?;
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
            .map_err(|e| ServerError::Certificate(e.to_string()))?;
        let mut slot = self.0.write().unwrap_or_else(|e| e.into_inner());
        *slot = Some(Arc::new(CertifiedKey::new(chain, signer)));
        Ok(())
    }

    /// Whether a certificate is loaded (part of readiness).
    pub fn is_loaded(&self) -> bool {
        self.0.read().map(|s| s.is_some()).unwrap_or(false)
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok()?.clone()
    }
}

/// A rustls server configuration: TLS 1.2 and 1.3 only, the aws-lc-rs provider,
/// certificates from `slot`, no client certificates.
pub fn tls_config(slot: Arc<CertSlot>) -> Result<Arc<ServerConfig>, ServerError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ServerError::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// As [`tls_config`], requesting (not requiring) a client certificate that
/// `clients` verifies.
pub fn tls_config_with_clients(
    slot: Arc<CertSlot>,
    clients: Arc<ClientTrust>,
) -> Result<Arc<ServerConfig>, ServerError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ServerError::Certificate(e.to_string()))?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a connection's client certificate proved, on each of its requests.
#[derive(Clone, Debug)]
pub struct PeerCertificate {
    /// The leaf certificate.
    pub leaf: CertificateDer<'static>,
    /// It chains to Writ's CA (a workload's Writ certificate).
    pub writ: bool,
    /// It chains to the webhook client CA (the API server, where configured).
    pub webhook_client: bool,
}

/// The CAs a client certificate may chain to: Writ's own (replaced when the
/// CA rotates) and, optionally, the CA of the API server's webhook client
/// certificate. Certificates are requested, never required.
#[derive(Debug)]
pub struct ClientTrust {
    provider: Arc<CryptoProvider>,
    writ: RwLock<Option<Arc<dyn ClientCertVerifier>>>,
    webhook: Option<Arc<dyn ClientCertVerifier>>,
}

impl ClientTrust {
    /// Trust for Writ's CA bundle (PEM) and, when given, the webhook client
    /// CA bundle (PEM).
    pub fn new(writ_bundle_pem: &str, webhook_client_ca_pem: Option<&str>) -> Result<Self, ServerError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let webhook = webhook_client_ca_pem.map(|pem| verifier(&provider, pem)).transpose()?;
        let trust = ClientTrust { writ: RwLock::new(None), webhook, provider };
        trust.set_writ_bundle(writ_bundle_pem)?;
        Ok(trust)
    }

    /// Replaces Writ's CA bundle (after a rotation: every CA still in the
    /// bundle keeps verifying).
    pub fn set_writ_bundle(&self, pem: &str) -> Result<(), ServerError> {
        let v = verifier(&self.provider, pem)?;
        *self.writ.write().unwrap_or_else(|e| e.into_inner()) = Some(v);
        Ok(())
    }

    /// Whether a webhook client CA is configured.
    pub fn has_webhook_client_ca(&self) -> bool {
        self.webhook.is_some()
    }

    fn writ_verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.writ.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What a verified chain proves.
    pub fn classify(&self, chain: &[CertificateDer<'static>]) -> Option<PeerCertificate> {
        let (leaf, intermediates) = chain.split_first()?;
        let now = UnixTime::now();
        let proves = |v: Option<&Arc<dyn ClientCertVerifier>>| {
            v.is_some_and(|v| v.verify_client_cert(leaf, intermediates, now).is_ok())
        };
        Some(PeerCertificate {
            leaf: leaf.clone(),
            writ: proves(self.writ_verifier().as_ref()),
            webhook_client: proves(self.webhook.as_ref()),
        })
    }
}

/// A verifier of client certificates chained to the CAs in `pem`, which
/// lets clients without one through.
fn verifier(provider: &Arc<CryptoProvider>, pem: &str) -> Result<Arc<dyn ClientCertVerifier>, ServerError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| ServerError::Certificate(format!("client CA bundle: {e}")))?;
        roots.add(cert).map_err(|e| ServerError::Certificate(format!("client CA bundle: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ServerError::Certificate("client CA bundle: no certificate in PEM".into()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServerError::Certificate(format!("client CA bundle: {e}")))
}

impl ClientCertVerifier for ClientTrust {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: the roots change with CA rotation, and clients send the
    /// one certificate they hold anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// Any certificate completes the handshake (which still proves the
    /// client holds its key): what it chains to is decided per connection
    /// by [`ClientTrust::classify`], and one that chains to neither CA
    /// counts as none, so a client with a certificate of its own (an API
    /// server configured for another webhook) is answered as an anonymous
    /// one, not cut off.
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Wraps `router` so that every request without a client certificate
/// chained to the webhook client CA is refused (403): the webhooks under
/// `--webhook-client-ca`.
pub fn require_webhook_client(router: Router) -> Router {
    router.layer(axum::middleware::from_fn(|req: axum::extract::Request, next: axum::middleware::Next| async move {
        if req.extensions().get::<PeerCertificate>().is_some_and(|p| p.webhook_client) {
            next.run(req).await
        } else {
            use axum::response::IntoResponse;
            (
                http::StatusCode::FORBIDDEN,
                "a client certificate chained to the webhook client CA (--webhook-client-ca) is required",
            )
                .into_response()
        }
    }))
}

/// Binds `addr` (fails fast, so a port clash is reported at start).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })
}

/// Serves `router` over TLS on `listener` until the task is dropped.
pub async fn serve_tls(listener: TcpListener, config: Arc<ServerConfig>, router: Router) {
    serve_tls_with_clients(listener, config, router, None).await
}

/// As [`serve_tls`]; with `clients`, each request of a connection that
/// presented a client certificate carries a [`PeerCertificate`].
pub async fn serve_tls_with_clients(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    router: Router,
    clients: Option<Arc<ClientTrust>>,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let clients = clients.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let peer_cert = match (&clients, tls.get_ref().1.peer_certificates()) {
                (Some(clients), Some(chain)) => clients.classify(chain),
                _ => None,
            };
            let service = TowerToHyperService::new(tower::util::MapRequest::new(
                router,
                move |mut req: http::Request<hyper::body::Incoming>| {
                    if let Some(p) = &peer_cert {
                        req.extensions_mut().insert(p.clone());
                    }
                    req
                },
            ));
            if let Err(e) = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service).await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Serves `router` over plain HTTP (metrics and health only).
pub async fn serve_plain(listener: TcpListener, router: Router) {
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;
    use crate::pki::{
        ca::{CertificateAuthority, CertificateIssuer},
        cert::{parse_certificates, spiffe_id, KeyAlgorithm, PodCertificateRequest},
    };

    /// A client certificate chain (leaf first) issued by `ca`.
    fn client_chain(ca: &CertificateAuthority, name: &str) -> Vec<CertificateDer<'static>> {
        let now = crate::pki::now_unix();
        let issued = ca
            .issue(&PodCertificateRequest {
                spiffe_id: spiffe_id("example.org", "ci", name),
                namespace: "ci".into(),
                pod_name: format!("{name}-1"),
                pod_uid: "uid-1".into(),
                key_algorithm: KeyAlgorithm::EcdsaP256,
                not_before: now - 60,
                ttl_secs: 600,
            })
            .expect("issued");
        parse_certificates(issued.chain_pem.as_bytes()).expect("pem").into_iter().map(CertificateDer::from).collect()
    }

    fn ca(name: &str) -> CertificateAuthority {
        CertificateAuthority::generate(name, crate::pki::now_unix() - 60, 3_600).expect("CA")
    }

    #[test]
    fn a_client_certificate_proves_the_ca_it_chains_to_and_nothing_else() {
        let (writ, apiserver, stranger) = (ca("writ"), ca("apiserver-clients"), ca("someone-else"));
        let trust = ClientTrust::new(writ.cert_pem(), Some(apiserver.cert_pem())).expect("trust");
        assert!(trust.has_webhook_client_ca());
        let of = |chain: Vec<CertificateDer<'static>>| {
            let p = trust.classify(&chain).expect("a chain");
            (p.writ, p.webhook_client)
        };
        assert_eq!(of(client_chain(&writ, "bot")), (true, false));
        assert_eq!(of(client_chain(&apiserver, "kube-apiserver")), (false, true));
        assert_eq!(of(client_chain(&stranger, "bot")), (false, false));
        assert!(trust.classify(&[]).is_none());

        // After a CA rotation, Writ's new CA is trusted.
        let rotated = ca("writ-2");
        assert_eq!(of(client_chain(&rotated, "bot")), (false, false));
        trust.set_writ_bundle(&format!("{}{}", writ.cert_pem(), rotated.cert_pem())).expect("bundle");
        assert_eq!(of(client_chain(&rotated, "bot")), (true, false));
        assert_eq!(of(client_chain(&writ, "bot")), (true, false));

        // Requested, never required; any certificate completes the handshake.
        assert!(trust.offer_client_auth() && !trust.client_auth_mandatory());
        let stranger_leaf = client_chain(&stranger, "x").remove(0);
        assert!(trust.verify_client_cert(&stranger_leaf, &[], UnixTime::now()).is_ok());
        assert!(ClientTrust::new("not pem", None).is_err());
    }

    #[tokio::test]
    async fn webhook_paths_under_a_client_ca_answer_only_its_certificates() {
        let router = require_webhook_client(Router::new().route("/validate", axum::routing::post(|| async { "ok" })));
        let request = |peer: Option<PeerCertificate>| {
            let mut req = http::Request::post("/validate").body(axum::body::Body::empty()).expect("request");
            if let Some(p) = peer {
                req.extensions_mut().insert(p);
            }
            req
        };
        let leaf = client_chain(&ca("c"), "x").remove(0);
        let peer = |writ, webhook_client| PeerCertificate { leaf: leaf.clone(), writ, webhook_client };
        for (req, expected) in
            [(request(None), 403), (request(Some(peer(true, false))), 403), (request(Some(peer(false, true))), 200)]
        {
            let resp = router.clone().oneshot(req).await.expect("response");
            assert_eq!(resp.status().as_u16(), expected);
        }
    }
}
