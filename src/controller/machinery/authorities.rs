//! A namespace's AgentIdentities and DelegationPolicies as the API server
//! lists them, for the grant reconciles that must not take "gone" from a
//! cache alone, shared by the reconciles that ask at the same time.
//!
//! Deleting an AgentIdentity with thousands of grants makes each grant's
//! reconcile ask the API server for a pair of lists before ending it. At most
//! one pair per namespace is in flight; everyone who asks while it is gets
//! the next pair, together. A pair already in flight when a
//! reconcile asks is never its answer: it may have been read before what
//! that reconcile missed in its cache was created.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use kube::{Api, Client};
use tokio::sync::oneshot;

use crate::api::{AgentIdentity, DelegationPolicy};

/// A namespace's AgentIdentities and (not deleting) DelegationPolicies.
pub type Authorities = Arc<(Vec<AgentIdentity>, Vec<DelegationPolicy>)>;
/// What one pair of lists gave every caller it served.
pub type Listed = Result<Authorities, Arc<kube::Error>>;

#[derive(Default)]
struct Queue {
    waiting: Vec<oneshot::Sender<Listed>>,
    listing: bool,
}

/// Group-committed lists of authorities, per namespace.
#[derive(Clone)]
pub struct AuthorityLists {
    client: Client,
    queues: Arc<Mutex<HashMap<String, Queue>>>,
}

impl AuthorityLists {
    /// Lists through `client`.
    pub fn new(client: Client) -> Self {
        Self { client, queues: Arc::default() }
    }

    /// The authorities of namespace `ns`, from lists the API server was
    /// asked for after this call began.
    pub async fn get(&self, ns: &str) -> Listed {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            let queue = queues.entry(ns.to_string()).or_default();
            queue.waiting.push(tx);
            !std::mem::replace(&mut queue.listing, true)
        };
        if start {
            // A task of its own, so that a cancelled caller (a reconcile
            // aborted on losing leadership) cannot strand the others.
            let (this, ns) = (self.clone(), ns.to_string());
            tokio::spawn(async move { this.serve(ns).await });
        }
        rx.await.unwrap_or_else(|_| Err(Arc::new(kube::Error::Service("the list was abandoned".into()))))
    }

    /// Lists for everyone waiting on `ns`, then again for whoever came
    /// meanwhile, until nobody waits.
    async fn serve(&self, ns: String) {
        loop {
            let waiting = {
                let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
                let Some(queue) = queues.get_mut(&ns) else { return };
                if queue.waiting.is_empty() {
                    queues.remove(&ns);
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            let listed = list(&self.client, &ns).await.map(Arc::new).map_err(Arc::new);
            for waiter in waiting {
                let _ = waiter.send(listed.clone());
            }
        }
    }
}

async fn list(client: &Client, ns: &str) -> Result<(Vec<AgentIdentity>, Vec<DelegationPolicy>), kube::Error> {
    let identities = Api::<AgentIdentity>::namespaced(client.clone(), ns).list(&Default::default()).await?.items;
    let mut policies = Api::<DelegationPolicy>::namespaced(client.clone(), ns).list(&Default::default()).await?.items;
    policies.retain(|p| p.metadata.deletion_timestamp.is_none());
    Ok((identities, policies))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;
    use crate::testing::{ApiServer, Reply};

    /// The test kit's API server, whose lists of identities wait for `gate`
    /// and name their one identity after how many lists of identities came
    /// before (`gen-0`, `gen-1`, …); lists of policies are empty.
    fn fake_api(lists: Arc<AtomicUsize>, gate: Arc<tokio::sync::Semaphore>) -> Client {
        ApiServer::new().client(move |req| {
            let (lists, gate) = (lists.clone(), gate.clone());
            async move {
                if !req.path.ends_with("/agentidentities") {
                    return Reply::ok(
                        json!({"apiVersion": "writ.dev/v1alpha1", "kind": "DelegationPolicyList", "metadata": {}, "items": []}),
                    );
                }
                let n = lists.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.expect("gate").forget();
                Reply::ok(json!({"apiVersion": "writ.dev/v1alpha1", "kind": "AgentIdentityList", "metadata": {},
                       "items": [{"apiVersion": "writ.dev/v1alpha1", "kind": "AgentIdentity",
                                  "metadata": {"name": format!("gen-{n}"), "namespace": "team"},
                                  "spec": {"class": "Agent", "serviceAccountName": "a", "owner": "o", "ceiling": []}}]}))
            }
        })
    }

    fn generation(listed: &Listed) -> String {
        listed.as_ref().expect("listed").0[0].metadata.name.clone().expect("name")
    }

    #[tokio::test]
    async fn callers_share_one_list_in_flight_and_who_asks_during_it_gets_the_next() {
        let (lists, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(tokio::sync::Semaphore::new(0)));
        let authorities = AuthorityLists::new(fake_api(lists.clone(), gate.clone()));
        // The first caller starts a list, held at the fake API server.
        let first = tokio::spawn({
            let a = authorities.clone();
            async move { a.get("team").await }
        });
        while lists.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Forty more ask while it is in flight.
        let later: Vec<_> = (0..40)
            .map(|_| {
                let a = authorities.clone();
                tokio::spawn(async move { a.get("team").await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(lists.load(Ordering::SeqCst), 1, "one list in flight");
        gate.add_permits(2);
        assert_eq!(generation(&first.await.expect("first")), "gen-0");
        for caller in later {
            assert_eq!(generation(&caller.await.expect("later")), "gen-1", "a list begun after they asked");
        }
        assert_eq!(lists.load(Ordering::SeqCst), 2, "41 callers, two lists");

        // Nobody waiting: nothing in flight, and the next caller lists anew.
        gate.add_permits(1);
        assert_eq!(generation(&authorities.get("team").await), "gen-2");
    }
}
