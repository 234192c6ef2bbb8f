//! The revocation list: revoked certificate serials and token `jti`s, each
//! kept until its own expiry. Persisted over [`PARTS`] ConfigMaps
//! (`writ-revocations`, `writ-revocations-1` … `writ-revocations-7`), each
//! holding part of the list in the list's own format, so that a restart or a
//! new leader never forgets one; served whole on `/revocations`.
//!
//! One ConfigMap holds at most 1 MiB, about 17,000 entries; the parts hold
//! eight times that. A batch of revocations goes whole into the part with the
//! most room, so a write rewrites one part, not the whole list. Where an
//! entry sits does not matter to readers (they join all parts), so the parts
//! need no rebalancing, and a list written by a version of Writ that had one
//! ConfigMap is read as its first part.
//!
//! Each stored entry also names the namespace it was revoked for (`ns`, a
//! field readers of the list ignore: `writ verify` and
//! [`crate::verify::RevocationList`] need no namespace, and `/revocations`
//! serves the list without it). No namespace may hold more than its quota
//! ([`DEFAULT_NAMESPACE_QUOTA_PERCENT`] of the list's capacity unless
//! configured otherwise): a revocation that would take a namespace past it is
//! refused for that namespace alone ([`RevocationError::QuotaExceeded`]),
//! and the revocations of other namespaces go on, so one tenant cannot fill
//! the list for everyone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    api::{Api, ObjectMeta, PostParams},
    Client,
};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::api::names::{MANAGED_BY, REVOCATIONS_CONFIGMAP, REVOCATIONS_KEY};
use crate::verify::{RevocationList, RevokedCertificate, RevokedToken};

/// How many ConfigMaps the list is spread over.
pub const PARTS: usize = 8;
/// How long an entry outlives the credential's own expiry: verifiers accept a
/// credential for up to their clock-skew allowance past `exp`, so the
/// revocation must stay published at least that long.
pub const RETENTION_AFTER_EXPIRY_SECS: i64 = 300;
/// The most one ConfigMap's data may hold (the API server's limit, 1 MiB): a
/// part that would not fit is refused here, before anything is sent.
pub const MAX_PART_BYTES: usize = 1024 * 1024;
/// Room kept free in a part when choosing where a batch goes: the version
/// number and the JSON around the entries.
const PART_SLACK_BYTES: usize = 256;
/// The share of the list's capacity ([`PARTS`] x [`MAX_PART_BYTES`]) one
/// namespace may hold unless configured otherwise, in percent: about 2 MiB,
/// 25,000 entries, room for the revocations of 10,000 pods with a token each
/// in one namespace; four namespaces at their quota fill the list, which
/// `writ_revocation_list_capacity_ratio` shows long before.
pub const DEFAULT_NAMESPACE_QUOTA_PERCENT: u8 = 25;
/// The flag that sets the quota, named in refusals.
pub const QUOTA_FLAG: &str = "--revocation-namespace-quota";

/// The ConfigMap holding part `part` (0-based) of the list.
pub fn part_name(part: usize) -> String {
    match part {
        0 => REVOCATIONS_CONFIGMAP.to_string(),
        n => format!("{REVOCATIONS_CONFIGMAP}-{n}"),
    }
}

/// Which part a ConfigMap of this name holds, if it holds one.
pub fn part_of(name: &str) -> Option<usize> {
    if name == REVOCATIONS_CONFIGMAP {
        return Some(0);
    }
    let n: usize = name.strip_prefix(REVOCATIONS_CONFIGMAP)?.strip_prefix('-')?.parse().ok()?;
    (1..PARTS).contains(&n).then_some(n).filter(|n| part_name(*n) == name)
}

/// Errors while reading or persisting revocations.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The API server refused or failed.
    #[error("ConfigMap {configmap}: {source}")]
    Kube {
        /// The part's ConfigMap, `namespace/name`.
        configmap: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// A persisted part cannot be read; Writ refuses to start over with an
    /// empty one (fix or delete the ConfigMap deliberately).
    #[error("ConfigMap {namespace}/{name} key {REVOCATIONS_KEY} is not a revocation list: {source}")]
    Corrupt {
        /// Namespace.
        namespace: String,
        /// The part's ConfigMap.
        name: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The batched write that carried these revocations failed; `message` is
    /// that write's error, which names the ConfigMap.
    #[error("{message}")]
    Batch {
        /// What went wrong.
        message: String,
    },
    /// The revocations would not fit in the room the parts have left.
    /// Nothing is written and the credentials stay issued (fail closed)
    /// until enough entries reach their expiry to make room.
    #[error(
        "the revocation list is full: {new} new entries ({bytes} bytes) do not fit in the {free} bytes left \
         in ConfigMaps {namespace}/{REVOCATIONS_CONFIGMAP} and {REVOCATIONS_CONFIGMAP}-1 to -{last} ({PARTS} x {part_bytes} bytes, \
         {held} entries held); the credentials stay issued until older entries expire (each is kept until its \
         credential's own expiry: shorter certificate ttl and grant durations keep the list smaller)",
        last = PARTS - 1
    )]
    Full {
        /// Namespace.
        namespace: String,
        /// Entries that did not fit.
        new: usize,
        /// Their encoded size.
        bytes: usize,
        /// Room left over all parts.
        free: usize,
        /// Entries the parts hold.
        held: usize,
        /// The most one part holds.
        part_bytes: usize,
    },
    /// One part would outgrow its ConfigMap (after merging what someone
    /// else wrote to it meanwhile).
    #[error(
        "ConfigMap {namespace}/{name} key {REVOCATIONS_KEY}: the part would be {bytes} bytes, over the {limit} bytes a part holds"
    )]
    PartFull {
        /// Namespace.
        namespace: String,
        /// The part's ConfigMap.
        name: String,
        /// Its encoded size.
        bytes: usize,
        /// The most a part holds.
        limit: usize,
    },
    /// The revocations would take one namespace past its share of the list.
    /// Nothing of that namespace's request is written and its credentials
    /// stay issued (fail closed) until its older entries expire; the
    /// revocations of other namespaces go on.
    #[error(
        "namespace {namespace} is over its revocation quota: {new} new entries ({bytes} bytes) on top of the \
         {used} bytes it holds exceed its quota of {quota} bytes ({percent}% of the list's {capacity} bytes, \
         set by {QUOTA_FLAG} / WRIT_REVOCATION_NAMESPACE_QUOTA); its credentials stay issued until its older \
         entries expire, and revocations of other namespaces go on"
    )]
    QuotaExceeded {
        /// The namespace the revocations are for.
        namespace: String,
        /// Entries refused.
        new: usize,
        /// Their encoded size.
        bytes: usize,
        /// What the namespace holds already (live entries).
        used: usize,
        /// Its quota in bytes.
        quota: usize,
        /// The quota in percent of the capacity.
        percent: u8,
        /// The whole list's capacity in bytes.
        capacity: usize,
    },
    /// Encoding failed.
    #[error("encoding the revocation list: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A revoked token as a part stores it: [`RevokedToken`]'s fields and the
