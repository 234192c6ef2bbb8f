//! Crash safety under churn (issue 8): the operator is SIGKILLed at random
//! moments while 520 grants and 64 agent pods go through their lives —
//! grants created, completed, deleted and expiring, pods created, finishing
//! and deleted — and restarted each time from what is stored in the API
//! server. Once the churn is over, the test waits (bounded) for the world to
//! converge and then holds the operator to its promises:
//!
//! * every grant is in the phase its history calls for (TTL ran out →
//!   Expired, marked completed or bound pod finished → Completed, deleted →
//!   gone, otherwise Active with one token per bound live pod, whose `jti`
//!   is the one in `status.tokens`, whose `cnf` is the pod's current
//!   certificate and which verifies against the published JWKS), and its
//!   `status.expiresAt`, once written, never moved (the TTL is fixed at
//!   activation);
//! * no token is left in any Secret for an ended grant or an ended pod, and
//!   an ended pod's Secret holds no private key (a deleted pod's is gone);
//! * every token `jti` and every certificate serial the test ever saw that is
//!   no longer live is on the revocation list, both the durable ConfigMaps and
//!   the served `/revocations` (entries are pruned only 5 minutes after their
//!   own expiry, longer than this test runs);
//! * the CA and signing-key Secrets are the ones from before the churn
//!   (same uid, same content);
//! * no pod has two live credential sets: one credential Secret per live pod,
//!   one certificate ever minted for it, and nothing revoked that is live.
//!
//! What the test "ever saw" comes from watches on the credential Secrets and
//! the grants that run for the whole churn, so tokens that lived for only a
//! moment (say, written just before a kill) are accounted for too.
//!
//! Admission is fail-closed: while the operator is down, grant creations,
//! completions and agent-pod creations are refused by the API server. The
//! churn drivers retry them (that refusal is the expected behaviour, not a
//! failure); deletions and pod status changes go through regardless.
//!
//! A failure lists the violations by kind, with examples, and for a few of
//! the grants involved what the test did, what the watches saw and what the
//! operator logged. `WRIT_FAULTS_SEED=<n>` replays one run's random choices
//! (the seed is printed; the timing of kills still differs);
//! `WRIT_FAULTS_KEEP=1` keeps the namespaces of a failed run to look at.
//! Setup and churn take about a minute; a failure waits out the 2-minute
//! convergence bound (about 4 minutes in all on a 2-core machine).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::{
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{watcher, WatchStreamExt},
    Client, ResourceExt,
};
use tokio::sync::Semaphore;
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

const WEB: (&str, &str) = ("k8s:deployments.patch", "k8s:staging/deployments/web");
const GRANTS: usize = 520;
const PODS_PER_AGENT: usize = 7;
/// Pods created during the churn (on top of `PODS_PER_AGENT` per agent).
const NEW_PODS: usize = 8;
/// Initial pods that end during the churn: deleted, Succeeded, Failed.
const ENDING_PODS: [(PodFate, usize); 3] = [(PodFate::Deleted, 4), (PodFate::Succeeded, 4), (PodFate::Failed, 4)];
const KILLS: usize = 4;
/// Grant creations are spread over this long, so the kills land in the middle of them.
const CHURN: Duration = Duration::from_secs(45);
/// At most this many churn requests to the API server at once.
const CONCURRENCY: usize = 12;
/// A refused request (operator down or starting) is retried for this long.
const RETRY_FOR: Duration = Duration::from_secs(120);
/// Bound on the wait for convergence after the churn.
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);

/// Six agents besides the examples' planner and release-bot, so that 520
/// grants do not all land in the same few Secrets.
const CREW: [&str; 6] = ["crew-0", "crew-1", "crew-2", "crew-3", "crew-4", "crew-5"];

