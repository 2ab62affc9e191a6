//! Per-atom retry policies ([`Atom::retries`], [`Atom::revert_retries`]) on every store: what is
//! retried, how long the engine waits, what is stored, and that a wait survives a resume. A
//! backend's tests expand [`policies_conformance!`](crate::policies_conformance).
//!
//! The tasks here follow a script ([`Step`]): the n-th call of `execute` (or `revert`) does
//! what the n-th step says, the last step again past the end, and every call is recorded
//! ([`Calls`]) with its attempt, its idempotency key and when it began.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton_core::model::{Change, FlowSnapshot};
use baton_core::retry::{Backoff, RetryPolicy, Times};
use baton_core::store::Store;
use baton_core::{
    Atom, AtomState, CompiledFlow, Control, Engine, FailureKind, Flow, FlowId, FlowState,
    RevertContext, RunOptions, Task, TaskContext, TaskError,
};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// What one call of a scripted task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Succeeds.
    Ok,
    /// Fails with an error marked transient.
    Transient,
    /// Fails with a fatal error.
    Fatal,
    /// Fails with a transient error asking for this many milliseconds before the next call.
    RetryAfter(u64),
    /// Never returns (until its time limit cuts it).
    Hang,
}

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    /// The atom.
    pub atom: String,
    /// `execute` or `revert`.
    pub action: &'static str,
    /// The attempt the context gave (`execute` only; 0 for `revert`).
    pub attempt: u32,
    /// The idempotency key.
    pub key: String,
    /// When the call began, on the monotonic clock.
    pub began: Instant,
    /// When the call began, on the wall clock.
    pub began_at: DateTime<Utc>,
}

/// The calls of the scripted tasks of a case.
#[derive(Debug, Clone, Default)]
pub struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    /// Records a call and returns how many calls of `action` on `atom` there were before it.
    fn record(&self, call: Call) -> usize {
        let mut calls = self.0.lock().unwrap();
        let before = calls
            .iter()
            .filter(|c| c.atom == call.atom && c.action == call.action)
            .count();
        calls.push(call);
        before
    }

    /// The calls of `action` (`"execute"` or `"revert"`) on `atom`, in order.
    #[must_use]
    pub fn of(&self, atom: &str, action: &str) -> Vec<Call> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.atom == atom && c.action == action)
            .cloned()
            .collect()
    }
}

/// A task following a script for `execute` and one for `revert`.
#[derive(Debug, Clone)]
struct Scripted {
    calls: Calls,
    execute: Vec<Step>,
    revert: Vec<Step>,
}

fn scripted(calls: &Calls, execute: &[Step]) -> Scripted {
    Scripted {
        calls: calls.clone(),
        execute: execute.to_vec(),
        revert: vec![Step::Ok],
    }
}

impl Scripted {
    fn reverts(mut self, revert: &[Step]) -> Self {
        self.revert = revert.to_vec();
        self
    }

    async fn play(script: &[Step], n: usize, what: String) -> Result<(), TaskError> {
        let step = script.get(n).or(script.last()).copied().unwrap_or(Step::Ok);
        match step {
            Step::Ok => Ok(()),
            Step::Transient => {
                Err(TaskError::msg(format!("{what} failed (transient)")).retryable())
            }
            Step::Fatal => Err(TaskError::msg(format!("{what} failed (fatal)"))),
            Step::RetryAfter(ms) => Err(TaskError::msg(format!("{what} is throttled"))
                .retry_after(Duration::from_millis(ms))),
            Step::Hang => {
                std::future::pending::<()>().await;
                Ok(())
            }
        }
    }
}

#[async_trait]
impl Task for Scripted {
    async fn execute(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        let n = self.calls.record(Call {
            atom: ctx.atom().to_owned(),
            action: "execute",
            attempt: ctx.attempt(),
            key: ctx.idempotency_key(),
            began: Instant::now(),
            began_at: Utc::now(),
        });
        Self::play(&self.execute, n, format!("execute of {}", ctx.atom())).await?;
        Ok(json!(ctx.attempt()))
    }

