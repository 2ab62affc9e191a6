//! Typed tasks: the trait, its errors, closures, and the adapter that runs a typed task as a
//! [`Task`] (so the engine needs nothing new for it).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::wire::Shape;
use crate::failure::TaskError;
use crate::task::{RevertContext, Task, TaskContext};

/// A task with typed input, output and error: what [`TypedFlow::add`](super::TypedFlow::add)
/// takes.
///
/// The engine gathers the input from the values the atom is wired to (see
/// [`Args`](super::Args)), deserializes it into [`Input`](TypedTask::Input), and stores the
/// [`Output`](TypedTask::Output) as JSON, as it stores any task's result. `revert` gets the
/// same input and the output `execute` returned, if it succeeded (`None` if it failed or was
/// interrupted: find what to undo by [`RevertContext::idempotency_key`] then). Like every task,
/// both may run more than once (see [`Task`]).
///
/// An input that does not fit its type (a value an untyped atom made, say) fails the atom
/// with a fatal error naming it and where in the value it does not fit, without calling
/// `execute`; such an atom is then reverted without calling `revert`, as nothing ran.
///
/// ```
/// use baton_core::typed::{Transient, TypedTask};
/// use baton_core::{RevertContext, TaskContext};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
/// struct Network { id: String, cidr: String }
///
/// #[derive(Debug, thiserror::Error)]
/// enum CloudError {
///     #[error("the cloud is busy")]
///     Busy,
///     #[error("quota exceeded")]
///     Quota,
/// }
///
/// impl Transient for CloudError {
///     fn is_transient(&self) -> bool {
///         matches!(self, CloudError::Busy)
///     }
/// }
///
/// struct CreateNetwork;
///
/// #[async_trait::async_trait]
/// impl TypedTask for CreateNetwork {
///     type Input = String; // the CIDR
///     type Output = Network;
///     type Error = CloudError;
///
///     async fn execute(&self, cidr: String, ctx: &TaskContext) -> Result<Network, CloudError> {
///         Ok(Network { id: format!("net-{}", ctx.idempotency_key()), cidr })
///     }
///
///     async fn revert(
///         &self,
///         _cidr: String,
///         network: Option<Network>,
///         _ctx: &RevertContext,
///     ) -> Result<(), CloudError> {
///         if let Some(net) = network {
///             println!("deleting {}", net.id);
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait TypedTask: Send + Sync + 'static {
    /// What `execute` and `revert` are given. A tuple when the atom is wired to several
    /// values (`(Network, String)`), a `Vec` for a list of them, `()` for none.
    type Input: DeserializeOwned + Send + 'static;
    /// What `execute` returns: stored as JSON, and given to the atoms wired to it.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The task's own error type: a [`TaskError`], or any error type implementing
    /// [`Transient`] to say which of its values are worth retrying.
    type Error: IntoTaskError;

    /// Does the work.
    ///
    /// # Errors
    /// The task's error; the engine records it as the atom's failure, retryable if
    /// [`IntoTaskError`] says so, and the atom's retry policy or the flow's retry controllers
    /// decide what happens next.
    async fn execute(
        &self,
        input: Self::Input,
        ctx: &TaskContext,
    ) -> Result<Self::Output, Self::Error>;

    /// Undoes the work. The default does nothing.
    ///
    /// # Errors
    /// The task's error; the atom ends `REVERT_FAILURE` (unless its revert retry policy calls
    /// it again).
    async fn revert(
        &self,
        input: Self::Input,
        result: Option<Self::Output>,
        ctx: &RevertContext,
    ) -> Result<(), Self::Error> {
        let _ = (input, result, ctx);
        Ok(())
    }
}

/// Says which values of an error type are transient (worth retrying) and how long to wait
/// before retrying them. Implement it for your own error types to use them as a
/// [`TypedTask::Error`]; both methods have defaults (fatal, no wait), so
/// `impl Transient for MyError {}` makes every value fatal.
///
/// The error is turned into a [`TaskError`] keeping its message and its chain of sources;
/// a transient value becomes [retryable](TaskError::retryable) (or
/// [`retry_after`](TaskError::retry_after), when it gives a wait).
pub trait Transient: std::error::Error + Send + Sync + 'static {
    /// Whether retrying may help. The default: no.
    fn is_transient(&self) -> bool {
        false
    }

    /// How long to wait before the next attempt, if this value says (a rate limit's
    /// `Retry-After`, say). A value with a wait is transient, whatever
    /// [`is_transient`](Transient::is_transient) says. The default: none.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// A task that cannot fail.
impl Transient for std::convert::Infallible {}

/// Turns a typed task's error into the [`TaskError`] the engine records. Implemented for
/// [`TaskError`] itself and for every error type implementing [`Transient`].
pub trait IntoTaskError: Send + 'static {
    /// The task error, marked retryable (or not) as the value says.
    fn into_task_error(self) -> TaskError;
}

impl IntoTaskError for TaskError {
    fn into_task_error(self) -> TaskError {
        self
    }
}