fn crew_manifests() -> String {
    let mut out = String::new();
    for agent in CREW {
        out.push_str(&format!(
            "apiVersion: writ.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: {agent}}}\nspec:\n  class: Agent\n  \
             serviceAccountName: {agent}\n  owner: team-platform\n  credential: {{ttl: 1h, rotateBefore: 20m}}\n  \
             ceiling:\n    - {{action: \"k8s:deployments.patch\", resource: \"k8s:staging/deployments/*\"}}\n---\n"
        ));
    }
    let delegates: String = CREW.iter().map(|a| format!("    - {{agent: {a}}}\n")).collect();
    out.push_str(&format!(
        "apiVersion: writ.dev/v1alpha1\nkind: DelegationPolicy\nmetadata: {{name: crew}}\nspec:\n  delegators: \
         [{{group: release-managers}}]\n  delegates:\n{delegates}  capabilities:\n    - {{action: \
         \"k8s:deployments.patch\", resource: \"k8s:staging/deployments/*\"}}\n  maxTTL: 30m\n  maxDepth: 1\n"
    ));
    out
}

/// xorshift64*: reproducible choices from a printed seed, no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next() as usize % items.len()]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PodFate {
    Lives,
    Deleted,
    Succeeded,
    Failed,
}

#[derive(Clone, Debug)]
struct PodPlan {
    name: String,
    agent: String,
    fate: PodFate,
    /// Created during the churn, at `at`; otherwise ends at `at` (if it ends).
    created_in_churn: bool,
    at: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GrantFate {
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
struct GrantPlan {
    name: String,
    agent: String,
    pod: Option<String>,
    ttl: String,
    fate: GrantFate,
    /// When it is created, from the start of the churn.
    start: Duration,
    /// How long after its creation it is completed or deleted.
    act_after: Duration,
}

struct Plan {
    pods: Vec<PodPlan>,
    grants: Vec<GrantPlan>,
}

impl Plan {
    fn new(rng: &mut Rng, agents: &[String]) -> Plan {
        let mut pods = Vec::new();
        for agent in agents {
            for i in 0..PODS_PER_AGENT {
                let name = format!("{agent}-{i}");
                pods.push(PodPlan {
                    name,
                    agent: agent.clone(),
                    fate: PodFate::Lives,
                    created_in_churn: false,
                    at: CHURN,
                });
            }
        }
        // Pod 0 of every agent lives, so each agent keeps a pod for short grants.
        let mut candidates: Vec<usize> = (0..pods.len()).filter(|i| i % PODS_PER_AGENT != 0).collect();
        for (fate, n) in ENDING_PODS {
            for _ in 0..n {
                let i = candidates.remove(rng.next() as usize % candidates.len());
                pods[i].fate = fate;
                pods[i].at = rng.millis(2_000, CHURN.as_millis() as u64);
            }
        }
        for i in 0..NEW_PODS {
            let agent = agents[i % agents.len()].clone();
            let at = rng.millis(1_000, CHURN.as_millis() as u64 - 5_000);
            pods.push(PodPlan {
                name: format!("{agent}-new-{i}"),
                agent,
                fate: PodFate::Lives,
                created_in_churn: true,
                at,
            });
        }
        let mut grants = Vec::new();
        for i in 0..GRANTS {
            let agent = rng.pick(agents).clone();
            let initial: Vec<&PodPlan> = pods.iter().filter(|p| p.agent == agent && !p.created_in_churn).collect();
            let living: Vec<&PodPlan> = initial.iter().copied().filter(|p| p.fate == PodFate::Lives).collect();
            let roll = rng.range(0, 99);
            let fate = match roll {
                0..=24 => GrantFate::Expires,
                25..=39 => GrantFate::Completed,
                40..=54 => GrantFate::Deleted,
                _ => GrantFate::Stays,
            };
            // Short grants bind only pods that live, so "Expired" is the one
            // right answer (a finished bound pod would also make it Completed).
            let (ttl, pod) = match fate {
                GrantFate::Expires => {
                    let pod = rng.percent(60).then(|| rng.pick(&living).name.clone());
                    (format!("{}s", rng.range(5, 15)), pod)
                }
                GrantFate::Stays => ("15m".to_string(), rng.percent(75).then(|| rng.pick(&initial).name.clone())),
                _ => ("15m".to_string(), rng.percent(70).then(|| rng.pick(&initial).name.clone())),
            };
            let start = CHURN * i as u32 / GRANTS as u32;
            let act_after = rng.millis(0, 8_000);
            grants.push(GrantPlan { name: format!("g-{i:03}"), agent, pod, ttl, fate, start, act_after });
        }
        Plan { pods, grants }
    }

    fn pod(&self, name: &str) -> &PodPlan {
        self.pods.iter().find(|p| p.name == name).expect("planned pod")
    }

    /// The phase a grant must end in; `None`: it must be gone.
    fn expected_phase(&self, g: &GrantPlan) -> Option<GrantPhase> {
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
    fn bound_pods(&self, g: &GrantPlan) -> BTreeSet<String> {
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
struct SeenToken {
    grant: String,
    pod: String,
    exp: i64,
}

/// Everything the watches saw during the run.
struct Seen {
    tokens: HashMap<String, SeenToken>,
    /// Certificate serials (with `notAfter`) per pod name.
    serials: HashMap<String, BTreeMap<String, i64>>,
    /// What happened to each grant, as the test did it and saw it (for failure messages).
    history: HashMap<String, Vec<String>>,
    /// The token each (Secret, grant) held when last seen.
    held: HashMap<(String, String), String>,
    /// Every `status.expiresAt` each grant had (unix seconds).
    expiries: HashMap<String, BTreeSet<i64>>,
    /// Grants refused at admission because their bound pod was already gone
    /// (`pod-not-of-agent`): they never exist.
    refused_pod_gone: BTreeSet<String>,
    since: Instant,
}

impl Seen {
    fn new() -> Self {
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

    fn note(&mut self, grant: &str, what: String) {
        let at = self.since.elapsed().as_millis();
        self.history.entry(grant.to_string()).or_default().push(format!("{at:>7} ms  {what}"));
    }

    fn secret(&mut self, s: &Secret, deleted: bool) {
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

    fn grant(&mut self, g: &CapabilityGrant, event: &str) {
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

fn certificate(s: &Secret) -> Option<CertificateInfo> {
    let pem = s.data.as_ref()?.get(keys::CERT)?;
    CertificateInfo::from_pem(&String::from_utf8_lossy(&pem.0)).ok()
}

/// Records every credential Secret and grant state the API server reports, until aborted.
fn watch_everything(client: &Client, ns: &str, seen: Arc<Mutex<Seen>>) -> Vec<tokio::task::JoinHandle<()>> {
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

/// Retries `f` (an API call refused while the operator is down or starting)
/// until it succeeds; panics with the last error after `RETRY_FOR`.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> (T, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + RETRY_FOR;
    let mut refused = 0;
    loop {
        match f().await {
            Ok(v) => return (v, refused),
            Err(e) if Instant::now() > deadline => panic!("{what}: still refused after {RETRY_FOR:?}: {e}"),
            Err(_) => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn conflict_is_done<T: Default>(r: Result<T, kube::Error>) -> Result<T, kube::Error> {
    match r {
        // An earlier attempt got through after all.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(T::default()),
        other => other,
    }
}

/// What the churn drivers share: clients, the concurrency bound, and the record.
struct Churn {
    client: Client,
    ns: String,
    /// Grants are created as alice (a release manager), through the webhooks.
    alice: Api<CapabilityGrant>,
    admin: Api<CapabilityGrant>,
    gate: Semaphore,
    /// Requests refused while the operator was down or starting (expected).
    refused: std::sync::atomic::AtomicU32,
    seen: Arc<Mutex<Seen>>,
}

impl Churn {
    fn refused(&self, n: u32) {
        self.refused.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Creates one grant, then completes or deletes it as planned.
    async fn grant(&self, g: &GrantPlan) {
        let mut grant: CapabilityGrant =
            serde_saphyr::from_str(&grant_yaml(&g.name, &g.agent, &[WEB], &g.ttl, None)).expect("grant yaml");
        grant.spec.pod = g.pod.clone();
        let (grant, alice, admin) = (&grant, &self.alice, &self.admin);
        {
            let _permit = self.gate.acquire().await.expect("semaphore");
            // A grant bound to a pod that has already ended is refused for
            // good (`pod-not-of-agent`): that ends its story.
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
            let pods = &pods;
            let ((), refused) = retry(&format!("creating grant {}", g.name), move || async move {
                match alice.create(&PostParams::default(), grant).await {
                    Err(kube::Error::Api(e)) if e.message.contains("[pod-not-of-agent]") => {
                        let pod = grant.spec.pod.as_deref().unwrap_or_default();
                        match pods.get_opt(pod).await {
                            Ok(None) => Ok(()),
                            _ => Err(kube::Error::Api(e)),
                        }
                    }
                    other => conflict_is_done(other.map(|_| ())),
                }
            })
            .await;
            self.refused(refused);
            let gone = Api::<CapabilityGrant>::namespaced(self.client.clone(), &self.ns)
                .get_opt(&g.name)
                .await
                .is_ok_and(|found| found.is_none());
            let mut seen = self.seen.lock().expect("lock");
            if gone && g.pod.is_some() {
                seen.refused_pod_gone.insert(g.name.clone());
                seen.note(&g.name, "test: refused at admission, its pod is gone".into());
                return;
            }
            seen.note(&g.name, format!("test: created ({refused} refusals)"));
        }
        if !matches!(g.fate, GrantFate::Completed | GrantFate::Deleted) {
            return;
        }
        tokio::time::sleep(g.act_after).await;
        let _permit = self.gate.acquire().await.expect("semaphore");
        if g.fate == GrantFate::Completed {
            let done = &Patch::Merge(serde_json::json!({"spec": {"completed": true}}));
            let (_, refused) = retry(&format!("completing grant {}", g.name), move || async move {
                admin.patch(&g.name, &PatchParams::default(), done).await.map(|_| ())
            })
            .await;
            self.refused(refused);
            self.seen.lock().expect("lock").note(&g.name, format!("test: completed ({refused} refusals)"));
        } else {
            admin
                .delete(&g.name, &DeleteParams::default())
                .await
                .unwrap_or_else(|e| panic!("deleting {}: {e}", g.name));
            self.seen.lock().expect("lock").note(&g.name, "test: deleted".into());
        }
    }

    /// Plays the pods' side: a new pod starts, or a pod ends.
    async fn pod(&self, p: &PodPlan) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let (client, ns) = (&self.client, self.ns.as_str());
        if p.created_in_churn {
            let (pods, manifest) = (&pods, &agent_pod(&p.name, &p.agent, &p.agent));
            let (_, refused) = retry(&format!("creating pod {}", p.name), move || async move {
                conflict_is_done(pods.create(&PostParams::default(), manifest).await.map(|_| ()))
            })
            .await;
            self.refused(refused);
            set_pod_phase(client, ns, &p.name, "Running").await;
        } else {
            match p.fate {
                PodFate::Lives => {}
                PodFate::Deleted => {
                    pods.delete(&p.name, &DeleteParams::default())
                        .await
                        .unwrap_or_else(|e| panic!("deleting {}: {e}", p.name));
                }
                PodFate::Succeeded => set_pod_phase(client, ns, &p.name, "Succeeded").await,
                PodFate::Failed => set_pod_phase(client, ns, &p.name, "Failed").await,
            }
        }
        self.seen.lock().expect("lock").note(&p.name, format!("test: pod {:?} (new: {})", p.fate, p.created_in_churn));
    }
}

/// SIGKILLs the operator `KILLS` times at random moments and restarts it
/// after a random pause; returns how long each outage lasted (kill → ready).
async fn kill_and_restart(op: &Operator, c: &Cluster, mut rng: Rng, seen: &Mutex<Seen>) -> Vec<Duration> {
    let mut outages = Vec::new();
    for _ in 0..KILLS {
        tokio::time::sleep(rng.millis(2_000, 8_000)).await;
        op.kill();
        seen.lock().expect("lock").note(OPERATOR, "test: SIGKILL".into());
        let down = Instant::now();
        tokio::time::sleep(rng.millis(500, 4_000)).await;
        op.restart(c).await;
        seen.lock().expect("lock").note(OPERATOR, "test: restarted and ready".into());
        outages.push(down.elapsed());
    }
    outages
}

/// The history key of the operator's kills and restarts.
const OPERATOR: &str = "(operator)";

/// The grant names (`g-123`) a violation mentions.
fn grants_named(problem: &str) -> impl Iterator<Item = &str> {
    problem
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.len() == 5 && w.starts_with("g-") && w[2..].chars().all(|c| c.is_ascii_digit()))
}

/// The operator's log without terminal colours, so it can be searched.
fn strip_colours(log: &str) -> String {
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
fn explain(problems: &[Problem], seen: &Seen, log: &str) -> String {
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
async fn trust_fingerprint(client: &Client, ns: &str, name: &str) -> (String, BTreeMap<String, String>) {
    let s = Api::<Secret>::namespaced(client.clone(), ns).get(name).await.expect("trust Secret");
    (s.metadata.uid.clone().expect("uid"), secret_data(&s))
}

/// The revocation list as persisted (its ConfigMaps) and as served (`/revocations`).
/// A served list that cannot be fetched is a violation (the check is
/// repeated until convergence), not a reason to stop looking.
async fn revocation_lists(
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
type Problem = (&'static str, String);

/// How many violations of each kind, with a few examples of each.
fn summary(problems: &[Problem]) -> String {
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
struct Check {
    /// What does not hold (yet); empty: converged.
    problems: Vec<Problem>,
    /// Grants per phase (`(deleted)` for gone ones).
    phases: BTreeMap<String, usize>,
    /// How long `GET /revocations` took.
    served_in: Option<Duration>,
}

/// Everything that must hold once the world has converged.
async fn check(plan: &Plan, client: &Client, ns: &str, op_ns: &str, op: &Operator, seen: &Mutex<Seen>) -> Check {
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

fn phase_of(g: &CapabilityGrant) -> GrantPhase {
    g.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_during_a_churn_of_grants_and_pods_lose_no_revocation_and_mint_nothing_twice() {
    let started = Instant::now();
    let seed = std::env::var("WRIT_FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
    }) | 1;
    eprintln!("WRIT_FAULTS_SEED={seed}");
    let mut rng = Rng(seed);

    let c = cluster();
    let client = c.client().await;
    let op_ns = format!("writ-faults-{}", std::process::id());
    let op = Operator::start(&c, &op_ns, "f-0", &[]).await;
    let ns = TestNamespace::new(&client, "faults").await;
    let n = ns.name.clone();
    example_setup(&c, &client, &n).await;
    for agent in CREW {
        service_account(&client, &n, agent).await;
    }
    let (ok, out) = apply_as(&c, None, &n, &crew_manifests());
    assert!(ok, "{out}");
    let agents: Vec<String> = ["planner", "release-bot"].iter().copied().chain(CREW).map(str::to_string).collect();
    let plan = Plan::new(&mut rng, &agents);

    // The initial pods, Running with their credentials.
    let initial: Vec<&PodPlan> = plan.pods.iter().filter(|p| !p.created_in_churn).collect();
    futures::stream::iter(initial.iter().map(|p| running_agent_pod(&client, &n, &p.name, &p.agent)))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let ca = trust_fingerprint(&client, &op_ns, writ::api::names::CA_SECRET).await;
    let keys = trust_fingerprint(&client, &op_ns, writ::api::names::SIGNING_SECRET).await;
    let seen = Arc::new(Mutex::new(Seen::new()));
    let watches = watch_everything(&client, &n, seen.clone());
    eprintln!(
        "setup: {} pods running after {:?}; churn: {} grants, {} new pods, {} pods ending, {KILLS} kills",
        initial.len(),
        started.elapsed(),
        plan.grants.len(),
        NEW_PODS,
        ENDING_PODS.iter().map(|(_, k)| k).sum::<usize>()
    );

    // The churn: grants paced over CHURN, pods starting and ending, kills.
    let alice = c.user_client("alice").await;
    let churn = Churn {
        client: client.clone(),
        ns: n.clone(),
        alice: Api::namespaced(alice, &n),
        admin: Api::namespaced(client.clone(), &n),
        gate: Semaphore::new(CONCURRENCY),
        refused: Default::default(),
        seen: seen.clone(),
    };
    let churn_started = Instant::now();
    let at = |offset: Duration| tokio::time::sleep_until((churn_started + offset).into());
    let grant_work = futures::future::join_all(plan.grants.iter().map(|g| async {
        at(g.start).await;
        churn.grant(g).await;
    }));
    let pod_work = futures::future::join_all(
        plan.pods.iter().filter(|p| p.created_in_churn || p.fate != PodFate::Lives).map(|p| async {
            at(p.at).await;
            churn.pod(p).await;
        }),
    );
    let killer = Rng(rng.next() | 1);
    let (_, _, outages) = tokio::join!(grant_work, pod_work, kill_and_restart(&op, &c, killer, &seen));
    eprintln!(
        "churn done after {:?}: {} requests refused while the operator was down or starting; outages {outages:?}",
        churn_started.elapsed(),
        churn.refused.load(std::sync::atomic::Ordering::Relaxed)
    );

    // Convergence, bounded.
    let converging = Instant::now();
    let (mut slowest_list, mut list_failures) = (Duration::ZERO, 0);
    let mut reported = Instant::now();
    let Check { problems, phases, .. } = loop {
        let c = check(&plan, &client, &n, &op_ns, &op, &seen).await;
        match c.served_in {
            Some(took) => slowest_list = slowest_list.max(took),
            None => list_failures += 1,
        }
        if c.problems.is_empty() || converging.elapsed() > CONVERGE_WITHIN {
            break c;
        }
        if reported.elapsed() > Duration::from_secs(15) {
            eprintln!("after {:?}: {} violation(s), e.g. {}", converging.elapsed(), c.problems.len(), c.problems[0].1);
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let converged = converging.elapsed();
    let mut problems = problems;
    // Not something that converges: the trust material is the same throughout.
    if trust_fingerprint(&client, &op_ns, writ::api::names::CA_SECRET).await != ca {
        problems.push(("trust material changed", format!("the CA Secret {} changed", writ::api::names::CA_SECRET)));
    }
    if trust_fingerprint(&client, &op_ns, writ::api::names::SIGNING_SECRET).await != keys {
        let what = format!("the signing-key Secret {} changed", writ::api::names::SIGNING_SECRET);
        problems.push(("trust material changed", what));
    }
    for w in watches {
        w.abort();
    }
    let (tokens_seen, reminted) = {
        let s = seen.lock().expect("lock");
        let mut per_pair: HashMap<(&str, &str), usize> = HashMap::new();
        for t in s.tokens.values() {
            *per_pair.entry((&t.grant, &t.pod)).or_default() += 1;
        }
        (s.tokens.len(), per_pair.values().filter(|n| **n > 1).count())
    };
    eprintln!(
        "final phases {phases:?}; {tokens_seen} tokens seen, {reminted} (grant, pod) pairs got more than one; \
         slowest GET /revocations {slowest_list:?} ({list_failures} failed); convergence checked for {converged:?}; total {:?}",
        started.elapsed()
    );
    // The namespace goes while the operator still runs (its grants and
    // Secrets carry finalizers), unless a failure is to be looked at.
    let keep = !problems.is_empty() && std::env::var_os("WRIT_FAULTS_KEEP").is_some();
    if keep {
        eprintln!("kept namespace {n} and operator namespace {op_ns} (WRIT_FAULTS_KEEP)");
    } else {
        // Waited for (bounded), so the next tests on this cluster do not inherit the work.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        ns.cleanup().await;
        let deleting = Instant::now();
        while namespaces.get_opt(&n).await.ok().flatten().is_some() && deleting.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        eprintln!("namespace {n} deleted (or still terminating) after {:?}", deleting.elapsed());
    }
    if !problems.is_empty() {
        let log = strip_colours(&op.log_text());
        panic!(
            "not converged after {CONVERGE_WITHIN:?} ({} violation(s), WRIT_FAULTS_SEED={seed}; operator log {}):\n{}\n\n{}",
            problems.len(),
            op.log.display(),
            summary(&problems),
            explain(&problems, &seen.lock().expect("lock"), &log)
        );
    }
}
