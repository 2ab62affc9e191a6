//! Assertions over a run's stored history, whose failures print what was expected beside what
//! the store holds, and the whole history under it.
//!
//! A test of a flow mostly asks "what ran, what was undone, in which order, how did it end".
//! The store answers all of it (every transition is in the run's history), but an `assert_eq!`
//! on a list of transitions prints a wall of `Debug` output. [`assert_history`] asks the
//! questions by name and, when an answer is wrong, prints each expectation with the actual
//! answer under it, then the history as a table.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;

use super::{Error, Result};
use crate::ids::FlowId;
use crate::model::{Change, FlowSnapshot, Transition};
use crate::state::{AtomState, FlowState};
use crate::store::Store;

/// A run's stored history: its records and every transition, in order. Its `Display` is a
/// table of the transitions and the failures, for messages.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct History {
    /// The run's records as stored now.
    pub snapshot: FlowSnapshot,
    /// Every transition, in order.
    pub transitions: Vec<Transition>,
}

impl History {
    /// Reads run `flow`'s history from `store`.
    ///
    /// # Errors
    /// [`Error::Store`] if the store cannot read it (an unknown run is
    /// [`store::Error::FlowNotFound`](crate::store::Error::FlowNotFound)).
    pub async fn load(store: &dyn Store, flow: FlowId) -> Result<History> {
        let snapshot = store.load_flow(flow).await?;
        let transitions = store.history(flow).await?;
        Ok(History {
            snapshot,
            transitions,
        })
    }

    /// The atoms that went to `state`, in the order they did, once each time they did (a
    /// task retried and succeeding twice is there twice).
    #[must_use]
    pub fn reached(&self, state: AtomState) -> Vec<&str> {
        self.transitions
            .iter()
            .filter_map(|t| match &t.change {
                Change::Atom { atom, to, .. } if *to == state => Some(atom.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The state atom `atom` is stored in, if the run has it.
    #[must_use]
    pub fn state_of(&self, atom: &str) -> Option<AtomState> {
        self.atom(atom).map(|a| a.state)
    }

    fn atom(&self, atom: &str) -> Option<&crate::model::AtomRecord> {
        self.snapshot.atoms.iter().find(|a| a.name == atom)
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flow = &self.snapshot.flow;
        writeln!(
            f,
            "history of flow {} ({:?}), now {}:",
            flow.id, flow.name, flow.state
        )?;
        let width = self
            .snapshot
            .atoms
            .iter()
            .map(|a| a.name.chars().count())
            .max()
            .unwrap_or(0)
            .max("flow".len());
        for t in &self.transitions {
            match &t.change {
                Change::Flow { from, to } => {
                    writeln!(f, "  {:>4}  {:<width$}  {from} -> {to}", t.seq, "flow")?;
                }
                Change::Atom {
                    atom,
                    from,
                    to,
                    attempt,
                } => {
                    write!(f, "  {:>4}  {atom:<width$}  {from} -> {to}", t.seq)?;
                    if *to == AtomState::Running {
                        write!(f, " (attempt {attempt})")?;
                    }
                    writeln!(f)?;
                }
            }
        }
        let failures: Vec<_> = self
            .snapshot
            .atoms
            .iter()
            .flat_map(|a| a.failure.iter().chain(&a.revert_failure))
            .collect();
        if !failures.is_empty() {
            writeln!(f, "failures (as stored now):")?;
            for failure in failures {
                writeln!(f, "  {failure}")?;
            }
        }
        Ok(())
    }
}

/// Starts assertions on run `flow`'s history in `store`: chain what you expect, then `.await`
/// the assertion (it panics with a readable message if the history is otherwise), or
/// [`check`](ExpectHistory::check) it for a `Result`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use baton_core::testing::assert_history;
/// use baton_core::{Atom, Engine, Flow, FlowState, MemoryStore, TaskError};
/// use serde_json::json;
///
/// let flow = Flow::linear("stack")
///     .add(Atom::from_fn("network", |_| async { Ok(json!("net-1")) }))
///     .add(Atom::from_fn("server", |_| async { Err(TaskError::msg("quota exceeded")) }))
///     .compile()?;
/// let store = MemoryStore::new();
/// let outcome = Engine::new(store.clone()).start(&flow, Default::default()).await?;
///
/// assert_history(&store, outcome.flow)
///     .ran(["network"])
///     .failed(["server"])
///     .reverted(["server", "network"])
///     .ended(FlowState::Reverted)
///     .await;
/// # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
#[must_use = "an assertion checks nothing until it is awaited"]
pub fn assert_history(store: &dyn Store, flow: FlowId) -> ExpectHistory<'_> {
    ExpectHistory {
        store,
        flow,
        expected: Vec::new(),
    }
}

/// Expectations on a run's history, from [`assert_history`]. Awaiting it asserts them all.
#[must_use = "an assertion checks nothing until it is awaited"]
pub struct ExpectHistory<'s> {
    store: &'s dyn Store,
    flow: FlowId,
    expected: Vec<Expected>,
}

impl fmt::Debug for ExpectHistory<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpectHistory")
            .field("flow", &self.flow)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

/// One expectation of an [`ExpectHistory`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expected {
    /// The atoms that went `SUCCESS`, in order.
    Ran(Vec<String>),
    /// The atoms that went `FAILURE`, in order.
    Failed(Vec<String>),
    /// The atoms that went `REVERTED`, in order.
    Reverted(Vec<String>),
    /// The flow's state.
    Ended(FlowState),
    /// An atom's state.
    State(String, AtomState),
    /// An atom's stored attempt count.
    Attempts(String, u32),
}

fn names<I>(atoms: I) -> Vec<String>
where
    I: IntoIterator,
    I::Item: Into<String>,
{
    atoms.into_iter().map(Into::into).collect()
}

impl ExpectHistory<'_> {
    /// The atoms that succeeded (went `SUCCESS`) are exactly `atoms`, in this order: once per
    /// success, retry controllers included. Atoms of parallel branches succeed in an order the
    /// test may not fix: check those with [`state`](Self::state).
    pub fn ran<I>(mut self, atoms: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.expected.push(Expected::Ran(names(atoms)));
        self
    }

