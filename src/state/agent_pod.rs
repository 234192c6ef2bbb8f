//! What the operator keeps of an agent pod.
//!
//! A `k8s_openapi` `Pod` is about 2.5 KB before any of its fields are filled
//! (its spec and status are inline structs of dozens of optional fields), and
//! the pod cache holds one per agent pod: at 10,000 pods that alone was
//! 25 MB. [`AgentPod`] is the same API object read as only what Writ looks at
//! (serde skips the rest while the watch is decoded), served by the same
//! `pods` endpoint, so it watches, caches and owns Secrets like a `Pod`.

use k8s_openapi::{
    api::core::v1::{Container, EnvFromSource, EnvVar, PodSpec},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, Serialize};

use crate::api::{AGENT_LABEL, CREDENTIAL_SECRET_ANNOTATION};

/// An agent pod as Writ reads it: metadata, service account and phase.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct AgentPod {
    /// The pod's metadata, trimmed by [`AgentPod::trim`] when cached.
    pub metadata: ObjectMeta,
    /// The `writ.dev/agent` label, moved here by [`AgentPod::trim`].
    #[serde(skip)]
    pub agent: Option<String>,
    /// The `writ.dev/credential-secret` annotation, moved here by [`AgentPod::trim`].
    #[serde(skip)]
    pub credential_secret: Option<String>,
    /// `metadata.uid` as 16 bytes, moved here by [`AgentPod::trim`] when it
    /// is a UUID in the form the API server writes (read it with
    /// [`AgentPod::uid`]).
    #[serde(skip)]
    uuid: Option<[u8; 16]>,
    /// The part of the spec Writ reads.
    #[serde(default)]
    pub spec: AgentPodSpec,
    /// The part of the status Writ reads.
    #[serde(default)]
    pub status: AgentPodStatus,
}

/// `spec.serviceAccountName` (and its deprecated alias `serviceAccount`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPodSpec {
    /// `spec.serviceAccountName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// `spec.serviceAccount` (deprecated alias).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// `status.phase`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct AgentPodStatus {
    /// The pod's phase (a byte here, not a string per cached pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PodPhase>,
}

/// A pod's `status.phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum PodPhase {
    /// Accepted, not yet running.
    Pending,
    /// Bound to a node, a container running.
    Running,
    /// Every container ended in success.
    Succeeded,
    /// Every container ended, one in failure.
    Failed,
    /// `Unknown`, or a phase this version of Writ does not know.
    #[serde(other)]
    Unknown,
}

super::served_as!(AgentPod, k8s_openapi::api::core::v1::Pod);

#[cfg(any(test, feature = "testing"))]
impl AgentPod {
    /// A running pod `name` in `ns` claiming agent `agent`, running as the
    /// service account of the same name, with credential Secret `<name>-writ`:
    /// as the pod cache holds it (trimmed).
    pub fn test(ns: &str, name: &str, agent: &str) -> Self {
        let mut pod = Self::named(ns, name);
        pod.metadata.uid = Some(format!("uid-{name}"));
        pod.metadata.labels = Some([(AGENT_LABEL.to_string(), agent.to_string())].into());
        pod.metadata.annotations = Some([(CREDENTIAL_SECRET_ANNOTATION.to_string(), format!("{name}-writ"))].into());
        pod.spec.service_account_name = Some(agent.to_string());
        pod.status.phase = Some(PodPhase::Running);
        pod.trim();
        pod
    }

    /// Running as service account `sa`.
    pub fn running_as(mut self, sa: &str) -> Self {
        self.spec.service_account_name = Some(sa.to_string());
        self
    }

    /// In phase `phase`.
    pub fn in_phase(mut self, phase: PodPhase) -> Self {
        self.status.phase = Some(phase);
        self
    }
}

