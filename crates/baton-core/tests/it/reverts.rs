//! Failure and revert: order, what revert receives, revert failures.

use std::time::Duration;

use baton_core::store::Store;
use baton_core::{Atom, AtomState, FailureKind, Flow, FlowState, Inputs};
use baton_testkit::{Action, Log, Phase, Probe};

use crate::run;

#[tokio::test]
async fn failure_reverts_what_ran_in_reverse_order() {
    let log = Log::new();
    let flow = Flow::linear("stack")
        .add(Atom::task("network", Probe::new(&log)).provides("net"))
        .add(Atom::task("subnet", Probe::new(&log)).requires(["net"]))
        .add(Atom::task("server", Probe::new(&log).fails()))
        .add(Atom::task("never", Probe::new(&log)))
        .compile()
        .unwrap();
    let (outcome, store) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Reverted);
    assert_eq!(
        log.sequence(Action::Revert, Phase::Start),
        vec!["server", "subnet", "network"]
    );
    assert!(log.of("never").is_empty());
    let snap = store.load_flow(outcome.flow).await.unwrap();
    let state = |n: &str| snap.atoms.iter().find(|a| a.name == n).unwrap().state;
    assert_eq!(state("network"), AtomState::Reverted);
    assert_eq!(state("never"), AtomState::Pending);
    assert_eq!(outcome.failures.len(), 1);
    assert_eq!(outcome.failures[0].atom, "server");
    assert!(
        outcome.results.is_empty(),
        "a reverted flow reports no results"
    );
}

#[tokio::test]
async fn revert_receives_the_result_or_the_failure() {
    let log = Log::new();
    let flow = Flow::linear("what-revert-sees")
        .add(Atom::task(
            "ok",
            Probe::new(&log).returns(serde_json::json!("vol-7")),
        ))
        .add(Atom::task("bad", Probe::new(&log).fails()))
        .compile()
        .unwrap();
    run(&flow, Inputs::new()).await;
    let ok = log
        .of("ok")
        .into_iter()
        .find(|c| c.action == Action::Revert)
        .unwrap();
    assert_eq!(ok.result, Some(serde_json::json!("vol-7")));
    assert!(!ok.had_failure);
    let bad = log
        .of("bad")
        .into_iter()
        .find(|c| c.action == Action::Revert)
        .unwrap();
    assert_eq!(bad.result, None);
    assert!(bad.had_failure);
}

#[tokio::test]
async fn a_failure_waits_for_running_siblings_then_reverts_them_too() {
    let log = Log::new();
    let flow = Flow::unordered("siblings")
        .add(Atom::task(
            "slow",
            Probe::new(&log).delay(Duration::from_millis(50)),
        ))
        .add(Atom::task("fails", Probe::new(&log).fails()))
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Reverted);
    let ok = log.successes(Action::Execute);
    assert_eq!(ok.get("slow"), Some(&1), "the running sibling finished");
    let reverted = log.successes(Action::Revert);
    assert_eq!(reverted.get("slow"), Some(&1));
    assert_eq!(reverted.get("fails"), Some(&1));
}

#[tokio::test]
async fn revert_failure_ends_the_flow_in_failure_with_both_failures() {
    let log = Log::new();
    let flow = Flow::linear("stuck")
        .add(Atom::task("base", Probe::new(&log)))
        .add(Atom::task("volume", Probe::new(&log).revert_fails()))
        .add(Atom::task("attach", Probe::new(&log).fails()))
        .compile()
        .unwrap();
    let (outcome, store) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Failure);
    let kinds: Vec<(String, FailureKind)> = outcome
        .failures
        .iter()
        .map(|f| (f.atom.clone(), f.kind))
        .collect();
    assert!(kinds.contains(&("attach".into(), FailureKind::Execute)));
    assert!(kinds.contains(&("volume".into(), FailureKind::Revert)));
    let snap = store.load_flow(outcome.flow).await.unwrap();
    let state = |n: &str| snap.atoms.iter().find(|a| a.name == n).unwrap().state;
    assert_eq!(state("volume"), AtomState::RevertFailure);
    // What the failed revert's atom depends on is left alone: undoing it could break more.
    assert_eq!(state("base"), AtomState::Success);
    assert_eq!(state("attach"), AtomState::Reverted);
}
