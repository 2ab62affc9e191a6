use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use baton_core::{RevertContext, Task, TaskContext, TaskError};
use serde_json::{json, Value};

/// Which method of a task was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `execute`.
    Execute,
    /// `revert`.
    Revert,
}

/// Where in the call the record was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The call began.
    Start,
    /// The call returned `Ok`.
    Ok,
    /// The call returned an error.
    Err,
}

/// One recorded moment of a task call.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The atom.
    pub atom: String,
    /// `execute` or `revert`.
    pub action: Action,
    /// Start or end.
    pub phase: Phase,
    /// The attempt (from the context).
    pub attempt: u32,
    /// The idempotency key (from the context).
    pub key: String,
    /// The inputs the call saw.
    pub inputs: BTreeMap<String, Value>,
    /// For a revert: the result it was given.
    pub result: Option<Value>,
    /// For a revert: whether it was given a failure.
    pub had_failure: bool,
}

/// A shared, ordered record of task calls: the side-effect log of the tests.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Call>>>);

impl Log {
    /// An empty log.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, call: Call) {
        self.0.lock().unwrap().push(call);
    }

    /// Every record, in order.
    #[must_use]
    pub fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    /// Atom names, in order, of the records matching `action` and `phase`.
    #[must_use]
    pub fn sequence(&self, action: Action, phase: Phase) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.action == action && c.phase == phase)
            .map(|c| c.atom)
            .collect()
    }

    /// How many times each atom's `action` returned `Ok`.
    #[must_use]
    pub fn successes(&self, action: Action) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for c in self.calls() {
            if c.action == action && c.phase == Phase::Ok {
                *out.entry(c.atom).or_default() += 1;
            }
        }
        out
    }

    /// The records of one atom.
    #[must_use]
    pub fn of(&self, atom: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.atom == atom)
            .collect()
    }
}

type Predicate = Arc<dyn Fn(&TaskContext) -> bool + Send + Sync>;

/// A task that records its calls in a [`Log`] and does what the test tells it.
///
/// By default `execute` returns `{"atom": name, "inputs": {...}}` (so data flow is visible in
/// results) and `revert` succeeds.
#[derive(Clone)]
pub struct Probe {
    log: Log,
    result: Option<Value>,
    fail: Option<Predicate>,
    revert_fails: bool,
    revert_transient: bool,
    delay: Duration,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("result", &self.result)
            .field("fails", &self.fail.is_some())
            .field("revert_fails", &self.revert_fails)
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl Probe {
    /// A probe recording into `log`.
    #[must_use]
    pub fn new(log: &Log) -> Self {
        Self {
            log: log.clone(),
            result: None,
            fail: None,
            revert_fails: false,
            revert_transient: false,
            delay: Duration::ZERO,
        }
    }

    /// Returns `value` from `execute`.
    #[must_use]
    pub fn returns(mut self, value: Value) -> Self {
        self.result = Some(value);
        self
    }

    /// Always fails `execute`, with an error marked retryable (so retry controllers retry it).
    #[must_use]
    pub fn fails(self) -> Self {
        self.fails_when(|_| true)
    }

    /// Fails `execute` when `pred` holds for the call's context, with an error marked
    /// retryable (so retry controllers retry it).
    #[must_use]
    pub fn fails_when(
        mut self,
        pred: impl Fn(&TaskContext) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.fail = Some(Arc::new(pred));
        self
    }

    /// Fails `revert` (with a fatal error).
    #[must_use]
    pub fn revert_fails(mut self) -> Self {
        self.revert_fails = true;
        self
    }

    /// Fails `revert` with an error marked retryable (so a revert retry policy retries it).
    #[must_use]
    pub fn revert_fails_transiently(mut self) -> Self {
        self.revert_fails = true;
        self.revert_transient = true;
        self
    }

    /// Sleeps this long in `execute` before finishing.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

fn inputs_of(ctx: &TaskContext, names: &[String]) -> BTreeMap<String, Value> {
    names
        .iter()
        .filter_map(|n| ctx.input_value(n).map(|v| (n.clone(), v.clone())))
        .collect()
}

struct Rec<'a> {
    log: &'a Log,
    atom: String,
    action: Action,
    attempt: u32,
    key: String,
    inputs: BTreeMap<String, Value>,
    result: Option<Value>,
    had_failure: bool,
}

impl Rec<'_> {
    fn at(&self, phase: Phase) {
        self.log.push(Call {
            atom: self.atom.clone(),
            action: self.action,
            phase,
            attempt: self.attempt,
            key: self.key.clone(),
            inputs: self.inputs.clone(),
            result: self.result.clone(),
            had_failure: self.had_failure,
        });
    }
}

#[async_trait]
impl Task for Probe {
    async fn execute(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        let names: Vec<String> = ctx.inputs().keys().cloned().collect();
        let rec = Rec {
            log: &self.log,
            atom: ctx.atom().to_owned(),
            action: Action::Execute,
            attempt: ctx.attempt(),
            key: ctx.idempotency_key(),
            inputs: inputs_of(&ctx, &names),
            result: None,
            had_failure: false,
        };
        rec.at(Phase::Start);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.fail.as_ref().is_some_and(|f| f(&ctx)) {
            rec.at(Phase::Err);
            return Err(TaskError::msg(format!("{} failed on purpose", ctx.atom())).retryable());
        }
        let value = self
            .result
            .clone()
            .unwrap_or_else(|| json!({ "atom": ctx.atom(), "inputs": rec.inputs }));
        rec.at(Phase::Ok);
        Ok(value)
    }

    async fn revert(&self, ctx: RevertContext) -> Result<(), TaskError> {
        let rec = Rec {
            log: &self.log,
            atom: ctx.atom().to_owned(),
            action: Action::Revert,
            attempt: 0,
            key: ctx.idempotency_key(),
            inputs: BTreeMap::new(),
            result: ctx.result().cloned(),
            had_failure: ctx.failure().is_some(),
        };
        rec.at(Phase::Start);
        if self.revert_fails {
            rec.at(Phase::Err);
            let err = TaskError::msg(format!("{} revert failed on purpose", rec.atom));
            return Err(if self.revert_transient {
                err.retryable()
            } else {
                err
            });
        }
        rec.at(Phase::Ok);
        Ok(())
    }
}