impl AgentPod {
    /// A pod known only by its namespace and name (a deleted pod, seen
    /// through its credential Secret).
    pub fn named(namespace: &str, name: &str) -> Self {
        Self {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(namespace.into()), ..Default::default() },
            ..Default::default()
        }
    }

    /// The service account the pod runs as (`default` when unset).
    pub fn service_account(&self) -> &str {
        effective_service_account(self.spec.service_account_name.as_deref(), self.spec.service_account.as_deref())
    }

    /// Whether the pod has finished (its credential must go).
    pub fn finished(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
            || matches!(self.status.phase, Some(PodPhase::Succeeded | PodPhase::Failed))
    }

    /// The AgentIdentity the pod claims (its `writ.dev/agent` label).
    pub fn agent(&self) -> Option<&str> {
        self.agent.as_deref().or_else(|| self.metadata.labels.as_ref()?.get(AGENT_LABEL).map(String::as_str))
    }

    /// The pod's uid (the same as `ResourceExt::uid`, which reads only the
    /// metadata and so must not be used on an `AgentPod`).
    pub fn uid(&self) -> Option<String> {
        self.uuid.map(|u| format_uuid(&u)).or_else(|| self.metadata.uid.clone())
    }

    /// A reference to the pod, with its uid (for Events).
    pub fn object_ref(&self, dt: &()) -> k8s_openapi::api::core::v1::ObjectReference {
        k8s_openapi::api::core::v1::ObjectReference { uid: self.uid(), ..kube::Resource::object_ref(self, dt) }
    }

    /// The credential Secret the webhook named for the pod (its
    /// `writ.dev/credential-secret` annotation).
    pub fn credential_secret(&self) -> Option<&str> {
        self.credential_secret
            .as_deref()
            .or_else(|| self.metadata.annotations.as_ref()?.get(CREDENTIAL_SECRET_ANNOTATION).map(String::as_str))
    }

    /// Keeps only what Writ reads: the two labels and annotations above move
    /// out of the metadata's maps (a map costs over 500 bytes before its
    /// first entry), and the rest of the labels and annotations (a
    /// workload's own, `kubectl`'s and tools'), field-ownership records,
    /// owner references, finalizers and the `resourceVersion` (nothing reads
    /// a cached pod's, and the cache's key would copy it) are dropped. The
    /// uid is kept as 16 bytes, and `spec.serviceAccount` only when
    /// `spec.serviceAccountName` is unset (the name wins when both are set,
    /// and the API server sets both).
    pub fn trim(&mut self) {
        if self.spec.service_account_name.is_some() {
            self.spec.service_account = None;
        }
        let m = &mut self.metadata;
        m.resource_version = None;
        if let Some(uuid) = m.uid.as_deref().and_then(parse_uuid) {
            self.uuid = Some(uuid);
            m.uid = None;
        }
        m.managed_fields = None;
        m.owner_references = None;
        m.generate_name = None;
        m.finalizers = None;
        if let Some(agent) = m.labels.take().and_then(|mut l| l.remove(AGENT_LABEL)) {
            self.agent = Some(agent);
        }
        if let Some(secret) = m.annotations.take().and_then(|mut a| a.remove(CREDENTIAL_SECRET_ANNOTATION)) {
            self.credential_secret = Some(secret);
        }
    }
}

/// The 16 bytes of a UUID written as the API server writes uids (lowercase,
/// hyphenated 8-4-4-4-12), `None` for any other string: only a uid that
/// [`format_uuid`] gives back exactly is kept as bytes.
pub(super) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut digits = b.iter().filter(|&&c| c != b'-');
    let mut out = [0u8; 16];
    for byte in &mut out {
        *byte = hex(*digits.next()?)? << 4 | hex(*digits.next()?)?;
    }
    Some(out)
}

pub(super) fn format_uuid(u: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(char::from(HEX[usize::from(byte >> 4)]));
        s.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    s
}

/// `serviceAccountName`, else its deprecated alias `serviceAccount`, else
/// `default`: the API server's rule, for admitted and cached pods alike.
pub fn effective_service_account<'a>(name: Option<&'a str>, alias: Option<&'a str>) -> &'a str {
    name.or(alias).filter(|s| !s.is_empty()).unwrap_or("default")
}

