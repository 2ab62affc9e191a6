//! Test fixtures for baton, shared by every crate's tests.
//!
//! - [`Log`] and [`Probe`]: tasks that record each `execute` and `revert` call, and fail on
//!   command, so a test can check what ran, in which order, and how often.
//! - [`CrashStore`] (`baton_core::testing`'s) and [`FlakyStore`]: store wrappers that kill the
//!   engine at the k-th write, or make the store unavailable for a while (or lose the answer to
//!   a run's last write).
//! - [`FaultyBoard`]: a job-board wrapper whose claims or heartbeats fail on command.
//! - [`scenarios`]: the flows the crash tests run (linear, parallel graph, failing, retrying),
//!   and flows for edge cases ([`scenarios::huge_failures`]).
//! - [`run_until_retrying`]: runs a flow until a retry controller waits, and suspends it there.
//! - [`crash`]: the crash-at-every-write check of the scenarios, generic over the store: the
//!   crash test users get (`baton_core::testing::CrashTest`), with a check of the probes' calls.
//! - [`conformance`]: store cases every backend must pass, one test per case per backend.
//! - [`board`]: job-board cases every backend must pass, likewise.
//! - [`lifecycle`]: conductor cases (upgrades, parking, recovery) every backend pair must pass.
//! - [`handle`]: job handles waiting for typed jobs that succeed, revert or are parked, on
//!   every backend pair.
//! - [`limits`]: time limits, deadlines and cancellation, on every store.
//! - [`policies`]: per-atom retry policies, on every store.
//! - [`typed`]: typed tasks' values through every store and a resume.
//! - [`Proxy`]: a loopback TCP proxy whose link can be cut (silence both ways, sockets kept
//!   open, as on a dead network path) and healed.
//!
//! Panics here are failed assertions: this crate is only ever used from tests.

#![forbid(unsafe_code)]
// A panic in a fixture is a failed test with a location, which is what tests want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod board;
mod boards;
pub mod cancel;
pub mod conformance;
pub mod crash;
pub mod handle;
pub mod lifecycle;
pub mod limits;
pub mod policies;
mod probe;
pub mod prometheus;
pub mod proxy;
pub mod scenarios;
mod stores;
pub mod typed;

pub use baton_core::testing::{CrashMode, CrashStore};
pub use boards::{BoardOp, FaultyBoard};
pub use probe::{Action, Call, Log, Phase, Probe};
pub use proxy::Proxy;
pub use stores::FlakyStore;

/// Runs (or resumes) the stored run `id` of `flow` on `engine` until a retry controller goes
/// `RETRYING`, suspends it there, and returns the outcome (`SUSPENDED`, unless the run ended
/// first).
pub async fn run_until_retrying(
    engine: &baton_core::Engine,
    flow: &baton_core::CompiledFlow,
    id: baton_core::FlowId,
) -> baton_core::Outcome {
    use baton_core::model::Change;
    use baton_core::{AtomState, Control, EventKind, RunOptions};

    let control = Control::new();
    let mut events = engine.subscribe();
    let watcher = {
        let control = control.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let retrying = matches!(
                    event.map(|e| e.kind),
                    Ok(EventKind::Transition(Change::Atom {
                        to: AtomState::Retrying,
                        ..
                    }))
                );
                if retrying {
                    control.suspend();
                    return;
                }
            }
        })
    };
    let outcome = engine
        .run_with(flow, id, RunOptions::new().control(control))
        .await
        .expect("the engine runs the flow");
    watcher.abort();
    outcome
}

/// Builds [`baton_core::Inputs`] from `(name, value)` pairs.
#[must_use]
pub fn inputs<const N: usize>(pairs: [(&str, serde_json::Value); N]) -> baton_core::Inputs {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