    async fn revert(&self, ctx: RevertContext) -> Result<(), TaskError> {
        let n = self.calls.record(Call {
            atom: ctx.atom().to_owned(),
            action: "revert",
            attempt: 0,
            key: ctx.idempotency_key(),
            began: Instant::now(),
            began_at: Utc::now(),
        });
        Self::play(&self.revert, n, format!("revert of {}", ctx.atom())).await
    }
}

/// A flow of `first`, then a task that fails at once, fatally: `first` is reverted.
fn reverted_after(name: &str, first: Atom, calls: &Calls) -> CompiledFlow {
    Flow::linear(name)
        .add(first)
        .add(Atom::task("boom", scripted(calls, &[Step::Fatal])))
        .compile()
        .unwrap()
}

/// A policy of `attempts` calls with no wait between them.
fn at_once(attempts: u32) -> RetryPolicy {
    RetryPolicy::attempts(attempts).backoff(Backoff::none())
}

/// A policy of `attempts` calls, `ms` apart.
fn every(attempts: u32, ms: u64) -> RetryPolicy {
    let d = Duration::from_millis(ms);
    RetryPolicy::attempts(attempts).backoff(Backoff::exponential(d, d))
}

async fn start<S: Store + 'static>(store: S, flow: &CompiledFlow) -> (Engine, baton_core::Outcome) {
    let engine = Engine::new(store);
    let outcome = engine.start(flow, Default::default()).await.unwrap();
    (engine, outcome)
}

async fn stored(engine: &Engine, id: FlowId) -> FlowSnapshot {
    engine.store().load_flow(id).await.unwrap()
}

fn atom<'a>(snapshot: &'a FlowSnapshot, name: &str) -> &'a baton_core::model::AtomRecord {
    snapshot
        .atoms
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("no atom {name:?}"))
}

/// The transitions of `atom`, as `(from, to, attempt)`.
async fn transitions(engine: &Engine, id: FlowId, name: &str) -> Vec<(AtomState, AtomState, u32)> {
    engine
        .store()
        .history(id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|t| match t.change {
            Change::Atom {
                atom,
                from,
                to,
                attempt,
            } if atom == name => Some((from, to, attempt)),
            _ => None,
        })
        .collect()
}

