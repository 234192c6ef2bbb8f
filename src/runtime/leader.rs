//! Leader election on a `coordination.k8s.io/v1` Lease: every replica serves
//! webhooks and endpoints, exactly one runs the controllers.
//!
//! The rules are client-go's `leaderelection`:
//! * The holder renews every `lease_duration / 3`; followers look every
//!   [`FOLLOWER_RETRY`] (or that period, if shorter).
//! * A follower judges the Lease expired by its **own** monotonic clock: it
//!   notes when it observed the stored record (holder, renew time, …) change,
//!   and takes the Lease once a whole `leaseDurationSeconds` has passed since
//!   without a change. The holder's `renewTime` is written for people to
//!   read, never compared with the local clock, so replicas whose wall clocks
//!   disagree by minutes cannot depose a leader that keeps renewing.
//! * A leader that stops (SIGTERM) releases the Lease ([`LeaderElector::release`],
//!   client-go's `ReleaseOnCancel`): an empty holder, which any follower takes
//!   on its next look, so a restart or rolling update hands over in about a
//!   second instead of a lease duration.
//! * Updates use `replace` with the read `resourceVersion`, so two replicas
//!   racing for an expired Lease cannot both win: the API server rejects the
//!   second write.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::api::names::LEASE_NAME;
use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    api::{Api, ObjectMeta, PostParams},
    Client,
};
use tokio::sync::watch;

/// How often a follower looks at the Lease at most: a released Lease is
/// taken within this.
pub const FOLLOWER_RETRY: Duration = Duration::from_secs(1);

/// The lease duration assumed when the stored Lease names none (client-go's default is 15 s; ours 10 s).
const DEFAULT_LEASE_SECS: u64 = 10;

/// What one round of the election decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// We hold the Lease.
    Leading,
    /// Someone else holds an unexpired Lease.
    Following,
}

/// Time as the election reads it: a monotonic clock for judging expiry, and
/// the wall clock for the timestamps written into the Lease. Injectable so
/// tests can run replicas whose clocks disagree.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Monotonic time since an arbitrary origin (never goes back).
    fn monotonic(&self) -> Duration;
    /// The wall clock, for `acquireTime` and `renewTime`.
    fn wall(&self) -> Timestamp;
}

/// The process's clocks.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self { origin: Instant::now() }
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
    fn wall(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// What this replica last saw of the Lease, and when (by its monotonic
/// clock) it saw that record first: client-go's `observedRecord` and
/// `observedTime`.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    record: Option<(LeaseSpec, Duration)>,
}

impl Observation {
    /// Notes the stored record at `now`. The observed time moves only when
    /// the record differs from the one seen before: a holder that renews
    /// changes its `renewTime` every round, whatever its clock says.
    pub fn observe(&mut self, spec: &LeaseSpec, now: Duration) {
        if self.record.as_ref().is_none_or(|(seen, _)| seen != spec) {
            self.record = Some((spec.clone(), now));
        }
    }

    /// Whether `me` may take or keep the Lease at `now`: it holds it, nobody
    /// does (released), or the record has not changed for a whole lease
    /// duration since this replica first saw it.
    pub fn may_acquire(&self, me: &str, now: Duration) -> bool {
        let Some((spec, observed)) = &self.record else { return true };
        match spec.holder_identity.as_deref() {
            Some(holder) if holder == me => true,
            None | Some("") => true,
            Some(_) => {
                let secs =
                    spec.lease_duration_seconds.and_then(|s| u64::try_from(s).ok()).unwrap_or(DEFAULT_LEASE_SECS);
                now >= *observed + Duration::from_secs(secs)
            }
        }
    }
}

/// Runs the election, publishing whether we lead; cheap to clone (one state).
#[derive(Clone, Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    me: String,
    lease_duration: Duration,
    clock: Arc<dyn Clock>,
    observed: Arc<Mutex<Observation>>,
}

impl LeaderElector {
    /// An elector for `me` in `namespace`, on the system clocks.
    pub fn new(client: Client, namespace: &str, me: String, lease_duration: Duration) -> Self {
        Self::with_clock(Api::namespaced(client, namespace), me, lease_duration, Arc::new(SystemClock::default()))
    }

    /// An elector on `api` (the Leases of the operator's namespace) reading time from `clock`.
    pub fn with_clock(api: Api<Lease>, me: String, lease_duration: Duration, clock: Arc<dyn Clock>) -> Self {
        Self { api, me, lease_duration, clock, observed: Arc::default() }
    }

