//! The job board: where work is posted, and claimed by conductors under a lease.
//!
//! # Claim semantics
//!
//! Every backend keeps these, and the conformance suite checks them:
//!
//! - **Exclusive**: at most one live claim per job. [`JobBoard::claim`] takes the next eligible
//!   job in one atomic step (never read-then-write): an `UNCLAIMED` job, or a `CLAIMED` one
//!   whose lease has expired.
//! - **Ordered**: higher priority first, then posting order.
//! - **Keys**: among the unfinished jobs that share a key, only the earliest posted is
//!   eligible; the others wait their turn. At most one job per key is claimed at any time.
//! - **Fencing**: every claim gives the job a new, larger [`FencingToken`]. Heartbeat, consume
//!   and abandon check it in the same step and answer [`Error::ClaimLost`] once it is stale;
//!   the same token guards every write to the job's flow, and that flow only (see
//!   [`Store`](crate::store::Store)), so an owner that lost its claim can change nothing.
//!   Whatever hands a job back (abandon, an operator's release) or retires it (trash) moves
//!   the token on too, in the same step: the claim is revoked at once, not at the next claim.
//! - **Leases**: a claim lasts until its lease expires unless heartbeats extend it. An expired
//!   lease makes the job claimable again; the old owner's heartbeat keeps working only until
//!   someone else claims it.
//! - **Capabilities**: a claim names what the claimant can run (an [`Offer`]: factories and
//!   their versions) and takes only jobs it can run: a job whose factory it does not offer,
//!   or that is pinned to a version it does not offer, is left for another conductor (and
//!   waits, holding its key, if none can run it). A job posted without a version is pinned by
//!   its first claim to the newest version the claimant offers, and keeps it; a job without a
//!   version that was claimed before (by a release of baton older than versions) is version 1.
//! - **Parking**: a claimed job whose run cannot go on for a reason outside its flow is
//!   parked ([`JobBoard::park`]): it stops, keeps its key, and waits for an operator
//!   ([`JobBoard::requeue`], [`JobBoard::trash`]). Parking moves the fencing token.
//! - **Stalls**: every claim counts one more [`Job::stalled_claims`]; a heartbeat that reports
//!   progress and a hand-back ([`JobBoard::abandon`]) reset it. A conductor parks a job whose
//!   count shows it crashing one conductor after another.
//! - **Cancel requests**: a request to revert or suspend a job's run ([`Cancel`],
//!   [`JobBoard::request_cancel`]) is stored on the job, whatever its state short of ended; the
//!   owner of a claimed job learns of it ([`JobBoard::cancel_requests`], woken by
//!   [`JobBoard::wait_for_cancel`]), and whoever claims the job later honours it. A revert wins
//!   over a suspend. A parked job asked to revert goes back on the board to be reverted.
//! - **Supersede**: a job posted with [`NewJob::supersede`] asks, in the same step, for the
//!   run of every earlier unfinished job of its key to be reverted ([`Job::supersedes`] lists
//!   them), and waits behind them by the key rule: the old runs are rolled back, then the new
//!   one runs, never interleaved.
//! - **Ends**: a job consumed, trashed or parked is at rest ([`JobState::is_at_rest`]); a
//!   caller waiting for that ([`JobBoard::wait_for_end`], which
//!   [`JobHandle`](crate::JobHandle) uses) is told by the board that ended it where the board
//!   can tell (in process, or on PostgreSQL with a `NOTIFY` for jobs marked
//!   [watched](NewJob::watched)), and otherwise finds the end at its next look.
//! - **Deadlines**: a job may carry a deadline ([`NewJob::deadline`], [`Job::deadline`]) for
//!   its run; the board only keeps it (a job past its deadline is still claimed, and its run
//!   then reverts at once).
//!
//! The trait is exempt from semver until 1.0.

mod cancel;
mod memory;
mod wake;

use std::error::Error as StdError;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{ConductorId, Fence, FencingToken, FlowId, JobId};
use crate::state::JobState;

pub use cancel::{check_cancel, Cancel, CancelStep};
pub use memory::MemoryJobBoard;
pub use wake::{EndWatch, Ends, Wake};

