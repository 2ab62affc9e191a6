//! Conductors: claim jobs from a board, build their flows, run them fenced, and hand them on.
//!
//! A [`Conductor`] claims up to [`Options::concurrency`] jobs, only those its [`Registry`]
//! can run (the claim carries the registry's [`Offer`]). For each one it
//! builds the flow with the job's factory, at the version the job is pinned to, creates the
//! flow run (its id is derived from the job's, so whoever claims the job later finds the same
//! run) or loads it, and runs it with every write fenced by the claim's token, heartbeating
//! the lease meanwhile. When the run is at rest (`SUCCESS`, `REVERTED`, or `FAILURE` after a
//! revert failed) it consumes the job with the outcome: in the flow's last step where the
//! store can (see [`crate::RunOptions::consume_job`]), through the board otherwise.
//!
//! Every other way a run can stop leaves it where an operator sees it:
//!
//! - **Claim lost** (a heartbeat, or a task's [confirmation](crate::TaskContext::confirm_claim),
//!   answers `ClaimLost`, or a write is fenced): the engine is halted at once, its running
//!   tasks' cancellation tokens fire, and it writes nothing more.
//! - **Claim not confirmed in time** (self-fencing): when no heartbeat has been confirmed for
//!   the lease less [`Options::self_fence_margin`], measured on the monotonic clock from when
//!   the last confirmed request was sent, the run is halted the same way, before the board can
//!   give the job to anyone else, however long the board's calls hang.
//! - **Shutdown** (the cancellation token given to [`Conductor::run`]): stop claiming, suspend
//!   running flows at a step boundary, abandon their jobs so another conductor resumes them at
//!   once, and deregister. Flows still running after [`Options::drain_timeout`] are halted;
//!   their leases expire and another conductor takes them over. A claim or a registration in
//!   progress is given up at once; what follows the drain (handing back the halted jobs, all
//!   at once, then deregistering) is two board calls, each as long as the board lets a call
//!   take (the SQL boards' call timeout). So a conductor whose database does not answer ends
//!   within its drain timeout and two call timeouts of being asked to stop.
//! - **Parked** (a reason outside the flow: a build that fails or panics, a stored run that
//!   does not match its definition, data a store refuses or cannot read, a job claimed
//!   [`Options::max_stalled_claims`] times in a row without progress): the job is parked
//!   with the reason ([`JobBoard::park`]) and its run left exactly as stored, for an operator
//!   to retry, revert or trash ([`crate::recovery`]). Nothing is consumed as an error.
//! - **A run of a newer version of baton** ([`store::Error::TooNew`], during an upgrade): the
//!   job is left claimed without heartbeats, untouched, so that whoever claims it when the
//!   lease runs out takes it, in time a conductor that can read it
//!   ([`Summary::left_for_newer`]).
//! - **Errors retrying cannot cure**: a claim or the conductor's own heartbeat that fails with
//!   an error that is not transient, or a database found corrupt
//!   ([`store::Error::CorruptDatabase`], [`board::Error::CorruptDatabase`]) by any part of the
//!   conductor. It logs the error, shuts down as above (what it runs is suspended, or halted,
//!   and written nothing more by this conductor) and [`Conductor::run`] returns it
//!   ([`Error`]). Jobs whose runs met a corrupt database are not consumed: their runs did not
//!   end.
//!
//! Cancel requests ([`JobBoard::request_cancel`]) reach the runs they name: a conductor reads
//! those on the jobs it holds about every second, sooner where its board tells it
//! ([`JobBoard::wait_for_cancel`]), and cancels the run ([`Control::cancel`]). A
//! [`Cancel::Revert`](crate::board::Cancel::Revert) (also an operator's `baton flows revert`,
//! or a superseding job) reverts the run and completes the job; a
//! [`Cancel::Suspend`](crate::board::Cancel::Suspend) suspends it and parks the job. A job
//! claimed with a request is run that way from the start. A job's
//! [deadline](crate::board::Job::deadline) is given to the run it creates.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod job;

use job::JobRun;

use crate::board::{self, ConductorInfo, JobBoard, Offer};
use crate::engine::{Control, Engine};
use crate::ids::{ConductorId, JobId};
pub use crate::registry::{Blueprint, Registry};
use crate::store;