/// namespace it was revoked for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct StoredToken {
    jti: String,
    expires_at: i64,
    /// Absent on entries written before namespaces were recorded: such an
    /// entry counts against no namespace's quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ns: Option<String>,
}

/// A revoked certificate as a part stores it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct StoredCertificate {
    serial: String,
    expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ns: Option<String>,
}

/// A part as stored: [`RevocationList`]'s format, its entries with their
/// namespace (which [`RevocationList`] reads past).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct StoredList {
    version: u64,
    #[serde(default)]
    tokens: Vec<StoredToken>,
    #[serde(default)]
    certificates: Vec<StoredCertificate>,
}

impl StoredList {
    /// The part as readers see it (no namespaces).
    fn public(&self) -> RevocationList {
        RevocationList {
            version: self.version,
            tokens: self.tokens.iter().map(|t| RevokedToken { jti: t.jti.clone(), expires_at: t.expires_at }).collect(),
            certificates: self
                .certificates
                .iter()
                .map(|c| RevokedCertificate { serial: c.serial.clone(), expires_at: c.expires_at })
                .collect(),
        }
    }
}

/// The whole list as readers see it, every part joined (as
/// [`RevocationList::merged`] joins them), without namespaces.
fn public_list(parts: &[Part]) -> RevocationList {
    parts.iter().fold(RevocationList::default(), |mut all, part| {
        let public = part.list.public();
        all.version += public.version;
        all.tokens.extend(public.tokens);
        all.certificates.extend(public.certificates);
        all
    })
}

/// What a namespace's entries take, as [`RevocationStore::usage`] reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// The list's capacity in bytes, over all parts.
    pub capacity: usize,
    /// The bytes of live entries (not yet past their retention) over all parts.
    pub live: usize,
    /// One namespace's quota in bytes.
    pub quota: usize,
    /// Each namespace's live bytes, largest first.
    pub namespaces: Vec<(String, usize)>,
}

/// One part as last read or written.
#[derive(Default)]
struct Part {
    list: StoredList,
    /// The encoded size of `list`.
    bytes: usize,
    /// The ConfigMap's resourceVersion: a write replaces that version without
    /// reading the part back first; a conflict means someone else wrote it
    /// meanwhile.
    resource_version: Option<String>,
    /// A hash of each token `jti` in `list`: an introspection of a token
    /// not revoked (the usual case) is one lookup, not a scan of up to
    /// 140,000 entries.
    jtis: HashSet<u64>,
    /// The same for certificate serials (a client certificate presented to
    /// introspection).
    serials: HashSet<u64>,
    /// The encoded size of each namespace's entries, those past their
    /// retention included until the part is next written: an upper bound of
    /// what the namespace holds here, kept so that a batch is checked
    /// against the quotas without encoding every entry again.
    namespaces: HashMap<String, usize>,
}

impl Part {
    fn new(list: StoredList, bytes: usize, resource_version: Option<String>) -> Self {
        let jtis = list.tokens.iter().map(|t| jti_hash(&t.jti)).collect();
        let serials = list.certificates.iter().map(|c| jti_hash(&c.serial)).collect();
        let mut namespaces: HashMap<String, usize> = HashMap::new();
        let tokens = list.tokens.iter().map(|t| (&t.ns, listed_len(t)));
        for (ns, len) in tokens.chain(list.certificates.iter().map(|c| (&c.ns, listed_len(c)))) {
            if let Some(ns) = ns {
                *namespaces.entry(ns.clone()).or_default() += len;
            }
        }
        Part { list, bytes, resource_version, jtis, serials, namespaces }
    }

    fn holds_certificate(&self, serial: &str) -> bool {
        self.serials.contains(&jti_hash(serial)) && self.list.certificates.iter().any(|c| c.serial == serial)
    }

    fn holds_token(&self, jti: &str) -> bool {
        self.jtis.contains(&jti_hash(jti)) && self.list.tokens.iter().any(|t| t.jti == jti)
    }

    fn entries(&self) -> usize {
        self.list.tokens.len() + self.list.certificates.len()
    }

    /// Its encoded size once the entries past their retention are dropped.
    fn live_bytes(&self, now: i64) -> usize {
        let expired = self.list.tokens.iter().filter(|t| !kept(t.expires_at, now)).map(listed_len).sum::<usize>()
            + self.list.certificates.iter().filter(|c| !kept(c.expires_at, now)).map(listed_len).sum::<usize>();
        self.bytes.saturating_sub(expired)
    }

    /// The encoded size of `namespace`'s entries still within their
    /// retention at `now`.
    fn live_bytes_of(&self, namespace: &str, now: i64) -> usize {
        let of = |ns: &Option<String>| ns.as_deref() == Some(namespace);
        let tokens = self.list.tokens.iter().filter(|t| of(&t.ns) && kept(t.expires_at, now)).map(listed_len);
        let certificates =
            self.list.certificates.iter().filter(|c| of(&c.ns) && kept(c.expires_at, now)).map(listed_len);
        tokens.sum::<usize>() + certificates.sum::<usize>()
    }
}

/// The hash a part indexes a `jti` by (fixed keys: the same in every part;
/// `jti`s are Writ's own, and a lookup comes only after a token's signature
/// was verified).
fn jti_hash(jti: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    jti.hash(&mut h);
    h.finish()
}

/// The encoded size of an entry in a list, with the comma before it.
fn listed_len(entry: &impl serde::Serialize) -> usize {
    serde_json::to_string(entry).map_or(0, |e| e.len()) + 1
}

/// Whether an entry expiring at `expires_at` is still listed at `now`.
fn kept(expires_at: i64, now: i64) -> bool {
    expires_at + RETENTION_AFTER_EXPIRY_SECS > now
}

/// The list in memory, written through to its ConfigMaps.
pub struct RevocationStore {
    api: Api<ConfigMap>,
    namespace: String,
    /// Read by every introspection and `/revocations` request at once;
    /// written only to take in a part.
    parts: RwLock<Vec<Part>>,
    /// The most one part may hold ([`MAX_PART_BYTES`]; smaller in tests).
    part_limit: usize,
    /// The share of the capacity one namespace may hold, in percent.
    quota_percent: u8,
    /// Revocations waiting for the next write, and who waits for it.
    pending: std::sync::Mutex<Pending>,
}

/// Group commit of revocations: while one write is in flight, further
/// revocations queue here and the next write carries them all (a write per
/// revocation would rewrite a part per credential when thousands end
/// together).
#[derive(Default)]
struct Pending {
    requests: Vec<Request>,
    flushing: bool,
}

/// One caller's revocations, for one namespace, and where its outcome goes.
struct Request {
    namespace: String,
    tokens: Vec<RevokedToken>,
    certificates: Vec<RevokedCertificate>,
    waiter: tokio::sync::oneshot::Sender<Result<(), RevocationError>>,
}

/// Reads the whole persisted list, every part joined (an absent part is an
/// empty one): what a consumer without the `/revocations` endpoint does.
pub async fn read_persisted(client: &Client, namespace: &str) -> Result<RevocationList, RevocationError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let parts = read_parts(&api, namespace).await?;
    Ok(public_list(&parts))
}