/// A transient failure is retried in place (same idempotency key, a larger attempt) until the
/// call succeeds; a fatal one is not retried (unless the policy retries all failures). Each
/// retry shows in the atom's transitions (`FAILURE -> RETRYING -> RUNNING`) and its earlier
/// failures in its retry history and in the outcome.
pub async fn transient_failures_are_retried_and_fatal_ones_are_not<S: Store + Clone + 'static>(
    store: S,
) {
    let calls = Calls::default();
    let flow = Flow::linear("transient-only")
        .add(
            Atom::task(
                "flaky",
                scripted(&calls, &[Step::Transient, Step::Transient, Step::Ok]),
            )
            .retries(at_once(5)),
        )
        .add(Atom::task("broken", scripted(&calls, &[Step::Fatal, Step::Ok])).retries(at_once(5)))
        .compile()
        .unwrap();
    let (engine, outcome) = start(store.clone(), &flow).await;
    assert_eq!(outcome.state, FlowState::Reverted, "{outcome:?}");

    let flaky = calls.of("flaky", "execute");
    let attempts: Vec<u32> = flaky.iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, [1, 2, 3], "retried until it succeeded");
    assert!(
        flaky.iter().all(|c| c.key == flaky[0].key),
        "one idempotency key"
    );
    assert_eq!(
        calls.of("broken", "execute").len(),
        1,
        "a fatal failure is not retried"
    );

    let failures: Vec<(&str, u32, bool)> = outcome
        .failures
        .iter()
        .map(|f| (f.atom.as_str(), f.attempt, f.retryable))
        .collect();
    assert_eq!(
        failures,
        [("flaky", 1, true), ("flaky", 2, true), ("broken", 1, false)]
    );

    let snapshot = stored(&engine, outcome.flow).await;
    let record = atom(&snapshot, "flaky");
    assert_eq!((record.state, record.attempt), (AtomState::Reverted, 3));
    let history: Vec<&Value> = record.retry_history.iter().map(|h| &h.value).collect();
    assert_eq!(
        history,
        [
            &json!({"retry": "execute", "failed": 1}),
            &json!({"retry": "execute", "failed": 2})
        ]
    );
    assert_eq!(record.retry_history[1].failures[0].attempt, 2);
    assert_eq!(
        record.failure, None,
        "the call that succeeded left no failure"
    );
    assert_eq!(record.retry_at, None);
    let moves = transitions(&engine, outcome.flow, "flaky").await;
    let retried = [
        (AtomState::Running, AtomState::Failure, 1),
        (AtomState::Failure, AtomState::Retrying, 1),
        (AtomState::Retrying, AtomState::Running, 2),
    ];
    assert!(
        moves.windows(3).any(|w| w == retried),
        "the retry is in the history: {moves:?}"
    );

    // A policy that retries every failure retries a fatal one too.
    let calls = Calls::default();
    let flow = Flow::linear("retry-all")
        .add(
            Atom::task("broken", scripted(&calls, &[Step::Fatal, Step::Ok]))
                .retries(at_once(2).retry_all()),
        )
        .compile()
        .unwrap();
    let (_, outcome) = start(store, &flow).await;
    assert_eq!(outcome.state, FlowState::Success, "{outcome:?}");
    assert_eq!(calls.of("broken", "execute").len(), 2);
}

/// A task's `retry_after` is honoured when longer than the policy's backoff, and stored with
/// its failure.
pub async fn a_tasks_retry_after_is_honoured<S: Store + 'static>(store: S) {
    let calls = Calls::default();
    let flow = Flow::linear("retry-after")
        .add(
            Atom::task(
                "throttled",
                scripted(&calls, &[Step::RetryAfter(600), Step::Ok]),
            )
            .retries(every(3, 10)),
        )
        .compile()
        .unwrap();
    let (engine, outcome) = start(store, &flow).await;
    assert_eq!(outcome.state, FlowState::Success, "{outcome:?}");
    let c = calls.of("throttled", "execute");
    assert_eq!(c.len(), 2);
    let gap = c[1].began - c[0].began;
    assert!(gap >= Duration::from_millis(590), "waited only {gap:?}");
    assert!(gap < Duration::from_secs(10), "waited {gap:?}");
    let snapshot = stored(&engine, outcome.flow).await;
    let failure = &atom(&snapshot, "throttled").retry_history[0].failures[0];
    assert_eq!(failure.retry_after, Some(Duration::from_millis(600)));
}

