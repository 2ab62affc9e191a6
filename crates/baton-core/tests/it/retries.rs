//! Retry controllers, after TaskFlow's test_retries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_core::retry::{
    AlwaysRevert, AlwaysRevertAll, Backoff, Decision, ForEach, ParameterizedForEach, RetryContext,
    RetryController, Times,
};
use baton_core::store::Store;
use baton_core::{Atom, AtomState, Engine, Flow, FlowState, Inputs, MemoryStore, TaskError};
use baton_testkit::{inputs, Action, Log, Phase, Probe};
use serde_json::json;

use crate::run;

#[tokio::test]
async fn times_retries_the_subflow_until_it_succeeds() {
    let log = Log::new();
    let flow = Flow::linear("retried")
        .retry(Atom::retry("r", Times::new(3)).provides("try"))
        .add(Atom::task("prepare", Probe::new(&log)))
        .add(
            Atom::task(
                "flaky",
                Probe::new(&log).fails_when(|ctx| ctx.input::<u32>("try").unwrap() < 3),
            )
            .requires(["try"]),
        )
        .compile()
        .unwrap();
    let (outcome, store) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Success);
    assert_eq!(log.successes(Action::Execute)["prepare"], 3);
    assert_eq!(log.successes(Action::Revert)["prepare"], 2);
    assert_eq!(
        outcome.failures.len(),
        2,
        "both failed attempts are reported"
    );
    let snap = store.load_flow(outcome.flow).await.unwrap();
    let r = snap.atoms.iter().find(|a| a.name == "r").unwrap();
    assert_eq!(r.retry_history.len(), 2);
    assert_eq!(r.result, Some(json!(3)));
}

#[tokio::test]
async fn times_out_of_attempts_reverts_the_whole_flow() {
    let log = Log::new();
    let flow = Flow::linear("outer")
        .add(Atom::task("before", Probe::new(&log)))
        .add(
            Flow::linear("retried")
                .retry(Atom::retry("r", Times::new(2)))
                .add(Atom::task("always-fails", Probe::new(&log).fails())),
        )
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Reverted);
    assert_eq!(
        log.sequence(Action::Execute, Phase::Start)
            .iter()
            .filter(|a| *a == "always-fails")
            .count(),
        2
    );
    assert_eq!(log.successes(Action::Revert)["before"], 1);
}

#[tokio::test]
async fn revert_lets_the_parent_controller_retry_its_larger_subflow() {
    let log = Log::new();
    let flow = Flow::linear("outer")
        .retry(Atom::retry("outer-r", Times::new(2)).provides("outer_try"))
        .add(Atom::task("setup", Probe::new(&log)))
        .add(
            Flow::linear("inner")
                .retry(Atom::retry("inner-r", AlwaysRevert))
                .add(
                    Atom::task(
                        "work",
                        Probe::new(&log)
                            .fails_when(|ctx| ctx.input::<u32>("outer_try").unwrap() < 2),
                    )
                    .requires(["outer_try"]),
                ),
        )
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Success);
    // The outer controller re-ran everything under it, setup included.
    assert_eq!(log.successes(Action::Execute)["setup"], 2);
    assert_eq!(log.successes(Action::Revert)["setup"], 1);
}

#[tokio::test]
async fn revert_all_skips_outer_controllers() {
    let log = Log::new();
    let flow = Flow::linear("outer")
        .retry(Atom::retry("outer-r", Times::new(5)))
        .add(Atom::task("setup", Probe::new(&log)))
        .add(
            Flow::linear("inner")
                .retry(Atom::retry("inner-r", AlwaysRevertAll))
                .add(Atom::task("work", Probe::new(&log).fails())),
        )
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Reverted);
    assert_eq!(
        log.successes(Action::Execute)["setup"],
        1,
        "the outer controller never retried"
    );
}

#[tokio::test]
async fn for_each_tries_each_value_until_one_works() {
    let log = Log::new();
    let flow = Flow::linear("zones")
        .retry(Atom::retry("zone-r", ForEach::new(["az1", "az2", "az3"])).provides("zone"))
        .add(
            Atom::task(
                "boot",
                Probe::new(&log).fails_when(|ctx| ctx.input::<String>("zone").unwrap() != "az2"),
            )
            .requires(["zone"]),
        )
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Success);
    let zones: Vec<serde_json::Value> = log
        .of("boot")
        .into_iter()
        .filter(|c| c.action == Action::Execute && c.phase == Phase::Start)
        .map(|c| c.inputs["zone"].clone())
        .collect();
    assert_eq!(zones, vec![json!("az1"), json!("az2")]);
}

