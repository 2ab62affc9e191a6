//! The `history` scenario: what a step, a job and a listing cost on a database that holds many
//! ended runs, against the same on an empty database, measured in one run.
//!
//! The database is filled in bulk: one run of a one-task job is made for real (posted, claimed,
//! run and consumed by a conductor), and its rows, in every table a finished run writes to, are
//! copied N times by `INSERT ... SELECT` statements over a generated series (`generate_series`
//! on PostgreSQL, a recursive CTE on SQLite), each copy with ids of its own. The copies are
//! therefore exactly what real runs leave, without running a million of them. On memory there
//! is no SQL: the runs are made for real, by the same conductors as the `jobs` scenario.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use baton_core::board::{JobBoard, JobQuery};
use baton_core::store::{FlowQuery, Store};
use baton_core::{Engine, FlowState, JobId, JobState};
use serde_json::{json, Value};

use crate::fleet::{self, Fleet};
use crate::{Backend, Target};

/// The shape of a `history` run.
pub(crate) struct Shape {
    /// Ended runs the database is filled with.
    pub(crate) runs: usize,
    /// Tasks of the linear flow timed.
    pub(crate) tasks: usize,
    /// Rounds: in each, the linear flow and the jobs are timed on each database in turn (the
    /// medians are reported).
    pub(crate) rounds: usize,
    /// One-task jobs timed in each round, on each database.
    pub(crate) jobs: usize,
    /// Conductors running them.
    pub(crate) conductors: usize,
}

/// Rows copied per statement when filling a SQL database.
const FILL_CHUNK: usize = 50_000;

/// `history`: opens two databases, fills one with `runs` ended runs, then times a linear flow
/// and one-task jobs on each in turn, round after round, and times listing pages on the full
/// one; prints the medians and the ratios.
///
/// Taking turns puts both databases under the same drift of the machine's speed (others
/// compile on it; a small virtual machine's speed drifts within seconds): each round's ratio
/// compares two measurements taken a few seconds apart.
pub(crate) async fn history(target: &Target, shape: Shape) -> Result<()> {
    // Two databases: on PostgreSQL two schemas of the server, on SQLite two files.
    anyhow::ensure!(
        !(target.backend == Backend::Sqlite && target.database_url.is_some()),
        "history opens two SQLite databases in a temporary folder: --database-url would make them one"
    );
    let empty = Fleet::open(target).await?;
    let full = Fleet::open(target).await?;
    // One job run for real on the database to fill: the run the fill copies.
    let (_, ran) = fleet::timed_jobs(&full, 1, 1).await?;
    let template = ran.first().copied().context("no job was run")?;
    let filling = Instant::now();
    let middle = fill(&full, template, shape.runs).await?;
    let fill_secs = filling.elapsed().as_secs_f64();

    let compiled = crate::linear_flow(shape.tasks).compile()?;
    let mut engines = Vec::new();
    for fleet in [&empty, &full] {
        let (store, _) = fleet.member().await?;
        let engine = Engine::from_arc(store);
        // Once untimed: connections, statements, caches.
        run_linear(&engine, &compiled).await?;
        engines.push(engine);
    }
    let mut steps: [Vec<f64>; 2] = Default::default();
    let mut jobs: [Vec<f64>; 2] = Default::default();
    for round in 0..shape.rounds.max(1) {
        // Which goes first alternates, so neither is always the one after a pause.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let fleet = if i == 0 { &empty } else { &full };
            let secs = run_linear(&engines[i], &compiled).await?;
            steps[i].push(shape.tasks as f64 / secs);
            let (rate, _) = fleet::timed_jobs(fleet, shape.jobs, shape.conductors).await?;
            jobs[i].push(rate);
        }
    }
    let pages = pages(&full, middle).await?;
    let counts = counts(&full).await?;
    empty.clean_up().await?;
    full.clean_up().await?;
    let ratios = |figures: &[Vec<f64>; 2]| -> Vec<f64> {
        figures[1]
            .iter()
            .zip(&figures[0])
            .map(|(full, empty)| full / empty)
            .collect()
    };
    let (step_ratios, job_ratios) = (ratios(&steps), ratios(&jobs));
    println!(
        "{}",
        json!({
            "scenario": "history",
            "backend": target.backend.name(),
            "runs": shape.runs,
            "fill_seconds": fill_secs,
            // What the full database holds, counted after the rounds.
            "rows": counts,
            "tasks": shape.tasks,
            "rounds": shape.rounds.max(1),
            "jobs": shape.jobs,
            "conductors": shape.conductors,
            "empty": {
                "steps_per_sec": crate::median(&steps[0]),
                "steps_per_sec_rounds": steps[0],
                "jobs_per_sec": crate::median(&jobs[0]),
                "jobs_per_sec_rounds": jobs[0],
            },
            "full": {
                "steps_per_sec": crate::median(&steps[1]),
                "steps_per_sec_rounds": steps[1],
                "jobs_per_sec": crate::median(&jobs[1]),
                "jobs_per_sec_rounds": jobs[1],
            },
            // The figures: the median over the rounds of the full database's rate over the
            // empty one's in the same round.
            "steps_ratio": crate::median(&step_ratios),
            "steps_ratio_rounds": step_ratios,
            "jobs_ratio": crate::median(&job_ratios),
            "jobs_ratio_rounds": job_ratios,
            "page_ms": pages,
        })
    );
    Ok(())
}

