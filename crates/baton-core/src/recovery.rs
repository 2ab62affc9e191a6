//! Operator recovery: finding runs nobody will finish, and putting them right.
//!
//! A conductor consumes a job only when its run is at rest (`SUCCESS`, `REVERTED`, or
//! `FAILURE` after a revert failed); a run that cannot go on for a reason outside its flow is
//! parked with its job (see [`conductor`](crate::conductor)). What is left for an operator:
//!
//! - [`stranded`]: runs that have not ended and that no conductor will take up by itself: their
//!   job is parked, ended (trashed by an operator, or consumed by a release of baton older than
//!   parking) or gone.
//! - [`retry`]: put a parked job back on the board, say once a conductor with the definition
//!   it needs is deployed. Its run goes on in the direction it was heading.
//! - [`revert`]: have a stranded or parked run rolled back, by a conductor that has its
//!   definition, under a fresh claim: the job goes back on the board with a request to revert
//!   ([`Cancel::Revert`]), and completes when the run is
//!   `REVERTED`.
//! - [`resume`]: the same, going on in the direction the run was heading.
//!
//! None of these runs a flow here: the process calling them (the `baton` command line, say)
//! need not have the service's flow definitions. Conductors do the work; the job's state
//! shows when it is done. A run whose job is owned by a live conductor is refused
//! ([`Error::Owned`]): that conductor is running it.

use chrono::{DateTime, Utc};

use crate::board::Cancel;
use crate::board::{self, Job, JobBoard, Requeue};
use crate::ids::{ConductorId, FlowId, JobId};
use crate::model::FlowRecord;
use crate::state::{FlowState, JobState};
use crate::store::{self, FlowQuery, Store};

/// Why a recovery could not be done. Nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The run has ended: there is nothing to recover.
    #[error("flow {flow} has ended ({state}): there is nothing to recover")]
    Ended {
        /// The run.
        flow: FlowId,
        /// Its state.
        state: FlowState,
    },
    /// The run was not made from a job, or its job is gone: no conductor can be given it.
    #[error("flow {flow} has no job on the board (it was not run by a conductor, or its job was purged): run it again with the program that defines it")]
    NoJob {
        /// The run.
        flow: FlowId,
    },
    /// The job is claimed under a live lease: its owner is running it.
    #[error("job {job} is owned by conductor {} until {until}: it is running, not stranded", owner.map_or_else(|| "(unknown)".to_owned(), |o| o.to_string()))]
    Owned {
        /// The job.
        job: JobId,
        /// Its owner.
        owner: Option<ConductorId>,
        /// When the owner's lease runs out unless renewed.
        until: DateTime<Utc>,
    },
    /// `resume` of a run whose job already asks for it to be reverted: a revert is not taken
    /// back.
    #[error("job {job} already asks for its run to be reverted: it cannot be resumed")]
    RevertRequested {
        /// The job.
        job: JobId,
    },
    /// `retry` of a job that is not parked.
    #[error("job {job} is {state}: only a parked job can be retried")]
    NotParked {
        /// The job.
        job: JobId,
        /// Its state.
        state: JobState,
    },
    /// `trash` of a job whose run has not ended, without forcing it: the trashed job would
    /// free its key, and the next job of the key would start on top of a half-done run.
    #[error("job {job}'s run is unfinished ({state}): trashing the job would leave it half done and free its key; revert the run instead, or force the trash")]
    Unfinished {
        /// The job.
        job: JobId,
        /// Its run's state.
        state: FlowState,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The board failed.
    #[error(transparent)]
    Board(board::Error),
}

impl From<board::Error> for Error {
    fn from(e: board::Error) -> Self {
        Error::Board(e)
    }
}

/// The result type of recovery operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a run is stranded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Because {
    /// Its job is parked: the job's outcome says why.
    Parked,
    /// Its job ended (`COMPLETE` or `TRASHED`) without it.
    JobEnded(JobState),
    /// Its job is gone from the board.
    JobMissing,
}

impl std::fmt::Display for Because {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Because::Parked => f.write_str("job parked"),
            Because::JobEnded(state) => write!(f, "job {state}"),
            Because::JobMissing => f.write_str("job missing"),
        }
    }
}

