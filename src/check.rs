//! `writ check`: the admission rules, offline, on YAML files, so a GitOps
//! pipeline can refuse an over-broad grant before it is merged.
//!
//! Files are read as multi-document YAML; directories are walked recursively
//! for `*.yaml` and `*.yml`, in sorted order. Documents with apiVersion
//! `writ.dev/v1alpha1` and kind AgentIdentity, DelegationPolicy or
//! CapabilityGrant are checked; other kinds are ignored. A document that
//! cannot be read as its kind is a load error (naming file, document and
//! cause), as is any other `writ.dev` version.
//!
//! Each object is checked as the webhook would check it on creation, with
//! the other objects of the same set as its world:
//! * identities and policies with [`validate_identity`] and [`validate_policy`];
//! * grants with [`admit_grant`], requested by the `--as` user and groups. A
//!   delegated grant is requested by the agent holding its parent (that
//!   agent's service account), since only that agent may create it.
//! * Parents are looked up in the set by namespace and name; a parent found
//!   there is treated as Active, expiring `now + its ttl`, and the chain's
//!   root as requested by the `--as` user. A parent not in the set is
//!   `parent-not-found`.
//! * Objects without `metadata.namespace` are in `--namespace` (default `default`).

#![warn(missing_docs)]

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::api::{AgentIdentity, CapabilityGrant, CapabilityGrantStatus, DelegationPolicy, GrantPhase};
use crate::policy::{
    admit_grant, validate_identity, validate_policy, GrantContext, Limits, Requester, Violation, SERVICE_ACCOUNT_PREFIX,
};

/// The API version `writ check` reads.
const API_VERSION: &str = "writ.dev/v1alpha1";

/// How to check: who is asking, and the operator's limits.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// The user the grants are requested as (`--as`).
    pub user: String,
    /// That user's groups (`--group`, repeatable).
    pub groups: Vec<String>,
    /// The namespace of objects that do not name one (`--namespace`, default `default`).
    pub namespace: Option<String>,
    /// The operator's limits to check against.
    pub limits: Limits,
    /// The time to check at (parents expire relative to it).
    pub now: Timestamp,
}

impl CheckOptions {
    /// Options for `user` with its groups, the default limits, and the current time.
    pub fn new(user: impl Into<String>, groups: Vec<String>) -> Self {
        Self { user: user.into(), groups, namespace: None, limits: Limits::default(), now: Timestamp::now() }
    }
}

/// One violation of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The file the object came from.
    pub file: PathBuf,
    /// `AgentIdentity`, `DelegationPolicy` or `CapabilityGrant`.
    pub kind: &'static str,
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// What is wrong.
    pub violation: Violation,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}/{}/{}: {}", self.file.display(), self.kind, self.namespace, self.name, self.violation)
    }
}

/// The outcome of a check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Every violation found, file by file in load order.
    pub violations: Vec<Finding>,
    /// How many Writ objects were checked.
    pub objects_checked: usize,
}

impl CheckReport {
    /// Whether every object passed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The rule ids found, in order (handy for tests and scripts).
    pub fn rule_ids(&self) -> Vec<&'static str> {
        self.violations.iter().map(|f| f.violation.rule.id()).collect()
    }

    /// One line per violation, then a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for finding in &self.violations {
            out.push_str(&finding.to_string());
            out.push('\n');
        }
        let objects = plural(self.objects_checked, "object");
        if self.passed() {
            out.push_str(&format!("ok: {objects} checked, no violations\n"));
        } else {
            let mut failing: Vec<_> =
                self.violations.iter().map(|f| (&f.file, f.kind, &f.namespace, &f.name)).collect();
            failing.dedup();
            out.push_str(&format!(
                "FAILED: {} in {} of {objects} checked\n",
                plural(self.violations.len(), "violation"),
                failing.len()
            ));
        }
        out
    }
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A document that could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentError {
    /// The file.
    pub file: PathBuf,
    /// The document's position in the file, from 1.
    pub document: usize,
    /// What went wrong (the YAML or serde error).
    pub message: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}: {}", self.file.display(), self.document, self.message)
    }
}

/// Why the files could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A file or directory could not be read.
    #[error("reading {path}: {source}", path = path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Some documents are not valid YAML or not valid Writ objects.
    #[error("{}", render_documents(.0))]
    Documents(Vec<DocumentError>),
}