/// How many runs, steps and jobs a fleet's database holds.
async fn counts(fleet: &Fleet) -> Result<Value> {
    let tables = ["flows", "atoms", "steps", "history", "jobs", "fences"];
    let mut out = serde_json::Map::new();
    match fleet.backend() {
        Backend::Memory => return Ok(Value::Null),
        Backend::Sqlite => {
            let options: sqlx::sqlite::SqliteConnectOptions = fleet.url().parse()?;
            let mut conn: sqlx::SqliteConnection = sqlx::ConnectOptions::connect(&options).await?;
            for t in tables {
                let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {t}"))
                    .fetch_one(&mut conn)
                    .await?;
                out.insert(t.into(), n.into());
            }
        }
        Backend::Postgres => {
            let schema = fleet.schema().context("a PostgreSQL fleet has a schema")?;
            let mut conn: sqlx::PgConnection = sqlx::Connection::connect(fleet.url()).await?;
            for t in tables {
                let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.{t}"))
                    .fetch_one(&mut conn)
                    .await?;
                out.insert(t.into(), n.into());
            }
        }
    }
    Ok(Value::Object(out))
}

/// One run of the linear flow, created and run to its end: its seconds.
async fn run_linear(engine: &Engine, compiled: &baton_core::CompiledFlow) -> Result<f64> {
    let id = engine.create(compiled, Default::default()).await?;
    let start = Instant::now();
    let outcome = engine.run(compiled, id).await?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(outcome.is_success(), "flow ended {}", outcome.state);
    Ok(secs)
}

/// Fills the database with `runs` copies of job `template` and its run (on memory, `runs`
/// new runs of jobs). Returns the id of the job (and run) in the middle of the fill.
pub(crate) async fn fill(fleet: &Fleet, template: JobId, runs: usize) -> Result<JobId> {
    match fleet.backend() {
        Backend::Memory => {
            // No SQL to copy rows with: the runs are made for real.
            let (_, ids) = fleet::timed_jobs(fleet, runs, 4).await?;
            ids.get(runs / 2).copied().context("the fill ran no job")
        }
        Backend::Sqlite | Backend::Postgres => {
            // The first 24 characters of a new UUIDv7: copy `g` (from 1) has id
            // `{prefix}{g:012x}`, new, and after every id made so far.
            let fresh = uuid::Uuid::now_v7().to_string();
            let prefix = &fresh[..24];
            fill_sql(fleet, template, prefix, runs).await?;
            Ok(format!("{prefix}{:012x}", (runs / 2).max(1)).parse()?)
        }
    }
}

/// The SQL dialect of a fill: how a text becomes an id, and how a JSON column is written.
#[derive(Clone, Copy, PartialEq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// The tables a finished run writes to, each with the column that names the run (or its job),
/// in the order the copies are inserted: steps before their run, so SQLite's trigger that
/// moves a run with its steps finds no run to move (the copied run has its end already), and
/// atoms and history after it (their foreign keys).
const TABLES: [(&str, &str); 6] = [
    ("steps", "flow_id"),
    ("flows", "id"),
    ("atoms", "flow_id"),
    ("history", "flow_id"),
    ("jobs", "id"),
    ("fences", "job_id"),
];

