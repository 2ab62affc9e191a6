//! Retry controllers: what a (sub)flow does when one of its atoms fails.
//!
//! A flow given a controller with [`Flow::retry`](crate::Flow::retry) gets an extra atom that
//! runs before everything else in the flow. When an atom inside fails, the engine asks the
//! innermost controller for a [`Decision`]:
//!
//! - [`Decision::Retry`]: revert the controller's subflow, then run it again (after the
//!   controller's backoff delay, or the delay the failed task asked for with
//!   [`TaskError::retry_after`] if longer; the time is persisted so a resumed engine honours
//!   it);
//! - [`Decision::Revert`]: give up on this subflow and ask the enclosing controller; with none
//!   left, the whole flow reverts;
//! - [`Decision::RevertAll`]: revert the whole flow at once.
//!
//! A controller retries a *group*: the subflow is undone and run again as a whole. To retry one
//! flaky call in place, give its atom a [`RetryPolicy`] instead
//! ([`Atom::retries`](crate::Atom::retries), and [`Atom::revert_retries`](crate::Atom::revert_retries)
//! for its `revert`): no subflow and no controller atom, and the work is not undone between
//! attempts. The two compose: an atom whose policy runs out fails as it would without one, and
//! the controllers around it decide as before (a controller's retry starts the atom's policy
//! afresh).

use std::fmt;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};

use crate::failure::{Failure, TaskError};
use crate::model::RetryAttempt;

/// What to do after a failure in a controller's subflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Revert the subflow and run it again.
    Retry,
    /// Revert the subflow and let the enclosing controller decide.
    Revert,
    /// Revert the whole flow.
    RevertAll,
}

/// The attempts of a controller's subflow so far, including the one that just failed.
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    pub(crate) attempts: &'a [RetryAttempt],
}

impl<'a> History<'a> {
    /// How many attempts have been made (the failing one included, when deciding), counting
    /// those the stored history left out ([`RetryAttempt::dropped_before`]).
    #[must_use]
    pub fn len(&self) -> usize {
        self.attempts.iter().fold(0usize, |n, a| {
            n.saturating_add(1)
                .saturating_add(usize::try_from(a.dropped_before).unwrap_or(usize::MAX))
        })
    }

    /// Whether no attempt has been made yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.attempts.is_empty()
    }

    /// The attempts the history keeps, oldest first: all of them, or, after many, the first
    /// and the latest ones (see [`RetryAttempt`]), so use [`History::len`] to count them.
    #[must_use]
    pub fn attempts(&self) -> &'a [RetryAttempt] {
        self.attempts
    }

    /// The failures of the latest attempt.
    #[must_use]
    pub fn last_failures(&self) -> &'a [Failure] {
        self.attempts
            .last()
            .map(|a| a.failures.as_slice())
            .unwrap_or_default()
    }

    /// Whether retrying may help: no failure of the latest attempt is fatal (every one was
    /// marked retryable by its task, see [`Failure::retryable`]). The built-in controllers do
    /// not retry otherwise.
    #[must_use]
    pub fn retryable(&self) -> bool {
        self.last_failures().iter().all(|f| f.retryable)
    }
}

/// The inputs and history a controller's `execute` sees.
#[derive(Debug)]
pub struct RetryContext<'a> {
    pub(crate) history: History<'a>,
    pub(crate) inputs: &'a std::collections::HashMap<String, Value>,
}

impl<'a> RetryContext<'a> {
    /// The attempts so far (empty before the first).
    #[must_use]
    pub fn history(&self) -> History<'a> {
        self.history
    }

    /// A required input's raw JSON.
    #[must_use]
    pub fn input(&self, name: &str) -> Option<&'a Value> {
        self.inputs.get(name)
    }
}

/// Decides what happens when a subflow fails. See the [module documentation](self).
///
/// Controllers are pure functions of their history: the engine may call them again after a
/// crash and must get the same answer, so keep all state in the history, never in `self`.
pub trait RetryController: Send + Sync + 'static {
    /// Runs before each attempt of the subflow; its result is the controller atom's result and
    /// can be provided to the subflow as a symbol (e.g. the next value to try).
    ///
    /// # Errors
    /// A [`TaskError`]: the controller atom fails and the enclosing controller decides.
    fn execute(&self, ctx: &RetryContext<'_>) -> Result<Value, TaskError>;

    /// Decides what to do after a failure in the subflow. The context's history includes the
    /// attempt that just failed; [`History::retryable`] says whether its failures were all
    /// marked retryable (the built-in controllers retry only then).
    fn on_failure(&self, ctx: &RetryContext<'_>) -> Decision;

    /// How long to wait before the next attempt, after `on_failure` said [`Decision::Retry`].
    /// The engine waits the longer of this and the failure's
    /// [`retry_after`](Failure::retry_after), and stores the time of the next attempt.
    fn delay(&self, ctx: &RetryContext<'_>) -> Duration {
        let _ = ctx;
        Duration::ZERO
    }
}

/// Exponential backoff with jitter, for controllers that retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: f64,
}

