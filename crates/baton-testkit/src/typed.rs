//! Typed tasks and flows ([`baton_core::typed`]) on every store: typed inputs and outputs (a
//! struct, an enum, a `Vec`, an `Option`) stored as JSON and read back, across a resume by
//! another engine, and given to reverts. A backend's tests expand
//! [`typed_conformance!`](crate::typed_conformance).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::store::Store;
use baton_core::typed::{atom, from_fn, Const, FlowInput, Out, TypedFlow};
use baton_core::{
    AtomState, CompiledFlow, Control, Engine, FlowState, Inputs, RunOptions, TaskError,
};
use serde::{Deserialize, Serialize};

/// A struct, with a list, an enum, an option and a map in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// A name.
    pub name: String,
    /// Sizes.
    pub sizes: Vec<u32>,
    /// A kind.
    pub kind: Kind,
    /// A note, or none.
    pub note: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// An enum with each kind of variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Kind {
    /// A unit variant.
    Small,
    /// A newtype variant.
    Sized(u32),
    /// A struct variant.
    Custom {
        /// Processors.
        cpu: u8,
        /// Memory.
        ram_gb: u16,
    },
}

/// What the last atom makes of everything before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The spec it was given.
    pub spec: Spec,
    /// The note it was given.
    pub note: Option<String>,
    /// The kind it was given, if any.
    pub missing: Option<Kind>,
    /// The kinds it was given.
    pub kinds: Vec<Kind>,
    /// The sum of the spec's sizes.
    pub total: u64,
}

fn expected_spec() -> Spec {
    Spec {
        name: "web".into(),
        sizes: vec![1, 2, 40],
        kind: Kind::Custom { cpu: 4, ram_gb: 16 },
        note: None,
        labels: [("tier".to_owned(), "front".to_owned())].into(),
    }
}

fn expected_report() -> Report {
    Report {
        spec: expected_spec(),
        note: Some("web has 3 sizes".into()),
        missing: None,
        kinds: vec![Kind::Small, Kind::Sized(7)],
        total: 43,
    }
}

/// Never returns if `hang`.
async fn gate(hang: bool) {
    if hang {
        std::future::pending::<()>().await;
    }
}

/// `spec` (from the flow input `name` and a constant kind) -> `note` (an `Option`) ->
/// `none` (an `Option` that is `None`) -> `report`; the atom named `hang_in`, if any, never
/// returns.
fn round_trip_flow(
    hang_in: Option<&str>,
) -> (CompiledFlow, FlowInput<String>, Out<Spec>, Out<Report>) {
    let hangs = |atom: &str| hang_in == Some(atom);
    let mut flow = TypedFlow::linear("typed-round-trip");
    let name = flow.input::<String>("name");
    let spec = flow.add(
        atom(
            "spec",
            from_fn(|(name, kind): (String, Kind), _ctx| async move {
                Ok::<_, TaskError>(Spec {
                    name: name.clone(),
                    sizes: vec![1, 2, 40],
                    kind,
                    note: None,
                    labels: [("tier".to_owned(), "front".to_owned())].into(),
                })
            }),
        ),
        (&name, Const(Kind::Custom { cpu: 4, ram_gb: 16 })),
    );
    let hang = hangs("note");
    let note = flow.add(
        atom(
            "note",
            from_fn(move |spec: Spec, _ctx| async move {
                gate(hang).await;
                Ok::<_, TaskError>(Some(format!(
                    "{} has {} sizes",
                    spec.name,
                    spec.sizes.len()
                )))
            }),
        ),
        &spec,
    );
    let none = flow.add(
        atom(
            "none",
            from_fn(|(): (), _ctx| async { Ok::<Option<Kind>, TaskError>(None) }),
        ),
        (),
    );
    let hang = hangs("report");
    let report = flow.add(
        atom(
            "report",
            from_fn(
                move |(spec, note, missing, kinds): (
                    Spec,
                    Option<String>,
                    Option<Kind>,
                    Vec<Kind>,
                ),
                      _ctx| {
                    async move {
                        gate(hang).await;
                        let total = spec.sizes.iter().map(|&s| u64::from(s)).sum();
                        Ok::<_, TaskError>(Report {
                            spec,
                            note,
                            missing,
                            kinds,
                            total,
                        })
                    }
                },
            ),
        ),
        (
            &spec,
            &note,
            &none,
            Const(vec![Kind::Small, Kind::Sized(7)]),
        ),
    );
    (flow.compile().unwrap(), name, spec, report)
}

/// Typed values round-trip through the store and a resume: a run halted after its first
/// atom (and, again, while its last one runs) is resumed by a new engine with the flow built
/// afresh, the atoms that succeeded are not run again, their stored outputs (the JSON of the
/// typed values) are read back into their types, and the typed result is what an
/// uninterrupted run gives.
pub async fn typed_values_round_trip_through_a_resume<S: Store + Clone + 'static>(store: S) {
    for (halt_in, attempts) in [("note", [1, 2, 1, 1]), ("report", [1, 1, 1, 2])] {
        halt_and_resume(&store, halt_in, attempts).await;
    }
}