/// What can go wrong on a job board.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No job with this id.
    #[error("job {0} not found")]
    JobNotFound(JobId),
    /// The claim this call was made under is no longer the job's current one.
    #[error("claim on job {job} with token {token} is lost")]
    ClaimLost {
        /// The job.
        job: JobId,
        /// The stale token.
        token: FencingToken,
    },
    /// The job is in a state that does not allow the operation.
    #[error("job {job} is {state}: cannot {operation}")]
    InvalidState {
        /// The job.
        job: JobId,
        /// Its state.
        state: JobState,
        /// What was attempted.
        operation: &'static str,
    },
    /// A job was posted with something missing or malformed.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// The job has ended (`COMPLETE` or `TRASHED`): its run can no longer be cancelled.
    #[error("job {job} has ended ({state}): there is no run to cancel")]
    Ended {
        /// The job.
        job: JobId,
        /// Its state.
        state: JobState,
    },
    /// A job was posted with a value larger than the board accepts (see
    /// [`DEFAULT_MAX_VALUE_BYTES`](crate::store::DEFAULT_MAX_VALUE_BYTES)).
    #[error("the job's {what} take {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// `params`.
        what: &'static str,
        /// Its size, in bytes of JSON text.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Stored data could not be read.
    #[error("corrupt job record {job}: {detail}")]
    Corrupt {
        /// The job (if known).
        job: String,
        /// What is wrong.
        detail: String,
    },
    /// A listing was asked for the jobs after a job the board does not hold
    /// ([`JobQuery::after`]): it never existed, or it was purged since the page that named it.
    #[error("cannot list after job {0}: the board holds no such job (purged since?)")]
    UnknownCursor(JobId),
    /// The board cannot be reached right now; retrying later may work.
    #[error("job board unavailable")]
    Unavailable(#[source] Box<dyn StdError + Send + Sync>),
    /// The database that holds the board is damaged, not one job's record: nothing read from
    /// it can be trusted until an operator restores or repairs it (see
    /// [`store::Error::CorruptDatabase`](crate::store::Error::CorruptDatabase)).
    #[error("the database is corrupt")]
    CorruptDatabase(#[source] Box<dyn StdError + Send + Sync>),
    /// Any other backend error.
    #[error("job board error")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
}

impl Error {
    /// Whether the operation may succeed if retried later unchanged.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// The result type of job-board operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A job to post.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct NewJob {
    /// A human-readable name.
    pub name: String,
    /// The name of the flow factory (in the conductors' registry) that builds its flow.
    pub factory: String,
    /// The factory's parameters.
    pub params: Value,
    /// At most one job per key is claimed at a time (e.g. a stack id).
    pub key: Option<String>,
    /// Higher runs first.
    pub priority: i32,
    /// The factory version to run it with; `None` for the newest version offered by the
    /// conductor that first claims it.
    pub version: Option<u32>,
    /// When its run must be done by, as an absolute time (see [`NewJob::deadline`]).
    pub deadline: Option<DateTime<Utc>>,
    /// Whether posting it supersedes the earlier unfinished jobs of its key (see
    /// [`NewJob::supersede`]).
    pub supersede: bool,
    /// Whether someone will wait for its end (see [`NewJob::watched`]).
    pub watched: bool,
}

impl NewJob {
    /// A job named `name` whose flow `factory` builds, with no parameters.
    pub fn new(name: impl Into<String>, factory: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            factory: factory.into(),
            params: Value::Null,
            key: None,
            priority: 0,
            version: None,
            deadline: None,
            supersede: false,
            watched: false,
        }
    }

    /// Sets the factory's parameters.
    pub fn params(mut self, params: Value) -> Self {
        self.params = params;
        self
    }

    /// Sets the factory's parameters from a value of yours, as JSON: what a factory
    /// registered with [`Registry::register_typed`](crate::Registry::register_typed) reads
    /// back as its own type.
    ///
    /// # Errors
    /// [`Error::InvalidJob`] if `params` does not serialize as JSON (a map whose keys are not
    /// strings, say).
    pub fn typed_params<P: Serialize + ?Sized>(mut self, params: &P) -> Result<Self> {
        self.params = serde_json::to_value(params).map_err(|e| {
            Error::InvalidJob(format!("the parameters do not serialize as JSON: {e}"))
        })?;
        Ok(self)
    }

    /// Serialises the job with every other unfinished job of `key`.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the priority (default 0; higher first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Pins the job to version `version` of its factory (see [`Registry`](crate::Registry)).
    pub fn version(mut self, version: u32) -> Self {
        self.version = Some(version);
        self
    }

    /// Gives the job's run a deadline: an absolute time, which must be in the future when the
    /// job is posted (by the posting process's clock). Boards keep it to the millisecond
    /// ([`Job::deadline`]) and do nothing else with it: the conductor that runs the job passes
    /// it to the run, which reverts once it has passed. A job whose deadline passed while it
    /// waited is still claimed, and its run then reverts at once.
    pub fn deadline(mut self, at: DateTime<Utc>) -> Self {
        self.deadline = Some(at);
        self
    }

    /// Makes the job supersede the earlier unfinished jobs of its key (it needs a
    /// [key](NewJob::key)): posting it asks, in the same step, for each of their runs to be
    /// reverted ([`Cancel::Revert`], as [`JobBoard::request_cancel`] does: a parked one goes
    /// back on the board to be reverted), and the new job waits behind them by the key rule.
    /// So the runs in progress are rolled back, then the new one runs, never interleaved
    /// (Heat's "an update replaces the one in progress"). [`Job::supersedes`] lists them.
    pub fn supersede(mut self) -> Self {
        self.supersede = true;
        self
    }

    /// Marks the job as one whose end someone waits for, from another process maybe
    /// ([`JobBoard::wait_for_end`], [`JobHandle`](crate::JobHandle)): a board that tells other
    /// processes of ends (PostgreSQL, with a `NOTIFY`) tells them of this job's, and only of
    /// the ends of such jobs, so that nobody pays for news nobody hears.
    /// [`JobHandle::post`](crate::JobHandle::post) posts its jobs so. A wait marks a job that
    /// was posted without it, which costs the PostgreSQL board a write to the job's row.
    pub fn watched(mut self) -> Self {
        self.watched = true;
        self
    }

    /// Checks the job can be posted on a board whose limit on a JSON value is
    /// `max_value_bytes`: [`NewJob::validate`], and parameters no larger than that.
    ///
    /// # Errors
    /// [`Error::InvalidJob`] naming the empty field, [`Error::TooLarge`] for parameters over
    /// the limit.
    pub fn check(&self, max_value_bytes: usize) -> Result<()> {
        self.validate()?;
        let size = crate::store::json_size(&self.params);
        if size > max_value_bytes {
            return Err(Error::TooLarge {
                what: "params",
                size,
                limit: max_value_bytes,
            });
        }
        Ok(())
    }

    /// Checks the job can be posted.
    ///
    /// # Errors
    /// [`Error::InvalidJob`] naming the empty field, a version 0, a deadline that is not in
    /// the future, or a superseding job without a key.
    pub fn validate(&self) -> Result<()> {
        if self.version == Some(0) {
            return Err(Error::InvalidJob(
                "version 0 is not a version (versions start at 1)".into(),
            ));
        }
        if self.name.trim().is_empty() {
            return Err(Error::InvalidJob("the name is empty".into()));
        }
        if self.factory.trim().is_empty() {
            return Err(Error::InvalidJob("the factory name is empty".into()));
        }
        if self.key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(Error::InvalidJob("the key is empty".into()));
        }
        if self.supersede && self.key.is_none() {
            return Err(Error::InvalidJob(
                "a superseding job needs a key (it supersedes the earlier jobs of its key)".into(),
            ));
        }
        if let Some(deadline) = self.deadline {
            let now = Utc::now();
            if deadline <= now {
                return Err(Error::InvalidJob(format!(
                    "the deadline {} is not in the future (it is {} now)",
                    deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                )));
            }
        }
        Ok(())
    }
}