impl<E: Transient> IntoTaskError for E {
    fn into_task_error(self) -> TaskError {
        let transient = self.is_transient();
        let wait = self.retry_after();
        let err = TaskError::from(self);
        match wait {
            Some(delay) => err.retry_after(delay),
            None if transient => err.retryable(),
            None => err,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ExecFn<I, O, E> = dyn Fn(I, TaskContext) -> BoxFuture<Result<O, E>> + Send + Sync;
type RevertFn<I, O, E> =
    dyn Fn(I, Option<O>, RevertContext) -> BoxFuture<Result<(), E>> + Send + Sync;

/// A typed task made of closures: see [`from_fn`].
pub struct FnTyped<I, O, E> {
    execute: Box<ExecFn<I, O, E>>,
    revert: Option<Box<RevertFn<I, O, E>>>,
}

/// A typed task whose `execute` is the closure `f`, given the input and the task's context
/// (and whose `revert` does nothing, unless [`FnTyped::on_revert`] sets one).
///
/// Name the input's type in the closure; when the closure never returns an error, name the
/// error type too (`Ok::<_, TaskError>(..)`), as Rust cannot guess it.
///
/// ```
/// use baton_core::typed::{atom, from_fn, TypedFlow};
/// use baton_core::TaskError;
///
/// let mut flow = TypedFlow::linear("double");
/// let n = flow.input::<u32>("n");
/// let doubled = flow.add(
///     atom("double", from_fn(|n: u32, _ctx| async move { Ok::<_, TaskError>(n * 2) })),
///     &n,
/// );
/// # let _ = doubled;
/// ```
pub fn from_fn<I, O, E, F, Fut>(f: F) -> FnTyped<I, O, E>
where
    F: Fn(I, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
{
    FnTyped {
        execute: Box::new(move |input, ctx| Box::pin(f(input, ctx))),
        revert: None,
    }
}

impl<I, O, E> FnTyped<I, O, E> {
    /// Sets the task's `revert` to `f`, given the input, the output `execute` returned (if it
    /// succeeded) and the revert's context.
    #[must_use]
    pub fn on_revert<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(I, Option<O>, RevertContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        self.revert = Some(Box::new(move |input, result, ctx| {
            Box::pin(f(input, result, ctx))
        }));
        self
    }
}

impl<I, O, E> fmt::Debug for FnTyped<I, O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnTyped")
            .field("revert", &self.revert.is_some())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<I, O, E> TypedTask for FnTyped<I, O, E>
where
    I: DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: IntoTaskError,
{
    type Input = I;
    type Output = O;
    type Error = E;

    async fn execute(&self, input: I, ctx: &TaskContext) -> Result<O, E> {
        (self.execute)(input, ctx.clone()).await
    }

    async fn revert(&self, input: I, result: Option<O>, ctx: &RevertContext) -> Result<(), E> {
        match &self.revert {
            Some(f) => f(input, result, ctx.clone()).await,
            None => Ok(()),
        }
    }
}

/// Runs a typed task as a [`Task`]: decodes the input from the atom's inputs (named by their
/// position in `shape`), encodes the output, converts the errors.
pub(crate) struct Adapter<T> {
    pub(crate) task: T,
    pub(crate) shape: Shape,
}

impl<T> fmt::Debug for Adapter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adapter")
            .field("task", &std::any::type_name::<T>())
            .field("shape", &self.shape)
            .finish()
    }
}

#[async_trait]
impl<T: TypedTask> Task for Adapter<T> {
    async fn execute(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        let input: T::Input = self.shape.decode(ctx.atom(), ctx.inputs())?;
        let output = self
            .task
            .execute(input, &ctx)
            .await
            .map_err(IntoTaskError::into_task_error)?;
        serde_json::to_value(output).map_err(|e| {
            TaskError::msg(format!(
                "the result of atom {:?} does not serialize as JSON",
                ctx.atom()
            ))
            .with_cause(e)
        })
    }

    async fn revert(&self, ctx: RevertContext) -> Result<(), TaskError> {
        let input: T::Input = match self.shape.decode(ctx.atom(), &ctx.scope.inputs) {
            Ok(input) => input,
            // The stored values an atom reads do not change, so `execute` could not decode
            // them either and never ran: there is nothing to undo.
            Err(e) if ctx.result().is_none() => {
                tracing::debug!(error = %e, "input does not fit its type: nothing to revert");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let result = match ctx.result() {
            Some(value) => Some(
                serde_path_to_error::deserialize::<_, T::Output>(value).map_err(|e| {
                    TaskError::msg(format!(
                        "the stored result of atom {:?} does not fit its output type, at `{}`",
                        ctx.atom(),
                        e.path()
                    ))
                    .with_cause(e.into_inner())
                })?,
            ),
            None => None,
        };
        self.task
            .revert(input, result, &ctx)
            .await
            .map_err(IntoTaskError::into_task_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Retryability;

    #[derive(Debug, thiserror::Error)]
    enum Cloud {
        #[error("busy")]
        Busy,
        #[error("throttled")]
        Throttled(#[source] std::io::Error),
        #[error("quota exceeded")]
        Quota,
    }

    impl Transient for Cloud {
        fn is_transient(&self) -> bool {
            matches!(self, Cloud::Busy)
        }

        fn retry_after(&self) -> Option<Duration> {
            matches!(self, Cloud::Throttled(_)).then_some(Duration::from_secs(2))
        }
    }

    #[test]
    fn an_errors_own_type_says_what_is_transient() {
        assert_eq!(
            Cloud::Busy.into_task_error().retryability(),
            Retryability::Retryable
        );
        let throttled = Cloud::Throttled(std::io::Error::other("slow down")).into_task_error();
        assert_eq!(
            throttled.retryability(),
            Retryability::RetryAfter(Duration::from_secs(2))
        );
        assert_eq!(
            throttled.to_string(),
            "throttled: slow down",
            "the cause is kept"
        );
        assert_eq!(
            Cloud::Quota.into_task_error().retryability(),
            Retryability::Fatal
        );
        let task_error = TaskError::msg("x").retryable();
        assert_eq!(task_error.clone().into_task_error(), task_error);
    }
}