/// The `INSERT ... SELECT` that copies the template's rows of `table` (columns `columns`,
/// those whose rows name the run by `key`) to copies `from..=to`. Copy `g`'s ids are
/// `prefix || g` as 12 hex digits (the first bound parameter). A column listed in `set` takes
/// that SQL instead of the template's value (in which `g.n` is the copy's number), or is left
/// to its default when the SQL is empty.
fn copy_sql(
    dialect: Dialect,
    (table, key): (&str, &str),
    columns: &[String],
    template: JobId,
    (from, to): (usize, usize),
    set: &[(&str, String)],
) -> String {
    let (new_id, series, template) = match dialect {
        Dialect::Sqlite => (
            "(?1 || printf('%012x', g.n))".to_owned(),
            format!(
                "(WITH RECURSIVE s(n) AS (SELECT {from} UNION ALL SELECT n + 1 FROM s WHERE n < {to}) \
                 SELECT n FROM s) AS g"
            ),
            format!("'{template}'"),
        ),
        Dialect::Postgres => (
            "($1 || lpad(to_hex(g.n), 12, '0'))::uuid".to_owned(),
            format!("generate_series({from}, {to}) AS g(n)"),
            format!("'{template}'::uuid"),
        ),
    };
    let mut names = Vec::new();
    let mut values = Vec::new();
    for c in columns {
        let value = match set.iter().find(|(name, _)| name == c) {
            Some((_, sql)) if sql.is_empty() => continue,
            Some((_, sql)) => sql.clone(),
            None => match (dialect, c.as_str()) {
                (_, "id" | "flow_id" | "job_id") => new_id.clone(),
                // A run's meta names its job.
                (Dialect::Sqlite, "meta") => format!("replace(t.meta, {template}, {new_id})"),
                (Dialect::Postgres, "meta") => {
                    format!("replace(t.meta::text, {template}::text, {new_id}::text)::jsonb")
                }
                _ => format!("t.{c}"),
            },
        };
        names.push(c.clone());
        values.push(value);
    }
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM {table} AS t, {series} \
          WHERE t.{key} = {template} ORDER BY g.n",
        names.join(", "),
        values.join(", ")
    )
}