fn render_documents(errors: &[DocumentError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// A loaded object and where it came from.
struct Loaded<T> {
    file: PathBuf,
    object: T,
}

#[derive(Default)]
struct ObjectSet {
    identities: Vec<Loaded<AgentIdentity>>,
    policies: Vec<Loaded<DelegationPolicy>>,
    grants: Vec<Loaded<CapabilityGrant>>,
}

/// Loads every Writ object under `paths` and checks it against the others.
/// `Err` when a file cannot be read or a document cannot be loaded (nothing
/// is checked then); otherwise the report of violations.
pub fn check_paths(paths: &[PathBuf], opts: &CheckOptions) -> Result<CheckReport, CheckError> {
    let namespace = opts.namespace.as_deref().unwrap_or("default");
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    let mut set = ObjectSet::default();
    let mut errors = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).map_err(|source| CheckError::Io { path: file.clone(), source })?;
        load_documents(file, &text, namespace, &mut set, &mut errors);
    }
    if !errors.is_empty() {
        return Err(CheckError::Documents(errors));
    }
    Ok(check_set(&set, opts))
}

/// [`check_paths`] over one YAML text (as if read from `name`).
pub fn check_str(name: &str, text: &str, opts: &CheckOptions) -> Result<CheckReport, CheckError> {
    let namespace = opts.namespace.as_deref().unwrap_or("default");
    let mut set = ObjectSet::default();
    let mut errors = Vec::new();
    load_documents(Path::new(name), text, namespace, &mut set, &mut errors);
    if !errors.is_empty() {
        return Err(CheckError::Documents(errors));
    }
    Ok(check_set(&set, opts))
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), CheckError> {
    let io = |source| CheckError::Io { path: path.to_path_buf(), source };
    if !path.is_dir() {
        fs::metadata(path).map_err(io)?;
        files.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> =
        fs::read_dir(path).map_err(io)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(io)?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect_files(&entry, files)?;
        } else if entry.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(entry);
        }
    }
    Ok(())
}

/// The parser's options for untrusted repository YAML: serde-saphyr's
/// default budgets (events, nodes, nesting depth, alias replays) bound the
/// work any file can cause, duplicate keys are an error (the API server's
/// strict decoding refuses them too), and errors are one line without a
/// source snippet, so each names its file and document through
/// [`DocumentError`].
fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options
}

/// Loads the Writ objects of one file's YAML stream into `set`. Documents
/// are numbered from 1 among the non-empty ones (empty and `null` documents
/// are skipped, as `kubectl apply` skips them).
fn load_documents(file: &Path, text: &str, namespace: &str, set: &mut ObjectSet, errors: &mut Vec<DocumentError>) {
    let mut reader = text.as_bytes();
    let documents = serde_saphyr::read_with_options::<_, serde_json::Value>(&mut reader, yaml_options());
    for (i, document) in documents.enumerate() {
        let error = |message: String| DocumentError { file: file.to_path_buf(), document: i + 1, message };
        let value = match document {
            Ok(serde_json::Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                let e = e.to_string().replace(", set DuplicateKeyPolicy in Options if acceptable", "");
                // After a syntax error the reader ends the stream itself; a
                // document that is valid YAML but no JSON-shaped object (a
                // non-string key, say) is skipped and the next one read.
                errors.push(error(format!("not valid YAML: {e}")));
                continue;
            }
        };
        let field = |key: &str| value.get(key).and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        if api_version != API_VERSION {
            if api_version.starts_with("writ.dev/") {
                errors.push(error(format!("{kind}: unsupported apiVersion {api_version}; use {API_VERSION}")));
            }
            continue;
        }
        let result = match kind.as_str() {
            "AgentIdentity" => load(value, namespace, |o: &mut AgentIdentity| &mut o.metadata.namespace)
                .map(|object| set.identities.push(Loaded { file: file.to_path_buf(), object })),
            "DelegationPolicy" => load(value, namespace, |o: &mut DelegationPolicy| &mut o.metadata.namespace)
                .map(|object| set.policies.push(Loaded { file: file.to_path_buf(), object })),
            "CapabilityGrant" => load(value, namespace, |o: &mut CapabilityGrant| &mut o.metadata.namespace)
                .map(|object| set.grants.push(Loaded { file: file.to_path_buf(), object })),
            other => Err(format!("unknown kind {other:?} in {API_VERSION}")),
        };
        if let Err(message) = result {
            errors.push(error(format!("{kind}: {message}")));
        }
    }
}

