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

/// One Writ object that was checked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CheckedObject {
    /// The file it came from.
    pub file: PathBuf,
    /// `AgentIdentity`, `DelegationPolicy` or `CapabilityGrant`.
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// The outcome of a check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Every violation found, file by file in load order.
    pub violations: Vec<Finding>,
    /// How many Writ objects were checked.
    pub objects_checked: usize,
    /// Every object checked, in load order (identities, policies, grants).
    pub objects: Vec<CheckedObject>,
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

    /// The distinct rule ids that refuse one object, sorted (empty: allowed).
    pub fn rules_for(&self, object: &CheckedObject) -> Vec<&'static str> {
        let mut ids: Vec<_> = self
            .violations
            .iter()
            .filter(|f| {
                f.file == object.file
                    && f.kind == object.kind
                    && f.namespace == object.namespace
                    && f.name == object.name
            })
            .map(|f| f.violation.rule.id())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The report in `format` (text: [`CheckReport::render`]).
    pub fn render_as(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Text => self.render(),
            OutputFormat::Json => json_line(&self.to_json()),
            OutputFormat::Junit => self.to_junit(),
        }
    }

    /// The report as JSON: `passed`, `objectsChecked`, and each violation with
    /// its file, object, field, rule id and message.
    pub fn to_json(&self) -> serde_json::Value {
        let violations: Vec<_> = self
            .violations
            .iter()
            .map(|f| {
                serde_json::json!({
                    "file": f.file.display().to_string(),
                    "kind": f.kind,
                    "namespace": f.namespace,
                    "name": f.name,
                    "field": f.violation.field,
                    "rule": f.violation.rule.id(),
                    "message": f.violation.message,
                })
            })
            .collect();
        serde_json::json!({
            "passed": self.passed(),
            "objectsChecked": self.objects_checked,
            "violations": violations,
        })
    }

    /// The report as a JUnit XML test suite: one test case per object, failed
    /// with its violations.
    pub fn to_junit(&self) -> String {
        let cases: Vec<JunitCase> = self
            .objects
            .iter()
            .map(|o| {
                let failures: Vec<String> = self
                    .violations
                    .iter()
                    .filter(|f| f.file == o.file && f.kind == o.kind && f.namespace == o.namespace && f.name == o.name)
                    .map(|f| f.violation.to_string())
                    .collect();
                JunitCase {
                    class: o.file.display().to_string(),
                    name: format!("{}/{}/{}", o.kind, o.namespace, o.name),
                    failure: (!failures.is_empty()).then(|| failures.join("\n")),
                }
            })
            .collect();
        junit("writ check", &cases)
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
    /// A `--test` file is not a valid test.
    #[error("{path}: {message}", path = path.display())]
    Test {
        /// The test file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
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
        report.objects.push(CheckedObject {
            file: file.to_path_buf(),
            kind,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_else(|| "(unnamed)".to_string()),
        });
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

/// How `writ check` prints its result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One line per violation (or per expected result) and a summary.
    #[default]
    Text,
    /// One JSON object.
    Json,
    /// A JUnit XML test suite, for CI test reports.
    Junit,
}

fn json_line(value: &serde_json::Value) -> String {
    let mut out = serde_json::to_string_pretty(value).unwrap_or_default();
    out.push('\n');
    out
}

/// One JUnit test case: `failure` holds the failure text, `None` when it passed.
struct JunitCase {
    class: String,
    name: String,
    failure: Option<String>,
}

/// A JUnit XML document with one test suite named `suite`.
fn junit(suite: &str, cases: &[JunitCase]) -> String {
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites name=\"{s}\" tests=\"{n}\" failures=\"{failures}\" errors=\"0\">\n  <testsuite name=\"{s}\" tests=\"{n}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\">\n",
        s = xml_escape(suite),
        n = cases.len()
    ));
    for case in cases {
        let head =
            format!("    <testcase classname=\"{}\" name=\"{}\"", xml_escape(&case.class), xml_escape(&case.name));
        match &case.failure {
            None => out.push_str(&format!("{head}/>\n")),
            Some(text) => {
                let first = text.lines().next().unwrap_or_default();
                out.push_str(&format!(
                    "{head}>\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                    xml_escape(first),
                    xml_escape(text)
                ));
            }
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// Escapes text for XML attributes and content; characters XML 1.0 cannot
/// carry (most C0 controls) become U+FFFD.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The API version of a `writ check --test` file.
pub const TEST_API_VERSION: &str = "cli.writ.dev/v1alpha1";

/// A `writ check --test` file, in the style of `kyverno test`: the resources
/// to check, who requests them, and the outcome expected for each.
///
/// ```yaml
/// apiVersion: cli.writ.dev/v1alpha1
/// kind: Test
/// metadata: {name: release-flow}
/// as: alice
/// groups: [release-managers]
/// namespace: ci
/// resources: [../01-identities.yaml, grants.yaml]
/// results:
///   - {kind: CapabilityGrant, name: deploy-web, result: allow}
///   - {kind: CapabilityGrant, name: deploy-all, result: deny, rules: [wildcard-in-grant]}
/// ```
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckTest {
    /// Always `cli.writ.dev/v1alpha1`.
    pub api_version: String,
    /// Always `Test`.
    pub kind: String,
    /// The test's name.
    #[serde(default)]
    pub metadata: TestMetadata,
    /// The requester the grants are checked as.
    #[serde(rename = "as")]
    pub user: String,
    /// That requester's groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The namespace of objects that do not name one (default `default`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Files or directories to check, relative to the test file.
    pub resources: Vec<PathBuf>,
    /// The outcome expected for each object listed (objects not listed are checked but not asserted).
    pub results: Vec<ExpectedResult>,
}

/// A test's `metadata`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct TestMetadata {
    /// The test's name.
    #[serde(default)]
    pub name: String,
}

/// The outcome expected for one object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExpectedResult {
    /// `AgentIdentity`, `DelegationPolicy` or `CapabilityGrant`.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// The object's namespace (default: the test's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `allow` or `deny`.
    pub result: Outcome,
    /// For `deny`: exactly the rule ids that refuse it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
}