/// A policy that runs out of attempts fails the atom as if it had none: with no controller the
/// flow reverts; under a retry controller the subflow is retried, and each round starts the
/// policy afresh, with a new idempotency key.
pub async fn exhausted_attempts_revert_the_flow<S: Store + Clone + 'static>(store: S) {
    let calls = Calls::default();
    let flow = Flow::linear("exhausted")
        .add(Atom::task("first", scripted(&calls, &[Step::Ok])))
        .add(Atom::task("doomed", scripted(&calls, &[Step::Transient])).retries(every(3, 20)))
        .compile()
        .unwrap();
    let (engine, outcome) = start(store.clone(), &flow).await;
    assert_eq!(outcome.state, FlowState::Reverted, "{outcome:?}");
    assert_eq!(calls.of("doomed", "execute").len(), 3);
    assert_eq!(
        calls.of("first", "revert").len(),
        1,
        "the flow was reverted"
    );
    let doomed: Vec<u32> = outcome
        .failures
        .iter()
        .filter(|f| f.atom == "doomed")
        .map(|f| f.attempt)
        .collect();
    assert_eq!(doomed, [1, 2, 3]);
    let snapshot = stored(&engine, outcome.flow).await;
    let record = atom(&snapshot, "doomed");
    assert_eq!((record.state, record.attempt), (AtomState::Reverted, 3));
    assert_eq!(record.retry_history.len(), 2);
    assert_eq!(record.failure.as_ref().map(|f| f.attempt), Some(3));

    // Under a controller: two rounds of two calls each.
    let calls = Calls::default();
    let flow = Flow::linear("rounds")
        .retry(Atom::retry("again", Times::new(2)))
        .add(Atom::task("doomed", scripted(&calls, &[Step::Transient])).retries(at_once(2)))
        .compile()
        .unwrap();
    let (_, outcome) = start(store, &flow).await;
    assert_eq!(outcome.state, FlowState::Reverted, "{outcome:?}");
    let c = calls.of("doomed", "execute");
    let attempts: Vec<u32> = c.iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, [1, 2, 3, 4], "two calls per round, two rounds");
    assert_eq!(c[0].key, c[1].key, "one key within a round");
    assert_eq!(c[2].key, c[3].key);
    assert_ne!(c[1].key, c[2].key, "a new round, a new key");
    assert_eq!(outcome.failures.len(), 4, "{:?}", outcome.failures);
}

/// A failed revert is called again, as its policy says, until it succeeds; its failures are
/// kept in the atom's history. A revert whose policy runs out ends `REVERT_FAILURE`.
pub async fn a_failed_revert_is_retried_until_it_succeeds<S: Store + Clone + 'static>(store: S) {
    let calls = Calls::default();
    let flow = reverted_after(
        "undo-again",
        Atom::task(
            "undo",
            scripted(&calls, &[Step::Ok]).reverts(&[
                Step::Transient,
                Step::RetryAfter(50),
                Step::Ok,
            ]),
        )
        .revert_retries(every(5, 20)),
        &calls,
    );
    let (engine, outcome) = start(store.clone(), &flow).await;
    assert_eq!(outcome.state, FlowState::Reverted, "{outcome:?}");
    let reverts = calls.of("undo", "revert");
    assert_eq!(reverts.len(), 3);
    assert!(reverts[2].began - reverts[1].began >= Duration::from_millis(45));
    let snapshot = stored(&engine, outcome.flow).await;
    let record = atom(&snapshot, "undo");
    assert_eq!(record.state, AtomState::Reverted);
    assert_eq!(record.revert_failure, None);
    assert_eq!(record.retry_at, None);
    let history: Vec<&Value> = record.retry_history.iter().map(|h| &h.value).collect();
    assert_eq!(
        history,
        [
            &json!({"retry": "revert", "failed": 1}),
            &json!({"retry": "revert", "failed": 2})
        ]
    );
    assert!(record
        .retry_history
        .iter()
        .all(|h| h.failures[0].kind == FailureKind::Revert));
    let undo_failures = outcome.failures.iter().filter(|f| f.atom == "undo").count();
    assert_eq!(undo_failures, 2, "{:?}", outcome.failures);

    // Out of attempts: REVERT_FAILURE, and the run FAILURE.
    let calls = Calls::default();
    let flow = reverted_after(
        "undo-never",
        Atom::task(
            "stuck",
            scripted(&calls, &[Step::Ok]).reverts(&[Step::Transient]),
        )
        .revert_retries(at_once(3)),
        &calls,
    );
    let (engine, outcome) = start(store, &flow).await;
    assert_eq!(outcome.state, FlowState::Failure, "{outcome:?}");
    assert_eq!(calls.of("stuck", "revert").len(), 3);
    let snapshot = stored(&engine, outcome.flow).await;
    let record = atom(&snapshot, "stuck");
    assert_eq!(record.state, AtomState::RevertFailure);
    assert_eq!(record.retry_history.len(), 2);
    assert!(record.revert_failure.is_some());
}

