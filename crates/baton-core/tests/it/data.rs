//! Data flow: requires, provides, rebind, inject, optional inputs, typed access.

use baton_core::{Atom, Flow, FlowState, Inputs};
use baton_testkit::{inputs, Log, Probe};
use serde_json::json;

use crate::run;

#[tokio::test]
async fn results_flow_to_consumers_by_symbol() {
    let flow = Flow::linear("data")
        .add(Atom::from_fn("make", |_| async { Ok(json!(21)) }).provides("n"))
        .add(
            Atom::from_fn("double", |ctx| async move {
                let n: i64 = ctx.input("n")?;
                Ok(json!(n * 2))
            })
            .requires(["n"])
            .provides("answer"),
        )
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.get::<i64>("answer").unwrap(), Some(42));
    assert_eq!(outcome.results["make"], json!(21));
}

#[tokio::test]
async fn flow_inputs_feed_atoms() {
    let log = Log::new();
    let flow = Flow::linear("inputs")
        .add(Atom::task("use", Probe::new(&log)).requires(["region"]))
        .compile()
        .unwrap();
    run(&flow, inputs([("region", json!("eu-1"))])).await;
    assert_eq!(log.of("use")[0].inputs["region"], json!("eu-1"));
}

#[tokio::test]
async fn several_symbols_come_from_an_array_or_an_object() {
    let log = Log::new();
    let flow = Flow::linear("many")
        .add(
            Atom::from_fn("pair", |_| async { Ok(json!(["left", "right"])) })
                .provides_many(["l", "r"]),
        )
        .add(
            Atom::from_fn("named", |_| async { Ok(json!({"host": "h1", "port": 22})) })
                .provides_many(["host", "port"]),
        )
        .add(Atom::task("see", Probe::new(&log)).requires(["l", "r", "host", "port"]))
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert!(outcome.is_success());
    let seen = &log.of("see")[0].inputs;
    assert_eq!(seen["l"], json!("left"));
    assert_eq!(seen["r"], json!("right"));
    assert_eq!(seen["host"], json!("h1"));
    assert_eq!(seen["port"], json!(22));
    assert_eq!(outcome.symbol("port"), Some(&json!(22)));
}

#[tokio::test]
async fn rebind_reads_an_input_from_another_symbol() {
    let log = Log::new();
    let flow = Flow::linear("rebind")
        .add(Atom::from_fn("img", |_| async { Ok(json!("ubuntu")) }).provides("default_image"))
        .add(
            Atom::task("boot", Probe::new(&log))
                .requires(["image"])
                .rebind("image", "default_image"),
        )
        .compile()
        .unwrap();
    run(&flow, Inputs::new()).await;
    assert_eq!(log.of("boot")[0].inputs["image"], json!("ubuntu"));
}

#[tokio::test]
async fn inject_overrides_what_others_provide() {
    let log = Log::new();
    let flow = Flow::linear("inject")
        .add(Atom::from_fn("size", |_| async { Ok(json!("large")) }).provides("flavor"))
        .add(
            Atom::task("boot", Probe::new(&log))
                .requires(["flavor"])
                .inject("flavor", "tiny"),
        )
        .compile()
        .unwrap();
    run(&flow, inputs([("flavor", json!("medium"))])).await;
    assert_eq!(log.of("boot")[0].inputs["flavor"], json!("tiny"));
}

#[tokio::test]
async fn optional_inputs_use_their_default_only_when_nothing_provides_them() {
    let log = Log::new();
    let flow = Flow::linear("optional")
        .add(Atom::task("a", Probe::new(&log)).optional("timeout", 30))
        .add(Atom::task("b", Probe::new(&log)).optional("retries", 3))
        .compile()
        .unwrap();
    run(&flow, inputs([("retries", json!(5))])).await;
    assert_eq!(log.of("a")[0].inputs["timeout"], json!(30));
    assert_eq!(log.of("b")[0].inputs["retries"], json!(5));
}

#[tokio::test]
async fn the_nearest_provider_wins_in_a_line() {
    let log = Log::new();
    let flow = Flow::linear("shadow")
        .add(Atom::from_fn("v1", |_| async { Ok(json!(1)) }).provides("v"))
        .add(Atom::from_fn("v2", |_| async { Ok(json!(2)) }).provides("v"))
        .add(Atom::task("read", Probe::new(&log)).requires(["v"]))
        .compile()
        .unwrap();
    run(&flow, Inputs::new()).await;
    assert_eq!(log.of("read")[0].inputs["v"], json!(2));
}