/// Reads every part. An unreadable part is an error, never an empty part:
/// forgetting revocations would re-validate revoked credentials.
async fn read_parts(api: &Api<ConfigMap>, namespace: &str) -> Result<Vec<Part>, RevocationError> {
    futures::future::try_join_all((0..PARTS).map(|part| read_part(api, namespace, part))).await
}

async fn read_part(api: &Api<ConfigMap>, namespace: &str, part: usize) -> Result<Part, RevocationError> {
    let name = part_name(part);
    let cm = api
        .get_opt(&name)
        .await
        .map_err(|source| RevocationError::Kube { configmap: format!("{namespace}/{name}"), source })?;
    decode(cm, namespace, &name)
}

/// The part a ConfigMap holds (none: an empty part).
fn decode(cm: Option<ConfigMap>, namespace: &str, name: &str) -> Result<Part, RevocationError> {
    let resource_version = cm.as_ref().and_then(|cm| cm.metadata.resource_version.clone());
    let Some(text) = cm.and_then(|cm| cm.data).and_then(|mut d| d.remove(REVOCATIONS_KEY)) else {
        return Ok(Part { resource_version, ..Default::default() });
    };
    let list = serde_json::from_str(&text).map_err(|source| RevocationError::Corrupt {
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    Ok(Part::new(list, text.len(), resource_version))
}

impl RevocationStore {
    /// Loads the persisted list (absent ConfigMaps are empty parts).
    pub async fn load(client: &Client, namespace: &str) -> Result<Self, RevocationError> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let parts = read_parts(&api, namespace).await?;
        Ok(Self {
            api,
            namespace: namespace.into(),
            parts: RwLock::new(parts),
            part_limit: MAX_PART_BYTES,
            quota_percent: DEFAULT_NAMESPACE_QUOTA_PERCENT,
            pending: Default::default(),
        })
    }

    /// Lets one namespace hold at most `percent` of the list's capacity
    /// (1 to 100, out of range clamped to it; 100 is no quota at all).
    pub fn with_namespace_quota(mut self, percent: u8) -> Self {
        self.quota_percent = percent.clamp(1, 100);
        self
    }

    /// The list's capacity in bytes, over all parts.
    fn capacity(&self) -> usize {
        PARTS * self.part_limit
    }

    /// One namespace's quota in bytes.
    fn quota(&self) -> usize {
        self.capacity() / 100 * usize::from(self.quota_percent)
    }

    /// How full the list is at `now`, and what each namespace holds (its
    /// entries past their retention included until their part is next
    /// written: cheap enough for every scrape).
    pub async fn usage(&self, now: i64) -> Usage {
        let parts = self.parts.read().await;
        let mut namespaces: HashMap<String, usize> = HashMap::new();
        for p in parts.iter() {
            for (ns, bytes) in &p.namespaces {
                *namespaces.entry(ns.clone()).or_default() += bytes;
            }
        }
        let mut namespaces: Vec<(String, usize)> = namespaces.into_iter().map(|(ns, b)| (ns.to_string(), b)).collect();
        namespaces.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Usage {
            capacity: self.capacity(),
            live: parts.iter().map(|p| p.live_bytes(now)).sum(),
            quota: self.quota(),
            namespaces,
        }
    }

    /// The persisted list's size: its encoded bytes and its entries, over
    /// all parts.
    pub async fn size(&self) -> (usize, usize) {
        let parts = self.parts.read().await;
        parts.iter().fold((0, 0), |(bytes, entries), p| (bytes + p.bytes, entries + p.entries()))
    }

    /// Re-reads the persisted list (followers; a new leader before writing).
    pub async fn refresh(&self) -> Result<(), RevocationError> {
        let stored = read_parts(&self.api, &self.namespace).await?;
        let mut parts = self.parts.write().await;
        for (held, stored) in parts.iter_mut().zip(stored) {
            adopt(held, stored);
        }
        Ok(())
    }

    /// Takes in a part as a watch of the operator's namespace delivered it:
    /// how the replicas that do not lead (which serve `/revocations` and
    /// introspection too) learn of the leader's revocations at once. Other
    /// ConfigMaps are ignored; a version already held (the leader's own
    /// write coming back) is not decoded again.
    pub async fn absorb(&self, cm: ConfigMap) -> Result<(), RevocationError> {
        let Some(part) = cm.metadata.name.as_deref().and_then(part_of) else {
            return Ok(());
        };
        let held = self.parts.read().await[part].resource_version.clone();
        if cm.metadata.resource_version.is_some() && cm.metadata.resource_version == held {
            return Ok(());
        }
        // Decoded without the lock: a part is up to a mebibyte, and
        // introspection waits on the lock.
        let stored = decode(Some(cm), &self.namespace, &part_name(part))?;
        adopt(&mut self.parts.write().await[part], stored);
        Ok(())
    }

    /// The whole list, every part joined.
    pub async fn snapshot(&self) -> RevocationList {
        let parts = self.parts.read().await;
        public_list(&parts)
    }

    /// The whole list's version (that of [`Self::snapshot`]), without
    /// copying the list.
    pub async fn version(&self) -> u64 {
        self.parts.read().await.iter().map(|p| p.list.version).sum()
    }

    /// Whether a certificate serial (lowercase hex) is revoked.
    pub async fn is_certificate_revoked(&self, serial: &str) -> bool {
        self.parts.read().await.iter().any(|p| p.holds_certificate(serial))
    }

    /// Whether a token id is revoked.
    pub async fn is_token_revoked(&self, jti: &str) -> bool {
        self.parts.read().await.iter().any(|p| p.holds_token(jti))
    }

    /// Adds revocations for credentials of `namespace` (idempotent), prunes
    /// entries past their expiry in the parts it writes, and persists the
    /// result before returning: callers remove credentials only after their
    /// revocation is durable. Refused whole, with nothing written, when the
    /// entries new to the list would take `namespace` past its quota.
    pub async fn revoke(
        self: &Arc<Self>,
        namespace: &str,
        tokens: Vec<RevokedToken>,
        certificates: Vec<RevokedCertificate>,
        now: i64,
    ) -> Result<(), RevocationError> {
        if tokens.is_empty() && certificates.is_empty() {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let flush = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.requests.push(Request { namespace: namespace.into(), tokens, certificates, waiter: tx });
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
            Ok(outcome) => outcome,
            Err(_) => Err(RevocationError::Batch {
                message: format!(
                    "writing the revocation list to ConfigMaps {namespace}/{REVOCATIONS_CONFIGMAP}*: the write was abandoned"
                ),
            }),
        }
    }

    /// Writes queued revocations, one batch per write, until none is left.
    async fn flush(&self, now: i64) {
        loop {
            let requests = {
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if p.requests.is_empty() {
                    p.flushing = false;
                    return;
                }
                std::mem::take(&mut p.requests)
            };
            let now = now.max(crate::pki::now_unix());
            // The requests that would take their namespace past its quota
            // are answered at once; the others are written together.
            let (admitted, waiters) = self.admit(requests, now).await;
            let outcome = self.apply(admitted, now).await.map_err(|e| e.to_string());
            for w in waiters {
                let _ = w.send(outcome.clone().map_err(|message| RevocationError::Batch { message }));
            }
        }
    }

    /// Splits a batch of requests: those whose entries new to the list fit
    /// their namespace's quota (counting what the requests before them in
    /// the batch add), as entries to write with their waiters; the others
    /// are refused here, each with its own error.
    async fn admit(&self, requests: Vec<Request>, now: i64) -> (Vec<Entry>, Vec<WaiterOf>) {
        let parts = self.parts.read().await;
        // What each namespace holds: first the parts' upper bounds; exact
        // (entries past their retention left out) once a request would not
        // fit by the bound.
        let mut usage: HashMap<String, (usize, bool)> = HashMap::new();
        for p in parts.iter() {
            for (ns, bytes) in &p.namespaces {
                usage.entry(ns.clone()).or_default().0 += bytes;
            }
        }
        let quota = self.quota();
        let mut seen = Seen::new(&parts);
        let mut admitted = Vec::new();
        let mut waiters = Vec::new();
        for request in requests {
            let fresh = seen.fresh(&request, now);
            let bytes: usize = fresh.iter().map(Entry::len).sum();
            let held = usage.entry(request.namespace.clone()).or_default();
            if self.quota_percent < 100 && held.0 + bytes > quota && !held.1 {
                let added_by_batch = held.0
                    - parts.iter().map(|p| p.namespaces.get(&request.namespace).copied().unwrap_or(0)).sum::<usize>();
                *held = (
                    parts.iter().map(|p| p.live_bytes_of(&request.namespace, now)).sum::<usize>() + added_by_batch,
                    true,
                );
            }
            let used = held.0;
            // At 100% a namespace may take the whole list: only the list's
            // own room limits it (and names the list in its refusal).
            if self.quota_percent < 100 && used + bytes > quota {
                seen.forget(&fresh);
                let _ = request.waiter.send(Err(RevocationError::QuotaExceeded {
                    namespace: request.namespace.to_string(),
                    new: fresh.len(),
                    bytes,
                    used,
                    quota,
                    percent: self.quota_percent,
                    capacity: self.capacity(),
                }));
                continue;
            }
            held.0 += bytes;
            admitted.extend(fresh);
            waiters.push(request.waiter);
        }
        (admitted, waiters)
    }

    /// Adds the entries no part holds yet: all of them to the part with the
    /// most room if they fit there, else spread over the roomiest parts; if
    /// all parts together lack the room, nothing is written. The list in
    /// memory is locked only to plan the writes and to take in what was
    /// written, never across a request: introspection and `/revocations`
    /// answer while the API server is slow or away.
    async fn apply(&self, fresh: Vec<Entry>, now: i64) -> Result<(), RevocationError> {
        let writes = self.plan(fresh, now).await?;
        for (part, resource_version, next) in writes {
            let written = self.persist(part, resource_version, next, now).await?;
            adopt(&mut self.parts.write().await[part], written);
        }
        Ok(())
    }

    /// The parts to write for these revocations: each as it would be after
    /// them, with the resourceVersion it is written over.
    async fn plan(
        &self,
        fresh: Vec<Entry>,
        now: i64,
    ) -> Result<Vec<(usize, Option<String>, StoredList)>, RevocationError> {
        let parts = self.parts.read().await;
        // Entries a part took in since they were admitted (a watch event,
        // another flush) are not written twice.
        let mut seen = Seen::new(&parts);
        let fresh: Vec<(Entry, usize)> = fresh
            .into_iter()
            .filter(|e| seen.admit(e))
            .map(|e| {
                let len = e.len();
                (e, len)
            })
            .collect();
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let mut room: Vec<(usize, usize)> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| (i, self.part_limit.saturating_sub(p.live_bytes(now) + PART_SLACK_BYTES)))
            .collect();
        room.sort_by_key(|&(i, free)| (std::cmp::Reverse(free), i));
        let mut batches: Vec<(usize, Vec<Entry>)> = Vec::new();
        let mut fresh = fresh.into_iter().peekable();
        for (part, mut free) in room.iter().copied() {
            let mut batch = Vec::new();
            while let Some((_, len)) = fresh.peek() {
                if *len > free {
                    break;
                }
                free -= len;
                batch.extend(fresh.next().map(|(entry, _)| entry));
            }
            if !batch.is_empty() {
                batches.push((part, batch));
            }
        }
        let left: Vec<usize> = fresh.map(|(_, len)| len).collect();
        if !left.is_empty() {
            return Err(RevocationError::Full {
                namespace: self.namespace.clone(),
                new: left.len() + batches.iter().map(|(_, b)| b.len()).sum::<usize>(),
                bytes: left.iter().sum::<usize>() + batches.iter().flat_map(|(_, b)| b).map(Entry::len).sum::<usize>(),
                free: room.iter().map(|&(_, free)| free).sum(),
                held: parts.iter().map(Part::entries).sum(),
                part_bytes: self.part_limit,
            });
        }
        Ok(batches
            .into_iter()
            .map(|(part, batch)| {
                let held = &parts[part];
                let mut next = held.list.clone();
                let (tokens, certificates) = Entry::split(batch);
                merge(&mut next, tokens, certificates, now);
                next.version = held.list.version + 1;
                (part, held.resource_version.clone(), next)
            })
            .collect())
    }

    /// Writes `list` as part `part` over the version last read or written.
    /// When someone else wrote it meanwhile (a replica that led for a while,
    /// a person), what they hold that is still in force is kept: their part
    /// is read, merged into `list`, and written over their version.
    async fn persist(
        &self,
        part: usize,
        mut resource_version: Option<String>,
        mut list: StoredList,
        now: i64,
    ) -> Result<Part, RevocationError> {
        let name = part_name(part);
        let err = |source| RevocationError::Kube { configmap: format!("{}/{name}", self.namespace), source };
        let mut attempts = 0;
        loop {
            let json = serde_json::to_string(&list)?;
            let bytes = json.len();
            if bytes > self.part_limit {
                return Err(RevocationError::PartFull {
                    namespace: self.namespace.clone(),
                    name,
                    bytes,
                    limit: self.part_limit,
                });
            }
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into()),
                    resource_version: resource_version.clone(),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(REVOCATIONS_KEY.to_string(), json)])),
                ..Default::default()
            };
            let written = match resource_version {
                None => self.api.create(&PostParams::default(), &cm).await,
                Some(_) => self.api.replace(&name, &PostParams::default(), &cm).await,
            };
            match written {
                Ok(cm) => return Ok(Part::new(list, bytes, cm.metadata.resource_version)),
                // 409: a newer version (or, for a create, one) is stored.
                // 404 on a replace: the part was deleted meanwhile (by hand);
                // it is created again from what this replica holds.
                Err(kube::Error::Api(e)) if (e.code == 409 || e.code == 404) && attempts < 3 => {
                    attempts += 1;
                    let stored = read_part(&self.api, &self.namespace, part).await?;
                    tracing::info!(
                        part = %name,
                        stored_version = stored.list.version,
                        our_version = list.version,
                        "a part of the revocation list was written by someone else meanwhile; merging"
                    );
                    list.version = list.version.max(stored.list.version + 1);
                    merge(&mut list, stored.list.tokens, stored.list.certificates, now);
                    resource_version = stored.resource_version;
                }
                Err(e) => return Err(err(e)),
            }
        }
    }

    /// Makes each part at most `bytes` long (tests: the parts fill up
    /// without a mebibyte of entries each).
    #[cfg(test)]
    fn with_part_limit(mut self, bytes: usize) -> Self {
        self.part_limit = bytes;
        self
    }
}

