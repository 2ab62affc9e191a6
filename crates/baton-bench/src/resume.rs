//! `resume`: how long loading a run takes against the length of its log, with checkpoints
//! and by replaying the whole log (the way every load went before checkpoints).
//!
//! The run is written through the store's own `commit`, step by step, as an engine writes it
//! (the engine itself would add nothing to what is measured, and would take far longer to
//! write 100 000 steps): each step is a batch like one of the engine's. Two runs get the same
//! batches, one on a store with checkpoints (the default policy, or `--min-steps` and
//! `--steps-per-atom`) and one on a store of the same database without
//! (`Checkpoints::never`), so the second is a run exactly as an earlier release wrote it,
//! loaded exactly as it loaded it. Writing both, step by step in turn, also measures what the
//! checkpoints cost the writer.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use baton_core::model::{AtomKind, AtomRecord, Batch, FlowRecord, Write};
use baton_core::store::Store;
use baton_core::{AtomState, Failure, FailureKind, FlowId, FlowState, Intention, MemoryStore};
use chrono::Utc;
use serde_json::{json, Value};

use crate::{postgres_url, sqlite_url, Backend, Target};

/// What the run's log is made of.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Shape {
    /// A few atoms (8), each running for a long time: mostly progress reports, with a failed
    /// call retried every 100 steps.
    Progress,
    /// Many atoms, run in turn: each starts, reports progress 8 times and ends with a result
    /// (10 steps an atom).
    Atoms,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Progress => "progress",
            Shape::Atoms => "atoms",
        }
    }

    fn atoms(self, steps: usize) -> usize {
        match self {
            Shape::Progress => 8,
            Shape::Atoms => (steps / 10).max(1),
        }
    }
}

/// The scenario's settings.
pub(crate) struct Settings {
    pub(crate) shape: Shape,
    pub(crate) steps: Vec<usize>,
    pub(crate) policy: baton_sql::Checkpoints,
    pub(crate) loads: usize,
}

/// A run being written: its atoms as they are now, and the step it is at.
struct Writer {
    id: FlowId,
    atoms: Vec<AtomRecord>,
    steps: usize,
    total: usize,
    shape: Shape,
}

impl Writer {
    fn new(shape: Shape, total: usize) -> (FlowRecord, Self) {
        let now = Utc::now();
        let flow = FlowRecord {
            id: FlowId::new(),
            name: format!("resume-{}", shape.name()),
            state: FlowState::Pending,
            intention: Intention::Execute,
            inputs: Default::default(),
            meta: Value::Null,
            factory: None,
            fingerprint: None,
            deadline: None,
            created_at: now,
            updated_at: now,
        };
        let atoms = (0..shape.atoms(total))
            .map(|i| AtomRecord::pending(format!("a{i}"), AtomKind::Task))
            .collect();
        let writer = Self {
            id: flow.id,
            atoms,
            steps: 0,
            total,
            shape,
        };
        (flow, writer)
    }

    /// A write moving atom `i` to `next`, and the atom taken there.
    fn moved(&mut self, i: usize, next: AtomRecord) -> Write {
        let old = std::mem::replace(&mut self.atoms[i], next.clone());
        Write::Atom {
            expected_state: old.state,
            expected_attempt: old.attempt,
            record: next,
        }
    }

    fn start(&mut self, i: usize) -> Write {
        let mut next = self.atoms[i].clone();
        next.state = AtomState::Running;
        next.attempt += 1;
        next.started_at = Some(Utc::now());
        next.failure = None;
        next.retry_at = None;
        self.moved(i, next)
    }