/// What admission does with an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Admitted.
    Allow,
    /// Refused.
    Deny,
}

/// The result of one expected outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCase {
    /// What the test expects.
    pub expected: ExpectedResult,
    /// The rule ids that refuse the object (empty: allowed); `None` when no such object was checked.
    pub actual: Option<Vec<String>>,
}

impl TestCase {
    /// Whether the object was found and its outcome (and rules) are as expected.
    pub fn passed(&self) -> bool {
        let Some(actual) = &self.actual else { return false };
        match self.expected.result {
            Outcome::Allow => actual.is_empty(),
            Outcome::Deny => {
                let mut expected = self.expected.rules.clone();
                expected.sort();
                expected.dedup();
                !actual.is_empty() && *actual == expected
            }
        }
    }

    fn object(&self, namespace: &str) -> String {
        format!(
            "{}/{}/{}",
            self.expected.kind,
            self.expected.namespace.as_deref().unwrap_or(namespace),
            self.expected.name
        )
    }

    fn describe_actual(&self) -> String {
        match &self.actual {
            None => "not found among the resources".to_string(),
            Some(rules) if rules.is_empty() => "allow".to_string(),
            Some(rules) => format!("deny [{}]", rules.join(", ")),
        }
    }

    fn describe_expected(&self) -> String {
        match self.expected.result {
            Outcome::Allow => "allow".to_string(),
            Outcome::Deny => format!("deny [{}]", self.expected.rules.join(", ")),
        }
    }
}

