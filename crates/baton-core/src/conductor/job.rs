//! Driving one claimed job: build its flow, run it fenced while heartbeating the claim, and
//! hand the job on (consume, park, abandon) by how the run stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::FutureExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Chain, Fatal, JobEnd, Options, Registry, EAGER_PROGRESS};
use crate::board::{self, Cancel, Claim, JobBoard};
use crate::engine::{self, Control, CreateOptions, Engine, RunOptions};
use crate::model::Deadline;
use crate::state::FlowState;
use crate::store;
use crate::task::{ClaimCheck, ClaimError, ClaimHeld};

/// One claimed job being driven to its end.
pub(super) struct JobRun {
    pub(super) claim: Claim,
    /// When the claim was asked for, on the monotonic clock.
    pub(super) claimed_at: tokio::time::Instant,
    pub(super) board: Arc<dyn JobBoard>,
    pub(super) engine: Engine,
    pub(super) registry: Arc<Registry>,
    pub(super) options: Options,
    pub(super) control: Control,
    pub(super) fatal: Fatal,
    /// The conductor's span: the job's span follows from it, but is not its child, so that
    /// each job is a trace of its own, not a part of one that lasts as long as the conductor.
    pub(super) conductor_span: tracing::Span,
}

/// The outcome of a job asked to revert a run that never started.
fn never_started(flow: crate::FlowId) -> Value {
    json!({
        "flow": flow,
        "state": null,
        "cancelled": "the run was to be reverted, but it never started",
    })
}

/// Why a job is parked: what its outcome records.
fn park_reason(kind: &str, error: impl std::fmt::Display) -> Value {
    json!({ "parked": kind, "error": error.to_string() })
}

impl JobRun {
    pub(super) async fn drive(self) -> JobEnd {
        let job = &self.claim.job;
        let span = tracing::info_span!(
            parent: None,
            "job",
            job.id = %job.id,
            job.name = %job.name,
            flow.id = %job.flow(),
            token = %self.claim.fence.token,
            // As i64: trace exporters take an unsigned number as text.
            attempt = i64::from(job.attempts),
        );
        span.follows_from(&self.conductor_span);
        let fence = self.claim.fence;
        let board = self.board.clone();
        // The engine catches what tasks panic with; a panic here is a bug, of baton's or in
        // code it calls around the run. Caught, so the job is parked, not left claimed to
        // crash the next conductor the same way.
        let driven = std::panic::AssertUnwindSafe(self.drive_inner())
            .catch_unwind()
            .instrument(span.clone())
            .await;
        match driven {
            Ok(end) => end,
            Err(panic) => {
                let message = crate::panic_message(panic.as_ref());
                let _enter = span.enter();
                tracing::error!(error = %message, "driving the job panicked: parking it");
                park(&*board, fence, park_reason("panic", message)).await
            }
        }
    }