    /// The next step's batch.
    fn next(&mut self) -> Batch {
        let mut batch = Batch::new(self.id, None);
        let step = self.steps;
        self.steps += 1;
        if step == 0 {
            batch.writes.push(Write::Flow {
                from: FlowState::Pending,
                to: FlowState::Running,
                intention: Intention::Execute,
            });
            batch.writes.push(self.start(0));
            return batch;
        }
        let (i, k) = match self.shape {
            // The atom whose turn it is, and the step within its turn.
            Shape::Progress => {
                let per = self.total.div_ceil(self.atoms.len()).max(1);
                (step / per, step % per)
            }
            Shape::Atoms => (step / 10, step % 10),
        };
        let mut i = i.min(self.atoms.len() - 1);
        if i > 0
            && self.atoms[i].state == AtomState::Pending
            && self.atoms[i - 1].state != AtomState::Running
        {
            // The previous atom is in the middle of a retry: it goes on first.
            i -= 1;
        }
        if i > 0 && self.atoms[i].state == AtomState::Pending {
            // The previous atom's end and this one's start, in one step, as an engine does.
            let mut done = self.atoms[i - 1].clone();
            done.state = AtomState::Success;
            done.progress = 1.0;
            done.result = Some(json!({"atom": i - 1, "id": format!("resource-{}", i - 1)}));
            done.finished_at = Some(Utc::now());
            let end = self.moved(i - 1, done);
            batch.writes.push(end);
            batch.writes.push(self.start(i));
            return batch;
        }
        let current = self.atoms[i].clone();
        let write = match current.state {
            AtomState::Running if self.shape == Shape::Progress && k % 100 == 99 => {
                let mut failed = current.clone();
                failed.state = AtomState::Failure;
                failed.failure = Some(Failure {
                    message: format!("call {k} timed out"),
                    causes: vec!["connection reset by peer".into()],
                    atom: current.name.clone(),
                    attempt: current.attempt,
                    retryable: true,
                    retry_after: None,
                    kind: FailureKind::Execute,
                });
                failed.finished_at = Some(Utc::now());
                self.moved(i, failed)
            }
            AtomState::Failure => {
                let mut retrying = current;
                retrying.state = AtomState::Retrying;
                retrying.retry_at = Some(Utc::now());
                self.moved(i, retrying)
            }
            AtomState::Retrying | AtomState::Pending => self.start(i),
            _ => {
                let mut report = current;
                report.progress = (k as f64 / 10.0).fract();
                self.moved(i, report)
            }
        };
        batch.writes.push(write);
        batch
    }
}

/// The stores of one database: with checkpoints, without, and the first's handle that loads
/// the whole log.
struct Stores {
    with: Arc<dyn Store>,
    without: Arc<dyn Store>,
    whole_log: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    drop_schema: Option<(String, String)>,
}

async fn stores(target: &Target, policy: baton_sql::Checkpoints) -> Result<Stores> {
    Ok(match target.backend {
        Backend::Memory => {
            // No log: a load copies the run's current records.
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            Stores {
                with: store.clone(),
                without: store.clone(),
                whole_log: store,
                _dir: None,
                drop_schema: None,
            }
        }
        Backend::Sqlite => {
            let (url, dir) = sqlite_url(target)?;
            let with = baton_sql::SqliteStore::open_with(
                &url,
                target.sqlite_options().checkpoints(policy),
            )
            .await?;
            let without = baton_sql::SqliteStore::open_with(
                &url,
                target
                    .sqlite_options()
                    .checkpoints(baton_sql::Checkpoints::never()),
            )
            .await?;
            Stores {
                whole_log: Arc::new(with.replaying_whole_log()),
                with: Arc::new(with),
                without: Arc::new(without),
                _dir: dir,
                drop_schema: None,
            }
        }
        Backend::Postgres => {
            let url = postgres_url(target);
            let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
            let with = baton_sql::PostgresStore::connect_with(
                &url,
                target.postgres_options(&schema).checkpoints(policy),
            )
            .await?;
            let without = baton_sql::PostgresStore::connect_with(
                &url,
                target
                    .postgres_options(&schema)
                    .checkpoints(baton_sql::Checkpoints::never()),
            )
            .await?;
            Stores {
                whole_log: Arc::new(with.replaying_whole_log()),
                with: Arc::new(with),
                without: Arc::new(without),
                _dir: None,
                drop_schema: Some((url, schema)),
            }
        }
    })
}

