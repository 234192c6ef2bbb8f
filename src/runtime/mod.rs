//! Running the operator: the API client, leader election, telemetry, and
//! `writ run`, which boots the layers below it (`docs/design.md`, "Layers").

mod client;
pub mod leader;
mod run;
pub mod telemetry;

pub use run::run;
