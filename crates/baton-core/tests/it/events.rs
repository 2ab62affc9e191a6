//! Notifications and progress.

use std::time::Duration;

use baton_core::model::Change;
use baton_core::store::Store;
use baton_core::{
    Atom, AtomState, Engine, EventKind, Events, Flow, FlowState, Inputs, Lagged, MemoryStore,
};
use serde_json::json;

#[tokio::test]
async fn every_committed_transition_is_an_event() {
    let flow = Flow::linear("observed")
        .add(Atom::from_fn("a", |_| async { Ok(json!(1)) }))
        .add(Atom::from_fn("b", |_| async { Ok(json!(2)) }))
        .compile()
        .unwrap();
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let mut events = engine.subscribe();
    let outcome = engine.start(&flow, Inputs::new()).await.unwrap();
    let history = store.history(outcome.flow).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < history.len() {
        let e = tokio::time::timeout(Duration::from_secs(1), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(e.flow, outcome.flow);
        if let EventKind::Transition(c) = e.kind {
            seen.push(c);
        }
    }
    let expected: Vec<Change> = history.into_iter().map(|t| t.change).collect();
    assert_eq!(seen, expected);
    assert!(matches!(
        seen.last(),
        Some(Change::Flow {
            to: FlowState::Success,
            ..
        })
    ));
}

#[tokio::test]
async fn progress_is_reported_and_persisted() {
    let flow = Flow::linear("progress")
        .add(Atom::from_fn("copy", |ctx| async move {
            for i in 1..=4 {
                ctx.progress(f64::from(i) / 4.0);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(json!("copied"))
        }))
        .compile()
        .unwrap();
    let store = MemoryStore::new();
    let mut options = baton_core::engine::Options::default();
    options.progress_interval = Duration::ZERO;
    let engine = Engine::new(store.clone()).with_options(options);
    let mut events = engine.subscribe();
    let outcome = engine.start(&flow, Inputs::new()).await.unwrap();
    assert!(outcome.is_success());
    let mut progress = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), events.next()).await {
        let e = e.unwrap();
        if let EventKind::Progress { atom, progress: p } = e.kind {
            assert_eq!(atom, "copy");
            progress.push(p);
        }
    }
    assert_eq!(progress, vec![0.25, 0.5, 0.75, 1.0]);
    let snap = store.load_flow(outcome.flow).await.unwrap();
    assert_eq!(snap.atoms[0].state, AtomState::Success);
    assert!((snap.atoms[0].progress - 1.0).abs() < f64::EPSILON);
    // Progress writes do not add transitions.
    let history = store.history(outcome.flow).await.unwrap();
    assert_eq!(history.len(), 4);
}

/// A subscriber that falls behind by more than the channel holds is told how many events it
/// missed, and then gets the rest: what it got and what it missed add up to every event.
#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_how_many_events_it_missed() {
    let mut flow = Flow::linear("long");
    for i in 0..3000 {
        flow = flow.add(Atom::from_fn(format!("a{i}"), |_| async {
            Ok(json!(null))
        }));
    }
    let flow = flow.compile().unwrap();
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let mut events = engine.subscribe();
    let outcome = engine.start(&flow, Inputs::new()).await.unwrap();
    drop(engine);
    let total = store.history(outcome.flow).await.unwrap().len();
    assert!(
        total > Events::CAPACITY,
        "the flow made too few events to fall behind: {total}"
    );
    let first = events.next().await.unwrap();
    let missed = match first {
        Err(Lagged { missed }) => usize::try_from(missed).unwrap(),
        Ok(e) => panic!("the first event was not the lag: {e:?}"),
    };
    assert_eq!(missed, total - Events::CAPACITY);
    let mut received = 0;
    while let Some(e) = events.next().await {
        let e = e.expect("one lag only");
        assert_eq!(e.flow, outcome.flow);
        received += 1;
    }
    assert_eq!(received, Events::CAPACITY);
}