#[tokio::test]
async fn parameterized_for_each_takes_its_values_from_an_input() {
    let log = Log::new();
    let flow = Flow::linear("images")
        .retry(
            Atom::retry("image-r", ParameterizedForEach::new("images"))
                .requires(["images"])
                .provides("image"),
        )
        .add(Atom::task("boot", Probe::new(&log).fails()).requires(["image"]))
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, inputs([("images", json!(["a", "b"]))])).await;
    assert_eq!(outcome.state, FlowState::Reverted, "every value failed");
    let tried: Vec<serde_json::Value> = log
        .of("boot")
        .into_iter()
        .filter(|c| c.action == Action::Execute && c.phase == Phase::Start)
        .map(|c| c.inputs["image"].clone())
        .collect();
    assert_eq!(tried, vec![json!("a"), json!("b")]);
}

#[tokio::test]
async fn a_failure_outside_any_controller_reverts_everything() {
    let log = Log::new();
    let flow = Flow::linear("outer")
        .add(
            Flow::linear("protected")
                .retry(Atom::retry("r", Times::new(3)))
                .add(Atom::task("inside", Probe::new(&log))),
        )
        .add(Atom::task("outside", Probe::new(&log).fails()))
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Reverted);
    assert_eq!(log.successes(Action::Execute)["inside"], 1);
    assert_eq!(log.successes(Action::Revert)["inside"], 1);
}

#[tokio::test]
async fn backoff_waits_and_its_deadline_is_persisted() {
    let log = Log::new();
    let flow = Flow::linear("backoff")
        .retry(
            Atom::retry(
                "r",
                Times::new(2).backoff(Backoff::exponential(
                    Duration::from_millis(200),
                    Duration::from_secs(1),
                )),
            )
            .provides("try"),
        )
        .add(
            Atom::task(
                "flaky",
                Probe::new(&log).fails_when(|ctx| ctx.input::<u32>("try").unwrap() < 2),
            )
            .requires(["try"]),
        )
        .compile()
        .unwrap();
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let mut events = engine.subscribe();
    let id = engine.create(&flow, Inputs::new()).await.unwrap();

    // Suspend as soon as the controller is told to wait, and look at the store.
    let control = baton_core::Control::new();
    let watcher = {
        let control = control.clone();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                let e = e.unwrap();
                if let baton_core::EventKind::Transition(baton_core::model::Change::Atom {
                    to: AtomState::Retrying,
                    ..
                }) = e.kind
                {
                    control.suspend();
                    break;
                }
            }
        })
    };
    let started = std::time::Instant::now();
    let outcome = engine
        .run_with(&flow, id, baton_core::RunOptions::new().control(control))
        .await
        .unwrap();
    watcher.await.unwrap();
    assert_eq!(outcome.state, FlowState::Suspended);
    let snap = store.load_flow(id).await.unwrap();
    let r = snap.atoms.iter().find(|a| a.name == "r").unwrap();
    assert_eq!(r.state, AtomState::Retrying);
    let retry_at = r.retry_at.expect("the deadline is stored");
    assert!(retry_at - snap.flow.created_at >= chrono::Duration::milliseconds(150));

    // A new engine honours the stored deadline.
    let outcome = Engine::new(store.clone()).run(&flow, id).await.unwrap();
    assert_eq!(outcome.state, FlowState::Success);
    assert!(chrono::Utc::now() >= retry_at);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn an_outer_retry_gives_the_inner_controller_a_fresh_history() {
    let log = Log::new();
    let flow = Flow::linear("outer")
        .retry(Atom::retry("outer-r", Times::new(2)).provides("outer_try"))
        .add(Atom::task("setup", Probe::new(&log)))
        .add(
            Flow::linear("inner")
                .retry(Atom::retry("inner-r", Times::new(2)))
                .add(
                    Atom::task(
                        "work",
                        Probe::new(&log)
                            .fails_when(|ctx| ctx.input::<u32>("outer_try").unwrap() < 2),
                    )
                    .requires(["outer_try"]),
                ),
        )
        .compile()
        .unwrap();
    let (outcome, store) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Success);
    // Round 1: the inner controller tries twice and gives up; round 2: the first try works.
    let starts = log
        .of("work")
        .into_iter()
        .filter(|c| c.action == Action::Execute && c.phase == Phase::Start)
        .count();
    assert_eq!(starts, 3);
    let snap = store.load_flow(outcome.flow).await.unwrap();
    let inner = snap.atoms.iter().find(|a| a.name == "inner-r").unwrap();
    assert!(
        inner.retry_history.is_empty(),
        "the inner history was not reset"
    );
    let outer = snap.atoms.iter().find(|a| a.name == "outer-r").unwrap();
    assert_eq!(outer.retry_history.len(), 1);
    assert_eq!(
        outer.retry_history[0].failures.len(),
        2,
        "both inner failures are in the outer history"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_outside_a_retried_subflow_keep_running() {
    let log = Log::new();
    let flow = Flow::unordered("both")
        .add(
            Flow::linear("retried")
                .retry(Atom::retry("r", Times::new(3)).provides("try"))
                .add(
                    Atom::task(
                        "flaky",
                        Probe::new(&log).fails_when(|ctx| ctx.input::<u32>("try").unwrap() < 3),
                    )
                    .requires(["try"]),
                ),
        )
        .add(Atom::task(
            "steady",
            Probe::new(&log).delay(Duration::from_millis(50)),
        ))
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Success);
    assert_eq!(log.successes(Action::Execute)["steady"], 1);
    assert!(
        !log.successes(Action::Revert).contains_key("steady"),
        "the retry undid a branch outside it"
    );
    assert_eq!(log.successes(Action::Execute)["flaky"], 1);
}

