//! Handles on posted jobs: wait for a job to end, and read how it ended as a type of yours.
//!
//! A service that posts a job wants its answer: the result of the job's flow, or why there is
//! none. The board already holds it (the conductor that ran the job recorded it as the job's
//! outcome), and the board can say when a job ends ([`JobBoard::wait_for_end`]). A
//! [`JobHandle`] puts the two together: [`JobHandle::wait`] sleeps until the board says the
//! job ended (a `NOTIFY` on PostgreSQL, an in-process wake-up on the other boards), with a
//! look every second or so as a fallback for news that never comes (see
//! [`JobHandle::poll_every`]), and reads the outcome as an [`Ended`] you can match.
//!
//! # Where the result comes from
//!
//! A flow names its result: [`TypedFlow::returns`](crate::typed::TypedFlow::returns) with an
//! atom's output, or [`Flow::returns`](crate::Flow::returns) with a symbol. When a run of the
//! flow succeeds, its conductor records that value in the job's outcome, under `result` (the
//! outcome is JSON, and `result` is a field added beside `flow`, `state` and `failures`; runs
//! and their storage are unchanged). The handle deserializes it as its type `T`:
//!
//! - a value that does not fit `T` is an [`Error::BadResult`] naming where it does not fit (a
//!   path such as `servers[1].ip`);
//! - an outcome with no `result` (a flow that names none, or a job ended by an earlier release
//!   of baton) is read as `null`: `()`, `Option<_>` and [`serde_json::Value`] take that, any
//!   other type is an [`Error::NoResult`]. So `JobHandle<serde_json::Value>` waits for any
//!   job, whatever its flow returns, and `JobHandle<()>` for a job whose result is of no
//!   interest.
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//!
//! use baton_core::handle::Ended;
//! use baton_core::typed::{atom, from_fn, TypedFlow};
//! use baton_core::{Conductor, Engine, JobBoard, JobHandle, MemoryJobBoard, MemoryStore, NewJob, Registry, TaskError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Params { servers: u32 }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Built { names: Vec<String> }
//!
//! let registry = Registry::new().register_typed("servers", 1, |p: Params| {
//!     let mut flow = TypedFlow::linear("servers");
//!     let built = flow.add(
//!         atom("boot", from_fn(move |(): (), _ctx| async move {
//!             Ok::<_, TaskError>(Built { names: (0..p.servers).map(|i| format!("srv-{i}")).collect() })
//!         })),
//!         (),
//!     );
//!     flow.returns(&built);
//!     flow
//! })?;
//! let store = MemoryStore::new();
//! let board: Arc<dyn JobBoard> = Arc::new(MemoryJobBoard::new(&store));
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let conductor = Conductor::new(board.clone(), Engine::new(store), registry);
//! let running = tokio::spawn(conductor.run(shutdown.clone()));
//!
//! let job = NewJob::new("two servers", "servers").typed_params(&Params { servers: 2 })?;
//! let handle: JobHandle<Built> = JobHandle::post(board, job).await?;
//! match handle.wait().await? {
//!     Ended::Succeeded(built) => assert_eq!(built.names, ["srv-0", "srv-1"]),
//!     other => panic!("the job did not succeed: {other:?}"),
//! }
//! shutdown.cancel();
//! running.await??;
//! # Ok::<_, Box<dyn std::error::Error + Send + Sync>>(()) }).unwrap();
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::board::{self, Job, JobBoard, NewJob};
use crate::ids::JobId;
use crate::state::{FlowState, JobState};

/// How often, by default, a [`JobHandle`] looks at its job when no news of its end came
/// ([`JobHandle::poll_every`]).
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// How a job ended, as a [`JobHandle`] reads it from the job's outcome.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Ended<T> {
    /// The job's run succeeded: the flow's result (see the [module documentation](self)).
    Succeeded(T),
    /// The job's run failed and was reverted (`REVERTED`): also a run reverted because it was
    /// cancelled ([`JobBoard::request_cancel`]) or ran past its deadline.
    Reverted {
        /// Every failure recorded in the run, as text, oldest first.
        failures: Vec<String>,
    },
    /// The job's run failed and reverting it failed too (`FAILURE`): what it did may not all
    /// be undone.
    Failed {
        /// Every failure recorded in the run, as text, oldest first.
        failures: Vec<String>,
    },
    /// The job ended without its run having started: it was cancelled before anyone ran it,
    /// or its deadline passed first.
    NotStarted {
        /// Why, as its conductor recorded it.
        reason: String,
    },
    /// The job was parked: its run cannot go on for a reason outside its flow (a definition
    /// it cannot be resumed with, a build that fails, a job that crashes its conductors, a
    /// suspend asked for), and it waits for an operator, who may put it back
    /// ([`JobBoard::requeue`]): wait again then.
    Parked {
        /// What kind of reason (`build`, `definition`, `stalled`, `suspended`, `panic`, ...).
        kind: String,
        /// The reason, as its conductor recorded it.
        reason: String,
        /// The outcome the job was parked with, whole.
        outcome: Value,
    },
    /// The job was trashed (by an operator, say) before it ended.
    Trashed {
        /// The reason it was trashed with.
        reason: Value,
    },
}

