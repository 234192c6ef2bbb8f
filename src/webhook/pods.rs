//! Pod injection: a pod labelled `writ.dev/agent: <name>` claims that
//! AgentIdentity; accepted pods get the credential Secret volume and the
//! `WRIT_*` environment, and `SPIFFE_CREDENTIAL_FOLDER` (SPIFFE Filesystem
//! Delivery §3.1) pointing at the same mount.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, Pod, PodSpec, SecretVolumeSource, Volume, VolumeMount};
use kube::core::admission::{AdmissionRequest, Operation};

use super::Decision;
use crate::api::names::{VOLUME_NAME, WRIT_PREFIX};
use crate::state::{effective_service_account, secret_references};
use crate::{
    api::{AgentIdentity, AGENT_LABEL, CREDENTIALS_DIR, CREDENTIAL_SECRET_ANNOTATION},
    policy::{Rule, Violation},
    state::Shared,
};

/// Why a pod may not claim the identity it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// No AgentIdentity of that name in the pod's namespace.
    #[error("metadata.labels[writ.dev/agent]: AgentIdentity {agent:?} does not exist in namespace {namespace}")]
    UnknownIdentity {
        /// The claimed identity.
        agent: String,
        /// The pod's namespace.
        namespace: String,
    },
    /// The pod runs as another service account than the identity names.
    #[error("spec.serviceAccountName: pod runs as service account {actual:?} but AgentIdentity {agent:?} may only be claimed by pods running as {expected:?}")]
    WrongServiceAccount {
        /// The claimed identity.
        agent: String,
        /// The identity's service account.
        expected: String,
        /// The pod's service account.
        actual: String,
    },
    /// The identity is being deleted.
    #[error("metadata.labels[writ.dev/agent]: AgentIdentity {0:?} is being deleted")]
    Terminating(String),
}

/// The service account a pod runs as (`default` when unset).
pub fn service_account(pod: &Pod) -> &str {
    let spec = pod.spec.as_ref();
    effective_service_account(
        spec.and_then(|s| s.service_account_name.as_deref()),
        spec.and_then(|s| s.service_account.as_deref()),
    )
}

/// The identity a pod claims, if it carries the label.
pub fn claimed_agent(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(AGENT_LABEL).map(String::as_str)
}

/// Checks a claim and returns the pod as it should be stored: with the
/// credential volume, mounts in every container and the environment.
pub fn inject(
    pod: &Pod,
    namespace: &str,
    identity: Option<&AgentIdentity>,
    spiffe_id: &str,
    secret_name: &str,
) -> Result<Pod, ClaimError> {
    let agent = claimed_agent(pod).unwrap_or_default().to_string();
    let identity =
        identity.ok_or_else(|| ClaimError::UnknownIdentity { agent: agent.clone(), namespace: namespace.into() })?;
    if identity.metadata.deletion_timestamp.is_some() {
        return Err(ClaimError::Terminating(agent));
    }
    let actual = service_account(pod);
    if actual != identity.spec.service_account_name {
        return Err(ClaimError::WrongServiceAccount {
            agent,
            expected: identity.spec.service_account_name.clone(),
            actual: actual.to_string(),
        });
    }

    let mut pod = pod.clone();
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(CREDENTIAL_SECRET_ANNOTATION.into(), secret_name.into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| v.name != VOLUME_NAME);
    volumes.push(Volume {
        name: VOLUME_NAME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name.into()),
            default_mode: Some(0o440),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    });
    let env = [
        ("WRIT_SPIFFE_ID", spiffe_id),
        ("WRIT_CREDENTIALS_DIR", CREDENTIALS_DIR),
        ("SPIFFE_CREDENTIAL_FOLDER", CREDENTIALS_DIR.trim_end_matches('/')),
    ];
    let containers = spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten());
    for c in containers {
        let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
        mounts.retain(|m| m.name != VOLUME_NAME && m.mount_path != CREDENTIALS_DIR);
        mounts.push(VolumeMount {
            name: VOLUME_NAME.into(),
            mount_path: CREDENTIALS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        let vars = c.env.get_or_insert_with(Vec::new);
        for (name, value) in env {
            vars.retain(|e| e.name != name);
            vars.push(EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() });
        }
    }
    Ok(pod)
}