/// A job, as the board holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// Its name.
    pub name: String,
    /// The flow factory that builds its flow.
    pub factory: String,
    /// The factory's parameters.
    pub params: Value,
    /// Its serialisation key, if any.
    pub key: Option<String>,
    /// Its priority.
    pub priority: i32,
    /// Its state.
    pub state: JobState,
    /// The conductor holding the claim.
    pub owner: Option<ConductorId>,
    /// When the current claim expires unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The current fencing token: moved on by every claim, and by whatever revokes one
    /// (abandon, release, trash); 0 before the first claim.
    pub token: FencingToken,
    /// How many times it was claimed.
    pub attempts: u32,
    /// How it ended, once complete or trashed; why it was parked, once parked.
    pub outcome: Option<Value>,
    /// The factory version its run is pinned to: the one it was posted with, or the newest
    /// offered by the conductor that first claimed it. `None` until then.
    pub version: Option<u32>,
    /// Claims in a row that ended neither with progress reported nor with the job handed
    /// back: a count that grows when the job crashes one conductor after another.
    pub stalled_claims: u32,
    /// A request to cancel the job's run: for its owner, if it is claimed, and for whoever
    /// runs it next (see [`JobBoard::request_cancel`]).
    pub cancel: Option<Cancel>,
    /// When its run must be done by, to the millisecond (see [`NewJob::deadline`]).
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    /// The earlier jobs of its key it superseded when it was posted ([`NewJob::supersede`]):
    /// their runs were asked to revert. Empty for a job that superseded nothing.
    #[serde(default)]
    pub supersedes: Vec<JobId>,
    /// When it was posted.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl Job {
    /// The id of the flow this job drives.
    #[must_use]
    pub fn flow(&self) -> FlowId {
        FlowId::for_job(self.id)
    }

    /// The factory and version this job's run is built with, once its version is pinned.
    #[must_use]
    pub fn factory_ref(&self) -> Option<crate::model::FactoryRef> {
        self.version
            .map(|v| crate::model::FactoryRef::new(self.factory.clone(), v))
    }
}

