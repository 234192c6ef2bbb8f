//! The revocation list: revoked certificate serials and token `jti`s, each
//! kept until its own expiry. Persisted in the ConfigMap `writ-revocations`
//! (so a restart or a new leader never forgets one), served on `/revocations`.

use std::collections::BTreeMap;
use std::sync::Arc;

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
/// How long an entry outlives the credential's own expiry: verifiers accept a
/// credential for up to their clock-skew allowance past `exp`, so the
/// revocation must stay published at least that long.
pub const RETENTION_AFTER_EXPIRY_SECS: i64 = 300;

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
    /// The persisted list cannot be read; Writ refuses to start over with an
    /// empty one (fix or delete the ConfigMap deliberately).
    #[error("ConfigMap {namespace}/{CONFIGMAP} key {KEY} is not a revocation list: {source}")]
    Corrupt {
        /// Namespace.
        namespace: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The batched write that carried these revocations failed.
    #[error("writing ConfigMap {namespace}/{CONFIGMAP}: {message}")]
    Batch {
        /// Namespace.
        namespace: String,
        /// What went wrong.
        message: String,
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
    /// Revocations waiting for the next write, and who waits for it.
    pending: std::sync::Mutex<Pending>,
}

/// Group commit of revocations: while one write of the list is in flight,
/// further revocations queue here and the next write carries them all (the
/// list is one ConfigMap, so a write per revocation would be quadratic in
/// bytes when thousands of credentials end together).
#[derive(Default)]
struct Pending {
    tokens: Vec<RevokedToken>,
    certificates: Vec<RevokedCertificate>,
    waiters: Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
    flushing: bool,
}

impl RevocationStore {
    /// Loads the persisted list (an absent ConfigMap is an empty list).
    pub async fn load(client: &Client, namespace: &str) -> Result<Self, RevocationError> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let list = Self::read(&api, namespace).await?;
        Ok(Self { api, namespace: namespace.into(), list: Mutex::new(list), pending: Default::default() })
    }

    /// Reads the persisted list. An unreadable list is an error, never an
    /// empty list: forgetting revocations would re-validate revoked credentials.
    async fn read(api: &Api<ConfigMap>, namespace: &str) -> Result<RevocationList, RevocationError> {
        let cm = api
            .get_opt(CONFIGMAP)
            .await
            .map_err(|source| RevocationError::Kube { namespace: namespace.into(), source })?;
        let Some(text) = cm.and_then(|cm| cm.data).and_then(|mut d| d.remove(KEY)) else {
            return Ok(RevocationList::default());
        };
        serde_json::from_str(&text).map_err(|source| RevocationError::Corrupt { namespace: namespace.into(), source })
    }

    /// Re-reads the persisted list (followers; a new leader before writing).
    pub async fn refresh(&self) -> Result<(), RevocationError> {
        let list = Self::read(&self.api, &self.namespace).await?;
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
        self: &Arc<Self>,
        tokens: Vec<RevokedToken>,
        certificates: Vec<RevokedCertificate>,
        now: i64,
    ) -> Result<(), RevocationError> {
        if tokens.is_empty() && certificates.is_empty() {
            // Nothing to add; still prunes expired entries.
            return self.apply(Vec::new(), Vec::new(), now).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let flush = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.tokens.extend(tokens);
            p.certificates.extend(certificates);
            p.waiters.push(tx);
            !std::mem::replace(&mut p.flushing, true)
        };
        if flush {
            // A task of its own, so that a cancelled caller (a reconcile
            // aborted on losing leadership) cannot strand the queue.
            let this = self.clone();
            tokio::spawn(async move { this.flush(now).await });
        }
        let namespace = self.namespace.clone();
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(RevocationError::Batch { namespace, message }),
            Err(_) => Err(RevocationError::Batch { namespace, message: "the write was abandoned".into() }),
        }
    }

    /// Writes queued revocations, one batch per write, until none is left.
    async fn flush(&self, now: i64) {
        loop {
            let (tokens, certificates, waiters) = {
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if p.waiters.is_empty() {
                    p.flushing = false;
                    return;
                }
                (std::mem::take(&mut p.tokens), std::mem::take(&mut p.certificates), std::mem::take(&mut p.waiters))
            };
            let outcome =
                self.apply(tokens, certificates, now.max(crate::pki::now_unix())).await.map_err(|e| e.to_string());
            for w in waiters {
                let _ = w.send(outcome.clone());
            }
        }
    }

    async fn apply(
        &self,
        tokens: Vec<RevokedToken>,
        certificates: Vec<RevokedCertificate>,
        now: i64,
    ) -> Result<(), RevocationError> {
        let mut list = self.list.lock().await;
        let mut next = list.clone();
        let mut changed = false;
        let keep = |expires_at: i64| expires_at + RETENTION_AFTER_EXPIRY_SECS > now;
        let mut jtis: std::collections::HashSet<String> = next.tokens.iter().map(|t| t.jti.clone()).collect();
        for t in tokens {
            if keep(t.expires_at) && jtis.insert(t.jti.clone()) {
                next.tokens.push(t);
                changed = true;
            }
        }
        let mut serials: std::collections::HashSet<String> =
            next.certificates.iter().map(|c| c.serial.clone()).collect();
        for c in certificates {
            if keep(c.expires_at) && serials.insert(c.serial.clone()) {
                next.certificates.push(c);
                changed = true;
            }
        }
        let before = next.tokens.len() + next.certificates.len();
        next.tokens.retain(|t| keep(t.expires_at));
        next.certificates.retain(|c| keep(c.expires_at));
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
