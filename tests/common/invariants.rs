//! The fault test's invariant checker: the plan of a churn (what each grant
//! and pod is meant to go through), what watches saw during it, and
//! [`check`], which holds the converged world to the operator's promises
//! (`tests/faults.rs` says which).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    api::{Api, ListParams},
    runtime::{watcher, WatchStreamExt},
    Client, ResourceExt,
};
use writ::{
    api::{
        names::{credential_keys as keys, POD_LABEL},
        CapabilityGrant, GrantPhase,
    },
    controller::credentials,
    pki::{token, CertificateInfo, JwkSet},
    state::revocations::{self, RETENTION_AFTER_EXPIRY_SECS},
    verify::RevocationList,
};

use super::{credential_secret_name, eventually, secret_data, Operator};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodFate {
    Lives,
    Deleted,
    Succeeded,
    Failed,
}

#[derive(Clone, Debug)]
pub struct PodPlan {
    pub name: String,
    pub agent: String,
    pub fate: PodFate,
    /// Created during the churn, at `at`; otherwise ends at `at` (if it ends).
    pub created_in_churn: bool,
    pub at: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantFate {
    /// A short TTL that runs out during the churn.
    Expires,
    /// Left alone (15 minutes).
    Stays,
    /// Marked `spec.completed` some time after creation.
    Completed,
    /// Deleted some time after creation (sometimes before it is even Active).
    Deleted,
}

#[derive(Clone, Debug)]
pub struct GrantPlan {
    pub name: String,
    pub agent: String,
    pub pod: Option<String>,
    pub ttl: String,
    pub fate: GrantFate,
    /// When it is created, from the start of the churn.
    pub start: Duration,
    /// How long after its creation it is completed or deleted.
    pub act_after: Duration,
}

pub struct Plan {
    pub pods: Vec<PodPlan>,
    pub grants: Vec<GrantPlan>,
}

impl Plan {
    pub fn pod(&self, name: &str) -> &PodPlan {
        self.pods.iter().find(|p| p.name == name).expect("planned pod")
    }

    /// The phase a grant must end in; `None`: it must be gone.
    pub fn expected_phase(&self, g: &GrantPlan) -> Option<GrantPhase> {
        match g.fate {
            GrantFate::Deleted => None,
            GrantFate::Completed => Some(GrantPhase::Completed),
            GrantFate::Expires => Some(GrantPhase::Expired),
            GrantFate::Stays if g.pod.as_deref().is_some_and(|p| self.pod(p).fate != PodFate::Lives) => {
                Some(GrantPhase::Completed)
            }
            GrantFate::Stays => Some(GrantPhase::Active),
        }
    }

    /// The pods an Active grant must hold a token in.
    pub fn bound_pods(&self, g: &GrantPlan) -> BTreeSet<String> {
        self.pods
            .iter()
            .filter(|p| p.agent == g.agent && p.fate == PodFate::Lives)
            .filter(|p| g.pod.as_ref().is_none_or(|name| *name == p.name))
            .map(|p| p.name.clone())
            .collect()
    }
}

/// A token the test saw, in a Secret or in a grant's status.
#[derive(Clone, Debug)]
pub struct SeenToken {
    pub grant: String,
    pub pod: String,
    pub exp: i64,
}

/// Everything the watches saw during the run.
pub struct Seen {
    pub tokens: HashMap<String, SeenToken>,
    /// Certificate serials (with `notAfter`) per pod name.
    pub serials: HashMap<String, BTreeMap<String, i64>>,
    /// What happened to each grant, as the test did it and saw it (for failure messages).
    pub history: HashMap<String, Vec<String>>,
    /// The token each (Secret, grant) held when last seen.
    pub held: HashMap<(String, String), String>,
    /// Every `status.expiresAt` each grant had (unix seconds).
    pub expiries: HashMap<String, BTreeSet<i64>>,
    /// Grants refused at admission because their bound pod was already gone
    /// (`pod-not-of-agent`): they never exist.
    pub refused_pod_gone: BTreeSet<String>,
    pub since: Instant,
}

impl Seen {
    pub fn new() -> Self {
        Self {
            tokens: HashMap::new(),
            serials: HashMap::new(),
            history: HashMap::new(),
            held: HashMap::new(),
            expiries: HashMap::new(),
            refused_pod_gone: BTreeSet::new(),
            since: Instant::now(),
        }
    }

