//! The operator's API client: kube's default stack, with a bounded idle pool.
//!
//! kube's client speaks HTTP/1.1, one request per connection at a time, and
//! keeps every connection it has opened for 90 s after its last use, however
//! many, so a burst of reconciles would leave a TLS connection per request it
//! had in flight open and idle, each holding its TLS state and read and
//! write buffers. This builds the stack
//! `kube::Client::try_from` builds (base URI, retries, authentication, extra
//! headers, timeouts, rustls), keeping at most [`IDLE_PER_HOST`] connections
//! idle: a burst still gets a connection per request in flight, but gives the
//! surplus back as it ends. A kubeconfig that names a proxy, or whose
//! credentials come from an exec plugin (which may hand out a client
//! certificate that expires: kube's client knows when), gets kube's own client,
//! unchanged.

use std::time::Duration;

use hyper_timeout::TimeoutConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Builder},
    rt::TokioExecutor,
};
use kube::client::{retry::RetryPolicy, ConfigExt};
use tower::{retry::RetryLayer, BoxError, ServiceBuilder, ServiceExt as _};

/// Idle connections kept to the API server.
pub const IDLE_PER_HOST: usize = 32;
/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for `config`, as kube would build it but with a bounded idle pool.
pub fn build(config: kube::Config) -> Result<kube::Client, kube::Error> {
    if config.proxy_url.is_some() || config.auth_info.exec.is_some() {
        return kube::Client::try_from(config);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let mut connector = TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http = Builder::new(TokioExecutor::new())
        .pool_max_idle_per_host(IDLE_PER_HOST)
        .pool_idle_timeout(IDLE_TIMEOUT)
        .build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .service(http.map_err(BoxError::from));
    Ok(kube::Client::new(service, config.default_namespace))
}
