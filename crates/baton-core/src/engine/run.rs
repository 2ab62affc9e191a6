//! One run of a flow: the scheduling loop.
//!
//! Each turn of the loop plans what the current records allow (start ready atoms, revert what
//! must be reverted, reset a retried subflow, end the flow), commits all of it as one batch,
//! and only then starts the tasks the batch marked `RUNNING` or `REVERTING`. Completions that
//! arrive together are folded into the next batch, so parallel branches share commits.

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{field, Instrument};

use super::{outcome, Control, Engine, Error, Event, EventKind, Outcome, Result, RunOptions};
use crate::board::Cancel;
use crate::compile::{CompiledFlow, Source};
use crate::failure::{Failure, FailureKind, TaskError};
use crate::flow::{AtomBody, Provides};
use crate::ids::{Fence, FlowId};
use crate::model::{AtDeadline, AtomKind, AtomRecord, Batch, FlowRecord, RetryAttempt, Write};
use crate::retry::{Decision, History, RetryContext};
use crate::state::{AtomState, FlowState, Intention};
use crate::store::{self, transition_of};
use crate::task::{AtomScope, ClaimHandle, ProgressReport, RevertContext, TaskContext};

/// What a spawned task reports back.
enum Done {
    Executed(Result<Value, Failure>),
    Reverted(Result<(), Failure>),
    /// Stopped by the run: see `Run::why`.
    Cancelled,
}

/// Why the run stopped a running task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// A cancel request.
    Cancel(Cancel),
    /// The run's deadline passed.
    Deadline,
}

/// Work to start once the batch that allows it is committed.
enum Launch {
    Execute(usize, std::collections::HashMap<String, Value>),
    Revert(usize, std::collections::HashMap<String, Value>),
}

pub(crate) struct Run {
    engine: Engine,
    flow: CompiledFlow,
    id: FlowId,
    fence: Option<Fence>,
    control: Control,
    record: FlowRecord,
    atoms: Vec<AtomRecord>,
    /// Atoms whose execute or revert is started (or about to be, once the batch commits).
    in_flight: Vec<bool>,
    in_flight_count: usize,
    /// Topological positions of atoms the forward pass must look at again.
    dirty: BTreeSet<usize>,
    /// Retry controllers currently retrying their subflow.
    retrying: BTreeSet<usize>,
    /// Tasks running beside others, each in a task of its own on the runtime.
    running: JoinSet<(usize, Done)>,
    /// The task running alone, if one is: polled by the run's own loop (see `launch`).
    /// (In a mutex only so that `Run` is `Sync`; never locked: `get_mut` reaches it.)
    alone: Option<std::sync::Mutex<futures::future::BoxFuture<'static, (usize, Done)>>>,
    writes: Vec<Write>,
    launches: Vec<Launch>,
    progress_tx: mpsc::UnboundedSender<ProgressReport>,
    progress_rx: mpsc::UnboundedReceiver<ProgressReport>,
    /// When each atom's progress was last written, on tokio's clock (so that paused time
    /// throttles progress as real time does).
    progress_written: HashMap<usize, tokio::time::Instant>,
    wake_at: Option<DateTime<Utc>>,
    finished: Option<FlowState>,
    suspend_requested: bool,
    /// A run not stored yet: its records as created, stored with the first batch.
    unstored: Option<(crate::model::FlowSnapshot, Option<Fence>)>,
    /// Whether the final batch should consume the fence's job (see `RunOptions::consume_job`).
    consume_job: bool,
    /// Whether it did.
    job_consumed: bool,
    /// Whether to turn the run round and revert it (see `RunOptions::revert`).
    revert: bool,
    /// The claim the run is driven under, for its tasks.
    claim: Option<Arc<ClaimHandle>>,
    /// Fires every running task's token: when the run is halted (it is a child of the
    /// control's halt) or dropped (the guard).
    tasks: CancellationToken,
    /// Fires `tasks` if the run stops short (halted, an error, its future dropped); disarmed
    /// when it ends or suspends.
    tasks_guard: Option<tokio_util::sync::DropGuard>,
    /// The token of each running task, and why the run stopped it, if it did.
    tokens: Vec<Option<CancellationToken>>,
    why: Vec<Option<Why>>,
    /// Cancel requests, and the strongest acted on so far.
    cancel_rx: tokio::sync::watch::Receiver<Option<Cancel>>,
    cancel_done: Option<Cancel>,
    /// Whether the run's deadline has been acted on, and whether the run is failing at it
    /// (`AtDeadline::Fail`: nothing starts, and the run ends `FAILURE` once nothing runs).
    deadline_done: bool,
    failing: bool,
    /// Keeps [`Engine::cancel`] able to reach the run while it is driven.
    _driving: Option<super::Driving>,
}

/// The value of `symbol` in a result, as the atom's `provides` maps it.
pub(crate) fn project<'v>(
    provides: &Provides,
    result: &'v Value,
    symbol: &str,
) -> Option<&'v Value> {
    match provides {
        Provides::Nothing => None,
        Provides::One(s) => (s == symbol).then_some(result),
        Provides::Many(names) => {
            let pos = names.iter().position(|n| n == symbol)?;
            match result {
                Value::Array(items) => items.get(pos),
                Value::Object(map) => map.get(symbol),
                _ => None,
            }
        }
    }
}

