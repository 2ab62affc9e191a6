//! `baton-bench`: measures baton and prints one JSON line per run.
//!
//! ```text
//! cargo run --release -p baton-bench -- compile --atoms 10000
//! cargo run --release -p baton-bench -- linear --backend sqlite --tasks 1000
//! cargo run --release -p baton-bench -- fanout --backend postgres --tasks 1000 --parallelism 8
//! cargo run --release -p baton-bench -- floor --backend sqlite --gap-us 0,5,20
//! cargo run --release -p baton-bench -- resume --backend sqlite --steps 1000,10000,100000
//! cargo run --release -p baton-bench -- history --backend postgres --runs 1000000
//! cargo run --release -p baton-bench -- backlog --backend postgres --jobs 50000 --small 2000
//! cargo run --release -p baton-bench -- announce --tasks 1000 --rounds 10
//! cargo run --release -p baton-bench -- console --backend postgres --runs 1000000
//! ```
//!
//! Figures are measured in the run that prints them; nothing is asserted here. Each SQL run
//! also measures the *floor*: how many single-row commits a second the same database manages in
//! the same run, so `steps_per_sec / floor` is a ratio taken on one machine at one time.
//! `linear` and `fanout` measure in rounds, each a new run of the flow between two floors, and
//! report medians (the ratio: the median of each run's speed over the mean of the floors just
//! before and just after it), because how fast a small virtual machine wakes threads drifts
//! within seconds. `commits_per_step` is
//! counted by the store, not guessed.
//!
//! The floor's inserts go over one connection kept open, as the stores' commits do (SQLite
//! writes on one connection, PostgreSQL commits keep theirs between writes), from a task on the
//! runtime, as the engine commits from the task that runs the flow, and wait for each answer
//! the way the store does; so the ratio measures what baton adds to a commit, not what a
//! client path costs that the store avoids (taking a connection from sqlx's pool and giving it
//! back costs a ping or two each time).

// A command-line tool: its output is the point.
#![allow(clippy::print_stdout)]

mod announce;
mod console;
mod fleet;
mod history;
mod resume;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use baton_core::store::Store;
use baton_core::{Atom, Engine, Flow, MemoryStore};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use sqlx::Connection;

#[derive(Parser)]
#[command(about = "baton's benchmark harness: one JSON line of measured figures per run")]
struct Cli {
    /// Install the Prometheus metrics recorder before the run (`baton_console::metrics`), so
    /// that the figures include what counting costs; without it every count is a no-op.
    #[arg(long, global = true)]
    metrics: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Memory,
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(clap::Args, Clone)]
struct Target {
    /// Where the flow's state is kept.
    #[arg(long, value_enum, default_value_t = Backend::Memory)]
    backend: Backend,
    /// Overrides the database location (PostgreSQL: BATON_TEST_POSTGRES_URL, else
    /// postgres://postgres@127.0.0.1:5432/postgres; SQLite: a new file in a temporary folder).
    #[arg(long)]
    database_url: Option<String>,
    /// SQLite: how long a commit spins for its answer before sleeping, in microseconds
    /// (`SqliteOptions::spin`; the floor waits the same way). Default: the store's default.
    #[arg(long)]
    sqlite_spin_us: Option<u64>,
    /// How the SQL stores write their steps (`StepFormat`: `short`, the stores' default, or
    /// `long`).
    #[arg(long, value_enum, default_value_t = StepForm::Short)]
    step_format: StepForm,
    /// PostgreSQL: how long after a wake-up posts share the next one, in milliseconds
    /// (`PostgresJobBoard::with_wake_window`). Default: the board's default.
    #[arg(long)]
    pg_wake_window_ms: Option<u64>,
    /// PostgreSQL: the store announces each step (`PostgresOptions::announce_steps`).
    #[arg(long)]
    pg_announce_steps: bool,
    /// SQLite: the conductors of the `jobs`, `backlog` and `history` scenarios share one
    /// store, as the conductors of one process do. By default each opens its own, as
    /// conductors in separate processes do, and they take SQLite's write lock in turn.
    #[arg(long)]
    one_store: bool,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum StepForm {
    Long,
    Short,
}

impl Target {
    fn step_format(&self) -> baton_sql::StepFormat {
        match self.step_format {
            StepForm::Long => baton_sql::StepFormat::Long,
            StepForm::Short => baton_sql::StepFormat::Short,
        }
    }

