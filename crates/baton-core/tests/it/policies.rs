//! Per-atom retry policies on the memory store, and what the compiler alone decides.

mod conformance {
    baton_testkit::policies_conformance!(baton_core::MemoryStore::new());
}

use std::time::Duration;

use baton_core::compile::{Error as CompileError, PolicyError};
use baton_core::retry::{RetryPolicy, Times};
use baton_core::store::Store;
use baton_core::{Atom, AtomState, Engine, Flow, FlowState, MemoryStore};
use baton_testkit::{scenarios, Action, Log, Phase};
use serde_json::json;

#[test]
fn a_policy_on_a_retry_controller_is_refused_naming_it() {
    for controller in [
        Atom::retry("r", Times::new(2)).retries(RetryPolicy::attempts(3)),
        Atom::retry("r", Times::new(2)).revert_retries(RetryPolicy::attempts(3)),
    ] {
        let refused = Flow::linear("f")
            .retry(controller)
            .add(Atom::from_fn("a", |_| async { Ok(json!(null)) }))
            .compile();
        assert!(
            matches!(&refused, Err(CompileError::BadRetryPolicy { atom, problem: PolicyError::OnController }) if atom == "r"),
            "{refused:?}"
        );
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("\"r\""), "{message}");
    }
}

/// Policies are not part of a definition's fingerprint (like time limits): changing one does
/// not need a new factory version.
#[test]
fn policies_leave_the_fingerprint_alone() {
    let flow = |policy: Option<RetryPolicy>| {
        let atom = Atom::from_fn("a", |_| async { Ok(json!(null)) });
        let atom = match policy {
            Some(p) => atom.retries(p).revert_retries(p),
            None => atom,
        };
        Flow::linear("f").add(atom).compile().unwrap().fingerprint()
    };
    assert_eq!(flow(None), flow(Some(RetryPolicy::attempts(4))));
}

/// The crash scenario of per-atom retries ends as its documentation says.
#[tokio::test]
async fn the_atom_retries_scenario_retries_and_gives_up() {
    let log = Log::new();
    let scenario = scenarios::atom_retries();
    let flow = (scenario.build)(&log);
    let store = MemoryStore::new();
    let outcome = Engine::new(store.clone())
        .with_parallelism(scenario.parallelism)
        .start(&flow, scenario.inputs.clone())
        .await
        .unwrap();
    assert_eq!(outcome.state, FlowState::Failure, "{outcome:?}");
    let calls = |atom: &str, action| {
        log.of(atom)
            .iter()
            .filter(|c| c.action == action && c.phase == Phase::Start)
            .count()
    };
    assert_eq!(calls("b", Action::Execute), 3);
    assert_eq!(calls("c", Action::Revert), 2);
    assert_eq!(calls("a", Action::Revert), 0);
    let states: Vec<AtomState> = store
        .load_flow(outcome.flow)
        .await
        .unwrap()
        .atoms
        .iter()
        .map(|a| a.state)
        .collect();
    assert_eq!(
        states,
        [
            AtomState::Success,
            AtomState::Reverted,
            AtomState::RevertFailure
        ]
    );
}

/// A suspend while an atom waits for its retry leaves it `RETRYING`, its time stored; the
/// resumed run calls it then.
#[tokio::test]
async fn a_run_suspended_mid_backoff_resumes_the_wait() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let flow = Flow::linear("suspend-mid-backoff")
        .add(
            Atom::from_fn("flaky", {
                let calls = calls.clone();
                move |_| {
                    let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move {
                        if n == 0 {
                            Err(baton_core::TaskError::msg("busy").retryable())
                        } else {
                            Ok(json!(n))
                        }
                    }
                }
            })
            .retries(RetryPolicy::attempts(2).backoff(
                baton_core::retry::Backoff::exponential(
                    Duration::from_millis(400),
                    Duration::from_millis(400),
                ),
            )),
        )
        .compile()
        .unwrap();
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let id = engine.create(&flow, Default::default()).await.unwrap();
    let control = baton_core::Control::new();
    let mut events = engine.subscribe();
    let run = tokio::spawn({
        let (engine, flow, control) = (engine.clone(), flow.clone(), control.clone());
        async move {
            engine
                .run_with(&flow, id, baton_core::RunOptions::new().control(control))
                .await
        }
    });
    while let Some(Ok(event)) = events.next().await {
        if matches!(
            event.kind,
            baton_core::EventKind::Transition(baton_core::model::Change::Atom {
                to: AtomState::Retrying,
                ..
            })
        ) {
            control.suspend();
            break;
        }
    }
    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome.state, FlowState::Suspended);
    let stored = store.load_flow(id).await.unwrap().atoms[0].clone();
    assert_eq!(stored.state, AtomState::Retrying);
    let retry_at = stored.retry_at.unwrap();
    let outcome = engine.run(&flow, id).await.unwrap();
    assert_eq!(outcome.state, FlowState::Success);
    assert!(chrono::Utc::now() >= retry_at);
    assert_eq!(outcome.results["flaky"], json!(1));
}