/// Tuning for a [`Conductor`], checked by [`Options::validate`] when the conductor is built
/// ([`Conductor::with_options`]).
///
/// The rules, so that no value can make a conductor panic, spin or lose its claims:
///
/// - `concurrency` and `max_stalled_claims` are at least 1.
/// - `lease`, `heartbeat`, `poll` and `retention_every` are at least [`Options::MIN_INTERVAL`]
///   (1 ms: a lease is stored in whole milliseconds, and a zero interval would spin).
/// - `heartbeat` is at most a third of `lease`, so that a claim outlives one heartbeat that is
///   late or lost: with a heartbeat near the lease, every slow answer hands the job to another
///   conductor while this one still runs it.
/// - `self_fence_margin`, if given, is at least 1 ms and at most `lease` less two heartbeats,
///   so that one late heartbeat does not stop a job whose claim still holds.
/// - `heartbeat` and `gather` are at most [`Options::MAX_HEARTBEAT`] (a third of
///   [`board::CONDUCTOR_UNSEEN_LIMIT`]), so that the conductor reports in often enough that no
///   board takes it for dead.
/// - The other durations are at most [`Options::MAX_DURATION`] (a year), far inside what the
///   clocks and timers can add. `drain_timeout` and `gather` may be zero (halt at once, claim
///   at once); `retention` has no bound (a retention longer than history keeps everything).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// A name for operators.
    pub name: String,
    /// The host, as shown to operators.
    pub host: String,
    /// How many jobs it runs at once (at least 1).
    pub concurrency: usize,
    /// How long a claim lasts without a heartbeat.
    pub lease: Duration,
    /// How often it heartbeats each claim and its own registration: at most a third of
    /// `lease`.
    pub heartbeat: Duration,
    /// How long it waits for new work before polling again (an idle conductor also notices a
    /// dead owner's jobs when it polls).
    pub poll: Duration,
    /// How long shutdown waits for running flows to reach a step boundary (zero: halt them at
    /// once).
    pub drain_timeout: Duration,
    /// How long a conductor that is already running jobs lets work gather after a wake-up
    /// before it claims: one claim then takes the jobs posted meanwhile, instead of one claim
    /// per posted job by every conductor woken (each post wakes them all; one wins). A
    /// conductor with nothing to run claims at once, so an idle fleet starts work without
    /// delay. Zero claims at once always.
    pub gather: Duration,
    /// If set, the conductor also deletes runs and jobs that ended longer ago than this
    /// ([`Store::purge_flows`](crate::store::Store::purge_flows),
    /// [`JobBoard::purge_jobs`]), every [`Options::retention_every`], in batches, beside its
    /// work. Default: `None`, keep everything. Every conductor of a fleet may do it: the
    /// purges of two conductors never delete a row twice.
    pub retention: Option<Duration>,
    /// How often a conductor with a [`Options::retention`] purges (the first time when it
    /// starts). Default 10 minutes.
    pub retention_every: Duration,
    /// A job claimed this many times in a row without progress (its owners died, or lost
    /// their claims, before any atom of its run came to rest, and never handed it back) is
    /// parked when claimed again, instead of crashing another conductor: a poison job.
    /// Default 5.
    pub max_stalled_claims: u32,
    /// How long before its lease runs out a conductor that could not renew a claim stops the
    /// job's tasks (halting its run) on its own: counted on the monotonic clock from when it
    /// sent the last request the board confirmed (the claim, or a heartbeat), so that it has
    /// stopped before the board can give the job to another conductor, however long its
    /// calls to the board hang. `None` (the default): a fifth of `lease`.
    pub self_fence_margin: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            name: "conductor".into(),
            host: crate::board::this_host(),
            concurrency: 4,
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            poll: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(30),
            gather: Duration::from_millis(5),
            retention: None,
            retention_every: Duration::from_secs(600),
            max_stalled_claims: 5,
            self_fence_margin: None,
        }
    }
}

impl Options {
    /// The shortest `lease`, `heartbeat`, `poll` and `retention_every`.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

    /// The longest `heartbeat` and `gather`: a third of [`board::CONDUCTOR_UNSEEN_LIMIT`].
    pub const MAX_HEARTBEAT: Duration =
        Duration::from_secs(board::CONDUCTOR_UNSEEN_LIMIT.as_secs() / 3);

    /// The longest `lease`, `poll`, `drain_timeout` and `retention_every`: 365 days.
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

