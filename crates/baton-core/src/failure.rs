//! Failures are data: what went wrong in an atom, stored with the atom and shown to operators.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why an atom failed, as stored in the flow's record.
///
/// A `Failure` round-trips through JSON unchanged; it is what `revert` receives when the atom it
/// reverts had failed, and what [`Outcome`](crate::Outcome) reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What happened, in one line.
    pub message: String,
    /// The chain of underlying causes, outermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<String>,
    /// The atom that failed.
    pub atom: String,
    /// The attempt of the atom that failed (1-based).
    pub attempt: u32,
    /// Whether the failure was declared transient by the task. The built-in retry controllers
    /// retry only such failures.
    pub retryable: bool,
    /// How long the task asked to wait before it is tried again
    /// ([`TaskError::retry_after`]). A retry controller that retries waits at least this
    /// long, or its own backoff if that is longer. Stored as whole milliseconds
    /// (`retry_after_ms`, rounded up); failures stored by earlier versions read as none.
    #[serde(
        default,
        rename = "retry_after_ms",
        with = "millis",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_after: Option<Duration>,
    /// What kind of failure this is.
    pub kind: FailureKind,
}

/// An optional duration as whole milliseconds, rounded up (so a wait is never shortened) and
/// saturated at `u64::MAX`.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    // serde's `with` hands the field by reference.
    #[allow(clippy::ref_option)]
    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000);
                serializer.serialize_u64(u64::try_from(ms).unwrap_or(u64::MAX))
            }
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(deserializer)?.map(Duration::from_millis))
    }
}

/// The kind of a [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The task's `execute` returned an error.
    Execute,
    /// The task's `revert` returned an error.
    Revert,
    /// The task panicked.
    Panic,
    /// An input the atom requires could not be found or decoded.
    Input,
    /// The atom's result did not contain a symbol it declares to provide, or was too large.
    Result,
    /// The task ran past its time limit ([`Atom::timeout`](crate::Atom::timeout)) and was
    /// cancelled, or the run's [deadline](crate::model::Deadline) passed while it ran.
    Timeout,
    /// The task was cancelled by a request to cancel its run
    /// ([`Engine::cancel`](crate::Engine::cancel), or a job's cancel request).
    Cancelled,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (atom {}, attempt {})",
            self.message, self.atom, self.attempt
        )?;
        for cause in &self.causes {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

/// The error a task returns from `execute` or `revert`.
///
/// Any `std::error::Error` converts into it with `?`, keeping its cause chain, so task code reads
/// like ordinary Rust. Mark a transient error with [`TaskError::retryable`] or
/// [`TaskError::retry_after`] so retry controllers and operators can tell it from a fatal one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    message: String,
    causes: Vec<String>,
    retry: Retryability,
}

/// Whether a task error is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retryability {
    /// Retrying cannot help.
    Fatal,
    /// A transient error; retrying may help.
    Retryable,
    /// A transient error; retry no sooner than after this delay.
    RetryAfter(Duration),
}

