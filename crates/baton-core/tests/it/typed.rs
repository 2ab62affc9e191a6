//! Typed tasks and flows on the memory store, and what the builder and the compiler decide.

mod conformance {
    baton_testkit::typed_conformance!(baton_core::MemoryStore::new());
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_core::compile::{Error as CompileError, WiringError};
use baton_core::retry::{Backoff, RetryPolicy, Times};
use baton_core::typed::{atom, from_fn, Const, Transient, TypedFlow, TypedTask};
use baton_core::{
    Atom, Engine, FailureKind, FlowState, Inputs, MemoryStore, TaskContext, TaskError,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A typed task adding one to its input.
fn plus_one() -> impl TypedTask<Input = u32, Output = u32> {
    from_fn(|n: u32, _ctx| async move { Ok::<_, TaskError>(n + 1) })
}

/// A typed task with no input returning `n`.
fn constant(n: u32) -> impl TypedTask<Input = (), Output = u32> {
    from_fn(move |(): (), _ctx| async move { Ok::<_, TaskError>(n) })
}

/// A typed task adding up its inputs.
fn sum() -> impl TypedTask<Input = Vec<u32>, Output = u32> {
    from_fn(|ns: Vec<u32>, _ctx| async move { Ok::<_, TaskError>(ns.into_iter().sum()) })
}

async fn run(flow: &baton_core::CompiledFlow, inputs: Inputs) -> baton_core::Outcome {
    Engine::new(MemoryStore::new())
        .start(flow, inputs)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_graph_flow_is_ordered_by_the_handles_given_and_by_after() {
    let mut flow = TypedFlow::graph("diamond");
    let a = flow.add(atom("a", constant(1)), ());
    let b = flow.add(atom("b", plus_one()), &a);
    let c = flow.add(atom("c", plus_one()), &a);
    let d = flow.add(atom("d", sum()), vec![&b, &c]);
    let e = flow.add(atom("e", constant(9)), ());
    flow.after(&d, &e);
    let compiled = flow.compile().unwrap();
    let mut edges: Vec<(String, String)> = compiled
        .edges()
        .map(|(f, t)| (f.to_owned(), t.to_owned()))
        .collect();
    edges.sort();
    let want: Vec<(String, String)> = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e")]
        .iter()
        .map(|(f, t)| ((*f).to_owned(), (*t).to_owned()))
        .collect();
    assert_eq!(edges, want);
    let outcome = run(&compiled, Inputs::new()).await;
    assert_eq!(d.get(&outcome).unwrap(), Some(4));
    assert_eq!(e.get(&outcome).unwrap(), Some(9));
    // A typed atom provides one symbol, named like it.
    assert_eq!(outcome.symbol("d"), Some(&json!(4)));
}

#[tokio::test]
async fn each_fans_out_in_parallel_and_gathers_in_order() {
    let mut flow = TypedFlow::linear("fan-out");
    let base = flow.add(atom("base", constant(10)), ());
    let each = flow.each("adds", [3u32, 1, 2], |n| {
        let add = from_fn(|(base, n): (u32, u32), _ctx| async move {
            // The last item finishes first: the order is the items', not the finishing one.
            tokio::time::sleep(Duration::from_millis(u64::from(30 * (3 - n)))).await;
            Ok::<_, TaskError>(base + n)
        });
        (atom(format!("add-{n}"), add), (&base, Const(n)))
    });
    let none = flow.each("nothing", Vec::<u32>::new(), |n| {
        (atom(format!("never-{n}"), constant(n)), ())
    });
    assert!(none.is_empty());
    let gathered = flow.add(
        atom(
            "gather",
            from_fn(|(all, none): (Vec<u32>, Vec<u32>), _ctx| async move {
                Ok::<_, TaskError>((all, none))
            }),
        ),
        (&each, &none),
    );
    let compiled = flow.compile().unwrap();
    assert_eq!(compiled.len(), 5);
    let outcome = Engine::new(MemoryStore::new())
        .with_parallelism(4)
        .start(&compiled, Inputs::new())
        .await
        .unwrap();
    assert_eq!(
        gathered.get(&outcome).unwrap(),
        Some((vec![13, 11, 12], vec![]))
    );
    assert_eq!(each.len(), 3);
    assert_eq!(each.outs()[2].get(&outcome).unwrap(), Some(12));
}

#[test]
fn a_handle_from_another_flow_is_refused_naming_the_atom() {
    let mut other = TypedFlow::linear("other");
    let stray = other.add(atom("stray", constant(1)), ());
    let mut flow = TypedFlow::linear("main");
    flow.add(atom("reader", plus_one()), &stray);
    let refused = flow.compile();
    assert!(
        matches!(&refused, Err(CompileError::BadWiring { atom, problem: WiringError::ForeignHandle { producer } }) if atom == "reader" && producer == "stray"),
        "{refused:?}"
    );
    assert!(flow.into_flow().is_err());
}

#[test]
fn a_constant_that_does_not_serialize_is_refused_naming_the_atom() {
    let not_json: HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
    let mut flow = TypedFlow::linear("constants");
    flow.add(
        atom(
            "takes-a-map",
            from_fn(|m: HashMap<(u8, u8), u8>, _ctx| async move { Ok::<_, TaskError>(m.len()) }),
        ),
        Const(not_json),
    );
    let refused = flow.compile();
    assert!(
        matches!(&refused, Err(CompileError::BadWiring { atom, problem: WiringError::Constant { input: 0, .. } }) if atom == "takes-a-map"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn untyped_atoms_and_typed_ones_read_each_other() {
    let mut flow = TypedFlow::linear("mixed");
    let typed = flow.add(atom("typed", constant(20)), ());
    let legacy = flow.add_untyped(
        Atom::from_fn("legacy", |ctx| async move {
            let n: u32 = ctx.input("n")?;
            Ok(json!(n * 2))
        })
        .requires(["n"])
        .rebind("n", typed.symbol())
        .provides("doubled"),
    );
    let doubled = legacy.output::<u32>("doubled").unwrap();
    let last = flow.add(atom("last", plus_one()), &doubled);
    let refused = legacy.output::<u32>("tripled");
    assert!(
        matches!(&refused, Err(CompileError::BadWiring { problem: WiringError::NotProvided { provider, symbol }, .. }) if provider == "legacy" && symbol == "tripled"),
        "{refused:?}"
    );
    let outcome = run(&flow.compile().unwrap(), Inputs::new()).await;
    assert_eq!(last.get(&outcome).unwrap(), Some(41));
}

#[derive(Debug, thiserror::Error)]
#[error("the service is busy")]
struct Busy;

impl Transient for Busy {
    fn is_transient(&self) -> bool {
        true
    }
}

/// Fails with `Busy` on its first `fails` calls.
struct FailsFirst {
    calls: Arc<AtomicU32>,
    fails: u32,
}

#[async_trait::async_trait]
impl TypedTask for FailsFirst {
    type Input = u32;
    type Output = u32;
    type Error = Busy;

    async fn execute(&self, n: u32, _ctx: &TaskContext) -> Result<u32, Busy> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fails {
            return Err(Busy);
        }
        Ok(n * 10)
    }
}

#[tokio::test]
async fn a_typed_subflow_is_retried_as_a_group_and_a_typed_atom_in_place() {
    let group_calls = Arc::new(AtomicU32::new(0));
    let own_calls = Arc::new(AtomicU32::new(0));
    let mut flow = TypedFlow::linear("retries");
    let seed = flow.add(atom("seed", constant(2)), ());
    let mut attempt = TypedFlow::linear("attempt").retry(Atom::retry("again", Times::new(3)));
    let inner = attempt.add(
        atom(
            "inner",
            FailsFirst {
                calls: group_calls.clone(),
                fails: 2,
            },
        ),
        &seed,
    );
    flow.add_flow(attempt);
    let own = flow.add(
        atom(
            "own",
            FailsFirst {
                calls: own_calls.clone(),
                fails: 2,
            },
        )
        .retries(RetryPolicy::attempts(3).backoff(Backoff::none())),
        &inner,
    );
    let outcome = run(&flow.compile().unwrap(), Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Success, "{outcome:?}");
    assert_eq!(own.get(&outcome).unwrap(), Some(200));
    assert_eq!(group_calls.load(Ordering::SeqCst), 3);
    assert_eq!(own_calls.load(Ordering::SeqCst), 3);
    assert!(
        outcome
            .failures
            .iter()
            .all(|f| f.retryable && f.message == "the service is busy"),
        "{:?}",
        outcome.failures
    );
    assert_eq!(outcome.failures.len(), 4);
}

#[derive(Debug, Serialize, Deserialize)]
struct Net {
    id: String,
}

#[tokio::test]
async fn a_value_of_the_wrong_shape_fails_the_atom_naming_where() {
    let mut flow = TypedFlow::linear("wrong-shape");
    let legacy = flow
        .add_untyped(Atom::from_fn("legacy", |_| async { Ok(json!({ "id": 3 })) }).provides("net"));
    let net = legacy.output::<Net>("net").unwrap();
    flow.add(
        atom(
            "reader",
            from_fn(|net: Net, _ctx| async move { Ok::<_, TaskError>(net.id) }),
        ),
        &net,
    );
    let outcome = run(&flow.compile().unwrap(), Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Reverted);
    let f = &outcome.failures[0];
    assert_eq!(
        (f.atom.as_str(), f.kind, f.retryable),
        ("reader", FailureKind::Execute, false)
    );
    assert!(
        f.message.contains("\"reader\"") && f.message.contains("`id`"),
        "{f}"
    );
}

#[tokio::test]
async fn flow_inputs_are_typed_and_required() {
    let build = || {
        let mut flow = TypedFlow::linear("inputs");
        let n = flow.input::<u32>("n");
        let out = flow.add(atom("next", plus_one()), &n);
        (flow.compile().unwrap(), n, out)
    };
    let (compiled, n, out) = build();
    let required: Vec<(&str, &str)> = compiled.required_inputs().collect();
    assert_eq!(required, [("next", "n")]);
    assert_eq!(compiled.fingerprint(), build().0.fingerprint(), "stable");
    let mut inputs = Inputs::new();
    n.insert(&mut inputs, &41).unwrap();
    let outcome = run(&compiled, inputs).await;
    assert_eq!(out.get(&outcome).unwrap(), Some(42));
    let missing = Engine::new(MemoryStore::new())
        .start(&compiled, Inputs::new())
        .await;
    assert!(
        matches!(&missing, Err(baton_core::engine::Error::MissingInput { atom, symbol }) if atom == "next" && symbol == "n"),
        "{missing:?}"
    );
}

/// A typed atom in a subflow reads its retry controller's value: the flavour to try.
#[tokio::test]
async fn a_typed_atom_reads_its_controllers_value() {
    use baton_core::retry::ForEach;

    let mut attempt = TypedFlow::linear("boot")
        .retry(Atom::retry("flavors", ForEach::new(["small", "large"])).provides("flavor"));
    let flavor = attempt.output::<String>("flavor").unwrap();
    let server = attempt.add(
        atom(
            "server",
            from_fn(|flavor: String, _ctx| async move {
                if flavor == "small" {
                    return Err(TaskError::msg("too small").retryable());
                }
                Ok(format!("srv-{flavor}"))
            }),
        ),
        &flavor,
    );
    assert!(matches!(
        attempt.output::<String>("colour"),
        Err(CompileError::BadWiring {
            problem: WiringError::NotProvided { .. },
            ..
        })
    ));
    let mut flow = TypedFlow::linear("stack");
    flow.add_flow(attempt);
    let outcome = run(&flow.compile().unwrap(), Inputs::new()).await;
    assert_eq!(outcome.state, FlowState::Success, "{outcome:?}");
    assert_eq!(server.get(&outcome).unwrap(), Some("srv-large".to_owned()));
}