impl Backoff {
    /// No wait at all.
    #[must_use]
    pub const fn none() -> Self {
        Self {
            base: Duration::ZERO,
            max: Duration::ZERO,
            jitter: 0.0,
        }
    }

    /// `base`, then doubling on each attempt, never more than `max`; no jitter.
    #[must_use]
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: 0.0,
        }
    }

    /// Randomises each delay by up to `fraction` (0.0 to 1.0) of it, downwards, so that many
    /// flows failing together do not retry in lockstep.
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// The delay after `attempts` failed attempts (1 for the first failure).
    #[must_use]
    pub fn delay(&self, attempts: usize) -> Duration {
        let exp = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(31);
        let delay = self.base.saturating_mul(1u32 << exp).min(self.max);
        if self.jitter > 0.0 {
            let cut = rand::rng().random_range(0.0..=self.jitter);
            delay.mul_f64(1.0 - cut)
        } else {
            delay
        }
    }
}

/// Which failures a [`RetryPolicy`] retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RetryOn {
    /// Only failures marked transient ([`Failure::retryable`]: a [`TaskError`] marked
    /// `.retryable()` or `.retry_after(..)`, a typed task's error that says it is
    /// [transient](crate::typed::Transient)) and attempts cut at their time limit.
    #[default]
    Transient,
    /// Every failure of the call, fatal ones and panics included; not a missing input, nor a
    /// task stopped by a cancel or by its run's deadline, which no retry can help.
    All,
}

/// How to retry one atom's `execute` ([`Atom::retries`](crate::Atom::retries)) or `revert`
/// ([`Atom::revert_retries`](crate::Atom::revert_retries)) in place, without a subflow.
///
/// After a failed call the policy decides whether to call again: if the failure is one it
/// retries ([`RetryOn`]) and fewer than [`attempts`](RetryPolicy::attempts) calls have
/// failed, the engine waits the policy's delay, or the failure's
/// [`retry_after`](Failure::retry_after) if that is longer, and calls again. The time of the
/// next call is stored with the atom before the engine waits, so an engine that resumes the
/// run after a crash waits only what is left of it.
///
/// Only calls that failed count: a call interrupted by a crash is run again (at least once)
/// without using up an attempt. The count starts afresh when a retry controller runs the atom
/// again in a new round.
///
/// ```
/// use std::time::Duration;
/// use baton_core::retry::{Backoff, RetryPolicy};
///
/// // Up to 5 calls in all: waits of about 1 s, 2 s, 4 s, 8 s (each cut by up to 20 %), at most 30 s.
/// let policy = RetryPolicy::attempts(5)
///     .backoff(Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30)).jitter(0.2));
/// assert_eq!(policy.max_attempts(), 5);
/// assert!(policy.delay(4) <= Duration::from_secs(8));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct RetryPolicy {
    attempts: u32,
    backoff: Backoff,
    on: RetryOn,
}

