//! What a crash test compares: how a run ended ([`End`]), and how two ends differ
//! ([`Difference`], gathered with the crash in a [`Divergence`]).
//!
//! Two runs of one flow agree when the flow and every atom end in the same state, the atoms
//! that succeeded return the same results, and the atoms record the same failures. Not
//! compared: times, attempt numbers (a call made again after a crash is one more attempt) and
//! progress, which a crash changes without the run ending otherwise.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::{Crash, Result};
use crate::engine::Outcome;
use crate::failure::{Failure, FailureKind};
use crate::state::{AtomState, FlowState};
use crate::store::Store;

/// A run of a [`CrashTest`](super::CrashTest) that ended differently from the uninterrupted
/// run, or failed its check.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Divergence {
    /// Where the run was killed; `None` for the uninterrupted run (which can only fail its
    /// check).
    pub crash: Option<Crash>,
    /// What differed: the flow first, then each atom in the flow's order (state, result,
    /// failures), then the check's verdict.
    pub differences: Vec<Difference>,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.crash {
            None => f.write_str("the uninterrupted run:")?,
            Some(crash) => write!(
                f,
                "{crash}; resumed by a fresh engine, the run ended otherwise than the \
                 uninterrupted run:"
            )?,
        }
        for d in &self.differences {
            write!(f, "\n  - {d}")?;
        }
        Ok(())
    }
}

/// One way a resumed run's end differed from the uninterrupted run's.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Difference {
    /// The run went on after its store failed a write for good (an engine bug).
    WentOn,
    /// The flow ended in another state.
    FlowState {
        /// The uninterrupted run's.
        expected: FlowState,
        /// This run's.
        actual: FlowState,
    },
    /// An atom ended in another state.
    AtomState {
        /// The atom.
        atom: String,
        /// The uninterrupted run's.
        expected: AtomState,
        /// This run's.
        actual: AtomState,
    },
    /// An atom that succeeded in both has another result.
    Result {
        /// The atom.
        atom: String,
        /// The uninterrupted run's.
        expected: Value,
        /// This run's.
        actual: Value,
    },
    /// An atom recorded other failures: their kinds and messages, in any order (a time-out's
    /// message names its due time, which differs from run to run, so time-outs are compared
    /// by kind alone). For an atom the crash caught mid-call, only the failures it ended with
    /// are compared: the interrupted call's failure may be lost with it, and the call made
    /// again fails or not as the world answers it now.
    Failures {
        /// The atom.
        atom: String,
        /// The uninterrupted run's.
        expected: Vec<String>,
        /// This run's.
        actual: Vec<String>,
    },
    /// The test's [check](super::CrashTest::check) failed, with this message.
    Check(String),
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::WentOn => {
                f.write_str("the engine went on after its store failed a write for good")
            }
            Difference::FlowState { expected, actual } => write!(
                f,
                "the flow ended {actual}; uninterrupted, it ends {expected}"
            ),
            Difference::AtomState {
                atom,
                expected,
                actual,
            } => write!(
                f,
                "atom {atom:?} ended {actual}; uninterrupted, it ends {expected}"
            ),
            Difference::Result {
                atom,
                expected,
                actual,
            } => write!(
                f,
                "atom {atom:?} returned {actual}; uninterrupted, it returns {expected}"
            ),
            Difference::Failures {
                atom,
                expected,
                actual,
            } => write!(
                f,
                "atom {atom:?} recorded the failures [{}]; uninterrupted, it records [{}]",
                actual.join("; "),
                expected.join("; ")
            ),
            Difference::Check(message) => write!(f, "the check failed: {message}"),
        }
    }
}

/// What two runs of a crash test must agree on.
pub(super) struct End {
    state: FlowState,
    /// Every atom, in the flow's order.
    atoms: Vec<AtomEnd>,
}

/// What two runs of a crash test must agree on about one atom.
struct AtomEnd {
    name: String,
    state: AtomState,
    /// Its result, if it succeeded.
    result: Option<Value>,
    /// Every failure it recorded, retried calls' included, as [`failure_text`]s, sorted.
    failures: Vec<String>,
    /// The failures it ended with (of its last `execute` and `revert`), likewise.
    last_failures: Vec<String>,
}

/// A failure as a crash test compares it: kind and message, or only the kind of a time-out
/// (whose message names its due time, which differs from run to run).
fn failure_text(failure: &Failure) -> String {
    match failure.kind {
        FailureKind::Timeout => "timeout".to_owned(),
        kind => format!("{}: {}", kind_name(kind), failure.message),
    }
}

impl End {
    /// The end of the run `outcome` reports, as stored.
    pub(super) async fn read(store: &impl Store, outcome: &Outcome) -> Result<End> {
        let snapshot = store.load_flow(outcome.flow).await?;
        let mut failures: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for failure in &outcome.failures {
            failures
                .entry(failure.atom.as_str())
                .or_default()
                .push(failure_text(failure));
        }
        let atoms = snapshot
            .atoms
            .into_iter()
            .map(|a| {
                let mut all = failures.remove(a.name.as_str()).unwrap_or_default();
                all.sort();
                let mut last: Vec<String> = a
                    .failure
                    .iter()
                    .chain(&a.revert_failure)
                    .map(failure_text)
                    .collect();
                last.sort();
                AtomEnd {
                    result: a.result.filter(|_| a.state == AtomState::Success),
                    state: a.state,
                    name: a.name,
                    failures: all,
                    last_failures: last,
                }
            })
            .collect();
        Ok(End {
            state: outcome.state,
            atoms,
        })
    }

    /// How `actual` differs from this end, the expected one. For the atoms in `caught`
    /// (caught mid-call by the crash), only the failures they ended with are compared: the
    /// failure of the call the crash interrupted may be lost with it, and the call made again
    /// may fail or not, as the world now answers.
    pub(super) fn differences(&self, actual: &End, caught: &[String]) -> Vec<Difference> {
        let mut out = Vec::new();
        if self.state != actual.state {
            out.push(Difference::FlowState {
                expected: self.state,
                actual: actual.state,
            });
        }
        for (want, got) in self.atoms.iter().zip(&actual.atoms) {
            let atom = &want.name;
            if want.state != got.state {
                out.push(Difference::AtomState {
                    atom: atom.clone(),
                    expected: want.state,
                    actual: got.state,
                });
            }
            if let (Some(expected), Some(actual)) = (&want.result, &got.result) {
                if expected != actual {
                    out.push(Difference::Result {
                        atom: atom.clone(),
                        expected: expected.clone(),
                        actual: actual.clone(),
                    });
                }
            }
            let (expected, actual) = if caught.contains(atom) {
                (&want.last_failures, &got.last_failures)
            } else {
                (&want.failures, &got.failures)
            };
            if expected != actual {
                out.push(Difference::Failures {
                    atom: atom.clone(),
                    expected: expected.clone(),
                    actual: actual.clone(),
                });
            }
        }
        out
    }
}

fn kind_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Execute => "execute",
        FailureKind::Revert => "revert",
        FailureKind::Panic => "panic",
        FailureKind::Input => "input",
        FailureKind::Result => "result",
        FailureKind::Timeout => "timeout",
        FailureKind::Cancelled => "cancelled",
    }
}