/// A Secret a pod reads: where (a field path) and which.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretReference {
    /// The field naming it, e.g. `spec.volumes[0].secret.secretName`.
    pub field: String,
    /// The Secret's name.
    pub secret: String,
}

/// Every Secret a pod spec makes readable to its containers: secret and
/// projected volumes, `env[].valueFrom.secretKeyRef` and
/// `envFrom[].secretRef` of containers, init containers and ephemeral
/// containers.
pub fn secret_references(spec: &PodSpec) -> Vec<SecretReference> {
    let mut out = Vec::new();
    let mut push = |field: String, secret: Option<&String>| {
        if let Some(secret) = secret.filter(|s| !s.is_empty()) {
            out.push(SecretReference { field, secret: secret.clone() });
        }
    };
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if let Some(s) = &v.secret {
            push(format!("spec.volumes[{i}].secret.secretName"), s.secret_name.as_ref());
        }
        for (j, source) in v.projected.iter().flat_map(|p| p.sources.iter().flatten()).enumerate() {
            if let Some(s) = &source.secret {
                push(format!("spec.volumes[{i}].projected.sources[{j}].secret.name"), Some(&s.name));
            }
        }
    }
    let mut from_env = |kind: &str, i: usize, env: Option<&Vec<EnvVar>>, env_from: Option<&Vec<EnvFromSource>>| {
        for (j, e) in env.into_iter().flatten().enumerate() {
            let key = e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref());
            push(format!("spec.{kind}[{i}].env[{j}].valueFrom.secretKeyRef.name"), key.map(|k| &k.name));
        }
        for (j, e) in env_from.into_iter().flatten().enumerate() {
            push(format!("spec.{kind}[{i}].envFrom[{j}].secretRef.name"), e.secret_ref.as_ref().map(|r| &r.name));
        }
    };
    let lists: [(&str, &[Container]); 2] =
        [("containers", &spec.containers), ("initContainers", spec.init_containers.as_deref().unwrap_or_default())];
    for (kind, list) in lists {
        for (i, c) in list.iter().enumerate() {
            from_env(kind, i, c.env.as_ref(), c.env_from.as_ref());
        }
    }
    for (i, c) in spec.ephemeral_containers.iter().flatten().enumerate() {
        from_env("ephemeralContainers", i, c.env.as_ref(), c.env_from.as_ref());
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;

    fn pod(yaml: &str) -> (Pod, AgentPod) {
        let json =
            serde_json::to_string(&serde_saphyr::from_str::<serde_json::Value>(yaml).expect("yaml")).expect("json");
        (serde_json::from_str(&json).expect("pod"), serde_json::from_str(&json).expect("agent pod"))
    }

    #[test]
    fn reads_what_writ_reads_of_a_full_pod_and_drops_the_rest() {
        let (full, mut agent) = pod(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: ci
  uid: 7c1d
  resourceVersion: "42"
  generateName: web-
  labels: {{"{AGENT_LABEL}": release-bot, app: web, pod-template-hash: abc}}
  annotations: {{"{CREDENTIAL_SECRET_ANNOTATION}": writ-cred-1, kubectl.kubernetes.io/restartedAt: now}}
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: web, uid: r1}}]
  managedFields: [{{manager: kubectl, operation: Apply}}]
spec:
  serviceAccountName: release-bot
  containers: [{{name: a, image: x, env: [{{name: A, value: b}}]}}]
status:
  phase: Running
  podIP: 10.0.0.1
  conditions: [{{type: Ready, status: "True"}}]
