//! The child process of the crash tests: runs (or resumes) one flow of plain steps on a store
//! and records every step's side effect in a file, until it ends or is killed.
//!
//! ```text
//! baton-chaos-child --db sqlite://run.db --flow <uuid> --steps 200 --step-ms 10 --effects effects.jsonl
//! ```
//!
//! Prints the flow's final state on success.

// A binary: its output is its interface.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::Context;
use baton_cli::demo::{registry, SideEffects};
use baton_core::store;
use baton_core::{CreateOptions, Engine, FlowId};
use clap::Parser;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// The store's URL.
    #[arg(long)]
    db: String,
    /// PostgreSQL schema to use.
    #[arg(long)]
    schema: Option<String>,
    /// The flow run to create or resume.
    #[arg(long)]
    flow: FlowId,
    /// How many steps.
    #[arg(long, default_value_t = 200)]
    steps: u32,
    /// How long each step takes.
    #[arg(long, default_value_t = 10)]
    step_ms: u64,
    /// The side-effect log.
    #[arg(long)]
    effects: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = baton_chaos::open(&args.db, args.schema.as_deref())
        .await
        .context("opening the store")?;
    let (flow, inputs) = registry(SideEffects::File(args.effects))
        .context("the demo registry")?
        .build_newest(
            "steps",
            &json!({ "steps": args.steps, "step_ms": args.step_ms }),
        )
        .context("building the flow")?;
    let engine = Engine::from_arc(store.clone());
    match store.load_flow(args.flow).await {
        Ok(_) => {}
        Err(store::Error::FlowNotFound(_)) => {
            engine
                .create_with(&flow, inputs, CreateOptions::new().id(args.flow))
                .await
                .context("creating the flow")?;
        }
        Err(e) => return Err(e).context("loading the flow"),
    }
    let outcome = engine
        .run(&flow, args.flow)
        .await
        .context("running the flow")?;
    println!("{}", outcome.state);
    Ok(())
}