fn load<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    namespace: &str,
    ns_of: impl Fn(&mut T) -> &mut Option<String>,
) -> Result<T, String> {
    let mut object: T = serde_json::from_value(value).map_err(|e| e.to_string())?;
    ns_of(&mut object).get_or_insert_with(|| namespace.to_string());
    Ok(object)
}

fn check_set(set: &ObjectSet, opts: &CheckOptions) -> CheckReport {
    let mut report = CheckReport {
        objects_checked: set.identities.len() + set.policies.len() + set.grants.len(),
        ..CheckReport::default()
    };
    let mut push = |file: &Path, kind: &'static str, meta: &ObjectMeta, violations: Vec<Violation>| {
        for violation in violations {
            report.violations.push(Finding {
                file: file.to_path_buf(),
                kind,
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_else(|| "(unnamed)".to_string()),
                violation,
            });
        }
    };
    for Loaded { file, object } in &set.identities {
        push(file, "AgentIdentity", &object.metadata, validate_identity(object, &opts.limits));
    }
    for Loaded { file, object } in &set.policies {
        push(file, "DelegationPolicy", &object.metadata, validate_policy(object, &opts.limits));
    }
    for Loaded { file, object } in &set.grants {
        push(file, "CapabilityGrant", &object.metadata, check_grant(object, set, opts));
    }
    report
}

fn check_grant(grant: &CapabilityGrant, set: &ObjectSet, opts: &CheckOptions) -> Vec<Violation> {
    let ns = grant.metadata.namespace.as_deref().unwrap_or("default");
    let in_ns = |meta: &ObjectMeta| meta.namespace.as_deref() == Some(ns);
    let identities: Vec<AgentIdentity> =
        set.identities.iter().map(|l| &l.object).filter(|o| in_ns(&o.metadata)).cloned().collect();
    let policies: Vec<DelegationPolicy> =
        set.policies.iter().map(|l| &l.object).filter(|o| in_ns(&o.metadata)).cloned().collect();
    let find_grant = |name: &str| {
        set.grants.iter().map(|l| &l.object).find(|g| in_ns(&g.metadata) && g.metadata.name.as_deref() == Some(name))
    };
    let agent = identities.iter().find(|i| i.metadata.name.as_deref() == Some(grant.spec.agent.as_str()));

    let mut ancestors: Vec<CapabilityGrant> = Vec::new();
    let mut seen: Vec<&str> = grant.metadata.name.as_deref().into_iter().collect();
    let mut next = grant.spec.parent.as_deref();
    while let Some(name) = next {
        let Some(found) = find_grant(name) else { break };
        ancestors.push(as_active(found, opts));
        if seen.contains(&name) {
            break;
        }
        seen.push(name);
        next = found.spec.parent.as_deref();
    }

    let requester = match ancestors.first() {
        Some(parent) => parent_holder(parent, &identities, ns),
        None => Requester::from_user_info(opts.user.clone(), opts.groups.clone(), &identities, ns),
    };
    let ctx = GrantContext {
        namespace: ns,
        requester: &requester,
        agent,
        policies: &policies,
        ancestors: &ancestors,
        now: opts.now,
        limits: &opts.limits,
    };
    admit_grant(grant, &ctx).err().unwrap_or_default()
}

/// The grant as it would be once Active: expiring `now + ttl`, requested by
/// the `--as` user (for the root of a chain).
fn as_active(grant: &CapabilityGrant, opts: &CheckOptions) -> CapabilityGrant {
    let mut active = grant.clone();
    let expires = opts.now.checked_add(SignedDuration::from_secs(grant.spec.ttl.as_secs_i64())).unwrap_or(opts.now);
    let status = active.status.get_or_insert_with(CapabilityGrantStatus::default);
    status.phase = GrantPhase::Active;
    status.expires_at = Some(Time(expires));
    status.requested_by.get_or_insert_with(|| opts.user.clone());
    active
}

