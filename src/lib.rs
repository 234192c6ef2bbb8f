//! Writ: short-lived, pod-bound identities for AI agents and other non-human
//! workloads, and separately granted, task-scoped, time-boxed capabilities.
//!
//! The library surface is what a resource server or a pipeline needs without
//! the operator: the API types ([`api`]), the pure admission rules
//! ([`policy`]), credentials ([`pki`]) and offline token verification
//! ([`verify`]). The rest runs the operator.

pub mod api;
pub mod check;
pub mod controller;
pub mod exchange;
pub mod inspect;
pub mod pki;
pub mod policy;
pub mod publish;
pub mod runtime;
pub mod state;
pub mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod verify;
pub mod webhook;
