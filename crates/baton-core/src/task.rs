//! Tasks: the units of work, and the context they run in.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::failure::{Failure, TaskError};
use crate::ids::{Fence, FlowId, JobId};

/// A unit of work that can be undone.
///
/// `execute` does the work and returns its result as JSON; the engine stores the result before
/// any successor starts. `revert` undoes the work when the flow fails; it receives the task's
/// result (or its failure, if `execute` failed) and the same inputs.
///
/// Both may run more than once: after a crash, an `execute` that was under way runs again with
/// a larger [`TaskContext::attempt`] and the same [`TaskContext::idempotency_key`], so make the
/// work idempotent or de-duplicate it with the key. A `revert` may likewise be repeated.
///
/// # Example
///
/// ```
/// use baton_core::{Task, TaskContext, RevertContext, TaskError};
/// use serde_json::{json, Value};
///
/// struct CreateNetwork;
///
/// #[async_trait::async_trait]
/// impl Task for CreateNetwork {
///     async fn execute(&self, ctx: TaskContext) -> Result<Value, TaskError> {
///         let cidr: String = ctx.input("cidr")?;
///         Ok(json!({ "id": format!("net-{}", ctx.idempotency_key()), "cidr": cidr }))
///     }
///
///     async fn revert(&self, ctx: RevertContext) -> Result<(), TaskError> {
///         if let Some(net) = ctx.result() {
///             println!("deleting {}", net["id"]);
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Task: Send + Sync + 'static {
    /// Does the work.
    ///
    /// # Errors
    /// A [`TaskError`]; the engine records it as the atom's [`Failure`] and lets the flow's
    /// retry controllers decide what happens next.
    async fn execute(&self, ctx: TaskContext) -> Result<Value, TaskError>;

    /// Undoes the work. The default does nothing.
    ///
    /// # Errors
    /// A [`TaskError`]; the atom ends in `REVERT_FAILURE` and the flow in `FAILURE`.
    async fn revert(&self, ctx: RevertContext) -> Result<(), TaskError> {
        let _ = ctx;
        Ok(())
    }
}

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;
type ExecFn = dyn Fn(TaskContext) -> BoxFuture<Result<Value, TaskError>> + Send + Sync;
type RevertFn = dyn Fn(RevertContext) -> BoxFuture<Result<(), TaskError>> + Send + Sync;

/// A task made of closures; see [`Atom::from_fn`](crate::Atom::from_fn).
pub struct FnTask {
    execute: Box<ExecFn>,
    revert: Option<Box<RevertFn>>,
}

impl FnTask {
    /// A task whose `execute` is `f`.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
    {
        Self {
            execute: Box::new(move |ctx| Box::pin(f(ctx))),
            revert: None,
        }
    }

    /// Sets the task's `revert` to `f`.
    #[must_use]
    pub fn on_revert<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(RevertContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        self.revert = Some(Box::new(move |ctx| Box::pin(f(ctx))));
        self
    }
}

impl fmt::Debug for FnTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnTask")
            .field("revert", &self.revert.is_some())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Task for FnTask {
    async fn execute(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        (self.execute)(ctx).await
    }

    async fn revert(&self, ctx: RevertContext) -> Result<(), TaskError> {
        match &self.revert {
            Some(f) => f(ctx).await,
            None => Ok(()),
        }
    }
}

/// A progress report from a running task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProgressReport {
    pub(crate) atom: usize,
    pub(crate) progress: f64,
}

/// Confirms, when a task asks, that the claim its run is driven under still holds (see
/// [`TaskContext::confirm_claim`]). A [`Conductor`](crate::Conductor) gives one to every run
/// it drives, which asks the job board (a heartbeat); give your own to
/// [`RunOptions::claim_check`](crate::RunOptions::claim_check) when you drive runs under
/// claims yourself.
#[async_trait]
pub trait ClaimCheck: Send + Sync + fmt::Debug + 'static {
    /// Asks whoever grants the claim on `fence` whether it still holds.
    ///
    /// # Errors
    /// [`ClaimError::Lost`] if it does not (the check should then also stop the run);
    /// [`ClaimError::Unconfirmed`] if the answer could not be had.
    async fn confirm(&self, fence: Fence) -> Result<ClaimHeld, ClaimError>;
}

/// A confirmation that a run's claim holds, from [`TaskContext::confirm_claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimHeld {
    until: Option<tokio::time::Instant>,
}

impl ClaimHeld {
    /// The claim holds until `until` (on the monotonic clock) at least.
    #[must_use]
    pub fn until(until: tokio::time::Instant) -> Self {
        Self { until: Some(until) }
    }

    /// The run is under no claim: nobody else can take it, so it holds for good.
    #[must_use]
    pub fn unclaimed() -> Self {
        Self { until: None }
    }

    /// How long, from now, the claim is sure to hold: `None` for a run under no claim. Once
    /// this has run out, no side effect is covered by the confirmation any more.
    #[must_use]
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.until
            .map(|u| u.saturating_duration_since(tokio::time::Instant::now()))
    }
}