/// Loads a flow, waiting out an unavailable store with the engine's backoff (a database that
/// went away must make the engine wait, never fail the run). Halting stops the wait.
async fn load_patiently(
    engine: &Engine,
    control: &Control,
    id: FlowId,
) -> Result<crate::model::FlowSnapshot> {
    let options = &engine.options;
    let mut delay = options.store_retry_base;
    loop {
        // Halting interrupts the call, not only the wait between calls: a store that does not
        // answer (a connection cut off) must not keep a halted run.
        let loaded = tokio::select! {
            biased;
            () = control.halt.cancelled() => return Err(Error::Halted(id)),
            loaded = engine.store.load_run(id) => loaded,
        };
        match loaded {
            Ok(snapshot) => return Ok(snapshot),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?delay, "store unavailable, retrying load");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = control.halt.cancelled() => return Err(Error::Halted(id)),
                }
                delay = crate::time::doubled(delay, options.store_retry_max);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl Run {
    pub(crate) async fn load(
        engine: Engine,
        flow: CompiledFlow,
        id: FlowId,
        options: RunOptions,
    ) -> Result<Run> {
        let snapshot = load_patiently(&engine, &options.control, id).await?;
        let stored = snapshot.flow.fingerprint;
        if let (Some(expected), Some(built)) = (&options.factory, &snapshot.flow.factory) {
            if expected != built {
                return Err(Error::FlowMismatch {
                    flow: id,
                    detail: format!("the run was built by {built}, not by {expected}"),
                });
            }
        }
        let run = Self::from_snapshot(engine.clone(), flow.clone(), id, snapshot, options)?;
        // Same atoms, same kinds: the wiring between them must be the same too.
        let Some(stored) = stored else {
            return Ok(run);
        };
        let defined = flow.fingerprint();
        match stored {
            stored if stored != defined => {
                let mut detail = format!(
                    "its atoms are the same, but their wiring is not (inputs, symbols, edges, \
                     deciders or retry scopes): stored fingerprint {stored}, definition's {defined}"
                );
                // Which edges differ, if the run's recorded shape tells (its metadata, which
                // the engine's load leaves out: read once more, on this error only).
                if let Ok(full) = engine.store.load_flow(id).await {
                    if let Some(edges) = crate::fingerprint::edge_difference(&full.flow.meta, &flow)
                    {
                        detail = format!("{detail}; {edges}");
                    }
                }
                Err(Error::FlowMismatch { flow: id, detail })
            }
            _ => Ok(run),
        }
    }

    /// A run over records already in hand (just loaded, or just created by this engine).
    pub(crate) fn from_snapshot(
        engine: Engine,
        flow: CompiledFlow,
        id: FlowId,
        snapshot: crate::model::FlowSnapshot,
        options: RunOptions,
    ) -> Result<Run> {
        let mismatch = |detail: String| Error::FlowMismatch { flow: id, detail };
        if snapshot.flow.name != flow.name {
            return Err(mismatch(format!(
                "stored as {:?}, definition is {:?}",
                snapshot.flow.name, flow.name
            )));
        }
        if snapshot.atoms.len() != flow.atoms.len() {
            return Err(mismatch(format!(
                "{} atoms stored, {} defined",
                snapshot.atoms.len(),
                flow.atoms.len()
            )));
        }
        let kind_mismatch = |rec: &AtomRecord, a: &crate::compile::CompiledAtom| {
            mismatch(format!(
                "atom {:?} is stored as a {}, defined as a {}",
                a.name,
                rec.kind.as_str(),
                a.kind().as_str()
            ))
        };
        // Stores keep atoms in creation order, which is the definition's: match by position,
        // and by name only if that fails. Either way, atom by atom in the definition's order.
        let atoms = if snapshot
            .atoms
            .iter()
            .zip(&flow.atoms)
            .all(|(rec, a)| rec.name == a.name)
        {
            if let Some((rec, a)) = snapshot
                .atoms
                .iter()
                .zip(&flow.atoms)
                .find(|(rec, a)| rec.kind != a.kind())
            {
                return Err(kind_mismatch(rec, a));
            }
            snapshot.atoms
        } else {
            let mut by_name: HashMap<String, AtomRecord> = snapshot
                .atoms
                .into_iter()
                .map(|a| (a.name.clone(), a))
                .collect();
            let mut atoms = Vec::with_capacity(flow.atoms.len());
            for a in &flow.atoms {
                let rec = by_name
                    .remove(&a.name)
                    .ok_or_else(|| mismatch(format!("atom {:?} is not stored", a.name)))?;
                if rec.kind != a.kind() {
                    return Err(kind_mismatch(&rec, a));
                }
                atoms.push(rec);
            }
            atoms
        };
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let n = atoms.len();
        let tasks = options.control.halt.child_token();
        let claim = options.fence.map(|fence| {
            Arc::new(ClaimHandle {
                fence,
                check: options.claim_check.clone(),
            })
        });
        let cancel_rx = options.control.cancel.subscribe();
        let retrying = atoms
            .iter()
            .enumerate()
            .filter(|(_, a)| a.kind == AtomKind::Retry && a.intention == Intention::Retry)
            .map(|(i, _)| i)
            .collect();
        Ok(Run {
            engine,
            flow,
            id,
            fence: options.fence,
            control: options.control,
            // `meta` is never read by the run, and for a big flow mostly the graph's shape:
            // not worth keeping in memory while it runs.
            record: crate::model::FlowRecord {
                meta: Value::Null,
                ..snapshot.flow
            },
            atoms,
            in_flight: vec![false; n],
            in_flight_count: 0,
            dirty: (0..n).collect(),
            retrying,
            running: JoinSet::new(),
            alone: None,
            writes: Vec::new(),
            launches: Vec::new(),
            progress_tx,
            progress_rx,
            progress_written: HashMap::new(),
            wake_at: None,
            finished: None,
            suspend_requested: false,
            unstored: None,
            consume_job: options.consume_job,
            job_consumed: false,
            revert: options.revert,
            claim,
            tasks_guard: Some(tasks.clone().drop_guard()),
            tasks,
            tokens: vec![None; n],
            why: vec![None; n],
            cancel_rx,
            cancel_done: None,
            deadline_done: false,
            failing: false,
            _driving: None,
        })
    }

    /// Makes the run store `created` (with the creation fenced by `fence`) together with its
    /// first batch, instead of expecting it stored already.
    pub(crate) fn create_with_first_batch(
        &mut self,
        created: crate::model::FlowSnapshot,
        fence: Option<Fence>,
    ) {
        self.unstored = Some((created, fence));
    }

    /// The run's flow id.
    pub(crate) fn id(&self) -> FlowId {
        self.id
    }

    pub(crate) async fn drive(mut self) -> Result<Outcome> {
        let span = tracing::info_span!(
            "flow",
            flow.id = %self.id,
            flow.name = %self.flow.name,
            job.id = field::Empty,
        );
        if let Some(f) = self.fence {
            span.record("job.id", field::display(f.job));
        }
        async move {
            if self.record.state.is_terminal() {
                return Ok(self.outcome(self.record.state));
            }
            self._driving = Some(self.engine.driving(self.id, &self.control));
            self.enter();
            loop {
                // A task that asked to suspend as it ended may have ended in the same poll that
                // `wait` returned from: look at the request before planning, so nothing starts
                // after it. Likewise a cancel request.
                if self.control.suspend.is_cancelled() {
                    self.on_suspend();
                }
                self.on_cancel();
                self.plan();
                self.commit().await?;
                self.launch();
                if let Some(state) = self.finished {
                    tracing::info!(state = %state, "flow ended");
                    if let Some(guard) = self.tasks_guard.take() {
                        guard.disarm();
                    }
                    let mut outcome = self.outcome(state);
                    outcome.job_consumed = self.job_consumed;
                    return Ok(outcome);
                }
                if self.in_flight_count == 0 && self.wake_at.is_none() {
                    return Err(Error::Stuck {
                        flow: self.id,
                        detail: format!(
                            "flow is {} and no atom can run or revert",
                            self.record.state
                        ),
                    });
                }
                self.wait().await?;
            }
        }
        .instrument(span)
        .await
    }

    fn outcome(&self, state: FlowState) -> Outcome {
        outcome(&self.flow, self.id, state, &self.atoms)
    }

    /// Moves the flow into its working state (`RUNNING` or `REVERTING`); asked to revert
    /// (`RunOptions::revert`), into `REVERTING`, whichever way it was heading.
    fn enter(&mut self) {
        let turn = self.revert && self.record.intention != Intention::Revert;
        if turn {
            // Written with the transitions below.
            tracing::info!("reverting the flow, as asked");
            self.record.intention = Intention::Revert;
        }
        let target = match self.record.intention {
            Intention::Revert => FlowState::Reverting,
            _ => FlowState::Running,
        };
        let intention = self.record.intention;
        match self.record.state {
            FlowState::Pending => {
                self.set_flow(FlowState::Running, Intention::Execute);
                if turn {
                    self.set_flow(FlowState::Reverting, Intention::Revert);
                }
            }
            FlowState::Suspending => {
                self.set_flow(FlowState::Suspended, intention);
                self.set_flow(FlowState::Resuming, intention);
                self.set_flow(target, intention);
            }
            FlowState::Suspended => {
                self.set_flow(FlowState::Resuming, intention);
                self.set_flow(target, intention);
            }
            FlowState::Resuming => self.set_flow(target, intention),
            FlowState::Running if turn => self.set_flow(FlowState::Reverting, Intention::Revert),
            _ => {}
        }
    }

    // ----- writes -------------------------------------------------------------------------

    fn set_flow(&mut self, to: FlowState, intention: Intention) {
        self.writes.push(Write::Flow {
            from: self.record.state,
            to,
            intention,
        });
        self.record.state = to;
        self.record.intention = intention;
    }

    fn set_atom(&mut self, i: usize, change: impl FnOnce(&mut AtomRecord)) {
        let rec = &mut self.atoms[i];
        let (expected_state, expected_attempt) = (rec.state, rec.attempt);
        change(rec);
        let (state, retrying) = (rec.state, rec.intention == Intention::Retry);
        self.writes.push(Write::Atom {
            expected_state,
            expected_attempt,
            record: rec.clone(),
        });
        // What may have become possible: the atom's successors, and the atom itself if it is
        // waiting to run (again).
        let flow = &self.flow;
        self.dirty
            .extend(flow.succs[i].iter().map(|&s| flow.topo_pos[s]));
        if matches!(state, AtomState::Pending | AtomState::Retrying) {
            self.dirty.insert(flow.topo_pos[i]);
        }
        if flow.atoms[i].kind() == AtomKind::Retry {
            if retrying {
                self.retrying.insert(i);
            } else {
                self.retrying.remove(&i);
            }
        }
    }

    /// Commits the pending writes as one batch, retrying while the store is unavailable.
    async fn commit(&mut self) -> Result<()> {
        if self.writes.is_empty() && self.unstored.is_none() {
            return Ok(());
        }
        // The loop polls a lone task only while it waits (`wait`). Before it waits for
        // anything else, the task goes to the runtime, so it keeps running during the commit
        // (however long the store takes) and whatever it holds (the store's write gate, a
        // pooled connection) cannot hold the commit up.
        if let Some(task) = self.alone.take() {
            self.running.spawn(
                task.into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
        }
        let mut batch = Batch {
            flow: self.id,
            fence: self.fence,
            at: self.engine.clock.now(),
            writes: std::mem::take(&mut self.writes),
            consume: None,
        };
        let consume = self.consume_job
            && self.fence.is_some()
            && self.finished.is_some_and(FlowState::is_terminal)
            && self.engine.store.consumes_jobs();
        if consume {
            if let Some(state) = self.finished {
                batch.consume = Some(self.outcome(state).job_outcome());
            }
        }
        let mut retried = false;
        if let Some((created, fence)) = self.unstored.take() {
            if self.create(&created, fence, &batch).await? {
                self.job_consumed = batch.consume.is_some();
                self.control.note_settled(&batch);
                self.announce(&batch);
                return Ok(());
            }
            // The creation timed out and was applied after all: the run exists. Commit the
            // batch the ordinary way, which finds out whether it was applied with it.
            retried = true;
        }
        let options = &self.engine.options;
        let mut delay = options.store_retry_base;
        loop {
            if self.control.halt.is_cancelled() {
                return Err(Error::Halted(self.id));
            }
            let committed = tokio::select! {
                biased;
                () = self.control.halt.cancelled() => return Err(Error::Halted(self.id)),
                committed = self.engine.store.commit(&batch) => committed,
            };
            match committed {
                Ok(()) => break,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, retry_in = ?delay, "store unavailable, retrying commit");
                    retried = true;
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.control.halt.cancelled() => return Err(Error::Halted(self.id)),
                    }
                    delay = crate::time::doubled(delay, options.store_retry_max);
                    // The batch's time is when it is stored: after a long outage, a run's end
                    // must not look older than it is (purges go by it).
                    batch.at = self.engine.clock.now();
                }
                Err(e @ store::Error::Conflict { .. }) if retried => {
                    // The attempt that timed out may have been applied after all.
                    if self.batch_applied(&batch).await? {
                        break;
                    }
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.job_consumed = batch.consume.is_some();
        self.control.note_settled(&batch);
        self.announce(&batch);
        Ok(())
    }

    /// Stores the run with its first batch, retrying while the store is unavailable. `false`
    /// when a retry found the run stored: an earlier attempt was applied after all (maybe
    /// with the batch; the caller finds out).
    async fn create(
        &self,
        created: &crate::model::FlowSnapshot,
        fence: Option<Fence>,
        batch: &Batch,
    ) -> Result<bool> {
        let options = &self.engine.options;
        let mut delay = options.store_retry_base;
        let mut retried = false;
        loop {
            if self.control.halt.is_cancelled() {
                return Err(Error::Halted(self.id));
            }
            let stored = tokio::select! {
                biased;
                () = self.control.halt.cancelled() => return Err(Error::Halted(self.id)),
                stored = self
                    .engine
                    .store
                    .create_and_commit(&created.flow, &created.atoms, fence, batch) => stored,
            };
            match stored {
                Ok(()) => return Ok(true),
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, retry_in = ?delay, "store unavailable, retrying creation");
                    retried = true;
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.control.halt.cancelled() => return Err(Error::Halted(self.id)),
                    }
                    delay = crate::time::doubled(delay, options.store_retry_max);
                }
                Err(store::Error::FlowExists(id)) if retried => {
                    // Ours, stored by an attempt whose answer was lost, or another engine's
                    // run with the same id? Ours has the creation time made here (compared to
                    // the microsecond, what every store keeps).
                    let stored = load_patiently(&self.engine, &self.control, self.id).await?;
                    let ours = stored.flow.name == created.flow.name
                        && stored.flow.created_at.timestamp_micros()
                            == created.flow.created_at.timestamp_micros();
                    if ours {
                        return Ok(false);
                    }
                    return Err(store::Error::FlowExists(id).into());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends the transitions of a committed batch to the event stream.
    fn announce(&self, batch: &Batch) {
        if self.engine.events.receiver_count() == 0 && !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        for write in &batch.writes {
            if let Some(change) = transition_of(write) {
                tracing::debug!(?change, "transition");
                // Nobody listening is fine.
                let _ = self.engine.events.send(Event {
                    flow: self.id,
                    at: batch.at,
                    kind: EventKind::Transition(change),
                });
            }
        }
    }

    /// Whether the store already holds the outcome of `batch`.
    async fn batch_applied(&self, batch: &Batch) -> Result<bool> {
        let snapshot = load_patiently(&self.engine, &self.control, self.id).await?;
        let stored: HashMap<&str, &AtomRecord> = snapshot
            .atoms
            .iter()
            .map(|a| (a.name.as_str(), a))
            .collect();
        let mut last: HashMap<&str, &AtomRecord> = HashMap::new();
        let mut flow_state = None;
        for w in &batch.writes {
            match w {
                Write::Flow { to, .. } => flow_state = Some(*to),
                Write::Atom { record, .. } => {
                    last.insert(record.name.as_str(), record);
                }
            }
        }
        let atoms_match = last.iter().all(|(name, rec)| {
            stored
                .get(name)
                .is_some_and(|s| s.state == rec.state && s.attempt == rec.attempt)
        });
        Ok(atoms_match && flow_state.is_none_or(|f| snapshot.flow.state == f))
    }

    // ----- planning -----------------------------------------------------------------------

    fn plan(&mut self) {
        self.wake_at = None;
        if !matches!(
            self.record.state,
            FlowState::Running | FlowState::Reverting | FlowState::Suspending
        ) {
            return;
        }
        self.check_deadline();
        if self.failing {
            // Past the deadline, failing: nothing starts; the run ends once nothing runs.
            if self.in_flight_count == 0 {
                self.set_flow(FlowState::Failure, self.record.intention);
                self.finished = Some(FlowState::Failure);
            }
            return;
        }
        let may_start = self.record.state != FlowState::Suspending;
        if self.record.intention != Intention::Revert {
            self.plan_forward(may_start);
        }
        if self.record.intention == Intention::Revert {
            self.plan_revert(may_start);
        }
        if self.in_flight_count > 0 {
            return;
        }
        let final_state = if self.record.intention == Intention::Revert {
            let busy = self.atoms.iter().enumerate().any(|(i, a)| {
                a.state == AtomState::Reverting
                    || (self.revertible(a.state) && self.successors_clear(i, None))
            });
            if busy {
                None
            } else if self
                .atoms
                .iter()
                .any(|a| a.state == AtomState::RevertFailure)
            {
                Some(FlowState::Failure)
            } else {
                Some(FlowState::Reverted)
            }
        } else if self
            .atoms
            .iter()
            .all(|a| matches!(a.state, AtomState::Success | AtomState::Ignore))
        {
            Some(FlowState::Success)
        } else {
            None
        };
        if let Some(state) = final_state {
            self.set_flow(state, self.record.intention);
            self.finished = Some(state);
        } else if self.record.state == FlowState::Suspending {
            self.set_flow(FlowState::Suspended, self.record.intention);
            self.finished = Some(FlowState::Suspended);
        }
    }

    /// Acts on the run's deadline once it has passed (while the run heads forward), or sets
    /// the loop to wake at it.
    fn check_deadline(&mut self) {
        let Some(deadline) = self.record.deadline else {
            return;
        };
        if self.deadline_done || self.record.intention == Intention::Revert {
            return;
        }
        if self.engine.clock.now() < deadline.at {
            self.wake_at = Some(self.wake_at.map_or(deadline.at, |w| w.min(deadline.at)));
            return;
        }
        self.deadline_done = true;
        tracing::warn!(deadline = %deadline.at, then = deadline.then.as_str(), "the run's deadline passed");
        match deadline.then {
            AtDeadline::Revert => {
                self.revert_all();
                self.stop_running(Why::Deadline, |s| s == AtomState::Running);
            }
            AtDeadline::Fail => {
                self.failing = true;
                self.stop_running(Why::Deadline, |_| true);
            }
        }
    }

    /// Acts on a cancel request, if a new (or stronger) one came.
    fn on_cancel(&mut self) {
        let Some(how) = *self.cancel_rx.borrow_and_update() else {
            return;
        };
        if self
            .cancel_done
            .is_some_and(|done| how.after(Some(done)) == done)
        {
            return;
        }
        self.cancel_done = Some(how);
        match how {
            Cancel::Revert => {
                tracing::info!("cancelling the run's tasks and reverting it, as asked");
                if self.record.intention != Intention::Revert {
                    self.revert_all();
                }
                self.stop_running(Why::Cancel(how), |s| s == AtomState::Running);
            }
            Cancel::Suspend => {
                tracing::info!("cancelling the run's tasks and suspending it, as asked");
                self.on_suspend();
                self.stop_running(Why::Cancel(how), |_| true);
            }
        }
    }

    /// Stops the running tasks whose atoms are in a state `which` accepts: their tokens fire,
    /// and they come back as `Done::Cancelled`, handled for `why`.
    fn stop_running(&mut self, why: Why, which: impl Fn(AtomState) -> bool) {
        for i in 0..self.atoms.len() {
            if let Some(token) = &self.tokens[i] {
                if self.in_flight[i] && which(self.atoms[i].state) {
                    self.why[i] = Some(why);
                    token.cancel();
                }
            }
        }
    }

    fn revertible(&self, state: AtomState) -> bool {
        matches!(
            state,
            AtomState::Success | AtomState::Failure | AtomState::Running | AtomState::Retrying
        )
    }

    /// Whether every successor of `i` (within `scope` if given) is at rest forward: never ran
    /// or was reverted.
    fn successors_clear(&self, i: usize, scope: Option<usize>) -> bool {
        self.flow.succs[i].iter().all(|&s| {
            (scope.is_some_and(|r| !self.in_scope(s, r)))
                || matches!(
                    self.atoms[s].state,
                    AtomState::Pending | AtomState::Reverted | AtomState::Ignore
                )
        })
    }

    /// Whether atom `i` is governed (directly or not) by retry controller `r`.
    fn in_scope(&self, i: usize, r: usize) -> bool {
        let mut cur = self.flow.retry_of[i];
        while let Some(c) = cur {
            if c == r {
                return true;
            }
            cur = self.flow.retry_of[c];
        }
        false
    }

    /// The outermost controller governing `i` that is retrying its subflow, if any.
    fn retrying_scope(&self, i: usize) -> Option<usize> {
        let mut cur = self.flow.retry_of[i];
        let mut found = None;
        while let Some(c) = cur {
            if self.atoms[c].intention == Intention::Retry {
                found = Some(c);
            }
            cur = self.flow.retry_of[c];
        }
        found
    }

    fn has_capacity(&self) -> bool {
        self.in_flight_count < self.engine.options.parallelism
    }

    fn queue(&mut self, launch: Launch) {
        let i = match &launch {
            Launch::Execute(i, _) | Launch::Revert(i, _) => *i,
        };
        self.in_flight[i] = true;
        self.in_flight_count += 1;
        self.launches.push(launch);
    }

    fn plan_forward(&mut self, may_start: bool) {
        // Subflows being retried: revert them, then reset them. Outermost first.
        let retrying: Vec<usize> = self.retrying.iter().copied().collect();
        for r in retrying {
            if self.atoms[r].intention == Intention::Retry && self.retrying_scope(r).is_none() {
                self.plan_scope_revert(r, may_start);
                if self.record.intention == Intention::Revert {
                    return;
                }
            }
        }

        // Only atoms something happened to (or near) need a look: see `set_atom`.
        let mut now = None;
        let clock = self.engine.clock;
        let mut later = Vec::new();
        while let Some(pos) = self.dirty.pop_first() {
            // Stop when nothing more can start: the rest waits for a free slot, and a pass stays
            // proportional to what changed rather than to the size of the flow.
            if self.record.intention == Intention::Revert || !may_start || !self.has_capacity() {
                self.dirty.insert(pos);
                break;
            }
            let i = self.flow.topo[pos];
            if self.in_flight[i] || self.retrying_scope(i).is_some() {
                continue;
            }
            let settled = match self.atoms[i].state {
                AtomState::Pending => self.consider_pending(i, may_start),
                AtomState::Running if may_start && self.has_capacity() => {
                    // Interrupted by a crash: run it again, as a new attempt.
                    self.start(i);
                    true
                }
                AtomState::Retrying if may_start => match self.atoms[i].retry_at {
                    Some(at) if at > *now.get_or_insert_with(|| clock.now()) => {
                        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
                        false
                    }
                    _ => {
                        self.start(i);
                        true
                    }
                },
                AtomState::Running | AtomState::Retrying => false,
                _ => true,
            };
            if !settled {
                later.push(pos);
            }
        }
        self.dirty.extend(later);
    }

    /// Looks at a pending atom: skips it, starts it, or leaves it to wait. Returns `false` if it
    /// could run but was held back (no capacity, or suspending) and must be looked at again.
    fn consider_pending(&mut self, i: usize, may_start: bool) -> bool {
        let preds = &self.flow.preds[i];
        let mut all_ignored = !preds.is_empty();
        for &p in preds {
            match self.atoms[p].state {
                AtomState::Success => all_ignored = false,
                AtomState::Ignore => {}
                _ => return true,
            }
        }
        let skip = all_ignored
            || self.flow.atoms[i].inputs.iter().any(|b| {
                matches!(b.source, Source::Atom { index, .. }
                    if self.atoms[index].state == AtomState::Ignore && b.default.is_none())
            })
            || self.flow.deciders[i].iter().any(|edge| {
                let results = edge
                    .sources
                    .iter()
                    .filter_map(|&s| {
                        self.atoms[s]
                            .result
                            .as_ref()
                            .filter(|_| self.atoms[s].state == AtomState::Success)
                            .map(|r| (self.atoms[s].name.clone(), r.clone()))
                    })
                    .collect();
                !(edge.decider)(&results)
            });
        if skip {
            let now = self.engine.clock.now();
            self.set_atom(i, |a| {
                a.state = AtomState::Ignore;
                a.finished_at = Some(now);
            });
            true
        } else if may_start && (self.flow.atoms[i].kind() == AtomKind::Retry || self.has_capacity())
        {
            self.start(i);
            true
        } else {
            false
        }
    }

    /// Resolves the inputs of atom `i`; on a missing one, the name of the symbol.
    fn inputs(&self, i: usize) -> Result<HashMap<String, Value>, String> {
        let mut out = HashMap::with_capacity(self.flow.atoms[i].inputs.len());
        for b in &self.flow.atoms[i].inputs {
            let (value, symbol) = match &b.source {
                Source::Inject(v) => (Some(v.clone()), b.arg.as_str()),
                Source::Atom { index, symbol } => {
                    let provider = &self.atoms[*index];
                    let v = provider
                        .result
                        .as_ref()
                        .filter(|_| provider.state == AtomState::Success)
                        .and_then(|r| project(&self.flow.atoms[*index].provides, r, symbol))
                        .or_else(|| self.record.inputs.get(symbol))
                        .cloned();
                    (v, symbol.as_str())
                }
                Source::Input { symbol } => {
                    (self.record.inputs.get(symbol).cloned(), symbol.as_str())
                }
            };
            match value.or_else(|| b.default.clone()) {
                Some(v) => {
                    out.insert(b.arg.clone(), v);
                }
                None => return Err(symbol.to_owned()),
            }
        }
        Ok(out)
    }

    /// Starts atom `i` (pending, interrupted, or a retry controller due to run again).
    fn start(&mut self, i: usize) {
        let now = self.engine.clock.now();
        let timeout = self.flow.atoms[i].timeout;
        let is_task = matches!(self.flow.atoms[i].body, AtomBody::Task(_));
        let history_limit = self.engine.options.max_history_bytes;
        self.set_atom(i, |a| {
            if is_task && a.state == AtomState::Retrying {
                // Retried in place: the failure of the call before goes to the history.
                if let Some(failure) = a.failure.take() {
                    push_failed_call(a, CallKind::Execute, failure, history_limit);
                }
            }
            // An attempt interrupted by a crash keeps its deadline: the limit counts from
            // its first start.
            let interrupted = a.state == AtomState::Running && a.deadline.is_some();
            if !interrupted {
                a.deadline = timeout.map(|t| crate::time::after(now, t));
            }
            if timeout.is_none() {
                a.deadline = None;
            }
            a.state = AtomState::Running;
            a.intention = Intention::Execute;
            // Saturating: the attempt comes from the store.
            a.attempt = a.attempt.saturating_add(1);
            a.progress = 0.0;
            a.started_at = Some(now);
            a.retry_at = None;
        });
        let attempt = self.atoms[i].attempt;
        let name = self.flow.atoms[i].name.clone();
        let inputs = match self.inputs(i) {
            Ok(inputs) => inputs,
            Err(symbol) => {
                let f = TaskError::msg(format!(
                    "atom {name:?} requires {symbol:?}, which has no value"
                ))
                .into_failure(&name, attempt, FailureKind::Input);
                self.fail(i, f);
                return;
            }
        };
        match &self.flow.atoms[i].body {
            AtomBody::Task(_) => self.queue(Launch::Execute(i, inputs)),
            AtomBody::Retry(controller) => {
                // Controllers are pure: run them inline.
                let controller = controller.clone();
                let ctx = RetryContext {
                    history: History {
                        attempts: &self.atoms[i].retry_history,
                    },
                    inputs: &inputs,
                };
                match controller.execute(&ctx) {
                    Ok(value) => self.succeed(i, value),
                    Err(e) => {
                        let f = e.into_failure(&name, attempt, FailureKind::Execute);
                        self.fail(i, f);
                    }
                }
            }
        }
    }

    fn succeed(&mut self, i: usize, value: Value) {
        let now = self.engine.clock.now();
        self.set_atom(i, |a| {
            a.state = AtomState::Success;
            a.deadline = None;
            a.result = Some(value);
            a.failure = None;
            a.progress = 1.0;
            a.finished_at = Some(now);
        });
    }

    fn fail(&mut self, i: usize, failure: Failure) {
        let retry_in = self.retry_in(i, &failure);
        self.record_failure(i, failure);
        match retry_in {
            Some(delay) => self.schedule_retry(i, delay),
            None => self.resolve_failure(i),
        }
    }

    /// Whether atom `i`'s own retry policy retries the failure of its `execute`, and after
    /// how long. Not while the run is undoing anything around it: a retry then would only
    /// be reverted.
    fn retry_in(&self, i: usize, failure: &Failure) -> Option<Duration> {
        let policy = self.flow.atoms[i].retries.as_ref()?;
        if self.record.intention == Intention::Revert
            || self.failing
            || self.retrying_scope(i).is_some()
        {
            return None;
        }
        let failed = failed_calls(&self.atoms[i].retry_history, CallKind::Execute);
        policy.next_delay(failure, failed.saturating_add(1))
    }

    /// Makes failed atom `i` wait `delay`, then run again (`RETRYING`, with the time stored).
    fn schedule_retry(&mut self, i: usize, delay: Duration) {
        let at = crate::time::after(self.engine.clock.now(), delay);
        tracing::info!(atom = %self.flow.atoms[i].name, ?delay, "retrying atom");
        self.set_atom(i, |a| {
            a.state = AtomState::Retrying;
            a.retry_at = Some(at);
        });
    }

    /// Whether atom `i`'s revert retry policy retries the failure of its `revert`, and after
    /// how long.
    fn revert_retry_in(&self, i: usize, failure: &Failure) -> Option<Duration> {
        let policy = self.flow.atoms[i].revert_retries.as_ref()?;
        let failed = failed_calls(&self.atoms[i].retry_history, CallKind::Revert);
        policy.next_delay(failure, failed.saturating_add(1))
    }

    /// Keeps atom `i` `REVERTING` after a failed `revert`, to call it again after `delay`:
    /// the failure and the time of the next call are stored.
    fn schedule_revert_retry(&mut self, i: usize, mut failure: Failure, delay: Duration) {
        crate::clip::clip_failure(&mut failure, self.engine.options.max_failure_bytes);
        tracing::warn!(atom = %failure.atom, error = %failure, ?delay, "revert failed, retrying");
        let at = crate::time::after(self.engine.clock.now(), delay);
        self.set_atom(i, |a| {
            a.revert_failure = Some(failure);
            a.retry_at = Some(at);
            a.deadline = None;
        });
    }

    /// Whether atom `i`, `REVERTING`, waits to call its `revert` again; if so, the loop is
    /// set to wake then.
    fn revert_waits(&mut self, i: usize) -> bool {
        match self.atoms[i].retry_at {
            Some(at) if at > self.engine.clock.now() => {
                self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
                true
            }
            _ => false,
        }
    }

    /// Records atom `i`'s failure, without asking any retry controller what to do.
    fn record_failure(&mut self, i: usize, mut failure: Failure) {
        crate::clip::clip_failure(&mut failure, self.engine.options.max_failure_bytes);
        let now = self.engine.clock.now();
        tracing::info!(atom = %failure.atom, attempt = failure.attempt, error = %failure, "atom failed");
        self.set_atom(i, |a| {
            a.state = AtomState::Failure;
            a.failure = Some(failure);
            a.finished_at = Some(now);
            a.deadline = None;
        });
    }

    /// Records that `revert` of atom `i` failed.
    fn record_revert_failure(&mut self, i: usize, mut failure: Failure) {
        crate::clip::clip_failure(&mut failure, self.engine.options.max_failure_bytes);
        tracing::warn!(atom = %failure.atom, error = %failure, "revert failed");
        let now = self.engine.clock.now();
        self.set_atom(i, |a| {
            a.state = AtomState::RevertFailure;
            a.revert_failure = Some(failure);
            a.finished_at = Some(now);
            a.deadline = None;
        });
    }

    /// Asks the retry controllers governing the failed atom `i` what to do, innermost first.
    fn resolve_failure(&mut self, i: usize) {
        if self.record.intention == Intention::Revert || self.retrying_scope(i).is_some() {
            // Already undoing: the failure is recorded, nothing more to decide.
            return;
        }
        let mut current = self.flow.retry_of[i];
        while let Some(r) = current {
            let AtomBody::Retry(controller) = &self.flow.atoms[r].body else {
                break;
            };
            let mut attempts = self.atoms[r].retry_history.clone();
            attempts.push(RetryAttempt::new(
                self.atoms[r].result.clone().unwrap_or(Value::Null),
                self.scope_failures(r),
            ));
            let inputs = self.inputs(r).unwrap_or_default();
            let ctx = RetryContext {
                history: History {
                    attempts: &attempts,
                },
                inputs: &inputs,
            };
            match controller.on_failure(&ctx) {
                Decision::Retry => {
                    // The later of the controller's backoff and the wait the failed task
                    // asked for (`TaskError::retry_after`).
                    let asked = self.atoms[i].failure.as_ref().and_then(|f| f.retry_after);
                    let delay = controller.delay(&ctx).max(asked.unwrap_or_default());
                    let at = crate::time::after(self.engine.clock.now(), delay);
                    tracing::info!(retry = %self.flow.atoms[r].name, ?delay, "retrying subflow");
                    self.set_atom(r, |a| {
                        a.intention = Intention::Retry;
                        a.retry_at = Some(at);
                    });
                    return;
                }
                Decision::Revert => current = self.flow.retry_of[r],
                Decision::RevertAll => break,
            }
        }
        self.revert_all();
    }

    /// The failures of the subflow of controller `r` in its current attempt, including those
    /// nested controllers absorbed (their histories are reset with the subflow, so this is
    /// where those failures stay on record).
    fn scope_failures(&self, r: usize) -> Vec<Failure> {
        let mut out = Vec::new();
        for &m in &self.flow.scope[r] {
            let atom = &self.atoms[m];
            for attempt in &atom.retry_history {
                out.extend(attempt.failures.iter().cloned());
            }
            out.extend(atom.failure.iter().cloned());
        }
        out
    }

    fn revert_all(&mut self) {
        tracing::info!("reverting flow");
        let to = match self.record.state {
            FlowState::Suspending => FlowState::Suspending,
            _ => FlowState::Reverting,
        };
        self.set_flow(to, Intention::Revert);
    }

    /// Reverts the subflow of retry controller `r`, in reverse order, then resets it.
    fn plan_scope_revert(&mut self, r: usize, may_start: bool) {
        let members = self.flow.scope[r].clone();
        let mut at_rest = true;
        for &m in members.iter().rev() {
            if self.in_flight[m] {
                at_rest = false;
                continue;
            }
            let state = self.atoms[m].state;
            if state == AtomState::Reverting {
                at_rest = false;
                if may_start && self.has_capacity() && !self.revert_waits(m) {
                    self.relaunch_revert(m);
                }
            } else if self.revertible(state) {
                at_rest = false;
                if may_start && self.successors_clear(m, Some(r)) {
                    self.begin_revert(m);
                }
            }
        }
        if at_rest && may_start {
            self.reset_scope(r, &members);
        }
    }

    fn reset_scope(&mut self, r: usize, members: &[usize]) {
        let attempt = RetryAttempt::new(
            self.atoms[r].result.clone().unwrap_or(Value::Null),
            self.scope_failures(r),
        );
        let limit = self.engine.options.max_history_bytes;
        self.set_atom(r, |a| {
            a.state = AtomState::Retrying;
            a.intention = Intention::Execute;
            a.retry_history.push(attempt);
            crate::clip::clip_history(&mut a.retry_history, limit);
        });
        for &m in members {
            if self.atoms[m].state != AtomState::Pending {
                self.set_atom(m, |a| {
                    a.state = AtomState::Pending;
                    a.intention = Intention::Execute;
                    a.round = a.round.saturating_add(1);
                    a.result = None;
                    a.failure = None;
                    a.revert_failure = None;
                    a.retry_history.clear();
                    a.retry_at = None;
                    a.progress = 0.0;
                    a.started_at = None;
                    a.finished_at = None;
                });
            }
        }
    }

    fn plan_revert(&mut self, may_start: bool) {
        if !may_start {
            return;
        }
        for pos in (0..self.flow.topo.len()).rev() {
            let i = self.flow.topo[pos];
            if self.in_flight[i] {
                continue;
            }
            let state = self.atoms[i].state;
            if state == AtomState::Reverting {
                if self.has_capacity() && !self.revert_waits(i) {
                    self.relaunch_revert(i);
                }
            } else if self.revertible(state) && self.successors_clear(i, None) {
                self.begin_revert(i);
            }
        }
    }

    /// Marks atom `i` `REVERTING` and schedules its revert (controllers revert inline).
    fn begin_revert(&mut self, i: usize) {
        let is_task = matches!(self.flow.atoms[i].body, AtomBody::Task(_));
        if is_task && !self.has_capacity() {
            return;
        }
        let now = self.engine.clock.now();
        let limit = self.flow.atoms[i].revert_timeout;
        self.set_atom(i, |a| {
            a.state = AtomState::Reverting;
            a.intention = Intention::Revert;
            a.deadline = limit.map(|t| crate::time::after(now, t));
            // A retry it was waiting for (`RETRYING`) will not come.
            a.retry_at = None;
        });
        if is_task {
            let inputs = self.inputs_best_effort(i);
            self.queue(Launch::Revert(i, inputs));
        } else {
            let now = self.engine.clock.now();
            self.set_atom(i, |a| {
                a.state = AtomState::Reverted;
                a.finished_at = Some(now);
            });
        }
    }

    fn relaunch_revert(&mut self, i: usize) {
        if matches!(self.flow.atoms[i].body, AtomBody::Task(_)) {
            // An interrupted revert keeps its deadline; one that had none (it was left by a
            // suspend, or the limit is new, or this is a retry) counts from now.
            let limit = self.flow.atoms[i].revert_timeout;
            let retry = self.atoms[i].revert_failure.is_some() || self.atoms[i].retry_at.is_some();
            if retry || limit.is_some() != self.atoms[i].deadline.is_some() {
                let now = self.engine.clock.now();
                let history_limit = self.engine.options.max_history_bytes;
                self.set_atom(i, |a| {
                    // Retried in place: the failure of the call before goes to the history.
                    if let Some(failure) = a.revert_failure.take() {
                        push_failed_call(a, CallKind::Revert, failure, history_limit);
                    }
                    a.retry_at = None;
                    a.deadline = limit.map(|t| crate::time::after(now, t));
                });
            }
            let inputs = self.inputs_best_effort(i);
            self.queue(Launch::Revert(i, inputs));
        } else {
            let now = self.engine.clock.now();
            self.set_atom(i, |a| {
                a.state = AtomState::Reverted;
                a.finished_at = Some(now);
            });
        }
    }

    /// The inputs a revert gets: whatever of them can still be resolved.
    fn inputs_best_effort(&self, i: usize) -> HashMap<String, Value> {
        match self.inputs(i) {
            Ok(inputs) => inputs,
            Err(_) => {
                let mut out = HashMap::new();
                for b in &self.flow.atoms[i].inputs {
                    let v = match &b.source {
                        Source::Inject(v) => Some(v.clone()),
                        Source::Atom { index, symbol } => self.atoms[*index]
                            .result
                            .as_ref()
                            .and_then(|r| project(&self.flow.atoms[*index].provides, r, symbol))
                            .cloned(),
                        Source::Input { symbol } => self.record.inputs.get(symbol).cloned(),
                    };
                    if let Some(v) = v.or_else(|| b.default.clone()) {
                        out.insert(b.arg.clone(), v);
                    }
                }
                out
            }
        }
    }

    // ----- running tasks ------------------------------------------------------------------

    fn scope_of(
        &self,
        i: usize,
        inputs: HashMap<String, Value>,
        cancel: CancellationToken,
    ) -> AtomScope {
        let a = &self.atoms[i];
        AtomScope {
            flow: self.id,
            atom: a.name.as_str().into(),
            index: i,
            attempt: a.attempt,
            round: a.round,
            inputs: inputs.into(),
            cancel,
            deadline: a.deadline,
            claim: self.claim.clone(),
        }
    }

    /// Starts the tasks of the batch just committed.
    ///
    /// A task that starts when nothing else is running (the whole of a linear flow) is polled
    /// by the run's own loop while the loop waits, rather than spawned: a no-op step then costs
    /// no hand-off through the runtime's scheduler, which on a multi-threaded runtime wakes an
    /// idle worker thread now and then (measured: a third of a no-op step on SQLite). If the
    /// loop has to commit while the task still runs (a progress report, a retry's deadline,
    /// a suspend request), `commit` spawns the task first. Tasks that run beside others are
    /// spawned, so they use every worker thread.
    fn launch(&mut self) {
        let launches = std::mem::take(&mut self.launches);
        let alone = launches.len() == 1 && self.alone.is_none() && self.running.is_empty();
        for launch in launches {
            let (i, job) = match launch {
                Launch::Execute(i, inputs) => (i, Ok(inputs)),
                Launch::Revert(i, inputs) => (i, Err(inputs)),
            };
            let AtomBody::Task(task) = &self.flow.atoms[i].body else {
                continue;
            };
            let task = task.clone();
            let name = self.atoms[i].name.clone();
            let attempt = self.atoms[i].attempt;
            let limit = self.atoms[i].deadline;
            let clock = self.engine.clock;
            let token = self.tasks.child_token();
            self.tokens[i] = Some(token.clone());
            match job {
                Ok(inputs) => {
                    let ctx = TaskContext {
                        scope: self.scope_of(i, inputs, token.clone()),
                        progress: Some(self.progress_tx.clone()),
                    };
                    let span = atom_span(&name, attempt, "execute");
                    self.set_going(
                        alone,
                        async move {
                            let work = AssertUnwindSafe(task.execute(ctx)).catch_unwind();
                            let done = match race(work, &token, limit, clock).await {
                                Raced::Cancelled => return (i, Done::Cancelled),
                                Raced::TimedOut(at) => Err(timed_out("execute", &name, at)
                                    .retryable()
                                    .into_failure(&name, attempt, FailureKind::Timeout)),
                                Raced::Done(Ok(Ok(v))) => Ok(v),
                                Raced::Done(Ok(Err(e))) => {
                                    Err(e.into_failure(&name, attempt, FailureKind::Execute))
                                }
                                Raced::Done(Err(p)) => Err(TaskError::msg(format!(
                                    "task panicked: {}",
                                    crate::panic_message(p.as_ref())
                                ))
                                .into_failure(&name, attempt, FailureKind::Panic)),
                            };
                            if let Err(failure) = &done {
                                mark_failed(failure);
                            }
                            (i, Done::Executed(done))
                        }
                        .instrument(span),
                    );
                }
                Err(inputs) => {
                    let ctx = RevertContext {
                        scope: self.scope_of(i, inputs, token.clone()),
                        result: self.atoms[i].result.clone(),
                        failure: self.atoms[i].failure.clone(),
                    };
                    let span = atom_span(&name, attempt, "revert");
                    self.set_going(
                        alone,
                        async move {
                            let work = AssertUnwindSafe(task.revert(ctx)).catch_unwind();
                            let done = match race(work, &token, limit, clock).await {
                                Raced::Cancelled => return (i, Done::Cancelled),
                                Raced::TimedOut(at) => Err(timed_out("revert", &name, at)
                                    .retryable()
                                    .into_failure(&name, attempt, FailureKind::Timeout)),
                                Raced::Done(Ok(Ok(()))) => Ok(()),
                                Raced::Done(Ok(Err(e))) => {
                                    Err(e.into_failure(&name, attempt, FailureKind::Revert))
                                }
                                Raced::Done(Err(p)) => Err(TaskError::msg(format!(
                                    "revert panicked: {}",
                                    crate::panic_message(p.as_ref())
                                ))
                                .into_failure(&name, attempt, FailureKind::Panic)),
                            };
                            if let Err(failure) = &done {
                                mark_failed(failure);
                            }
                            (i, Done::Reverted(done))
                        }
                        .instrument(span),
                    );
                }
            }
        }
    }

    /// Runs a task's future: by this loop if `alone`, else in a task of its own.
    fn set_going(
        &mut self,
        alone: bool,
        task: impl std::future::Future<Output = (usize, Done)> + Send + 'static,
    ) {
        if alone {
            self.alone = Some(std::sync::Mutex::new(task.boxed()));
        } else {
            self.running.spawn(task);
        }
    }

    async fn wait(&mut self) -> Result<()> {
        let sleep_for = self.wake_at.map(|at| {
            (at - self.engine.clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        });
        let halt = self.control.halt.clone();
        let suspend = self.control.suspend.clone();
        tokio::select! {
            biased;
            () = halt.cancelled() => return Err(Error::Halted(self.id)),
            () = suspend.cancelled(), if !self.suspend_requested => self.on_suspend(),
            done = std::future::poll_fn(|cx| match self.alone.as_mut() {
                Some(task) => task
                    .get_mut()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .poll_unpin(cx),
                None => std::task::Poll::Pending,
            }), if self.alone.is_some() => {
                self.alone = None;
                self.on_joined(Some(Ok(done)))?;
                while let Some(joined) = self.running.try_join_next() {
                    self.on_joined(Some(joined))?;
                }
            }
            joined = self.running.join_next(), if !self.running.is_empty() => {
                self.on_joined(joined)?;
                while let Some(joined) = self.running.try_join_next() {
                    self.on_joined(Some(joined))?;
                }
            }
            Some(report) = self.progress_rx.recv() => self.on_progress(report),
            Ok(()) = self.cancel_rx.changed() => self.on_cancel(),
            () = async { tokio::time::sleep(sleep_for.unwrap_or_default()).await }, if sleep_for.is_some() => {}
        }
        Ok(())
    }

    /// Acts on a suspend request (once): the flow goes `SUSPENDING`, which starts nothing new.
    fn on_suspend(&mut self) {
        if self.suspend_requested {
            return;
        }
        self.suspend_requested = true;
        if matches!(self.record.state, FlowState::Running | FlowState::Reverting) {
            tracing::info!("suspending flow");
            self.set_flow(FlowState::Suspending, self.record.intention);
        }
    }

    fn on_joined(
        &mut self,
        joined: Option<Result<(usize, Done), tokio::task::JoinError>>,
    ) -> Result<()> {
        let (i, done) = match joined {
            Some(Ok(pair)) => pair,
            Some(Err(e)) => {
                return Err(Error::Stuck {
                    flow: self.id,
                    detail: format!("a task was lost: {e}"),
                })
            }
            None => return Ok(()),
        };
        self.in_flight[i] = false;
        self.in_flight_count -= 1;
        self.tokens[i] = None;
        let why = self.why[i].take();
        match done {
            Done::Cancelled => self.on_stopped(i, why),
            Done::Executed(Ok(value)) => match self.check_result(i, &value) {
                Ok(()) => self.succeed(i, value),
                Err(f) => self.fail(i, f),
            },
            Done::Executed(Err(f)) => self.fail(i, f),
            Done::Reverted(Ok(())) => {
                let now = self.engine.clock.now();
                self.set_atom(i, |a| {
                    a.state = AtomState::Reverted;
                    a.finished_at = Some(now);
                    a.deadline = None;
                });
            }
            Done::Reverted(Err(f)) => match self.revert_retry_in(i, &f) {
                Some(delay) => self.schedule_revert_retry(i, f, delay),
                None => {
                    self.record_revert_failure(i, f);
                    if self.record.intention != Intention::Revert {
                        // A subflow that cannot be undone cannot be retried either.
                        self.revert_all();
                    }
                }
            },
        }
        Ok(())
    }

    /// Records what became of a task the run stopped (`why`: `None` if it was halted, when
    /// nothing more is written).
    fn on_stopped(&mut self, i: usize, why: Option<Why>) {
        let state = self.atoms[i].state;
        let name = self.atoms[i].name.clone();
        let attempt = self.atoms[i].attempt;
        match why {
            Some(Why::Cancel(Cancel::Revert)) if state == AtomState::Running => {
                let f = TaskError::msg(format!(
                    "atom {name:?} was cancelled: its run is being cancelled and reverted"
                ))
                .into_failure(&name, attempt, FailureKind::Cancelled);
                self.record_failure(i, f);
            }
            Some(Why::Deadline) => {
                let at = self.record.deadline.map(|d| d.at.to_rfc3339());
                let f = TaskError::msg(format!(
                    "atom {name:?} was cancelled: the run's deadline ({}) passed",
                    at.unwrap_or_default()
                ))
                .into_failure(&name, attempt, FailureKind::Timeout);
                match state {
                    AtomState::Running => self.record_failure(i, f),
                    AtomState::Reverting => self.record_revert_failure(i, f),
                    _ => {}
                }
            }
            // Suspended: left as interrupted, to run again on resume, with a fresh limit.
            Some(Why::Cancel(_)) if self.atoms[i].deadline.is_some() => {
                self.set_atom(i, |a| a.deadline = None);
            }
            Some(Why::Cancel(_)) | None => {}
        }
    }

    /// Checks a task's result against the atom's `provides` and the size limit.
    fn check_result(&self, i: usize, value: &Value) -> Result<(), Failure> {
        let atom = &self.flow.atoms[i];
        let attempt = self.atoms[i].attempt;
        let fail = |msg: String| {
            Err(TaskError::msg(msg).into_failure(&atom.name, attempt, FailureKind::Result))
        };
        if let Provides::Many(names) = &atom.provides {
            for name in names {
                if project(&atom.provides, value, name).is_none() {
                    return fail(format!(
                        "result of atom {:?} has no value for the symbol {name:?} it provides",
                        atom.name
                    ));
                }
            }
        }
        let limit = self.engine.options.max_result_bytes;
        let size = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
        if size > limit {
            return fail(format!(
                "result of atom {:?} is {size} bytes, over the limit of {limit}",
                atom.name
            ));
        }
        Ok(())
    }

    fn on_progress(&mut self, report: ProgressReport) {
        let i = report.atom;
        let Some(rec) = self.atoms.get(i) else {
            return;
        };
        let _ = self.engine.events.send(Event {
            flow: self.id,
            at: self.engine.clock.now(),
            kind: EventKind::Progress {
                atom: rec.name.clone(),
                progress: report.progress,
            },
        });
        if rec.state != AtomState::Running || !self.in_flight[i] {
            return;
        }
        let interval = self.engine.options.progress_interval;
        let due = self
            .progress_written
            .get(&i)
            .is_none_or(|t| t.elapsed() >= interval);
        if due {
            self.progress_written.insert(i, tokio::time::Instant::now());
            self.set_atom(i, |a| a.progress = report.progress);
        }
    }
}

/// How a task's call ended, raced against its token and its deadline.
enum Raced<T> {
    Done(T),
    Cancelled,
    TimedOut(DateTime<Utc>),
}

/// Runs `work` until it ends, `token` fires or `limit` passes, whichever comes first (in that
/// order, when several are ready at once). Past the limit, `token` is fired for whatever the
/// task handed it to.
async fn race<F: std::future::Future>(
    work: F,
    token: &CancellationToken,
    limit: Option<DateTime<Utc>>,
    clock: super::Clock,
) -> Raced<F::Output> {
    let left = limit.map(|at| (at - clock.now()).to_std().unwrap_or(Duration::ZERO));
    if let (Some(at), Some(Duration::ZERO)) = (limit, left) {
        // Out of time already (a resume after the deadline): the task is not even called.
        token.cancel();
        return Raced::TimedOut(at);
    }
    let timer = async {
        let due = left.and_then(|left| tokio::time::Instant::now().checked_add(left));
        match due {
            Some(due) => tokio::time::sleep_until(due).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        () = token.cancelled() => Raced::Cancelled,
        () = timer => {
            token.cancel();
            Raced::TimedOut(limit.unwrap_or_else(|| clock.now()))
        }
        out = work => Raced::Done(out),
    }
}

/// The span of one call of a task: `action` is `execute` or `revert`.
///
/// `otel.status_description` stays empty unless the call fails ([`mark_failed`]): trace
/// exporters (`tracing-opentelemetry`) read it as the span's status, and a log line shows it
/// only in events logged inside the span after the failure, of which there are none.
fn atom_span(name: &str, attempt: u32, action: &'static str) -> tracing::Span {
    tracing::info_span!(
        "atom",
        atom = %name,
        // As i64: trace exporters take an unsigned number as text.
        attempt = i64::from(attempt),
        action,
        otel.status_description = field::Empty,
    )
}

/// Marks the current atom span as failed, with the failure as its status.
fn mark_failed(failure: &Failure) {
    tracing::Span::current().record("otel.status_description", field::display(failure));
}

/// The error of a call cancelled at its time limit.
fn timed_out(action: &str, atom: &str, at: DateTime<Utc>) -> TaskError {
    TaskError::msg(format!(
        "{action} of atom {atom:?} ran past its time limit (due at {}) and was cancelled",
        at.to_rfc3339()
    ))
}

/// Which call of a task a retry policy retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    Execute,
    Revert,
}

impl CallKind {
    const fn as_str(self) -> &'static str {
        match self {
            CallKind::Execute => "execute",
            CallKind::Revert => "revert",
        }
    }
}

/// How many calls of `kind` failed in the atom's current round, as its history counts them:
/// each entry a retry policy adds is `{"retry": "execute" | "revert", "failed": n}` with the
/// failure of the `n`-th failed call, and the latest is always kept (see
/// [`clip_history`](crate::clip::clip_history)).
fn failed_calls(history: &[RetryAttempt], kind: CallKind) -> u32 {
    history
        .iter()
        .rev()
        .find(|h| h.value.get("retry").and_then(Value::as_str) == Some(kind.as_str()))
        .and_then(|h| h.value.get("failed").and_then(Value::as_u64))
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// Moves the failure of a call that a retry policy retries into the atom's history.
fn push_failed_call(a: &mut AtomRecord, kind: CallKind, failure: Failure, limit: usize) {
    let failed = failed_calls(&a.retry_history, kind).saturating_add(1);
    a.retry_history.push(RetryAttempt::new(
        serde_json::json!({ "retry": kind.as_str(), "failed": failed }),
        vec![failure],
    ));
    crate::clip::clip_history(&mut a.retry_history, limit);
}