/// A call cut at its time limit is a transient failure: the policy retries it, for `execute`
/// and for `revert` alike.
pub async fn a_timed_out_call_is_retried<S: Store + 'static>(store: S) {
    let calls = Calls::default();
    let limit = Duration::from_millis(300);
    let flow = reverted_after(
        "timed-out",
        Atom::task(
            "slow",
            scripted(&calls, &[Step::Hang, Step::Ok]).reverts(&[Step::Hang, Step::Ok]),
        )
        .timeout(limit)
        .retries(at_once(2))
        .revert_retries(at_once(2)),
        &calls,
    );
    let (engine, outcome) = start(store, &flow).await;
    assert_eq!(outcome.state, FlowState::Reverted, "{outcome:?}");
    assert_eq!(calls.of("slow", "execute").len(), 2);
    assert_eq!(calls.of("slow", "revert").len(), 2);
    let snapshot = stored(&engine, outcome.flow).await;
    let record = atom(&snapshot, "slow");
    assert_eq!(record.state, AtomState::Reverted);
    let kinds: Vec<FailureKind> = record
        .retry_history
        .iter()
        .map(|h| h.failures[0].kind)
        .collect();
    assert_eq!(kinds, [FailureKind::Timeout, FailureKind::Timeout]);
    assert!(record.retry_history.iter().all(|h| h.failures[0].retryable));
}

/// Runs `flow`'s stored run `id` on a new engine until `stop` holds for the stored run, then
/// halts it (a crash, as far as the store can tell) and returns what is stored.
async fn run_until<S: Store + Clone + 'static>(
    store: &S,
    flow: &CompiledFlow,
    id: FlowId,
    stop: impl Fn(&FlowSnapshot) -> bool,
) -> FlowSnapshot {
    let control = Control::new();
    let run = tokio::spawn({
        let (engine, flow, control) = (Engine::new(store.clone()), flow.clone(), control.clone());
        async move {
            engine
                .run_with(&flow, id, RunOptions::new().control(control))
                .await
        }
    });
    for _ in 0..1000 {
        let snapshot = store.load_flow(id).await.unwrap();
        if stop(&snapshot) {
            control.halt();
            let halted = run.await.unwrap();
            assert!(halted.is_err(), "halted: {halted:?}");
            return store.load_flow(id).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the run never got there");
}

/// Whole microseconds, what every store keeps of a time.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap()
}

/// The wait before a retried `execute` is stored (`RETRYING`, `retry_at`) before the engine
/// waits: an engine halted mid-wait and a new one resuming the run waits only what is left of
/// it, not the whole backoff again.
pub async fn a_backoff_survives_a_resume<S: Store + Clone + 'static>(store: S) {
    let calls = Calls::default();
    let backoff = BACKOFF_MS;
    let flow = Flow::linear("backoff-resume")
        .add(
            Atom::task("flaky", scripted(&calls, &[Step::Transient, Step::Ok]))
                .retries(every(3, backoff)),
        )
        .compile()
        .unwrap();
    let id = Engine::new(store.clone())
        .create(&flow, Default::default())
        .await
        .unwrap();
    let snapshot = run_until(&store, &flow, id, |s| {
        s.atoms[0].state == AtomState::Retrying
    })
    .await;
    let record = &snapshot.atoms[0];
    let failed_at = record.finished_at.expect("the failure's time");
    let retry_at = record
        .retry_at
        .expect("the time of the next call is stored");
    let wait = (retry_at - failed_at).to_std().unwrap();
    assert!(
        wait >= Duration::from_millis(backoff - 5) && wait < Duration::from_millis(backoff + 500),
        "{wait:?}"
    );
    assert_eq!(calls.of("flaky", "execute").len(), 1);

    let (outcome, second) = resume_mid_wait(&store, &flow, id, &calls, "execute", retry_at).await;
    assert_eq!(outcome.state, FlowState::Success, "{outcome:?}");
    assert_eq!(second.attempt, 2);
}