    async fn drive_inner(self) -> JobEnd {
        let fence = self.claim.fence;
        let job = &self.claim.job;
        tracing::info!(factory = %job.factory, version = ?job.version, "job claimed");
        if job.stalled_claims > self.options.max_stalled_claims {
            let why = format!(
                "claimed {} times in a row without progress (its build or its run may be \
                 crashing the conductors that take it)",
                job.stalled_claims
            );
            tracing::error!(
                stalled_claims = job.stalled_claims,
                "poison job: parking it"
            );
            return self.park(park_reason("stalled", why)).await;
        }
        let Some(factory) = job.factory_ref() else {
            // Every claim pins the version; a board that did not is broken.
            return self
                .park(park_reason(
                    "build",
                    "the board claimed the job without pinning its version",
                ))
                .await;
        };
        let flow_id = job.flow();
        let revert = job.cancel == Some(Cancel::Revert);
        if job.cancel == Some(Cancel::Suspend) {
            // Asked to stop before anyone ran it further: the run stops at once (nothing
            // starts), and the job is parked below.
            tracing::info!("the job asks for its run to be suspended");
            self.control.cancel(Cancel::Suspend);
        }
        let (flow, inputs) = match self.registry.build(&factory, &job.params) {
            Ok(built) => built,
            Err(e) => {
                if revert
                    && matches!(
                        self.engine.store().load_run(flow_id).await,
                        Err(store::Error::FlowNotFound(_))
                    )
                {
                    // Nothing ran: nothing to revert, whatever the build says.
                    return self.finish(never_started(flow_id)).await;
                }
                tracing::error!(error = %e, "job cannot be built: parking it");
                return self.park(park_reason("build", e)).await;
            }
        };
        // The job's flow: created by the first claim, found by every later one. Creation is
        // atomic and fenced, so trying it is the cheapest way to find out; a new flow runs
        // from what was just written, an existing one from the store.
        let mut create = CreateOptions::new()
            .id(flow_id)
            .fence(fence)
            .factory(factory.clone())
            .meta(json!({ "job": job.id, "job_name": job.name }));
        if let Some(at) = job.deadline {
            // Stored with the run: whoever runs it later keeps it.
            create = create.deadline(Deadline::revert_at(at));
        }
        // The flow's last step consumes the job too, where the store can (one commit fewer,
        // and no window between the flow's end and the job's). A stored run must have been
        // built by the version the job is pinned to.
        // Set when a task's confirmation finds the claim lost (and halts the run).
        let lost_by_task = Arc::new(AtomicBool::new(false));
        let mut run_options = RunOptions::new()
            .fence(fence)
            .claim_check(Arc::new(ClaimCheckByHeartbeat {
                board: self.board.clone(),
                lease: self.options.lease,
                margin: self.options.effective_self_fence_margin(),
                control: self.control.clone(),
                lost: lost_by_task.clone(),
            }))
            .control(self.control.clone())
            .consume_job()
            .expecting_factory(factory);
        if revert {
            tracing::info!("the job asks for its run to be reverted");
            run_options = run_options.revert();
        }
        let run = async {
            if revert {
                // A run to turn round, if it was ever created.
                return self
                    .engine
                    .run_with(&flow, flow_id, run_options.clone())
                    .await;
            }
            match self
                .engine
                .create_and_run(&flow, inputs, create, run_options.clone())
                .await
            {
                // The run exists (it keeps the deadline it was created with), or the job's
                // deadline passed before any run was made: then there is none to resume.
                Err(
                    engine::Error::Store(store::Error::FlowExists(_))
                    | engine::Error::DeadlinePassed { .. },
                ) => {
                    self.engine
                        .run_with(&flow, flow_id, run_options.clone())
                        .await
                }
                other => other,
            }
        };
        tokio::pin!(run);
        // The heartbeat runs beside the flow, polled concurrently with it, never inside a
        // `select!` arm that would stop polling the flow while it waits: the flow may hold a
        // lock the heartbeat needs (SQLite's write gate), and the other way round. It is
        // stopped by a token and awaited, never dropped in the middle of a call, so it cannot
        // be left holding such a lock either.
        let stop = CancellationToken::new();
        let heartbeat = async {
            let lease = self.options.lease;
            let margin = self.options.effective_self_fence_margin();
            // The claim holds on the board until at least a lease after `confirmed`: when the
            // last request the board confirmed (the claim, then each heartbeat) was sent, on
            // the monotonic clock. A margin before that, without a newer confirmation, the
            // conductor stops the job itself, however long its calls to the board hang.
            let mut confirmed = self.claimed_at;
            let fence_at = |confirmed: tokio::time::Instant| {
                confirmed
                    .checked_add(lease.saturating_sub(margin))
                    .unwrap_or(confirmed)
            };
            // The claim was just made: the first heartbeat is due one interval from now.
            let mut beat = tokio::time::interval_at(
                tokio::time::Instant::now() + self.options.heartbeat,
                self.options.heartbeat,
            );
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Atoms come to rest: the progress the board has been told of.
            let mut reported = 0;
            // A job that stalled before (its owners died before reporting progress) reports
            // its first progress at once, not a heartbeat later: a crash soon after should
            // not count against it.
            let mut eager = self.claim.job.stalled_claims > 1;
            let mut look = tokio::time::interval(EAGER_PROGRESS);
            let self_fence = |confirmed: tokio::time::Instant| {
                tracing::error!(
                    unconfirmed_for = ?confirmed.elapsed(),
                    ?lease,
                    "no heartbeat confirmed by the board: stopping the job's tasks before its \
                     lease runs out (another conductor may take the job then)"
                );
                true
            };
            loop {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return false,
                    () = tokio::time::sleep_until(fence_at(confirmed)) => return self_fence(confirmed),
                    _ = beat.tick() => {}
                    _ = look.tick(), if eager => {
                        if self.control.settled() == 0 {
                            continue;
                        }
                        eager = false;
                    }
                }
                let settled = self.control.settled();
                let progressed = settled > reported;
                let sent = tokio::time::Instant::now();
                let answer = tokio::select! {
                    biased;
                    answer = self.board.heartbeat(fence, lease, progressed) => answer,
                    () = tokio::time::sleep_until(fence_at(confirmed)) => return self_fence(confirmed),
                };
                match answer {
                    Ok(_) => {
                        confirmed = sent;
                        reported = settled;
                    }
                    // The run ended while this heartbeat was on its way: its last step may
                    // have consumed the job, which is no loss.
                    Err(board::Error::ClaimLost { .. }) if stop.is_cancelled() => return false,
                    Err(board::Error::ClaimLost { .. }) if self.consumed_by_this_claim().await => {
                        // The run's last step consumed the job and its answer is on its way.
                        return false;
                    }
                    Err(board::Error::ClaimLost { .. }) => {
                        tracing::warn!("claim lost: halting the flow");
                        return true;
                    }
                    Err(e @ board::Error::CorruptDatabase(_)) => {
                        self.fatal
                            .report(e.into(), "heartbeat failed: halting the flow");
                        return true;
                    }
                    Err(e) => {
                        // The watchdog above stops the job if no heartbeat gets through in time.
                        tracing::warn!(error = %Chain(&e), "heartbeat failed");
                    }
                }
            }
        };
        tokio::pin!(heartbeat);
        let (result, lost) = tokio::select! {
            result = &mut run => {
                stop.cancel();
                let lost = heartbeat.await;
                (result, lost)
            }
            lost = &mut heartbeat => {
                if lost {
                    self.control.halt();
                }
                (run.await, lost)
            }
        };
        // A run whose last step consumed the job is done, whatever a heartbeat racing that
        // step answered (the job was no longer claimed when it looked).
        if matches!(&result, Ok(outcome) if outcome.job_consumed) {
            tracing::info!("job consumed with the flow's last step");
            return JobEnd::Consumed;
        }
        if lost || lost_by_task.load(Ordering::SeqCst) {
            return JobEnd::Lost;
        }
        match result {
            Ok(outcome)
                if outcome.state == FlowState::Suspended
                    && self.control.cancel_requested() == Some(Cancel::Suspend) =>
            {
                self.park(json!({
                    "parked": "suspended",
                    "flow": outcome.flow,
                    "error": "the run was suspended as asked: resume or revert it",
                }))
                .await
            }
            Ok(outcome) if outcome.state == FlowState::Suspended => {
                match self.board.abandon(fence).await {
                    Ok(()) => {
                        tracing::info!("flow suspended, job handed back");
                        JobEnd::Abandoned
                    }
                    Err(e @ board::Error::CorruptDatabase(_)) => {
                        self.fatal.report(e.into(), "abandoning the job failed");
                        JobEnd::Halted
                    }
                    Err(e) => {
                        tracing::warn!(error = %Chain(&e), "abandoning the job failed");
                        JobEnd::Lost
                    }
                }
            }
            Ok(outcome) => self.finish(outcome.job_outcome()).await,
            Err(engine::Error::Store(store::Error::FlowNotFound(_))) if revert => {
                // Asked to revert a run that was never created: nothing ran, nothing to undo.
                tracing::info!("the job's run never started: nothing to revert");
                self.finish(never_started(flow_id)).await
            }
            Err(engine::Error::Store(store::Error::FlowNotFound(_))) if job.deadline.is_some() => {
                // The deadline passed before any run was made: none ever will be.
                tracing::warn!("the job's deadline passed before its run started");
                self.finish(json!({
                    "flow": flow_id,
                    "state": null,
                    "deadline": "passed before the run started",
                }))
                .await
            }
            Err(engine::Error::Halted(_)) => {
                // Halted by this conductor's shutdown (a lost claim was handled above): the
                // engine writes nothing more, so the job can go to another conductor at once,
                // as a suspended one does. A hand-back is no stall.
                match self.board.abandon(fence).await {
                    Ok(()) => tracing::info!("flow halted at shutdown, job handed back"),
                    Err(e) => tracing::warn!(error = %e, "handing the halted job back failed"),
                }
                JobEnd::Halted
            }
            Err(e) => self.on_engine_error(e).await,
        }
    }

    async fn on_engine_error(&self, e: engine::Error) -> JobEnd {
        match e {
            engine::Error::Store(store::Error::Fenced { .. }) => {
                tracing::warn!("claim lost: a write was fenced");
                JobEnd::Lost
            }
            engine::Error::Halted(_) => JobEnd::Halted,
            engine::Error::Store(store::Error::TooNew {
                version, supported, ..
            }) => {
                // A newer baton wrote the run (during an upgrade, say). Parking it would need
                // an operator; handing it back would have the conductors of this version claim
                // it in turn as fast as they can. Left claimed without heartbeats, it goes to
                // whoever claims it when its lease runs out: in time, a conductor that can
                // read it.
                tracing::warn!(
                    version,
                    supported,
                    attempts = self.claim.job.attempts,
                    "the run holds data of a newer version of baton: leaving the job to a \
                     conductor that can read it"
                );
                // This claim is no crash: say so, or the job would look like a poison job
                // to the next conductor of this version.
                if let Err(e) = self
                    .board
                    .heartbeat(self.claim.fence, self.options.lease, true)
                    .await
                {
                    tracing::debug!(error = %e, "could not reset the job's stall count");
                }
                JobEnd::LeftForNewer
            }
            engine::Error::Store(e @ store::Error::CorruptDatabase(_)) => {
                // Not the run's fault, nor its end: the job is not consumed. Another conductor
                // takes it over when its lease runs out, once the database is repaired.
                self.fatal.report(e.into(), "flow cannot run");
                JobEnd::Halted
            }
            engine::Error::Store(e) if e.is_transient() => {
                // The store went away (the engine retries its own writes; this came from around
                // them, e.g. creating the flow): hand the job back rather than record a failure.
                tracing::warn!(error = %Chain(&e), "store unavailable: handing the job back");
                match self.board.abandon(self.claim.fence).await {
                    Ok(()) => JobEnd::Abandoned,
                    Err(_) => JobEnd::Lost,
                }
            }
            e => {
                // Not the flow's own end, and not something waiting fixes: the run stays as
                // stored, for an operator.
                let kind = match &e {
                    engine::Error::FlowMismatch { .. } => "definition",
                    engine::Error::Store(_) => "store",
                    _ => "engine",
                };
                tracing::error!(error = %Chain(&e), "flow cannot go on: parking the job");
                self.park(park_reason(kind, &e)).await
            }
        }
    }

    /// Whether the job was consumed under this claim (by the run's last step): a heartbeat
    /// that finds the claim gone then lost nothing.
    async fn consumed_by_this_claim(&self) -> bool {
        matches!(
            self.board.get(self.claim.fence.job).await,
            Ok(job) if job.state == crate::JobState::Complete && job.token == self.claim.fence.token
        )
    }

    async fn park(&self, reason: Value) -> JobEnd {
        park(&*self.board, self.claim.fence, reason).await
    }

    async fn finish(&self, outcome: Value) -> JobEnd {
        match self.board.consume(self.claim.fence, outcome).await {
            Ok(()) => {
                tracing::info!("job consumed");
                JobEnd::Consumed
            }
            Err(e @ board::Error::CorruptDatabase(_)) => {
                self.fatal.report(e.into(), "consuming the job failed");
                JobEnd::Halted
            }
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "consuming the job failed");
                JobEnd::Lost
            }
        }
    }
}