    /// The self-fencing margin in effect: [`Options::self_fence_margin`], or a fifth of the
    /// lease.
    #[must_use]
    pub fn effective_self_fence_margin(&self) -> Duration {
        self.self_fence_margin.unwrap_or(self.lease / 5)
    }

    /// Checks the options against the rules in [`Options`]' documentation.
    ///
    /// # Errors
    /// [`InvalidOptions`] for the first option that breaks a rule, naming it and what would
    /// work.
    pub fn validate(&self) -> Result<(), InvalidOptions> {
        if self.concurrency == 0 {
            return Err(InvalidOptions::ZeroConcurrency);
        }
        if self.max_stalled_claims == 0 {
            return Err(InvalidOptions::ZeroStalledClaims);
        }
        let bounds = [
            ("lease", self.lease, Self::MIN_INTERVAL, Self::MAX_DURATION),
            (
                "heartbeat",
                self.heartbeat,
                Self::MIN_INTERVAL,
                Self::MAX_HEARTBEAT,
            ),
            ("poll", self.poll, Self::MIN_INTERVAL, Self::MAX_DURATION),
            (
                "drain_timeout",
                self.drain_timeout,
                Duration::ZERO,
                Self::MAX_DURATION,
            ),
            ("gather", self.gather, Duration::ZERO, Self::MAX_HEARTBEAT),
            (
                "retention_every",
                self.retention_every,
                Self::MIN_INTERVAL,
                Self::MAX_DURATION,
            ),
        ];
        for (option, value, min, max) in bounds {
            if value < min {
                return Err(InvalidOptions::TooShort { option, value, min });
            }
            if value > max {
                return Err(InvalidOptions::TooLong { option, value, max });
            }
        }
        let min_lease = self.heartbeat.saturating_mul(3);
        if min_lease > self.lease {
            let third = u64::try_from(self.lease.as_millis() / 3).unwrap_or(u64::MAX);
            return Err(InvalidOptions::HeartbeatTooSlow {
                heartbeat: self.heartbeat,
                lease: self.lease,
                max_heartbeat: Duration::from_millis(third),
                min_lease,
            });
        }
        if let Some(margin) = self.self_fence_margin {
            if margin < Self::MIN_INTERVAL {
                return Err(InvalidOptions::TooShort {
                    option: "self_fence_margin",
                    value: margin,
                    min: Self::MIN_INTERVAL,
                });
            }
            let max = self.lease.saturating_sub(self.heartbeat.saturating_mul(2));
            if margin > max {
                return Err(InvalidOptions::MarginTooLong {
                    margin,
                    lease: self.lease,
                    heartbeat: self.heartbeat,
                    max,
                });
            }
        }
        Ok(())
    }
}

/// Why [`Options`] were refused ([`Options::validate`]): the option and what would work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidOptions {
    /// `concurrency` is zero: the conductor would never claim a job.
    #[error("concurrency 0 would run no job: give 1 or more")]
    ZeroConcurrency,
    /// `max_stalled_claims` is zero: every job would be parked when first claimed.
    #[error("max_stalled_claims 0 would park every job at its first claim: give 1 or more")]
    ZeroStalledClaims,
    /// A duration is shorter than its rule allows.
    #[error("{option} {} is too short: give {} or more", Millis(*value), Millis(*min))]
    TooShort {
        /// The option (the field's name, e.g. `poll`).
        option: &'static str,
        /// The value given.
        value: Duration,
        /// The shortest value allowed.
        min: Duration,
    },
    /// A duration is longer than its rule allows.
    #[error("{option} {} is too long: give {} or less", Millis(*value), Millis(*max))]
    TooLong {
        /// The option (the field's name, e.g. `lease`).
        option: &'static str,
        /// The value given.
        value: Duration,
        /// The longest value allowed.
        max: Duration,
    },
    /// `heartbeat` is more than a third of `lease`.
    #[error(
        "heartbeat {} is more than a third of the lease {}, so one late heartbeat would lose the claim: \
         give a heartbeat of {} or less, or a lease of {} or more",
        Millis(*heartbeat),
        Millis(*lease),
        Millis(*max_heartbeat),
        Millis(*min_lease)
    )]
    HeartbeatTooSlow {
        /// The heartbeat given.
        heartbeat: Duration,
        /// The lease given.
        lease: Duration,
        /// The longest heartbeat that suits the lease: a third of it, in whole milliseconds.
        max_heartbeat: Duration,
        /// The shortest lease that suits the heartbeat: three times it.
        min_lease: Duration,
    },
    /// `self_fence_margin` leaves less than two heartbeats of the lease: one late heartbeat
    /// would stop a job whose claim still holds.
    #[error(
        "self_fence_margin {} leaves less than two heartbeats ({}) of the lease {}: give a \
         margin of {} or less, or a longer lease",
        Millis(*margin),
        Millis(*heartbeat),
        Millis(*lease),
        Millis(*max)
    )]
    MarginTooLong {
        /// The margin given.
        margin: Duration,
        /// The lease.
        lease: Duration,
        /// The heartbeat.
        heartbeat: Duration,
        /// The longest margin that suits them.
        max: Duration,
    },
}

