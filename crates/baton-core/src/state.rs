//! The state machines of flows and atoms.
//!
//! Every change of state goes through [`FlowState::can_transition`] or
//! [`AtomState::can_transition`]; stores refuse a change these reject, so an illegal transition
//! is an error and never a silent overwrite.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! state_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The stable text form used in stores and on the command line.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseStateError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(ParseStateError { what: $what, input: s.to_owned() }),
                }
            }
        }
    };
}

state_enum!(
    /// The state of a flow run.
    FlowState, "flow state" {
        /// Created, not started.
        Pending => "PENDING",
        /// Executing atoms forward.
        Running => "RUNNING",
        /// Every atom succeeded or was ignored.
        Success => "SUCCESS",
        /// A revert could not be completed (an atom's revert failed).
        Failure => "FAILURE",
        /// Undoing what ran, after a failure no retry controller could absorb.
        Reverting => "REVERTING",
        /// Everything that ran was reverted.
        Reverted => "REVERTED",
        /// Asked to suspend; waiting for running atoms to finish.
        Suspending => "SUSPENDING",
        /// Stopped at a step boundary; can be resumed.
        Suspended => "SUSPENDED",
        /// Leaving `SUSPENDED`.
        Resuming => "RESUMING",
    }
);

state_enum!(
    /// The state of one atom (a task or a retry controller) in a flow run.
    AtomState, "atom state" {
        /// Not started (or reset by a retry controller).
        Pending => "PENDING",
        /// `execute` was (or is about to be) called.
        Running => "RUNNING",
        /// `execute` returned a result, which is stored.
        Success => "SUCCESS",
        /// `execute` failed; the failure is stored.
        Failure => "FAILURE",
        /// `revert` was (or is about to be) called.
        Reverting => "REVERTING",
        /// `revert` completed.
        Reverted => "REVERTED",
        /// `revert` failed; the failure is stored.
        RevertFailure => "REVERT_FAILURE",
        /// A retry controller about to run its subflow again, or a task whose retry policy
        /// ([`Atom::retries`](crate::Atom::retries)) calls it again after a failure, once its
        /// `retry_at` has come.
        Retrying => "RETRYING",
        /// Skipped by a decider; never runs.
        Ignore => "IGNORE",
    }
);

state_enum!(
    /// Which way a flow or an atom is heading.
    Intention, "intention" {
        /// Run forward.
        Execute => "EXECUTE",
        /// Undo: revert what ran.
        Revert => "REVERT",
        /// (Retry controllers) revert the subflow, then run it again.
        Retry => "RETRY",
    }
);

state_enum!(
    /// The state of a job on a job board.
    JobState, "job state" {
        /// Waiting for a conductor.
        Unclaimed => "UNCLAIMED",
        /// Owned by a conductor under a lease.
        Claimed => "CLAIMED",
        /// Done: its flow ended (`SUCCESS`, `REVERTED`, or `FAILURE` after a revert failed),
        /// and the outcome is recorded.
        Complete => "COMPLETE",
        /// Retired by an operator; never runs again.
        Trashed => "TRASHED",
        /// Stopped for a reason outside its flow (a definition no conductor has, data a store
        /// refuses, a build that fails, a job claimed too often without progress): its run is
        /// left exactly as stored, and the job keeps its key, until an operator retries it,
        /// has its run reverted, or trashes it. The outcome holds the reason.
        Parked => "PARKED",
    }
);

impl JobState {
    /// Whether the job has ended: `COMPLETE` or `TRASHED`. Only an operator recovering a run
    /// that was left unfinished reopens such a job
    /// ([`JobBoard::requeue`](crate::JobBoard::requeue) with [`Requeue::reopen_ended`](crate::board::Requeue::reopen_ended)).
    #[must_use]
    pub const fn is_terminal(self) -> bool {
        matches!(self, JobState::Complete | JobState::Trashed)
    }

    /// Whether the job holds its key: it has not ended (waiting, claimed or parked), so later
    /// jobs of its key wait for it.
    #[must_use]
    pub const fn holds_key(self) -> bool {
        !self.is_terminal()
    }
}

/// Text that names no known state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {input:?}")]
pub struct ParseStateError {
    what: &'static str,
    input: String,
}

impl ParseStateError {
    pub(crate) fn new(what: &'static str, input: &str) -> Self {
        Self {
            what,
            input: input.chars().take(64).collect(),
        }
    }
}

impl FlowState {
    /// Whether a flow may move from `self` to `to`.
    #[must_use]
    pub fn can_transition(self, to: FlowState) -> bool {
        use FlowState::*;
        matches!(
            (self, to),
            (Pending, Running)
                | (Running, Success | Reverting | Suspending | Failure)
                | (Reverting, Reverted | Failure | Suspending)
                | (Suspending, Suspended | Success | Reverted | Failure)
                | (Suspended, Resuming)
                | (Resuming, Running | Reverting)
        )
    }

    /// Whether the flow has ended and will never change again.
    #[must_use]
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            FlowState::Success | FlowState::Failure | FlowState::Reverted
        )
    }
}

impl AtomState {
    /// Whether an atom may move from `self` to `to`.
    ///
    /// `RUNNING -> RUNNING` is a new attempt after a crash (the attempt number must grow) and
    /// is allowed; other same-state updates are field updates (progress, intention) and are
    /// allowed too. `RUNNING -> REVERTING` is for an atom whose `execute` was interrupted by a
    /// crash and that must now be reverted. `FAILURE -> RETRYING` is a task retried in place
    /// by its retry policy.
    #[must_use]
    pub fn can_transition(self, to: AtomState) -> bool {
        use AtomState::*;
        self == to
            || matches!(
                (self, to),
                (Pending, Running | Ignore)
                    | (Running, Success | Failure | Reverting)
                    | (Success, Reverting | Retrying)
                    | (Failure, Reverting | Retrying)
                    | (Reverting, Reverted | RevertFailure)
                    | (Reverted, Pending)
                    | (Retrying, Running | Pending | Reverting)
                    | (Ignore, Pending)
            )
    }

    /// Whether the atom is at rest: done with what it was doing (succeeded, failed, reverted,
    /// failed to revert, or skipped).
    #[must_use]
    pub const fn is_at_rest(self) -> bool {
        matches!(
            self,
            AtomState::Success
                | AtomState::Failure
                | AtomState::Reverted
                | AtomState::RevertFailure
                | AtomState::Ignore
        )
    }

    /// Whether the atom has executed (or started to) and so may need a revert.
    #[must_use]
    pub const fn has_run(self) -> bool {
        matches!(
            self,
            AtomState::Running | AtomState::Success | AtomState::Failure | AtomState::Reverting
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_text() {
        for s in FlowState::ALL {
            assert_eq!(s.as_str().parse::<FlowState>().unwrap(), *s);
        }
        for s in AtomState::ALL {
            assert_eq!(s.as_str().parse::<AtomState>().unwrap(), *s);
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert!("BOGUS".parse::<AtomState>().is_err());
    }

    #[test]
    fn terminal_flows_never_move() {
        for from in FlowState::ALL.iter().filter(|s| s.is_terminal()) {
            for to in FlowState::ALL {
                assert!(!from.can_transition(*to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn atoms_cannot_skip_running() {
        assert!(!AtomState::Pending.can_transition(AtomState::Success));
        assert!(!AtomState::Pending.can_transition(AtomState::Reverting));
        assert!(!AtomState::RevertFailure.can_transition(AtomState::Pending));
        assert!(AtomState::Running.can_transition(AtomState::Success));
    }
}
