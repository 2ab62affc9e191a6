//! Persistence: the [`Store`] trait and its in-memory implementation.
//!
//! A store keeps flow runs ([`FlowRecord`]), their atoms ([`AtomRecord`]) and an append-only
//! history of transitions. The engine writes to it through [`Store::commit`], one [`Batch`] per
//! step, and treats it as the only truth: whatever the engine holds in memory can be rebuilt with
//! [`Store::load_flow`] (the engine itself loads with [`Store::load_run`], which may leave out
//! the run's `meta`, which it never reads).
//!
//! # Contract for implementors
//!
//! The trait is open so that other backends can be written, but it is exempt from semver until
//! 1.0. A backend must:
//!
//! - apply a batch atomically: every write or none, and durable when `commit` returns `Ok`;
//! - treat every [`Write`] as a compare-and-set: refuse it with [`Error::Conflict`] unless the
//!   flow or atom is in the expected state (and, for atoms, at the expected attempt), and refuse
//!   an illegal transition with [`Error::IllegalTransition`] (use [`check_write`]);
//! - when the batch carries a [`Fence`](crate::Fence), refuse it with [`Error::Fenced`] unless
//!   the fence's token is still the job's current one, checked in the same transaction as the
//!   writes, and with [`Error::Refused`] if the batch's flow is not the job's own
//!   ([`FlowId::for_job`]): a claim fences its job's flow and no other (use
//!   [`check_fence_flow`]; a creation under a fence likewise);
//! - append one [`Transition`] per change of state (or new attempt), numbered from 1 per flow;
//! - report a store it cannot reach as [`Error::Unavailable`], which the engine retries, and
//!   data it cannot read as [`Error::Corrupt`] naming the flow and atom, and data of a newer
//!   version of baton (a model version above [`MODEL_VERSION`](crate::model::MODEL_VERSION))
//!   as [`Error::TooNew`].
//!
//! `MemoryStore` is the reference implementation; the conformance suite holds every backend to
//! it.

mod memory;