/// The outcome of a `writ check --test` run.
#[derive(Clone, Debug)]
pub struct TestReport {
    /// The test file.
    pub file: PathBuf,
    /// The test's name.
    pub name: String,
    /// The namespace objects default to.
    pub namespace: String,
    /// One case per expected result, in the file's order.
    pub cases: Vec<TestCase>,
    /// The check the cases were read from.
    pub check: CheckReport,
}

impl TestReport {
    /// Whether every expected result held.
    pub fn passed(&self) -> bool {
        self.cases.iter().all(TestCase::passed)
    }

    /// The report in `format`.
    pub fn render_as(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Text => self.render(),
            OutputFormat::Json => json_line(&self.to_json()),
            OutputFormat::Junit => self.to_junit(),
        }
    }

    /// One line per expected result (`PASS`/`FAIL`, the object, the outcome), then a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for case in &self.cases {
            let object = case.object(&self.namespace);
            if case.passed() {
                out.push_str(&format!("PASS  {object}: {}\n", case.describe_expected()));
            } else {
                out.push_str(&format!(
                    "FAIL  {object}: expected {}, got {}\n",
                    case.describe_expected(),
                    case.describe_actual()
                ));
            }
        }
        let failed = self.cases.iter().filter(|c| !c.passed()).count();
        let total = plural(self.cases.len(), "result");
        if failed == 0 {
            out.push_str(&format!("ok: {total} as expected ({})\n", self.file.display()));
        } else {
            out.push_str(&format!("FAILED: {failed} of {total} not as expected ({})\n", self.file.display()));
        }
        out
    }

    /// The report as JSON: the test, `passed`, and each case with its expected and actual outcome.
    pub fn to_json(&self) -> serde_json::Value {
        let cases: Vec<_> = self
            .cases
            .iter()
            .map(|c| {
                serde_json::json!({
                    "object": c.object(&self.namespace),
                    "expected": c.expected,
                    "actual": match &c.actual {
                        None => serde_json::Value::Null,
                        Some(rules) if rules.is_empty() => serde_json::json!({"result": "allow"}),
                        Some(rules) => serde_json::json!({"result": "deny", "rules": rules}),
                    },
                    "passed": c.passed(),
                })
            })
            .collect();
        serde_json::json!({
            "test": self.name,
            "file": self.file.display().to_string(),
            "passed": self.passed(),
            "results": cases,
            "check": self.check.to_json(),
        })
    }

    /// The report as a JUnit XML test suite: one test case per expected result.
    pub fn to_junit(&self) -> String {
        let cases: Vec<JunitCase> = self
            .cases
            .iter()
            .map(|c| JunitCase {
                class: self.name.clone(),
                name: format!("{} is {}", c.object(&self.namespace), c.describe_expected()),
                failure: (!c.passed())
                    .then(|| format!("expected {}, got {}", c.describe_expected(), c.describe_actual())),
            })
            .collect();
        junit(&format!("writ check --test {}", self.file.display()), &cases)
    }
}

