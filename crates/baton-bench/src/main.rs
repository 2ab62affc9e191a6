//! `baton-bench`: measures baton and prints one JSON line per scenario.
//!
//! ```text
//! cargo run --release -p baton-bench -- compile --atoms 10000
//! cargo run --release -p baton-bench -- linear --backend memory --tasks 1000
//! cargo run --release -p baton-bench -- fanout --backend memory --tasks 1000 --parallelism 8
//! ```
//!
//! Figures are measured in the run that prints them; nothing is asserted here. Compare runs
//! taken on the same machine at the same time.

// A command-line tool: its output is the point.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use anyhow::Result;
use baton_core::{Atom, Engine, Flow, MemoryStore};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

#[derive(Parser)]
#[command(about = "baton's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    Memory,
}

#[derive(Subcommand)]
enum Scenario {
    /// Compile flows of N atoms (linear with data dependencies, and a wide graph) and of N/10,
    /// and report how compile time scales.
    Compile {
        #[arg(long, default_value_t = 10_000)]
        atoms: usize,
    },
    /// Run a linear flow of no-op tasks.
    Linear {
        #[arg(long, value_enum, default_value_t = Backend::Memory)]
        backend: Backend,
        #[arg(long, default_value_t = 1000)]
        tasks: usize,
    },
    /// Run no-op tasks with no order among them, P at a time.
    Fanout {
        #[arg(long, value_enum, default_value_t = Backend::Memory)]
        backend: Backend,
        #[arg(long, default_value_t = 1000)]
        tasks: usize,
        #[arg(long, default_value_t = 8)]
        parallelism: usize,
    },
}

fn noop(name: String) -> Atom {
    Atom::from_fn(name, |_| async { Ok(serde_json::Value::Null) })
}

fn linear_flow(n: usize) -> Flow {
    let mut flow = Flow::linear("linear");
    for i in 0..n {
        let mut atom = noop(format!("t{i}")).provides(format!("v{i}"));
        if i > 0 {
            // Every atom reads the first one's output and its predecessor's.
            atom = atom.requires(["v0".to_owned(), format!("v{}", i - 1)]);
        }
        flow = flow.add(atom);
    }
    flow
}

fn wide_graph(n: usize) -> Flow {
    // A root, then n-2 parallel atoms reading it, then a join reading all of them through
    // explicit links.
    let mut flow = Flow::graph("wide").add(noop("root".into()).provides("root"));
    for i in 0..n.saturating_sub(2) {
        flow = flow
            .add(noop(format!("w{i}")).requires(["root"]))
            .link(format!("w{i}"), "join");
    }
    flow.add(noop("join".into()))
}

/// The best of five compilations, in seconds (the minimum is the least disturbed by whatever
/// else the machine is doing).
fn time_compile(flow: &Flow) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let compiled = flow.compile()?;
        best = best.min(start.elapsed().as_secs_f64());
        anyhow::ensure!(!compiled.is_empty());
    }
    Ok(best)
}

fn compile(atoms: usize) -> Result<()> {
    let small = (atoms / 10).max(1);
    for (shape, build) in [
        ("linear", linear_flow as fn(usize) -> Flow),
        ("wide", wide_graph),
    ] {
        let small_secs = time_compile(&build(small))?;
        let big_secs = time_compile(&build(atoms))?;
        println!(
            "{}",
            json!({
                "scenario": "compile",
                "shape": shape,
                "atoms": atoms,
                "seconds": big_secs,
                "atoms_per_sec": atoms as f64 / big_secs,
                "small_atoms": small,
                "small_seconds": small_secs,
                // 10 for linear scaling, 100 for quadratic.
                "scaling": big_secs / small_secs,
            })
        );
    }
    Ok(())
}

async fn run_flow(name: &str, flow: Flow, tasks: usize, parallelism: usize) -> Result<()> {
    let compiled = flow.compile()?;
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone()).with_parallelism(parallelism);
    let id = engine.create(&compiled, Default::default()).await?;
    let before = store.commits();
    let start = Instant::now();
    let outcome = engine.run(&compiled, id).await?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(outcome.is_success(), "flow ended {}", outcome.state);
    let commits = store.commits() - before;
    println!(
        "{}",
        json!({
            "scenario": name,
            "backend": "memory",
            "tasks": tasks,
            "parallelism": parallelism,
            "seconds": secs,
            "steps_per_sec": tasks as f64 / secs,
            "commits": commits,
            "commits_per_step": commits as f64 / tasks as f64,
        })
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.scenario {
        Scenario::Compile { atoms } => compile(atoms),
        Scenario::Linear {
            backend: Backend::Memory,
            tasks,
        } => rt.block_on(run_flow("linear", linear_flow(tasks), tasks, 1)),
        Scenario::Fanout {
            backend: Backend::Memory,
            tasks,
            parallelism,
        } => {
            let mut flow = Flow::unordered("fanout");
            for i in 0..tasks {
                flow = flow.add(noop(format!("t{i}")));
            }
            rt.block_on(run_flow("fanout", flow, tasks, parallelism))
        }
    }
}
