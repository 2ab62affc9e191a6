//! Cancel requests: what an operator (or a superseding post) asks of a job's run, stored on
//! the job for whoever runs it.
//!
//! A request is data on the board, not a signal to a process: the owner of a claimed job
//! learns of it ([`JobBoard::cancel_requests`](super::JobBoard::cancel_requests), woken by
//! [`JobBoard::wait_for_cancel`](super::JobBoard::wait_for_cancel)), and whoever claims the
//! job later honours it too, so a request outlives the process it was meant for.
//! [`check_cancel`] holds the rules every board applies.

use serde::{Deserialize, Serialize};

use super::{Error, Result};
use crate::ids::JobId;
use crate::state::JobState;

/// A request to cancel a job's run, stored on the job for whoever runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum Cancel {
    /// Stop going forward and revert what ran; the job completes when the run is `REVERTED`.
    Revert,
    /// Stop at the next step boundary and park the job for an operator, the run left as it
    /// stands (nothing is reverted). Parking the job answers the request: it is cleared then.
    Suspend,
}

impl Cancel {
    /// The stable text form used in stores.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Cancel::Revert => "REVERT",
            Cancel::Suspend => "SUSPEND",
        }
    }

    /// The request a job carries once `self` is asked of a job carrying `current`: a revert
    /// wins over a suspend, and is never taken back into one.
    #[must_use]
    pub const fn after(self, current: Option<Cancel>) -> Cancel {
        match current {
            Some(Cancel::Revert) => Cancel::Revert,
            _ => self,
        }
    }
}

impl std::fmt::Display for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Cancel {
    type Err = crate::state::ParseStateError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "REVERT" => Ok(Cancel::Revert),
            "SUSPEND" => Ok(Cancel::Suspend),
            other => Err(crate::state::ParseStateError::new("cancel request", other)),
        }
    }
}

/// What a request to cancel a job's run does to the job, as [`check_cancel`] decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelStep {
    /// Nothing changes: the job already carries the request (or a revert, which a suspend
    /// does not replace), or it is parked and asked to suspend (it is at rest already).
    Keep,
    /// The job's request becomes this one; a claimed job's owner is told
    /// ([`JobBoard::wait_for_cancel`](super::JobBoard::wait_for_cancel)).
    Set(Cancel),
    /// The parked job goes back on the board with a request to revert its run, as
    /// [`JobBoard::requeue`](super::JobBoard::requeue) with
    /// [`Requeue::revert`](super::Requeue::revert) puts it.
    Reopen,
}

/// What asking `how` of job `id`, in `state` and carrying `current`, does: the rules of
/// [`JobBoard::request_cancel`](super::JobBoard::request_cancel) (and of a superseding post),
/// for backends to apply in the step that reads the job.
///
/// # Errors
/// [`Error::Ended`] for a job that ended (`COMPLETE` or `TRASHED`).
pub fn check_cancel(
    id: JobId,
    state: JobState,
    current: Option<Cancel>,
    how: Cancel,
) -> Result<CancelStep> {
    match state {
        JobState::Complete | JobState::Trashed => Err(Error::Ended { job: id, state }),
        JobState::Parked => Ok(match how {
            Cancel::Revert => CancelStep::Reopen,
            Cancel::Suspend => CancelStep::Keep,
        }),
        JobState::Unclaimed | JobState::Claimed => {
            let wanted = how.after(current);
            Ok(if current == Some(wanted) {
                CancelStep::Keep
            } else {
                CancelStep::Set(wanted)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_reads_back_from_its_text() {
        for how in [Cancel::Revert, Cancel::Suspend] {
            assert_eq!(how.as_str().parse::<Cancel>().unwrap(), how);
            assert_eq!(how.to_string(), how.as_str());
        }
        assert!("STOP".parse::<Cancel>().is_err());
    }

    #[test]
    fn a_revert_wins_over_a_suspend_and_repeats_change_nothing() {
        let id = JobId::new();
        let open = [JobState::Unclaimed, JobState::Claimed];
        for state in open {
            let step = |current, how| check_cancel(id, state, current, how).unwrap();
            assert_eq!(
                step(None, Cancel::Suspend),
                CancelStep::Set(Cancel::Suspend)
            );
            assert_eq!(
                step(Some(Cancel::Suspend), Cancel::Revert),
                CancelStep::Set(Cancel::Revert)
            );
            assert_eq!(
                step(Some(Cancel::Revert), Cancel::Suspend),
                CancelStep::Keep
            );
            assert_eq!(step(Some(Cancel::Revert), Cancel::Revert), CancelStep::Keep);
            assert_eq!(
                step(Some(Cancel::Suspend), Cancel::Suspend),
                CancelStep::Keep
            );
        }
    }

    #[test]
    fn parked_jobs_reopen_to_revert_and_ended_ones_refuse() {
        let id = JobId::new();
        let parked = |how| check_cancel(id, JobState::Parked, None, how).unwrap();
        assert_eq!(parked(Cancel::Revert), CancelStep::Reopen);
        assert_eq!(parked(Cancel::Suspend), CancelStep::Keep);
        for state in [JobState::Complete, JobState::Trashed] {
            assert!(matches!(
                check_cancel(id, state, None, Cancel::Revert),
                Err(Error::Ended { job, state: s }) if job == id && s == state
            ));
        }
    }
}