#[tokio::test]
async fn wrongly_typed_input_fails_the_atom_with_a_named_error() {
    let flow = Flow::linear("typed")
        .add(
            Atom::from_fn("count", |ctx| async move {
                let n: u32 = ctx.input("n")?;
                Ok(json!(n))
            })
            .requires(["n"]),
        )
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, inputs([("n", json!("seven"))])).await;
    assert_eq!(outcome.state, FlowState::Reverted);
    let f = &outcome.failures[0];
    assert_eq!(f.atom, "count");
    assert!(f.message.contains("\"n\""), "{}", f.message);
    assert!(f.message.contains("count"), "{}", f.message);
}

#[tokio::test]
async fn a_result_missing_a_provided_symbol_fails_the_atom() {
    let flow = Flow::linear("missing")
        .add(Atom::from_fn("half", |_| async { Ok(json!({"a": 1})) }).provides_many(["a", "b"]))
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Reverted);
    assert_eq!(outcome.failures[0].kind, baton_core::FailureKind::Result);
    assert!(outcome.failures[0].message.contains("\"b\""));
}

#[tokio::test]
async fn a_result_over_the_size_limit_fails_the_atom_and_nothing_else() {
    let flow = Flow::linear("big")
        .add(Atom::from_fn("huge", |_| async {
            Ok(json!("x".repeat(2048)))
        }))
        .compile()
        .unwrap();
    let store = baton_core::MemoryStore::new();
    let mut options = baton_core::engine::Options::default();
    options.max_result_bytes = 1024;
    let engine = baton_core::Engine::new(store.clone()).with_options(options);
    let outcome = engine.start(&flow, Inputs::new()).await.unwrap();
    assert_eq!(outcome.state, FlowState::Reverted);
    assert!(outcome.failures[0]
        .message
        .contains("over the limit of 1024"));
    let snap = baton_core::store::Store::load_flow(&store, outcome.flow)
        .await
        .unwrap();
    assert!(
        snap.atoms[0].result.is_none(),
        "the oversized result was stored"
    );
}

#[tokio::test]
async fn task_errors_keep_their_cause_chain_and_retryability() {
    #[derive(Debug, thiserror::Error)]
    #[error("quota exceeded")]
    struct Quota(#[source] std::io::Error);

    let flow = Flow::linear("errors")
        .add(Atom::from_fn("boom", |_| async {
            let r: Result<(), Quota> = Err(Quota(std::io::Error::other("403 from nova")));
            baton_core::ResultExt::retryable(r)?;
            Ok(json!(null))
        }))
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    let f = &outcome.failures[0];
    assert_eq!(f.message, "quota exceeded");
    assert_eq!(f.causes, vec!["403 from nova".to_owned()]);
    assert!(f.retryable);
}

#[tokio::test]
async fn a_panicking_task_fails_its_atom_not_the_engine() {
    let flow = Flow::linear("panics")
        .add(Atom::from_fn("bad", |_| async {
            panic!("index out of range")
        }))
        .compile()
        .unwrap();
    let (outcome, _) = run(&flow, Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Reverted);
    assert_eq!(outcome.failures[0].kind, baton_core::FailureKind::Panic);
    assert!(outcome.failures[0].message.contains("index out of range"));
}

/// A symbol that two atoms provide ends in the outcome with the value of the later one.
#[tokio::test]
async fn the_outcome_keeps_the_last_value_of_a_symbol() {
    let value = |v: i64| move |_| async move { Ok(json!(v)) };
    for (first, second, expected) in [(1, 2, 2), (2, 1, 1)] {
        let flow = Flow::linear("twice")
            .add(Atom::from_fn("a", value(first)).provides("x"))
            .add(Atom::from_fn("b", value(second)).provides("x"))
            .compile()
            .unwrap();
        let outcome = baton_core::Engine::new(baton_core::MemoryStore::new())
            .start(&flow, Inputs::new())
            .await
            .unwrap();
        assert_eq!(outcome.symbol("x"), Some(&json!(expected)));
        assert_eq!(outcome.results.len(), 2);
    }
}
