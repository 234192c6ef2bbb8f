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
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{invariants::*, *};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    Client,
};
use tokio::sync::Semaphore;
use writ::api::CapabilityGrant;

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
