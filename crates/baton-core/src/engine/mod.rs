//! The engine: runs a compiled flow against a store, persisting every step before acting on it.
//!
//! # The write-ahead rule
//!
//! - An atom's `RUNNING`, with its attempt number, is committed before `execute` is called.
//! - Its result (or failure) is committed before any atom after it starts: in the same batch as
//!   those atoms' `RUNNING`, so a step costs one commit.
//! - `REVERTING` is committed before `revert` is called.
//!
//! The engine keeps a copy of the flow's records in memory only as a cache: it can be dropped at
//! any instruction, and [`Engine::run`] on the same flow id rebuilds it from the store and goes
//! on in the direction the flow was heading.
//!
//! # Resume
//!
//! Atoms in `SUCCESS` keep their results and do not run again. Atoms caught in `RUNNING` run
//! again with a larger [`TaskContext::attempt`](crate::TaskContext::attempt) and the same
//! [`TaskContext::idempotency_key`](crate::TaskContext::idempotency_key): execution is
//! at-least-once. Atoms caught in `REVERTING` revert again. A suspended flow resumes in the
//! direction it was going.

mod run;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::board::Cancel;
use crate::compile::CompiledFlow;
use crate::failure::Failure;
use crate::ids::{Fence, FlowId};
use crate::model::{AtomRecord, Change, Deadline, FactoryRef, FlowRecord, Inputs};
use crate::state::{AtomState, FlowState, Intention};
use crate::store::{self, Store};
use crate::task::ClaimCheck;
pub use crate::time::Clock;

/// What can stop the engine from running a flow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The flow needs an input nobody gave it.
    #[error(
        "atom {atom:?} requires {symbol:?}, which no atom provides and the flow was not given"
    )]
    MissingInput {
        /// The atom.
        atom: String,
        /// The missing symbol.
        symbol: String,
    },
    /// The stored run does not match the flow definition it is run with.
    #[error("flow {flow} does not match its definition: {detail}")]
    FlowMismatch {
        /// The stored run.
        flow: FlowId,
        /// What differs.
        detail: String,
    },
    /// The run was halted from outside (see [`Control::halt`]); nothing more was written.
    #[error("run of flow {0} was halted")]
    Halted(FlowId),
    /// The store refused a write or could not be read. On [`store::Error::Fenced`] the run
    /// lost its claim and stopped writing.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A run was to be created with a deadline that has already passed; nothing was stored.
    #[error("the deadline {deadline} has already passed (it is {now})")]
    DeadlinePassed {
        /// The deadline asked for.
        deadline: DateTime<Utc>,
        /// The time it was refused at.
        now: DateTime<Utc>,
    },
    /// [`Engine::cancel`] was asked to cancel a run this engine is not driving.
    #[error("flow {0} is not being run by this engine")]
    NotRunning(FlowId),
    /// The flow cannot make progress from its stored state (a bug, or records edited by hand).
    #[error("flow {flow} is stuck: {detail}")]
    Stuck {
        /// The flow.
        flow: FlowId,
        /// Why.
        detail: String,
    },
}

/// The result type of engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The key under which [`Engine::create`] records the flow's [`Shape`](crate::compile::Shape)
/// in the run's metadata (when the metadata is a JSON object or empty).
pub const GRAPH_META_KEY: &str = "graph";

/// Tuning for an [`Engine`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// How many atoms may run at once (1 runs the flow serially).
    pub parallelism: usize,
    /// The largest result (serialized JSON, bytes) an atom may return; a larger one fails the
    /// atom.
    pub max_result_bytes: usize,
    /// The most one recorded failure takes in the store (its JSON, bytes; at least 1 KiB): a
    /// failure whose message or causes are longer is clipped in the middle (each text keeps
    /// its head and its tail around a mark saying how much was cut), so recording a failure
    /// never fails. Keep it under the store's limit on one value (the SQL stores'
    /// `max_value_bytes`, 1 MiB by default).
    pub max_failure_bytes: usize,
    /// The most a retry controller's history takes in the store (its JSON, bytes; at least
    /// 8 KiB). A history keeps its first attempt and its latest 8 (the others counted, so
    /// controllers still count every attempt), and what is still over this is clipped: the
    /// failures' texts, then failures, then values, then all but the latest attempt (see
    /// [`RetryAttempt`](crate::model::RetryAttempt)). Keep it under the store's limit on one
    /// value.
    pub max_history_bytes: usize,
    /// How often, at most, one atom's progress is written to the store.
    pub progress_interval: Duration,
    /// The first wait before retrying a store that is unavailable (doubling up to
    /// `store_retry_max`).
    pub store_retry_base: Duration,
    /// The longest wait between retries of an unavailable store.
    pub store_retry_max: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            parallelism: 8,
            max_result_bytes: 1 << 20,
            max_failure_bytes: 64 << 10,
            max_history_bytes: 256 << 10,
            progress_interval: Duration::from_secs(1),
            store_retry_base: Duration::from_millis(50),
            store_retry_max: Duration::from_secs(5),
        }
    }
}