/// Runs the round-trip flow until `halt_in` runs, halts it there, resumes it with a new
/// engine and checks the typed results and each atom's attempts.
async fn halt_and_resume<S: Store + Clone + 'static>(store: &S, halt_in: &str, attempts: [u32; 4]) {
    let (flow, name, spec, report) = round_trip_flow(Some(halt_in));
    let position = flow.atom_names().position(|a| a == halt_in).unwrap();
    let mut inputs = Inputs::new();
    name.insert(&mut inputs, &"web".to_owned()).unwrap();
    let engine = Engine::new(store.clone());
    let id = engine.create(&flow, inputs).await.unwrap();
    let control = Control::new();
    let run = tokio::spawn({
        let (engine, flow, control) = (engine.clone(), flow.clone(), control.clone());
        async move {
            engine
                .run_with(&flow, id, RunOptions::new().control(control))
                .await
        }
    });
    let mut halted = false;
    for _ in 0..1000 {
        let snapshot = store.load_flow(id).await.unwrap();
        if snapshot.atoms[position].state == AtomState::Running {
            control.halt();
            halted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(halted, "{halt_in} never started");
    assert!(run.await.unwrap().is_err(), "halted");
    let stored = store.load_flow(id).await.unwrap();
    assert_eq!(
        stored.atoms[0].result,
        Some(serde_json::to_value(expected_spec()).unwrap()),
        "the typed output is stored as its JSON"
    );

    // A new engine, the flow built afresh.
    let (again, _, _, _) = round_trip_flow(None);
    let outcome = Engine::new(store.clone()).run(&again, id).await.unwrap();
    assert_eq!(outcome.state, FlowState::Success, "{outcome:?}");
    assert_eq!(report.get(&outcome).unwrap(), Some(expected_report()));
    assert_eq!(spec.get(&outcome).unwrap(), Some(expected_spec()));
    let resumed = store.load_flow(id).await.unwrap();
    let stored_attempts: Vec<u32> = resumed.atoms.iter().map(|a| a.attempt).collect();
    assert_eq!(
        stored_attempts, attempts,
        "halted in {halt_in}: only the interrupted atom ran again"
    );
    assert_eq!(
        resumed.atoms[2].result,
        Some(serde_json::Value::Null),
        "None"
    );

    // The same as an uninterrupted run.
    let mut inputs = Inputs::new();
    name.insert(&mut inputs, &"web".to_owned()).unwrap();
    let straight = Engine::new(store.clone())
        .start(&again, inputs)
        .await
        .unwrap();
    assert_eq!(straight.results, outcome.results);
}

/// What a typed revert was given.
type Seen = Arc<Mutex<Vec<(Spec, Option<Report>)>>>;

/// A typed revert gets its typed input and the typed output its `execute` returned, read
/// back from the store.
pub async fn typed_reverts_get_their_input_and_output<S: Store + 'static>(store: S) {
    let seen: Seen = Arc::default();
    let mut flow = TypedFlow::linear("typed-revert");
    let spec = flow.add(
        atom(
            "spec",
            from_fn(|(): (), _ctx| async { Ok::<_, TaskError>(expected_spec()) }),
        ),
        (),
    );
    let record = seen.clone();
    let report = from_fn(|spec: Spec, _ctx| async move {
        Ok::<_, TaskError>(Report {
            total: spec.sizes.iter().map(|&s| u64::from(s)).sum(),
            spec,
            ..expected_report()
        })
    })
    .on_revert(move |spec: Spec, report: Option<Report>, _ctx| {
        record.lock().unwrap().push((spec, report));
        async { Ok(()) }
    });
    flow.add(atom("report", report), &spec);
    flow.add(
        atom(
            "boom",
            from_fn(|(): (), _ctx| async { Err::<(), _>(TaskError::msg("boom")) }),
        ),
        (),
    );
    let flow = flow.compile().unwrap();
    let outcome = Engine::new(store)
        .start(&flow, Inputs::new())
        .await
        .unwrap();
    assert_eq!(outcome.state, FlowState::Reverted, "{outcome:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [(expected_spec(), Some(expected_report()))]);
}

/// Expands to one `#[tokio::test]` per case, each given a store from `$make` (an async
/// expression; with `optional:`, of type `Option<S>`, `None` passing at once).
#[macro_export]
macro_rules! typed_conformance {
    (optional: $make:expr) => {
        $crate::typed_conformance!(@all [optional] $make);
    };
    ($make:expr) => {
        $crate::typed_conformance!(@all [required] $make);
    };
    (@all [$mode:ident] $make:expr) => {
        $crate::typed_conformance!(@cases [$mode] $make;
            typed_values_round_trip_through_a_resume,
            typed_reverts_get_their_input_and_output,
        );
    };
    (@cases [required] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::typed::$case($make).await;
            }
        )*
    };
    (@cases [optional] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(store) = $make {
                    $crate::typed::$case(store).await;
                }
            }
        )*
    };
}
