//! Leader election on a `coordination.k8s.io/v1` Lease: every replica serves
//! webhooks and endpoints, exactly one runs the controllers.
//!
//! The holder renews every `lease_duration / 3`; a replica takes the Lease
//! when its `renewTime + leaseDurationSeconds` lies in the past. Updates use
//! `replace` with the read `resourceVersion`, so two replicas racing for an
//! expired Lease cannot both win: the API server rejects the second write.

use std::time::Duration;

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

/// The Lease's name.
pub const LEASE_NAME: &str = "writ-leader";

/// What one round of the election decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// We hold the Lease.
    Leading,
    /// Someone else holds an unexpired Lease.
    Following,
}

/// Decides, from the stored Lease, whether `me` may take or keep it.
pub fn may_acquire(lease: &LeaseSpec, me: &str, now: Timestamp) -> bool {
    if lease.holder_identity.as_deref() == Some(me) {
        return true;
    }
    let Some(renewed) = lease.renew_time.as_ref().or(lease.acquire_time.as_ref()) else {
        return true;
    };
    let secs = i64::from(lease.lease_duration_seconds.unwrap_or(10));
    renewed.0.as_second() + secs < now.as_second() || lease.holder_identity.as_deref().is_none_or(str::is_empty)
}

/// Runs the election forever, publishing whether we lead on `tx`.
pub struct LeaderElector {
    api: Api<Lease>,
    me: String,
    lease_duration: Duration,
}

impl LeaderElector {
    /// An elector for `me` in `namespace`.
    pub fn new(client: Client, namespace: &str, me: String, lease_duration: Duration) -> Self {
        Self { api: Api::namespaced(client, namespace), me, lease_duration }
    }

    /// One round: read the Lease, create, renew or take it over when allowed.
    pub async fn round(&self) -> Result<Round, kube::Error> {
        let now = Timestamp::now();
        let secs = i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX);
        match self.api.get_opt(LEASE_NAME).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(LEASE_NAME.into()), ..Default::default() },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.me.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(Round::Leading),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Following),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                if !may_acquire(&spec, &self.me, now) {
                    return Ok(Round::Following);
                }
                let taking_over = spec.holder_identity.as_deref() != Some(&self.me);
                let mut new = spec.clone();
                new.holder_identity = Some(self.me.clone());
                new.lease_duration_seconds = Some(secs);
                new.renew_time = Some(MicroTime(now));
                if taking_over {
                    new.acquire_time = Some(MicroTime(now));
                    new.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                lease.spec = Some(new);
                match self.api.replace(LEASE_NAME, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(Round::Leading),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Following),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Runs rounds forever. `tx` carries true while we lead. A leader that
    /// cannot renew within the renew deadline (two thirds of the lease
    /// duration, like client-go's RenewDeadline) steps down, so it has stopped
    /// before another replica may take the expired lease. A round that hangs
    /// (an API server that accepts but does not answer) counts as failed.
    pub async fn run(self, tx: watch::Sender<bool>) {
        let period = self.lease_duration / 3;
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
            tokio::time::sleep(period).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        let now = Timestamp::now();
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: Some(MicroTime(now - jiff::SignedDuration::from_secs(renewed_secs_ago))),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn the_holder_keeps_its_lease() {
        assert!(may_acquire(&spec(Some("a"), 1, 10), "a", Timestamp::now()));
    }

    #[test]
    fn an_unexpired_lease_of_another_replica_is_respected() {
        assert!(!may_acquire(&spec(Some("a"), 3, 10), "b", Timestamp::now()));
    }

    #[test]
    fn an_expired_lease_can_be_taken_over() {
        assert!(may_acquire(&spec(Some("a"), 11, 10), "b", Timestamp::now()));
    }

    #[test]
    fn a_released_lease_can_be_taken() {
        assert!(may_acquire(&spec(None, 0, 10), "b", Timestamp::now()));
        assert!(may_acquire(&spec(Some(""), 0, 10), "b", Timestamp::now()));
    }
}
