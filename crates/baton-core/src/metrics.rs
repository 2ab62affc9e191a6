//! What engines and conductors count, through the [`metrics`] facade.
//!
//! baton-core installs no recorder: without one every count here is a no-op (a branch on a
//! handle that holds nothing). A process that wants the figures installs a recorder before it
//! builds its engines and conductors, as the facade requires of every library (handles taken
//! before a recorder is installed stay no-ops); `baton_console::metrics::install` installs
//! the Prometheus one, and `baton conductor --metrics-listen` serves it.
//!
//! The names follow Prometheus' conventions: base units (seconds), `_total` on counters,
//! snake_case, and few labels, each with a small, fixed set of values.
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `baton_steps_committed_total` | counter | `store` | steps (batches) an engine committed: one per store commit, the creation of a run with its first batch included |
//! | `baton_step_commit_seconds` | histogram | `store` | how long each of those commits took, from the first attempt to the store's answer (retries of an unavailable store included) |
//! | `baton_runs_ended_total` | counter | `state` | runs an engine drove to an end: `SUCCESS`, `FAILURE` or `REVERTED` |
//! | `baton_jobs_claimed_total` | counter | | jobs a conductor claimed |
//! | `baton_jobs_consumed_total` | counter | | jobs a conductor consumed (their runs ended at rest) |
//! | `baton_jobs_abandoned_total` | counter | | jobs a conductor handed back (shutdown, an unavailable store) |
//! | `baton_jobs_lost_total` | counter | | claims a conductor lost (another conductor took the job over) |
//! | `baton_jobs_parked_total` | counter | | jobs a conductor parked for an operator |
//! | `baton_takeovers_total` | counter | | claims of a job that an earlier claim had held: a run resumed by another claim, after a crash, a lost lease, a hand-back or an operator's retry |
//! | `baton_claim_seconds` | histogram | | how long each claim call to the board took, whether it found jobs or not |
//! | `baton_lease_margin_seconds` | gauge | | the least time any claim this process holds had left on its lease when its last heartbeat renewed it; `NaN` while it holds none |
//!
//! The database gauges (`baton_runs`, `baton_backlog_jobs`, `baton_conductors_alive`) are
//! computed by the console when scraped, from the store and the board.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use metrics::{Counter, Histogram, Unit};

use crate::ids::Fence;
use crate::state::FlowState;

/// Steps committed (counter, label `store`).
pub const STEPS_COMMITTED: &str = "baton_steps_committed_total";
/// Step commit latency (histogram, seconds, label `store`).
pub const STEP_COMMIT_SECONDS: &str = "baton_step_commit_seconds";
/// Runs driven to an end (counter, label `state`).
pub const RUNS_ENDED: &str = "baton_runs_ended_total";
/// Jobs claimed (counter).
pub const JOBS_CLAIMED: &str = "baton_jobs_claimed_total";
/// Jobs consumed (counter).
pub const JOBS_CONSUMED: &str = "baton_jobs_consumed_total";
/// Jobs handed back (counter).
pub const JOBS_ABANDONED: &str = "baton_jobs_abandoned_total";
/// Claims lost (counter).
pub const JOBS_LOST: &str = "baton_jobs_lost_total";
/// Jobs parked (counter).
pub const JOBS_PARKED: &str = "baton_jobs_parked_total";
/// Claims of jobs an earlier claim had held (counter).
pub const TAKEOVERS: &str = "baton_takeovers_total";
/// Claim call latency (histogram, seconds).
pub const CLAIM_SECONDS: &str = "baton_claim_seconds";
/// Least lease margin left at the last heartbeat of each held claim (gauge, seconds).
pub const LEASE_MARGIN_SECONDS: &str = "baton_lease_margin_seconds";

/// The histograms' bucket bounds, in seconds: from 100 µs (a commit to memory or a local
/// SQLite file) to 10 s (a store that is away and retried).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Registers the help text and unit of every metric above with the installed recorder.
/// Whoever installs a recorder calls it once.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        STEPS_COMMITTED,
        "Steps (batches of transitions) an engine committed to its store."
    );
    describe_histogram!(
        STEP_COMMIT_SECONDS,
        Unit::Seconds,
        "How long each committed step took to commit, retries included."
    );
    describe_counter!(
        RUNS_ENDED,
        "Runs an engine drove to an end, by final state."
    );
    describe_counter!(JOBS_CLAIMED, "Jobs a conductor claimed.");
    describe_counter!(
        JOBS_CONSUMED,
        "Jobs a conductor consumed: their runs ended at rest."
    );
    describe_counter!(JOBS_ABANDONED, "Jobs a conductor handed back.");
    describe_counter!(JOBS_LOST, "Claims a conductor lost.");
    describe_counter!(JOBS_PARKED, "Jobs a conductor parked for an operator.");
    describe_counter!(
        TAKEOVERS,
        "Claims of jobs an earlier claim had held: runs resumed by another claim."
    );
    describe_histogram!(
        CLAIM_SECONDS,
        Unit::Seconds,
        "How long each claim call to the job board took."
    );
    describe_gauge!(
        LEASE_MARGIN_SECONDS,
        Unit::Seconds,
        "Least time left on the lease of any claim held, when its last heartbeat renewed it."
    );
}