/// Likewise for a revert: the failed revert's time of retry is stored with the atom, still
/// `REVERTING`, and a resumed engine waits only what is left.
pub async fn a_revert_backoff_survives_a_resume<S: Store + Clone + 'static>(store: S) {
    let calls = Calls::default();
    let flow = reverted_after(
        "revert-backoff-resume",
        Atom::task(
            "undo",
            scripted(&calls, &[Step::Ok]).reverts(&[Step::Transient, Step::Ok]),
        )
        .revert_retries(every(3, BACKOFF_MS)),
        &calls,
    );
    let id = Engine::new(store.clone())
        .create(&flow, Default::default())
        .await
        .unwrap();
    let snapshot = run_until(&store, &flow, id, |s| s.atoms[0].retry_at.is_some()).await;
    let record = &snapshot.atoms[0];
    assert_eq!(record.state, AtomState::Reverting);
    let retry_at = record.retry_at.unwrap();
    let failure = record
        .revert_failure
        .as_ref()
        .expect("the failure is stored");
    assert!(failure.retryable && failure.kind == FailureKind::Revert);
    assert_eq!(calls.of("undo", "revert").len(), 1);

    let (outcome, _) = resume_mid_wait(&store, &flow, id, &calls, "revert", retry_at).await;
    assert_eq!(outcome.state, FlowState::Reverted, "{outcome:?}");
}

/// The wait of the resume cases.
const BACKOFF_MS: u64 = 2_000;

/// Sleeps well into a stored wait, resumes the run with a new engine, and checks that the
/// second call of `action` on the flow's first atom came at `retry_at`, not a whole backoff
/// after the resume. Returns the outcome and that call.
async fn resume_mid_wait<S: Store + Clone + 'static>(
    store: &S,
    flow: &CompiledFlow,
    id: FlowId,
    calls: &Calls,
    action: &str,
    retry_at: DateTime<Utc>,
) -> (baton_core::Outcome, Call) {
    tokio::time::sleep(Duration::from_millis(800)).await;
    let resumed = Instant::now();
    let outcome = Engine::new(store.clone()).run(flow, id).await.unwrap();
    let atom = flow.atom_names().next().unwrap();
    let c = calls.of(atom, action);
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(
        micros(c[1].began_at) >= micros(retry_at) - chrono::Duration::milliseconds(5),
        "called at {}, before {retry_at}",
        c[1].began_at
    );
    let after_resume = c[1].began - resumed;
    assert!(
        after_resume < Duration::from_millis(BACKOFF_MS - 300),
        "waited {after_resume:?} after the resume: the whole backoff again"
    );
    (outcome, c[1].clone())
}

/// Expands to one `#[tokio::test]` per case, each given a store from `$make` (an async
/// expression; with `optional:`, of type `Option<S>`, `None` passing at once).
#[macro_export]
macro_rules! policies_conformance {
    (optional: $make:expr) => {
        $crate::policies_conformance!(@all [optional] $make);
    };
    ($make:expr) => {
        $crate::policies_conformance!(@all [required] $make);
    };
    (@all [$mode:ident] $make:expr) => {
        $crate::policies_conformance!(@cases [$mode] $make;
            transient_failures_are_retried_and_fatal_ones_are_not,
            a_tasks_retry_after_is_honoured,
            exhausted_attempts_revert_the_flow,
            a_failed_revert_is_retried_until_it_succeeds,
            a_timed_out_call_is_retried,
            a_backoff_survives_a_resume,
            a_revert_backoff_survives_a_resume,
        );
    };
    (@cases [required] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::policies::$case($make).await;
            }
        )*
    };
    (@cases [optional] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(store) = $make {
                    $crate::policies::$case(store).await;
                }
            }
        )*
    };
}