    /// The atoms that failed (went `FAILURE`) are exactly `atoms`, in this order.
    pub fn failed<I>(mut self, atoms: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.expected.push(Expected::Failed(names(atoms)));
        self
    }

    /// The atoms that were reverted (went `REVERTED`) are exactly `atoms`, in this order.
    pub fn reverted<I>(mut self, atoms: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.expected.push(Expected::Reverted(names(atoms)));
        self
    }

    /// The run is stored in `state`.
    pub fn ended(mut self, state: FlowState) -> Self {
        self.expected.push(Expected::Ended(state));
        self
    }

    /// Atom `atom` is stored in `state`.
    pub fn state(mut self, atom: impl Into<String>, state: AtomState) -> Self {
        self.expected.push(Expected::State(atom.into(), state));
        self
    }

    /// Atom `atom` was started `attempts` times (its stored attempt count: calls a retry
    /// policy made, and calls made again after a crash).
    pub fn attempts(mut self, atom: impl Into<String>, attempts: u32) -> Self {
        self.expected
            .push(Expected::Attempts(atom.into(), attempts));
        self
    }

    /// Checks the expectations, returning the history read.
    ///
    /// # Errors
    /// [`Error::History`] listing every expectation the history does not meet, with the
    /// history; [`Error::Store`] if it cannot be read.
    pub async fn check(self) -> Result<History> {
        let history = History::load(self.store, self.flow).await?;
        let unmet: Vec<Unmet> = self
            .expected
            .into_iter()
            .filter_map(|expected| {
                unmet(&history, &expected).map(|actual| Unmet { expected, actual })
            })
            .collect();
        if unmet.is_empty() {
            return Ok(history);
        }
        Err(Error::History(Box::new(HistoryMismatch { unmet, history })))
    }
}