use std::error::Error as StdError;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::ids::{FencingToken, FlowId, JobId};
pub use crate::model::{AtomRecord, Batch, FlowRecord, FlowSnapshot, Transition, Write};
use crate::state::FlowState;
pub use memory::MemoryStore;

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No flow with this id is stored.
    #[error("flow {0} not found")]
    FlowNotFound(FlowId),
    /// A flow with this id is already stored.
    #[error("flow {0} already exists")]
    FlowExists(FlowId),
    /// The flow has no atom with this name.
    #[error("flow {flow} has no atom named {atom:?}")]
    AtomNotFound {
        /// The flow.
        flow: FlowId,
        /// The atom name that was not found.
        atom: String,
    },
    /// A compare-and-set failed: someone else changed the flow or atom first.
    #[error("conflict in flow {flow}: {subject} is {actual}, expected {expected}")]
    Conflict {
        /// The flow.
        flow: FlowId,
        /// `flow` or `atom <name>`.
        subject: String,
        /// The state (and attempt) the write expected.
        expected: String,
        /// What the store holds.
        actual: String,
    },
    /// The write asked for a transition the state machine forbids.
    #[error("illegal transition in flow {flow}: {subject} cannot go from {from} to {to}")]
    IllegalTransition {
        /// The flow.
        flow: FlowId,
        /// `flow` or `atom <name>`.
        subject: String,
        /// The current state.
        from: String,
        /// The requested state.
        to: String,
    },
    /// The write was made under a claim that is no longer current.
    #[error("write to flow {flow} refused: job {job} is no longer claimed with token {token}")]
    Fenced {
        /// The flow written to.
        flow: FlowId,
        /// The job whose claim was presented.
        job: JobId,
        /// The stale token.
        token: FencingToken,
    },
    /// A value is larger than the store accepts (see [`DEFAULT_MAX_VALUE_BYTES`]).
    #[error("{}", too_large(*flow, atom.as_deref(), what, *size, *limit))]
    TooLarge {
        /// The flow.
        flow: FlowId,
        /// The atom, for an atom's value; `None` for the run's inputs.
        atom: Option<String>,
        /// `result`, `failure`, `revert_failure`, `retry_history` (an atom's), or `inputs`
        /// (the run's).
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Stored data of the flow was written by a newer version of baton: its model version
    /// is newer than this build's [`MODEL_VERSION`](crate::model::MODEL_VERSION), so this
    /// build cannot read it. Nothing was changed; a newer build can run the flow. (A
    /// [`Conductor`](crate::Conductor) meeting this leaves the job to one.)
    #[error("flow {flow} holds data of a newer version of baton (model version {version}; this build reads up to {supported})")]
    TooNew {
        /// The flow.
        flow: FlowId,
        /// The model version of the data.
        version: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// Stored data could not be read: damaged, or of an unknown model version.
    #[error("corrupt record in flow {flow}{}: {detail}", atom.as_ref().map(|a| format!(", atom {a:?}")).unwrap_or_default())]
    Corrupt {
        /// The flow.
        flow: FlowId,
        /// The atom, if the damage is in an atom's row.
        atom: Option<String>,
        /// What is wrong.
        detail: String,
    },
    /// The batch asks for something this store does not do, or asks for it wrongly (for
    /// example [`Batch::consume`] on a store whose [`Store::consumes_jobs`] is `false`, or
    /// without a fence).
    #[error("batch for flow {flow} refused: {reason}")]
    Refused {
        /// The flow.
        flow: FlowId,
        /// What is wrong.
        reason: &'static str,
    },
    /// A listing was asked for the flows after a flow the store does not hold
    /// ([`FlowQuery::after`]): it never existed, or it was purged since the page that named it.
    #[error("cannot list after flow {0}: the store holds no such flow (purged since?)")]
    UnknownCursor(FlowId),
    /// The store cannot be reached right now; retrying later may work.
    #[error("store unavailable")]
    Unavailable(#[source] Box<dyn StdError + Send + Sync>),
    /// The database itself is damaged (SQLite: "database disk image is malformed"), not one
    /// record of it: nothing read from it can be trusted until an operator restores or repairs
    /// it. Retrying does not help; a [`Conductor`](crate::Conductor) meeting this stops.
    #[error("the database is corrupt")]
    CorruptDatabase(#[source] Box<dyn StdError + Send + Sync>),
    /// Any other backend error.
    #[error("store error")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
}

/// The message of [`Error::TooLarge`].
fn too_large(flow: FlowId, atom: Option<&str>, what: &str, size: usize, limit: usize) -> String {
    match atom {
        Some(atom) => format!(
            "{what} of atom {atom:?} in flow {flow} is {size} bytes, over the limit of {limit}"
        ),
        None => format!("{what} of flow {flow} take {size} bytes, over the limit of {limit}"),
    }
}

impl Error {
    /// Whether the operation may succeed if retried later unchanged.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// The result type of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A filter for [`Store::list_flows`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct FlowQuery {
    /// Only flows in this state.
    pub state: Option<FlowState>,
    /// Only flows with this name.
    pub name: Option<String>,
    /// Only runs built by this factory ([`FlowRecord::factory`]).
    pub factory: Option<String>,
    /// Only runs built by this version of their factory.
    pub version: Option<u32>,
    /// Only runs that have not ended (not `SUCCESS`, `FAILURE` or `REVERTED`).
    pub unfinished: bool,
    /// At most this many (newest first); `None` for all.
    pub limit: Option<usize>,
    /// Only flows listed after this one: the position a page ends at (see [`FlowQuery::after`]).
    pub after: Option<FlowId>,
    /// Only runs created at or after this time.
    pub created_since: Option<DateTime<Utc>>,
    /// Only runs created before this time.
    pub created_until: Option<DateTime<Utc>>,
}

impl FlowQuery {
    /// Every flow, newest first.
    #[must_use]
    pub fn all() -> Self {
        Self::default()
    }

    /// Only flows in `state`.
    #[must_use]
    pub fn state(mut self, state: FlowState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only flows named `name`.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Only runs built by `factory`.
    #[must_use]
    pub fn factory(mut self, factory: impl Into<String>) -> Self {
        self.factory = Some(factory.into());
        self
    }

    /// Only runs built by version `version` of their factory.
    #[must_use]
    pub fn version(mut self, version: u32) -> Self {
        self.version = Some(version);
        self
    }

    /// Only runs that have not ended.
    #[must_use]
    pub fn unfinished(mut self) -> Self {
        self.unfinished = true;
        self
    }

    /// At most `limit` flows.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only the flows that come after `flow` in the listing's order (newest first), that is
    /// the runs created before it: the next page after a page whose last row is `flow`.
    /// Paging this way (keyset pagination) reads one index range per page, however deep, and
    /// a run created while an operator pages shows up on the first page, never twice.
    ///
    /// A store refuses a position it does not hold with [`Error::UnknownCursor`] (the run was
    /// purged since the page that named it, or never existed).
    #[must_use]
    pub fn after(mut self, flow: FlowId) -> Self {
        self.after = Some(flow);
        self
    }

    /// Only runs created at or after `since`.
    ///
    /// A time is a filter, not a position: the listing keeps its order (newest first, by
    /// creation) and its paging ([`FlowQuery::after`]); the store reads the runs the other
    /// filters select and skips those created outside the window.
    #[must_use]
    pub fn created_since(mut self, since: DateTime<Utc>) -> Self {
        self.created_since = Some(since);
        self
    }

    /// Only runs created before `until` (see [`FlowQuery::created_since`]).
    #[must_use]
    pub fn created_until(mut self, until: DateTime<Utc>) -> Self {
        self.created_until = Some(until);
        self
    }

    /// Whether `flow` passes the filter (for backends that filter in memory).
    #[must_use]
    pub fn matches(&self, flow: &FlowRecord) -> bool {
        self.state.is_none_or(|s| flow.state == s)
            && self.name.as_ref().is_none_or(|n| &flow.name == n)
            && self
                .factory
                .as_ref()
                .is_none_or(|f| flow.factory.as_ref().is_some_and(|r| &r.name == f))
            && self
                .version
                .is_none_or(|v| flow.factory.as_ref().is_some_and(|r| r.version == v))
            && !(self.unfinished && flow.state.is_terminal())
            && self.created_since.is_none_or(|t| flow.created_at >= t)
            && self.created_until.is_none_or(|t| flow.created_at < t)
    }
}

/// A run as an operator inspects it: the run, its atoms and its history. It is what
/// `baton flows show --json` prints, and what the console's `/api/flows/{id}` answers (with
/// more beside it).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct RunView {
    /// The run, with its metadata.
    pub flow: FlowRecord,
    /// Its atoms, in the order they were created.
    pub atoms: Vec<AtomRecord>,
    /// Its history, oldest first.
    pub history: Vec<Transition>,
}

impl RunView {
    /// Reads run `id` from `store`.
    ///
    /// # Errors
    /// [`Error::FlowNotFound`]; backend errors.
    pub async fn load(store: &dyn Store, id: FlowId) -> Result<Self> {
        let snap = store.load_flow(id).await?;
        let history = store.history(id).await?;
        Ok(Self {
            flow: snap.flow,
            atoms: snap.atoms,
            history,
        })
    }
}

/// Where a run stands, as [`Store::head`] reads it: cheap enough to ask every half second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Head {
    /// The run's state.
    pub state: FlowState,
    /// A number that grows with every step the store records for the run (0 before the first):
    /// the SQL stores' step log's last step, the in-memory store's history length. Compare it
    /// only with numbers from the same store.
    pub seq: u64,
}

impl Head {
    /// A run in `state` whose last step is `seq`.
    #[must_use]
    pub fn new(state: FlowState, seq: u64) -> Self {
        Self { state, seq }
    }
}

/// The largest JSON value, in bytes of JSON text, that the stores and job boards of this
/// workspace accept unless configured otherwise: 1 MiB. The same limit holds for every value
/// a caller hands them: an atom's result, failure, revert failure and retry history, a run's
/// inputs, and a job's parameters. A larger one is refused ([`Error::TooLarge`], or
/// [`board::Error::TooLarge`](crate::board::Error::TooLarge) for a job) before anything is
/// written.
///
/// Each store takes its limit as an option (`MemoryStore::with_max_value_bytes`, and
/// `max_value_bytes` in the SQL stores' options); a job board built on a store keeps to that
/// store's limit.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// The size of `value` as JSON text, in bytes, counted without writing the text out (a value
/// that cannot be written as JSON counts as `usize::MAX`, over any limit).
#[must_use]
pub fn json_size<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// Checks a new run's inputs against the store's limit on a JSON value.
///
/// # Errors
/// [`Error::TooLarge`] naming the inputs (`atom` `None`), their size and the limit.
pub fn check_inputs(flow: &FlowRecord, limit: usize) -> Result<()> {
    let size = json_size(&flow.inputs);
    if size > limit {
        return Err(Error::TooLarge {
            flow: flow.id,
            atom: None,
            what: "inputs",
            size,
            limit,
        });
    }
    Ok(())
}

/// How long ago a run must have ended for [`Store::purge_flows`] to delete it, whatever the
/// cutoff it is given: 10 minutes. An engine in another process may still hold a view of the
/// run from before it ended; the SQL stores trust such a view for a minute at most, so by the
/// time a run may be purged, no writer can append to it on a view that old without the store
/// reading the run again (and finding it gone).
pub const PURGE_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// The latest cutoff [`Store::purge_flows`] honours at `now`: `ended_before`, or
/// [`PURGE_MIN_AGE`] before `now` if that is earlier.
#[must_use]
pub fn purge_cutoff(ended_before: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
    let latest = chrono::Duration::from_std(PURGE_MIN_AGE)
        .ok()
        .and_then(|age| now.checked_sub_signed(age))
        .unwrap_or(now);
    ended_before.min(latest)
}

/// How many runs a store holds, for monitoring ([`Store::count_runs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunCounts {
    /// The runs that have not ended, by state, exactly: every state that is not terminal, in
    /// the order of [`FlowState::ALL`], zeros included.
    pub unfinished: Vec<(FlowState, u64)>,
    /// About how many runs the store holds, in every state (ended ones included), where the
    /// store can tell without counting them: for capacity and retention, not for exact
    /// figures. `None` where it cannot.
    pub stored_estimate: Option<u64>,
}

impl Default for RunCounts {
    fn default() -> Self {
        Self::new()
    }
}

impl RunCounts {
    /// Counts of zero for every unfinished state, and no estimate.
    #[must_use]
    pub fn new() -> Self {
        Self {
            unfinished: FlowState::ALL
                .iter()
                .filter(|s| !s.is_terminal())
                .map(|&s| (s, 0))
                .collect(),
            stored_estimate: None,
        }
    }

    /// Adds `n` runs in `state` (ignored for a terminal state, which is not counted).
    pub fn add(&mut self, state: FlowState, n: u64) {
        if let Some((_, count)) = self.unfinished.iter_mut().find(|(s, _)| *s == state) {
            *count += n;
        }
    }
}

/// How many runs [`Store::count_runs`]' default implementation lists per call.
const COUNT_PAGE: usize = 1000;

/// Where flow runs are persisted.
///
/// See the [module documentation](self) for the contract every implementation keeps.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Stores a new flow run with its atoms, all at once.
    ///
    /// # Errors
    /// [`Error::FlowExists`] if the id is taken, [`Error::Fenced`] if `fence` is stale.
    async fn create_flow(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<crate::ids::Fence>,
    ) -> Result<()>;

    /// Loads a flow run and all its atoms.
    ///
    /// # Errors
    /// [`Error::FlowNotFound`], [`Error::Corrupt`] naming the row that cannot be read, or
    /// [`Error::TooNew`].
    async fn load_flow(&self, id: FlowId) -> Result<FlowSnapshot>;

    /// Loads a flow run as an engine needs it to run the flow: as [`Store::load_flow`], except
    /// that the run's `meta` may be left out ([`serde_json::Value::Null`]). The engine never
    /// reads it, and for a big flow it is mostly the graph's shape (see
    /// [`GRAPH_META_KEY`](crate::engine::GRAPH_META_KEY)), whose parsing can be a good part of
    /// the load and whose parsed form would stay in memory for the whole run. The default
    /// loads everything.
    ///
    /// # Errors
    /// As [`Store::load_flow`].
    async fn load_run(&self, id: FlowId) -> Result<FlowSnapshot> {
        self.load_flow(id).await
    }

    /// Applies a batch of writes atomically and durably.
    ///
    /// # Errors
    /// [`Error::Conflict`], [`Error::IllegalTransition`], [`Error::Fenced`],
    /// [`Error::TooLarge`]; on any of them nothing of the batch was applied.
    /// [`Error::Unavailable`] leaves it unknown whether the batch was applied.
    async fn commit(&self, batch: &Batch) -> Result<()>;

    /// The flow's history of transitions, oldest first.
    ///
    /// # Errors
    /// [`Error::FlowNotFound`].
    async fn history(&self, id: FlowId) -> Result<Vec<Transition>>;

    /// Lists flow runs, newest first.
    ///
    /// # Errors
    /// Backend errors only.
    async fn list_flows(&self, query: &FlowQuery) -> Result<Vec<FlowRecord>>;

    /// Where run `id` stands: its state and its last step's number, for watching a run
    /// change (the console polls it). The default loads the run and its history; the stores
    /// of this workspace read one row.
    ///
    /// # Errors
    /// [`Error::FlowNotFound`]; backend errors.
    async fn head(&self, id: FlowId) -> Result<Head> {
        let state = self.load_run(id).await?.flow.state;
        let seq = self.history(id).await?.last().map_or(0, |t| t.seq);
        Ok(Head { state, seq })
    }

    /// Deletes up to `limit` runs that ended (`SUCCESS`, `FAILURE` or `REVERTED`, states a
    /// run never leaves) before `ended_before` and at least [`PURGE_MIN_AGE`] ago (see
    /// [`purge_cutoff`]), oldest first, with everything stored about
    /// them: atoms, step log, history. Returns how many were deleted; call again while it
    /// returns `limit` to delete more. A run that has not ended is never touched, whatever
    /// its age, nor is the run of a job that has not ended on the board fencing this store
    /// (a conductor may be about to end the job, and would start a deleted run afresh). A
    /// deleted run is gone: [`Store::load_flow`] answers [`Error::FlowNotFound`], and so does
    /// a commit for it. A writer fenced by the run's job is refused in any case (the job has
    /// ended); an unfenced writer in another process whose view of the run dates from before
    /// it ended is refused because the stores of this workspace trust such a view for a
    /// minute at most (see `docs/operations.md`, "Retention", for what that assumes of the
    /// machines' clocks).
    ///
    /// This is how an operator keeps the store from growing without end (`baton flows
    /// purge`); see `docs/operations.md`, "Retention".
    ///
    /// # Errors
    /// Backend errors only; a batch of deletions is one transaction, so an error leaves the
    /// runs of that call all there.
    async fn purge_flows(&self, ended_before: DateTime<Utc>, limit: u32) -> Result<u64>;

    /// Stores a new flow run and applies its first batch, as [`Store::create_flow`] then
    /// [`Store::commit`] would. The engine uses it for a run it creates and starts at once, so
    /// that the creation costs no commit of its own.
    ///
    /// The default does exactly those two calls. Backends that can should do both in one
    /// transaction: then either the run exists with its first batch applied, or nothing was
    /// stored. `first` must be for `flow` and carry `fence` as its own fence; the stores of
    /// this workspace refuse it otherwise ([`Error::Refused`]).
    ///
    /// # Errors
    /// As [`Store::create_flow`] (nothing stored) and [`Store::commit`] (for the default, the
    /// run may then exist without the batch: [`Error::FlowExists`] on a second call says so).
    async fn create_and_commit(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<crate::ids::Fence>,
        first: &Batch,
    ) -> Result<()> {
        self.create_flow(flow, atoms, fence).await?;
        self.commit(first).await
    }

    /// Whether [`Batch::consume`] may be used: the store shares its database with the job
    /// board whose claims fence it, and ends a job in the same transaction as a batch. When a
    /// fenced batch carries `consume`, the store applies the writes and marks the job
    /// `COMPLETE` with that outcome together, or neither (a lost claim is [`Error::Fenced`]).
    ///
    /// The default is `false`: batches must not carry `consume`, and a store that cannot
    /// honour it refuses such a batch with [`Error::Refused`].
    fn consumes_jobs(&self) -> bool {
        false
    }

    /// A short name for the kind of store (`memory`, `sqlite`, `postgres`), for the `store`
    /// label of the engine's metrics (see [`crate::metrics`]). Wrappers pass on the kind of the
    /// store they wrap. The default is `custom`.
    fn kind(&self) -> &'static str {
        "custom"
    }

    /// Counts the runs that have not ended, by state, and estimates how many runs the store
    /// holds (see [`RunCounts`]): what the console's `baton_runs` gauges show.
    ///
    /// Its cost must follow the number of unfinished runs, never the number of ended ones,
    /// which grows without end. The default pages through [`Store::list_flows`] of the
    /// unfinished runs and gives no estimate; the SQL stores count with one statement over
    /// their index of unfinished runs.
    ///
    /// # Errors
    /// Backend errors only.
    async fn count_runs(&self) -> Result<RunCounts> {
        let mut counts = RunCounts::new();
        let mut after = None;
        loop {
            let mut query = FlowQuery::all().unfinished().limit(COUNT_PAGE);
            query.after = after;
            let page = self.list_flows(&query).await?;
            for flow in &page {
                counts.add(flow.state, 1);
            }
            match page.last() {
                Some(last) if page.len() == COUNT_PAGE => after = Some(last.id),
                _ => return Ok(counts),
            }
        }
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    async fn create_flow(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<crate::ids::Fence>,
    ) -> Result<()> {
        (**self).create_flow(flow, atoms, fence).await
    }

    async fn load_flow(&self, id: FlowId) -> Result<FlowSnapshot> {
        (**self).load_flow(id).await
    }

    async fn load_run(&self, id: FlowId) -> Result<FlowSnapshot> {
        (**self).load_run(id).await
    }

    async fn commit(&self, batch: &Batch) -> Result<()> {
        (**self).commit(batch).await
    }

    async fn history(&self, id: FlowId) -> Result<Vec<Transition>> {
        (**self).history(id).await
    }

    async fn list_flows(&self, query: &FlowQuery) -> Result<Vec<FlowRecord>> {
        (**self).list_flows(query).await
    }

    async fn head(&self, id: FlowId) -> Result<Head> {
        (**self).head(id).await
    }

    async fn purge_flows(&self, ended_before: DateTime<Utc>, limit: u32) -> Result<u64> {
        (**self).purge_flows(ended_before, limit).await
    }

    async fn create_and_commit(
        &self,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        fence: Option<crate::ids::Fence>,
        first: &Batch,
    ) -> Result<()> {
        (**self).create_and_commit(flow, atoms, fence, first).await
    }

    fn consumes_jobs(&self) -> bool {
        (**self).consumes_jobs()
    }

    fn kind(&self) -> &'static str {
        (**self).kind()
    }

    async fn count_runs(&self) -> Result<RunCounts> {
        (**self).count_runs().await
    }
}