/// Replaces a part in memory with `stored` unless it is older.
fn adopt(held: &mut Part, stored: Part) {
    if stored.list.version >= held.list.version {
        *held = stored;
    }
}

/// A revocation on its way into a part.
enum Entry {
    Token(StoredToken),
    Certificate(StoredCertificate),
}

/// Where the outcome of an admitted request goes.
type WaiterOf = tokio::sync::oneshot::Sender<Result<(), RevocationError>>;

impl Entry {
    /// Its encoded size in a list, with the comma before it.
    fn len(&self) -> usize {
        match self {
            Entry::Token(t) => listed_len(t),
            Entry::Certificate(c) => listed_len(c),
        }
    }

    fn split(entries: Vec<Entry>) -> (Vec<StoredToken>, Vec<StoredCertificate>) {
        let (mut tokens, mut certificates) = (Vec::new(), Vec::new());
        for e in entries {
            match e {
                Entry::Token(t) => tokens.push(t),
                Entry::Certificate(c) => certificates.push(c),
            }
        }
        (tokens, certificates)
    }
}

/// The token ids and serials the parts hold, and those a batch adds: what
/// is new to the list, once each.
struct Seen<'a> {
    parts: &'a [Part],
    serials: HashSet<&'a str>,
    jtis: HashSet<String>,
    new_serials: HashSet<String>,
}