    pub fn note(&mut self, grant: &str, what: String) {
        let at = self.since.elapsed().as_millis();
        self.history.entry(grant.to_string()).or_default().push(format!("{at:>7} ms  {what}"));
    }

    pub fn secret(&mut self, s: &Secret, deleted: bool) {
        let pod = s.labels().get(POD_LABEL).cloned().unwrap_or_default();
        let stored = credentials::stored_tokens(s);
        let gone: Vec<(String, String)> = self
            .held
            .keys()
            .filter(|(secret, grant)| *secret == s.name_any() && (deleted || !stored.iter().any(|(g, _)| g == grant)))
            .cloned()
            .collect();
        for key in gone {
            let jti = self.held.remove(&key).unwrap_or_default();
            self.note(&key.1, format!("watch: token {jti} left the Secret of pod {pod}"));
        }
        for (grant, jwt) in stored {
            let Ok((_, c)) = token::decode_unverified(&jwt) else { continue };
            let before = if deleted { None } else { self.held.insert((s.name_any(), grant.clone()), c.jti.clone()) };
            if !deleted && before.as_ref() != Some(&c.jti) {
                let was = before.map(|b| format!(", replacing {b}")).unwrap_or_default();
                let what =
                    format!("watch: token {} in the Secret of pod {pod} (iat {}, exp {}{was})", c.jti, c.iat, c.exp);
                self.note(&grant, what);
            }
            self.tokens.entry(c.jti).or_insert(SeenToken { grant, pod: pod.clone(), exp: c.exp });
        }
        if let Some(info) = certificate(s) {
            self.serials.entry(pod).or_default().insert(info.serial_hex, info.not_after);
        }
    }

    pub fn grant(&mut self, g: &CapabilityGrant, event: &str) {
        let expires_at = g.status.as_ref().and_then(|s| s.expires_at.as_ref()).map(|t| t.0.as_second());
        let jtis: Vec<String> =
            g.status.iter().flat_map(|s| s.tokens.iter()).map(|t| format!("{}:{}", t.pod, t.jti)).collect();
        self.note(
            &g.name_any(),
            format!(
                "watch {event} rv={} finalizers={:?} deleting={} phase={:?} expiresAt={:?} tokens={jtis:?}",
                g.resource_version().unwrap_or_default(),
                g.finalizers(),
                g.metadata.deletion_timestamp.is_some(),
                g.status.as_ref().map(|s| s.phase),
                expires_at,
            ),
        );
        if let Some(exp) = expires_at {
            self.expiries.entry(g.name_any()).or_default().insert(exp);
        }
        for t in g.status.iter().flat_map(|s| s.tokens.iter()) {
            self.tokens.entry(t.jti.clone()).or_insert(SeenToken {
                grant: g.name_any(),
                pod: t.pod.clone(),
                exp: t.expires_at.0.as_second(),
            });
        }
    }
}

pub fn certificate(s: &Secret) -> Option<CertificateInfo> {
    let pem = s.data.as_ref()?.get(keys::CERT)?;
    CertificateInfo::from_pem(&String::from_utf8_lossy(&pem.0)).ok()
}

/// Records every credential Secret and grant state the API server reports, until aborted.
pub fn watch_everything(client: &Client, ns: &str, seen: Arc<Mutex<Seen>>) -> Vec<tokio::task::JoinHandle<()>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), ns);
    let s1 = seen.clone();
    let secrets = tokio::spawn(async move {
        watcher(secrets, watcher::Config::default().labels(POD_LABEL))
            .default_backoff()
            .for_each(|ev| {
                match ev {
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                        s1.lock().expect("lock").secret(&s, false)
                    }
                    Ok(watcher::Event::Delete(s)) => s1.lock().expect("lock").secret(&s, true),
                    _ => {}
                }
                futures::future::ready(())
            })
            .await
    });
    let grants = tokio::spawn(async move {
        watcher(grants, watcher::Config::default())
            .default_backoff()
            .for_each(|ev| {
                match ev {
                    Ok(watcher::Event::Apply(g) | watcher::Event::InitApply(g)) => {
                        seen.lock().expect("lock").grant(&g, "apply")
                    }
                    Ok(watcher::Event::Delete(g)) => seen.lock().expect("lock").grant(&g, "delete"),
                    _ => {}
                }
                futures::future::ready(())
            })
            .await
    });
    vec![secrets, grants]
}