/// Checks what [`Store::create_and_commit`] is given belongs together: the first batch is
/// for the run being created and carries the creation's fence.
///
/// # Errors
/// [`Error::Refused`] naming what does not match.
pub fn check_first_batch(
    flow: &FlowRecord,
    fence: Option<crate::ids::Fence>,
    first: &Batch,
) -> Result<()> {
    if first.flow != flow.id {
        return Err(Error::Refused {
            flow: flow.id,
            reason: "the first batch is for another flow",
        });
    }
    if first.fence != fence {
        return Err(Error::Refused {
            flow: flow.id,
            reason: "the first batch must carry the creation's fence",
        });
    }
    Ok(())
}

/// Checks that a write made under `fence` is for the fence's job's own flow
/// ([`FlowId::for_job`]): a claim fences that flow and no other, so any live claim cannot
/// write to every flow. Stores call it for every fenced creation and batch, before anything
/// else.
///
/// # Errors
/// [`Error::Refused`] if `flow` is another flow.
pub fn check_fence_flow(flow: FlowId, fence: Option<crate::ids::Fence>) -> Result<()> {
    match fence {
        Some(f) if FlowId::for_job(f.job) != flow => Err(Error::Refused {
            flow,
            reason: "the fence is another flow's: a job's claim fences only the job's own flow",
        }),
        _ => Ok(()),
    }
}