impl<'a> Seen<'a> {
    fn new(parts: &'a [Part]) -> Self {
        let serials = parts.iter().flat_map(|p| &p.list.certificates).map(|c| c.serial.as_str()).collect();
        Seen { parts, serials, jtis: HashSet::new(), new_serials: HashSet::new() }
    }

    /// Whether `entry` is new to the list; remembers it if so (retention is
    /// checked by [`Seen::fresh`], with the batch's time).
    fn admit(&mut self, entry: &Entry) -> bool {
        match entry {
            Entry::Token(t) => !self.parts.iter().any(|p| p.holds_token(&t.jti)) && self.jtis.insert(t.jti.clone()),
            Entry::Certificate(c) => {
                !self.serials.contains(c.serial.as_str()) && self.new_serials.insert(c.serial.clone())
            }
        }
    }

    /// A request's entries new to the list, stamped with its namespace.
    fn fresh(&mut self, request: &Request, now: i64) -> Vec<Entry> {
        let ns = Some(request.namespace.clone());
        let tokens = request
            .tokens
            .iter()
            .filter(|t| kept(t.expires_at, now))
            .map(|t| Entry::Token(StoredToken { jti: t.jti.clone(), expires_at: t.expires_at, ns: ns.clone() }));
        let certificates = request.certificates.iter().filter(|c| kept(c.expires_at, now)).map(|c| {
            Entry::Certificate(StoredCertificate { serial: c.serial.clone(), expires_at: c.expires_at, ns: ns.clone() })
        });
        let entries: Vec<Entry> = tokens.chain(certificates).collect();
        entries.into_iter().filter(|e| self.admit(e)).collect()
    }

    /// Un-remembers entries of a refused request, so that a later request
    /// of the batch carrying the same ones is judged on its own.
    fn forget(&mut self, entries: &[Entry]) {
        for e in entries {
            match e {
                Entry::Token(t) => self.jtis.remove(&t.jti),
                Entry::Certificate(c) => self.new_serials.remove(&c.serial),
            };
        }
    }
}