/// What a conductor can run: factories and their versions. A claim takes only jobs its offer
/// covers (see the [module documentation](self)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
#[must_use]
pub struct Offer {
    factories: std::collections::BTreeMap<String, std::collections::BTreeSet<u32>>,
}

impl Offer {
    /// An offer of nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds version `version` of `factory`.
    pub fn with(mut self, factory: impl Into<String>, version: u32) -> Self {
        self.factories
            .entry(factory.into())
            .or_default()
            .insert(version);
        self
    }

    /// Whether a job of `factory`, pinned to `version` (or not pinned yet), can be run.
    #[must_use]
    pub fn can_run(&self, factory: &str, version: Option<u32>) -> bool {
        self.factories
            .get(factory)
            .is_some_and(|vs| version.is_none_or(|v| vs.contains(&v)))
    }

    /// Whether `job`, as it stands, can be run with this offer (a job claimed before without
    /// a version counts as version 1).
    #[must_use]
    pub fn covers(&self, job: &Job) -> bool {
        self.can_run(&job.factory, Self::effective_version(job))
    }

    /// The version a claim with this offer pins `job` to.
    #[must_use]
    pub fn pin(&self, job: &Job) -> Option<u32> {
        Self::effective_version(job).or_else(|| self.newest(&job.factory))
    }

    fn effective_version(job: &Job) -> Option<u32> {
        match job.version {
            Some(v) => Some(v),
            None if job.attempts > 0 => Some(1),
            None => None,
        }
    }

    /// The newest version of `factory` offered.
    #[must_use]
    pub fn newest(&self, factory: &str) -> Option<u32> {
        self.factories.get(factory)?.last().copied()
    }

    /// Whether nothing is offered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.factories.is_empty()
    }

    /// Every (factory, version) offered, sorted.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, u32)> {
        self.factories
            .iter()
            .flat_map(|(f, vs)| vs.iter().map(move |&v| (f.as_str(), v)))
    }
}

impl std::fmt::Display for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (name, versions) in &self.factories {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            let vs: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
            write!(f, "{name} {}", vs.join("/"))?;
        }
        Ok(())
    }
}

/// Whether [`JobBoard::requeue`] may put back job `id`, in `state`, whose lease is live or not
/// and whose run is unfinished or not (`false` when it ended or does not exist): the rules of
/// `requeue`, for backends to apply in the step that requeues.
///
/// # Errors
/// [`Error::InvalidState`] naming what is refused.
pub fn check_requeue(
    id: JobId,
    state: JobState,
    lease_live: bool,
    run_unfinished: bool,
    how: Requeue,
) -> Result<()> {
    let refuse = |operation| Error::InvalidState {
        job: id,
        state,
        operation,
    };
    match state {
        JobState::Claimed if lease_live => Err(refuse("requeue a job its owner is running")),
        JobState::Complete | JobState::Trashed if !how.reopen_ended => {
            Err(refuse("requeue a job that ended"))
        }
        JobState::Complete | JobState::Trashed if !run_unfinished => {
            Err(refuse("reopen a job whose run has ended or never started"))
        }
        _ => Ok(()),
    }
}

