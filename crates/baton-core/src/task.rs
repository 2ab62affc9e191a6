//! Tasks: the units of work, and the context they run in.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::failure::{Failure, TaskError};
use crate::ids::FlowId;

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

/// What every atom run can see: who it is and what it was given.
#[derive(Debug, Clone)]
pub(crate) struct AtomScope {
    pub(crate) flow: FlowId,
    pub(crate) atom: Arc<str>,
    pub(crate) index: usize,
    pub(crate) attempt: u32,
    pub(crate) round: u32,
    pub(crate) inputs: Arc<HashMap<String, Value>>,
}

impl AtomScope {
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

    /// Which start of `execute` this is, from 1. Grows when a crashed run is resumed.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.scope.attempt
    }

    /// A key that stays the same for every re-run of this `execute` after a crash, so an
    /// external system can recognise a repeated request. A retry controller that reverts and
    /// re-runs the atom starts a new round, with a new key: the earlier work was undone.
    #[must_use]
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.scope.flow, self.scope.atom, self.scope.round
        )
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
}
