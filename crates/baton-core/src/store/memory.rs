//! The in-memory store: the reference implementation of [`Store`] and the test double.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{check_write, transition_of, Error, FlowQuery, Result, Store};
use crate::ids::{Fence, FencingToken, FlowId, JobId};
use crate::model::{AtomRecord, Batch, FlowRecord, FlowSnapshot, Transition, Write};

#[derive(Debug)]
struct StoredFlow {
    record: FlowRecord,
    atoms: Vec<AtomRecord>,
    index: HashMap<String, usize>,
    history: Vec<Transition>,
}

#[derive(Debug, Default)]
struct Inner {
    flows: HashMap<FlowId, StoredFlow>,
    order: Vec<FlowId>,
    fences: HashMap<JobId, FencingToken>,
    /// Jobs of the board fencing this store that were claimed and have not ended: their runs
    /// are not purged, even once ended, because a conductor may still be about to end the job
    /// (and would start a purged run afresh).
    open_jobs: std::collections::HashSet<JobId>,
}

/// A [`Store`] that keeps everything in process memory.
///
/// It is the reference implementation of the store contract, and the store for tests and for
/// flows that need no durability. Clones share the same data. [`MemoryStore::set_fence`] is how
/// an in-memory job board tells it which claim token is current for a job.
///
/// Like every store of this workspace it refuses a JSON value (an atom's result, failure,
/// revert failure or retry history, a run's inputs) larger than its limit,
/// [`DEFAULT_MAX_VALUE_BYTES`](super::DEFAULT_MAX_VALUE_BYTES) unless set with
/// [`MemoryStore::with_max_value_bytes`], and so does a [`MemoryJobBoard`](crate::MemoryJobBoard)
/// on it for a job's parameters.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    commits: Arc<AtomicU64>,
    max_value_bytes: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            commits: Arc::default(),
            max_value_bytes: super::DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The same store (clones share its data) with `limit` as its limit on a JSON value, in
    /// bytes of JSON text (default [`DEFAULT_MAX_VALUE_BYTES`](super::DEFAULT_MAX_VALUE_BYTES)).
    #[must_use]
    pub fn with_max_value_bytes(mut self, limit: usize) -> Self {
        self.max_value_bytes = limit;
        self
    }

    /// Its limit on a JSON value, in bytes of JSON text.
    #[must_use]
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    /// How many batches (and flow creations) this store has committed.
    #[must_use]
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Records `token` as the current claim of `job`: from now on only batches fenced with it
    /// are accepted for that job.
    pub fn set_fence(&self, job: JobId, token: FencingToken) {
        self.lock().fences.insert(job, token);
    }

    /// Forgets `job`'s fence (the board purged the job): a batch fenced by any of its claims
    /// is refused from now on.
    pub(crate) fn forget_fence(&self, job: JobId) {
        let mut inner = self.lock();
        inner.fences.remove(&job);
        inner.open_jobs.remove(&job);
    }

    /// Whether run `flow` is stored and has not ended (for the board's rules on jobs whose run
    /// is unfinished).
    pub(crate) fn run_unfinished(&self, flow: crate::ids::FlowId) -> bool {
        self.lock()
            .flows
            .get(&flow)
            .is_some_and(|s| !s.record.state.is_terminal())
    }

    /// Notes whether `job` is open (claimed and not yet ended); see `Inner::open_jobs`.
    pub(crate) fn set_job_open(&self, job: JobId, open: bool) {
        let mut inner = self.lock();
        if open {
            inner.open_jobs.insert(job);
        } else {
            inner.open_jobs.remove(&job);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic while holding it; the data is still consistent because
        // every mutation below validates first and only then applies.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn check_fence(inner: &Inner, flow: FlowId, fence: Option<Fence>) -> Result<()> {
    super::check_fence_flow(flow, fence)?;
    match fence {
        None => Ok(()),
        Some(f) if inner.fences.get(&f.job) == Some(&f.token) => Ok(()),
        Some(f) => Err(Error::Fenced {
            flow,
            job: f.job,
            token: f.token,
        }),
    }
}

/// Checks `rec`'s JSON values against `limit`, naming the first one over it.
fn check_atom(flow: FlowId, rec: &AtomRecord, limit: usize) -> Result<()> {
    let values: [(&'static str, Option<usize>); 4] = [
        ("result", rec.result.as_ref().map(super::json_size)),
        ("failure", rec.failure.as_ref().map(super::json_size)),
        (
            "revert_failure",
            rec.revert_failure.as_ref().map(super::json_size),
        ),
        ("retry_history", Some(super::json_size(&rec.retry_history))),
    ];
    match values
        .into_iter()
        .find_map(|(what, size)| size.filter(|s| *s > limit).map(|s| (what, s)))
    {
        Some((what, size)) => Err(Error::TooLarge {
            flow,
            atom: Some(rec.name.clone()),
            what,
            size,
            limit,
        }),
        None => Ok(()),
    }
}

/// Stores a new run, under the caller's lock.
fn create_locked(
    inner: &mut Inner,
    flow: &FlowRecord,
    atoms: &[AtomRecord],
    fence: Option<Fence>,
    limit: usize,
) -> Result<()> {
    check_fence(inner, flow.id, fence)?;
    super::check_inputs(flow, limit)?;
    for atom in atoms {
        check_atom(flow.id, atom, limit)?;
    }
    if inner.flows.contains_key(&flow.id) {
        return Err(Error::FlowExists(flow.id));
    }
    let index = atoms
        .iter()
        .enumerate()
        .map(|(i, a)| (a.name.clone(), i))
        .collect();
    inner.flows.insert(
        flow.id,
        StoredFlow {
            record: flow.clone(),
            atoms: atoms.to_vec(),
            index,
            history: Vec::new(),
        },
    );
    inner.order.push(flow.id);
    Ok(())
}

/// Refuses a batch that asks this store to consume a job: its job board does that.
fn refuse_consume(batch: &Batch) -> Result<()> {
    match batch.consume {
        Some(_) => Err(Error::Refused {
            flow: batch.flow,
            reason: "this store does not consume jobs (its job board does)",
        }),
        None => Ok(()),
    }
}

/// Validates and applies a batch, under the caller's lock.
fn commit_locked(inner: &mut Inner, batch: &Batch, limit: usize) -> Result<()> {
    check_fence(inner, batch.flow, batch.fence)?;
    for write in &batch.writes {
        if let Write::Atom { record, .. } = write {
            check_atom(batch.flow, record, limit)?;
        }
    }
    let stored = inner
        .flows
        .get_mut(&batch.flow)
        .ok_or(Error::FlowNotFound(batch.flow))?;

    // First validate every write against the state the writes before it leave, without
    // touching the stored data; then apply. A refused batch changes nothing.
    let mut flow_state = stored.record.state;
    let mut overlay: HashMap<&str, (crate::state::AtomState, u32)> = HashMap::new();
    for write in &batch.writes {
        match write {
            Write::Flow { to, .. } => {
                check_write(batch.flow, write, (flow_state.to_string(), 0))?;
                flow_state = *to;
            }
            Write::Atom { record, .. } => {
                let current =
                    match overlay.get(record.name.as_str()) {
                        Some(c) => *c,
                        None => {
                            let i = stored.index.get(&record.name).ok_or_else(|| {
                                Error::AtomNotFound {
                                    flow: batch.flow,
                                    atom: record.name.clone(),
                                }
                            })?;
                            (stored.atoms[*i].state, stored.atoms[*i].attempt)
                        }
                    };
                check_write(batch.flow, write, (current.0.to_string(), current.1))?;
                overlay.insert(&record.name, (record.state, record.attempt));
            }
        }
    }

    for write in &batch.writes {
        if let Some(change) = transition_of(write) {
            let seq = stored.history.len() as u64 + 1;
            stored.history.push(Transition {
                flow: batch.flow,
                seq,
                at: batch.at,
                change,
            });
        }
        match write {
            Write::Flow { to, intention, .. } => {
                stored.record.state = *to;
                stored.record.intention = *intention;
            }
            Write::Atom { record, .. } => {
                if let Some(i) = stored.index.get(&record.name) {
                    stored.atoms[*i] = record.clone();
                }
            }
        }
    }
    stored.record.updated_at = batch.at;
    Ok(())
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn create_flow(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<Fence>,
    ) -> Result<()> {
        let mut inner = self.lock();
        create_locked(&mut inner, flow, atoms, fence, self.max_value_bytes)?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn create_and_commit(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<Fence>,
        first: &Batch,
    ) -> Result<()> {
        super::check_first_batch(flow, fence, first)?;
        refuse_consume(first)?;
        // One lock for both: nobody sees the run without its first batch, and a refused
        // batch leaves no run behind.
        let mut inner = self.lock();
        create_locked(&mut inner, flow, atoms, fence, self.max_value_bytes)?;
        if let Err(e) = commit_locked(&mut inner, first, self.max_value_bytes) {
            inner.flows.remove(&flow.id);
            inner.order.retain(|id| *id != flow.id);
            return Err(e);
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn load_flow(&self, id: FlowId) -> Result<FlowSnapshot> {
        let inner = self.lock();
        let stored = inner.flows.get(&id).ok_or(Error::FlowNotFound(id))?;
        Ok(FlowSnapshot {
            flow: stored.record.clone(),
            atoms: stored.atoms.clone(),
        })
    }

    /// Without copying `meta`, which the engine would only drop.
    async fn load_run(&self, id: FlowId) -> Result<FlowSnapshot> {
        let inner = self.lock();
        let stored = inner.flows.get(&id).ok_or(Error::FlowNotFound(id))?;
        Ok(FlowSnapshot {
            flow: stored.record.without_meta(),
            atoms: stored.atoms.clone(),
        })
    }

    async fn commit(&self, batch: &Batch) -> Result<()> {
        refuse_consume(batch)?;
        let mut inner = self.lock();
        commit_locked(&mut inner, batch, self.max_value_bytes)?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn history(&self, id: FlowId) -> Result<Vec<Transition>> {
        let inner = self.lock();
        let stored = inner.flows.get(&id).ok_or(Error::FlowNotFound(id))?;
        Ok(stored.history.clone())
    }

    async fn head(&self, id: FlowId) -> Result<super::Head> {
        let inner = self.lock();
        let stored = inner.flows.get(&id).ok_or(Error::FlowNotFound(id))?;
        Ok(super::Head::new(
            stored.record.state,
            stored.history.last().map_or(0, |t| t.seq),
        ))
    }

    async fn list_flows(&self, query: &FlowQuery) -> Result<Vec<FlowRecord>> {
        let inner = self.lock();
        // Newest first: `order` is creation order, so a page after `after` is what precedes
        // it there.
        let end = match query.after {
            Some(after) => inner
                .order
                .iter()
                .position(|id| *id == after)
                .ok_or(Error::UnknownCursor(after))?,
            None => inner.order.len(),
        };
        let matching = inner.order[..end]
            .iter()
            .rev()
            .filter_map(|id| inner.flows.get(id))
            .map(|s| &s.record)
            .filter(|r| query.matches(r))
            .take(query.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        Ok(matching)
    }

    async fn purge_flows(&self, ended_before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let ended_before = super::purge_cutoff(ended_before, Utc::now());
        let mut inner = self.lock();
        let inner = &mut *inner;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut purged = 0;
        let flows = &mut inner.flows;
        let open_jobs = &inner.open_jobs;
        inner.order.retain(|id| {
            let ended = flows.get(id).is_some_and(|s| {
                s.record.state.is_terminal() && s.record.updated_at < ended_before
            }) && !open_jobs.contains(&JobId::from_uuid(id.as_uuid()));
            if purged < limit && ended {
                flows.remove(id);
                purged += 1;
                return false;
            }
            true
        });
        Ok(purged as u64)
    }
}