impl<'s> IntoFuture for ExpectHistory<'s> {
    type Output = ();
    type IntoFuture = Pin<Box<dyn Future<Output = ()> + Send + 's>>;

    /// Asserts the expectations.
    ///
    /// # Panics
    /// With the message of [`ExpectHistory::check`]'s error, if it gives one.
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            if let Err(e) = self.check().await {
                panic!("{e}");
            }
        })
    }
}

/// A list of atom names, as the messages print it.
fn list(atoms: &[impl AsRef<str>]) -> String {
    let names: Vec<&str> = atoms.iter().map(AsRef::as_ref).collect();
    format!("[{}]", names.join(", "))
}

/// What `expected` asks for, as the messages print it.
fn expected_text(expected: &Expected) -> String {
    match expected {
        Expected::Ran(atoms) | Expected::Failed(atoms) | Expected::Reverted(atoms) => list(atoms),
        Expected::Ended(state) => state.to_string(),
        Expected::State(_, state) => state.to_string(),
        Expected::Attempts(_, n) => n.to_string(),
    }
}

/// What the history holds where `expected` looks, printed as [`expected_text`] prints it, if
/// that is not what `expected` asks for.
fn unmet(history: &History, expected: &Expected) -> Option<String> {
    fn sequence(actual: &[&str], expected: &[String]) -> Option<String> {
        let same = actual
            .iter()
            .copied()
            .eq(expected.iter().map(String::as_str));
        (!same).then(|| list(actual))
    }
    fn of_atom<T: PartialEq + ToString>(actual: Option<T>, expected: &T) -> Option<String> {
        match actual {
            Some(actual) if actual == *expected => None,
            Some(actual) => Some(actual.to_string()),
            None => Some("no such atom".to_owned()),
        }
    }
    match expected {
        Expected::Ran(atoms) => sequence(&history.reached(AtomState::Success), atoms),
        Expected::Failed(atoms) => sequence(&history.reached(AtomState::Failure), atoms),
        Expected::Reverted(atoms) => sequence(&history.reached(AtomState::Reverted), atoms),
        Expected::Ended(state) => {
            let actual = history.snapshot.flow.state;
            (actual != *state).then(|| actual.to_string())
        }
        Expected::State(atom, state) => of_atom(history.state_of(atom), state),
        Expected::Attempts(atom, n) => of_atom(history.atom(atom).map(|a| a.attempt), n),
    }
}

/// An expectation the history does not meet, and what it holds instead.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Unmet {
    /// The expectation.
    pub expected: Expected,
    /// What the history holds, as text.
    pub actual: String,
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.expected {
            Expected::Ran(_) => "ran (went SUCCESS, in order)".to_owned(),
            Expected::Failed(_) => "failed (went FAILURE, in order)".to_owned(),
            Expected::Reverted(_) => "reverted (went REVERTED, in order)".to_owned(),
            Expected::Ended(_) => "the flow's state".to_owned(),
            Expected::State(atom, _) => format!("the state of {atom:?}"),
            Expected::Attempts(atom, _) => format!("the attempts of {atom:?}"),
        };
        write!(
            f,
            "  {what}:\n    expected: {}\n    actual:   {}",
            expected_text(&self.expected),
            self.actual
        )
    }
}

/// A history that does not meet its expectations: what [`ExpectHistory::check`] reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HistoryMismatch {
    /// Every expectation not met, in the order they were made.
    pub unmet: Vec<Unmet>,
    /// The history read.
    pub history: History,
}

impl fmt::Display for HistoryMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flow = &self.history.snapshot.flow;
        writeln!(
            f,
            "the history of flow {} ({:?}) is not as expected:",
            flow.id, flow.name
        )?;
        for unmet in &self.unmet {
            writeln!(f, "{unmet}")?;
        }
        write!(f, "{}", self.history)
    }
}
