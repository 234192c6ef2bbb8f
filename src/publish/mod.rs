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

/// Writes the trust bundle and JWKS ConfigMaps in the operator namespace
/// (the revocation ConfigMap is written by the revocation store itself).
pub async fn publish_configmaps(shared: &Shared) {
    let api: Api<ConfigMap> = Api::namespaced(shared.client.clone(), &shared.config.namespace);
    let jwks = serde_json::to_string_pretty(&shared.trust.jwks(crate::pki::now_unix())).unwrap_or_default();
    for (name, key, value) in
        [(TRUST_BUNDLE_CONFIGMAP, "ca.crt", shared.trust.bundle_pem()), (JWKS_CONFIGMAP, "jwks.json", jwks)]
    {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "writ".to_string())])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(key.to_string(), value)])),
            ..Default::default()
        };
        let mut v = serde_json::to_value(&cm).unwrap_or_default();
        v["apiVersion"] = "v1".into();
        v["kind"] = "ConfigMap".into();
        if let Err(e) = api.patch(name, &PatchParams::apply("writ").force(), &Patch::Apply(v)).await {
            tracing::warn!(error = %e, configmap = name, "publishing ConfigMap failed");
        }
    }
}
