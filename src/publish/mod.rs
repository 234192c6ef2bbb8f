//! Publishing trust: the CA bundle, the JWKS and the revocation list, as
//! HTTPS endpoints and as ConfigMaps for in-cluster consumers.

pub mod caller;
pub mod endpoints;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};

use crate::api::names::{
    JWKS_CONFIGMAP, JWKS_KEY, MANAGER, SPIFFE_BUNDLE_CONFIGMAP, SPIFFE_BUNDLE_KEY, TRUST_BUNDLE_CONFIGMAP,
    TRUST_BUNDLE_KEY,
};
use crate::state::Shared;

/// Writes the trust bundle, SPIFFE bundle and JWKS ConfigMaps in the operator namespace
/// (the revocation ConfigMap is written by the revocation store itself).
pub async fn publish_configmaps(shared: &Shared) {
    let api: Api<ConfigMap> = Api::namespaced(shared.client.clone(), &shared.config.namespace);
    let now = crate::pki::now_unix();
    let jwks = serde_json::to_string_pretty(&shared.trust.jwks(now)).unwrap_or_default();
    let mut maps =
        vec![(TRUST_BUNDLE_CONFIGMAP, TRUST_BUNDLE_KEY, shared.trust.bundle_pem()), (JWKS_CONFIGMAP, JWKS_KEY, jwks)];
    match crate::state::trust::spiffe_bundle_json(&shared.trust, now) {
        Ok(bundle) => maps.push((SPIFFE_BUNDLE_CONFIGMAP, SPIFFE_BUNDLE_KEY, bundle)),
        Err(e) => tracing::error!(error = %e, "building the SPIFFE bundle"),
    }
    for (name, key, value) in maps {
        let cm = crate::state::trust::published_config_map(name, key, value);
        let mut v = serde_json::to_value(&cm).unwrap_or_default();
        v["apiVersion"] = "v1".into();
        v["kind"] = "ConfigMap".into();
        if let Err(e) = api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(v)).await {
            tracing::warn!(error = %e, configmap = name, "publishing ConfigMap failed");
        }
    }
}
