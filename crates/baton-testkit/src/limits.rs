//! Time limits and cancellation: per-atom timeouts, run deadlines and cancel requests, on
//! every store. A backend's tests expand [`limits_conformance!`](crate::limits_conformance).
//!
//! The tasks here record what they saw in [`Marks`]: when a call started, when its
//! cancellation token fired (seen by a watcher the call spawned, as a task stopping a thread
//! or a remote request would), and when it finished its work.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton_core::board::Cancel;
use baton_core::model::Deadline;
use baton_core::retry::Times;
use baton_core::store::Store;
use baton_core::{
    Atom, AtomState, CreateOptions, Engine, FailureKind, Flow, FlowId, FlowState, RevertContext,
    RunOptions, Task, TaskContext, TaskError,
};
use chrono::Utc;
use serde_json::{json, Value};

/// What the tasks of these cases saw, in order: `start a 1` (atom `a`'s first call),
/// `cancelled a 1`, `done a 1`, `revert a`, `reverted a`.
#[derive(Debug, Clone, Default)]
pub struct Marks(Arc<Mutex<Vec<String>>>);

impl Marks {
    fn push(&self, mark: String) {
        self.0.lock().unwrap().push(mark);
    }

    /// Every mark so far.
    #[must_use]
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Whether `mark` was made.
    #[must_use]
    pub fn has(&self, mark: &str) -> bool {
        self.all().iter().any(|m| m == mark)
    }

    /// How many marks start with `prefix`.
    #[must_use]
    pub fn count(&self, prefix: &str) -> usize {
        self.all().iter().filter(|m| m.starts_with(prefix)).count()
    }
}

/// A task that sleeps: its n-th `execute` sleeps `sleeps[n]` (the last one again past the
/// end), its `revert` sleeps `revert_sleep`.
#[derive(Debug, Clone)]
struct Sleepy {
    marks: Marks,
    calls: Arc<Mutex<usize>>,
    sleeps: Vec<Duration>,
    revert_sleep: Duration,
}

fn sleepy(marks: &Marks, sleeps: &[u64]) -> Sleepy {
    Sleepy {
        marks: marks.clone(),
        calls: Arc::default(),
        sleeps: sleeps.iter().map(|&ms| Duration::from_millis(ms)).collect(),
        revert_sleep: Duration::ZERO,
    }
}

impl Sleepy {
    fn revert_sleeps(mut self, ms: u64) -> Self {
        self.revert_sleep = Duration::from_millis(ms);
        self
    }

    fn watch(&self, token: tokio_util::sync::CancellationToken, mark: String) {
        let marks = self.marks.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            marks.push(mark);
        });
    }
}

#[async_trait]
impl Task for Sleepy {
    async fn execute(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        let atom = ctx.atom().to_owned();
        self.marks.push(format!("start {atom} {n}"));
        self.watch(ctx.cancellation(), format!("cancelled {atom} {n}"));
        let sleep = self
            .sleeps
            .get(n - 1)
            .or(self.sleeps.last())
            .copied()
            .unwrap_or_default();
        tokio::time::sleep(sleep).await;
        self.marks.push(format!("done {atom} {n}"));
        Ok(json!(n))
    }

    async fn revert(&self, ctx: RevertContext) -> Result<(), TaskError> {
        let atom = ctx.atom().to_owned();
        self.marks.push(format!("revert {atom}"));
        self.watch(ctx.cancellation(), format!("revert cancelled {atom}"));
        tokio::time::sleep(self.revert_sleep).await;
        self.marks.push(format!("reverted {atom}"));
        Ok(())
    }
}

