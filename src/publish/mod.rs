//! Publishing trust: the CA bundle, the JWKS and the revocation list, as
//! HTTPS endpoints and as ConfigMaps for in-cluster consumers.

pub mod caller;
pub mod endpoints;
pub mod revocations;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

use crate::runtime::Shared;

/// ConfigMap with the JWKS (`jwks.json`) in the operator namespace.
pub const JWKS_CONFIGMAP: &str = "writ-jwks";
/// ConfigMap with the CA bundle (`ca.crt`).
pub const TRUST_BUNDLE_CONFIGMAP: &str = crate::controller::identity::TRUST_BUNDLE_CONFIGMAP;
/// ConfigMap with the SPIFFE bundle (`bundle.spiffe`), beside every trust bundle ConfigMap.
pub const SPIFFE_BUNDLE_CONFIGMAP: &str = "writ-spiffe-bundle";
/// Data key of the SPIFFE bundle in [`SPIFFE_BUNDLE_CONFIGMAP`].
pub const SPIFFE_BUNDLE_KEY: &str = "bundle.spiffe";

/// The SPIFFE bundle document to publish at `now` (pretty JSON), or why it cannot be built.
pub fn spiffe_bundle_json(trust: &crate::trust::Trust, now: i64) -> Result<String, crate::pki::PkiError> {
    Ok(serde_json::to_string_pretty(&trust.spiffe_bundle(now)?)?)
}

/// Writes the trust bundle, SPIFFE bundle and JWKS ConfigMaps in the operator namespace
/// (the revocation ConfigMap is written by the revocation store itself).
pub async fn publish_configmaps(shared: &Shared) {
    let api: Api<ConfigMap> = Api::namespaced(shared.client.clone(), &shared.config.namespace);
    let now = crate::pki::now_unix();
    let jwks = serde_json::to_string_pretty(&shared.trust.jwks(now)).unwrap_or_default();
    let mut maps =
        vec![(TRUST_BUNDLE_CONFIGMAP, "ca.crt", shared.trust.bundle_pem()), (JWKS_CONFIGMAP, "jwks.json", jwks)];
    match spiffe_bundle_json(&shared.trust, now) {
        Ok(bundle) => maps.push((SPIFFE_BUNDLE_CONFIGMAP, SPIFFE_BUNDLE_KEY, bundle)),
        Err(e) => tracing::error!(error = %e, "building the SPIFFE bundle"),
    }
    for (name, key, value) in maps {
        let cm = published_config_map(name, key, value);
        let mut v = serde_json::to_value(&cm).unwrap_or_default();
        v["apiVersion"] = "v1".into();
        v["kind"] = "ConfigMap".into();
        if let Err(e) = api.patch(name, &PatchParams::apply("writ").force(), &Patch::Apply(v)).await {
            tracing::warn!(error = %e, configmap = name, "publishing ConfigMap failed");
        }
    }
}

/// A ConfigMap Writ publishes: one key, labelled as managed by Writ.
pub fn published_config_map(name: &str, key: &str, value: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "writ".to_string())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(key.to_string(), value)])),
        ..Default::default()
    }
}