/// How [`JobBoard::requeue`] puts a job back on the board.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
#[must_use]
pub struct Requeue {
    /// Also ask for the job's run to be reverted ([`Cancel::Revert`]).
    pub revert: bool,
    /// Also reopen a job that ended (`COMPLETE` or `TRASHED`): for a run left unfinished by a
    /// job that ended without it (by an operator's trash, or a release of baton older than
    /// parking). The caller checks the run is unfinished.
    pub reopen_ended: bool,
}

impl Requeue {
    /// Put a parked job back as it was: its run goes on in the direction it was heading.
    pub fn retry() -> Self {
        Self::default()
    }

    /// Put the job back with a request to revert its run.
    pub fn revert() -> Self {
        Self {
            revert: true,
            ..Self::default()
        }
    }

    /// Also reopen a job that ended (see [`Requeue::reopen_ended`]).
    pub fn reopening_ended(mut self) -> Self {
        self.reopen_ended = true;
        self
    }
}

/// A successful claim: the job and the fence every write under the claim must carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The job, as claimed.
    pub job: Job,
    /// Job id and the claim's token.
    pub fence: Fence,
    /// When the claim expires unless renewed.
    pub lease_expires_at: DateTime<Utc>,
}

/// A filter for [`JobBoard::list`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct JobQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs with this key.
    pub key: Option<String>,
    /// Only jobs claimed by this conductor.
    pub owner: Option<ConductorId>,
    /// At most this many, oldest first.
    pub limit: Option<usize>,
    /// Only jobs posted after this one: the position a page ends at (see [`JobQuery::after`]).
    pub after: Option<JobId>,
}

impl JobQuery {
    /// Every job, in posting order.
    #[must_use]
    pub fn all() -> Self {
        Self::default()
    }

    /// Only jobs in `state`.
    #[must_use]
    pub fn state(mut self, state: JobState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only jobs with `key`.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Only jobs owned by `owner`.
    #[must_use]
    pub fn owner(mut self, owner: ConductorId) -> Self {
        self.owner = Some(owner);
        self
    }

    /// At most `limit` jobs.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only the jobs that come after `job` in posting order: the next page after a page whose
    /// last row is `job`. Paging this way (keyset pagination, on the board's posting sequence)
    /// reads one index range per page, however deep, and never shows a job twice.
    ///
    /// A board refuses a position it does not hold with [`Error::UnknownCursor`] (the job was
    /// purged since the page that named it, or never existed).
    #[must_use]
    pub fn after(mut self, job: JobId) -> Self {
        self.after = Some(job);
        self
    }

    /// Whether `job` passes the filter (for backends that filter in memory).
    #[must_use]
    pub fn matches(&self, job: &Job) -> bool {
        self.state.is_none_or(|s| job.state == s)
            && self
                .key
                .as_ref()
                .is_none_or(|k| job.key.as_ref() == Some(k))
            && self.owner.is_none_or(|o| job.owner == Some(o))
    }
}

/// How long a conductor may go without reporting in before a board that has no surer sign of
/// its death counts it dead and forgets it ([`JobBoard::conductors`]). Conductors report in
/// every [`heartbeat`](crate::conductor::Options::heartbeat), 2 s by default; a conductor
/// forgotten while alive comes back with its next report.
pub const CONDUCTOR_UNSEEN_LIMIT: Duration = Duration::from_secs(600);

/// The name of this host, as conductors register it by default: `HOSTNAME` if set, else the
/// contents of `/etc/hostname`, else `localhost`.
#[must_use]
pub fn this_host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".into())
}

/// A live conductor, as registered on the board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConductorInfo {
    /// Its id.
    pub id: ConductorId,
    /// Its name (given by the operator).
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it last reported in.
    pub last_seen: DateTime<Utc>,
    /// What it runs: the factories and versions it claims jobs of.
    #[serde(default)]
    pub offer: Offer,
}