async fn wait_for(marks: &Marks, mark: &str) {
    for _ in 0..1000 {
        if marks.has(mark) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {mark:?}; marks: {:?}", marks.all());
}

/// Whole microseconds, what every store keeps of a time.
fn micros(t: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap()
}

/// A task past its time limit is cancelled (its token fires) and fails with a retryable
/// timeout, which its retry controller retries; the next attempt succeeds.
pub async fn a_task_past_its_time_limit_is_cancelled_and_retried<S: Store + 'static>(store: S) {
    let marks = Marks::default();
    let flow = Flow::linear("limited")
        .retry(Atom::retry("again", Times::new(3)))
        .add(Atom::task("slow", sleepy(&marks, &[30_000, 0])).timeout(Duration::from_millis(300)))
        .compile()
        .unwrap();
    let engine = Engine::new(store);
    let began = Instant::now();
    let outcome = engine.start(&flow, Default::default()).await.unwrap();
    assert_eq!(outcome.state, FlowState::Success, "{outcome:?}");
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(outcome.results["slow"], json!(2));
    let [timeout] = outcome.failures.as_slice() else {
        panic!("expected one failure: {:?}", outcome.failures);
    };
    assert_eq!(timeout.kind, FailureKind::Timeout);
    assert!(timeout.retryable, "a timeout is retryable");
    assert!(
        timeout.message.contains("time limit"),
        "{}",
        timeout.message
    );
    wait_for(&marks, "cancelled slow 1").await;
    assert!(!marks.has("done slow 1"), "{:?}", marks.all());
    assert!(marks.has("done slow 2"));
    // Ended: the deadline is cleared.
    let stored = engine.store().load_flow(outcome.flow).await.unwrap();
    assert!(stored.atoms.iter().all(|a| a.deadline.is_none()));
}

/// A revert past its time limit is cancelled and ends `REVERT_FAILURE`; the run ends
/// `FAILURE`.
pub async fn a_revert_past_its_time_limit_ends_revert_failure<S: Store + 'static>(store: S) {
    let marks = Marks::default();
    let flow = Flow::linear("slow-undo")
        .add(
            Atom::task("a", sleepy(&marks, &[0]).revert_sleeps(30_000))
                .revert_timeout(Duration::from_millis(300)),
        )
        .add(Atom::from_fn("b", |_| async {
            Err(TaskError::msg("boom"))
        }))
        .compile()
        .unwrap();
    let engine = Engine::new(store);
    let outcome = engine.start(&flow, Default::default()).await.unwrap();
    assert_eq!(outcome.state, FlowState::Failure, "{outcome:?}");
    let stored = engine.store().load_flow(outcome.flow).await.unwrap();
    let a = &stored.atoms[0];
    assert_eq!(a.state, AtomState::RevertFailure);
    let f = a.revert_failure.as_ref().unwrap();
    assert_eq!(f.kind, FailureKind::Timeout);
    assert!(f.message.contains("revert of atom \"a\""), "{}", f.message);
    wait_for(&marks, "revert cancelled a").await;
    assert!(!marks.has("reverted a"));
}

/// The deadline of a running attempt is stored with it, and a run resumed after a crash
/// counts from the attempt's first start: resumed after the deadline, the attempt times out
/// at once (its task is not even called); resumed before, it is cut at the original deadline.
pub async fn an_attempts_deadline_survives_a_resume<S: Store + Clone + 'static>(store: S) {
    for resume_late in [true, false] {
        let marks = Marks::default();
        let limit = Duration::from_millis(if resume_late { 500 } else { 2_500 });
        let flow = Flow::linear("resumed")
            .add(Atom::task("hangs", sleepy(&marks, &[60_000])).timeout(limit))
            .compile()
            .unwrap();
        let first = Engine::new(store.clone());
        let id = first.create(&flow, Default::default()).await.unwrap();
        let control = baton_core::Control::new();
        let run = tokio::spawn({
            let (first, flow, control) = (first.clone(), flow.clone(), control.clone());
            async move {
                first
                    .run_with(&flow, id, RunOptions::new().control(control))
                    .await
            }
        });
        wait_for(&marks, "start hangs 1").await;
        let stored = store.load_flow(id).await.unwrap().atoms[0].clone();
        assert_eq!(stored.state, AtomState::Running);
        let started = stored.started_at.unwrap();
        let deadline = stored.deadline.expect("the attempt's deadline is stored");
        assert_eq!(
            micros(deadline),
            micros(started + chrono::Duration::from_std(limit).unwrap())
        );
        // The first engine dies before the deadline...
        tokio::time::sleep(Duration::from_millis(if resume_late { 100 } else { 1_200 })).await;
        control.halt();
        assert!(run.await.unwrap().is_err(), "halted before its deadline");
        wait_for(&marks, "cancelled hangs 1").await;
        // ... and the run is resumed after it, or before.
        if resume_late {
            let left = (deadline - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(left + Duration::from_millis(100)).await;
        }

        let second = Engine::new(store.clone());
        let resumed = Instant::now();
        let outcome = second.run(&flow, id).await.unwrap();
        let took = resumed.elapsed();
        assert_eq!(outcome.state, FlowState::Reverted, "{outcome:?}");
        let f = &outcome.failures[0];
        assert_eq!((f.kind, f.attempt), (FailureKind::Timeout, 2));
        if resume_late {
            assert_eq!(marks.count("start hangs"), 1, "{:?}", marks.all());
        } else {
            // Counted from zero it would have taken the whole 2.5 s limit.
            assert!(took < Duration::from_millis(2_200), "took {took:?}");
            assert_eq!(marks.count("start hangs"), 2, "{:?}", marks.all());
        }
    }
}

