//! Crash at every write: the engine is killed at its k-th write, for every k, and a fresh
//! engine resumes the flow from the store; the end must match an uninterrupted run.

use std::collections::{BTreeMap, BTreeSet};

use baton_core::store::Store;
use baton_core::{AtomState, CreateOptions, Engine, FlowId, Outcome};

use crate::scenarios::Scenario;
use crate::{Action, CrashMode, CrashStore, Log};

/// What a crash test covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// Writes of the uninterrupted run (the k range tested).
    pub writes: u64,
    /// Runs that crashed and were resumed.
    pub crashes: u64,
}

fn failures_of(outcome: &Outcome) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for f in &outcome.failures {
        *out.entry((f.atom.clone(), f.message.clone())).or_default() += 1;
    }
    out
}

fn check_counts(
    what: &str,
    got: &BTreeMap<String, usize>,
    want: &BTreeMap<String, usize>,
    may_repeat: &BTreeSet<String>,
) -> Result<(), String> {
    let atoms: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    for atom in atoms {
        let g = got.get(atom).copied().unwrap_or(0);
        let w = want.get(atom).copied().unwrap_or(0);
        let ok = g == w || (g == w + 1 && may_repeat.contains(atom));
        if !ok {
            return Err(format!(
                "atom {atom}: {g} successful {what} calls, an uninterrupted run makes {w}{}",
                if may_repeat.contains(atom) {
                    " (one more allowed: it was caught mid-call)"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

async fn run_once<S: Store + Clone + 'static>(
    store: S,
    scenario: &Scenario,
    log: &Log,
    id: FlowId,
) -> Result<Outcome, baton_core::engine::Error> {
    let flow = (scenario.build)(log);
    let engine = Engine::new(store).with_parallelism(scenario.parallelism);
    engine
        .create_with(&flow, scenario.inputs.clone(), CreateOptions::new().id(id))
        .await?;
    engine.run(&flow, id).await
}

/// Runs `scenario` once uninterrupted on `store`, then once per write k and per
/// [`CrashMode`], killing the engine at write k and resuming with a fresh engine. Panics, with
/// the scenario, k and mode, on the first difference from the uninterrupted run: final state,
/// results, failures, and the number of successful `execute` and `revert` calls per atom (an
/// atom caught `RUNNING` or `REVERTING` may have made one call more).
///
/// `store` may be shared by all runs: each uses a new flow id.
pub async fn crash_at_every_write<S: Store + Clone + 'static>(
    store: S,
    scenario: &Scenario,
) -> Coverage {
    let ref_log = Log::new();
    let counting = CrashStore::counting(store.clone());
    let reference = run_once(counting.clone(), scenario, &ref_log, FlowId::new())
        .await
        .unwrap_or_else(|e| panic!("{}: uninterrupted run failed: {e}", scenario.name));
    let writes = counting.writes();
    let ref_execs = ref_log.successes(Action::Execute);
    let ref_reverts = ref_log.successes(Action::Revert);

    let mut crashes = 0;
    for k in 1..=writes {
        for mode in [CrashMode::BeforeWrite, CrashMode::AfterWrite] {
            let ctx = format!(
                "{} (crash at write {k} of {writes}, {mode:?})",
                scenario.name
            );
            let log = Log::new();
            let id = FlowId::new();
            let crash = CrashStore::new(store.clone(), k, mode);
            let first = run_once(crash.clone(), scenario, &log, id).await;
            // Let tasks the dead engine dropped reach their next await point.
            tokio::task::yield_now().await;
            let outcome = match first {
                Ok(outcome) => {
                    assert!(!crash.crashed(), "{ctx}: the run succeeded through a crash");
                    outcome
                }
                Err(_) => {
                    assert!(crash.crashed(), "{ctx}: the run failed without a crash");
                    crashes += 1;
                    match store.load_flow(id).await {
                        Ok(snapshot) => {
                            let caught = |s: AtomState| -> BTreeSet<String> {
                                snapshot
                                    .atoms
                                    .iter()
                                    .filter(|a| a.state == s)
                                    .map(|a| a.name.clone())
                                    .collect()
                            };
                            let (running, reverting) =
                                (caught(AtomState::Running), caught(AtomState::Reverting));
                            let flow = (scenario.build)(&log);
                            let outcome = Engine::new(store.clone())
                                .with_parallelism(scenario.parallelism)
                                .run(&flow, id)
                                .await
                                .unwrap_or_else(|e| panic!("{ctx}: resume failed: {e}"));
                            check_counts(
                                "execute",
                                &log.successes(Action::Execute),
                                &ref_execs,
                                &running,
                            )
                            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                            check_counts(
                                "revert",
                                &log.successes(Action::Revert),
                                &ref_reverts,
                                &reverting,
                            )
                            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                            outcome
                        }
                        // The crash came before the flow was stored: start it afresh.
                        Err(_) => run_once(store.clone(), scenario, &log, id)
                            .await
                            .unwrap_or_else(|e| panic!("{ctx}: fresh start failed: {e}")),
                    }
                }
            };
            assert_eq!(outcome.state, reference.state, "{ctx}: final state");
            assert_eq!(outcome.results, reference.results, "{ctx}: results");
            assert_eq!(
                failures_of(&outcome),
                failures_of(&reference),
                "{ctx}: failures"
            );
        }
    }
    Coverage { writes, crashes }
}