async fn fill_sql(fleet: &Fleet, template: JobId, prefix: &str, runs: usize) -> Result<()> {
    match fleet.backend() {
        Backend::Postgres => {
            let schema = fleet.schema().context("a PostgreSQL fleet has a schema")?;
            let mut conn: sqlx::PgConnection = sqlx::Connection::connect(fleet.url()).await?;
            sqlx::query(&format!("SET search_path TO {schema}"))
                .execute(&mut conn)
                .await?;
            for from in (1..=runs).step_by(FILL_CHUNK) {
                let to = (from + FILL_CHUNK - 1).min(runs);
                let mut tx = sqlx::Connection::begin(&mut conn).await?;
                for table in TABLES {
                    let columns: Vec<String> = sqlx::query_scalar(
                        "SELECT column_name::text FROM information_schema.columns \
                          WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                    )
                    .bind(schema)
                    .bind(table.0)
                    .fetch_all(&mut *tx)
                    .await?;
                    // Run numbers and posting order come from the identity columns.
                    let set = [("seq", String::new())];
                    let set = if matches!(table.0, "flows" | "jobs") {
                        &set[..]
                    } else {
                        &[]
                    };
                    let sql = copy_sql(
                        Dialect::Postgres,
                        table,
                        &columns,
                        template,
                        (from, to),
                        set,
                    );
                    sqlx::query(&sql)
                        .bind(prefix)
                        .execute(&mut *tx)
                        .await
                        .with_context(|| format!("copying {}: {sql}", table.0))?;
                }
                tx.commit().await?;
            }
            // The statistics autovacuum would gather (the machine's server runs without it).
            sqlx::query("ANALYZE").execute(&mut conn).await?;
        }
        _ => {
            let options: sqlx::sqlite::SqliteConnectOptions = fleet.url().parse()?;
            let mut conn: sqlx::SqliteConnection = sqlx::ConnectOptions::connect(&options).await?;
            for from in (1..=runs).step_by(FILL_CHUNK) {
                let to = (from + FILL_CHUNK - 1).min(runs);
                let mut tx = sqlx::Connection::begin(&mut conn).await?;
                // Copy `g` is run number `base + g - from + 1`; its steps' ids are that number
                // times 2^32 plus their own (the SQLite store's step keys).
                let base: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM flows")
                    .fetch_one(&mut *tx)
                    .await?;
                let number = format!("({base} + g.n - {from} + 1)");
                for table in TABLES {
                    let columns: Vec<String> =
                        sqlx::query_scalar("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
                            .bind(table.0)
                            .fetch_all(&mut *tx)
                            .await?;
                    let set = match table.0 {
                        "flows" => vec![("seq", number.clone())],
                        "steps" => vec![("id", format!("{number} * 4294967296 + t.seq"))],
                        "jobs" => vec![("seq", String::new())],
                        _ => Vec::new(),
                    };
                    let sql =
                        copy_sql(Dialect::Sqlite, table, &columns, template, (from, to), &set);
                    sqlx::query(&sql)
                        .bind(prefix)
                        .execute(&mut *tx)
                        .await
                        .with_context(|| format!("copying {}: {sql}", table.0))?;
                }
                tx.commit().await?;
            }
            sqlx::query("ANALYZE").execute(&mut conn).await?;
        }
    }
    Ok(())
}

/// Milliseconds per call of `list`, the median of a few calls.
async fn time_ms<F, Fut, T>(mut list: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>>>,
{
    let mut figures = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        let rows = list().await?;
        figures.push(start.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(!rows.is_empty(), "a page of the listing is empty");
    }
    Ok(crate::median(&figures))
}

/// Times pages of 100 rows of `flows list` and `jobs list` on the full database, with each
/// filter the CLI offers: first pages and pages from the middle of the listing (after job
/// `middle` and its run).
async fn pages(fleet: &Fleet, middle_job: JobId) -> Result<Value> {
    let (store, board) = fleet.member().await?;
    let page = 100;
    let middle_flow = baton_core::FlowId::for_job(middle_job);
    // Ended jobs keep no owner: a conductor that holds nothing, to list the jobs it holds
    // must not read the ended ones.
    let owner = baton_core::ConductorId::new();
    let flows = |q: FlowQuery| {
        let store: Arc<dyn Store> = store.clone();
        move || {
            let (store, q) = (store.clone(), q.clone());
            async move { Ok(store.list_flows(&q.limit(page)).await?) }
        }
    };
    let jobs = |q: JobQuery| {
        let board: Arc<dyn JobBoard> = board.clone();
        move || {
            let (board, q) = (board.clone(), q.clone());
            async move { Ok(board.list(&q.limit(page)).await?) }
        }
    };
    Ok(json!({
        "flows_first": time_ms(flows(FlowQuery::all())).await?,
        "flows_middle": time_ms(flows(FlowQuery::all().after(middle_flow))).await?,
        "flows_success_middle": time_ms(flows(FlowQuery::all().state(FlowState::Success).after(middle_flow))).await?,
        "flows_factory_middle": time_ms(flows(FlowQuery::all().factory("one").after(middle_flow))).await?,
        "flows_factory_version_middle": time_ms(flows(FlowQuery::all().factory("one").version(1).after(middle_flow))).await?,
        "flows_version_middle": time_ms(flows(FlowQuery::all().version(1).after(middle_flow))).await?,
        "flows_name_middle": time_pass(flows(FlowQuery::all().name("one").after(middle_flow))).await?,
        // Few among many ended runs (none here, once the rounds are over).
        "flows_running_first": time_pass(flows(FlowQuery::all().state(FlowState::Running))).await?,
        "flows_unfinished_first": time_pass(flows(FlowQuery::all().unfinished())).await?,
        "jobs_first": time_ms(jobs(JobQuery::all())).await?,
        "jobs_middle": time_ms(jobs(JobQuery::all().after(middle_job))).await?,
        "jobs_complete_middle": time_ms(jobs(JobQuery::all().state(JobState::Complete).after(middle_job))).await?,
        "jobs_unclaimed_first": time_pass(jobs(JobQuery::all().state(JobState::Unclaimed))).await?,
        "jobs_owner_first": time_pass(jobs(JobQuery::all().owner(owner))).await?,
        "jobs_key_first": time_pass(jobs(JobQuery::all().key("no-such-key"))).await?,
    }))
}

/// As [`time_ms`], for a listing that may be empty (a filter that selects nothing or little
/// must not read the whole table to say so).
async fn time_pass<F, Fut, T>(mut list: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>>>,
{
    let mut figures = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        list().await?;
        figures.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(crate::median(&figures))
}