/// Where jobs are posted and claimed. See the [module documentation](self) for the semantics
/// every backend keeps.
#[async_trait]
pub trait JobBoard: Send + Sync + std::fmt::Debug {
    /// Posts a job, `UNCLAIMED`, and wakes idle conductors. A superseding job
    /// ([`NewJob::supersede`]) asks, in the same step, for the runs of the earlier unfinished
    /// jobs of its key to be reverted, as [`JobBoard::request_cancel`] with [`Cancel::Revert`]
    /// does, and lists them in [`Job::supersedes`].
    ///
    /// # Errors
    /// [`Error::InvalidJob`] for a malformed job (see [`NewJob::validate`]); backend errors.
    /// Nothing is changed then.
    async fn post(&self, job: NewJob) -> Result<Job>;

    /// Claims the next eligible job that `offer` covers for `owner`, for `lease`, pinning its
    /// version (see the [module documentation](self)). `None` when nothing is eligible.
    ///
    /// # Errors
    /// Backend errors.
    async fn claim(
        &self,
        owner: ConductorId,
        lease: Duration,
        offer: &Offer,
    ) -> Result<Option<Claim>>;

    /// Claims up to `max` eligible jobs for `owner` at once, in the order one claim at a time
    /// would take them (so never two of one key). Fewer, or none, when fewer are eligible:
    /// a caller that gets fewer than it asked for knows the board had no more for it, without
    /// asking again. The SQL boards do it in one statement; the default claims one at a time.
    ///
    /// # Errors
    /// Backend errors. Jobs claimed before an error stay claimed (a lease frees them).
    async fn claim_up_to(
        &self,
        owner: ConductorId,
        lease: Duration,
        max: usize,
        offer: &Offer,
    ) -> Result<Vec<Claim>> {
        let mut claims = Vec::new();
        while claims.len() < max {
            match self.claim(owner, lease, offer).await? {
                Some(claim) => claims.push(claim),
                None => break,
            }
        }
        Ok(claims)
    }

    /// Extends the claim's lease to `lease` from now, if the claim is still current. With
    /// `progressed`, the owner reports that the job's run moved on since its claim (an atom
    /// came to rest), which resets [`Job::stalled_claims`].
    ///
    /// # Errors
    /// [`Error::ClaimLost`] once the token is stale or the job is no longer claimed.
    async fn heartbeat(
        &self,
        fence: Fence,
        lease: Duration,
        progressed: bool,
    ) -> Result<DateTime<Utc>>;

    /// Completes the job with `outcome`, if the claim is still current.
    ///
    /// # Errors
    /// [`Error::ClaimLost`].
    async fn consume(&self, fence: Fence, outcome: Value) -> Result<()>;

    /// Hands the job back at once (`UNCLAIMED`), if the claim is still current, and wakes idle
    /// conductors. The claim is revoked (its token moves on): its owner can write nothing
    /// more to the job's flow. A hand-back is no stall: it resets
    /// [`Job::stalled_claims`].
    ///
    /// # Errors
    /// [`Error::ClaimLost`].
    async fn abandon(&self, fence: Fence) -> Result<()>;

    /// Parks the job (`PARKED`), if the claim is still current, with `reason` as its outcome:
    /// its run cannot go on for a reason outside the flow, and waits for an operator. The
    /// token moves on, so the claim can write nothing more; the job keeps its key. A request
    /// to suspend the run ([`Cancel::Suspend`]) is answered by parking, and cleared; a request
    /// to revert stays.
    ///
    /// # Errors
    /// [`Error::ClaimLost`].
    async fn park(&self, fence: Fence, reason: Value) -> Result<()>;

    /// (Operators) puts a job back on the board, `UNCLAIMED`, with its stall count reset and
    /// its outcome cleared, as `how` says, and wakes idle conductors:
    ///
    /// - a `PARKED` job goes back; with [`Requeue::revert`], its run is to be reverted;
    /// - an `UNCLAIMED` job, or a `CLAIMED` one whose lease has run out, stays as it is, with
    ///   the request to revert added if asked;
    /// - a `COMPLETE` or `TRASHED` job goes back only with [`Requeue::reopen_ended`].
    ///
    /// Returns the job as it now is.
    ///
    /// # Errors
    /// [`Error::JobNotFound`]; [`Error::InvalidState`] for a job claimed under a live lease
    /// (its owner is running it), or one that ended when `how` does not reopen ended jobs.
    async fn requeue(&self, job: JobId, how: Requeue) -> Result<Job>;

