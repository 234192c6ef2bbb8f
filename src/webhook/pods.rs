//! Pod injection: a pod labelled `writ.dev/agent: <name>` claims that
//! AgentIdentity; accepted pods get the credential Secret volume and the
//! `WRIT_*` environment.

use k8s_openapi::api::core::v1::{EnvVar, Pod, SecretVolumeSource, Volume, VolumeMount};

use crate::api::{AgentIdentity, AGENT_LABEL, CREDENTIALS_DIR, CREDENTIAL_SECRET_ANNOTATION};

/// Name of the injected volume.
pub const VOLUME_NAME: &str = "writ-credentials";

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

/// `serviceAccountName`, else its deprecated alias `serviceAccount`, else
/// `default`: the API server's rule, for admitted and cached pods alike.
pub fn effective_service_account<'a>(name: Option<&'a str>, alias: Option<&'a str>) -> &'a str {
    name.or(alias).filter(|s| !s.is_empty()).unwrap_or("default")
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
    let env = [("WRIT_SPIFFE_ID", spiffe_id), ("WRIT_CREDENTIALS_DIR", CREDENTIALS_DIR)];
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
}