/// The history key of the operator's kills and restarts.
pub const OPERATOR: &str = "(operator)";

/// The grant names (`g-123`) a violation mentions.
pub fn grants_named(problem: &str) -> impl Iterator<Item = &str> {
    problem
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.len() == 5 && w.starts_with("g-") && w[2..].chars().all(|c| c.is_ascii_digit()))
}

/// The operator's log without terminal colours, so it can be searched.
pub fn strip_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut in_escape = false;
    for c in log.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (false, c) => out.push(c),
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    out
}

/// What the test and the operator's log say about some of the grants and
/// pods the violations name (one of each kind of violation first).
pub fn explain(problems: &[Problem], seen: &Seen, log: &str) -> String {
    let mut grants: Vec<&str> = Vec::new();
    let mut pods: Vec<&str> = Vec::new();
    let mut kinds_shown: BTreeSet<&str> = BTreeSet::new();
    for first_of_kind in [true, false] {
        for (kind, what) in problems {
            if first_of_kind && !kinds_shown.insert(kind) {
                continue;
            }
            if let Some(name) = grants_named(what).next().filter(|n| !grants.contains(n) && grants.len() < 6) {
                grants.push(name);
            } else if let Some(pod) = what.split("pod ").nth(1).and_then(|rest| rest.split([' ', ':', '\'']).next()) {
                if !pods.contains(&pod) && pods.len() < 2 && !grants_named(what).any(|_| true) {
                    pods.push(pod);
                }
            }
        }
    }
    let mut out = format!("operator: {:?}\n", seen.history.get(OPERATOR).cloned().unwrap_or_default());
    for name in grants {
        out.push_str(&format!("--- grant {name}, as the test saw it:\n"));
        for line in seen.history.get(name).into_iter().flatten() {
            out.push_str(&format!("  {line}\n"));
        }
        out.push_str(&format!("--- grant {name}, in the operator log:\n"));
        let needle = format!("grant={name} ");
        let mentions = log.lines().filter(|l| l.contains(&needle) || l.contains(&format!("/{name}:"))).take(12);
        for line in mentions {
            out.push_str(&format!("  {}\n", line.chars().take(400).collect::<String>()));
        }
    }
    for pod in pods {
        out.push_str(&format!("--- pod {pod}'s credential, in the operator log:\n"));
        let (span, field) = (format!(" name={pod}}}"), format!(" pod={pod} "));
        let mentions = log
            .lines()
            .filter(|l| {
                (l.contains(&span) || l.contains(&field)) && (l.contains("certificate") || l.contains("credential"))
            })
            .take(8);
        for line in mentions {
            out.push_str(&format!("  {}\n", line.chars().take(400).collect::<String>()));
        }
    }
    out
}

/// `(uid, data)` of a trust Secret in the operator namespace.
pub async fn trust_fingerprint(client: &Client, ns: &str, name: &str) -> (String, BTreeMap<String, String>) {
    let s = Api::<Secret>::namespaced(client.clone(), ns).get(name).await.expect("trust Secret");
    (s.metadata.uid.clone().expect("uid"), secret_data(&s))
}

/// The revocation list as persisted (its ConfigMaps) and as served (`/revocations`).
/// A served list that cannot be fetched is a violation (the check is
/// repeated until convergence), not a reason to stop looking.
pub async fn revocation_lists(
    client: &Client,
    op_ns: &str,
    op: &Operator,
) -> Result<(RevocationList, RevocationList, Duration), String> {
    let durable = revocations::read_persisted(client, op_ns)
        .await
        .map_err(|e| format!("reading the persisted revocation list: {e}"))?;
    let asked = Instant::now();
    let (code, body) = op.https_get("/revocations").await;
    if code != 200 {
        return Err(format!("GET /revocations answered {code} after {:?}: {body}", asked.elapsed()));
    }
    let served = serde_json::from_str(&body).expect("the served revocation list parses");
    Ok((durable, served, asked.elapsed()))
}

