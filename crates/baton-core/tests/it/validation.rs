//! Bad flows and bad inputs are typed errors naming the culprit.

use baton_core::compile::Error;
use baton_core::retry::Times;
use baton_core::store::Store;
use baton_core::{Atom, Engine, Flow, Inputs, MemoryStore};
use serde_json::json;

fn noop(name: &str) -> Atom {
    Atom::from_fn(name, |_| async { Ok(json!(null)) })
}

#[test]
fn duplicate_names_are_rejected() {
    let err = Flow::linear("dup")
        .add(noop("a"))
        .add(Flow::linear("inner").add(noop("a")))
        .compile()
        .unwrap_err();
    assert_eq!(err, Error::DuplicateName("a".into()));
}

#[test]
fn cycles_name_their_atoms() {
    let err = Flow::graph("loop")
        .add(noop("a"))
        .add(noop("b"))
        .add(noop("c"))
        .link("a", "b")
        .link("b", "c")
        .link("c", "a")
        .compile()
        .unwrap_err();
    assert_eq!(err, Error::Cycle(vec!["a".into(), "b".into(), "c".into()]));
    assert_eq!(err.to_string(), "cycle between atoms a -> b -> c");
}

#[test]
fn data_dependencies_can_make_a_cycle() {
    let err = Flow::graph("data-loop")
        .add(noop("a").requires(["y"]).provides("x"))
        .add(noop("b").requires(["x"]).provides("y"))
        .compile()
        .unwrap_err();
    assert!(matches!(err, Error::Cycle(_)), "{err}");
}

#[test]
fn links_to_unknown_children_are_rejected() {
    let err = Flow::graph("g")
        .add(noop("a"))
        .link("a", "ghost")
        .compile()
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownLinkTarget { unknown, .. } if unknown == "ghost"),
        "{err}"
    );
}

#[test]
fn links_outside_graph_flows_are_rejected() {
    let err = Flow::linear("l")
        .add(noop("a"))
        .add(noop("b"))
        .link("a", "b")
        .compile()
        .unwrap_err();
    assert_eq!(err, Error::LinkOutsideGraph("l".into()));
}

#[test]
fn unordered_providers_are_ambiguous() {
    let err = Flow::linear("l")
        .add(
            Flow::unordered("u")
                .add(noop("p1").provides("v"))
                .add(noop("p2").provides("v")),
        )
        .add(noop("use").requires(["v"]))
        .compile()
        .unwrap_err();
    assert_eq!(
        err,
        Error::AmbiguousProvider {
            symbol: "v".into(),
            consumer: "use".into(),
            providers: vec!["p1".into(), "p2".into()],
        }
    );
}

#[test]
fn a_provider_that_runs_after_its_consumer_is_rejected() {
    let err = Flow::linear("l")
        .add(noop("use").requires(["v"]))
        .add(noop("make").provides("v"))
        .compile()
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnorderedProvider { provider, consumer, .. } if provider == "make" && consumer == "use"),
        "{err}"
    );
}

#[test]
fn retry_controllers_and_tasks_stay_in_their_places() {
    let err = Flow::linear("l")
        .add(Atom::retry("r", Times::new(2)))
        .compile()
        .unwrap_err();
    assert_eq!(err, Error::MisplacedAtom("r".into()));
    let err = Flow::linear("l").retry(noop("t")).compile().unwrap_err();
    assert_eq!(err, Error::MisplacedAtom("t".into()));
}

#[test]
fn inject_and_rebind_of_an_input_the_atom_does_not_require_are_refused() {
    let cases = [
        (
            noop("boot").requires(["flavor"]).inject("flavour", "tiny"),
            "flavour",
            "inject",
        ),
        (
            noop("boot").rebind("image", "default_image"),
            "image",
            "rebind",
        ),
    ];
    for (atom, input, via) in cases {
        let err = Flow::linear("l").add(atom).compile().unwrap_err();
        let expected = Error::UndeclaredInput {
            atom: "boot".into(),
            input: input.into(),
            via,
        };
        assert_eq!(err, expected);
    }
    let err = Flow::linear("l")
        .add(noop("boot").inject("flavour", "tiny"))
        .compile()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "atom \"boot\" has an inject for input \"flavour\", which it neither requires nor takes as optional"
    );
    // Declared as required or optional, either is fine, on tasks and controllers alike.
    Flow::linear("l")
        .retry(
            Atom::retry("r", Times::new(2))
                .optional("n", 1)
                .inject("n", 2),
        )
        .add(
            noop("boot")
                .requires(["image"])
                .rebind("image", "default_image")
                .optional("flavor", "tiny")
                .inject("flavor", "large"),
        )
        .compile()
        .unwrap();
}

#[tokio::test]
async fn missing_inputs_are_refused_before_anything_is_stored() {
    let flow = Flow::linear("needs")
        .add(noop("boot").requires(["image"]))
        .compile()
        .unwrap();
    let store = MemoryStore::new();
    let err = Engine::new(store.clone())
        .create(&flow, Inputs::new())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "atom \"boot\" requires \"image\", which no atom provides and the flow was not given"
    );
    assert_eq!(store.commits(), 0);
}