/// Adds the entries `list` lacks (by `jti`, by serial) and drops every entry
/// past its expiry and retention.
fn merge(list: &mut StoredList, tokens: Vec<StoredToken>, certificates: Vec<StoredCertificate>, now: i64) {
    list.tokens.retain(|t| kept(t.expires_at, now));
    list.certificates.retain(|c| kept(c.expires_at, now));
    let mut jtis: HashSet<String> = list.tokens.iter().map(|t| t.jti.clone()).collect();
    list.tokens.extend(tokens.into_iter().filter(|t| kept(t.expires_at, now) && jtis.insert(t.jti.clone())));
    let mut serials: HashSet<String> = list.certificates.iter().map(|c| c.serial.clone()).collect();
    list.certificates
        .extend(certificates.into_iter().filter(|c| kept(c.expires_at, now) && serials.insert(c.serial.clone())));
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::json;

    use super::*;
    use crate::testing::{objects_in, ApiServer, Objects, Reply};

    /// What the fake API server holds: ConfigMaps by name.
    type Held = Objects;
    /// The fake API server, which logs the requests it answered.
    type Log = ApiServer;

    const NS: &str = "writ-system";
    /// The namespace the tests' revocations are for.
    const TENANT: &str = "team-a";

    /// The test kit's API server holding the ConfigMaps of namespace `NS`
    /// in `stored`, with optimistic concurrency on their resourceVersions,
    /// logging each request in `log`.
    fn fake_api(stored: Held, log: Log) -> Client {
        let collection = format!("/api/v1/namespaces/{NS}/configmaps");
        log.answering(move |req| {
            objects_in(&collection, &stored, req)
                .unwrap_or_else(|| panic!("unexpected request {} {}", req.method, req.path))
        })
    }

    /// A store loaded from the fake API server holding `stored`, with parts
    /// of at most `part_limit` bytes; its client; the log from after the load.
    async fn store_over(stored: &Held, part_limit: usize) -> (Arc<RevocationStore>, Client, Log) {
        let log = ApiServer::new().in_namespace(NS);
        let client = fake_api(stored.clone(), log.clone());
        let store = RevocationStore::load(&client, NS)
            .await
            .expect("load")
            .with_part_limit(part_limit)
            .with_namespace_quota(100);
        assert_eq!(log.drain().len(), PARTS, "the load reads each part once");
        (Arc::new(store), client, log)
    }

    fn certificates(from: usize, n: usize, expires_at: i64) -> Vec<RevokedCertificate> {
        (from..from + n).map(|i| RevokedCertificate { serial: format!("{i:032x}"), expires_at }).collect()
    }

    fn stored_part(stored: &Held, part: usize) -> Option<(RevocationList, usize)> {
        let cm = stored.lock().expect("stored").get(&part_name(part))?.clone();
        let text = cm["data"][REVOCATIONS_KEY].as_str().expect("the list").to_string();
        Some((serde_json::from_str(&text).expect("a revocation list"), text.len()))
    }

    /// The requests answered since the last drain: method and ConfigMap name.
    fn drain(log: &Log) -> Vec<(Method, String)> {
        log.drain().into_iter().map(|r| (r.method.clone(), r.name())).collect()
    }

    #[test]
    fn part_names_round_trip_and_nothing_else_is_a_part() {
        let names: Vec<String> = (0..PARTS).map(part_name).collect();
        assert_eq!(names[0], "writ-revocations");
        assert_eq!(names[7], "writ-revocations-7");
        for (i, name) in names.iter().enumerate() {
            assert_eq!(part_of(name), Some(i));
        }
        for other in
            ["writ-revocations-0", "writ-revocations-8", "writ-revocations-01", "writ-revocations-x", "writ-jwks", ""]
        {
            assert_eq!(part_of(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn each_batch_rewrites_only_the_roomiest_part_and_the_list_outgrows_one_configmap() {
        let stored = Held::default();
        // About 80 bytes an entry (with its namespace): 55 fit a part of 4,608 bytes, 440 the list.
        let limit = 4_608;
        let (store, client, log) = store_over(&stored, limit).await;
        let now = 1_800_000_000;
        let exp = now + 3_600;

        store.revoke(TENANT, vec![], certificates(0, 10, exp), now).await.expect("written");
        assert_eq!(drain(&log), [(Method::POST, part_name(0))], "one part created, the rest not touched");
        store.revoke(TENANT, vec![], certificates(10, 10, exp), now).await.expect("written");
        assert_eq!(drain(&log), [(Method::POST, part_name(1))], "the next batch goes to the roomiest part");
        // The same revocations again are no write at all.
        store.revoke(TENANT, vec![], certificates(5, 10, exp), now).await.expect("idempotent");
        assert_eq!(drain(&log), []);

        // More than one part holds: spread over the roomiest, each written once.
        store.revoke(TENANT, vec![], certificates(20, 300, exp), now).await.expect("written");
        let written: Vec<String> = drain(&log)
            .into_iter()
            .map(|(m, name)| {
                assert_eq!(m, Method::POST);
                name
            })
            .collect();
        assert_eq!(written, (2..PARTS).map(part_name).collect::<Vec<_>>());
        let mut total_bytes = 0;
        for part in 0..PARTS {
            let (_, bytes) = stored_part(&stored, part).expect("every part written");
            assert!(bytes <= limit, "part {part} is {bytes} bytes");
            total_bytes += bytes;
        }
        let persisted = read_persisted(&client, NS).await.expect("read");
        let mut serials: Vec<&str> = persisted.certificates.iter().map(|c| c.serial.as_str()).collect();
        serials.sort();
        serials.dedup();
        assert_eq!(serials.len(), 320, "every revocation persisted once");
        assert_eq!(persisted.certificates.len(), 320);
        assert!(total_bytes > limit, "the list is larger than one part may be");
        assert_eq!(store.snapshot().await, persisted, "what is served is what is persisted");
        assert_eq!(store.version().await, persisted.version);
        assert_eq!(store.size().await, (total_bytes, 320));
    }

    #[tokio::test]
    async fn a_list_that_would_not_fit_its_configmaps_is_refused_before_any_write_and_nothing_is_lost() {
        let stored = Held::default();
        let limit = 4_608;
        let (store, client, log) = store_over(&stored, limit).await;
        let now = 1_800_000_000;
        store.revoke(TENANT, vec![], certificates(0, 400, now + 3_600), now).await.expect("400 fit");
        drain(&log);
        let before = stored.lock().expect("stored").clone();
        let size = store.size().await;

        let err =
            store.revoke(TENANT, vec![], certificates(1_000, 100, now + 3_600), now).await.expect_err("over the limit");
        let message = err.to_string();
        assert!(message.starts_with("the revocation list is full: 100 new entries ("), "{message}");
        assert!(
            message.contains(
                "in ConfigMaps writ-system/writ-revocations and writ-revocations-1 to -7 (8 x 4608 bytes, 400 entries held)"
            ),
            "{message}"
        );
        assert!(message.contains("the credentials stay issued until older entries expire"), "{message}");
        assert_eq!(drain(&log), [], "nothing sent");
        assert_eq!(*stored.lock().expect("stored"), before, "the stored parts are kept");
        assert_eq!(store.snapshot().await.certificates.len(), 400, "the list in memory is kept");
        assert_eq!(store.size().await, size);

        // Once those have expired (and their retention passed), a batch is
        // written to one part, pruned of them; the other parts still list
        // the expired entries until they are next written.
        let later = now + 3_600 + RETENTION_AFTER_EXPIRY_SECS + 1;
        store.revoke(TENANT, vec![], certificates(100_000, 50, later + 3_600), later).await.expect("room again");
        assert_eq!(drain(&log), [(Method::PUT, part_name(0))], "written over the version it wrote last");
        let (part0, _) = stored_part(&stored, 0).expect("part 0");
        assert_eq!(part0.certificates, certificates(100_000, 50, later + 3_600));
        let persisted = read_persisted(&client, NS).await.expect("read");
        assert!(persisted.certificates.iter().any(|c| c.serial == format!("{:032x}", 100_049)));
    }

    #[tokio::test]
    async fn filling_up_with_entries_of_every_size_and_expiry_never_oversizes_a_part() {
        let stored = Held::default();
        let limit = 2_048;
        let (store, client, _) = store_over(&stored, limit).await;
        let start = 1_800_000_000;
        let mut expected = 0;
        let mut refused = 0;
        for round in 0..200_usize {
            // Batches of 1 to 13 tokens of 1 to 60 characters, some expiring soon.
            let now = start + round as i64 * 30;
            let batch: Vec<RevokedToken> = (0..1 + round % 13)
                .map(|i| RevokedToken {
                    jti: format!("{round}-{i}-{}", "x".repeat((round * 7 + i * 13) % 60)),
                    expires_at: now + if i % 3 == 0 { 60 } else { 36_000 },
                })
                .collect();
            let before = read_persisted(&client, NS).await.expect("read");
            match store.revoke(TENANT, batch.clone(), vec![], now).await {
                Ok(()) => expected += batch.len(),
                // Callers see the batch's error (as text).
                Err(e) if e.to_string().starts_with("the revocation list is full: ") => {
                    refused += 1;
                    let after = read_persisted(&client, NS).await.expect("read");
                    assert_eq!(after, before, "a refused batch writes nothing");
                }
                Err(e) => panic!("round {round}: {e}"),
            }
            for part in 0..PARTS {
                if let Some((_, bytes)) = stored_part(&stored, part) {
                    assert!(bytes <= limit, "round {round}: part {part} is {bytes} bytes");
                }
            }
            let persisted = read_persisted(&client, NS).await.expect("read");
            for t in &batch {
                let listed = persisted.tokens.iter().filter(|p| p.jti == t.jti).count();
                assert!(listed <= 1, "round {round}: {} listed {listed} times", t.jti);
            }
        }
        assert!(expected > 200 && refused > 0, "{expected} written, {refused} batches refused");
    }

    #[tokio::test]
    async fn a_namespace_over_its_quota_is_refused_alone_and_other_namespaces_still_revoke() {
        let stored = Held::default();
        let limit = 4_608;
        let (store, client, log) = store_over(&stored, limit).await;
        // A quarter of 8 x 4,608 bytes: 9,200 bytes, about 115 entries.
        let store = Arc::new(Arc::into_inner(store).expect("one owner").with_namespace_quota(25));
        let now = 1_800_000_000;
        store.revoke(TENANT, vec![], certificates(0, 100, now + 3_600), now).await.expect("within the quota");
        drain(&log);
        let before = stored.lock().expect("stored").clone();

        let err = store.revoke(TENANT, vec![], certificates(100, 30, now + 3_600), now).await.expect_err("over");
        assert!(matches!(err, RevocationError::QuotaExceeded { .. }), "{err}");
        let message = err.to_string();
        assert!(message.starts_with("namespace team-a is over its revocation quota: 30 new entries ("), "{message}");
        assert!(
            message.contains("exceed its quota of 9200 bytes (25% of the list's 36864 bytes, set by --revocation-namespace-quota / WRIT_REVOCATION_NAMESPACE_QUOTA)"),
            "{message}"
        );
        assert!(message.contains("its credentials stay issued"), "{message}");
        assert_eq!(drain(&log), [], "nothing sent");
        assert_eq!(*stored.lock().expect("stored"), before, "nothing written");
        assert_eq!(store.snapshot().await.certificates.len(), 100);

        // Another namespace's revocations go through, and what the tenant
        // already listed is no new entry (no refusal, no write).
        store.revoke("team-b", vec![], certificates(1_000, 30, now + 3_600), now).await.expect("another namespace");
        assert_eq!(drain(&log).len(), 1, "one write");
        store.revoke(TENANT, vec![], certificates(0, 100, now + 3_600), now).await.expect("already listed");
        assert_eq!(drain(&log), []);

        // Both at once, in one batch or two: the tenant is refused, the other
        // namespace's revocation is written.
        let (a, b) = tokio::join!(
            store.revoke(TENANT, vec![], certificates(200, 30, now + 3_600), now),
            store.revoke("team-c", vec![], certificates(2_000, 5, now + 3_600), now),
        );
        assert!(matches!(a, Err(RevocationError::QuotaExceeded { .. })), "{a:?}");
        b.expect("team-c revoked");
        let persisted = read_persisted(&client, NS).await.expect("read");
        assert_eq!(persisted.certificates.len(), 135);
        assert!(!persisted.certificates.iter().any(|c| c.serial == format!("{:032x}", 200)));

        // Once the tenant's entries pass their retention, it has room again.
        let later = now + 3_600 + RETENTION_AFTER_EXPIRY_SECS + 1;
        store.revoke(TENANT, vec![], certificates(300, 30, later + 60), later).await.expect("room again");
    }

    #[tokio::test]
    async fn parts_record_each_entrys_namespace_and_readers_never_see_it() {
        let stored = Held::default();
        let (store, client, _) = store_over(&stored, MAX_PART_BYTES).await;
        let now = 1_800_000_000;
        let token = RevokedToken { jti: "t-1".into(), expires_at: now + 60 };
        store.revoke(TENANT, vec![token.clone()], certificates(0, 2, now + 60), now).await.expect("a");
        store.revoke("team-b", vec![], certificates(5, 1, now + 60), now).await.expect("b");

        // Stored: each entry names its namespace.
        let raw: Vec<String> = stored
            .lock()
            .expect("stored")
            .values()
            .map(|cm| cm["data"][REVOCATIONS_KEY].as_str().expect("list").to_string())
            .collect();
        let raw = raw.join("\n");
        assert_eq!(raw.matches(r#""ns":"team-a""#).count(), 3, "{raw}");
        assert_eq!(raw.matches(r#""ns":"team-b""#).count(), 1, "{raw}");

        // Read as the list's own format (`writ verify`, `writ::verify`): the
        // same entries, no namespace; served the same way.
        let persisted = read_persisted(&client, NS).await.expect("read");
        assert_eq!(persisted.tokens, vec![token]);
        assert_eq!(persisted.certificates.len(), 3);
        let served = serde_json::to_string(&store.snapshot().await).expect("json");
        assert!(!served.contains("team-"), "{served}");
        let parsed: RevocationList =
            serde_json::from_str(raw.lines().next().expect("a part")).expect("the list format");
        assert!(!parsed.tokens.is_empty() || !parsed.certificates.is_empty());

        // Usage per namespace, largest first; entries of an earlier Writ
        // (no namespace) count against none.
        let legacy = RevocationList { version: 1, tokens: vec![], certificates: certificates(100, 4, now + 60) };
        store.absorb(watched(&part_name(7), &legacy, "90")).await.expect("absorbed");
        let usage = store.usage(now).await;
        assert_eq!(usage.capacity, PARTS * MAX_PART_BYTES);
        assert_eq!(usage.quota, PARTS * MAX_PART_BYTES / 100 * 100);
        let names: Vec<&str> = usage.namespaces.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["team-a", "team-b"]);
        assert!(usage.live > usage.namespaces.iter().map(|(_, b)| b).sum::<usize>(), "legacy entries are live");
    }

    #[tokio::test]
    async fn the_list_answers_while_a_write_of_it_waits_on_the_api_server() {
        // An API server with no ConfigMaps whose writes hang until released.
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let gate = release.clone();
        let client = ApiServer::new().in_namespace(NS).client(move |req| {
            let gate = gate.clone();
            async move {
                if req.method == Method::GET {
                    return Reply::not_found();
                }
                let _permit = gate.acquire().await.expect("gate");
                let mut cm = req.body;
                cm["metadata"]["resourceVersion"] = "1".into();
                Reply::created(cm)
            }
        });
        let store = Arc::new(RevocationStore::load(&client, NS).await.expect("load"));
        let now = 1_800_000_000;
        let token = move |jti: &str| RevokedToken { jti: jti.into(), expires_at: now + 60 };
        let writing = tokio::spawn({
            let store = store.clone();
            async move { store.revoke(TENANT, vec![token("a")], vec![], now).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!writing.is_finished(), "the write waits on the API server");
        let answers = async {
            (
                store.is_token_revoked("a").await,
                store.snapshot().await.version,
                store.size().await,
                store.version().await,
            )
        };
        let answered = tokio::time::timeout(std::time::Duration::from_secs(1), answers).await;
        assert_eq!(
            answered.expect("answered while the write waits"),
            (false, 0, (0, 0), 0),
            "not revoked until durable"
        );

        release.add_permits(1);
        writing.await.expect("task").expect("written once released");
        assert!(store.is_token_revoked("a").await, "revoked once durable");
        assert_eq!(store.version().await, 1);
    }

    #[tokio::test]
    async fn what_someone_else_wrote_meanwhile_is_merged_not_overwritten() {
        let stored = Held::default();
        let (store, _, log) = store_over(&stored, MAX_PART_BYTES).await;
        let now = 1_800_000_000;
        let a = certificates(0, 1, now + 60);
        store.revoke(TENANT, vec![], a.clone(), now).await.expect("first write");
        assert_eq!(drain(&log), [(Method::POST, part_name(0))]);

        // Another replica (which led for a while) wrote part 1, which this
        // one holds as absent: a revocation this one has not seen, and a
        // later version.
        let theirs = RevocationList {
            version: 7,
            tokens: vec![RevokedToken { jti: "their-token".into(), expires_at: now + 60 }],
            certificates: vec![],
        };
        stored.lock().expect("stored").insert(
            part_name(1),
            json!({"metadata": {"name": part_name(1), "resourceVersion": "5"},
                   "data": {REVOCATIONS_KEY: serde_json::to_string(&theirs).expect("json")}}),
        );

        let c = certificates(1, 1, now + 60);
        store.revoke(TENANT, vec![], c.clone(), now).await.expect("written after merging");
        assert_eq!(
            drain(&log),
            [(Method::POST, part_name(1)), (Method::GET, part_name(1)), (Method::PUT, part_name(1))]
        );
        let (part1, _) = stored_part(&stored, 1).expect("part 1");
        assert_eq!(part1.version, 8, "after theirs");
        assert_eq!(part1.tokens, theirs.tokens, "their revocation is kept");
        assert_eq!(part1.certificates, c, "ours is added");
        let served = store.snapshot().await;
        assert_eq!((served.version, served.certificates), (1 + 8, [a, c].concat()));
        assert!(store.is_token_revoked("their-token").await, "and this replica honours theirs");
    }

    #[tokio::test]
    async fn a_part_deleted_by_hand_is_written_again_whole_from_what_the_replica_holds() {
        let now = 1_800_000_000;
        let stored = Held::default();
        // Part 0 has the most room: the others hold 30 entries each.
        for part in 0..PARTS {
            let list = RevocationList {
                version: 1,
                tokens: vec![],
                certificates: certificates(part * 100, if part == 0 { 1 } else { 30 }, now + 60),
            };
            stored.lock().expect("stored").insert(
                part_name(part),
                json!({"metadata": {"name": part_name(part), "resourceVersion": "3"},
                       "data": {REVOCATIONS_KEY: serde_json::to_string(&list).expect("json")}}),
            );
        }
        let (store, _, log) = store_over(&stored, MAX_PART_BYTES).await;
        stored.lock().expect("stored").remove(REVOCATIONS_CONFIGMAP);

        let token = RevokedToken { jti: "after-deletion".into(), expires_at: now + 60 };
        store.revoke(TENANT, vec![token.clone()], vec![], now).await.expect("written again");
        assert_eq!(
            drain(&log),
            [(Method::PUT, part_name(0)), (Method::GET, part_name(0)), (Method::POST, part_name(0))]
        );
        let (part0, _) = stored_part(&stored, 0).expect("part 0 again");
        assert_eq!(part0.certificates, certificates(0, 1, now + 60), "what it held is restored");
        assert_eq!((part0.tokens, part0.version), (vec![token], 2));
    }

    /// A ConfigMap as a watch delivers it: `list` at `resource_version`.
    fn watched(name: &str, list: &RevocationList, resource_version: &str) -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": NS, "resourceVersion": resource_version},
            "data": {REVOCATIONS_KEY: serde_json::to_string(list).expect("json")}
        }))
        .expect("configmap")
    }

    #[tokio::test]
    async fn a_follower_takes_in_newer_parts_from_its_watch_and_keeps_what_it_holds_otherwise() {
        let stored = Held::default();
        let (follower, _, log) = store_over(&stored, MAX_PART_BYTES).await;
        let now = 1_800_000_000;
        let token = |jti: &str| RevokedToken { jti: jti.into(), expires_at: now + 60 };
        let v2 = RevocationList { version: 2, tokens: vec![token("a"), token("b")], certificates: vec![] };
        follower.absorb(watched(&part_name(3), &v2, "20")).await.expect("a newer part");
        assert!(follower.is_token_revoked("b").await, "revoked on the follower at once");
        assert_eq!(follower.size().await.1, 2);

        // Other ConfigMaps of the namespace are not parts of the list.
        follower.absorb(watched("writ-jwks", &v2, "21")).await.expect("ignored");
        assert_eq!(follower.snapshot().await, v2);

        // An older version (a watch re-listing, an event overtaken) changes nothing.
        let v1 = RevocationList { version: 1, tokens: vec![token("a")], certificates: vec![] };
        follower.absorb(watched(&part_name(3), &v1, "10")).await.expect("an older part");
        assert_eq!(follower.snapshot().await, v2);

        // An unreadable part is an error, and the part held is kept (never
        // forgotten in favour of an empty one).
        let mut corrupt = watched(&part_name(3), &v2, "30");
        corrupt.data.as_mut().expect("data").insert(REVOCATIONS_KEY.into(), "{not json".into());
        let err = follower.absorb(corrupt).await.expect_err("corrupt");
        assert!(matches!(err, RevocationError::Corrupt { .. }), "{err}");
        assert!(err.to_string().starts_with("ConfigMap writ-system/writ-revocations-3 key revocations.json"), "{err}");
        assert_eq!(follower.snapshot().await, v2);

        // Following asks the API server for nothing. Leading later, the
        // follower does not repeat what a part holds, and writes new
        // revocations to a part with room.
        assert_eq!(drain(&log), [], "only the load read the API server");
        follower.revoke(TENANT, vec![token("b"), token("c")], vec![], now).await.expect("written");
        assert_eq!(drain(&log), [(Method::POST, part_name(0))]);
        let (part0, _) = stored_part(&stored, 0).expect("part 0");
        assert_eq!((part0.version, part0.tokens), (1, vec![token("c")]));
        assert_eq!(follower.version().await, 3);
    }

    #[tokio::test]
    async fn a_list_kept_in_one_configmap_by_an_earlier_writ_is_read_as_the_first_part() {
        let now = 1_800_000_000;
        let legacy = RevocationList { version: 12, tokens: vec![], certificates: certificates(0, 3, now + 60) };
        let stored = Held::default();
        stored.lock().expect("stored").insert(
            REVOCATIONS_CONFIGMAP.into(),
            json!({"metadata": {"name": REVOCATIONS_CONFIGMAP, "resourceVersion": "40"},
                   "data": {REVOCATIONS_KEY: serde_json::to_string(&legacy).expect("json")}}),
        );
        let (store, _, log) = store_over(&stored, MAX_PART_BYTES).await;
        assert_eq!(store.snapshot().await, legacy);

        store.revoke(TENANT, vec![], certificates(2, 2, now + 60), now).await.expect("written");
        assert_eq!(drain(&log), [(Method::POST, part_name(1))], "the roomier part; the old list is left as it is");
        let (part1, _) = stored_part(&stored, 1).expect("part 1");
        assert_eq!(part1.certificates, certificates(3, 1, now + 60), "what the old list holds is not repeated");
        assert_eq!(store.snapshot().await.certificates, certificates(0, 4, now + 60));
    }
}