/// A run that has not ended and that no conductor will take up by itself.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stranded {
    /// The run.
    pub flow: FlowRecord,
    /// Its job, unless it is gone.
    pub job: Option<Job>,
    /// Why no conductor will take it up.
    pub because: Because,
}

/// As JSON: `{"flow": .., "job": .. or null, "because": "job parked"}` (`baton flows list
/// --stranded --json`, and the console's `/api/flows?stranded=true`).
impl serde::Serialize for Stranded {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut row = serializer.serialize_struct("Stranded", 3)?;
        row.serialize_field("flow", &self.flow)?;
        row.serialize_field("job", &self.job)?;
        row.serialize_field("because", &self.because.to_string())?;
        row.end()
    }
}

/// The job a run was made from: the same id.
fn job_of(flow: FlowId) -> JobId {
    JobId::from_uuid(flow.as_uuid())
}

/// Whether a run was made by a conductor from a job (which records itself in the run).
fn made_from_job(flow: &FlowRecord) -> bool {
    flow.factory.is_some() || flow.meta.get("job").is_some()
}

/// How many unfinished runs [`stranded`] reads at a time, at most.
const STRANDED_CHUNK: usize = 500;

/// The stranded runs among those `query` selects (it is narrowed to unfinished runs made from
/// jobs; its limit counts stranded runs), newest first. It looks up the job of every unfinished
/// run it reads, so it costs a board read per unfinished run up to the page's last. With
/// [`FlowQuery::after`], it starts after that run: the next page after a page whose last row
/// was that run.
///
/// # Errors
/// Store or board errors.
pub async fn stranded(
    store: &dyn Store,
    board: &dyn JobBoard,
    query: &FlowQuery,
) -> Result<Vec<Stranded>> {
    let limit = query.limit.unwrap_or(usize::MAX);
    // Unfinished runs, read a chunk at a time (most of them have a live job and are not
    // stranded): memory stays bounded however many there are.
    let chunk = limit.clamp(1, STRANDED_CHUNK);
    let mut query = query.clone().unfinished().limit(chunk);
    let mut out = Vec::new();
    'pages: loop {
        let flows = store.list_flows(&query).await?;
        let Some(last) = flows.last().map(|f| f.id) else {
            break;
        };
        let full = flows.len() >= chunk;
        for flow in flows {
            if out.len() >= limit {
                break 'pages;
            }
            if !made_from_job(&flow) {
                continue;
            }
            let (job, because) = match board.get(job_of(flow.id)).await {
                Ok(job) if job.state == JobState::Parked => (Some(job), Because::Parked),
                Ok(job) if job.state.is_terminal() => {
                    let state = job.state;
                    (Some(job), Because::JobEnded(state))
                }
                Ok(_) => continue,
                Err(board::Error::JobNotFound(_)) => (None, Because::JobMissing),
                Err(e) => return Err(e.into()),
            };
            out.push(Stranded { flow, job, because });
        }
        if !full {
            break;
        }
        query = query.after(last);
    }
    Ok(out)
}

/// Puts the parked job `job` back on the board; its run goes on in the direction it was
/// heading, with whichever conductor can run it. Returns the job as it now is.
///
/// # Errors
/// [`Error::NotParked`] for a job that is not parked (nothing changed); board errors.
pub async fn retry(board: &dyn JobBoard, job: JobId) -> Result<Job> {
    let current = board.get(job).await?;
    if current.state != JobState::Parked {
        return Err(Error::NotParked {
            job,
            state: current.state,
        });
    }
    requeue(board, job, Requeue::retry()).await
}

/// Has the unfinished run `flow` reverted by a conductor that has its definition: its job
/// goes (back) on the board with a request to revert, and completes when the run is
/// `REVERTED`. Returns the job as it now is.
///
/// # Errors
/// [`Error::Ended`], [`Error::NoJob`], [`Error::Owned`] (nothing changed); store and board
/// errors.
pub async fn revert(store: &dyn Store, board: &dyn JobBoard, flow: FlowId) -> Result<Job> {
    recover(store, board, flow, Requeue::revert()).await
}

/// Has the unfinished run `flow` taken up again by a conductor that has its definition, going
/// on in the direction it was heading. Returns the job as it now is.
///
/// # Errors
/// As [`revert`].
pub async fn resume(store: &dyn Store, board: &dyn JobBoard, flow: FlowId) -> Result<Job> {
    recover(store, board, flow, Requeue::retry()).await
}