    /// (Operators, and superseding posts) asks for job `job`'s run to be cancelled as `how`
    /// says, and returns the job as it now is:
    ///
    /// - an `UNCLAIMED` job carries the request, and whoever claims it honours it;
    /// - a `CLAIMED` job carries it, and its owner is told: it learns of the request through
    ///   [`JobBoard::cancel_requests`] (woken by [`JobBoard::wait_for_cancel`]) and stops at a
    ///   step boundary; if the owner is dead, whoever claims the job next honours it;
    /// - a `PARKED` job asked to revert goes back on the board with the request, as
    ///   [`JobBoard::requeue`] with [`Requeue::revert`] puts it, and wakes idle conductors; one
    ///   asked to suspend is left as it is (it is at rest already).
    ///
    /// A revert wins over a suspend: a suspend asked of a job that carries a revert changes
    /// nothing, and a revert replaces a suspend. Asking again what a job carries changes
    /// nothing. [`check_cancel`] holds these rules.
    ///
    /// # Errors
    /// [`Error::JobNotFound`]; [`Error::Ended`] for a job that is `COMPLETE` or `TRASHED`
    /// (a run left unfinished by a trashed job is reverted with
    /// [`recovery::revert`](crate::recovery::revert) instead). Nothing is changed then.
    async fn request_cancel(&self, job: JobId, how: Cancel) -> Result<Job>;

    /// The cancel requests on the jobs `owner` holds (`CLAIMED` by it and carrying a request),
    /// in posting order: what a conductor polls to learn that a run it drives is to stop.
    /// Cheap: the SQL boards read it from an index of claimed jobs that carry a request.
    ///
    /// # Errors
    /// Backend errors.
    async fn cancel_requests(&self, owner: ConductorId) -> Result<Vec<(JobId, Cancel)>>;

    /// Returns when a cancel request may have been made on a job `owner` holds, or after
    /// `timeout`, whichever comes first; callers then ask [`JobBoard::cancel_requests`]. It
    /// may return early for a request on another conductor's job, and a request may reach it
    /// only at the timeout, so callers loop with a timeout of about a second.
    ///
    /// How soon a request is noticed, board by board:
    /// [`MemoryJobBoard`] at once; the SQLite board at once for a request made by a board of
    /// the same store in this process, otherwise at the timeout; the PostgreSQL board at once
    /// (a `NOTIFY` sent with the request, heard on the connection the board listens for work
    /// on), with the timeout as a fallback. A request made while nobody waits is not lost on
    /// these boards: the next wait returns at once. The default waits out `timeout`.
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn wait_for_cancel(&self, owner: ConductorId, timeout: Duration) {
        let _ = owner;
        tokio::time::sleep(timeout).await;
    }

    /// Returns job `job` as soon as it is at rest ([`JobState::is_at_rest`]: consumed, trashed
    /// or parked), at once if it is, or as it is after `timeout`. Callers loop with a timeout
    /// of about a second, as for [`JobBoard::wait_for_cancel`]: an end may reach a wait only
    /// at its timeout. [`JobHandle`](crate::JobHandle) does that, and reads the job's outcome.
    ///
    /// How soon an end is noticed, board by board: [`MemoryJobBoard`] at once; the SQLite
    /// board at once for an end made in this process (by a board or store of the same
    /// database), otherwise at the timeout; the PostgreSQL board at once (a `NOTIFY` sent by
    /// the statement that ends the job, for jobs someone waits for, heard on the connection
    /// the board listens for work on), with the timeout as a fallback. A wait marks the job as
    /// watched ([`NewJob::watched`]) before it first looks at it, so an end between that look
    /// and the wait is not missed. The default looks, sleeps out `timeout`, and looks again.
    ///
    /// # Errors
    /// [`Error::JobNotFound`] (also for a job purged while waited for); backend errors.
    ///
    /// # Cancel safety
    /// Cancel safe: a wait given up on changes nothing but, on PostgreSQL, the job's mark.
    async fn wait_for_end(&self, job: JobId, timeout: Duration) -> Result<Job> {
        let now = self.get(job).await?;
        if now.state.is_at_rest() {
            return Ok(now);
        }
        tokio::time::sleep(timeout).await;
        self.get(job).await
    }

    /// (Operators) takes a claimed job back from its owner and makes it `UNCLAIMED` at once:
    /// the claim is revoked (its token moves on), so the old owner can write nothing more.
    /// A job that is not claimed is left as it is.
    ///
    /// # Errors
    /// [`Error::JobNotFound`], or [`Error::InvalidState`] for a finished job.
    async fn release(&self, job: JobId) -> Result<()>;