/// A task that starts when nothing else runs is polled by the run's own loop instead of being
/// spawned; a retry whose backoff ends meanwhile must still start (spawned) and finish while
/// that task goes on.
#[tokio::test]
async fn a_retry_starts_and_ends_while_a_task_runs_alone() {
    let ms = Duration::from_millis;
    let log = Log::new();
    let flow = Flow::unordered("mixed")
        .add(
            Flow::linear("retried")
                .retry(
                    Atom::retry(
                        "r",
                        Times::new(2).backoff(Backoff::exponential(ms(100), ms(100))),
                    )
                    .provides("try"),
                )
                .add(
                    Atom::task(
                        "flaky",
                        Probe::new(&log).fails_when(|ctx| ctx.input::<u32>("try").unwrap() < 2),
                    )
                    .requires(["try"]),
                ),
        )
        .add(
            Flow::linear("slow")
                .add(Atom::task("first", Probe::new(&log).delay(ms(20))))
                .add(Atom::task("long", Probe::new(&log).delay(ms(600)))),
        )
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Success);
    // "long" starts alone (the first "flaky" failed and was reverted, its retry waits out
    // the backoff); the second "flaky" starts and ends before "long" is done.
    let ends = log.sequence(Action::Execute, Phase::Ok);
    let flaky_done = ends.iter().rposition(|a| a == "flaky").unwrap();
    let long_done = ends.iter().position(|a| a == "long").unwrap();
    assert!(
        flaky_done < long_done,
        "the retried task waited for the lone one: {ends:?}"
    );
    assert_eq!(
        log.sequence(Action::Execute, Phase::Start)
            .iter()
            .filter(|a| *a == "flaky")
            .count(),
        2
    );
}

/// Counts how often it is asked, and always answers Revert.
struct Asked(Arc<AtomicUsize>);

impl RetryController for Asked {
    fn execute(&self, _ctx: &RetryContext<'_>) -> Result<serde_json::Value, TaskError> {
        Ok(json!(null))
    }

    fn on_failure(&self, _ctx: &RetryContext<'_>) -> Decision {
        self.0.fetch_add(1, Ordering::SeqCst);
        Decision::Revert
    }
}

/// A failure not marked retryable is not retried by any built-in controller, with or without
/// a backoff: each answers as when out of attempts (Revert asks the enclosing controller,
/// RevertAll does not).
#[tokio::test]
async fn built_in_controllers_do_not_retry_a_fatal_failure() {
    let backoff = Backoff::exponential(Duration::from_millis(1), Duration::from_millis(1));
    let controllers: Vec<(&str, Atom, bool)> = vec![
        ("times", Atom::retry("r", Times::new(3)), false),
        (
            "times, backoff, revert all",
            Atom::retry("r", Times::new(3).backoff(backoff).revert_all()),
            true,
        ),
        ("for each", Atom::retry("r", ForEach::new([1, 2, 3])), false),
        (
            "for each, backoff, revert all",
            Atom::retry("r", ForEach::new([1, 2, 3]).backoff(backoff).revert_all()),
            true,
        ),
        (
            "parameterized for each",
            Atom::retry("r", ParameterizedForEach::new("xs")).requires(["xs"]),
            false,
        ),
        (
            "parameterized for each, backoff, revert all",
            Atom::retry(
                "r",
                ParameterizedForEach::new("xs")
                    .backoff(backoff)
                    .revert_all(),
            )
            .requires(["xs"]),
            true,
        ),
    ];
    for (what, controller, revert_all) in controllers {
        let (calls, asked) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let work = {
            let calls = calls.clone();
            Atom::from_fn("work", move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(TaskError::msg("bad request").fatal()) }
            })
        };
        let flow = Flow::linear("outer")
            .retry(Atom::retry("outer-r", Asked(asked.clone())))
            .add(Flow::linear("inner").retry(controller).add(work))
            .compile()
            .unwrap();
        let (outcome, store) = run(&flow, inputs([("xs", json!([1, 2, 3]))])).await;
        assert_eq!(outcome.state, FlowState::Reverted, "{what}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "{what}: a fatal failure was retried"
        );
        let expected_asked = usize::from(!revert_all);
        assert_eq!(asked.load(Ordering::SeqCst), expected_asked, "{what}");
        let snap = store.load_flow(outcome.flow).await.unwrap();
        let r = snap.atoms.iter().find(|a| a.name == "r").unwrap();
        assert!(r.retry_history.is_empty(), "{what}");
    }
}