impl<T> Ended<T> {
    /// The result, if the job's run succeeded.
    pub fn succeeded(self) -> Option<T> {
        match self {
            Ended::Succeeded(result) => Some(result),
            _ => None,
        }
    }
}

/// What can go wrong waiting for a job, or reading how it ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The board failed (or has no such job: [`board::Error::JobNotFound`], also for a job
    /// purged while waited for).
    #[error(transparent)]
    Board(#[from] board::Error),
    /// The job's run succeeded, but its outcome records no result: its flow returns none, or
    /// the job was ended by a release of baton from before results. (Read with a type that
    /// takes `null`, such as `()` or [`serde_json::Value`], it is no error.)
    #[error("job {job} succeeded, but no result is recorded for it (its flow returns none)")]
    NoResult {
        /// The job.
        job: JobId,
    },
    /// The job's result does not deserialize as the handle's type.
    #[error("the result of job {job} does not fit {ty}, at `{path}`")]
    BadResult {
        /// The job.
        job: JobId,
        /// The handle's type.
        ty: &'static str,
        /// Where in the result: a path such as `servers[1].ip`, or `.` for the result as a
        /// whole.
        path: String,
        /// What is wrong there.
        #[source]
        source: serde_json::Error,
    },
    /// The job ended with an outcome no conductor records (a job consumed by hand, say).
    #[error("job {job} is {state} with an outcome no conductor records: {detail}")]
    BadOutcome {
        /// The job.
        job: JobId,
        /// Its state.
        state: JobState,
        /// What is wrong with its outcome.
        detail: String,
    },
}