    fn observation(&self) -> std::sync::MutexGuard<'_, Observation> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One round: read the Lease, create, renew or take it over when allowed.
    pub async fn round(&self) -> Result<Round, kube::Error> {
        let wall = MicroTime(self.clock.wall());
        let secs = i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX);
        match self.api.get_opt(LEASE_NAME).await? {
            None => {
                let spec = LeaseSpec {
                    holder_identity: Some(self.me.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(wall.clone()),
                    renew_time: Some(wall),
                    lease_transitions: Some(0),
                    ..Default::default()
                };
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(LEASE_NAME.into()), ..Default::default() },
                    spec: Some(spec.clone()),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {
                        self.observation().observe(&spec, self.clock.monotonic());
                        Ok(Round::Leading)
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Following),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                let now = self.clock.monotonic();
                let allowed = {
                    let mut observed = self.observation();
                    observed.observe(&spec, now);
                    observed.may_acquire(&self.me, now)
                };
                if !allowed {
                    return Ok(Round::Following);
                }
                let taking_over = spec.holder_identity.as_deref() != Some(&self.me);
                let mut new = spec.clone();
                new.holder_identity = Some(self.me.clone());
                new.lease_duration_seconds = Some(secs);
                new.renew_time = Some(wall.clone());
                if taking_over {
                    new.acquire_time = Some(wall);
                    new.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                lease.spec = Some(new.clone());
                match self.api.replace(LEASE_NAME, &PostParams::default(), &lease).await {
                    Ok(_) => {
                        self.observation().observe(&new, self.clock.monotonic());
                        Ok(Round::Leading)
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Following),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Gives the Lease up, if we hold it: an empty holder and a one-second
    /// duration (client-go's `ReleaseOnCancel`), so a follower takes it on
    /// its next look. Call after the controllers have stopped.
    pub async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else { return Ok(false) };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(&self.me) {
            return Ok(false);
        }
        let wall = MicroTime(self.clock.wall());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            acquire_time: Some(wall.clone()),
            renew_time: Some(wall),
            lease_transitions: spec.lease_transitions,
            ..Default::default()
        });
        self.api.replace(LEASE_NAME, &PostParams::default(), &lease).await?;
        Ok(true)
    }

    /// Runs rounds forever. `tx` carries true while we lead. A leader that
    /// cannot renew within the renew deadline (two thirds of the lease
    /// duration, like client-go's RenewDeadline) steps down, so it has stopped
    /// before another replica may take the expired lease. A round that hangs
    /// (an API server that accepts but does not answer) counts as failed.
    pub async fn run(self, tx: watch::Sender<bool>) {
        let period = self.lease_duration / 3;
        let follower_retry = period.min(FOLLOWER_RETRY);
        let renew_deadline = self.lease_duration * 2 / 3;
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            let round = match tokio::time::timeout(period, self.round()).await {
                Ok(result) => result,
                Err(_) => Err(kube::Error::Service(format!("no answer within {period:?}").into())),
            };
            match round {
                Ok(Round::Leading) => {
                    last_renewed = tokio::time::Instant::now();
                    if !*tx.borrow() {
                        tracing::info!(replica = %self.me, "acquired leadership");
                    }
                    tx.send_replace(true);
                }
                Ok(Round::Following) => {
                    if *tx.borrow() {
                        tracing::warn!(replica = %self.me, "lost leadership");
                    }
                    tx.send_replace(false);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election round failed");
                    if *tx.borrow() && last_renewed.elapsed() >= renew_deadline {
                        tracing::warn!(replica = %self.me, "could not renew the lease in time; stepping down");
                        tx.send_replace(false);
                    }
                }
            }
            tokio::time::sleep(if *tx.borrow() { period } else { follower_retry }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);
    const RENEW: Duration = Duration::from_secs(3);

    /// The record a holder writes at its own wall time `wall`.
    fn record(holder: Option<&str>, wall: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: Some(MicroTime(wall)),
            lease_duration_seconds: Some(LEASE.as_secs() as i32),
            ..Default::default()
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_holder_keeps_its_lease_and_a_released_one_is_free() {
        let mut o = Observation::default();
        assert!(o.may_acquire("b", secs(0)), "nothing observed yet: create it");
        o.observe(&record(Some("a"), Timestamp::now()), secs(0));
        assert!(o.may_acquire("a", secs(1)));
        assert!(!o.may_acquire("b", secs(1)));
        o.observe(&record(Some(""), Timestamp::now()), secs(2));
        assert!(o.may_acquire("b", secs(2)), "released: taken at once");
        o.observe(&record(None, Timestamp::now()), secs(3));
        assert!(o.may_acquire("b", secs(3)));
    }

    #[test]
    fn a_record_unchanged_for_a_lease_duration_since_it_was_observed_expires() {
        let mut o = Observation::default();
        let stale = record(Some("a"), Timestamp::now());
        o.observe(&stale, secs(100));
        // The same record seen again does not restart the count.
        o.observe(&stale, secs(105));
        assert!(!o.may_acquire("b", secs(109)));
        assert!(o.may_acquire("b", secs(110)));
        // A new renewal does.
        o.observe(&record(Some("a"), Timestamp::now() + jiff::SignedDuration::from_secs(1)), secs(110));
        assert!(!o.may_acquire("b", secs(119)));
    }

    #[test]
    fn a_record_already_old_by_its_timestamp_is_given_a_whole_lease_duration() {
        // A follower that starts (or whose clock runs ahead) sees a renewTime
        // an hour old: expiry still counts from when it observed the record.
        let mut o = Observation::default();
        o.observe(&record(Some("a"), Timestamp::now() - jiff::SignedDuration::from_hours(1)), secs(0));
        assert!(!o.may_acquire("b", secs(9)));
        assert!(o.may_acquire("b", secs(10)));
    }

    /// A holder whose wall clock is `skew` off renews every RENEW; a
    /// follower looks every second for ten minutes and never may take over.
    fn holder_with_skew_is_never_deposed(skew: jiff::SignedDuration) {
        let start = Timestamp::now();
        let mut follower = Observation::default();
        let mut current = record(Some("a"), start + skew);
        let mut last_renewal = 0;
        for t in 0..600u64 {
            if t % RENEW.as_secs() == 0 {
                current = record(Some("a"), start + skew + jiff::SignedDuration::from_secs(t as i64));
                last_renewal = t;
            }
            follower.observe(&current, secs(t));
            assert!(!follower.may_acquire("b", secs(t)), "deposed at {t}s with skew {skew}");
        }
        // Once it stops renewing, the Lease is free a lease duration after the last renewal was seen.
        follower.observe(&current, secs(600));
        assert!(!follower.may_acquire("b", secs(last_renewal + LEASE.as_secs() - 1)));
        assert!(follower.may_acquire("b", secs(last_renewal + LEASE.as_secs())));
    }

    #[test]
    fn a_holder_whose_clock_runs_minutes_behind_keeps_its_lease_while_it_renews() {
        holder_with_skew_is_never_deposed(-jiff::SignedDuration::from_mins(5));
    }

    #[test]
    fn a_holder_whose_clock_runs_minutes_ahead_keeps_its_lease_while_it_renews() {
        holder_with_skew_is_never_deposed(jiff::SignedDuration::from_mins(5));
    }

    /// A clock that tests move by hand.
    #[derive(Debug)]
    struct FakeClock {
        now: Mutex<Duration>,
        wall_offset: jiff::SignedDuration,
    }

    impl Clock for FakeClock {
        fn monotonic(&self) -> Duration {
            *self.now.lock().expect("lock")
        }
        fn wall(&self) -> Timestamp {
            Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(1_900_000_000) + self.wall_offset
        }
    }

    #[tokio::test]
    async fn the_elector_reads_its_injected_clock() {
        let clock = Arc::new(FakeClock { now: Mutex::new(secs(7)), wall_offset: jiff::SignedDuration::from_mins(-3) });
        assert_eq!(clock.monotonic(), secs(7));
        let (client, _handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let client = Client::new(client, "writ-system");
        let elector =
            LeaderElector::with_clock(Api::namespaced(client, "writ-system"), "a".into(), LEASE, clock.clone());
        assert_eq!(elector.clock.wall(), clock.wall());
        elector.observation().observe(&record(Some("b"), elector.clock.wall()), elector.clock.monotonic());
        *clock.now.lock().expect("lock") = secs(16);
        assert!(!elector.observation().may_acquire("a", elector.clock.monotonic()));
        *clock.now.lock().expect("lock") = secs(17);
        assert!(elector.observation().may_acquire("a", elector.clock.monotonic()));
    }
}