/// A notification of something that happened to a flow run.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The flow run.
    pub flow: FlowId,
    /// When.
    pub at: DateTime<Utc>,
    /// What.
    pub kind: EventKind,
}

/// What an [`Event`] reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// A transition, committed to the store.
    Transition(Change),
    /// A task reported progress.
    Progress {
        /// The atom.
        atom: String,
        /// Its progress, 0.0 to 1.0.
        progress: f64,
    },
}

/// A subscription to an engine's events, from [`Engine::subscribe`].
#[derive(Debug)]
pub struct Events {
    rx: broadcast::Receiver<Event>,
}

/// What [`Events::next`] gives in place of the events a subscriber missed: it fell more than
/// [`Events::CAPACITY`] events behind, and the oldest of them were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fell behind the engine's events and missed {missed} of them")]
pub struct Lagged {
    /// How many events were dropped.
    pub missed: u64,
}

impl Events {
    /// How many events a subscriber may fall behind before it misses the oldest.
    pub const CAPACITY: usize = 4096;

    /// The next event; `None` once every clone of the engine is dropped and the events sent
    /// before are read.
    ///
    /// A subscriber that falls more than [`Events::CAPACITY`] events behind misses the
    /// oldest ones: it gets `Err(Lagged)` saying how many, then the events after them (the
    /// store's [history](crate::store::Store::history) still holds every transition).
    ///
    /// # Cancel safety
    /// Cancel safe: an event is never lost by dropping the future.
    pub async fn next(&mut self) -> Option<Result<Event, Lagged>> {
        match self.rx.recv().await {
            Ok(e) => Some(Ok(e)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Err(Lagged { missed })),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// Steers a run from outside: suspend it at a step boundary, cancel it, or halt it.
///
/// Clones control the same run.
#[derive(Debug, Clone)]
pub struct Control {
    suspend: CancellationToken,
    halt: CancellationToken,
    /// The strongest cancel request so far, if any.
    cancel: Arc<tokio::sync::watch::Sender<Option<Cancel>>>,
    /// How many times an atom came to rest (succeeded, failed, was reverted or skipped) in a
    /// committed batch of the run: what a conductor reports as progress.
    settled: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            suspend: CancellationToken::new(),
            halt: CancellationToken::new(),
            cancel: Arc::new(tokio::sync::watch::Sender::new(None)),
            settled: Arc::default(),
        }
    }
}

impl Control {
    /// A control that has not been triggered.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels the run: its running tasks are cancelled at once (their
    /// [cancellation tokens](crate::TaskContext::cancellation) fire and their futures are
    /// dropped), and then, with [`Cancel::Revert`], each of them ends `FAILURE` (a
    /// [`Cancelled`](crate::FailureKind::Cancelled) failure, which no retry controller
    /// retries) and the run reverts what ran, in reverse order, ending `REVERTED`; with
    /// [`Cancel::Suspend`], they are left as interrupted (they run again, afresh, on resume)
    /// and the run ends `SUSPENDED`. A revert asked after a suspend turns the run round; a
    /// suspend after a revert changes nothing. A run that already ended is not changed.
    pub fn cancel(&self, how: Cancel) {
        self.cancel.send_modify(|c| *c = Some(how.after(*c)));
    }

    /// The cancel request made so far, if any.
    #[must_use]
    pub fn cancel_requested(&self) -> Option<Cancel> {
        *self.cancel.borrow()
    }

