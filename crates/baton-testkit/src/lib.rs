//! Test fixtures for baton, shared by every crate's tests.
//!
//! - [`Log`] and [`Probe`]: tasks that record each `execute` and `revert` call, and fail on
//!   command, so a test can check what ran, in which order, and how often.
//! - [`CrashStore`] and [`FlakyStore`]: store wrappers that kill the engine at the k-th write, or
//!   make the store unavailable for a while.
//! - [`FaultyBoard`]: a job-board wrapper whose claims or heartbeats fail on command.
//! - [`scenarios`]: the flows the crash tests run (linear, parallel graph, failing, retrying).
//! - [`crash`]: the crash-at-every-write check, generic over the store.
//! - [`conformance`]: store cases every backend must pass, one test per case per backend.
//! - [`board`]: job-board cases every backend must pass, likewise.
//!
//! Panics here are failed assertions: this crate is only ever used from tests.

#![forbid(unsafe_code)]
// A panic in a fixture is a failed test with a location, which is what tests want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod board;
mod boards;
pub mod conformance;
pub mod crash;
mod probe;
pub mod scenarios;
mod stores;

pub use boards::{BoardOp, FaultyBoard};
pub use probe::{Action, Call, Log, Phase, Probe};
pub use stores::{CrashMode, CrashStore, FlakyStore};

/// Builds [`baton_core::Inputs`] from `(name, value)` pairs.
#[must_use]
pub fn inputs<const N: usize>(pairs: [(&str, serde_json::Value); N]) -> baton_core::Inputs {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
