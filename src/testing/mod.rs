//! The test kit, shared by the unit tests, the integration tests, the fuzz
//! tests and the benches (feature `testing`; always on under `cargo test`):
//!
//! * [`ApiServer`]: a fake API server behind a real `kube::Client`, answering
//!   each request from a function and logging it, with [`Objects`] for a
//!   collection held in memory with optimistic concurrency;
//! * [`Verifier`]: a scripted API server over `tower-test` that expects each
//!   request in turn (method, path, body) and answers it, for tests of the
//!   order and content of writes;
//! * [`objects`]: builders of the API types, e.g.
//!   `CapabilityGrant::test("team", "g", "bot").active("alice", 3600).bound_to("bot-0")`.
//!
//! `Shared::test` and `Context::test` (in the layers above) build the
//! operator's state over a fake API server.

mod api_server;
pub mod objects;

pub use api_server::{objects_in, ApiServer, Call, Objects, Reply, Request, Verifier};
