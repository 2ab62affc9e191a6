//! Stops an engine dead in the middle of a flow, then resumes the flow with a new engine from
//! what the store recorded.
//!
//! ```text
//! cargo run --example crash_resume
//! ```
//!
//! The "crash" here is [`Control::halt`]: the engine stops at once, drops the task it was
//! running and writes nothing more, exactly what a killed process leaves behind. The new engine
//! skips what succeeded, runs again the step that was caught running (with a larger attempt
//! number and the same idempotency key) and finishes.

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton::store::Store;
use baton::{Atom, Control, Engine, Flow, MemoryStore, RunOptions};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let executions = Arc::new(AtomicUsize::new(0));
    let mut flow = Flow::linear("ten-steps");
    for i in 0..10 {
        let executions = executions.clone();
        flow = flow.add(Atom::from_fn(format!("step-{i}"), move |ctx| {
            let executions = executions.clone();
            async move {
                executions.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(40)).await;
                println!(
                    "  {} done (attempt {}, key {})",
                    ctx.atom(),
                    ctx.attempt(),
                    ctx.idempotency_key()
                );
                Ok(json!(i))
            }
        }));
    }
    let flow = flow.compile()?;

    let store = MemoryStore::new();
    let first = Engine::new(store.clone());
    let id = first.create(&flow, Default::default()).await?;

    println!("engine 1 starts flow {id}");
    let control = Control::new();
    let killer = {
        let control = control.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(170)).await;
            println!("  -- engine 1 dies --");
            control.halt();
        })
    };
    let interrupted = first
        .run_with(&flow, id, RunOptions::new().control(control))
        .await;
    killer.await?;
    anyhow::ensure!(
        interrupted.is_err(),
        "the first engine should have been stopped"
    );
    drop(first);

    let snapshot = store.load_flow(id).await?;
    println!("the store says: flow {}", snapshot.flow.state);
    for atom in &snapshot.atoms {
        if atom.state != baton::AtomState::Pending {
            println!(
                "  {:<8} {} (attempt {})",
                atom.name, atom.state, atom.attempt
            );
        }
    }

    println!("engine 2 resumes it");
    let outcome = Engine::new(store.clone()).run(&flow, id).await?;
    println!(
        "flow ended {} after {} executions of 10 steps",
        outcome.state,
        executions.load(Ordering::SeqCst)
    );
    anyhow::ensure!(outcome.is_success());
    Ok(())
}
