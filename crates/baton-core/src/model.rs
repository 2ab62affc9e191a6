//! The persisted model: what a [`Store`](crate::store::Store) keeps about a flow run.
//!
//! These types are a compatibility boundary. Stores write them (as rows and JSON) and must read
//! them back unchanged; adding a field means a migration in every SQL backend.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::failure::Failure;
use crate::fingerprint::Fingerprint;
use crate::ids::{FlowId, JobId};
use crate::state::{AtomState, FlowState, Intention};

/// The newest version of this model that this build reads. Stores stamp each row with the
/// oldest version that reads it, and refuse rows stamped with a version newer than this one
/// (as [`store::Error::TooNew`](crate::store::Error::TooNew)) instead of misreading them.
///
/// - 1: the first.
/// - 2 (baton 0.2.0): the SQL stores' steps may be written short
///   (`baton_sql::StepFormat::Short`: short keys, times as integer nanoseconds). Only such
///   steps are stamped 2. Long steps, stamped 1, leave fields at their defaults out, which
///   version-1 readers accept from baton 0.1.0's commit `74e6cff` on.
pub const MODEL_VERSION: u32 = 2;

/// Named values given to a flow when it is created (TaskFlow calls these the "store").
pub type Inputs = serde_json::Map<String, Value>;

/// One flow run, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// The run's id.
    pub id: FlowId,
    /// The flow's name (from its definition).
    pub name: String,
    /// Its state.
    pub state: FlowState,
    /// Which way it is heading: forward (`EXECUTE`) or undoing (`REVERT`). Needed to resume a
    /// flow that was suspended in either direction.
    pub intention: Intention,
    /// The values the flow was started with.
    pub inputs: Inputs,
    /// Free-form data for applications and conductors (e.g. the job that drives the run).
    pub meta: Value,
    /// The factory, and its version, that built the run's flow: set for runs a
    /// [`Conductor`](crate::Conductor) made from a job, which it resumes only with that
    /// version. `None` for runs created by hand, and for runs created before baton 0.4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factory: Option<FactoryRef>,
    /// The [`Fingerprint`] of the definition the run was created with: a run is resumed only
    /// with a definition of the same fingerprint. `None` for runs created before baton 0.4,
    /// which are checked by their atoms' names and kinds only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
    /// The run's deadline, if it has one (Heat's stack timeout): past it, the engine that owns
    /// the run cancels its running tasks and reverts it (or fails it; see [`AtDeadline`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Deadline>,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl FlowRecord {
    /// The shape of the run's flow as the engine recorded it when it created the run (its
    /// metadata's [`GRAPH_META_KEY`](crate::engine::GRAPH_META_KEY)); `None` for a run created
    /// without one, or whose record of it cannot be read.
    #[must_use]
    pub fn shape(&self) -> Option<crate::compile::Shape> {
        serde_json::from_value(self.meta.get(crate::engine::GRAPH_META_KEY)?.clone()).ok()
    }

    /// A copy with `meta` left out (`null`), without copying it: what an engine runs on (see
    /// [`Store::load_run`](crate::store::Store::load_run)).
    pub(crate) fn without_meta(&self) -> Self {
        Self {
            id: self.id,
            name: self.name.clone(),
            state: self.state,
            intention: self.intention,
            inputs: self.inputs.clone(),
            meta: Value::Null,
            factory: self.factory.clone(),
            fingerprint: self.fingerprint,
            deadline: self.deadline,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// A flow factory and one of its versions, as a [`Registry`](crate::Registry) holds them:
/// what a run was built with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FactoryRef {
    /// The factory's name.
    pub name: String,
    /// The version (1 or more).
    pub version: u32,
}

impl FactoryRef {
    /// `name` at `version`.
    pub fn new(name: impl Into<String>, version: u32) -> Self {
        Self {
            name: name.into(),
            version,
        }
    }
}

impl std::fmt::Display for FactoryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} v{}", self.name, self.version)
    }
}

/// The two kinds of atom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AtomKind {
    /// A task: does work and can undo it.
    Task,
    /// A retry controller: decides what happens when its subflow fails.
    Retry,
}

impl AtomKind {
    /// The stable text form used in stores.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            AtomKind::Task => "task",
            AtomKind::Retry => "retry",
        }
    }
}

impl std::str::FromStr for AtomKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "task" => Ok(AtomKind::Task),
            "retry" => Ok(AtomKind::Retry),
            other => Err(format!("unknown atom kind {other:?}")),
        }
    }
}

