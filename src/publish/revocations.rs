//! The revocation list: revoked certificate serials and token `jti`s, each
//! kept until its own expiry. Persisted in the ConfigMap `writ-revocations`
//! (so a restart or a new leader never forgets one), served on `/revocations`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    api::{Api, ObjectMeta, PostParams},
    Client,
};
use tokio::sync::Mutex;

use crate::verify::{RevocationList, RevokedCertificate, RevokedToken};

/// The ConfigMap holding the list.
pub const CONFIGMAP: &str = "writ-revocations";
/// Its data key.
pub const KEY: &str = "revocations.json";

/// Errors while persisting revocations.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The API server refused or failed.
    #[error("writing ConfigMap {namespace}/{CONFIGMAP}: {source}")]
    Kube {
        /// Namespace.
        namespace: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Encoding failed.
    #[error("encoding the revocation list: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The list in memory, written through to the ConfigMap.
pub struct RevocationStore {
    api: Api<ConfigMap>,
    namespace: String,
    list: Mutex<RevocationList>,
}

impl RevocationStore {
    /// Loads the persisted list (an absent ConfigMap is an empty list).
    pub async fn load(client: &Client, namespace: &str) -> Result<Self, RevocationError> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let list =
            Self::read(&api).await.map_err(|source| RevocationError::Kube { namespace: namespace.into(), source })?;
        Ok(Self { api, namespace: namespace.into(), list: Mutex::new(list) })
    }

    async fn read(api: &Api<ConfigMap>) -> Result<RevocationList, kube::Error> {
        Ok(api
            .get_opt(CONFIGMAP)
            .await?
            .and_then(|cm| cm.data)
            .and_then(|d| d.get(KEY).cloned())
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default())
    }

    /// Re-reads the persisted list (followers; a new leader before writing).
    pub async fn refresh(&self) -> Result<(), RevocationError> {
        let list = Self::read(&self.api)
            .await
            .map_err(|source| RevocationError::Kube { namespace: self.namespace.clone(), source })?;
        let mut cur = self.list.lock().await;
        if list.version >= cur.version {
            *cur = list;
        }
        Ok(())
    }

    /// A copy of the current list.
    pub async fn snapshot(&self) -> RevocationList {
        self.list.lock().await.clone()
    }

    /// Whether a token id is revoked.
    pub async fn is_token_revoked(&self, jti: &str) -> bool {
        self.list.lock().await.tokens.iter().any(|t| t.jti == jti)
    }

    /// Adds revocations (idempotent), prunes entries past their expiry, and
    /// persists the result before returning: callers remove credentials only
    /// after their revocation is durable.
    pub async fn revoke(
        &self,
        tokens: Vec<RevokedToken>,
        certificates: Vec<RevokedCertificate>,
        now: i64,
    ) -> Result<(), RevocationError> {
        let mut list = self.list.lock().await;
        let mut next = list.clone();
        let mut changed = false;
        for t in tokens {
            if !next.tokens.iter().any(|x| x.jti == t.jti) && t.expires_at > now {
                next.tokens.push(t);
                changed = true;
            }
        }
        for c in certificates {
            if !next.certificates.iter().any(|x| x.serial == c.serial) && c.expires_at > now {
                next.certificates.push(c);
                changed = true;
            }
        }
        let before = next.tokens.len() + next.certificates.len();
        next.tokens.retain(|t| t.expires_at > now);
        next.certificates.retain(|c| c.expires_at > now);
        changed |= next.tokens.len() + next.certificates.len() != before;
        if !changed {
            return Ok(());
        }
        next.version = list.version + 1;
        self.persist(&next).await?;
        *list = next;
        Ok(())
    }

    async fn persist(&self, list: &RevocationList) -> Result<(), RevocationError> {
        let json = serde_json::to_string(list)?;
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIGMAP.into()),
                labels: Some([("app.kubernetes.io/managed-by".to_string(), "writ".to_string())].into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(KEY.to_string(), json)])),
            ..Default::default()
        };
        let err = |source| RevocationError::Kube { namespace: self.namespace.clone(), source };
        match self.api.get_opt(CONFIGMAP).await.map_err(err)? {
            None => {
                self.api.create(&PostParams::default(), &cm).await.map_err(err)?;
            }
            Some(existing) => {
                let mut cm = cm;
                cm.metadata.resource_version = existing.metadata.resource_version;
                self.api.replace(CONFIGMAP, &PostParams::default(), &cm).await.map_err(err)?;
            }
        }
        Ok(())
    }
}