#[test]
fn graphs_export_to_dot_and_mermaid() {
    let flow = Flow::linear("l")
        .add(noop("a"))
        .add(noop("b"))
        .compile()
        .unwrap();
    let dot = flow.to_dot();
    assert!(dot.contains("a0 [label=\"a\", shape=box];"), "{dot}");
    assert!(dot.contains("a0 -> a1;"), "{dot}");
    let mermaid = flow.to_mermaid();
    assert!(mermaid.contains("a0[\"a\"]"), "{mermaid}");
    assert!(mermaid.contains("a0 --> a1"), "{mermaid}");
}

#[tokio::test]
async fn every_run_records_the_shape_of_its_flow() {
    use baton_core::store::Store;
    let flow = Flow::graph("g")
        .add(noop("a").provides("x"))
        .add(noop("b").requires(["x"]))
        .compile()
        .unwrap();
    let store = MemoryStore::new();
    let id = Engine::new(store.clone())
        .create_with(
            &flow,
            Inputs::new(),
            baton_core::CreateOptions::new().meta(json!({"owner": "me"})),
        )
        .await
        .unwrap();
    let meta = store.load_flow(id).await.unwrap().flow.meta;
    assert_eq!(meta["owner"], json!("me"), "the caller's metadata is kept");
    let shape: baton_core::compile::Shape =
        serde_json::from_value(meta[baton_core::engine::GRAPH_META_KEY].clone()).unwrap();
    assert_eq!(shape.to_dot("g"), flow.to_dot());
    assert_eq!(shape, flow.shape());
}

/// A stored run resumed with a definition it was not made from is refused, naming what
/// differs; the same atoms in another order are matched by name.
#[tokio::test]
async fn a_run_resumed_with_another_definition_is_refused() {
    use baton_core::engine::Error as EngineError;
    let store = MemoryStore::new();
    let engine = Engine::new(store.clone());
    let made = Flow::linear("deploy")
        .add(noop("a"))
        .add(noop("b"))
        .retry(Atom::retry("r", Times::new(2)))
        .compile()
        .unwrap();
    let id = engine.create(&made, Inputs::new()).await.unwrap();
    let mismatch = |flow: Flow| {
        let engine = engine.clone();
        async move {
            match engine.run(&flow.compile().unwrap(), id).await {
                Err(EngineError::FlowMismatch { flow, detail }) => {
                    assert_eq!(flow, id);
                    detail
                }
                other => panic!("expected FlowMismatch, got {other:?}"),
            }
        }
    };
    let retry = || Atom::retry("r", Times::new(2));

    let other_name = Flow::linear("undeploy")
        .add(noop("a"))
        .add(noop("b"))
        .retry(retry());
    assert_eq!(
        mismatch(other_name).await,
        "stored as \"deploy\", definition is \"undeploy\""
    );
    let more = Flow::linear("deploy")
        .add(noop("a"))
        .add(noop("b"))
        .add(noop("c"))
        .retry(retry());
    assert_eq!(mismatch(more).await, "3 atoms stored, 4 defined");
    let renamed = Flow::linear("deploy")
        .add(noop("a"))
        .add(noop("z"))
        .retry(retry());
    assert_eq!(mismatch(renamed).await, "atom \"z\" is not stored");
    let retry_as_task = Flow::linear("deploy")
        .add(noop("r"))
        .add(noop("a"))
        .add(noop("b"));
    assert_eq!(
        mismatch(retry_as_task).await,
        "atom \"r\" is stored as a retry, defined as a task"
    );

    // The same atoms, wired differently: the fingerprint tells, and the recorded shape says
    // which edges differ.
    let reordered = Flow::linear("deploy")
        .add(noop("b"))
        .add(noop("a"))
        .retry(retry());
    let detail = mismatch(reordered).await;
    assert!(
        detail.starts_with("its atoms are the same, but their wiring is not"),
        "{detail}"
    );
    assert!(
        detail.ends_with(
            "edges no longer defined: a -> b, r -> a; edges new in the definition: b -> a, r -> b"
        ),
        "{detail}"
    );
    // Nothing was written by the refusals.
    assert_eq!(store.history(id).await.unwrap().len(), 0);
}

/// A run stored before fingerprints (none recorded) is matched by its atoms' names and kinds,
/// in whatever order the definition lists them.
#[tokio::test]
async fn a_run_without_a_fingerprint_is_matched_by_atom_names() {
    use baton_core::model::{AtomKind, AtomRecord, FlowRecord};
    use baton_core::{FlowId, FlowState, Intention};
    let store = MemoryStore::new();
    let id = FlowId::new();
    let now = chrono::Utc::now();
    let record = FlowRecord {
        id,
        name: "deploy".into(),
        state: FlowState::Pending,
        intention: Intention::Execute,
        inputs: Inputs::new(),
        meta: json!({}),
        factory: None,
        fingerprint: None,
        deadline: None,
        created_at: now,
        updated_at: now,
    };
    let atoms = [
        AtomRecord::pending("a", AtomKind::Task),
        AtomRecord::pending("b", AtomKind::Task),
    ];
    store.create_flow(&record, &atoms, None).await.unwrap();
    let reordered = Flow::linear("deploy").add(noop("b")).add(noop("a"));
    let outcome = Engine::new(store.clone())
        .run(&reordered.compile().unwrap(), id)
        .await
        .unwrap();
    assert!(outcome.is_success(), "{}", outcome.state);
}
