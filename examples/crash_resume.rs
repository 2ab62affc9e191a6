//! Kills a process for real in the middle of a flow, then resumes the flow in another process
//! from what the store recorded.
//!
//! ```text
//! cargo run --example crash_resume
//! ```
//!
//! The example creates a 10-step flow in a SQLite database in a temporary folder, then starts
//! a copy of itself (`current_exe() --child ...`) that runs the flow. Each step appends a line
//! to a file in that folder when it starts, so the count of executions survives the process.
//! When the fifth step has started, the parent sends the child SIGKILL (`Child::kill`), prints
//! what the store says, and resumes the flow with a new engine of its own. Steps that had
//! succeeded are not run again; the step caught running is run again, with a larger attempt
//! number and the same idempotency key.

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::sql::SqliteStore;
use baton::store::Store;
use baton::typed::{atom, Const, TypedFlow, TypedTask};
use baton::{AtomState, CompiledFlow, Engine, FlowId, Inputs, TaskContext, TaskError};

const STEPS: usize = 10;
/// The step during which the child is killed (0-based: the fifth).
const KILL_DURING: usize = 4;

/// Step number `i` (its input): records its execution in the log, then works for a while.
struct Step {
    log: Arc<Path>,
}

#[async_trait::async_trait]
impl TypedTask for Step {
    type Input = usize;
    type Output = usize;
    type Error = TaskError;

    async fn execute(&self, i: usize, ctx: &TaskContext) -> Result<usize, TaskError> {
        // One line per execution, written before the work, with O_APPEND: a killed process
        // leaves its line behind.
        let line = format!("{} {}\n", ctx.atom(), ctx.attempt());
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .and_then(|mut f| f.write_all(line.as_bytes()))?;
        println!(
            "  [pid {}] {} starts (attempt {}, key {})",
            std::process::id(),
            ctx.atom(),
            ctx.attempt(),
            ctx.idempotency_key()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        Ok(i)
    }
}

/// The flow: ten steps, each recording its execution in `log`.
fn ten_steps(log: &Path) -> anyhow::Result<CompiledFlow> {
    let log: Arc<Path> = Arc::from(log);
    let mut flow = TypedFlow::linear("ten-steps");
    for i in 0..STEPS {
        let step = Step { log: log.clone() };
        flow.add(atom(format!("step-{i}"), step), Const(i));
    }
    Ok(flow.compile()?)
}

fn db_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("flows.db").display())
}

/// Lines of the execution log: one per execution.
fn executions(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The child: runs the stored flow until it is killed.
async fn child(dir: &Path, id: FlowId) -> anyhow::Result<()> {
    let flow = ten_steps(&dir.join("executions.log"))?;
    let engine = Engine::new(SqliteStore::open(&db_url(dir)).await?);
    engine.run(&flow, id).await?;
    anyhow::bail!("the child finished the flow: it should have been killed first")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, dir, id] = args.as_slice() {
        if flag == "--child" {
            return child(Path::new(dir), id.parse()?).await;
        }
    }

    let dir = tempfile::tempdir()?;
    let log: PathBuf = dir.path().join("executions.log");
    let flow = ten_steps(&log)?;
    let store = SqliteStore::open(&db_url(dir.path())).await?;
    let id = Engine::new(store.clone())
        .create(&flow, Inputs::new())
        .await?;
    println!("created flow {id} in {}", dir.path().display());

    // Run it in a child process, and kill that process during step KILL_DURING.
    let mut process = Command::new(std::env::current_exe()?)
        .arg("--child")
        .arg(dir.path())
        .arg(id.to_string())
        .stdin(Stdio::null())
        .spawn()?;
    println!("child {} runs the flow", process.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    while executions(&log).len() <= KILL_DURING {
        if let Some(status) = process.try_wait()? {
            anyhow::bail!("the child exited early ({status})");
        }
        anyhow::ensure!(Instant::now() < deadline, "the child made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    process.kill()?; // SIGKILL on Unix: no destructor, no last write
    let status = process.wait()?;
    println!("  -- child killed ({status}) --");

    let snapshot = store.load_flow(id).await?;
    println!("the store says: flow {}", snapshot.flow.state);
    for atom in snapshot
        .atoms
        .iter()
        .filter(|a| a.state != AtomState::Pending)
    {
        println!(
            "  {:<7} {} (attempt {})",
            atom.name, atom.state, atom.attempt
        );
    }
    let running: Vec<&str> = snapshot
        .atoms
        .iter()
        .filter(|a| a.state == AtomState::Running)
        .map(|a| a.name.as_str())
        .collect();
    let killed_step = format!("step-{KILL_DURING}");
    anyhow::ensure!(
        running == [killed_step.as_str()],
        "expected only {killed_step} to be caught running, found {running:?}"
    );

    println!("a new engine in process {} resumes it", std::process::id());
    let outcome = Engine::new(store).run(&flow, id).await?;
    println!("flow ended {}", outcome.state);

    // How often each step ran, across both processes.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in executions(&log) {
        let step = line.split(' ').next().unwrap_or_default().to_owned();
        *counts.entry(step).or_default() += 1;
    }
    println!("executions per step (from the log):");
    for (step, n) in &counts {
        println!("  {step:<7} {n}");
    }
    let total: usize = counts.values().sum();
    println!("{total} executions for {STEPS} steps");
    anyhow::ensure!(outcome.is_success(), "the resumed flow should succeed");
    anyhow::ensure!(counts.len() == STEPS, "every step should have run");
    for (step, n) in &counts {
        let expected = if *step == killed_step { 2 } else { 1 };
        anyhow::ensure!(*n == expected, "{step} ran {n} times, expected {expected}");
    }
    Ok(())
}