/// Checks one write against what the store holds now: the compare-and-set and the state
/// machine. Backends call it (or do the same in SQL) for every write of a batch, in order,
/// against the state left by the writes before it.
///
/// `current` is the flow's state for a flow write, and the atom's state and attempt for an
/// atom write.
///
/// # Errors
/// [`Error::Conflict`] or [`Error::IllegalTransition`].
pub fn check_write(flow: FlowId, write: &Write, current: (String, u32)) -> Result<()> {
    let (actual_state, actual_attempt) = current;
    match write {
        Write::Flow { from, to, .. } => {
            if actual_state != from.as_str() {
                return Err(Error::Conflict {
                    flow,
                    subject: "flow".into(),
                    expected: from.to_string(),
                    actual: actual_state,
                });
            }
            if !write.is_legal() {
                return Err(Error::IllegalTransition {
                    flow,
                    subject: "flow".into(),
                    from: from.to_string(),
                    to: to.to_string(),
                });
            }
        }
        Write::Atom {
            expected_state,
            expected_attempt,
            record,
        } => {
            if actual_state != expected_state.as_str() || actual_attempt != *expected_attempt {
                return Err(Error::Conflict {
                    flow,
                    subject: format!("atom {}", record.name),
                    expected: format!("{expected_state} at attempt {expected_attempt}"),
                    actual: format!("{actual_state} at attempt {actual_attempt}"),
                });
            }
            if !write.is_legal() {
                return Err(Error::IllegalTransition {
                    flow,
                    subject: format!("atom {}", record.name),
                    from: format!("{expected_state} at attempt {expected_attempt}"),
                    to: format!("{} at attempt {}", record.state, record.attempt),
                });
            }
        }
    }
    Ok(())
}

/// The history entry a write adds, if any: one per change of state or of attempt.
#[must_use]
pub fn transition_of(write: &Write) -> Option<crate::model::Change> {
    use crate::model::Change;
    match write {
        Write::Flow { from, to, .. } => (from != to).then_some(Change::Flow {
            from: *from,
            to: *to,
        }),
        Write::Atom {
            expected_state,
            expected_attempt,
            record,
        } => (*expected_state != record.state || *expected_attempt != record.attempt).then(|| {
            Change::Atom {
                atom: record.name.clone(),
                from: *expected_state,
                to: record.state,
                attempt: record.attempt,
            }
        }),
    }
}