/// A conductor starts: its counters are registered at zero, so that a scrape shows them before
/// anything happened (and a process that runs no conductor shows none of them).
pub(crate) fn conductor_started() {
    for name in [
        JOBS_CLAIMED,
        JOBS_CONSUMED,
        JOBS_ABANDONED,
        JOBS_LOST,
        JOBS_PARKED,
        TAKEOVERS,
    ] {
        metrics::counter!(name).increment(0);
    }
    set_least_margin(&mut MARGINS.lock().unwrap_or_else(PoisonError::into_inner));
}

/// An engine's handles, taken once per engine so that a step pays an increment and a
/// record, not a look-up of the metric by name.
#[derive(Debug, Clone)]
pub(crate) struct EngineMetrics {
    steps: Counter,
    commit: Histogram,
}

impl EngineMetrics {
    /// The handles for an engine over a store of kind `store` ([`Store::kind`]).
    ///
    /// [`Store::kind`]: crate::store::Store::kind
    pub(crate) fn new(store: &'static str) -> Self {
        Self {
            steps: metrics::counter!(STEPS_COMMITTED, "store" => store),
            commit: metrics::histogram!(STEP_COMMIT_SECONDS, "store" => store),
        }
    }

    /// A step committed, `took` after its first attempt started.
    pub(crate) fn committed(&self, took: Duration) {
        self.steps.increment(1);
        self.commit.record(took.as_secs_f64());
    }

    /// A run driven to its end in `state`.
    pub(crate) fn ended(state: FlowState) {
        if state.is_terminal() {
            metrics::counter!(RUNS_ENDED, "state" => state.as_str()).increment(1);
        }
    }
}

/// How a conductor's job ended, as counted.
#[derive(Debug, Clone, Copy)]
pub(crate) enum JobCount {
    Consumed,
    Abandoned,
    Lost,
    Parked,
}

/// Counts a conductor's claims and their ends.
pub(crate) fn claimed(claims: &[crate::board::Claim], took: Duration) {
    metrics::histogram!(CLAIM_SECONDS).record(took.as_secs_f64());
    if claims.is_empty() {
        return;
    }
    metrics::counter!(JOBS_CLAIMED).increment(claims.len() as u64);
    let taken_over = claims.iter().filter(|c| c.job.attempts > 1).count();
    if taken_over > 0 {
        metrics::counter!(TAKEOVERS).increment(taken_over as u64);
    }
}

/// Counts a job's end.
pub(crate) fn job_ended(how: JobCount) {
    let name = match how {
        JobCount::Consumed => JOBS_CONSUMED,
        JobCount::Abandoned => JOBS_ABANDONED,
        JobCount::Lost => JOBS_LOST,
        JobCount::Parked => JOBS_PARKED,
    };
    metrics::counter!(name).increment(1);
}

/// The lease margin each claim held in this process had at its last heartbeat, by claim:
/// the gauge is their least. Process-wide, as the recorder is.
static MARGINS: Mutex<Option<HashMap<Fence, f64>>> = Mutex::new(None);

/// Records the margin `claim` had left on its lease when a heartbeat renewed it (`None`:
/// the claim is no longer held), and sets the gauge to the least margin of the claims held.
pub(crate) fn lease_margin(claim: Fence, left: Option<Duration>) {
    let mut margins = MARGINS.lock().unwrap_or_else(PoisonError::into_inner);
    let held = margins.get_or_insert_with(HashMap::new);
    match left {
        Some(left) => {
            held.insert(claim, left.as_secs_f64());
        }
        None => {
            held.remove(&claim);
        }
    }
    set_least_margin(&mut margins);
}

/// Sets the gauge to the least of `margins` (`NaN` for none), under their lock, so that two
/// claims' updates cannot leave it at the older one's figure.
fn set_least_margin(margins: &mut Option<HashMap<Fence, f64>>) {
    let least = margins
        .get_or_insert_with(HashMap::new)
        .values()
        .copied()
        .reduce(f64::min)
        .unwrap_or(f64::NAN);
    metrics::gauge!(LEASE_MARGIN_SECONDS).set(least);
}