impl TaskError {
    /// An error with a message and no cause; fatal unless marked otherwise.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            causes: Vec::new(),
            retry: Retryability::Fatal,
        }
    }

    /// Marks the error transient.
    #[must_use]
    pub fn retryable(mut self) -> Self {
        self.retry = Retryability::Retryable;
        self
    }

    /// Marks the error transient, with a delay before the next attempt: it is stored with the
    /// failure ([`Failure::retry_after`]), and a retry controller that retries waits at least
    /// this long (or its own backoff, if longer), across a resume.
    #[must_use]
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry = Retryability::RetryAfter(delay);
        self
    }

    /// Marks the error fatal.
    #[must_use]
    pub fn fatal(mut self) -> Self {
        self.retry = Retryability::Fatal;
        self
    }

    /// Adds context in front of the message; the old message becomes the first cause.
    #[must_use]
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        let old = std::mem::replace(&mut self.message, context.to_string());
        self.causes.insert(0, old);
        self
    }

    /// Appends an underlying cause.
    #[must_use]
    pub fn with_cause(mut self, cause: impl fmt::Display) -> Self {
        self.causes.push(cause.to_string());
        self
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How retryable the error is.
    #[must_use]
    pub fn retryability(&self) -> Retryability {
        self.retry
    }

    pub(crate) fn into_failure(self, atom: &str, attempt: u32, kind: FailureKind) -> Failure {
        Failure {
            message: self.message,
            causes: self.causes,
            atom: atom.to_owned(),
            attempt,
            retryable: !matches!(self.retry, Retryability::Fatal),
            retry_after: match self.retry {
                Retryability::RetryAfter(delay) => Some(delay),
                _ => None,
            },
            kind,
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for cause in &self.causes {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for TaskError {
    fn from(err: E) -> Self {
        let mut causes = Vec::new();
        let mut source = err.source();
        while let Some(s) = source {
            causes.push(s.to_string());
            source = s.source();
        }
        Self {
            message: err.to_string(),
            causes,
            retry: Retryability::Fatal,
        }
    }
}

/// Converts errors into [`TaskError`]s marked retryable or fatal, in one call at the `?`.
pub trait ResultExt<T> {
    /// Converts the error, marking it transient.
    ///
    /// # Errors
    /// The converted error, if `self` is an error.
    fn retryable(self) -> Result<T, TaskError>;
    /// Converts the error, marking it fatal.
    ///
    /// # Errors
    /// The converted error, if `self` is an error.
    fn fatal(self) -> Result<T, TaskError>;
}

impl<T, E: Into<TaskError>> ResultExt<T> for Result<T, E> {
    fn retryable(self) -> Result<T, TaskError> {
        self.map_err(|e| e.into().retryable())
    }

    fn fatal(self) -> Result<T, TaskError> {
        self.map_err(|e| e.into().fatal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn task_error_keeps_the_cause_chain() {
        let err: TaskError = Outer(std::io::Error::other("disk full")).into();
        let f = err
            .retryable()
            .into_failure("write", 2, FailureKind::Execute);
        assert_eq!(f.message, "outer");
        assert_eq!(f.causes, vec!["disk full".to_owned()]);
        assert!(f.retryable);
        assert_eq!(f.to_string(), "outer (atom write, attempt 2): disk full");
    }

    #[test]
    fn retry_after_is_kept_in_whole_milliseconds_rounded_up() {
        let f = TaskError::msg("throttled")
            .retry_after(Duration::from_micros(1500))
            .into_failure("api", 1, FailureKind::Execute);
        assert!(f.retryable);
        assert_eq!(f.retry_after, Some(Duration::from_micros(1500)));
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["retry_after_ms"], 2);
        let back: Failure = serde_json::from_value(json).unwrap();
        assert_eq!(back.retry_after, Some(Duration::from_millis(2)));
        let f = TaskError::msg("throttled")
            .retry_after(Duration::MAX)
            .into_failure("api", 1, FailureKind::Execute);
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["retry_after_ms"], u64::MAX);
    }

    /// Failures stored before `retry_after` existed read as having none, and a failure without
    /// one is written as before.
    #[test]
    fn failures_without_retry_after_read_and_write_as_before() {
        let old = r#"{"message":"boom","atom":"a","attempt":1,"retryable":true,"kind":"execute"}"#;
        let f: Failure = serde_json::from_str(old).unwrap();
        assert_eq!(f.retry_after, None);
        assert_eq!(serde_json::to_string(&f).unwrap(), old);
    }

    #[test]
    fn failure_round_trips_through_json() {
        let f = TaskError::msg("boom")
            .context("creating server")
            .into_failure("server-1", 1, FailureKind::Execute);
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["kind"], "execute");
        assert_eq!(serde_json::from_value::<Failure>(json).unwrap(), f);
    }
}