/// Why [`TaskContext::confirm_claim`] could not confirm the claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// The claim is gone: another owner may be running the job. Do nothing more; the run is
    /// being stopped.
    #[error("the claim on job {job} is lost: {reason}")]
    Lost {
        /// The job.
        job: JobId,
        /// What the board said.
        reason: String,
    },
    /// The claim may still hold, but that could not be confirmed now (the board could not be
    /// reached, or the run has no way to ask). Treat it as not confirmed.
    #[error("the claim on job {job} could not be confirmed: {reason}")]
    Unconfirmed {
        /// The job.
        job: JobId,
        /// Why.
        reason: String,
    },
}

/// The claim a run is driven under: its fence, and how to confirm it.
#[derive(Debug)]
pub(crate) struct ClaimHandle {
    pub(crate) fence: Fence,
    pub(crate) check: Option<Arc<dyn ClaimCheck>>,
}

/// What every atom run can see: who it is and what it was given.
#[derive(Debug, Clone)]
pub(crate) struct AtomScope {
    pub(crate) flow: FlowId,
    pub(crate) atom: Arc<str>,
    pub(crate) index: usize,
    pub(crate) attempt: u32,
    pub(crate) round: u32,
    pub(crate) inputs: Arc<HashMap<String, Value>>,
    /// Fires when this call is to stop (see [`TaskContext::cancellation`]).
    pub(crate) cancel: CancellationToken,
    /// When this call runs out of time, if it has a limit.
    pub(crate) deadline: Option<DateTime<Utc>>,
    pub(crate) claim: Option<Arc<ClaimHandle>>,
}

impl AtomScope {
    async fn confirm_claim(&self) -> Result<ClaimHeld, ClaimError> {
        let Some(claim) = &self.claim else {
            return Ok(ClaimHeld::unclaimed());
        };
        match &claim.check {
            Some(check) => check.confirm(claim.fence).await,
            None => Err(ClaimError::Unconfirmed {
                job: claim.fence.job,
                reason: "the run was given a fence but no claim check".into(),
            }),
        }
    }

    fn input<T: DeserializeOwned>(&self, name: &str) -> Result<T, TaskError> {
        let value = self.inputs.get(name).ok_or_else(|| {
            TaskError::msg(format!(
                "atom {:?} asked for input {name:?}, which it does not require",
                self.atom
            ))
        })?;
        T::deserialize(value).map_err(|e| {
            TaskError::msg(format!(
                "input {name:?} of atom {:?} does not have the expected type",
                self.atom
            ))
            .with_cause(e)
        })
    }
}

/// The context of one `execute` call.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) scope: AtomScope,
    pub(crate) progress: Option<mpsc::UnboundedSender<ProgressReport>>,
}

impl TaskContext {
    /// Reads a required input (after `rebind`, by the name the task asked for) as `T`.
    ///
    /// # Errors
    /// A fatal [`TaskError`] naming the atom and the input when the atom does not require it or
    /// its value does not deserialize as `T`.
    pub fn input<T: DeserializeOwned>(&self, name: &str) -> Result<T, TaskError> {
        self.scope.input(name)
    }

    /// The raw JSON of an input, if the atom requires it.
    #[must_use]
    pub fn input_value(&self, name: &str) -> Option<&Value> {
        self.scope.inputs.get(name)
    }

    /// Every input, by the name the task reads it with.
    #[must_use]
    pub fn inputs(&self) -> &HashMap<String, Value> {
        &self.scope.inputs
    }

    /// The flow run this task belongs to.
    #[must_use]
    pub fn flow_id(&self) -> FlowId {
        self.scope.flow
    }

    /// The atom's name.
    #[must_use]
    pub fn atom(&self) -> &str {
        &self.scope.atom
    }