/// One attempt of a retry controller's subflow: the value the controller produced for it and
/// the failures that ended it. (In the history of a task with a retry policy: one failed
/// call; see [`AtomRecord::retry_history`].)
///
/// The engine keeps a history small enough to store (see
/// [`Options::max_history_bytes`](crate::engine::Options::max_history_bytes)): the first
/// attempt and the latest ones, their failures' texts clipped in the middle if need be. What
/// it leaves out is counted here, so [`History::len`](crate::retry::History::len) still counts
/// every attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryAttempt {
    /// What the controller's `execute` returned for this attempt (`null` if it was too large
    /// to keep in the history).
    pub value: Value,
    /// The failures of the subflow's atoms in this attempt, by atom name.
    pub failures: Vec<Failure>,
    /// How many attempts made just before this one were left out of the history.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_before: u32,
    /// How many failures of this attempt were left out (from the middle of the list).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_failures: u32,
}

impl RetryAttempt {
    /// An attempt with nothing left out.
    #[must_use]
    pub fn new(value: Value, failures: Vec<Failure>) -> Self {
        Self {
            value,
            failures,
            dropped_before: 0,
            dropped_failures: 0,
        }
    }
}

// serde's `skip_serializing_if` hands the field by reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A run's deadline, stored with the run so that whichever engine owns it by then keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline {
    /// When the run's time is up.
    pub at: DateTime<Utc>,
    /// What happens then to a run still heading forward.
    pub then: AtDeadline,
}

impl Deadline {
    /// A deadline at `at` past which the run is reverted.
    #[must_use]
    pub fn revert_at(at: DateTime<Utc>) -> Self {
        Self {
            at,
            then: AtDeadline::Revert,
        }
    }

    /// A deadline at `at` past which the run fails without reverting anything.
    #[must_use]
    pub fn fail_at(at: DateTime<Utc>) -> Self {
        Self {
            at,
            then: AtDeadline::Fail,
        }
    }
}

/// What a run still heading forward does when its [`Deadline`] passes. Either way its running
/// tasks are cancelled and each ends `FAILURE` with a [`Timeout`](crate::FailureKind::Timeout)
/// failure, which no retry controller retries. A run already reverting goes on reverting
/// (each revert is bounded by its atom's own time limit, if it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AtDeadline {
    /// Revert what ran, in reverse order; the run ends `REVERTED` (Heat's rollback).
    Revert,
    /// End the run `FAILURE` and leave what ran in place for an operator to inspect (Heat's
    /// `disable_rollback`).
    Fail,
}

impl AtDeadline {
    /// The stable text form used in stores.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            AtDeadline::Revert => "REVERT",
            AtDeadline::Fail => "FAIL",
        }
    }
}

impl std::str::FromStr for AtDeadline {
    type Err = crate::state::ParseStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "REVERT" => Ok(AtDeadline::Revert),
            "FAIL" => Ok(AtDeadline::Fail),
            other => Err(crate::state::ParseStateError::new("deadline action", other)),
        }
    }
}

/// One atom of a flow run, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AtomRecord {
    /// The atom's name, unique in the flow.
    pub name: String,
    /// Task or retry controller.
    pub kind: AtomKind,
    /// Its state.
    pub state: AtomState,
    /// What the engine means to do with it next.
    pub intention: Intention,
    /// How many times `execute` has been started (1-based once started). Grows on every start,
    /// including re-runs after a crash.
    pub attempt: u32,
    /// How many times a retry controller reset this atom to run it afresh. Part of the
    /// idempotency key: a crash re-run keeps the key, a retry round gets a new one.
    pub round: u32,
    /// The result of the last successful `execute`.
    pub result: Option<Value>,
    /// Why `execute` failed, if it did.
    pub failure: Option<Failure>,
    /// Why `revert` failed, if it did.
    pub revert_failure: Option<Failure>,
    /// (Retry controllers) the attempts of the subflow so far. (Tasks with a retry policy,
    /// [`Atom::retries`](crate::Atom::retries) or
    /// [`Atom::revert_retries`](crate::Atom::revert_retries)) the failed calls the policy
    /// retried in this round, oldest first: each entry's value is
    /// `{"retry": "execute" | "revert", "failed": n}` and its one failure that of the `n`-th
    /// failed call; the failure of the latest call stays in `failure` (or `revert_failure`).
    pub retry_history: Vec<RetryAttempt>,
    /// Persisted backoff. (Retry controllers) not before this time will the subflow run
    /// again. (Tasks with a retry policy) not before this time will a `RETRYING` task's
    /// `execute`, or a `REVERTING` task's `revert` after a failed call, be called again.
    pub retry_at: Option<DateTime<Utc>>,
    /// Progress reported by the task, 0.0 to 1.0.
    pub progress: f64,
    /// When the current attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// (Tasks with a time limit, while `RUNNING` or `REVERTING`) when the current `execute` or
    /// `revert` runs out of time. Kept when a crashed run resumes, so the limit counts from
    /// the attempt's first start rather than from the resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// When the atom last reached a resting state.
    pub finished_at: Option<DateTime<Utc>>,
}

