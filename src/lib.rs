//! Writ: short-lived, pod-bound identities for AI agents and other non-human
//! workloads, and separately granted, task-scoped, time-boxed capabilities.
//!
//! The library surface is what a resource server or a pipeline needs without
//! the operator: the API types ([`api`]), the pure admission rules
//! ([`policy`]), and offline token verification ([`verify`]).

pub mod api;