    /// Which start of `execute` this is, from 1. Grows when a crashed run is resumed, and when
    /// the atom's retry policy ([`Atom::retries`](crate::Atom::retries)) calls it again.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.scope.attempt
    }

    /// A key that stays the same for every re-run of this `execute` after a crash, and for
    /// every call its retry policy makes, so an external system can recognise a repeated
    /// request. A retry controller that reverts and re-runs the atom starts a new round, with
    /// a new key: the earlier work was undone.
    #[must_use]
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.scope.flow, self.scope.atom, self.scope.round
        )
    }

    /// Fires when this call should stop: its time limit ran out, the run was cancelled (with
    /// [`Engine::cancel`](crate::Engine::cancel) or a job's cancel request), its deadline
    /// passed, or it was halted (its claim lost, its conductor gone past the drain timeout).
    /// The engine drops the call's future right after, so an `await` in the task is simply
    /// never resumed; the token is for work the future does not own: a thread, a spawned
    /// task, a child process, a request to cancel on a remote system.
    #[must_use]
    pub fn cancellation(&self) -> CancellationToken {
        self.scope.cancel.clone()
    }

    /// Whether [`cancellation`](Self::cancellation) has fired.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.scope.cancel.is_cancelled()
    }

    /// Completes when [`cancellation`](Self::cancellation) fires.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.scope.cancel.cancelled()
    }

    /// When this call runs out of time, if it has a limit ([`Atom::timeout`](crate::Atom::timeout)),
    /// as stored with the attempt: pass it on to remote calls.
    #[must_use]
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.scope.deadline
    }

    /// The fence (job and token) of the claim the run is driven under, if it is: give it to
    /// an external system that can refuse requests from an owner whose claim has moved on
    /// (the token only grows).
    #[must_use]
    pub fn fence(&self) -> Option<Fence> {
        self.scope.claim.as_ref().map(|c| c.fence)
    }

    /// Asks the job board, now, whether the run's claim still holds: call it just before a
    /// side effect that must not happen twice. An owner that was paused or cut off may have
    /// lost its claim without knowing; this finds out.
    ///
    /// # Errors
    /// [`ClaimError::Lost`] if another owner may have the job now (the run is being
    /// stopped: return, doing nothing more); [`ClaimError::Unconfirmed`] if the board could
    /// not say. A run under no claim is always confirmed.
    pub async fn confirm_claim(&self) -> Result<ClaimHeld, ClaimError> {
        self.scope.confirm_claim().await
    }

    /// Reports progress between 0.0 and 1.0 (clamped). The engine persists it, throttled, and
    /// emits it as an event.
    pub fn progress(&self, progress: f64) {
        if let Some(tx) = &self.progress {
            let progress = if progress.is_nan() {
                0.0
            } else {
                progress.clamp(0.0, 1.0)
            };
            // The engine may have stopped listening (the run is ending); progress is advisory.
            let _ = tx.send(ProgressReport {
                atom: self.scope.index,
                progress,
            });
        }
    }
}

/// The context of one `revert` call.
#[derive(Debug, Clone)]
pub struct RevertContext {
    pub(crate) scope: AtomScope,
    pub(crate) result: Option<Value>,
    pub(crate) failure: Option<Failure>,
}

impl RevertContext {
    /// Reads a required input as `T`, as [`TaskContext::input`] does.
    ///
    /// # Errors
    /// As [`TaskContext::input`].
    pub fn input<T: DeserializeOwned>(&self, name: &str) -> Result<T, TaskError> {
        self.scope.input(name)
    }

    /// The result `execute` returned, if it succeeded.
    #[must_use]
    pub fn result(&self) -> Option<&Value> {
        self.result.as_ref()
    }

    /// The result `execute` returned, as `T`; `None` if it did not succeed.
    ///
    /// # Errors
    /// A [`TaskError`] if the result does not deserialize as `T`.
    pub fn result_as<T: DeserializeOwned>(&self) -> Result<Option<T>, TaskError> {
        self.result
            .as_ref()
            .map(|v| T::deserialize(v).map_err(TaskError::from))
            .transpose()
    }

    /// Why `execute` failed, if it did. `None` with no result means `execute` was interrupted
    /// (its process died) and it is unknown how far it got.
    #[must_use]
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// The flow run.
    #[must_use]
    pub fn flow_id(&self) -> FlowId {
        self.scope.flow
    }

    /// The atom's name.
    #[must_use]
    pub fn atom(&self) -> &str {
        &self.scope.atom
    }

    /// The idempotency key the reverted `execute` ran with.
    #[must_use]
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.scope.flow, self.scope.atom, self.scope.round
        )
    }

    /// Fires when this call should stop: its time limit ran out, the run was cancelled (with
    /// [`Engine::cancel`](crate::Engine::cancel) or a job's cancel request), its deadline
    /// passed, or it was halted (its claim lost, its conductor gone past the drain timeout).
    /// The engine drops the call's future right after, so an `await` in the task is simply
    /// never resumed; the token is for work the future does not own: a thread, a spawned
    /// task, a child process, a request to cancel on a remote system.
    #[must_use]
    pub fn cancellation(&self) -> CancellationToken {
        self.scope.cancel.clone()
    }

    /// Whether [`cancellation`](Self::cancellation) has fired.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.scope.cancel.is_cancelled()
    }

    /// Completes when [`cancellation`](Self::cancellation) fires.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.scope.cancel.cancelled()
    }

    /// When this call runs out of time, if it has a limit ([`Atom::timeout`](crate::Atom::timeout)),
    /// as stored with the attempt: pass it on to remote calls.
    #[must_use]
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.scope.deadline
    }

    /// The fence (job and token) of the claim the run is driven under, if it is: give it to
    /// an external system that can refuse requests from an owner whose claim has moved on
    /// (the token only grows).
    #[must_use]
    pub fn fence(&self) -> Option<Fence> {
        self.scope.claim.as_ref().map(|c| c.fence)
    }

    /// Asks the job board, now, whether the run's claim still holds: call it just before a
    /// side effect that must not happen twice. An owner that was paused or cut off may have
    /// lost its claim without knowing; this finds out.
    ///
    /// # Errors
    /// [`ClaimError::Lost`] if another owner may have the job now (the run is being
    /// stopped: return, doing nothing more); [`ClaimError::Unconfirmed`] if the board could
    /// not say. A run under no claim is always confirmed.
    pub async fn confirm_claim(&self) -> Result<ClaimHeld, ClaimError> {
        self.scope.confirm_claim().await
    }
}