/// A handle on a posted job: wait for its end, and read how it ended as an [`Ended<T>`],
/// where `T` is the type of its flow's result (see the [module documentation](self)).
///
/// Made by posting ([`JobHandle::post`]), or for any job by id ([`JobHandle::new`]). Cheap to
/// clone; clones wait independently.
pub struct JobHandle<T> {
    board: Arc<dyn JobBoard>,
    job: JobId,
    poll: Duration,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for JobHandle<T> {
    fn clone(&self) -> Self {
        Self {
            board: Arc::clone(&self.board),
            job: self.job,
            poll: self.poll,
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for JobHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("job", &self.job)
            .field("type", &std::any::type_name::<T>())
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl<T> JobHandle<T> {
    /// A handle on job `job` of `board`, posted by anyone. Its first wait marks the job as
    /// watched ([`NewJob::watched`]), if it was not posted so.
    pub fn new(board: Arc<dyn JobBoard>, job: JobId) -> Self {
        Self {
            board,
            job,
            poll: DEFAULT_POLL,
            _type: PhantomData,
        }
    }

    /// Posts `job` on `board`, marked as watched ([`NewJob::watched`]), and answers a handle
    /// on it.
    ///
    /// # Errors
    /// As [`JobBoard::post`].
    pub async fn post(board: Arc<dyn JobBoard>, job: NewJob) -> Result<Self, Error> {
        let posted = board.post(job.watched()).await?;
        Ok(Self::new(board, posted.id))
    }

    /// How often a wait looks at the job when no news of its end came (default
    /// [`DEFAULT_POLL`], 1 s): the longest a wait can be late on a board that missed the news
    /// (the SQLite board, for a job ended in another process; a PostgreSQL board whose
    /// listening connection was lost). A zero is taken as a millisecond.
    #[must_use]
    pub fn poll_every(mut self, every: Duration) -> Self {
        self.poll = every.max(Duration::from_millis(1));
        self
    }

    /// The job's id.
    #[must_use]
    pub fn id(&self) -> JobId {
        self.job
    }

    /// The job as the board holds it now.
    ///
    /// # Errors
    /// As [`JobBoard::get`].
    pub async fn job(&self) -> Result<Job, Error> {
        Ok(self.board.get(self.job).await?)
    }
}

impl<T: DeserializeOwned> JobHandle<T> {
    /// Waits until the job ends (or is parked) and answers how. A job that ended already
    /// answers at once.
    ///
    /// # Errors
    /// [`Error::Board`] if the board fails (a transient error is not retried here: wait
    /// again); [`Error::NoResult`], [`Error::BadResult`] or [`Error::BadOutcome`] for an
    /// outcome that cannot be read as an [`Ended<T>`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait(&self) -> Result<Ended<T>, Error> {
        loop {
            if let Some(end) = self.wait_once(self.poll).await? {
                return Ok(end);
            }
        }
    }

    /// Waits as [`JobHandle::wait`] does, for at most `limit`: `None` if the job has not
    /// ended by then.
    ///
    /// # Errors
    /// As [`JobHandle::wait`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait_timeout(&self, limit: Duration) -> Result<Option<Ended<T>>, Error> {
        let start = tokio::time::Instant::now();
        loop {
            let left = limit.saturating_sub(start.elapsed());
            if let Some(end) = self.wait_once(left.min(self.poll)).await? {
                return Ok(Some(end));
            }
            if start.elapsed() >= limit {
                return Ok(None);
            }
        }
    }

    /// How the job ended, if it has, without waiting.
    ///
    /// # Errors
    /// As [`JobHandle::wait`].
    pub async fn ended(&self) -> Result<Option<Ended<T>>, Error> {
        ended(&self.board.get(self.job).await?)
    }

    /// One wait on the board, of at most `timeout`.
    async fn wait_once(&self, timeout: Duration) -> Result<Option<Ended<T>>, Error> {
        ended(&self.board.wait_for_end(self.job, timeout).await?)
    }
}

/// How `job` ended, read from its outcome; `None` if it is not at rest.
///
/// # Errors
/// [`Error::NoResult`], [`Error::BadResult`], [`Error::BadOutcome`].
pub fn ended<T: DeserializeOwned>(job: &Job) -> Result<Option<Ended<T>>, Error> {
    let bad = |detail: String| Error::BadOutcome {
        job: job.id,
        state: job.state,
        detail,
    };
    let outcome = job.outcome.clone().unwrap_or(Value::Null);
    match job.state {
        JobState::Unclaimed | JobState::Claimed => Ok(None),
        JobState::Trashed => Ok(Some(Ended::Trashed { reason: outcome })),
        JobState::Parked => {
            let text = |field: &str| outcome.get(field).and_then(Value::as_str);
            Ok(Some(Ended::Parked {
                kind: text("parked").unwrap_or("unknown").to_owned(),
                reason: text("error").map_or_else(|| outcome.to_string(), str::to_owned),
                outcome,
            }))
        }
        JobState::Complete => {
            let Value::Object(mut fields) = outcome else {
                return Err(bad(format!("{outcome} is not an object")));
            };
            let failures = || -> Result<Vec<String>, Error> {
                match fields.get("failures") {
                    None | Some(Value::Null) => Ok(Vec::new()),
                    Some(Value::Array(all)) => all
                        .iter()
                        .map(|f| {
                            f.as_str()
                                .map(str::to_owned)
                                .ok_or_else(|| bad(format!("a failure is not text: {f}")))
                        })
                        .collect(),
                    Some(other) => Err(bad(format!("failures {other} is not a list"))),
                }
            };
            let state = match fields.get("state") {
                Some(Value::Null) | None => {
                    let reason = ["cancelled", "deadline"]
                        .iter()
                        .find_map(|k| fields.get(*k).and_then(Value::as_str))
                        .map_or_else(|| "its run never started".to_owned(), str::to_owned);
                    return Ok(Some(Ended::NotStarted { reason }));
                }
                Some(state) => serde_json::from_value::<FlowState>(state.clone())
                    .map_err(|e| bad(format!("state {state}: {e}")))?,
            };
            match state {
                FlowState::Success => {
                    let result = fields.remove("result");
                    Ok(Some(Ended::Succeeded(read_result(job.id, result)?)))
                }
                FlowState::Reverted => Ok(Some(Ended::Reverted {
                    failures: failures()?,
                })),
                FlowState::Failure => Ok(Some(Ended::Failed {
                    failures: failures()?,
                })),
                other => Err(bad(format!("its run is {other}, which is no end"))),
            }
        }
    }
}

/// The result `result` of job `job` as a `T`: a missing one is read as `null`.
fn read_result<T: DeserializeOwned>(job: JobId, result: Option<Value>) -> Result<T, Error> {
    let Some(result) = result else {
        return serde_json::from_value(Value::Null).map_err(|_| Error::NoResult { job });
    };
    serde_path_to_error::deserialize(result).map_err(|e| Error::BadResult {
        job,
        ty: std::any::type_name::<T>(),
        path: e.path().to_string(),
        source: e.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::FencingToken;
    use chrono::Utc;
    use serde_json::json;

    fn job(state: JobState, outcome: Option<Value>) -> Job {
        Job {
            id: JobId::new(),
            name: "j".into(),
            factory: "f".into(),
            params: Value::Null,
            key: None,
            priority: 0,
            state,
            owner: None,
            lease_expires_at: None,
            token: FencingToken(1),
            attempts: 1,
            outcome,
            version: Some(1),
            stalled_claims: 0,
            cancel: None,
            deadline: None,
            supersedes: Vec::new(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn done(outcome: Value) -> Job {
        job(JobState::Complete, Some(outcome))
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Server {
        name: String,
        ip: String,
    }

    #[test]
    fn jobs_not_at_rest_have_not_ended() {
        for state in [JobState::Unclaimed, JobState::Claimed] {
            assert_eq!(ended::<Value>(&job(state, None)).unwrap(), None);
        }
    }

    #[test]
    fn a_success_gives_the_result_as_the_type() {
        let ok = done(json!({
            "flow": JobId::new(), "state": "SUCCESS", "failures": [],
            "result": [{"name": "web", "ip": "10.0.0.1"}],
        }));
        let read: Ended<Vec<Server>> = ended(&ok).unwrap().unwrap();
        assert_eq!(
            read,
            Ended::Succeeded(vec![Server {
                name: "web".into(),
                ip: "10.0.0.1".into()
            }])
        );
        // Any job reads as JSON.
        let any: Ended<Value> = ended(&ok).unwrap().unwrap();
        assert_eq!(
            any.succeeded(),
            Some(json!([{"name": "web", "ip": "10.0.0.1"}]))
        );
    }

    #[test]
    fn a_result_that_does_not_fit_names_where() {
        let ok = done(json!({
            "state": "SUCCESS", "failures": [],
            "result": [{"name": "web", "ip": "10.0.0.1"}, {"name": "db", "ip": 7}],
        }));
        let err = ended::<Vec<Server>>(&ok).unwrap_err();
        assert!(
            matches!(&err, Error::BadResult { path, .. } if path == "[1].ip"),
            "{err:?}"
        );
        assert!(err.to_string().contains("at `[1].ip`"), "{err}");
    }

    #[test]
    fn an_outcome_without_a_result_reads_as_null() {
        // As a conductor of an earlier release recorded it.
        let old = done(json!({"flow": JobId::new(), "state": "SUCCESS", "failures": []}));
        assert!(matches!(
            ended::<Server>(&old),
            Err(Error::NoResult { job }) if job == old.id
        ));
        assert_eq!(ended::<()>(&old).unwrap(), Some(Ended::Succeeded(())));
        assert_eq!(
            ended::<Option<Server>>(&old).unwrap(),
            Some(Ended::Succeeded(None))
        );
        assert_eq!(
            ended::<Value>(&old).unwrap(),
            Some(Ended::Succeeded(Value::Null))
        );
    }

    #[test]
    fn reverts_failures_and_runs_that_never_started() {
        let reverted = done(json!({"state": "REVERTED", "failures": ["boom"]}));
        assert_eq!(
            ended::<Value>(&reverted).unwrap(),
            Some(Ended::Reverted {
                failures: vec!["boom".into()]
            })
        );
        let failed = done(json!({"state": "FAILURE", "failures": ["boom", "undo failed"]}));
        assert_eq!(
            ended::<Value>(&failed).unwrap(),
            Some(Ended::Failed {
                failures: vec!["boom".into(), "undo failed".into()]
            })
        );
        let never = done(json!({"state": null, "cancelled": "never started"}));
        assert_eq!(
            ended::<Value>(&never).unwrap(),
            Some(Ended::NotStarted {
                reason: "never started".into()
            })
        );
        let late = done(json!({"state": null, "deadline": "passed before the run started"}));
        assert!(matches!(
            ended::<Value>(&late).unwrap(),
            Some(Ended::NotStarted { reason }) if reason.contains("deadline") || reason.contains("passed")
        ));
    }

    #[test]
    fn parked_and_trashed_jobs_say_why() {
        let parked = job(
            JobState::Parked,
            Some(json!({"parked": "build", "error": "no such factory"})),
        );
        assert!(matches!(
            ended::<Value>(&parked).unwrap(),
            Some(Ended::Parked { kind, reason, .. }) if kind == "build" && reason == "no such factory"
        ));
        let trashed = job(JobState::Trashed, Some(json!("not needed")));
        assert_eq!(
            ended::<Value>(&trashed).unwrap(),
            Some(Ended::Trashed {
                reason: json!("not needed")
            })
        );
    }

    #[test]
    fn outcomes_no_conductor_records_are_refused() {
        for outcome in [
            json!("done"),
            json!({"state": "RUNNING"}),
            json!({"state": "SUCCESSFUL"}),
            json!({"state": "REVERTED", "failures": "boom"}),
            json!({"state": "REVERTED", "failures": [1]}),
        ] {
            let odd = done(outcome.clone());
            assert!(
                matches!(ended::<Value>(&odd), Err(Error::BadOutcome { .. })),
                "{outcome}"
            );
        }
    }
}
