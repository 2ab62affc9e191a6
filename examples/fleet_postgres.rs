//! A fleet of three conductors sharing a PostgreSQL job board: 20 jobs posted, claimed and run
//! by whichever conductor is free, jobs that share a key run one at a time, then a graceful
//! shutdown.
//!
//! ```text
//! cargo run --example fleet_postgres --features postgres
//! BATON_TEST_POSTGRES_URL=postgres://user@host:5432/db cargo run --example fleet_postgres --features postgres
//! ```
//!
//! The database defaults to `postgres://postgres@127.0.0.1:5432/postgres`. The example works
//! in a schema of its own (`baton_fleet_<pid>_<time>`), which it drops at the end.
//!
//! Five jobs share the key `stack-a` and five `stack-b` (like jobs touching one Heat stack);
//! the other ten have no key. The three conductors run in this process, each with its own
//! `PostgresJobBoard` over the shared store, as they would in three processes. Their factory,
//! `provision`, takes its parameters as a type of its own (`Registry::register_typed`) and
//! builds a typed flow whose result is the name of the conductor that ran it. Each job is
//! posted with a `JobHandle`, which waits for it to end, woken by the board's `NOTIFY`, and
//! gives that result. Once every job is complete, the conductors' cancellation tokens are
//! cancelled: each stops claiming, drains, and deregisters, returning a summary of what it
//! did.

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use baton::board::{JobBoard, JobQuery};
use baton::conductor::{self, Summary};
use baton::handle::Ended;
use baton::sql::{PostgresJobBoard, PostgresOptions, PostgresStore};
use baton::typed::{atom, Const, TypedFlow, TypedTask};
use baton::{Conductor, Engine, JobHandle, NewJob, Registry, TaskContext};
use serde::{Deserialize, Serialize};
use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;

const JOBS: usize = 20;
const CONDUCTORS: usize = 3;

/// One job's run as its tasks saw it: who ran it, and when (ms since the start).
#[derive(Debug, Clone, Default)]
struct Run {
    conductor: String,
    started: u128,
    finished: u128,
}

type Runs = Arc<Mutex<BTreeMap<String, Run>>>;

/// The parameters of a `provision` job.
#[derive(Debug, Serialize, Deserialize)]
struct Provision {
    label: String,
}

/// Where a step of a job's run notes it: on the run's first step (the conductor running it,
/// and when it started), on its last (when it finished), or nowhere.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Note {
    Start,
    Finish,
    Nothing,
}

/// A step of a `provision` run: it is given the conductor's name, notes the run in `runs` as
/// `note` says, works for 40 ms, and returns the conductor's name.
struct Step {
    label: String,
    note: Note,
    runs: Runs,
    t0: Instant,
}

#[async_trait::async_trait]
impl TypedTask for Step {
    type Input = String;
    type Output = String;
    type Error = std::convert::Infallible;

    async fn execute(&self, who: String, _ctx: &TaskContext) -> Result<String, Self::Error> {
        let at = self.t0.elapsed().as_millis();
        if self.note == Note::Start {
            let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
            let run = runs.entry(self.label.clone()).or_default();
            (run.conductor, run.started) = (who.clone(), at);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        if self.note == Note::Finish {
            let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
            runs.entry(self.label.clone()).or_default().finished = self.t0.elapsed().as_millis();
        }
        Ok(who)
    }
}

/// The `provision` factory as conductor `conductor` registers it: three short steps, given
/// the conductor's name, the first and last noting the job's run in `runs`; the last one's
/// output (the conductor's name) is the flow's result.
fn registry(conductor: &str, runs: &Runs, t0: Instant) -> Registry {
    let (conductor, runs) = (conductor.to_owned(), runs.clone());
    let registry = Registry::new().register_typed("provision", 1, move |p: Provision| {
        let mut flow = TypedFlow::linear(format!("provision-{}", p.label));
        let mut last = None;
        for (name, note) in [
            ("reserve", Note::Start),
            ("boot", Note::Nothing),
            ("register", Note::Finish),
        ] {
            let (label, runs) = (p.label.clone(), runs.clone());
            let step = Step {
                label,
                note,
                runs,
                t0,
            };
            last = Some(flow.add(atom(name, step), Const(conductor.clone())));
        }
        if let Some(last) = &last {
            flow.returns(last);
        }
        flow
    });
    registry.unwrap_or_else(|e| panic!("the example's registry: {e}"))
}

async fn fleet(store: &PostgresStore) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let board = PostgresJobBoard::new(store);
    let shared: Arc<dyn JobBoard> = Arc::new(board.clone());