/// A duration as people write it: `250ms`, `10s`, or finer when it is not whole milliseconds.
struct Millis(Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if !d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{d:?}")
        } else if d.subsec_millis() == 0 && !d.is_zero() {
            write!(f, "{}s", d.as_secs())
        } else {
            write!(f, "{}ms", d.as_millis())
        }
    }
}

/// What a conductor did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Jobs it claimed.
    pub claimed: u64,
    /// Jobs it consumed (their runs ended at rest).
    pub consumed: u64,
    /// Jobs it handed back at shutdown.
    pub abandoned: u64,
    /// Claims it lost.
    pub lost: u64,
    /// Jobs it parked (see the [module documentation](self)).
    pub parked: u64,
    /// Jobs still running when the drain timeout ran out (halted; their leases will expire).
    pub left_behind: u64,
    /// Claims of jobs whose runs hold data of a newer version of baton
    /// ([`store::Error::TooNew`]): left claimed, without heartbeats, so that their leases run
    /// out and a conductor that can read them takes them. (A fleet with no such conductor
    /// claims them again at every lease's end: trash the job, or upgrade.)
    pub left_for_newer: u64,
    /// Ended runs it deleted ([`Options::retention`]).
    pub purged_runs: u64,
    /// Ended jobs it deleted ([`Options::retention`]).
    pub purged_jobs: u64,
}

/// Why a conductor stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The board failed in a way retrying cannot fix: registering, a claim or the conductor's
    /// heartbeat failed with an error that is not transient, or an operation on a job found
    /// the database corrupt.
    #[error(transparent)]
    Board(#[from] board::Error),
    /// The store failed in a way retrying cannot fix: a run found the database corrupt.
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Error {
    fn is_corrupt_database(&self) -> bool {
        matches!(
            self,
            Error::Board(board::Error::CorruptDatabase(_))
                | Error::Store(store::Error::CorruptDatabase(_))
        )
    }
}

/// What stops a conductor before it is asked to: the first [`Error`] any part of it (the claim
/// loop, a job's task, the retention task) reports, and the token that ends its claim loop.
#[derive(Debug, Clone)]
struct Fatal {
    stop: CancellationToken,
    first: Arc<Mutex<Option<Error>>>,
}

impl Fatal {
    /// `stop` ends the claim loop; it is cancelled by [`Fatal::report`] (and with its parent).
    fn new(stop: CancellationToken) -> Self {
        Self {
            stop,
            first: Arc::default(),
        }
    }

    /// Logs `error` and stops the conductor with it (unless another error stopped it first).
    fn report(&self, error: Error, what: &str) {
        tracing::error!(error = %Chain(&error), "{what}: stopping the conductor");
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(error);
        self.stop.cancel();
    }

    fn take(&self) -> Option<Error> {
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// An error with its causes, `error: cause: cause`, for logs (a backend's own message, such as
/// SQLite's "database disk image is malformed", is usually a cause).
struct Chain<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            // Many errors repeat their source's text in their own: write each fact once.
            let text = cause.to_string();
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            source = cause.source();
        }
        Ok(())
    }
}

/// How one job ended, from the conductor's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobEnd {
    Consumed,
    Parked,
    Abandoned,
    Lost,
    Halted,
    LeftForNewer,
}

/// How often a conductor looks for the first progress of a job that stalled before, to report
/// it at once.
const EAGER_PROGRESS: Duration = Duration::from_millis(50);

/// How long a conductor running jobs waits, at most, between two looks at the cancel requests
/// on them ([`JobBoard::cancel_requests`]); boards that can tell it of a request sooner do
/// ([`JobBoard::wait_for_cancel`]).
const CANCEL_POLL: Duration = Duration::from_secs(1);