/// Parks the job of `fence` with `reason`.
async fn park(board: &dyn JobBoard, fence: crate::Fence, reason: Value) -> JobEnd {
    match board.park(fence, reason).await {
        Ok(()) => {
            tracing::warn!("job parked: it waits for an operator");
            JobEnd::Parked
        }
        Err(e) => {
            // Lost, or the board cannot be reached: whoever claims the job next meets the
            // same reason (or the stall count) and parks it.
            tracing::warn!(error = %e, "parking the job failed");
            JobEnd::Lost
        }
    }
}

/// Confirms a run's claim for its tasks ([`crate::TaskContext::confirm_claim`]) with a
/// heartbeat: the claim is renewed, and holds for a lease (less the self-fencing margin) from
/// when it was asked. A lost claim halts the run.
#[derive(Debug)]
struct ClaimCheckByHeartbeat {
    board: Arc<dyn JobBoard>,
    lease: std::time::Duration,
    margin: std::time::Duration,
    control: Control,
    lost: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl ClaimCheck for ClaimCheckByHeartbeat {
    async fn confirm(&self, fence: crate::Fence) -> Result<ClaimHeld, ClaimError> {
        let sent = tokio::time::Instant::now();
        match self.board.heartbeat(fence, self.lease, false).await {
            Ok(_) => Ok(ClaimHeld::until(
                sent.checked_add(self.lease.saturating_sub(self.margin))
                    .unwrap_or(sent),
            )),
            Err(e @ board::Error::ClaimLost { .. }) => {
                tracing::warn!("a task found the claim lost: halting the flow");
                self.lost.store(true, Ordering::SeqCst);
                self.control.halt();
                Err(ClaimError::Lost {
                    job: fence.job,
                    reason: e.to_string(),
                })
            }
            Err(e) => Err(ClaimError::Unconfirmed {
                job: fence.job,
                reason: Chain(&e).to_string(),
            }),
        }
    }
}
