//! Engine behaviour, in the spirit of TaskFlow's engine and retry tests.

// Helpers outside `#[test]` functions panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod board;
mod clock;
mod conductor;
mod conductor_errors;
mod crash;
mod data;
mod events;
mod graphs;
mod handle;
mod lifecycle;
mod limits;
mod patterns;
mod policies;
mod properties;
mod resume;
mod retries;
mod reverts;
mod self_fencing;
mod store;
mod testing;
mod time_limits;
mod typed;
mod validation;

use baton_core::{CompiledFlow, Engine, Inputs, MemoryStore, Outcome};

/// Runs `flow` on a fresh memory store and returns the outcome and the store.
async fn run(flow: &CompiledFlow, inputs: Inputs) -> (Outcome, MemoryStore) {
    let store = MemoryStore::new();
    let outcome = Engine::new(store.clone())
        .with_parallelism(4)
        .start(flow, inputs)
        .await
        .expect("the engine runs the flow");
    (outcome, store)
}