/// A violation: its kind and what exactly.
pub type Problem = (&'static str, String);

/// How many violations of each kind, with a few examples of each.
pub fn summary(problems: &[Problem]) -> String {
    let mut kinds: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (kind, what) in problems {
        kinds.entry(kind).or_default().push(what);
    }
    let mut out = String::new();
    for (kind, all) in kinds {
        out.push_str(&format!("{} x {kind}, e.g.:\n", all.len()));
        for what in all.iter().take(4) {
            out.push_str(&format!("    {what}\n"));
        }
    }
    out
}

/// One look at the world after the churn.
#[derive(Default)]
pub struct Check {
    /// What does not hold (yet); empty: converged.
    pub problems: Vec<Problem>,
    /// Grants per phase (`(deleted)` for gone ones).
    pub phases: BTreeMap<String, usize>,
    /// How long `GET /revocations` took.
    pub served_in: Option<Duration>,
}

/// Everything that must hold once the world has converged.
pub async fn check(plan: &Plan, client: &Client, ns: &str, op_ns: &str, op: &Operator, seen: &Mutex<Seen>) -> Check {
    let mut bad = Vec::new();
    let now = writ::pki::now_unix();
    let lp = ListParams::default();
    let grants: BTreeMap<String, CapabilityGrant> = Api::<CapabilityGrant>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .expect("list grants")
        .items
        .into_iter()
        .map(|g| (g.name_any(), g))
        .collect();
    let pods: BTreeMap<String, Pod> = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .expect("list pods")
        .items
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect();
    let secrets = Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(POD_LABEL))
        .await
        .expect("list credential Secrets")
        .items;
    let (durable, served, served_in) = match revocation_lists(client, op_ns, op).await {
        Ok(lists) => lists,
        Err(e) => return Check { problems: vec![("endpoint unavailable", e)], ..Default::default() },
    };
    let revoked_token =
        |jti: &str| durable.tokens.iter().any(|t| t.jti == jti) && served.tokens.iter().any(|t| t.jti == jti);
    let revoked_cert = |serial: &str| {
        durable.certificates.iter().any(|c| c.serial == serial)
            && served.certificates.iter().any(|c| c.serial == serial)
    };
    let (code, jwks) = op.https_get("/.well-known/jwks.json").await;
    let Ok(jwks) = JwkSet::from_json(&jwks) else {
        let problems = vec![("endpoint unavailable", format!("GET /.well-known/jwks.json answered {code}: {jwks}"))];
        return Check { problems, served_in: Some(served_in), ..Default::default() };
    };
    let (seen_tokens, seen_serials, expiries) = {
        let s = seen.lock().expect("lock");
        (s.tokens.clone(), s.serials.clone(), s.expiries.clone())
    };

    // Pods: one credential set per live pod, nothing left for ended ones.
    let mut by_pod: BTreeMap<String, Vec<&Secret>> = BTreeMap::new();
    for s in &secrets {
        by_pod.entry(s.labels().get(POD_LABEL).cloned().unwrap_or_default()).or_default().push(s);
    }
    let mut pod_secret: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for p in &plan.pods {
        let held = by_pod.get(&p.name).cloned().unwrap_or_default();
        let serials = seen_serials.get(&p.name).cloned().unwrap_or_default();
        let name = &p.name;
        match p.fate {
            PodFate::Lives => {
                let Some(pod) = pods.get(name) else {
                    bad.push(("pod missing", format!("pod {name} should be running but is gone")));
                    continue;
                };
                let annotated = credential_secret_name(pod);
                if held.len() != 1 || held[0].name_any() != annotated {
                    let names: Vec<String> = held.iter().map(|s| s.name_any()).collect();
                    bad.push((
                        "not one credential Secret per live pod",
                        format!("pod {name}: credential Secrets {names:?}, expected exactly [{annotated}]"),
                    ));
                    continue;
                }
                let d = secret_data(held[0]);
                let Some(cert) = certificate(held[0]).filter(|_| d.contains_key(keys::KEY)) else {
                    bad.push((
                        "live pod without certificate and key",
                        format!("pod {name}: no certificate and key in its Secret"),
                    ));
                    continue;
                };
                if revoked_cert(&cert.serial_hex) {
                    bad.push((
                        "live pod's certificate revoked",
                        format!("pod {name}: its current certificate {} is revoked", cert.serial_hex),
                    ));
                }
                if serials.len() != 1 {
                    let all: Vec<&String> = serials.keys().collect();
                    bad.push((
                        "certificate minted again for a pod",
                        format!(
                            "pod {name}: {} certificates were minted for it ({all:?}), expected one (current {})",
                            serials.len(),
                            cert.serial_hex
                        ),
                    ));
                }
                for (serial, not_after) in &serials {
                    if *serial != cert.serial_hex
                        && not_after + RETENTION_AFTER_EXPIRY_SECS > now
                        && !revoked_cert(serial)
                    {
                        bad.push((
                            "old certificate neither current nor revoked",
                            format!("pod {name}: a second certificate {serial} is neither current nor revoked"),
                        ));
                    }
                }
                pod_secret.insert(name.clone(), d);
            }
            ended => {
                if ended == PodFate::Deleted {
                    if pods.contains_key(name) {
                        bad.push(("ended pod in the wrong state", format!("pod {name} was deleted but still exists")));
                    }
                    if !held.is_empty() {
                        bad.push((
                            "ended pod in the wrong state",
                            format!("deleted pod {name} still has {} credential Secret(s)", held.len()),
                        ));
                    }
                } else {
                    let phase = pods.get(name).and_then(|p| p.status.as_ref()?.phase.clone());
                    if phase.as_deref() != Some(if ended == PodFate::Failed { "Failed" } else { "Succeeded" }) {
                        bad.push((
                            "ended pod in the wrong state",
                            format!("pod {name}: phase {phase:?}, expected {ended:?}"),
                        ));
                    }
                    if held.len() > 1 {
                        bad.push((
                            "ended pod in the wrong state",
                            format!("finished pod {name} has {} credential Secrets", held.len()),
                        ));
                    }
                }
                for s in &held {
                    let d = secret_data(s);
                    if d.contains_key(keys::KEY) {
                        bad.push((
                            "ended pod's Secret still holds key or tokens",
                            format!("ended pod {name}: Secret {} still holds the private key", s.name_any()),
                        ));
                    }
                    for (grant, _) in credentials::stored_tokens(s) {
                        bad.push((
                            "ended pod's Secret still holds key or tokens",
                            format!("ended pod {name}: Secret {} still holds a token of {grant}", s.name_any()),
                        ));
                    }
                }
                if serials.is_empty() {
                    bad.push((
                        "ended pod's certificate never seen",
                        format!("ended pod {name}: the test never saw its certificate"),
                    ));
                }
                for (serial, not_after) in &serials {
                    if not_after + RETENTION_AFTER_EXPIRY_SECS > now && !revoked_cert(serial) {
                        bad.push((
                            "ended pod's certificate not revoked",
                            format!("ended pod {name}: certificate {serial} is not on the revocation list"),
                        ));
                    }
                }
            }
        }
    }

    // Grants: the right phase; Active ones hold exactly the right tokens.
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    let mut live: BTreeSet<String> = BTreeSet::new();
    for g in &plan.grants {
        let name = &g.name;
        let got = grants.get(name);
        *phases.entry(got.map_or("(deleted)".into(), |o| phase_of(o).to_string())).or_default() += 1;
        // Fixed once, at activation: a moving expiry would stretch the grant past its TTL.
        if let Some(all) = expiries.get(name).filter(|all| all.len() > 1) {
            bad.push((
                "grant expiry moved",
                format!("grant {name}: status.expiresAt changed after it was first recorded: {all:?}"),
            ));
        }
        let Some(expected) = plan.expected_phase(g) else {
            if let Some(o) = got {
                bad.push((
                    "grant in the wrong phase",
                    format!("grant {name} was deleted but is still there ({})", phase_of(o)),
                ));
            }
            continue;
        };
        let pod_ended = g.pod.as_deref().is_some_and(|p| plan.pod(p).fate != PodFate::Lives);
        if got.is_none() && pod_ended && seen.lock().expect("lock").refused_pod_gone.contains(name) {
            continue;
        }
        let Some(obj) = got else {
            bad.push(("grant in the wrong phase", format!("grant {name} ({:?}) is gone, expected {expected}", g.fate)));
            continue;
        };
        if phase_of(obj) != expected {
            let why = obj.status.as_ref().and_then(|s| s.reason.clone()).unwrap_or_default();
            bad.push((
                "grant in the wrong phase",
                format!("grant {name} ({:?}, pod {:?}): {} ({why}), expected {expected}", g.fate, g.pod, phase_of(obj)),
            ));
            continue;
        }
        if expected != GrantPhase::Active {
            continue;
        }
        let status = obj.status.clone().unwrap_or_default();
        let want = plan.bound_pods(g);
        let recorded: Vec<&String> = status.tokens.iter().map(|t| &t.pod).collect();
        if recorded.len() != want.len() || !recorded.iter().all(|p| want.contains(*p)) {
            bad.push((
                "active grant's tokens wrong",
                format!("grant {name}: status.tokens for pods {recorded:?}, expected {want:?}"),
            ));
        }
        let expires_at = status.expires_at.as_ref().map(|t| t.0.as_second()).unwrap_or_default();
        for record in &status.tokens {
            let pod = &record.pod;
            let Some(d) = pod_secret.get(pod) else { continue };
            let Some(jwt) = d.get(&format!("grant.{name}.jwt")) else {
                bad.push((
                    "active grant's tokens wrong",
                    format!("grant {name}: status lists a token for pod {pod}, its Secret has none"),
                ));
                continue;
            };
            let (_, claims) = token::decode_unverified(jwt).expect("a token in a Secret decodes");
            let cert = CertificateInfo::from_pem(&d[keys::CERT]).expect("certificate");
            let pod_uid = pods.get(pod).and_then(|p| p.uid());
            let checks = [
                (claims.jti == record.jti, "its jti is not the one in status.tokens"),
                (Some(claims.grant.uid.clone()) == obj.uid(), "it names another grant uid"),
                (Some(claims.pod.uid.clone()) == pod_uid, "it names another pod uid"),
                (claims.cnf.x5t_s256 == cert.thumbprint, "its cnf is not the pod's current certificate"),
                (claims.exp == expires_at.min(cert.not_after), "its exp is not the grant's expiry"),
                (!revoked_token(&claims.jti), "it is on the revocation list"),
                (writ::verify::verify_signed(jwt, &jwks, now, 0).is_ok(), "it does not verify against the JWKS"),
            ];
            for (ok, what) in checks {
                if !ok {
                    bad.push((
                        "active grant's tokens wrong",
                        format!("grant {name}: the token in pod {pod}'s Secret ({}): {what}", claims.jti),
                    ));
                }
            }
            live.insert(claims.jti);
        }
    }

    // No token in any Secret but the live ones.
    for s in &secrets {
        let pod = s.labels().get(POD_LABEL).cloned().unwrap_or_default();
        for (grant, jwt) in credentials::stored_tokens(s) {
            let jti = token::decode_unverified(&jwt).map(|(_, c)| c.jti).unwrap_or_default();
            if !live.contains(&jti) {
                let phase = grants.get(&grant).map_or("gone".to_string(), |g| phase_of(g).to_string());
                bad.push((
                    "token left in a Secret that is not live",
                    format!("Secret of pod {pod} holds token {jti} of grant {grant} ({phase}), which is not live"),
                ));
            }
        }
    }
    // Every token that was ever issued and is not live is revoked.
    for (jti, t) in &seen_tokens {
        if !live.contains(jti) && t.exp + RETENTION_AFTER_EXPIRY_SECS > now && !revoked_token(jti) {
            let phase = grants.get(&t.grant).map_or("gone".to_string(), |g| phase_of(g).to_string());
            bad.push((
                "revocation missing",
                format!("token {jti} of grant {} ({phase}) for pod {} is neither live nor revoked", t.grant, t.pod),
            ));
        }
    }
    Check { problems: bad, phases, served_in: Some(served_in) }
}

pub fn phase_of(g: &CapabilityGrant) -> GrantPhase {
    g.status.as_ref().map(|s| s.phase).unwrap_or_default()
}