async fn recover(
    store: &dyn Store,
    board: &dyn JobBoard,
    flow: FlowId,
    how: Requeue,
) -> Result<Job> {
    let run = store.load_run(flow).await?.flow;
    if run.state.is_terminal() {
        return Err(Error::Ended {
            flow,
            state: run.state,
        });
    }
    let job = match board.get(job_of(flow)).await {
        Ok(job) => job,
        Err(board::Error::JobNotFound(_)) => return Err(Error::NoJob { flow }),
        Err(e) => return Err(e.into()),
    };
    if !how.revert && job.cancel == Some(Cancel::Revert) {
        return Err(Error::RevertRequested { job: job.id });
    }
    // The run has not ended, so a job that did was ended without it: reopen it (the board
    // checks again that the run has not ended, in the same step as the reopening).
    requeue(board, job.id, how.reopening_ended()).await
}

async fn requeue(board: &dyn JobBoard, job: JobId, how: Requeue) -> Result<Job> {
    match board.requeue(job, how).await {
        Ok(job) => Ok(job),
        Err(board::Error::InvalidState {
            state: JobState::Claimed,
            ..
        }) => {
            let current = board.get(job).await?;
            Err(Error::Owned {
                job,
                owner: current.owner,
                until: current.lease_expires_at.unwrap_or_else(Utc::now),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Retires job `job` for good with `reason` (its outcome becomes `{"trashed": reason}`),
/// revoking any claim on it, and returns it as it now is. Unless `force`, a job whose run has
/// started and not ended is refused: trashing it frees its key, and the next job of the key
/// would start on top of a half-done run (revert the run instead).
///
/// # Errors
/// [`Error::Unfinished`] (nothing changed); board errors ([`board::Error::InvalidState`] for a
/// job that is complete); store errors.
pub async fn trash(
    store: &dyn Store,
    board: &dyn JobBoard,
    job: JobId,
    reason: &str,
    force: bool,
) -> Result<Job> {
    if !force {
        match store.load_run(FlowId::for_job(job)).await {
            Ok(run) if !run.flow.state.is_terminal() => {
                return Err(Error::Unfinished {
                    job,
                    state: run.flow.state,
                });
            }
            Ok(_) | Err(store::Error::FlowNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    board
        .trash(job, None, serde_json::json!({ "trashed": reason }))
        .await?;
    Ok(board.get(job).await?)
}

/// What an operator should know about `job` beyond its state, given the live `fleet`
/// ([`JobBoard::conductors`]): why a waiting job waits when no live conductor can run it, why a
/// parked job is parked, a pending request to revert or suspend its run, its deadline, and the
/// earlier jobs of its key it superseded. `None` when there is nothing to say.
#[must_use]
pub fn note(job: &Job, fleet: &[board::ConductorInfo]) -> Option<String> {
    let mut notes = Vec::new();
    match job.state {
        JobState::Unclaimed if !fleet.iter().any(|c| c.offer.covers(job)) => {
            let wanted = match job.version {
                Some(v) => format!("{} v{v}", job.factory),
                None => job.factory.clone(),
            };
            notes.push(format!("waits: no live conductor offers {wanted}"));
        }
        JobState::Parked => {
            let outcome = job.outcome.as_ref();
            let kind = outcome
                .and_then(|o| o.get("parked"))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown");
            let error = outcome
                .and_then(|o| o.get("error"))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            notes.push(format!("parked ({kind}): {error}"));
        }
        _ => {}
    }
    match job.cancel {
        _ if job.state.is_terminal() => {}
        Some(Cancel::Revert) => notes.push("revert requested".into()),
        Some(Cancel::Suspend) => notes.push("suspend requested".into()),
        None => {}
    }
    if let Some(at) = job.deadline.filter(|_| !job.state.is_terminal()) {
        notes.push(format!(
            "deadline {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    if !job.supersedes.is_empty() && !job.state.is_terminal() {
        notes.push(format!(
            "supersedes {} earlier job(s) of its key",
            job.supersedes.len()
        ));
    }
    (!notes.is_empty()).then(|| notes.join("; "))
}