    /// The SQLite store's options for this run.
    fn sqlite_options(&self) -> baton_sql::SqliteOptions {
        let options = baton_sql::SqliteOptions::new().step_format(self.step_format());
        match self.sqlite_spin_us {
            Some(us) => options.spin(std::time::Duration::from_micros(us)),
            None => options,
        }
    }

    /// A PostgreSQL job board on `store`, with this run's wake window.
    fn postgres_board(&self, store: &baton_sql::PostgresStore) -> baton_sql::PostgresJobBoard {
        let board = baton_sql::PostgresJobBoard::new(store);
        match self.pg_wake_window_ms {
            Some(ms) => board.with_wake_window(std::time::Duration::from_millis(ms)),
            None => board,
        }
    }

    /// The PostgreSQL store's options for this run, in `schema`.
    fn postgres_options(&self, schema: &str) -> baton_sql::PostgresOptions {
        baton_sql::PostgresOptions::new()
            .schema(schema)
            .step_format(self.step_format())
            .announce_steps(self.pg_announce_steps)
    }
}

#[derive(Subcommand)]
enum Scenario {
    /// Compile flows of N atoms (linear with data dependencies, and a wide graph) and of N/10,
    /// and report how compile time scales.
    Compile {
        #[arg(long, default_value_t = 10_000)]
        atoms: usize,
    },
    /// Run a linear flow of no-op tasks, one at a time.
    Linear {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        tasks: usize,
        /// Runs of the flow measured, each between two floors; the medians are reported.
        /// On a small virtual machine a single round's ratio ranges over a factor of three, so
        /// the default takes enough of them for a steadier median.
        #[arg(long, default_value_t = 15)]
        rounds: usize,
    },
    /// End to end: post N one-task jobs while K conductors claim, run and consume them.
    Jobs {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        jobs: usize,
        #[arg(long, default_value_t = 4)]
        conductors: usize,
        /// Jobs each conductor runs at once (default: a conductor's own default).
        #[arg(long, default_value_t = baton_core::conductor::Options::default().concurrency)]
        concurrency: usize,
        /// Clients posting the jobs at the same time, each with its own connections.
        #[arg(long, default_value_t = 1)]
        posters: usize,
        /// Jobs posted and run to the end before the clock starts, so the timed jobs meet a
        /// running fleet (connections open, statements prepared, server caches warm), as
        /// they would in service; 0 times the fleet's start too.
        #[arg(long, default_value_t = 100)]
        warmup: usize,
    },
    /// A backlog drained: post N one-task jobs with no conductor running, then start K
    /// conductors and time until every job is complete; the same for a small backlog before and
    /// after, each in a new database (or schema), in the same run. The figure is the ratio of
    /// the deep backlog's rate to the mean of the small one's two.
    Backlog {
        #[command(flatten)]
        target: Target,
        /// Jobs in the deep backlog.
        #[arg(long, default_value_t = 50_000)]
        jobs: usize,
        /// Jobs in the shallow backlog, drained before and after the deep one.
        #[arg(long, default_value_t = 2000)]
        small: usize,
        #[arg(long, default_value_t = 4)]
        conductors: usize,
        /// Jobs each conductor runs at once (default: a conductor's own default).
        #[arg(long, default_value_t = baton_core::conductor::Options::default().concurrency)]
        concurrency: usize,
        /// Clients posting the backlog at the same time, each with its own connections.
        #[arg(long, default_value_t = 8)]
        posters: usize,
    },
    /// SIGKILL the conductor (a child process) that owns a running flow; measure how soon
    /// another conductor claims the job and completes it.
    Takeover {
        #[command(flatten)]
        target: Target,
    },
    /// (Internal) the child conductor of `takeover`.
    #[command(hide = true)]
    TakeoverChild {
        #[arg(long)]
        db: String,
        #[arg(long)]
        schema: Option<String>,
        /// Write long steps (`StepFormat::Long`), as the parent's `--step-format long`.
        #[arg(long)]
        long_steps: bool,
    },
    /// The floor alone, with the runtime thread kept busy for a while between commits (as
    /// an engine is, deciding the next step): how the cost of a commit depends on what
    /// happens between two of them.
    Floor {
        #[command(flatten)]
        target: Target,
        /// Commits per measurement.
        #[arg(long, default_value_t = 3000)]
        commits: usize,
        /// Microseconds of work between commits (the thread computes, it does not sleep), one
        /// measurement for each, in turn, repeated `--rounds` times.
        #[arg(long, value_delimiter = ',', default_value = "0,2,5,10,20")]
        gap_us: Vec<u64>,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Steps and jobs on a database holding N ended runs, against the same on an empty one:
    /// fills a database in bulk with N copies of a finished job's run (all its rows), times a
    /// linear flow and one-task jobs on it and on an empty database in turn, and times
    /// listing pages.
    History {
        #[command(flatten)]
        target: Target,
        /// Ended runs (with their jobs) the database is filled with.
        #[arg(long, default_value_t = 100_000)]
        runs: usize,
        /// Tasks of the linear flow timed.
        #[arg(long, default_value_t = 200)]
        tasks: usize,
        /// Rounds; in each, the linear flow and the jobs are timed on the empty and the full
        /// database in turn. Medians are reported.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// One-task jobs timed in each round, on each database.
        #[arg(long, default_value_t = 1000)]
        jobs: usize,
        #[arg(long, default_value_t = 4)]
        conductors: usize,
    },
    /// PostgreSQL: a linear flow run in turns by a store that announces its steps
    /// (`PostgresOptions::announce_steps`, what the console listens to) and one that does
    /// not, in the same schema, while a listener drains the announcements; prints both speeds
    /// and the median ratio of each pair of rounds.
    Announce {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        tasks: usize,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// Fill the database with N ended runs, serve the console on a loopback port, and time
    /// its listings (`/api/flows` pages, and `/api/jobs`) one after another while conductors
    /// run batches of one-task jobs beside it; prints the latencies' percentiles.
    Console {
        #[command(flatten)]
        target: Target,
        /// Ended runs (with their jobs) the database is filled with.
        #[arg(long, default_value_t = 1_000_000)]
        runs: usize,
        /// Requests timed (after 20 untimed).
        #[arg(long, default_value_t = 600)]
        requests: usize,
        /// Conductors running jobs meanwhile.
        #[arg(long, default_value_t = 4)]
        conductors: usize,
        /// One-task jobs in each batch they run.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// Run no-op tasks with no order among them, P at a time.
    Fanout {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        tasks: usize,
        #[arg(long, default_value_t = 8)]
        parallelism: usize,
        /// Runs of the flow measured, each between two floors; the medians are reported.
        /// On a small virtual machine a single round's ratio ranges over a factor of three, so
        /// the default takes enough of them for a steadier median.
        #[arg(long, default_value_t = 15)]
        rounds: usize,
    },
    /// Write a run whose log grows to each of N steps, and time loading it (as a resume does)
    /// from its checkpoint and, for the same run written without checkpoints, by replaying
    /// the whole log: one line per length.
    Resume {
        #[command(flatten)]
        target: Target,
        /// Lengths of the log at which loads are timed.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        steps: Vec<usize>,
        /// What the log is made of.
        #[arg(long, value_enum, default_value_t = resume::Shape::Progress)]
        shape: resume::Shape,
        /// The checkpoint policy's least number of steps between checkpoints (default: the
        /// stores' default, `Checkpoints::DEFAULT`).
        #[arg(long)]
        min_steps: Option<u32>,
        /// The policy's least number of steps per atom of the run between checkpoints.
        #[arg(long)]
        steps_per_atom: Option<u32>,
        /// Loads timed at each length (the median is reported).
        #[arg(long, default_value_t = 5)]
        loads: usize,
    },
}

fn noop(name: String) -> Atom {
    Atom::from_fn(name, |_| async { Ok(Value::Null) })
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

fn fanout_flow(n: usize) -> Flow {
    let mut flow = Flow::unordered("fanout");
    for i in 0..n {
        flow = flow.add(noop(format!("t{i}")));
    }
    flow
}

fn wide_graph(n: usize) -> Flow {
    // A root, then n-2 parallel atoms reading it, then a join after all of them.
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

/// `floor`: the floor's single-row commits with `gaps` of work between them, each measured
/// `rounds` times in turn; prints the median microseconds a commit took beyond its gap.
async fn floor_gaps(target: &Target, commits: usize, gaps: &[u64], rounds: usize) -> Result<()> {
    let bench = open(target).await?;
    let floor = bench.floor.clone();
    anyhow::ensure!(
        !matches!(*floor, Floor::None),
        "the memory backend has no floor"
    );
    // Once untimed, as `linear` does: the first inserts also grow the new database's log.
    floor.measure(commits).await?;
    let mut per_gap: Vec<Vec<f64>> = vec![Vec::new(); gaps.len()];
    for _ in 0..rounds.max(1) {
        for (gap, out) in gaps.iter().zip(&mut per_gap) {
            let gap = Duration::from_micros(*gap);
            let f = floor.clone();
            let rate = tokio::spawn(async move { f.inserts_apart(commits, gap).await }).await??;
            // Microseconds a commit took, beyond the gap before it.
            if let Some(rate) = rate {
                out.push(1e6 / rate - gap.as_secs_f64() * 1e6);
            }
        }
    }
    floor.clean_up().await?;
    let medians: Vec<f64> = per_gap.iter().map(|v| median(v)).collect();
    println!(
        "{}",
        json!({
            "scenario": "floor",
            "backend": target.backend.name(),
            "commits": commits,
            "rounds": rounds.max(1),
            "gap_us": gaps,
            "commit_us_beyond_gap": medians,
            "commit_us_beyond_gap_rounds": per_gap,
        })
    );
    Ok(())
}

/// A store to measure, a way to count its commits, and its floor.
struct Bench {
    store: Arc<dyn Store>,
    commits: Box<dyn Fn() -> u64>,
    floor: Arc<Floor>,
    _dir: Option<tempfile::TempDir>,
}

enum Floor {
    None,
    Sqlite(
        tokio::sync::Mutex<sqlx::SqliteConnection>,
        std::time::Duration,
    ),
    Postgres(tokio::sync::Mutex<sqlx::PgConnection>, String),
}

impl Floor {
    /// Single-row commits a second on the same database, `n` of them, made the way the store
    /// makes its commits: from a task on the runtime (the engine runs a flow in one), waiting
    /// for each answer as the store does (SQLite: `baton_sql::spin` with `--sqlite-spin-us`,
    /// the store's setting too).
    async fn measure(self: &Arc<Self>, n: usize) -> Result<Option<f64>> {
        let floor = self.clone();
        tokio::spawn(async move { floor.inserts(n).await }).await?
    }

    async fn inserts(&self, n: usize) -> Result<Option<f64>> {
        self.inserts_apart(n, Duration::ZERO).await
    }

    /// As [`Floor::inserts`], keeping the thread busy for `gap` before each insert.
    async fn inserts_apart(&self, n: usize, gap: Duration) -> Result<Option<f64>> {
        let start = Instant::now();
        let busy = || {
            let until = Instant::now() + gap;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        };
        match self {
            Floor::None => return Ok(None),
            Floor::Sqlite(conn, spin) => {
                let mut conn = conn.lock().await;
                for i in 0..n {
                    busy();
                    let insert = sqlx::query("INSERT INTO bench_floor (v) VALUES (?1)")
                        .bind(format!("row-{i}"))
                        .execute(&mut *conn);
                    baton_sql::spin::spin_then_sleep(*spin, insert).await?;
                }
            }
            Floor::Postgres(conn, schema) => {
                let mut conn = conn.lock().await;
                let sql = format!("INSERT INTO {schema}.bench_floor (v) VALUES ($1)");
                for i in 0..n {
                    busy();
                    sqlx::query(&sql)
                        .bind(format!("row-{i}"))
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        Ok(Some(n as f64 / start.elapsed().as_secs_f64()))
    }

    async fn clean_up(&self) -> Result<()> {
        if let Floor::Postgres(conn, schema) = self {
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut *conn.lock().await)
                .await?;
        }
        Ok(())
    }
}

/// The median of measured figures (the mean of the middle two for an even count).
fn median(figures: &[f64]) -> f64 {
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.is_empty() {
        f64::NAN
    } else if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// The SQLite database to measure: `--database-url`, else a new file in a temporary folder
/// (returned too, as it must live as long as the database is used).
fn sqlite_url(target: &Target) -> Result<(String, Option<tempfile::TempDir>)> {
    Ok(match &target.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            (url, Some(dir))
        }
    })
}

/// The PostgreSQL server to measure: `--database-url`, else `BATON_TEST_POSTGRES_URL`, else
/// the local default.
fn postgres_url(target: &Target) -> String {
    target
        .database_url
        .clone()
        .or_else(|| std::env::var("BATON_TEST_POSTGRES_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn open(target: &Target) -> Result<Bench> {
    match target.backend {
        Backend::Memory => {
            let store = MemoryStore::new();
            let counter = store.clone();
            Ok(Bench {
                store: Arc::new(store),
                commits: Box::new(move || counter.commits()),
                floor: Arc::new(Floor::None),
                _dir: None,
            })
        }
        Backend::Sqlite => {
            let (url, dir) = sqlite_url(target)?;
            let options = target.sqlite_options();
            let spin = options.spin;
            let store = baton_sql::SqliteStore::open_with(&url, options).await?;
            let counter = store.clone();
            // The floor uses the store's own settings: WAL, synchronous=NORMAL, and one
            // connection kept open, as the store keeps the one it writes on.
            let options: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
            let mut conn = sqlx::SqliteConnection::connect_with(
                &options
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal),
            )
            .await?;
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS bench_floor (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
            )
            .execute(&mut conn)
            .await?;
            Ok(Bench {
                store: Arc::new(store),
                commits: Box::new(move || counter.commits()),
                floor: Arc::new(Floor::Sqlite(tokio::sync::Mutex::new(conn), spin)),
                _dir: dir,
            })
        }
        Backend::Postgres => {
            let url = postgres_url(target);
            let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
            let store =
                baton_sql::PostgresStore::connect_with(&url, target.postgres_options(&schema))
                    .await
                    .with_context(|| format!("connecting to {url}"))?;
            let counter = store.clone();
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            sqlx::query(&format!(
                "CREATE TABLE {schema}.bench_floor (id BIGSERIAL PRIMARY KEY, v TEXT NOT NULL)"
            ))
            .execute(&mut conn)
            .await?;
            Ok(Bench {
                store: Arc::new(store),
                commits: Box::new(move || counter.commits()),
                floor: Arc::new(Floor::Postgres(tokio::sync::Mutex::new(conn), schema)),
                _dir: None,
            })
        }
    }
}

async fn run_flow(
    name: &str,
    target: &Target,
    flow: Flow,
    tasks: usize,
    parallelism: usize,
    rounds: usize,
) -> Result<()> {
    let bench = open(target).await?;
    let compiled = flow.compile()?;
    let engine = Engine::from_arc(bench.store.clone()).with_parallelism(parallelism);
    let rounds = rounds.max(1);

    // Once untimed: the first inserts on a new database also grow its log, which the flow's
    // commits then find done.
    bench.floor.measure(tasks).await?;
    // Then rounds, each a new run of `tasks` steps between two floors (the floor after one
    // run is the floor before the next): how fast a machine wakes its threads drifts within
    // seconds, so each run is compared with the mean of the floors measured just before and
    // just after it, and the medians are reported.
    let mut floors = Vec::with_capacity(rounds + 1);
    let mut speeds = Vec::with_capacity(rounds);
    let mut commits = 0;
    let mut secs = 0.0;
    floors.extend(bench.floor.measure(tasks).await?);
    for _ in 0..rounds {
        let id = engine.create(&compiled, Default::default()).await?;
        let before = (bench.commits)();
        let start = Instant::now();
        let outcome = engine.run(&compiled, id).await?;
        let elapsed = start.elapsed().as_secs_f64();
        commits += (bench.commits)() - before;
        anyhow::ensure!(outcome.is_success(), "flow ended {}", outcome.state);
        secs += elapsed;
        speeds.push(tasks as f64 / elapsed);
        floors.extend(bench.floor.measure(tasks).await?);
    }
    bench.floor.clean_up().await?;

    let steps_per_sec = median(&speeds);
    let floor = (!floors.is_empty()).then(|| median(&floors));
    let ratios: Option<Vec<f64>> = (!floors.is_empty()).then(|| {
        speeds
            .iter()
            .zip(floors.windows(2))
            .map(|(s, around)| s / ((around[0] + around[1]) / 2.0))
            .collect()
    });
    println!(
        "{}",
        json!({
            "scenario": name,
            "backend": target.backend.name(),
            "tasks": tasks,
            "parallelism": parallelism,
            "rounds": rounds,
            // The flows' time over all rounds (the floors' not included).
            "seconds": secs,
            "steps_per_sec": steps_per_sec,
            "steps_per_sec_rounds": speeds,
            "commits": commits,
            "commits_per_step": commits as f64 / (tasks * rounds) as f64,
            "floor_commits_per_sec": floor,
            "floor_rounds": (!floors.is_empty()).then_some(&floors),
            "ratio_to_floor": ratios.as_deref().map(median),
            "ratio_rounds": ratios,
        })
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Logs only when asked for (RUST_LOG=warn, ...): the figures are the output.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if cli.metrics {
        baton_console::metrics::install()?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.scenario {
        Scenario::Compile { atoms } => compile(atoms),
        Scenario::Jobs {
            target,
            jobs,
            conductors,
            concurrency,
            posters,
            warmup,
        } => rt.block_on(fleet::jobs(
            &target,
            fleet::Load {
                jobs,
                conductors,
                concurrency,
                posters,
                warmup,
            },
        )),
        Scenario::Backlog {
            target,
            jobs,
            small,
            conductors,
            concurrency,
            posters,
        } => rt.block_on(fleet::backlog(
            &target,
            [small, jobs],
            fleet::Load {
                jobs,
                conductors,
                concurrency,
                posters,
                warmup: 0,
            },
        )),
        Scenario::Takeover { target } => rt.block_on(fleet::takeover(&target)),
        Scenario::TakeoverChild {
            db,
            schema,
            long_steps,
        } => {
            let format = if long_steps {
                baton_sql::StepFormat::Long
            } else {
                baton_sql::StepFormat::Short
            };
            rt.block_on(fleet::takeover_child(&db, schema.as_deref(), format))
        }
        Scenario::Linear {
            target,
            tasks,
            rounds,
        } => rt.block_on(run_flow(
            "linear",
            &target,
            linear_flow(tasks),
            tasks,
            1,
            rounds,
        )),
        Scenario::Floor {
            target,
            commits,
            gap_us,
            rounds,
        } => rt.block_on(floor_gaps(&target, commits, &gap_us, rounds)),
        Scenario::Resume {
            target,
            steps,
            shape,
            min_steps,
            steps_per_atom,
            loads,
        } => {
            let policy = match (min_steps, steps_per_atom) {
                (None, None) => baton_sql::Checkpoints::DEFAULT,
                (min, per) => baton_sql::Checkpoints::every(
                    min.unwrap_or(baton_sql::Checkpoints::DEFAULT_MIN_STEPS),
                    per.unwrap_or(baton_sql::Checkpoints::DEFAULT_STEPS_PER_ATOM),
                ),
            };
            let settings = resume::Settings {
                shape,
                steps,
                policy,
                loads,
            };
            rt.block_on(resume::resume(&target, &settings))
        }
        Scenario::History {
            target,
            runs,
            tasks,
            rounds,
            jobs,
            conductors,
        } => rt.block_on(history::history(
            &target,
            history::Shape {
                runs,
                tasks,
                rounds,
                jobs,
                conductors,
            },
        )),
        Scenario::Announce {
            target,
            tasks,
            rounds,
        } => rt.block_on(announce::announce(&target, tasks, rounds)),
        Scenario::Console {
            target,
            runs,
            requests,
            conductors,
            batch,
        } => rt.block_on(console::console(
            &target,
            console::Shape {
                runs,
                requests,
                conductors,
                batch,
            },
        )),
        Scenario::Fanout {
            target,
            tasks,
            parallelism,
            rounds,
        } => rt.block_on(run_flow(
            "fanout",
            &target,
            fanout_flow(tasks),
            tasks,
            parallelism,
            rounds,
        )),
    }
}
