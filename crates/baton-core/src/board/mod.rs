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
//!
//! The trait is exempt from semver until 1.0.

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

pub use memory::MemoryJobBoard;
pub use wake::Wake;

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
        }
    }

    /// Sets the factory's parameters.
    pub fn params(mut self, params: Value) -> Self {
        self.params = params;
        self
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
    /// [`Error::InvalidJob`] naming the empty field.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(Error::InvalidJob("the name is empty".into()));
        }
        if self.factory.trim().is_empty() {
            return Err(Error::InvalidJob("the factory name is empty".into()));
        }
        if self.key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(Error::InvalidJob("the key is empty".into()));
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
    /// How it ended, once complete or trashed.
    pub outcome: Option<Value>,
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
}

/// Where jobs are posted and claimed. See the [module documentation](self) for the semantics
/// every backend keeps.
#[async_trait]
pub trait JobBoard: Send + Sync + std::fmt::Debug {
    /// Posts a job, `UNCLAIMED`, and wakes idle conductors.
    ///
    /// # Errors
    /// [`Error::InvalidJob`] for a malformed job; backend errors.
    async fn post(&self, job: NewJob) -> Result<Job>;

    /// Claims the next eligible job for `owner`, for `lease`. `None` when nothing is eligible.
    ///
    /// # Errors
    /// Backend errors.
    async fn claim(&self, owner: ConductorId, lease: Duration) -> Result<Option<Claim>>;

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
    ) -> Result<Vec<Claim>> {
        let mut claims = Vec::new();
        while claims.len() < max {
            match self.claim(owner, lease).await? {
                Some(claim) => claims.push(claim),
                None => break,
            }
        }
        Ok(claims)
    }

    /// Extends the claim's lease to `lease` from now, if the claim is still current.
    ///
    /// # Errors
    /// [`Error::ClaimLost`] once the token is stale or the job is no longer claimed.
    async fn heartbeat(&self, fence: Fence, lease: Duration) -> Result<DateTime<Utc>>;

    /// Completes the job with `outcome`, if the claim is still current.
    ///
    /// # Errors
    /// [`Error::ClaimLost`].
    async fn consume(&self, fence: Fence, outcome: Value) -> Result<()>;

    /// Hands the job back at once (`UNCLAIMED`), if the claim is still current, and wakes idle
    /// conductors. The claim is revoked (its token moves on): its owner can write nothing
    /// more to the job's flow.
    ///
    /// # Errors
    /// [`Error::ClaimLost`].
    async fn abandon(&self, fence: Fence) -> Result<()>;

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
    /// lock is gone; on SQLite, those quiet for 30 s whose process is gone from this host's
    /// process table, or that have not reported in for [`CONDUCTOR_UNSEEN_LIMIT`]; on
    /// [`MemoryJobBoard`], those unseen for that long. A conductor that deregisters is gone at
    /// once.
    ///
    /// # Errors
    /// Backend errors.
    async fn conductors(&self) -> Result<Vec<ConductorInfo>>;
}