impl RetryPolicy {
    /// The backoff a policy has unless given another: 1 s, doubling, at most 60 s, each wait
    /// cut by up to a fifth at random.
    pub const DEFAULT_BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
        jitter: 0.2,
    };

    /// At most `attempts` calls in all (at least 1: one call, no retry), retrying transient
    /// failures only, with [`RetryPolicy::DEFAULT_BACKOFF`].
    pub fn attempts(attempts: u32) -> Self {
        Self {
            attempts: attempts.max(1),
            backoff: Self::DEFAULT_BACKOFF,
            on: RetryOn::Transient,
        }
    }

    /// Waits `backoff` between calls ([`Backoff::none`] for no wait).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Retries every failure, not only transient ones (see [`RetryOn::All`]).
    pub fn retry_all(mut self) -> Self {
        self.on = RetryOn::All;
        self
    }

    /// Retries the failures `on` says.
    pub fn retry_on(mut self, on: RetryOn) -> Self {
        self.on = on;
        self
    }

    /// The most calls made in all.
    #[must_use]
    pub fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// Which failures are retried.
    #[must_use]
    pub fn retries_on(&self) -> RetryOn {
        self.on
    }

    /// The wait after `failed` failed calls (1 after the first): the backoff's, not counting
    /// a failure's own [`retry_after`](Failure::retry_after).
    #[must_use]
    pub fn delay(&self, failed: u32) -> Duration {
        self.backoff
            .delay(usize::try_from(failed).unwrap_or(usize::MAX))
    }

    /// Whether the policy retries `failure`, after `failed` failed calls (this one
    /// included), and if so after how long: the longer of the backoff and the failure's
    /// [`retry_after`](Failure::retry_after).
    #[must_use]
    pub fn next_delay(&self, failure: &Failure, failed: u32) -> Option<Duration> {
        use crate::failure::FailureKind;
        if failed >= self.attempts {
            return None;
        }
        let eligible = match failure.kind {
            // Nothing a second call could find: a missing input, a stop asked for.
            FailureKind::Input | FailureKind::Cancelled => false,
            FailureKind::Timeout => failure.retryable,
            _ => failure.retryable || self.on == RetryOn::All,
        };
        eligible.then(|| {
            self.delay(failed)
                .max(failure.retry_after.unwrap_or_default())
        })
    }
}

fn backoff_delay(backoff: Option<&Backoff>, ctx: &RetryContext<'_>) -> Duration {
    backoff.map_or(Duration::ZERO, |b| b.delay(ctx.history().len()))
}

/// Runs the subflow up to `n` times in all; then reverts (or reverts all). A failure that is not
/// [retryable](Failure::retryable) is not retried: the controller answers at once as it does
/// when out of attempts.
#[derive(Debug, Clone)]
pub struct Times {
    attempts: usize,
    then: Decision,
    backoff: Option<Backoff>,
}

impl Times {
    /// At most `attempts` attempts (at least one), then [`Decision::Revert`].
    #[must_use]
    pub fn new(attempts: usize) -> Self {
        Self {
            attempts: attempts.max(1),
            then: Decision::Revert,
            backoff: None,
        }
    }

    /// When out of attempts, revert the whole flow rather than only this subflow.
    #[must_use]
    pub fn revert_all(mut self) -> Self {
        self.then = Decision::RevertAll;
        self
    }

    /// Waits between attempts.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }
}

impl RetryController for Times {
    fn execute(&self, ctx: &RetryContext<'_>) -> Result<Value, TaskError> {
        Ok(json!(ctx.history().len() + 1))
    }

    fn on_failure(&self, ctx: &RetryContext<'_>) -> Decision {
        let history = ctx.history();
        if history.retryable() && history.len() < self.attempts {
            Decision::Retry
        } else {
            self.then
        }
    }

    fn delay(&self, ctx: &RetryContext<'_>) -> Duration {
        backoff_delay(self.backoff.as_ref(), ctx)
    }
}

fn next_value(values: &[Value], history: History<'_>) -> Result<Value, TaskError> {
    values.get(history.len()).cloned().ok_or_else(|| {
        TaskError::msg(format!(
            "no values left to try ({} tried)",
            history.len().min(values.len())
        ))
    })
}

fn for_each_decision(values: usize, history: History<'_>, then: Decision) -> Decision {
    if history.retryable() && history.len() < values {
        Decision::Retry
    } else {
        then
    }
}

/// Runs the subflow once per value, in order, until one attempt succeeds; the controller
/// provides the value of the current attempt. A failure that is not
/// [retryable](Failure::retryable) is not retried: the controller answers at once as it does
/// when out of values.
#[derive(Debug, Clone)]
pub struct ForEach {
    values: Vec<Value>,
    then: Decision,
    backoff: Option<Backoff>,
}

impl ForEach {
    /// Tries each of `values` in turn.
    pub fn new<I, V>(values: I) -> Self
    where
        I: IntoIterator<Item = V>,
        V: Into<Value>,
    {
        Self {
            values: values.into_iter().map(Into::into).collect(),
            then: Decision::Revert,
            backoff: None,
        }
    }

    /// When out of values, revert the whole flow rather than only this subflow.
    #[must_use]
    pub fn revert_all(mut self) -> Self {
        self.then = Decision::RevertAll;
        self
    }

    /// Waits between attempts.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }
}

impl RetryController for ForEach {
    fn execute(&self, ctx: &RetryContext<'_>) -> Result<Value, TaskError> {
        next_value(&self.values, ctx.history())
    }

    fn on_failure(&self, ctx: &RetryContext<'_>) -> Decision {
        for_each_decision(self.values.len(), ctx.history(), self.then)
    }