fn two_steps(marks: &Marks, name: &str) -> baton_core::CompiledFlow {
    Flow::linear(name)
        .retry(Atom::retry("again", Times::new(5)))
        .add(Atom::task("a", sleepy(marks, &[0])))
        .add(Atom::task("b", sleepy(marks, &[60_000, 0])))
        .compile()
        .unwrap()
}

/// A run past its deadline cancels its running task and reverts, whatever its retry
/// controllers would do; the deadline is stored with the run.
pub async fn a_run_past_its_deadline_reverts<S: Store + 'static>(store: S) {
    let marks = Marks::default();
    let flow = two_steps(&marks, "deadline-revert");
    let engine = Engine::new(store);
    let at = Utc::now() + chrono::Duration::milliseconds(600);
    let began = Instant::now();
    let outcome = engine
        .create_and_run(
            &flow,
            Default::default(),
            CreateOptions::new().deadline(Deadline::revert_at(at)),
            RunOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(outcome.state, FlowState::Reverted, "{outcome:?}");
    assert!(began.elapsed() < Duration::from_secs(20));
    let [f] = outcome.failures.as_slice() else {
        panic!("expected one failure: {:?}", outcome.failures);
    };
    assert_eq!((f.kind, f.atom.as_str()), (FailureKind::Timeout, "b"));
    assert!(!f.retryable, "a deadline is not retried");
    assert!(f.message.contains("deadline"), "{}", f.message);
    wait_for(&marks, "cancelled b 1").await;
    assert_eq!(marks.count("start b"), 1, "not retried: {:?}", marks.all());
    assert!(marks.has("reverted a"));
    let stored = engine.store().load_flow(outcome.flow).await.unwrap();
    assert_eq!(stored.flow.deadline.map(|d| micros(d.at)), Some(micros(at)));
}

/// `AtDeadline::Fail`: past the deadline the run's task is cancelled and the run ends
/// `FAILURE` with nothing reverted.
pub async fn a_run_past_its_deadline_can_fail_without_reverting<S: Store + 'static>(store: S) {
    let marks = Marks::default();
    let flow = two_steps(&marks, "deadline-fail");
    let engine = Engine::new(store);
    let outcome = engine
        .create_and_run(
            &flow,
            Default::default(),
            CreateOptions::new().deadline(Deadline::fail_at(
                Utc::now() + chrono::Duration::milliseconds(600),
            )),
            RunOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(outcome.state, FlowState::Failure, "{outcome:?}");
    let stored = engine.store().load_flow(outcome.flow).await.unwrap();
    let states: Vec<AtomState> = stored.atoms.iter().map(|a| a.state).collect();
    assert_eq!(
        states,
        [AtomState::Success, AtomState::Success, AtomState::Failure],
        "controller, a, b"
    );
    assert_eq!(marks.count("revert"), 0, "{:?}", marks.all());
}

