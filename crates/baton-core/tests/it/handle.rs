//! Job handles and flow results: the handle cases every board runs (`baton_testkit::handle`),
//! on the memory board, and what a flow's result is.

mod conformance {
    fn pair() -> (baton_core::MemoryJobBoard, baton_core::MemoryStore) {
        let store = baton_core::MemoryStore::new();
        (baton_core::MemoryJobBoard::new(&store), store)
    }

    baton_testkit::handle_conformance!(pair());
}

use baton_core::compile::Error;
use baton_core::typed::{atom, from_fn, TypedFlow};
use baton_core::{Atom, Engine, Flow, FlowState, MemoryStore, TaskError};
use serde_json::json;

/// A flow returning `symbol`, whose atom `one` provides `one` and `two` fails if `fail`.
fn flow(symbol: &str, fail: bool) -> Flow {
    Flow::linear("f")
        .add(Atom::from_fn("one", |_| async { Ok(json!({"n": 1})) }).provides("one"))
        .add(
            Atom::from_fn("two", move |_| async move {
                if fail {
                    Err(TaskError::msg("no"))
                } else {
                    Ok(json!(2))
                }
            })
            .provides("two"),
        )
        .returns(symbol)
}

#[tokio::test]
async fn a_run_that_succeeds_has_its_flows_result_and_records_it_for_its_job() {
    let compiled = flow("one", false).compile().unwrap();
    let outcome = Engine::new(MemoryStore::new())
        .start(&compiled, Default::default())
        .await
        .unwrap();
    assert_eq!(outcome.result(), Some(&json!({"n": 1})));
    let recorded = outcome.job_outcome();
    assert_eq!(recorded["result"], json!({"n": 1}));
    assert_eq!(recorded["state"], json!("SUCCESS"));
    // Naming a result changes nothing about the definition's fingerprint.
    let unnamed = Flow::linear("f")
        .add(Atom::from_fn("one", |_| async { Ok(json!({"n": 1})) }).provides("one"))
        .add(Atom::from_fn("two", |_| async { Ok(json!(2)) }).provides("two"))
        .compile()
        .unwrap();
    assert_eq!(compiled.fingerprint(), unnamed.fingerprint());
    let plain = Engine::new(MemoryStore::new())
        .start(&unnamed, Default::default())
        .await
        .unwrap();
    assert_eq!(plain.result(), None);
    assert!(plain.job_outcome().get("result").is_none());
}

#[tokio::test]
async fn a_run_that_reverts_has_no_result() {
    let compiled = flow("one", true).compile().unwrap();
    let outcome = Engine::new(MemoryStore::new())
        .start(&compiled, Default::default())
        .await
        .unwrap();
    assert_eq!(outcome.state, FlowState::Reverted);
    assert_eq!(outcome.result(), None);
    assert!(outcome.job_outcome().get("result").is_none());
}

#[test]
fn a_result_no_atom_provides_does_not_compile() {
    assert_eq!(
        flow("three", false).compile().err(),
        Some(Error::UnknownResult {
            flow: "f".into(),
            symbol: "three".into()
        })
    );
    // A typed handle from another flow names a symbol this one does not provide.
    let mut other = TypedFlow::linear("other");
    let elsewhere = other.add(
        atom(
            "elsewhere",
            from_fn(|(): (), _| async { Ok::<_, TaskError>(1) }),
        ),
        (),
    );
    let mut typed = TypedFlow::linear("typed");
    typed.add(
        atom("here", from_fn(|(): (), _| async { Ok::<_, TaskError>(2) })),
        (),
    );
    typed.returns(&elsewhere);
    assert!(matches!(
        typed.compile(),
        Err(Error::UnknownResult { flow, symbol }) if flow == "typed" && symbol == "elsewhere"
    ));
}

#[tokio::test]
async fn only_the_outermost_flow_has_a_result() {
    let mut inner = TypedFlow::linear("inner");
    let deep = inner.add(
        atom("deep", from_fn(|(): (), _| async { Ok::<_, TaskError>(7) })),
        (),
    );
    inner.returns(&deep);
    let mut outer = TypedFlow::linear("outer");
    outer.add_flow(inner);
    let compiled = outer.compile().unwrap();
    let outcome = Engine::new(MemoryStore::new())
        .start(&compiled, Default::default())
        .await
        .unwrap();
    assert_eq!(outcome.state, FlowState::Success);
    assert_eq!(outcome.result(), None);
    // Named on the outer flow, an atom of the subflow's output is its result.
    let mut inner = TypedFlow::linear("inner");
    let deep = inner.add(
        atom("deep", from_fn(|(): (), _| async { Ok::<_, TaskError>(7) })),
        (),
    );
    let mut outer = TypedFlow::linear("outer");
    outer.add_flow(inner);
    outer.returns(&deep);
    let outcome = Engine::new(MemoryStore::new())
        .start(&outer.compile().unwrap(), Default::default())
        .await
        .unwrap();
    assert_eq!(outcome.result(), Some(&json!(7)));
}

#[test]
fn handles_and_their_waits_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let store = MemoryStore::new();
    let board: std::sync::Arc<dyn baton_core::JobBoard> =
        std::sync::Arc::new(baton_core::MemoryJobBoard::new(&store));
    let handle: baton_core::JobHandle<String> =
        baton_core::JobHandle::new(board, baton_core::JobId::new());
    send_sync(&handle);
    send(&handle.wait());
    send(&handle.wait_timeout(std::time::Duration::ZERO));
}