    fn delay(&self, ctx: &RetryContext<'_>) -> Duration {
        backoff_delay(self.backoff.as_ref(), ctx)
    }
}

/// Like [`ForEach`] (a failure that is not retryable is not retried either), with the values
/// taken from an input symbol (a JSON array) at run time.
/// The controller atom must require that symbol: `Atom::retry(name, ParameterizedForEach::new("images")).requires(["images"])`.
#[derive(Debug, Clone)]
pub struct ParameterizedForEach {
    symbol: String,
    then: Decision,
    backoff: Option<Backoff>,
}

impl ParameterizedForEach {
    /// Tries each value of the array input `symbol` in turn.
    #[must_use]
    pub fn new(symbol: impl Into<String>) -> Self {
        Self {
            symbol: symbol.into(),
            then: Decision::Revert,
            backoff: None,
        }
    }

    /// When out of values, revert the whole flow rather than only this subflow.
    #[must_use]
    pub fn revert_all(mut self) -> Self {
        self.then = Decision::RevertAll;
        self
    }

    /// Waits between attempts.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// The symbol the values come from.
    #[must_use]
    pub fn symbol(&self) -> &str {
        &self.symbol
    }
}

impl RetryController for ParameterizedForEach {
    fn execute(&self, ctx: &RetryContext<'_>) -> Result<Value, TaskError> {
        let values = ctx
            .input(&self.symbol)
            .ok_or_else(|| TaskError::msg(format!("input {:?} is missing", self.symbol)))?;
        let values = values.as_array().ok_or_else(|| {
            TaskError::msg(format!("input {:?} is not a JSON array", self.symbol))
        })?;
        next_value(values, ctx.history())
    }

    fn on_failure(&self, ctx: &RetryContext<'_>) -> Decision {
        let values = ctx
            .input(&self.symbol)
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        for_each_decision(values, ctx.history(), self.then)
    }

    fn delay(&self, ctx: &RetryContext<'_>) -> Duration {
        backoff_delay(self.backoff.as_ref(), ctx)
    }
}

/// Never retries: reverts the subflow and lets the enclosing controller decide.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysRevert;

impl RetryController for AlwaysRevert {
    fn execute(&self, _ctx: &RetryContext<'_>) -> Result<Value, TaskError> {
        Ok(Value::Null)
    }

    fn on_failure(&self, _ctx: &RetryContext<'_>) -> Decision {
        Decision::Revert
    }
}

/// Never retries: reverts the whole flow.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysRevertAll;

impl RetryController for AlwaysRevertAll {
    fn execute(&self, _ctx: &RetryContext<'_>) -> Result<Value, TaskError> {
        Ok(Value::Null)
    }

    fn on_failure(&self, _ctx: &RetryContext<'_>) -> Decision {
        Decision::RevertAll
    }
}