    /// Asks the run to suspend: it starts nothing after the request (even one a task makes
    /// as it ends), waits for running atoms, records their results and ends `SUSPENDED`.
    /// [`Engine::run`] resumes it later.
    pub fn suspend(&self) {
        self.suspend.cancel();
    }

    /// Stops the run at once without writing anything more. Running tasks are dropped; the
    /// stored state is left as it was, and a later run resumes from it (re-running the atoms
    /// that were `RUNNING`). This is what a conductor does when it loses its claim.
    pub fn halt(&self) {
        self.halt.cancel();
    }

    /// How many times, so far, an atom of the run came to rest in a committed batch.
    pub(crate) fn settled(&self) -> u64 {
        self.settled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts the atoms `batch` (just committed) brought to rest.
    pub(crate) fn note_settled(&self, batch: &crate::model::Batch) {
        let n = batch
            .writes
            .iter()
            .filter(|w| match w {
                crate::model::Write::Atom {
                    expected_state,
                    record,
                    ..
                } => record.state != *expected_state && record.state.is_at_rest(),
                crate::model::Write::Flow { .. } => false,
            })
            .count() as u64;
        if n > 0 {
            self.settled
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Per-run settings for [`Engine::run_with`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RunOptions {
    pub(crate) fence: Option<Fence>,
    pub(crate) claim_check: Option<Arc<dyn ClaimCheck>>,
    pub(crate) control: Control,
    pub(crate) consume_job: bool,
    pub(crate) revert: bool,
    pub(crate) factory: Option<FactoryRef>,
}

impl RunOptions {
    /// Default settings: no fence, a fresh control.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every write carry `fence`, so the store refuses them once the claim is lost.
    pub fn fence(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Lets the run's tasks confirm its claim ([`TaskContext::confirm_claim`]) through
    /// `check`; without one, a fenced run's tasks get [`ClaimError::Unconfirmed`]. A
    /// [`Conductor`](crate::Conductor) gives every run it drives one.
    ///
    /// [`TaskContext::confirm_claim`]: crate::TaskContext::confirm_claim
    /// [`ClaimError::Unconfirmed`]: crate::ClaimError::Unconfirmed
    pub fn claim_check(mut self, check: Arc<dyn ClaimCheck>) -> Self {
        self.claim_check = Some(check);
        self
    }

    /// Steers the run with `control`.
    pub fn control(mut self, control: Control) -> Self {
        self.control = control;
        self
    }

    /// Ends the fence's job together with the run: when the run ends (`SUCCESS`, `REVERTED`
    /// or `FAILURE`) and the store [consumes jobs](crate::store::Store::consumes_jobs), the final
    /// batch also consumes the job with [`Outcome::job_outcome`], in the same transaction, and
    /// [`Outcome::job_consumed`] says so. Otherwise (no fence, a store that does not, a
    /// suspended run, a run that had already ended) the job is left to the caller.
    pub fn consume_job(mut self) -> Self {
        self.consume_job = true;
        self
    }

    /// Reverts the run instead of going on with it: a run heading forward (running,
    /// suspended, or not started) turns round and reverts what ran, in reverse order, and
    /// ends `REVERTED` (or `FAILURE` if a revert fails). A run already reverting goes on
    /// reverting; a run that ended is left as it is. This is how a conductor honours a
    /// [`Cancel::Revert`] request.
    pub fn revert(mut self) -> Self {
        self.revert = true;
        self
    }

    /// Refuses ([`Error::FlowMismatch`]) a stored run that records another factory or version
    /// than `factory` (runs that record none are not checked).
    pub(crate) fn expecting_factory(mut self, factory: FactoryRef) -> Self {
        self.factory = Some(factory);
        self
    }
}

/// Settings for creating a flow run with [`Engine::create_with`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CreateOptions {
    pub(crate) id: Option<FlowId>,
    pub(crate) meta: Value,
    pub(crate) fence: Option<Fence>,
    pub(crate) factory: Option<FactoryRef>,
    pub(crate) deadline: Option<Deadline>,
}

impl CreateOptions {
    /// Defaults: a new id, no metadata, no fence.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `id` for the run (e.g. one chosen by a job).
    pub fn id(mut self, id: FlowId) -> Self {
        self.id = Some(id);
        self
    }

    /// Stores `meta` with the run. If it is a JSON object (or not set), the engine adds the
    /// flow's shape under [`GRAPH_META_KEY`].
    pub fn meta(mut self, meta: Value) -> Self {
        self.meta = meta;
        self
    }

    /// Fences the creation.
    pub fn fence(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Records the factory and version that built the flow
    /// ([`FlowRecord::factory`](crate::model::FlowRecord::factory)), as a conductor does.
    pub fn factory(mut self, factory: FactoryRef) -> Self {
        self.factory = Some(factory);
        self
    }

    /// Gives the run a deadline, stored with it: past `deadline.at`, whichever engine owns
    /// the run cancels its running tasks and reverts it, or fails it (see
    /// [`AtDeadline`](crate::model::AtDeadline)). Creating a run whose deadline has passed
    /// is refused ([`Error::DeadlinePassed`]).
    pub fn deadline(mut self, deadline: Deadline) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

/// How a run ended (or paused).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The run.
    pub flow: FlowId,
    /// Its state: `SUCCESS`, `REVERTED`, `FAILURE` or `SUSPENDED`.
    pub state: FlowState,
    /// The results of the atoms that succeeded, by atom name.
    pub results: BTreeMap<String, Value>,
    /// Every failure recorded, execute and revert failures, including those of attempts a
    /// retry controller retried and of calls an atom's retry policy retried.
    pub failures: Vec<Failure>,
    /// Whether the run's final batch also consumed its job (see
    /// [`RunOptions::consume_job`]).
    pub job_consumed: bool,
    symbols: BTreeMap<String, Value>,
    /// The symbol the flow returns ([`Flow::returns`](crate::Flow::returns)).
    returns: Option<String>,
}

impl Outcome {
    /// Whether the flow succeeded.
    #[must_use]
    pub fn is_success(&self) -> bool {
        self.state == FlowState::Success
    }

    /// The flow's result ([`Flow::returns`](crate::Flow::returns)): `None` unless the run
    /// succeeded and its flow returns a symbol; `Some(&Value::Null)` if it did, but no atom
    /// that ran provided the symbol (the atom was skipped by a decider, say).
    #[must_use]
    pub fn result(&self) -> Option<&Value> {
        let symbol = self.returns.as_deref()?;
        if self.state != FlowState::Success {
            return None;
        }
        Some(self.symbols.get(symbol).unwrap_or(&Value::Null))
    }

    /// What a conductor records on the job of this run when it consumes it: the flow, its
    /// final state, its failures (as text), and, if it has one, its [result](Outcome::result)
    /// (under `result`, which [`JobHandle`](crate::JobHandle) reads).
    #[must_use]
    pub fn job_outcome(&self) -> Value {
        let failures: Vec<String> = self.failures.iter().map(ToString::to_string).collect();
        let mut outcome = serde_json::json!({
            "flow": self.flow,
            "state": self.state,
            "failures": failures,
        });
        if let (Some(result), Value::Object(fields)) = (self.result(), &mut outcome) {
            fields.insert("result".into(), result.clone());
        }
        outcome
    }

    /// The value of a symbol provided by an atom that succeeded.
    #[must_use]
    pub fn symbol(&self, name: &str) -> Option<&Value> {
        self.symbols.get(name)
    }

    /// The value of a symbol, as `T`.
    ///
    /// # Errors
    /// If the value does not deserialize as `T`.
    pub fn get<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, serde_json::Error> {
        self.symbols.get(name).map(T::deserialize).transpose()
    }
}

/// Runs flows against a store.
///
/// Cheap to clone; clones share the store and the event channel.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use baton_core::{Atom, Engine, Flow, MemoryStore};
/// use serde_json::json;
///
/// let flow = Flow::linear("hello")
///     .add(Atom::from_fn("greet", |ctx| async move {
///         let who: String = ctx.input("who")?;
///         Ok(json!(format!("hello, {who}")))
///     }).requires(["who"]).provides("greeting"))
///     .compile()?;
/// let engine = Engine::new(MemoryStore::new());
/// let mut inputs = serde_json::Map::new();
/// inputs.insert("who".into(), json!("world"));
/// let outcome = engine.start(&flow, inputs).await?;
/// assert_eq!(outcome.symbol("greeting"), Some(&json!("hello, world")));
/// # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Engine {
    store: Arc<dyn Store>,
    options: Options,
    events: broadcast::Sender<Event>,
    /// The controls of the runs this engine (and its clones) drive now, for [`Engine::cancel`].
    driving: Arc<std::sync::Mutex<std::collections::HashMap<FlowId, Control>>>,
    /// Where every time the engine stores or waits for is read.
    clock: Clock,
    /// What it counts (see [`crate::metrics`]).
    metrics: crate::metrics::EngineMetrics,
}

impl Engine {
    /// An engine over `store` with default options.
    pub fn new(store: impl Store + 'static) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// An engine over a shared store.
    #[must_use]
    pub fn from_arc(store: Arc<dyn Store>) -> Self {
        let (events, _) = broadcast::channel(Events::CAPACITY);
        let metrics = crate::metrics::EngineMetrics::new(store.kind());
        Self {
            metrics,
            store,
            options: Options::default(),
            events,
            driving: Arc::default(),
            clock: Clock::system(),
        }
    }

    /// Replaces the options.
    #[must_use]
    pub fn with_options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Sets how many atoms may run at once (at least 1).
    #[must_use]
    pub fn with_parallelism(mut self, parallelism: usize) -> Self {
        self.options.parallelism = parallelism.max(1);
        self
    }

    /// Reads the time from `clock`: every time the engine stores (a step's time, when a retry
    /// is due, when an attempt runs out of time) and every wait it computes from one (backoff,
    /// time limits, a run's deadline). The default is [`Clock::system`]; [`Clock::tokio`] lets a
    /// test under tokio's paused time skip the waits.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The clock the engine reads.
    #[must_use]
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The options.
    #[must_use]
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Subscribes to the events of every run of this engine (and its clones) from now on.
    #[must_use]
    pub fn subscribe(&self) -> Events {
        Events {
            rx: self.events.subscribe(),
        }
    }

    /// Stores a new run of `flow` with `inputs`, all atoms `PENDING`.
    ///
    /// # Errors
    /// [`Error::MissingInput`] naming the atom and symbol when a required input is neither
    /// provided by an atom nor in `inputs`; store errors.
    ///
    /// # Cancel safety
    /// Not cancel safe: if dropped, the run may or may not have been stored.
    pub async fn create(&self, flow: &CompiledFlow, inputs: Inputs) -> Result<FlowId> {
        self.create_with(flow, inputs, CreateOptions::new()).await
    }

    /// [`Engine::create`] with options.
    ///
    /// # Errors
    /// As [`Engine::create`].
    ///
    /// # Cancel safety
    /// Not cancel safe.
    pub async fn create_with(
        &self,
        flow: &CompiledFlow,
        inputs: Inputs,
        options: CreateOptions,
    ) -> Result<FlowId> {
        Ok(self.create_records(flow, inputs, options).await?.flow.id)
    }

    /// Creates a run of `flow` and runs it at once, without reading back what was just
    /// written (what a conductor does with a new job). The run is stored together with its
    /// first step ([`Store::create_and_commit`]), so the
    /// creation costs no commit of its own; [`store::Error::FlowExists`] means the id was
    /// taken and nothing was written.
    ///
    /// # Errors
    /// As [`Engine::create_with`] and [`Engine::run_with`].
    ///
    /// # Cancel safety
    /// As [`Engine::run`]; dropped before the creation completes, the run may or may not exist.
    pub async fn create_and_run(
        &self,
        flow: &CompiledFlow,
        inputs: Inputs,
        create: CreateOptions,
        run: RunOptions,
    ) -> Result<Outcome> {
        if create.fence != run.fence {
            // The first batch carries the run's fence: the creation, fenced otherwise, is
            // stored on its own first.
            let snapshot = self.create_records(flow, inputs, create).await?;
            let id = snapshot.flow.id;
            let run = run::Run::from_snapshot(self.clone(), flow.clone(), id, snapshot, run)?;
            return drive(run).await;
        }
        let fence = create.fence;
        let snapshot = self.records(flow, inputs, create)?;
        let id = snapshot.flow.id;
        let for_run = crate::model::FlowSnapshot {
            flow: snapshot.flow.without_meta(),
            atoms: snapshot.atoms.clone(),
        };
        let mut run = run::Run::from_snapshot(self.clone(), flow.clone(), id, for_run, run)?;
        run.create_with_first_batch(snapshot, fence);
        drive(run).await
    }

    async fn create_records(
        &self,
        flow: &CompiledFlow,
        inputs: Inputs,
        options: CreateOptions,
    ) -> Result<crate::model::FlowSnapshot> {
        let fence = options.fence;
        let snapshot = self.records(flow, inputs, options)?;
        self.store
            .create_flow(&snapshot.flow, &snapshot.atoms, fence)
            .await?;
        Ok(snapshot)
    }

    /// The records of a new run of `flow`: the flow `PENDING`, every atom `PENDING`.
    fn records(
        &self,
        flow: &CompiledFlow,
        inputs: Inputs,
        options: CreateOptions,
    ) -> Result<crate::model::FlowSnapshot> {
        for (atom, symbol) in flow.required_inputs() {
            if !inputs.contains_key(symbol) {
                return Err(Error::MissingInput {
                    atom: atom.to_owned(),
                    symbol: symbol.to_owned(),
                });
            }
        }
        let now = self.clock.now();
        if let Some(deadline) = options.deadline {
            if deadline.at <= now {
                return Err(Error::DeadlinePassed {
                    deadline: deadline.at,
                    now,
                });
            }
        }
        let mut meta = options.meta;
        if meta.is_null() {
            meta = Value::Object(serde_json::Map::new());
        }
        if let Some(obj) = meta.as_object_mut() {
            // Recorded so tools can draw the run without its definition.
            if let Ok(shape) = serde_json::to_value(flow.shape()) {
                obj.insert(GRAPH_META_KEY.to_owned(), shape);
            }
        }
        let record = FlowRecord {
            id: options.id.unwrap_or_default(),
            name: flow.name().to_owned(),
            state: FlowState::Pending,
            intention: Intention::Execute,
            inputs,
            meta,
            factory: options.factory,
            fingerprint: Some(flow.fingerprint()),
            deadline: options.deadline,
            created_at: now,
            updated_at: now,
        };
        let atoms: Vec<AtomRecord> = flow
            .atoms
            .iter()
            .map(|a| AtomRecord::pending(a.name.clone(), a.kind()))
            .collect();
        Ok(crate::model::FlowSnapshot {
            flow: record,
            atoms,
        })
    }

    /// Creates a run of `flow` and runs it to the end (the run is stored with its first step,
    /// as [`Engine::create_and_run`] does).
    ///
    /// # Errors
    /// As [`Engine::create`] and [`Engine::run`].
    ///
    /// # Cancel safety
    /// Not cancel safe; see [`Engine::run`].
    pub async fn start(&self, flow: &CompiledFlow, inputs: Inputs) -> Result<Outcome> {
        self.create_and_run(flow, inputs, CreateOptions::new(), RunOptions::new())
            .await
    }

    /// Runs (or resumes) the stored run `id` of `flow` until it ends or is suspended.
    ///
    /// A run that already ended returns its outcome without writing anything.
    ///
    /// # Errors
    /// [`Error::FlowMismatch`] if the stored run was not made from `flow`; [`Error::Store`] if
    /// the store refuses a write (a lost claim shows as [`store::Error::Fenced`]) or cannot
    /// read the run ([`store::Error::Corrupt`], or [`store::Error::TooNew`] for a run a newer
    /// version of baton wrote). An unavailable store is retried with backoff, never reported. Task failures are not errors:
    /// they are in the [`Outcome`].
    ///
    /// # Cancel safety
    /// The run is driven in a task of its own on the current tokio runtime. Dropping the
    /// future aborts that task, which stops the run at its next await, like
    /// [`Control::halt`]: what was committed stays, and running the flow again resumes it.
    pub async fn run(&self, flow: &CompiledFlow, id: FlowId) -> Result<Outcome> {
        self.run_with(flow, id, RunOptions::new()).await
    }

    /// Cancels run `flow`, which this engine (or a clone of it) is driving now, as
    /// [`Control::cancel`] does. For a run a conductor drives, anywhere, ask its job board
    /// instead ([`JobBoard::request_cancel`](crate::JobBoard)): the owner honours it.
    ///
    /// # Errors
    /// [`Error::NotRunning`] if this engine is not driving `flow` (it ended, or runs
    /// elsewhere); nothing is changed.
    pub fn cancel(&self, flow: FlowId, how: Cancel) -> Result<()> {
        let driving = self
            .driving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match driving.get(&flow) {
            Some(control) => {
                control.cancel(how);
                Ok(())
            }
            None => Err(Error::NotRunning(flow)),
        }
    }

    /// Notes that this engine drives `flow` with `control` until the returned guard drops.
    pub(crate) fn driving(&self, flow: FlowId, control: &Control) -> Driving {
        self.driving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(flow, control.clone());
        Driving {
            engine: self.driving.clone(),
            flow,
        }
    }

    /// [`Engine::run`] with a fence and a [`Control`].
    ///
    /// # Errors
    /// As [`Engine::run`], and [`Error::Halted`] when halted.
    ///
    /// # Cancel safety
    /// As [`Engine::run`].
    pub async fn run_with(
        &self,
        flow: &CompiledFlow,
        id: FlowId,
        options: RunOptions,
    ) -> Result<Outcome> {
        let run = run::Run::load(self.clone(), flow.clone(), id, options).await?;
        drive(run).await
    }
}

/// While alive, [`Engine::cancel`] reaches a run (see [`Engine::driving`]).
pub(crate) struct Driving {
    engine: Arc<std::sync::Mutex<std::collections::HashMap<FlowId, Control>>>,
    flow: FlowId,
}

impl Drop for Driving {
    fn drop(&mut self) {
        self.engine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.flow);
    }
}

/// Drives a run to its end in a task of its own, aborted if the returned future is dropped.
///
/// The scheduling loop, its commits and the tasks it spawns then share a worker thread of the
/// runtime, instead of handing every step over between the caller's thread (often a
/// `block_on` outside the runtime's workers) and a worker and back, which cost more than a
/// no-op step itself.
async fn drive(run: run::Run) -> Result<Outcome> {
    /// Aborts the run's task when the caller stops waiting for it.
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let id = run.id();
    let handle = tokio::spawn(run.drive().instrument(tracing::Span::current()));
    let _abort = AbortOnDrop(handle.abort_handle());
    match handle.await {
        Ok(outcome) => outcome,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::Stuck {
            flow: id,
            detail: format!("the run's task ended early: {e}"),
        }),
    }
}

/// Builds the outcome of a run from its records.
pub(crate) fn outcome(
    flow: &CompiledFlow,
    id: FlowId,
    state: FlowState,
    atoms: &[AtomRecord],
) -> Outcome {
    // Gathered in lists and sorted into maps at the end (a symbol provided twice keeps the
    // later value, as inserting one by one would): about half the instructions of inserting
    // into the maps one by one, which weighed on big runs.
    let mut results = Vec::new();
    let mut failures = Vec::new();
    let mut symbols = Vec::new();
    for &i in &flow.topo {
        let rec = &atoms[i];
        for attempt in &rec.retry_history {
            failures.extend(attempt.failures.iter().cloned());
        }
        failures.extend(rec.failure.iter().cloned());
        failures.extend(rec.revert_failure.iter().cloned());
        if rec.state == AtomState::Success {
            if let Some(result) = &rec.result {
                results.push((rec.name.clone(), result.clone()));
                for s in flow.atoms[i].provides.names() {
                    if let Some(v) = run::project(&flow.atoms[i].provides, result, s) {
                        symbols.push((s.clone(), v.clone()));
                    }
                }
            }
        }
    }
    let results: BTreeMap<String, Value> = results.into_iter().collect();
    let symbols: BTreeMap<String, Value> = symbols.into_iter().collect();
    Outcome {
        flow: id,
        state,
        results,
        failures,
        job_consumed: false,
        symbols,
        returns: flow.returns.clone(),
    }
}