/// The requester of a delegated grant: the agent holding the parent, through
/// its service account.
fn parent_holder(parent: &CapabilityGrant, identities: &[AgentIdentity], ns: &str) -> Requester {
    let agent = &parent.spec.agent;
    let service_account = identities
        .iter()
        .find(|i| i.metadata.name.as_deref() == Some(agent.as_str()))
        .map_or(agent.as_str(), |i| i.spec.service_account_name.as_str());
    Requester {
        username: format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{service_account}"),
        groups: vec!["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{ns}")],
        agent: Some(agent.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures(dir: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check").join(dir)
    }

    fn opts() -> CheckOptions {
        let mut o = CheckOptions::new("alice", vec!["release-managers".to_string()]);
        o.namespace = Some("ci".to_string());
        o
    }

    #[test]
    fn sound_fixtures_pass() {
        let report = check_paths(&[fixtures("ok")], &opts()).expect("loads");
        assert!(report.passed(), "{}", report.render());
        assert_eq!(report.objects_checked, 8);
        assert_eq!(report.render(), "ok: 8 objects checked, no violations\n");
    }

    #[test]
    fn overbroad_fixtures_fail_with_the_expected_rules() {
        let report = check_paths(&[fixtures("overbroad")], &opts()).expect("loads");
        assert!(!report.passed());
        let mut ids = report.rule_ids();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids,
            vec![
                "dot-segment",
                "no-audience",
                "not-covered-by-policy",
                "outside-ceiling",
                "overbroad-pattern",
                "ttl-above-operator-max",
                "ttl-above-policy",
                "wildcard-in-grant",
            ],
            "{}",
            report.render()
        );
        let rendered = report.render();
        assert!(
            rendered.contains(
                "grants.yaml: CapabilityGrant/ci/deploy-everything: spec.capabilities[0].resource: resource \
                 \"k8s:staging/deployments/*\" contains '*': a grant names exact resources only [wildcard-in-grant]"
            ),
            "{rendered}"
        );
        assert!(rendered.lines().last().is_some_and(|l| l.starts_with("FAILED: ")), "{rendered}");
    }

    #[test]
    fn the_repository_examples_pass() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let report = check_paths(&[examples], &opts()).expect("loads");
        assert!(report.passed(), "{}", report.render());
    }

    #[test]
    fn the_requester_decides_what_passes() {
        let mut o = opts();
        o.user = "mallory".to_string();
        o.groups.clear();
        let report = check_paths(&[fixtures("ok")], &o).expect("loads");
        assert!(report.rule_ids().contains(&"no-delegation-policy"), "{}", report.render());
    }

    #[test]
    fn documents_that_do_not_load_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.yaml");
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n\
                    apiVersion: writ.dev/v1alpha1\nkind: CapabilityGrant\nmetadata: {name: g}\nspec: {agent: a}\n---\n\
                    apiVersion: writ.dev/v1beta9\nkind: AgentIdentity\n";
        fs::write(&path, text).expect("write");
        fs::write(dir.path().join("ignored.txt"), "not: [yaml").expect("write");
        let err = check_paths(&[dir.path().to_path_buf()], &opts()).expect_err("load error");
        let CheckError::Documents(errors) = &err else { panic!("{err}") };
        assert_eq!(errors.len(), 2, "{err}");
        assert_eq!(errors[0].document, 2);
        assert!(errors[0].message.starts_with("CapabilityGrant: "), "{}", errors[0]);
        assert!(errors[0].message.contains("missing field"), "{}", errors[0]);
        assert_eq!(errors[1].document, 3);
        assert!(err.to_string().contains("bad.yaml: document 3: AgentIdentity: unsupported apiVersion"), "{err}");
    }

    #[test]
    fn invalid_yaml_and_missing_files_are_load_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broken.yml");
        fs::write(&path, "kind: [unclosed\n").expect("write");
        let err = check_paths(&[path], &opts()).expect_err("load error");
        assert!(err.to_string().contains("document 1: not valid YAML"), "{err}");
        let err = check_paths(&[dir.path().join("missing.yaml")], &opts()).expect_err("io error");
        assert!(matches!(err, CheckError::Io { .. }), "{err}");
    }
}