/// The median time of `n` loads of `id` (as an engine loads a run to resume it), in seconds,
/// and the snapshot loaded.
async fn time_loads(
    store: &dyn Store,
    id: FlowId,
    n: usize,
) -> Result<(f64, baton_core::model::FlowSnapshot)> {
    let mut times = Vec::with_capacity(n);
    let mut last = None;
    for _ in 0..n.max(1) {
        let start = Instant::now();
        let snapshot = store.load_run(id).await?;
        times.push(start.elapsed().as_secs_f64());
        last = Some(snapshot);
    }
    let snapshot = last.ok_or_else(|| anyhow::anyhow!("no load"))?;
    Ok((crate::median(&times), snapshot))
}

/// Writes the two runs step by step, and at each length in `settings.steps` times their loads.
pub(crate) async fn resume(target: &Target, settings: &Settings) -> Result<()> {
    let stores = stores(target, settings.policy).await?;
    let mut lengths = settings.steps.clone();
    lengths.sort_unstable();
    lengths.dedup();
    let total = lengths.last().copied().unwrap_or(0);
    let memory = target.backend == Backend::Memory;

    let (flow, mut with) = Writer::new(settings.shape, total);
    let atoms: Vec<AtomRecord> = with.atoms.clone();
    stores.with.create_flow(&flow, &atoms, None).await?;
    let (flow_b, mut without) = Writer::new(settings.shape, total);
    if !memory {
        stores.without.create_flow(&flow_b, &atoms, None).await?;
    }
    // Seconds spent writing each run's steps.
    let (mut with_secs, mut without_secs) = (0.0, 0.0);
    let mut written = 0;
    for length in lengths {
        while written < length {
            // Each run's step first in turn: on SQLite a commit after the other store's pays
            // for reading what that one wrote.
            for first in [written % 2 == 0, written % 2 != 0] {
                if first {
                    let batch = with.next();
                    let start = Instant::now();
                    stores.with.commit(&batch).await?;
                    with_secs += start.elapsed().as_secs_f64();
                } else if !memory {
                    let batch = without.next();
                    let start = Instant::now();
                    stores.without.commit(&batch).await?;
                    without_secs += start.elapsed().as_secs_f64();
                }
            }
            written += 1;
        }
        let (checkpointed, snapshot) = time_loads(&*stores.with, flow.id, settings.loads).await?;
        // The memory store keeps no log: its one run stands for both.
        let replay_id = if memory { flow.id } else { flow_b.id };
        let (replayed, _) = time_loads(&*stores.without, replay_id, settings.loads).await?;
        let (whole, whole_snapshot) =
            time_loads(&*stores.whole_log, flow.id, settings.loads).await?;
        // What a load must give (times aside: PostgreSQL keeps them to the microsecond).
        let gist = |atoms: &[AtomRecord]| -> Vec<(String, AtomState, u32, Option<Value>, u64)> {
            atoms
                .iter()
                .map(|a| {
                    let result = a.result.clone();
                    (
                        a.name.clone(),
                        a.state,
                        a.attempt,
                        result,
                        a.progress.to_bits(),
                    )
                })
                .collect()
        };
        anyhow::ensure!(
            gist(&snapshot.atoms) == gist(&whole_snapshot.atoms),
            "the run loaded from its checkpoint differs from its whole log's replay"
        );
        anyhow::ensure!(
            gist(&snapshot.atoms) == gist(&with.atoms),
            "the run loaded differs from what was written"
        );
        println!(
            "{}",
            json!({
                "scenario": "resume",
                "backend": target.backend.name(),
                "shape": settings.shape.name(),
                "steps": length,
                "atoms": atoms.len(),
                "loads": settings.loads.max(1),
                // Median seconds of a load (`load_run`): from the checkpoint, and of the same
                // run written without checkpoints (the whole log replayed, as before).
                "load_seconds": checkpointed,
                "replay_seconds": replayed,
                "speedup": replayed / checkpointed,
                // The checkpointed run loaded by replaying its whole log instead.
                "whole_log_seconds": whole,
                // Mean seconds a step's commit took so far, with and without checkpoints.
                "commit_seconds": with_secs / written as f64,
                "commit_seconds_without": (!memory).then(|| without_secs / written as f64),
                "no_log": memory,
            })
        );
    }
    if let Some((url, schema)) = &stores.drop_schema {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&mut conn)
            .await?;
    }
    Ok(())
}
