//! The parts of the controller machinery Writ builds itself instead of taking
//! kube-runtime's. Each replaces one kube-runtime piece, for a reason measured
//! at scale (`docs/design.md`, "The operator and the API server"), and keeps
//! the same contract towards the reconcilers.
//!
//! | kube-runtime piece | ours | why | invariant | test |
//! |---|---|---|---|---|
//! | `reflector` + `watcher` per controller | [`cache::Cache`] | one watch and one store per kind, shared by every controller and the webhooks, with a broadcast of changes | a subscriber that falls behind is told to resync; a re-list becomes a full pass | `cache::tests::a_subscriber_that_falls_behind_is_told_to_resync` |
//! | the scheduler as the only queue | [`intake::Intake`] and [`intake::every`] | kube's scheduler tables never shrink; timed requeues per object cost about 1 KiB each | at most `limit` admitted requests not yet reconciled; timed work is found by sweeps | `intake::tests::admits_up_to_the_limit_then_one_per_reconcile_reported` |
//! | `Action::requeue` from a fixed `error_policy` | [`retry::Retries`] | a lasting failure (a full revocation list) retried each second floods the API server and the log | each failure of an object doubles its delay up to 5 min; success starts it over | `retry::tests::delays_double_per_failure_up_to_the_cap` |
//! | `Recorder` | [`events::Events`] | `Recorder` keeps every Event six minutes and sweeps them all on each publish | the series cache holds at most `SERIES_CAPACITY` keys | `events::tests::the_series_cache_is_bounded` |
//! | `Api::list` per reconcile | [`authorities::Authorities`] | thousands of grant reconciles of one deleted identity each listing the namespace | one pair of lists in flight per namespace; a list already in flight is never a later caller's answer | `authorities::tests::callers_share_one_list_in_flight_and_who_asks_during_it_gets_the_next` |
//! | one `Api::patch` per change | [`batch::SecretWriter`] | a burst of grants of one agent rewrites its Secret once per grant, quadratic in bytes | writes to one Secret behind a write in flight go out together, in order; reads never see older than our last write | `batch::tests::writes_queued_behind_an_inflight_patch_go_out_together_in_order` |
//! | `predicates::generation` | [`gate::GenerationGate`] | status writes of an identity re-queued every pod and grant of the agent | only a first sighting, a new generation, the start of deletion and removal pass | `gate::tests::status_updates_do_not_pass_spec_changes_and_deletion_do` |

pub mod authorities;
pub mod batch;
pub mod cache;
pub mod events;
pub mod gate;
pub mod intake;
pub mod retry;