/// A flow whose task fails once with `retry_after(after)` under `Times(2)` with a backoff of
/// `backoff`, then succeeds; it records when each attempt started.
fn throttled(
    after: Duration,
    backoff: Duration,
    starts: &Arc<std::sync::Mutex<Vec<chrono::DateTime<chrono::Utc>>>>,
) -> baton_core::CompiledFlow {
    let starts = starts.clone();
    Flow::linear("throttled")
        .retry(
            Atom::retry(
                "r",
                Times::new(2).backoff(Backoff::exponential(backoff, backoff)),
            )
            .provides("try"),
        )
        .add(
            Atom::from_fn("api", move |ctx| {
                starts.lock().unwrap().push(chrono::Utc::now());
                async move {
                    if ctx.input::<u32>("try")? < 2 {
                        return Err(TaskError::msg("throttled").retry_after(after));
                    }
                    Ok(json!("done"))
                }
            })
            .requires(["try"]),
        )
        .compile()
        .unwrap()
}

/// Runs `flow` until its controller goes `RETRYING`, suspends it there, and returns the
/// stored controller.
async fn suspend_when_retrying(
    engine: &Engine,
    flow: &baton_core::CompiledFlow,
    id: baton_core::FlowId,
) -> baton_core::model::AtomRecord {
    let outcome = baton_testkit::run_until_retrying(engine, flow, id).await;
    assert_eq!(outcome.state, FlowState::Suspended);
    let snap = engine.store().load_flow(id).await.unwrap();
    snap.atoms.into_iter().find(|a| a.name == "r").unwrap()
}

/// `TaskError::retry_after` is stored with the failure and sets the persisted time of the next
/// attempt (when longer than the controller's backoff); an engine resuming the run waits
/// for it.
#[tokio::test]
async fn retry_after_is_stored_and_delays_the_next_attempt_across_a_resume() {
    let ms = Duration::from_millis;
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let flow = throttled(ms(300), ms(1), &starts);
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let id = engine.create(&flow, Inputs::new()).await.unwrap();
    let r = suspend_when_retrying(&engine, &flow, id).await;
    assert_eq!(r.state, AtomState::Retrying);
    let failure = &r.retry_history[0].failures[0];
    assert_eq!(failure.retry_after, Some(ms(300)));
    let failed_at = starts.lock().unwrap()[0];
    let retry_at = r.retry_at.expect("the next attempt's time is stored");
    assert!(
        retry_at - failed_at >= chrono::Duration::milliseconds(300),
        "retry_at is {} after the failure",
        retry_at - failed_at
    );

    // Another engine resumes the run, and waits until then.
    let outcome = Engine::new(store.clone()).run(&flow, id).await.unwrap();
    assert_eq!(outcome.state, FlowState::Success);
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 2);
    assert!(starts[1] >= retry_at, "the retry started before its time");
}

/// The controller's backoff still counts when it is the longer of the two.
#[tokio::test]
async fn a_backoff_longer_than_retry_after_wins() {
    let ms = Duration::from_millis;
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let flow = throttled(ms(1), ms(300), &starts);
    let engine = Engine::new(MemoryStore::new());
    let id = engine.create(&flow, Inputs::new()).await.unwrap();
    let r = suspend_when_retrying(&engine, &flow, id).await;
    let failed_at = starts.lock().unwrap()[0];
    assert!(r.retry_at.unwrap() - failed_at >= chrono::Duration::milliseconds(300));
}