/// The controls of the runs a conductor drives, by job: where cancel requests go.
type Running = Arc<Mutex<HashMap<JobId, Control>>>;

/// Passes the cancel requests on the jobs `owner` holds to their runs (see
/// [`Control::cancel`]) until `stop`.
async fn watch_cancels(
    board: Arc<dyn JobBoard>,
    owner: ConductorId,
    running: Running,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = board.wait_for_cancel(owner, CANCEL_POLL) => {}
        }
        if running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
        {
            continue;
        }
        let requests = tokio::select! {
            () = stop.cancelled() => break,
            requests = board.cancel_requests(owner) => requests,
        };
        match requests {
            Ok(requests) => {
                let running = running.lock().unwrap_or_else(PoisonError::into_inner);
                for (job, how) in requests {
                    if let Some(control) = running.get(&job) {
                        if control.cancel_requested() != Some(how.after(control.cancel_requested()))
                        {
                            tracing::info!(job.id = %job, how = how.as_str(), "cancel requested");
                        }
                        control.cancel(how);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %Chain(&e), "reading cancel requests failed"),
        }
    }
}

/// How many runs or jobs one purge call of [`Options::retention`] deletes (one transaction).
const RETENTION_BATCH: u32 = 500;

/// The most purge calls of each kind per round of [`Options::retention`]: a backlog is worked
/// off over several rounds rather than in one long burst beside the fleet's work.
const RETENTION_CALLS: usize = 20;

/// [`Options::retention`]: every `every`, deletes what ended longer ago than `keep`, until
/// `stop` (or a corrupt database, reported to `fatal`); the runs and jobs it deleted.
async fn retain(
    store: Arc<dyn crate::store::Store>,
    board: Arc<dyn JobBoard>,
    keep: Duration,
    every: Duration,
    stop: CancellationToken,
    fatal: Fatal,
) -> (u64, u64) {
    let (mut runs, mut jobs) = (0, 0);
    let mut round = tokio::time::interval(every.max(Duration::from_millis(1)));
    round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = round.tick() => {}
        }
        let cutoff = chrono::Duration::from_std(keep)
            .ok()
            .and_then(|keep| Utc::now().checked_sub_signed(keep));
        let Some(cutoff) = cutoff else {
            // Nothing can have ended that long ago.
            continue;
        };
        let (store, board) = (&store, &board);
        runs += purge_round("runs", &stop, &fatal, |n| async move {
            Ok(store.purge_flows(cutoff, n).await?)
        })
        .await;
        jobs += purge_round("jobs", &stop, &fatal, |n| async move {
            Ok(board.purge_jobs(cutoff, n).await?)
        })
        .await;
        tracing::debug!(runs, jobs, "retention round done");
    }
    (runs, jobs)
}

/// One round of [`Options::retention`] for one kind (`what`): purge calls of
/// [`RETENTION_BATCH`] until one deletes fewer, at most [`RETENTION_CALLS`], stopping early on
/// `stop` or an error (tried again next round; a corrupt database is reported to `fatal`); how
/// many it deleted.
async fn purge_round<F, Fut>(
    what: &str,
    stop: &CancellationToken,
    fatal: &Fatal,
    mut purge: F,
) -> u64
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<u64, Error>>,
{
    let mut purged = 0;
    for _ in 0..RETENTION_CALLS {
        if stop.is_cancelled() {
            break;
        }
        match purge(RETENTION_BATCH).await {
            Ok(n) => {
                purged += n;
                if n < u64::from(RETENTION_BATCH) {
                    break;
                }
            }
            Err(e) if e.is_corrupt_database() => {
                fatal.report(e, &format!("purging ended {what} failed"));
                break;
            }
            Err(e) => {
                tracing::warn!(error = %Chain(&e), what, "purging ended {what} failed; trying again next round");
                break;
            }
        }
    }
    purged
}

/// Claims jobs and runs their flows. See the [module documentation](self).
#[derive(Debug)]
pub struct Conductor {
    id: ConductorId,
    board: Arc<dyn JobBoard>,
    engine: Engine,
    registry: Arc<Registry>,
    offer: Offer,
    options: Options,
}