/// The `writ.dev/*` labels and annotations an update adds, changes or
/// removes, each as a violation of `pod-writ-metadata-immutable` naming the
/// key. A pod's claim (`writ.dev/agent`) and its credential Secret
/// (`writ.dev/credential-secret`) are fixed at creation: changed later, they
/// would point Writ at another identity or another pod's Secret.
pub fn writ_metadata_changes(old: &Pod, new: &Pod) -> Vec<Violation> {
    let mut out = Vec::new();
    let sides = [
        ("labels", old.metadata.labels.as_ref(), new.metadata.labels.as_ref()),
        ("annotations", old.metadata.annotations.as_ref(), new.metadata.annotations.as_ref()),
    ];
    for (what, before, after) in sides {
        let empty = BTreeMap::new();
        let (before, after) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
        let keys: std::collections::BTreeSet<&String> =
            before.keys().chain(after.keys()).filter(|k| k.starts_with(WRIT_PREFIX)).collect();
        for key in keys {
            let change = match (before.get(key), after.get(key)) {
                (Some(a), Some(b)) if a == b => continue,
                (None, Some(_)) => "added",
                (Some(_), None) => "removed",
                _ => "changed",
            };
            out.push(Violation::new(
                format!("metadata.{what}[{key}]"),
                Rule::PodWritMetadataImmutable,
                format!("{key} cannot be {change} on an existing pod: writ.dev/* labels and annotations are fixed when the pod is created (create a new pod instead)"),
            ));
        }
    }
    out
}

/// Pod UPDATE: refuses any change of a `writ.dev/*` label or annotation
/// (see [`writ_metadata_changes`]).
pub fn check_update(req: &AdmissionRequest<Pod>) -> Decision {
    let (Some(old), Some(new)) = (req.old_object.as_ref(), req.object.as_ref()) else { return Decision::Allow };
    let violations = writ_metadata_changes(old, new);
    if violations.is_empty() {
        Decision::Allow
    } else {
        Decision::violations(&violations)
    }
}

/// The references of `spec` to another pod's credential Secret, as
/// violations of `foreign-credential-mount`. `owner_of(secret)` names the
/// pod whose credential Secret `secret` is, if any; `own` is the pod's own
/// name (its own Secret is its to mount).
pub fn foreign_credential_mounts(
    spec: &PodSpec,
    own: &str,
    owner_of: impl Fn(&str) -> Option<String>,
) -> Vec<Violation> {
    secret_references(spec)
        .into_iter()
        .filter_map(|r| {
            let owner = owner_of(&r.secret).filter(|o| o != own)?;
            Some(Violation::new(
                r.field,
                Rule::ForeignCredentialMount,
                format!(
                    "Secret {} is the credential Secret of pod {owner}: a credential Secret serves only its pod",
                    r.secret
                ),
            ))
        })
        .collect()
}