    // Post the jobs: every fourth shares key stack-a, the next ones stack-b, the rest none.
    // Each is posted with a handle that waits for its end and reads its result.
    let mut keys: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut handles = Vec::new();
    for i in 0..JOBS {
        let label = format!("job-{i:02}");
        let mut job = NewJob::new(&label, "provision").typed_params(&Provision {
            label: label.clone(),
        })?;
        let key = ["stack-a", "stack-b", "", ""][i % 4];
        if !key.is_empty() {
            job = job.key(key);
            keys.entry(key).or_default().push(label.clone());
        }
        let handle: JobHandle<String> = JobHandle::post(shared.clone(), job).await?;
        handles.push((label, handle));
    }
    println!("posted {JOBS} jobs");

    // Start the fleet: one token each, so each can be stopped on its own.
    let runs = Runs::default();
    let mut fleet = Vec::new();
    for n in 1..=CONDUCTORS {
        let name = format!("c{n}");
        let mut options = conductor::Options::default();
        options.name.clone_from(&name);
        options.concurrency = 3;
        let conductor = Conductor::new(
            Arc::new(PostgresJobBoard::new(store)),
            Engine::new(store.clone()),
            registry(&name, &runs, t0),
        )
        .with_options(options)?;
        let token = CancellationToken::new();
        let handle = tokio::spawn(conductor.run(token.clone()));
        fleet.push((name, token, handle));
    }

    // Wait for every job to end: each handle sleeps until the board tells it its job ended.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ran_by = BTreeMap::new();
    for (label, handle) in &handles {
        let left = deadline.saturating_duration_since(Instant::now());
        match handle.wait_timeout(left).await? {
            Some(Ended::Succeeded(conductor)) => {
                ran_by.insert(label.clone(), conductor);
            }
            Some(other) => anyhow::bail!("{label} did not succeed: {other:?}"),
            None => {
                // A conductor that stopped on its own hit an error: report it.
                for (name, _, handle) in &mut fleet {
                    if handle.is_finished() {
                        let ended = handle.await?;
                        anyhow::bail!("conductor {name} stopped early: {ended:?}");
                    }
                }
                anyhow::bail!("{label} had not ended after 30 s");
            }
        }
    }
    let mut registered: Vec<String> = board
        .conductors()
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    registered.sort();
    println!(
        "all {JOBS} jobs complete after {} ms; conductors registered on the board: {}",
        t0.elapsed().as_millis(),
        registered.join(", ")
    );

    // Graceful shutdown: cancel each conductor's token and collect its summary.
    for (_, token, _) in &fleet {
        token.cancel();
    }
    let mut total = Summary::default();
    for (name, _, handle) in fleet {
        let s = handle.await??;
        println!(
            "  {name}: claimed {}, consumed {}, abandoned {}, lost {}, left behind {}",
            s.claimed, s.consumed, s.abandoned, s.lost, s.left_behind
        );
        total.claimed += s.claimed;
        total.consumed += s.consumed;
        total.lost += s.lost;
    }
    let still_registered = board.conductors().await?.len();

    // What ran where, and when.
    let runs = runs.lock().unwrap_or_else(PoisonError::into_inner).clone();
    for (key, labels) in &keys {
        let line: Vec<String> = labels
            .iter()
            .filter_map(|l| runs.get(l).map(|r| (l, r)))
            .map(|(l, r)| format!("{l}@{} {}-{}", r.conductor, r.started, r.finished))
            .collect();
        println!("  key {key}, one at a time (ms): {}", line.join(", "));
    }

    // The checks: every job ran once and succeeded, the keys were respected, nobody is left.
    let jobs = board.list(&JobQuery::all()).await?;
    for job in &jobs {
        let state = job.outcome.as_ref().and_then(|o| o["state"].as_str());
        anyhow::ensure!(
            state == Some("SUCCESS"),
            "{} ended {:?}",
            job.name,
            job.outcome
        );
    }
    anyhow::ensure!(
        runs.len() == JOBS && total.consumed == JOBS as u64 && total.lost == 0,
        "every job should have been run and consumed once"
    );
    for (label, conductor) in &ran_by {
        anyhow::ensure!(
            runs.get(label).map(|r| &r.conductor) == Some(conductor),
            "{label}'s result names {conductor}, who did not run it"
        );
    }
    for labels in keys.values() {
        for pair in labels.windows(2) {
            let (a, b) = (&runs[&pair[0]], &runs[&pair[1]]);
            anyhow::ensure!(
                a.finished <= b.started,
                "{} started before {} (same key) finished",
                pair[1],
                pair[0]
            );
        }
    }
    anyhow::ensure!(
        registered.len() == CONDUCTORS,
        "expected {CONDUCTORS} live conductors"
    );
    anyhow::ensure!(
        still_registered == 0,
        "conductors should deregister at shutdown"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("BATON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let schema = format!("baton_fleet_{}_{stamp}", std::process::id());

    let store = PostgresStore::connect_with(&url, PostgresOptions::new().schema(&schema))
        .await
        .with_context(|| format!("cannot open a store at {url} (is PostgreSQL running?)"))?;
    println!("store in schema {schema}");
    let result = fleet(&store).await;
    store.close().await;

    // Drop the schema whatever happened.
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    println!("dropped schema {schema}");
    result
}