/// A deadline that passes while nobody runs the run (suspended, or its owner dead) is kept
/// by whichever engine runs it next: it reverts at once. A deadline already past at creation
/// is refused, storing nothing.
pub async fn a_deadline_that_passed_meanwhile_is_kept_on_resume<S: Store + Clone + 'static>(
    store: S,
) {
    let marks = Marks::default();
    let flow = two_steps(&marks, "deadline-meanwhile");
    let engine = Engine::new(store.clone());
    let at = Utc::now() + chrono::Duration::milliseconds(300);
    let id = engine
        .create_with(
            &flow,
            Default::default(),
            CreateOptions::new().deadline(Deadline::revert_at(at)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let outcome = Engine::new(store.clone()).run(&flow, id).await.unwrap();
    assert_eq!(outcome.state, FlowState::Reverted, "{outcome:?}");
    assert!(marks.all().is_empty(), "nothing ran: {:?}", marks.all());

    let past = Utc::now() - chrono::Duration::seconds(1);
    let refused = engine
        .create_with(
            &flow,
            Default::default(),
            CreateOptions::new()
                .id(FlowId::new())
                .deadline(Deadline::revert_at(past)),
        )
        .await;
    assert!(
        matches!(refused, Err(baton_core::engine::Error::DeadlinePassed { deadline, .. }) if deadline == past),
        "{refused:?}"
    );
}

/// `Engine::cancel` with `Cancel::Revert`: the running task is cancelled (its token fires),
/// recorded as a `Cancelled` failure no controller retries, and the run reverts. Once the run
/// has ended, there is nothing to cancel.
pub async fn cancel_reverts_a_running_run<S: Store + 'static>(store: S) {
    let marks = Marks::default();
    let flow = two_steps(&marks, "cancel-revert");
    let engine = Engine::new(store);
    let id = engine.create(&flow, Default::default()).await.unwrap();
    let run = tokio::spawn({
        let (engine, flow) = (engine.clone(), flow.clone());
        async move { engine.run(&flow, id).await }
    });
    wait_for(&marks, "start b 1").await;
    engine.cancel(id, Cancel::Revert).unwrap();
    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome.state, FlowState::Reverted, "{outcome:?}");
    let [f] = outcome.failures.as_slice() else {
        panic!("expected one failure: {:?}", outcome.failures);
    };
    assert_eq!((f.kind, f.atom.as_str()), (FailureKind::Cancelled, "b"));
    wait_for(&marks, "cancelled b 1").await;
    assert_eq!(marks.count("start b"), 1);
    assert!(marks.has("reverted a") && marks.has("reverted b"));
    assert!(matches!(
        engine.cancel(id, Cancel::Revert),
        Err(baton_core::engine::Error::NotRunning(f)) if f == id
    ));
}

/// `Engine::cancel` with `Cancel::Suspend`: the running task is cancelled and left as
/// interrupted, the run ends `SUSPENDED`, and a resume runs the task again, with the same
/// idempotency key, to success.
pub async fn cancel_suspends_and_the_run_resumes<S: Store + Clone + 'static>(store: S) {
    let marks = Marks::default();
    let flow = Flow::linear("cancel-suspend")
        .add(Atom::task("a", sleepy(&marks, &[0])))
        .add(Atom::task("b", sleepy(&marks, &[60_000, 0])).timeout(Duration::from_secs(600)))
        .compile()
        .unwrap();
    let engine = Engine::new(store.clone());
    let id = engine.create(&flow, Default::default()).await.unwrap();
    let run = tokio::spawn({
        let (engine, flow) = (engine.clone(), flow.clone());
        async move { engine.run(&flow, id).await }
    });
    wait_for(&marks, "start b 1").await;
    engine.cancel(id, Cancel::Suspend).unwrap();
    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome.state, FlowState::Suspended, "{outcome:?}");
    wait_for(&marks, "cancelled b 1").await;
    let b = store.load_flow(id).await.unwrap().atoms[1].clone();
    assert_eq!(b.state, AtomState::Running, "left as interrupted");
    assert_eq!(b.deadline, None, "a suspend clears the attempt's deadline");

    let outcome = Engine::new(store).run(&flow, id).await.unwrap();
    assert_eq!(outcome.state, FlowState::Success, "{outcome:?}");
    assert_eq!(outcome.results["b"], json!(2));
    assert_eq!(marks.count("revert"), 0);
}

/// Expands to one `#[tokio::test]` per case, each given a store from `$make` (an async
/// expression; with `optional:`, of type `Option<S>`, `None` passing at once).
#[macro_export]
macro_rules! limits_conformance {
    (optional: $make:expr) => {
        $crate::limits_conformance!(@all [optional] $make);
    };
    ($make:expr) => {
        $crate::limits_conformance!(@all [required] $make);
    };
    (@all [$mode:ident] $make:expr) => {
        $crate::limits_conformance!(@cases [$mode] $make;
            a_task_past_its_time_limit_is_cancelled_and_retried,
            a_revert_past_its_time_limit_ends_revert_failure,
            an_attempts_deadline_survives_a_resume,
            a_run_past_its_deadline_reverts,
            a_run_past_its_deadline_can_fail_without_reverting,
            a_deadline_that_passed_meanwhile_is_kept_on_resume,
            cancel_reverts_a_running_run,
            cancel_suspends_and_the_run_resumes,
        );
    };
    (@cases [required] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::limits::$case($make).await;
            }
        )*
    };
    (@cases [optional] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(store) = $make {
                    $crate::limits::$case(store).await;
                }
            }
        )*
    };
}