/// Reads a `writ check --test` file, checks its resources, and compares each
/// object's outcome with the one expected. `Err` when the test file is not a
/// valid test (naming the field) or the resources cannot be loaded.
pub fn run_test(path: &Path) -> Result<TestReport, CheckError> {
    let invalid = |message: String| CheckError::Test { path: path.to_path_buf(), message };
    let text = fs::read_to_string(path).map_err(|source| CheckError::Io { path: path.to_path_buf(), source })?;
    let test: CheckTest = serde_saphyr::from_str_with_options(&text, yaml_options())
        .map_err(|e| invalid(format!("not a valid test: {e}")))?;
    if test.api_version != TEST_API_VERSION || test.kind != "Test" {
        return Err(invalid(format!(
            "apiVersion/kind: {}/{} is not a test; use apiVersion {TEST_API_VERSION}, kind Test",
            test.api_version, test.kind
        )));
    }
    if test.resources.is_empty() {
        return Err(invalid("resources: lists no file or directory to check".to_string()));
    }
    let known: Vec<&str> = crate::policy::Rule::ALL.iter().map(|r| r.id()).collect();
    for (i, expected) in test.results.iter().enumerate() {
        match expected.result {
            Outcome::Allow if !expected.rules.is_empty() => {
                return Err(invalid(format!("results[{i}].rules: an allowed object is refused by no rule")))
            }
            Outcome::Deny if expected.rules.is_empty() => {
                return Err(invalid(format!("results[{i}].rules: a denial names the rule ids expected to refuse it")))
            }
            _ => {}
        }
        if let Some(unknown) = expected.rules.iter().find(|r| !known.contains(&r.as_str())) {
            return Err(invalid(format!("results[{i}].rules: {unknown:?} is not a rule id (see docs/rules.md)")));
        }
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let resources: Vec<PathBuf> = test.resources.iter().map(|r| base.join(r)).collect();
    let mut opts = CheckOptions::new(test.user.clone(), test.groups.clone());
    let namespace = test.namespace.clone().unwrap_or_else(|| "default".to_string());
    opts.namespace = Some(namespace.clone());
    let check = check_paths(&resources, &opts)?;
    let cases = test
        .results
        .iter()
        .map(|expected| {
            let ns = expected.namespace.as_deref().unwrap_or(&namespace);
            let actual = check
                .objects
                .iter()
                .find(|o| o.kind == expected.kind && o.name == expected.name && o.namespace == ns)
                .map(|o| check.rules_for(o).into_iter().map(str::to_string).collect());
            TestCase { expected: expected.clone(), actual }
        })
        .collect();
    Ok(TestReport { file: path.to_path_buf(), name: test.metadata.name, namespace, cases, check })
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

    /// The scenario in `examples/*.yaml` passes. `examples/check-test/` holds
    /// grants that must be refused; its test file asserts each outcome
    /// (`the_check_test_example_holds`).
    #[test]
    fn the_repository_examples_pass() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut files: Vec<PathBuf> = fs::read_dir(&examples)
            .expect("examples/")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        assert!(files.len() >= 4, "{files:?}");
        let report = check_paths(&files, &opts()).expect("loads");
        assert!(report.passed(), "{}", report.render());
        assert_eq!(report.objects_checked, 6, "{}", report.render());
    }

    fn example_test() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/check-test/writ-test.yaml")
    }

    #[test]
    fn the_check_test_example_holds() {
        let report = run_test(&example_test()).expect("runs");
        assert!(report.passed(), "{}", report.render());
        assert_eq!(report.cases.len(), 7);
        assert_eq!(report.name, "release-flow-grants");
        let text = report.render();
        assert!(
            text.contains("PASS  CapabilityGrant/ci/deploy-prod: deny [not-covered-by-policy, outside-ceiling]\n"),
            "{text}"
        );
        assert!(text.contains("ok: 7 results as expected ("), "{text}");
        let junit = report.to_junit();
        assert!(junit.contains("tests=\"7\" failures=\"0\""), "{junit}");
        let json = report.to_json();
        assert_eq!(json["passed"], true);
        assert_eq!(json["results"][4]["actual"]["rules"][0], "wildcard-in-grant");
    }

    /// A test whose expectations do not hold: an allow that is refused, a
    /// denial by other rules than expected, and an object not in the set, each a
    /// failed case naming what was expected and what happened.
    #[test]
    fn mismatched_expectations_fail_each_case() {
        let dir = tempfile::tempdir().expect("tempdir");
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let test = format!(
            "apiVersion: cli.writ.dev/v1alpha1\nkind: Test\nmetadata: {{name: wrong}}\nas: alice\ngroups: [release-managers]\n\
             namespace: ci\nresources: [{examples}/01-identities.yaml, {examples}/02-delegation-policy.yaml, {examples}/check-test/grants.yaml]\n\
             results:\n\
             - {{kind: CapabilityGrant, name: deploy-prod, result: allow}}\n\
             - {{kind: CapabilityGrant, name: deploy-everything, result: deny, rules: [ttl-above-policy]}}\n\
             - {{kind: CapabilityGrant, name: deploy-web, result: deny, rules: [no-audience]}}\n\
             - {{kind: CapabilityGrant, name: missing, result: allow}}\n\
             - {{kind: CapabilityGrant, name: deploy-web-all-day, result: deny, rules: [ttl-above-policy]}}\n",
            examples = examples.display()
        );
        let path = dir.path().join("t.yaml");
        fs::write(&path, test).expect("write");
        let report = run_test(&path).expect("runs");
        assert!(!report.passed());
        let passed: Vec<bool> = report.cases.iter().map(TestCase::passed).collect();
        assert_eq!(passed, vec![false, false, false, false, true]);
        let text = report.render();
        assert!(
            text.contains("FAIL  CapabilityGrant/ci/deploy-prod: expected allow, got deny [not-covered-by-policy, outside-ceiling]"),
            "{text}"
        );
        assert!(
            text.contains("FAIL  CapabilityGrant/ci/missing: expected allow, got not found among the resources"),
            "{text}"
        );
        assert!(text.contains("FAILED: 4 of 5 results not as expected"), "{text}");
        assert!(report.to_junit().contains("failures=\"4\""));
    }

    #[test]
    fn invalid_test_files_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("kind: Test\napiVersion: cli.writ.dev/v1alpha1\nas: a\nresources: [x]\nresults:\n- {kind: CapabilityGrant, name: g, result: deny}\n", "results[0].rules: a denial names"),
            ("kind: Test\napiVersion: cli.writ.dev/v1alpha1\nas: a\nresources: [x]\nresults:\n- {kind: CapabilityGrant, name: g, result: deny, rules: [no-such-rule]}\n", "results[0].rules: \"no-such-rule\" is not a rule id"),
            ("kind: Test\napiVersion: cli.writ.dev/v1alpha1\nas: a\nresources: []\nresults: []\n", "resources: lists no file"),
            ("kind: Policy\napiVersion: cli.writ.dev/v1alpha1\nas: a\nresources: [x]\nresults: []\n", "apiVersion/kind"),
            ("kind: Test\napiVersion: cli.writ.dev/v1alpha1\nas: a\nresources: [x]\nresults: []\nextra: 1\n", "not a valid test"),
        ];
        for (text, needle) in cases {
            let path = dir.path().join("t.yaml");
            fs::write(&path, text).expect("write");
            let err = run_test(&path).expect_err("invalid");
            assert!(matches!(err, CheckError::Test { .. }), "{err}");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
            assert!(err.to_string().starts_with(&path.display().to_string()), "{err}");
        }
    }

    #[test]
    fn reports_render_as_json_and_junit() {
        let report = check_paths(&[fixtures("overbroad")], &opts()).expect("loads");
        let json: serde_json::Value = serde_json::from_str(&report.render_as(OutputFormat::Json)).expect("json");
        assert_eq!(json["passed"], false);
        assert_eq!(json["objectsChecked"], report.objects_checked);
        assert_eq!(json["violations"].as_array().map(Vec::len), Some(report.violations.len()));
        assert!(json["violations"].as_array().expect("array").iter().any(|v| v["rule"] == "wildcard-in-grant"
            && v["name"] == "deploy-everything"
            && v["field"] == "spec.capabilities[0].resource"));
        let junit = report.render_as(OutputFormat::Junit);
        assert!(junit.starts_with("<?xml"), "{junit}");
        assert_eq!(junit.matches("<testcase ").count(), report.objects_checked, "{junit}");
        assert!(junit.contains("name=\"CapabilityGrant/ci/deploy-everything\">\n      <failure message="), "{junit}");
        assert!(junit.contains("resource &quot;k8s:staging/deployments/*&quot; contains"), "{junit}");
        assert_eq!(xml_escape("a<b>&\"'\u{1}"), "a&lt;b&gt;&amp;&quot;&apos;\u{fffd}");
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
