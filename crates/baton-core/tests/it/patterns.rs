//! Flow patterns: linear, unordered, graph, nesting, deciders.

use std::sync::Arc;
use std::time::Duration;

use baton_core::{Atom, AtomState, Flow, FlowState, Inputs};
use baton_testkit::{Action, Log, Phase, Probe};
use serde_json::json;
use tokio::sync::Barrier;

use crate::run;

fn states(store_atoms: &[baton_core::model::AtomRecord]) -> Vec<(String, AtomState)> {
    store_atoms
        .iter()
        .map(|a| (a.name.clone(), a.state))
        .collect()
}

#[tokio::test]
async fn empty_flow_succeeds_at_once() {
    let flow = Flow::linear("empty").compile().unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Success);
    assert!(outcome.results.is_empty());
}

#[tokio::test]
async fn linear_flow_runs_in_order() {
    let log = Log::new();
    let flow = Flow::linear("line")
        .add(Atom::task("one", Probe::new(&log)))
        .add(Atom::task("two", Probe::new(&log)))
        .add(Atom::task("three", Probe::new(&log)))
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Success);
    assert_eq!(
        log.sequence(Action::Execute, Phase::Start),
        vec!["one", "two", "three"]
    );
    assert_eq!(outcome.results.len(), 3);
}

/// Two tasks that each wait for the other to start can only finish if they run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unordered_flow_runs_children_in_parallel() {
    let barrier = Arc::new(Barrier::new(2));
    let meet = |name: &str| {
        let barrier = barrier.clone();
        Atom::from_fn(name, move |_| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                Ok(json!("met"))
            }
        })
    };
    let flow = Flow::unordered("pair")
        .add(meet("left"))
        .add(meet("right"))
        .compile()
        .unwrap();
    let (outcome, _) = tokio::time::timeout(Duration::from_secs(10), run(&flow, Inputs::new()))
        .await
        .expect("both tasks ran at the same time");
    assert_eq!(outcome.state, FlowState::Success);
}

#[tokio::test]
async fn parallelism_one_runs_unordered_children_one_at_a_time() {
    let log = Log::new();
    let flow = Flow::unordered("serial")
        .add(Atom::task(
            "a",
            Probe::new(&log).delay(Duration::from_millis(5)),
        ))
        .add(Atom::task(
            "b",
            Probe::new(&log).delay(Duration::from_millis(5)),
        ))
        .add(Atom::task(
            "c",
            Probe::new(&log).delay(Duration::from_millis(5)),
        ))
        .compile()
        .unwrap();
    let store = baton_core::MemoryStore::new();
    let outcome = baton_core::Engine::new(store)
        .with_parallelism(1)
        .start(&flow, Inputs::new())
        .await
        .unwrap();
    assert!(outcome.is_success());
    // With one slot, every start is followed by that atom's end before the next start.
    let calls: Vec<(String, Phase)> = log.calls().into_iter().map(|c| (c.atom, c.phase)).collect();
    for pair in calls.chunks(2) {
        assert_eq!(pair[0].0, pair[1].0, "interleaved: {calls:?}");
        assert_eq!((pair[0].1, pair[1].1), (Phase::Start, Phase::Ok));
    }
}

#[tokio::test]
async fn graph_orders_children_by_links_and_data() {
    let log = Log::new();
    let flow = Flow::graph("g")
        // Added in reverse order on purpose: the graph, not the order of `add`, decides.
        .add(Atom::task("deploy", Probe::new(&log)).requires(["image"]))
        .add(Atom::task("build", Probe::new(&log)).provides("image"))
        .add(Atom::task("announce", Probe::new(&log)))
        .link("deploy", "announce")
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert!(outcome.is_success());
    assert_eq!(
        log.sequence(Action::Execute, Phase::Start),
        vec!["build", "deploy", "announce"]
    );
}

#[tokio::test]
async fn nested_flows_compose() {
    let log = Log::new();
    let flow = Flow::linear("outer")
        .add(Atom::task("first", Probe::new(&log)).provides("x"))
        .add(
            Flow::unordered("middle")
                .add(Atom::task("m1", Probe::new(&log)).requires(["x"]))
                .add(
                    Flow::linear("inner")
                        .add(Atom::task("i1", Probe::new(&log)).requires(["x"]))
                        .add(Atom::task("i2", Probe::new(&log))),
                ),
        )
        .add(Atom::task("last", Probe::new(&log)))
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert!(outcome.is_success());
    let order = log.sequence(Action::Execute, Phase::Start);
    let pos = |n: &str| order.iter().position(|a| a == n).unwrap();
    assert_eq!(pos("first"), 0);
    assert!(pos("i1") < pos("i2"));
    assert_eq!(pos("last"), 4);
}

#[tokio::test]
async fn decider_skips_a_branch_and_everything_after_it() {
    let log = Log::new();
    let flow = Flow::graph("deciding")
        .add(Atom::task(
            "check",
            Probe::new(&log).returns(json!({"fast": false})),
        ))
        .add(Atom::task("fast", Probe::new(&log)))
        .add(Atom::task("fast-after", Probe::new(&log)))
        .add(Atom::task("slow", Probe::new(&log)))
        .add(Atom::task("join", Probe::new(&log)))
        .link_if("check", "fast", |r| r["check"]["fast"] == json!(true))
        .link_if("check", "slow", |r| r["check"]["fast"] == json!(false))
        .link("fast", "fast-after")
        .link("fast-after", "join")
        .link("slow", "join")
        .compile()
        .unwrap();
    let (outcome, store) = run(&flow, Inputs::new()).await;
    assert!(outcome.is_success());
    let snap = baton_core::store::Store::load_flow(&store, outcome.flow)
        .await
        .unwrap();
    let states = states(&snap.atoms);
    let state = |n: &str| states.iter().find(|(a, _)| a == n).unwrap().1;
    assert_eq!(state("fast"), AtomState::Ignore);
    assert_eq!(state("fast-after"), AtomState::Ignore);
    assert_eq!(state("slow"), AtomState::Success);
    // A join after alternative branches runs when one of them ran.
    assert_eq!(state("join"), AtomState::Success);
    assert_eq!(
        log.sequence(Action::Execute, Phase::Start),
        vec!["check", "slow", "join"]
    );
}

#[tokio::test]
async fn decider_can_skip_a_whole_subflow() {
    let log = Log::new();
    let flow = Flow::graph("g")
        .add(Atom::task("gate", Probe::new(&log).returns(json!(false))))
        .add(
            Flow::linear("optional")
                .add(Atom::task("o1", Probe::new(&log)))
                .add(Atom::task("o2", Probe::new(&log))),
        )
        .link_if("gate", "optional", |r| r["gate"] == json!(true))
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert!(outcome.is_success());
    assert_eq!(log.sequence(Action::Execute, Phase::Start), vec!["gate"]);
    assert_eq!(outcome.results.len(), 1);
}