impl Conductor {
    /// A conductor taking jobs from `board` and running them with `engine` (whose store must
    /// be the one the board fences). It claims only jobs `registry` can run.
    pub fn new(board: Arc<dyn JobBoard>, engine: Engine, registry: Registry) -> Self {
        Self {
            id: ConductorId::new(),
            board,
            engine,
            offer: registry.offer(),
            registry: Arc::new(registry),
            options: Options::default(),
        }
    }

    /// Replaces the options, once they pass [`Options::validate`].
    ///
    /// # Errors
    /// [`InvalidOptions`] naming the first option that breaks a rule; the conductor is
    /// dropped.
    pub fn with_options(mut self, options: Options) -> Result<Self, InvalidOptions> {
        options.validate()?;
        self.options = options;
        Ok(self)
    }

    /// The conductor's id.
    #[must_use]
    pub fn id(&self) -> ConductorId {
        self.id
    }

    /// Runs until `shutdown` is cancelled, then shuts down gracefully.
    ///
    /// # Errors
    /// Only errors that make going on pointless (see the [module documentation](self)), after
    /// the same graceful shutdown; transient ones are retried.
    ///
    /// # Cancel safety
    /// Not cancel safe: cancel through `shutdown` instead, so flows are suspended and their jobs
    /// handed back.
    pub async fn run(self, shutdown: CancellationToken) -> Result<Summary, Error> {
        let span = tracing::error_span!("conductor", conductor.id = %self.id, conductor.name = %self.options.name);
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(self, shutdown: CancellationToken) -> Result<Summary, Error> {
        let started_at = Utc::now();
        let info = |now| ConductorInfo {
            id: self.id,
            name: self.options.name.clone(),
            host: self.options.host.clone(),
            pid: std::process::id(),
            started_at,
            last_seen: now,
            offer: self.offer.clone(),
        };
        if let Err(e) = self.board.register(&info(started_at)).await {
            tracing::error!(error = %Chain(&e), "registering the conductor failed");
            return Err(e.into());
        }
        tracing::info!("conductor started");

        // Cancelled by `shutdown`, or by the first error that stops the conductor.
        let fatal = Fatal::new(shutdown.child_token());
        let mut summary = Summary::default();
        let retention = self.options.retention.map(|keep| {
            let stop = fatal.stop.child_token();
            let task = tokio::spawn(
                retain(
                    self.engine.store().clone(),
                    self.board.clone(),
                    keep,
                    self.options.retention_every,
                    stop.clone(),
                    fatal.clone(),
                )
                .in_current_span(),
            );
            (stop, task)
        });
        let mut jobs: JoinSet<JobEnd> = JoinSet::new();
        let mut controls: HashMap<tokio::task::Id, (JobId, Control)> = HashMap::new();
        let running: Running = Arc::default();
        let cancels = {
            let stop = fatal.stop.child_token();
            let task = tokio::spawn(
                watch_cancels(self.board.clone(), self.id, running.clone(), stop.clone())
                    .in_current_span(),
            );
            (stop, task)
        };
        let mut beat = tokio::time::interval(self.options.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        // Whether the board may have work for this conductor: at the start, after a wake-up
        // or a poll's timeout, after a claim that took all it asked for, and after a job ends
        // while the conductor was full (it was not listening then). Not after every job's end:
        // with many conductors that cost a claim per job that found nothing, most of the
        // claims a busy fleet made.
        let mut ask = true;
        // When an idle conductor looks for work again without a wake-up. Kept across the
        // loop's turns: a heartbeat more frequent than the poll would otherwise start the wait
        // afresh every time and the conductor would never poll.
        let mut next_poll = tokio::time::Instant::now() + self.options.poll;
        let stop = &fatal.stop;
        while !stop.is_cancelled() {
            let free = self.options.concurrency.saturating_sub(jobs.len());
            if free > 0 && ask {
                // The claims hold on the board until at least a lease from when they were
                // asked for: what self-fencing counts from.
                let asked = tokio::time::Instant::now();
                // All it has room for in one go: fewer means the board has no more for now,
                // so there is no need to ask again until woken.
                // Shutdown does not wait for a claim the board is slow to answer: a claim
                // given up on half-way may have taken jobs, which this conductor's liveness
                // (released when it deregisters) or their leases give back.
                let claimed = tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    claimed = self.board.claim_up_to(self.id, self.options.lease, free, &self.offer) => claimed,
                };
                let claims = match claimed {
                    Ok(claims) => {
                        ask = claims.len() == free;
                        claims
                    }
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %Chain(&e), "claim failed");
                        Vec::new()
                    }
                    Err(e) => {
                        fatal.report(e.into(), "claim failed");
                        break;
                    }
                };
                for claim in claims {
                    summary.claimed += 1;
                    let control = Control::new();
                    let job = claim.job.id;
                    let run = JobRun {
                        claim,
                        claimed_at: asked,
                        board: self.board.clone(),
                        engine: self.engine.clone(),
                        registry: self.registry.clone(),
                        options: self.options.clone(),
                        control: control.clone(),
                        fatal: fatal.clone(),
                        conductor_span: tracing::Span::current(),
                    };
                    let handle = jobs.spawn(run.drive());
                    running
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(job, control.clone());
                    controls.insert(handle.id(), (job, control));
                }
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(done) = jobs.join_next_with_id() => {
                    if jobs.len() + 1 >= self.options.concurrency {
                        ask = true;
                    }
                    Self::reap(done, &mut controls, &running, &mut summary);
                }
                () = self.board.wait_for_work(next_poll.saturating_duration_since(tokio::time::Instant::now())), if jobs.len() < self.options.concurrency => {
                    ask = true;
                    next_poll = tokio::time::Instant::now() + self.options.poll;
                    if !jobs.is_empty() && !self.options.gather.is_zero() {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(self.options.gather) => {}
                        }
                    }
                }
                _ = beat.tick() => {
                    let now = info(Utc::now());
                    let registered = tokio::select! {
                        biased;
                        () = stop.cancelled() => break,
                        registered = self.board.register(&now) => registered,
                    };
                    match registered {
                        Ok(()) => {}
                        Err(e) if e.is_transient() => {
                            tracing::warn!(error = %Chain(&e), "conductor heartbeat failed");
                        }
                        Err(e) => fatal.report(e.into(), "conductor heartbeat failed"),
                    }
                }
            }
        }

        // Shutdown: suspend what runs, give it time to reach a step boundary, halt the rest.
        tracing::info!(running = jobs.len(), "conductor shutting down");
        for (_, control) in controls.values() {
            control.suspend();
        }
        let drained = tokio::time::timeout(self.options.drain_timeout, async {
            while let Some(done) = jobs.join_next_with_id().await {
                Self::reap(done, &mut controls, &running, &mut summary);
            }
        })
        .await;
        if drained.is_err() {
            summary.left_behind = jobs.len() as u64;
            tracing::warn!(
                left_behind = jobs.len(),
                "flows still running at the drain timeout were halted"
            );
            for (_, control) in controls.values() {
                control.halt();
            }
            while let Some(done) = jobs.join_next_with_id().await {
                Self::reap(done, &mut controls, &running, &mut summary);
            }
        }
        let (stop_cancels, cancels) = cancels;
        stop_cancels.cancel();
        if let Err(e) = cancels.await {
            tracing::warn!(error = %e, "the cancel watcher failed");
        }
        if let Some((stop, task)) = retention {
            stop.cancel();
            match task.await {
                Ok((runs, jobs)) => {
                    summary.purged_runs = runs;
                    summary.purged_jobs = jobs;
                }
                Err(e) => tracing::warn!(error = %e, "the retention task failed"),
            }
        }
        if let Err(e) = self.board.deregister(self.id).await {
            tracing::warn!(error = %Chain(&e), "deregistering failed");
        }
        if let Some(e) = fatal.take() {
            tracing::error!(?summary, "conductor stopped by an error");
            return Err(e);
        }
        tracing::info!(?summary, "conductor stopped");
        Ok(summary)
    }

    fn reap(
        done: Result<(tokio::task::Id, JobEnd), tokio::task::JoinError>,
        controls: &mut HashMap<tokio::task::Id, (JobId, Control)>,
        running: &Running,
        summary: &mut Summary,
    ) {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        if let Some((job, _)) = controls.remove(&id) {
            running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&job);
        }
        match done {
            Ok((_, end)) => match end {
                JobEnd::Consumed => summary.consumed += 1,
                JobEnd::Parked => summary.parked += 1,
                JobEnd::Abandoned => summary.abandoned += 1,
                JobEnd::Lost => summary.lost += 1,
                JobEnd::LeftForNewer => summary.left_for_newer += 1,
                JobEnd::Halted => {}
            },
            Err(e) => {
                tracing::error!(error = %e, "a job task panicked");
            }
        }
    }
}