"#
        ));
        assert_eq!(agent.metadata, full.metadata, "metadata is read whole, then trimmed");
        assert_eq!(agent.service_account(), "release-bot");
        assert_eq!(agent.status.phase, Some(PodPhase::Running));
        assert!(!agent.finished());
        // Untrimmed (as read from the API), the label and annotation are read from the maps.
        assert_eq!((agent.agent(), agent.credential_secret()), (Some("release-bot"), Some("writ-cred-1")));
        agent.trim();
        let m = &agent.metadata;
        assert_eq!(
            (m.name.as_deref(), m.namespace.as_deref(), m.uid.as_deref()),
            (Some("web-0"), Some("ci"), Some("7c1d"))
        );
        assert!(m.resource_version.is_none());
        assert!(m.labels.is_none() && m.annotations.is_none(), "{m:?}");
        assert!(m.owner_references.is_none() && m.managed_fields.is_none() && m.generate_name.is_none());
        assert_eq!((agent.agent(), agent.credential_secret()), (Some("release-bot"), Some("writ-cred-1")));
        // Trimming twice (a cached pod trimmed again) keeps them.
        agent.trim();
        assert_eq!((agent.agent(), agent.credential_secret()), (Some("release-bot"), Some("writ-cred-1")));
        assert!(std::mem::size_of::<AgentPod>() * 4 < std::mem::size_of::<Pod>(), "the point of the projection");
    }

    #[test]
    fn a_uuid_uid_is_kept_as_bytes_and_read_back_exactly() {
        let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let (_, mut p) = pod(&format!("metadata: {{name: p, namespace: ci, uid: {uuid}}}"));
        p.trim();
        assert!(p.metadata.uid.is_none(), "kept once, as bytes");
        assert_eq!(p.uid().as_deref(), Some(uuid));
        assert_eq!(p.object_ref(&()).uid.as_deref(), Some(uuid), "Events name the pod's uid");
        p.trim();
        assert_eq!(p.uid().as_deref(), Some(uuid), "trimming twice keeps it");
        // Anything else stays a string, exactly as written.
        for other in [
            "0F8FAD5B-D9CB-469F-A165-70867728950E",
            "0f8fad5bd9cb469fa16570867728950e",
            "u-1",
            "",
            "0f8fad5b-d9cb-469f-a165-70867728950g",
        ] {
            let (_, mut p) = pod(&format!("metadata: {{name: p, uid: '{other}'}}"));
            p.trim();
            assert_eq!(p.uid().as_deref(), Some(other), "{other}");
        }
        for i in 0..=255u8 {
            let bytes = [i; 16];
            assert_eq!(parse_uuid(&format_uuid(&bytes)), Some(bytes));
        }
    }

    #[test]
    fn the_deprecated_service_account_alias_is_dropped_when_the_name_is_set() {
        for (spec, sa) in [
            ("{serviceAccountName: bot, serviceAccount: bot}", "bot"),
            ("{serviceAccountName: bot, serviceAccount: other}", "bot"),
            ("{serviceAccount: legacy}", "legacy"),
            ("{serviceAccountName: '', serviceAccount: legacy}", "default"),
        ] {
            let (_, mut p) = pod(&format!("metadata: {{name: p}}\nspec: {spec}"));
            let before = p.service_account().to_string();
            p.trim();
            assert_eq!((before.as_str(), p.service_account()), (sa, sa), "{spec}");
        }
    }

    #[test]
    fn service_account_falls_back_like_the_api_server_and_phases_finish() {
        let (_, bare) = pod("metadata: {name: p}");
        assert_eq!(bare.service_account(), "default");
        let (_, old) = pod("metadata: {name: p}\nspec: {serviceAccount: legacy}");
        assert_eq!(old.service_account(), "legacy");
        for (status, finished) in
            [("Succeeded", true), ("Failed", true), ("Running", false), ("Pending", false), ("Hibernating", false)]
        {
            let (_, p) = pod(&format!("metadata: {{name: p}}\nstatus: {{phase: {status}}}"));
            assert_eq!(p.finished(), finished, "{status}");
        }
        let (_, deleting) =
            pod("metadata: {name: p, deletionTimestamp: '2026-01-01T00:00:00Z'}\nstatus: {phase: Running}");
        assert!(deleting.finished());
    }

    #[test]
    fn it_is_the_pods_resource() {
        use kube::Resource as _;
        assert_eq!(AgentPod::url_path(&(), Some("ci")), Pod::url_path(&(), Some("ci")));
        assert_eq!((AgentPod::kind(&()), AgentPod::api_version(&())), (Pod::kind(&()), Pod::api_version(&())));
    }
}