    /// Retires a job for good, with a reason. Under a claim, pass its fence (checked); an
    /// operator passes `None`, which also revokes any current claim.
    ///
    /// # Errors
    /// [`Error::JobNotFound`], [`Error::ClaimLost`], or [`Error::InvalidState`] for a job
    /// already complete.
    async fn trash(&self, job: JobId, fence: Option<Fence>, reason: Value) -> Result<()>;

    /// One job.
    ///
    /// # Errors
    /// [`Error::JobNotFound`].
    async fn get(&self, job: JobId) -> Result<Job>;

    /// Jobs matching `query`, in posting order.
    ///
    /// # Errors
    /// Backend errors.
    async fn list(&self, query: &JobQuery) -> Result<Vec<Job>>;

    /// Deletes up to `limit` jobs that ended (`COMPLETE` or `TRASHED`, states a job never
    /// leaves) before `ended_before` (their `updated_at`), oldest first, with their fences.
    /// Returns how many were deleted; call again while it returns `limit` to delete more.
    /// Open jobs (`UNCLAIMED`, `CLAIMED`) are never touched. A deleted job is gone
    /// ([`Error::JobNotFound`]); a write still fenced by one of its claims is refused as
    /// before. The flows the jobs drove are not deleted: see
    /// [`Store::purge_flows`](crate::store::Store::purge_flows).
    ///
    /// # Errors
    /// Backend errors; a call's deletions are one transaction.
    async fn purge_jobs(&self, ended_before: DateTime<Utc>, limit: u32) -> Result<u64>;

    /// Returns when new work may be available (a job posted or abandoned) or after `timeout`,
    /// whichever comes first. A wake-up that came since the last wait is not lost on the
    /// boards baton ships (the next wait returns at once), but a wake-up from another process
    /// may never come (SQLite): callers poll with the timeout as a fallback.
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn wait_for_work(&self, timeout: Duration);

    /// Sends the wake-ups this board still owes for jobs it posted. A board may hold a post's
    /// wake-up back for a moment, to share one with the posts that follow
    /// ([`PostgresJobBoard`](https://docs.rs/baton-sql) does, for a few milliseconds); a
    /// process that posts jobs and exits at once calls this first, or idle conductors find
    /// those jobs only when they next poll. The default does nothing.
    async fn flush_wake_ups(&self) {}

    /// Registers (or refreshes) a live conductor.
    ///
    /// # Errors
    /// Backend errors.
    async fn register(&self, info: &ConductorInfo) -> Result<()>;

    /// Removes a conductor from the live fleet.
    ///
    /// # Errors
    /// Backend errors.
    async fn deregister(&self, id: ConductorId) -> Result<()>;

    /// The registered conductors that are alive as far as the board can tell, oldest first.
    /// The board forgets (deletes) the ones it finds dead: on PostgreSQL, those whose liveness
    /// lock is gone (once the server has been up for longer than the board's restart grace);
    /// on SQLite, those whose lock file is free, and, of those without one, those quiet for
    /// 30 s whose process is gone from this host's process table, or that have not reported in
    /// for [`CONDUCTOR_UNSEEN_LIMIT`]; on
    /// [`MemoryJobBoard`], those unseen for that long. A conductor that deregisters is gone at
    /// once.
    ///
    /// # Errors
    /// Backend errors.
    async fn conductors(&self) -> Result<Vec<ConductorInfo>>;

    /// The jobs waiting to be claimed (`UNCLAIMED`), counted by factory, for monitoring (the
    /// console's `baton_backlog_jobs`). Its cost must follow the number of such jobs, never
    /// the number of ended ones. The default pages through [`JobBoard::list`]; the SQL boards
    /// count with one statement over their index of jobs by state.
    ///
    /// # Errors
    /// Backend errors.
    async fn backlog(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        const PAGE: usize = 1000;
        let mut counts = std::collections::BTreeMap::new();
        let mut after = None;
        loop {
            let mut query = JobQuery::all().state(JobState::Unclaimed).limit(PAGE);
            query.after = after;
            let page = self.list(&query).await?;
            for job in &page {
                *counts.entry(job.factory.clone()).or_insert(0) += 1;
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = Some(last.id),
                _ => return Ok(counts),
            }
        }
    }
}