impl AtomRecord {
    /// A fresh, pending atom.
    #[must_use]
    pub fn pending(name: impl Into<String>, kind: AtomKind) -> Self {
        Self {
            name: name.into(),
            kind,
            state: AtomState::Pending,
            intention: Intention::Execute,
            attempt: 0,
            round: 0,
            result: None,
            failure: None,
            revert_failure: None,
            retry_history: Vec::new(),
            retry_at: None,
            progress: 0.0,
            started_at: None,
            deadline: None,
            finished_at: None,
        }
    }
}

/// A flow run with all its atoms: what a store loads to resume a run.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowSnapshot {
    /// The run.
    pub flow: FlowRecord,
    /// Its atoms, in the order they were created.
    pub atoms: Vec<AtomRecord>,
}

/// What changed, in one entry of a flow's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "subject", rename_all = "snake_case")]
pub enum Change {
    /// The flow changed state.
    Flow {
        /// The state before.
        from: FlowState,
        /// The state after.
        to: FlowState,
    },
    /// An atom changed state (or started a new attempt).
    Atom {
        /// The atom's name.
        atom: String,
        /// The state before.
        from: AtomState,
        /// The state after.
        to: AtomState,
        /// The atom's attempt after the change.
        attempt: u32,
    },
}

/// One entry of a flow's append-only history of transitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The flow.
    pub flow: FlowId,
    /// Position in the flow's history, from 1.
    pub seq: u64,
    /// When it was committed.
    pub at: DateTime<Utc>,
    /// What changed.
    pub change: Change,
}

/// One change of a [`Batch`]: a compare-and-set on the flow or one atom.
// Atom writes are the common case; boxing them to shrink the rare flow write would cost an
// allocation per step.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Move the flow from `from` to `to` and record its intention.
    Flow {
        /// The state the flow must be in.
        from: FlowState,
        /// The new state.
        to: FlowState,
        /// The new intention.
        intention: Intention,
    },
    /// Replace an atom's record, if it is still in `expected_state` at `expected_attempt`.
    Atom {
        /// The state the atom must be in.
        expected_state: AtomState,
        /// The attempt the atom must be at.
        expected_attempt: u32,
        /// The new record (its `name` names the atom).
        record: AtomRecord,
    },
}

impl Write {
    /// Whether the write is a legal move of the state machine, taken on its own: the flow's
    /// or the atom's transition is allowed, and an atom's attempt does not go back. Whether
    /// it also expects what the store holds is the compare-and-set's business
    /// ([`check_write`](crate::store::check_write) checks both).
    #[must_use]
    pub fn is_legal(&self) -> bool {
        match self {
            Write::Flow { from, to, .. } => from == to || from.can_transition(*to),
            Write::Atom {
                expected_state,
                expected_attempt,
                record,
            } => expected_state.can_transition(record.state) && record.attempt >= *expected_attempt,
        }
    }
}

/// The unit of durability: writes a store applies all together or not at all.
///
/// The engine gathers into one batch everything one step decides, for example an atom's result
/// and its successors' `RUNNING`, so that a step costs one commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The flow the writes are for.
    pub flow: FlowId,
    /// If set, the store refuses the batch unless this is still the job's current claim.
    pub fence: Option<Fence>,
    /// When the batch was made; becomes the transitions' time.
    pub at: DateTime<Utc>,
    /// The writes, applied in order.
    pub writes: Vec<Write>,
    /// If set, the batch also consumes the job of its [`fence`](Batch::fence), recording
    /// this outcome on it, in the same transaction: the flow's last step and the job's end
    /// are then one commit, and neither happens without the other. Only for stores whose
    /// [`Store::consumes_jobs`](crate::store::Store::consumes_jobs) says so; the engine sets it on a
    /// run's final batch when asked to ([`RunOptions::consume_job`](crate::RunOptions::consume_job)).
    pub consume: Option<serde_json::Value>,
}

pub use crate::ids::Fence;

impl Batch {
    /// An empty batch for `flow`.
    #[must_use]
    pub fn new(flow: FlowId, fence: Option<Fence>) -> Self {
        Self {
            flow,
            fence,
            at: Utc::now(),
            writes: Vec::new(),
            consume: None,
        }
    }

    /// Whether the batch has no writes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The job the batch is fenced by, if any.
    #[must_use]
    pub fn job(&self) -> Option<JobId> {
        self.fence.map(|f| f.job)
    }
}