/// Pod CREATE (and ephemeral containers added): in a namespace that holds
/// agent pods, refuses a pod reading another pod's credential Secret. The
/// credential Secrets are those the cached agent pods name. This webhook's
/// failure policy is `Ignore` (it sees every pod, and ordinary pods must not
/// depend on Writ): what gets past it is found by the controller
/// ([`crate::controller::credentials::exposures`]).
pub fn check_mounts(shared: &Shared, req: &AdmissionRequest<Pod>) -> Decision {
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return Decision::Allow;
    }
    let Some(pod) = req.object.as_ref() else { return Decision::Allow };
    let Some(spec) = pod.spec.as_ref() else { return Decision::Allow };
    let refs = secret_references(spec);
    if refs.is_empty() {
        return Decision::Allow;
    }
    let namespace = req.namespace.clone().or_else(|| pod.metadata.namespace.clone()).unwrap_or_default();
    let own = pod.metadata.name.clone().unwrap_or_else(|| req.name.clone());
    let agents = shared.pods.state();
    let owner_of = |secret: &str| {
        agents
            .iter()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(namespace.as_str()) && p.credential_secret() == Some(secret)
            })
            .and_then(|p| p.metadata.name.clone())
    };
    let violations = foreign_credential_mounts(spec, &own, owner_of);
    if violations.is_empty() {
        Decision::Allow
    } else {
        Decision::violations(&violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentIdentitySpec, CredentialSpec, IdentityClass};
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn identity(sa: &str) -> AgentIdentity {
        AgentIdentity::new(
            "release-bot",
            AgentIdentitySpec {
                class: IdentityClass::Agent,
                service_account_name: sa.into(),
                owner: "team".into(),
                role: None,
                credential: CredentialSpec::default(),
                ceiling: vec![],
                review: None,
                suspended: false,
            },
        )
    }

    fn pod(sa: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.labels = Some([(AGENT_LABEL.to_string(), "release-bot".to_string())].into());
        p.spec = Some(PodSpec {
            service_account_name: sa.map(str::to_string),
            containers: vec![
                Container { name: "a".into(), ..Default::default() },
                Container { name: "b".into(), ..Default::default() },
            ],
            ..Default::default()
        });
        p
    }

    #[test]
    fn accepted_pods_get_volume_mounts_and_env_in_every_container() {
        let id = identity("release-bot");
        let out =
            inject(&pod(Some("release-bot")), "ci", Some(&id), "spiffe://td/ns/ci/agent/release-bot", "writ-cred-x")
                .expect("claim accepted");
        assert_eq!(out.metadata.annotations.as_ref().unwrap()[CREDENTIAL_SECRET_ANNOTATION], "writ-cred-x");
        let spec = out.spec.unwrap();
        let vol = spec.volumes.unwrap().into_iter().find(|v| v.name == VOLUME_NAME).unwrap();
        assert_eq!(vol.secret.unwrap().secret_name.as_deref(), Some("writ-cred-x"));
        for c in spec.containers {
            let m = c.volume_mounts.unwrap();
            assert!(m.iter().any(|m| m.mount_path == CREDENTIALS_DIR && m.read_only == Some(true)));
            let env = c.env.unwrap();
            assert!(env.iter().any(
                |e| e.name == "WRIT_SPIFFE_ID" && e.value.as_deref() == Some("spiffe://td/ns/ci/agent/release-bot")
            ));
            assert!(env.iter().any(|e| e.name == "WRIT_CREDENTIALS_DIR"));
            assert!(env.iter().any(|e| e.name == "SPIFFE_CREDENTIAL_FOLDER"
                && e.value.as_deref() == Some(CREDENTIALS_DIR.trim_end_matches('/'))));
        }
    }

    #[test]
    fn a_pod_of_another_service_account_is_rejected() {
        let id = identity("release-bot");
        let err = inject(&pod(Some("intruder")), "ci", Some(&id), "s", "n").unwrap_err();
        assert!(matches!(err, ClaimError::WrongServiceAccount { .. }));
        assert!(err.to_string().contains("spec.serviceAccountName"), "{err}");
        // No service account means `default`, which is not the identity's either.
        assert!(inject(&pod(None), "ci", Some(&id), "s", "n").is_err());
    }

    #[test]
    fn an_unknown_identity_is_rejected() {
        let err = inject(&pod(Some("release-bot")), "ci", None, "s", "n").unwrap_err();
        assert!(err.to_string().contains("does not exist in namespace ci"), "{err}");
    }

    fn labelled(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Pod {
        let mut p = Pod::default();
        let map = |kv: &[(&str, &str)]| Some(kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        p.metadata.labels = map(labels);
        p.metadata.annotations = map(annotations);
        p
    }

    #[test]
    fn writ_labels_and_annotations_are_fixed_after_creation() {
        let admitted = labelled(
            &[(AGENT_LABEL, "bot"), ("app", "web")],
            &[(CREDENTIAL_SECRET_ANNOTATION, "writ-cred-1"), ("note", "x")],
        );
        // Other labels and annotations change freely.
        let mut fine = admitted.clone();
        fine.metadata.labels.as_mut().unwrap().insert("app".into(), "api".into());
        fine.metadata.annotations.as_mut().unwrap().remove("note");
        assert!(writ_metadata_changes(&admitted, &fine).is_empty());
        assert!(writ_metadata_changes(&admitted, &admitted).is_empty());

        let relabelled = labelled(&[(AGENT_LABEL, "other")], &[(CREDENTIAL_SECRET_ANNOTATION, "writ-cred-1")]);
        let reannotated = labelled(&[(AGENT_LABEL, "bot")], &[(CREDENTIAL_SECRET_ANNOTATION, "victim-secret")]);
        let unlabelled = labelled(&[], &[(CREDENTIAL_SECRET_ANNOTATION, "writ-cred-1")]);
        let extra = labelled(
            &[(AGENT_LABEL, "bot"), ("writ.dev/anything", "x")],
            &[(CREDENTIAL_SECRET_ANNOTATION, "writ-cred-1")],
        );
        for (new, field, change) in [
            (&relabelled, "metadata.labels[writ.dev/agent]", "changed"),
            (&reannotated, "metadata.annotations[writ.dev/credential-secret]", "changed"),
            (&unlabelled, "metadata.labels[writ.dev/agent]", "removed"),
            (&extra, "metadata.labels[writ.dev/anything]", "added"),
        ] {
            let v = writ_metadata_changes(&admitted, new);
            assert_eq!(v.len(), 1, "{field}: {v:?}");
            assert_eq!((v[0].field.as_str(), v[0].rule), (field, Rule::PodWritMetadataImmutable));
            let text = v[0].to_string();
            assert!(text.contains(change) && text.ends_with("[pod-writ-metadata-immutable]"), "{text}");
        }
        // A plain pod that later claims an agent and names a victim's Secret.
        let plain = labelled(&[("app", "x")], &[]);
        let claim =
            labelled(&[("app", "x"), (AGENT_LABEL, "nosuch")], &[(CREDENTIAL_SECRET_ANNOTATION, "writ-cred-victim")]);
        let fields: Vec<String> = writ_metadata_changes(&plain, &claim).into_iter().map(|v| v.field).collect();
        assert_eq!(fields, vec!["metadata.labels[writ.dev/agent]", "metadata.annotations[writ.dev/credential-secret]"]);
    }

    #[test]
    fn every_way_of_reading_a_secret_is_found() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol"}},
                {"name": "b", "projected": {"sources": [{"configMap": {"name": "cm"}}, {"secret": {"name": "proj"}}]}},
                {"name": "c", "emptyDir": {}}
            ],
            "containers": [{"name": "c", "env": [
                {"name": "X", "value": "1"},
                {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}}
            ], "envFrom": [{"configMapRef": {"name": "cm"}}, {"secretRef": {"name": "envfrom"}}]}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init"}}]}],
            "ephemeralContainers": [{"name": "e", "env": [{"name": "Z", "valueFrom": {"secretKeyRef": {"name": "eph", "key": "k"}}}]}]
        }))
        .expect("spec");
        let refs: Vec<(String, String)> = secret_references(&spec).into_iter().map(|r| (r.field, r.secret)).collect();
        let expected = [
            ("spec.volumes[0].secret.secretName", "vol"),
            ("spec.volumes[1].projected.sources[1].secret.name", "proj"),
            ("spec.containers[0].env[1].valueFrom.secretKeyRef.name", "env"),
            ("spec.containers[0].envFrom[1].secretRef.name", "envfrom"),
            ("spec.initContainers[0].envFrom[0].secretRef.name", "init"),
            ("spec.ephemeralContainers[0].env[0].valueFrom.secretKeyRef.name", "eph"),
        ];
        assert_eq!(refs, expected.map(|(f, s)| (f.to_string(), s.to_string())).to_vec());

        // Each is refused when it is another pod's credential Secret, not when it is the pod's own.
        let owner_of =
            |s: &str| (s != "init").then(|| if s == "vol" { "me".to_string() } else { "victim".to_string() });
        let v = foreign_credential_mounts(&spec, "me", owner_of);
        assert_eq!(v.len(), 4, "{v:?}");
        assert!(v.iter().all(|v| v.rule == Rule::ForeignCredentialMount));
        assert!(
            v[0].to_string().starts_with(
                "spec.volumes[1].projected.sources[1].secret.name: Secret proj is the credential Secret of pod victim"
            ),
            "{}",
            v[0]
        );
        assert!(foreign_credential_mounts(&spec, "me", |_| None).is_empty(), "no credential Secret, nothing refused");
    }
}
