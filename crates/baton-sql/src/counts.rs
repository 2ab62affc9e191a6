//! Counts for monitoring: unfinished runs by state ([`Store::count_runs`]) and the backlog of
//! jobs by factory ([`JobBoard::backlog`]), as the console's `/metrics` shows them.
//!
//! # Cost
//!
//! A store holds many ended runs and jobs (a million is ordinary) and few unfinished ones, so
//! the counts read only the unfinished: the statements below are the same text on both
//! databases, and each filters on the leading column of an index (`flows_by_state`,
//! `jobs_by_state`) with the states counted, so its cost follows the number of rows counted
//! (checked with `EXPLAIN QUERY PLAN` on SQLite and `EXPLAIN` on PostgreSQL). Ended runs are not counted at all: how many runs a store holds in all is an
//! estimate that costs one index probe (SQLite: the span of the runs' sequence numbers,
//! which purges, oldest first, keep close to the count) or one catalogue row (PostgreSQL: the
//! statistics' live-row count of `flows`, kept by the server as rows come and go).
//!
//! [`Store::count_runs`]: baton_core::store::Store::count_runs
//! [`JobBoard::backlog`]: baton_core::board::JobBoard::backlog

use std::collections::BTreeMap;

use baton_core::store::{self, RunCounts};
use baton_core::{board, FlowState};

/// The unfinished runs by state: the unfinished states named one by one, so that the query
/// is a few ranges of `flows_by_state` (state, seq), read from the index alone. (Written as
/// `state NOT IN` the ended states, SQLite scanned the whole of that index instead: a
/// covering scan looked cheaper to it than `flows_unfinished` and a row read per run.)
pub(crate) const UNFINISHED_BY_STATE: &str = "SELECT state, count(*) FROM flows \
     WHERE state IN ('PENDING', 'RUNNING', 'REVERTING', 'SUSPENDING', 'SUSPENDED', 'RESUMING') \
     GROUP BY state";

/// The jobs waiting to be claimed, by factory (`jobs_by_state` leads with the state).
pub(crate) const BACKLOG_BY_FACTORY: &str =
    "SELECT factory, count(*) FROM jobs WHERE state = 'UNCLAIMED' GROUP BY factory";

/// [`RunCounts`] from the rows of [`UNFINISHED_BY_STATE`] and the estimate of runs stored.
pub(crate) fn run_counts(
    rows: Vec<(String, i64)>,
    estimate: Option<i64>,
) -> store::Result<RunCounts> {
    let mut counts = RunCounts::new();
    for (state, n) in rows {
        let state: FlowState = state
            .parse()
            .map_err(|e| store::Error::Backend(format!("counting runs by state: {e}").into()))?;
        counts.add(state, count(n));
    }
    // Never fewer than the unfinished runs counted exactly (an estimate lags behind).
    let unfinished: u64 = counts.unfinished.iter().map(|(_, n)| n).sum();
    counts.stored_estimate = estimate.map(|e| count(e).max(unfinished));
    Ok(counts)
}

/// The backlog from the rows of [`BACKLOG_BY_FACTORY`].
pub(crate) fn backlog(rows: Vec<(String, i64)>) -> board::Result<BTreeMap<String, u64>> {
    Ok(rows.into_iter().map(|(f, n)| (f, count(n))).collect())
}

/// A count as the database gives it (never negative; an estimate of an empty table may be
/// -1 on PostgreSQL, which is none).
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_every_unfinished_state_and_no_other() {
        let named: Vec<&str> = UNFINISHED_BY_STATE.split('\'').skip(1).step_by(2).collect();
        let unfinished: Vec<&str> = FlowState::ALL
            .iter()
            .filter(|s| !s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(named, unfinished);
    }

    #[test]
    fn counts_every_unfinished_state_and_keeps_the_estimate_above_them() {
        let counts = run_counts(
            vec![("RUNNING".into(), 3), ("SUSPENDED".into(), 2)],
            Some(1),
        )
        .unwrap();
        assert_eq!(counts.unfinished.len(), 6);
        assert!(counts.unfinished.contains(&(FlowState::Running, 3)));
        assert!(counts.unfinished.contains(&(FlowState::Pending, 0)));
        assert_eq!(counts.stored_estimate, Some(5));
    }

    #[test]
    fn an_unknown_state_is_an_error_naming_it() {
        match run_counts(vec![("NAPPING".into(), 1)], None) {
            Err(store::Error::Backend(source)) => {
                assert!(source.to_string().contains("NAPPING"), "{source}");
            }
            other => panic!("expected a backend error, got {other:?}"),
        }
    }
}
