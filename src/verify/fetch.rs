//! Loading trust data for `writ verify`: from a file, an HTTPS URL (the
//! operator's trust endpoints), or the operator's ConfigMaps.

use std::sync::Arc;

use anyhow::{bail, Context as _};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

/// Where one piece of trust data comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A local file.
    File(std::path::PathBuf),
    /// An `https://` URL, fetched with TLS verified against a CA bundle.
    Url(String),
    /// A key of a ConfigMap in the operator namespace, read with the kubeconfig.
    ConfigMap {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Data key.
        key: String,
    },
}

impl Source {
    /// `https://…` is a URL, anything else a file.
    pub fn parse(arg: &str) -> Source {
        if arg.starts_with("https://") || arg.starts_with("http://") {
            Source::Url(arg.into())
        } else {
            Source::File(arg.into())
        }
    }

    /// Reads the source. `tls_ca` (PEM) verifies HTTPS servers.
    pub async fn load(&self, tls_ca: Option<&str>) -> anyhow::Result<Vec<u8>> {
        match self {
            Source::File(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display())),
            Source::Url(url) => {
                let ca = tls_ca.with_context(|| {
                    format!("fetching {url} needs a CA to verify the server: give --bundle as a file or --tls-ca")
                })?;
                https_get(url, ca).await
            }
            Source::ConfigMap { namespace, name, key } => {
                let client = kube::Client::try_default()
                    .await
                    .context("connecting to the API server (or give the file or URL explicitly)")?;
                let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client, namespace);
                let cm = api.get(name).await.with_context(|| format!("reading ConfigMap {namespace}/{name}"))?;
                let value = cm
                    .data
                    .and_then(|mut d| d.remove(key))
                    .with_context(|| format!("ConfigMap {namespace}/{name} has no key {key}"))?;
                Ok(value.into_bytes())
            }
        }
    }
}

/// A GET over HTTPS (HTTP/1.1), verifying the server against `ca_pem`.
/// Plain `http://` is refused: trust data must not be tampered with in transit.
pub async fn https_get(url: &str, ca_pem: &str) -> anyhow::Result<Vec<u8>> {
    let uri: http::Uri = url.parse().with_context(|| format!("{url} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        bail!("{url}: only https:// URLs are accepted for trust data");
    }
    let host = uri.host().with_context(|| format!("{url} has no host"))?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    for der in crate::pki::cert::parse_certificates(ca_pem.as_bytes()).context("reading the CA bundle")? {
        roots.add(der.into()).context("adding a CA certificate")?;
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp =
        tokio::net::TcpStream::connect((host.as_str(), port)).await.with_context(|| format!("connecting to {url}"))?;
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
        .with_context(|| format!("{host} is not a valid server name"))?;
    let tls = connector.connect(name, tcp).await.with_context(|| format!("TLS with {host}:{port}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = http::Request::get(path)
        .header(http::header::HOST, format!("{host}:{port}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), sender.send_request(req))
        .await
        .with_context(|| format!("{url} timed out"))??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    Ok(body.to_vec())
}
