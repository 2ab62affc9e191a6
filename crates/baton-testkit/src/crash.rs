//! Crash at every write: the engine is killed at its k-th write, for every k, and a fresh
//! engine resumes the flow from the store; the end must match an uninterrupted run.
//!
//! The check itself is the one users get, [`CrashTest`]; this module runs the
//! [`scenarios`](crate::scenarios) through it, with the probes' [`Log`] as the world, and adds a
//! check that only probes make possible: how often each task's `execute` and `revert`
//! succeeded.

use std::collections::BTreeMap;

use baton_core::store::Store;
use baton_core::testing::CrashTest;

use crate::scenarios::Scenario;
use crate::{Action, Log};

/// What a crash test covered: the writes of the uninterrupted run, and how many runs were
/// killed at one of them and resumed.
pub use baton_core::testing::CrashReport as Coverage;

/// `Err` naming the atom whose count of successful `what` calls differs from `want`, unless it
/// was caught mid-call (in `may_repeat`) and made exactly one more.
fn check_counts(
    what: &str,
    got: &BTreeMap<String, usize>,
    want: &BTreeMap<String, usize>,
    may_repeat: &[String],
) -> Result<(), String> {
    for atom in got.keys().chain(want.keys()) {
        let g = got.get(atom).copied().unwrap_or(0);
        let w = want.get(atom).copied().unwrap_or(0);
        let repeats = may_repeat.contains(atom);
        if g != w && !(g == w + 1 && repeats) {
            return Err(format!(
                "atom {atom}: {g} successful {what} calls, an uninterrupted run makes {w}{}",
                if repeats {
                    " (one more allowed: it was caught mid-call)"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

/// Runs `scenario` once uninterrupted on `store`, then once per write k and per
/// [`CrashMode`](crate::CrashMode), killing the engine at write k and resuming with a fresh
/// engine. Panics, with the scenario, k and mode, on the first difference from the
/// uninterrupted run: final state, atom states, results, failures, and the number of
/// successful `execute` and `revert` calls per atom (an atom caught `RUNNING` or `REVERTING`
/// may have made one call more).
///
/// `store` may be shared by all runs: each uses a new flow id.
pub async fn crash_at_every_write<S: Store + Clone + 'static>(
    store: S,
    scenario: &Scenario,
) -> Coverage {
    let build = scenario.build;
    CrashTest::with_world(Log::new, move |log: &Log| Ok(build(log)))
        .inputs(scenario.inputs.clone())
        .parallelism(scenario.parallelism)
        .check(|end| {
            let Some(crash) = end.crash else {
                return Ok(());
            };
            let (run, reference) = (end.world, end.reference);
            check_counts(
                "execute",
                &run.successes(Action::Execute),
                &reference.successes(Action::Execute),
                &crash.running,
            )?;
            check_counts(
                "revert",
                &run.successes(Action::Revert),
                &reference.successes(Action::Revert),
                &crash.reverting,
            )
        })
        .run_on(store)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", scenario.name))
}