impl fmt::Debug for dyn RetryController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RetryController")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn attempts(n: usize) -> Vec<RetryAttempt> {
        (0..n)
            .map(|i| RetryAttempt::new(json!(i), vec![]))
            .collect()
    }

    fn decide(c: &dyn RetryController, n: usize, inputs: &HashMap<String, Value>) -> Decision {
        let h = attempts(n);
        c.on_failure(&RetryContext {
            history: History { attempts: &h },
            inputs,
        })
    }

    #[test]
    fn times_retries_until_out_of_attempts() {
        let none = HashMap::new();
        let t = Times::new(3);
        assert_eq!(decide(&t, 1, &none), Decision::Retry);
        assert_eq!(decide(&t, 2, &none), Decision::Retry);
        assert_eq!(decide(&t, 3, &none), Decision::Revert);
        assert_eq!(
            decide(&Times::new(1).revert_all(), 1, &none),
            Decision::RevertAll
        );
    }

    #[test]
    fn a_fatal_failure_is_answered_as_on_exhaustion() {
        let failure = |retryable| Failure {
            retryable,
            ..TaskError::msg("boom").into_failure("a", 1, crate::failure::FailureKind::Execute)
        };
        let history = |last: Vec<Failure>| {
            let mut h = attempts(1);
            h[0].failures = last;
            h
        };
        let inputs = HashMap::from([("xs".to_owned(), json!([1, 2, 3]))]);
        let backoff = Backoff::exponential(Duration::from_millis(1), Duration::from_millis(1));
        let controllers: [(&dyn RetryController, Decision); 4] = [
            (&Times::new(3), Decision::Revert),
            (
                &Times::new(3).backoff(backoff).revert_all(),
                Decision::RevertAll,
            ),
            (&ForEach::new([1, 2, 3]).backoff(backoff), Decision::Revert),
            (
                &ParameterizedForEach::new("xs").revert_all(),
                Decision::RevertAll,
            ),
        ];
        for (c, then) in controllers {
            for (last, expected) in [
                (vec![failure(true)], Decision::Retry),
                (vec![failure(false)], then),
                (vec![failure(true), failure(false)], then),
            ] {
                let h = history(last);
                let ctx = RetryContext {
                    history: History { attempts: &h },
                    inputs: &inputs,
                };
                assert_eq!(c.on_failure(&ctx), expected);
            }
        }
    }

    #[test]
    fn parameterized_for_each_counts_the_values_of_its_input() {
        let p = ParameterizedForEach::new("xs").revert_all();
        let inputs = HashMap::from([("xs".to_owned(), json!([1, 2]))]);
        assert_eq!(decide(&p, 1, &inputs), Decision::Retry);
        assert_eq!(decide(&p, 2, &inputs), Decision::RevertAll);
    }

    #[test]
    fn for_each_walks_its_values_then_gives_up() {
        let f = ForEach::new([json!("a"), json!("b")]);
        let inputs = HashMap::new();
        let h = attempts(1);
        let ctx = RetryContext {
            history: History { attempts: &h },
            inputs: &inputs,
        };
        assert_eq!(f.execute(&ctx).unwrap(), json!("b"));
        let h = attempts(2);
        let ctx = RetryContext {
            history: History { attempts: &h },
            inputs: &inputs,
        };
        assert!(f.execute(&ctx).is_err());
        assert_eq!(decide(&f, 2, &inputs), Decision::Revert);
    }

    #[test]
    fn a_policy_retries_what_it_says_as_often_as_it_says() {
        use crate::failure::FailureKind;
        let failure = |kind, retryable| Failure {
            retryable,
            ..TaskError::msg("boom").into_failure("a", 1, kind)
        };
        let policy = RetryPolicy::attempts(3).backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_millis(150),
        ));
        let transient = failure(FailureKind::Execute, true);
        assert_eq!(
            policy.next_delay(&transient, 1),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            policy.next_delay(&transient, 2),
            Some(Duration::from_millis(150)),
            "capped"
        );
        assert_eq!(policy.next_delay(&transient, 3), None, "out of attempts");
        let fatal = failure(FailureKind::Execute, false);
        assert_eq!(policy.next_delay(&fatal, 1), None, "transient only");
        assert!(policy.retry_all().next_delay(&fatal, 1).is_some());
        let panic = failure(FailureKind::Panic, false);
        assert!(policy.retry_all().next_delay(&panic, 1).is_some());
        for never in [FailureKind::Input, FailureKind::Cancelled] {
            let f = failure(never, true);
            assert_eq!(policy.retry_all().next_delay(&f, 1), None, "{never:?}");
        }
        // A timeout is retried if it is the atom's own limit (transient), not a deadline.
        assert!(policy
            .next_delay(&failure(FailureKind::Timeout, true), 1)
            .is_some());
        assert_eq!(
            policy
                .retry_all()
                .next_delay(&failure(FailureKind::Timeout, false), 1),
            None
        );
        // A task's `retry_after` wins when longer, and only then.
        let mut throttled = transient.clone();
        throttled.retry_after = Some(Duration::from_secs(3));
        assert_eq!(
            policy.next_delay(&throttled, 1),
            Some(Duration::from_secs(3))
        );
        throttled.retry_after = Some(Duration::from_millis(1));
        assert_eq!(
            policy.next_delay(&throttled, 1),
            Some(Duration::from_millis(100))
        );
        assert_eq!(RetryPolicy::attempts(0).max_attempts(), 1);
        assert_eq!(RetryPolicy::attempts(1).next_delay(&transient, 1), None);
        assert_eq!(
            RetryPolicy::attempts(2).retries_on(),
            RetryOn::Transient,
            "transient only by default"
        );
        let default = RetryPolicy::attempts(9);
        for failed in 1..9 {
            let d = default.delay(failed);
            assert!(d <= Duration::from_secs(60), "{d:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_only_shortens() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_millis(350));
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(350));
        assert_eq!(b.delay(1000), Duration::from_millis(350));
        let j = b.jitter(0.5);
        for _ in 0..100 {
            let d = j.delay(2);
            assert!(d <= Duration::from_millis(200) && d >= Duration::from_millis(100));
        }
    }
}
