//! Typed identifiers.
//!
//! Every identifier that crosses a crate boundary is a newtype, so a flow id can never be passed
//! where a job id is expected. Ids are UUIDv7: they sort by creation time, which keeps database
//! indexes compact and listings in a natural order.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id.
            #[must_use]
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps an existing UUID (for backends converting their rows).
            #[must_use]
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// The UUID inside.
            #[must_use]
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self).map_err(|_| ParseIdError {
                    what: $what,
                    input: s.to_owned(),
                })
            }
        }
    };
}

uuid_id!(
    /// Identifies one run of a flow in a store.
    FlowId,
    "flow id"
);
uuid_id!(
    /// Identifies a job on a job board.
    JobId,
    "job id"
);
uuid_id!(
    /// Identifies one conductor process of a fleet.
    ConductorId,
    "conductor id"
);

impl FlowId {
    /// The id of the flow a job drives. It is derived from the job's id, so every conductor
    /// that ever claims the job finds the same flow, and creating it twice is impossible.
    #[must_use]
    pub const fn for_job(job: JobId) -> Self {
        Self(job.as_uuid())
    }
}

/// A string that is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {input:?} is not a UUID")]
pub struct ParseIdError {
    what: &'static str,
    input: String,
}

/// The fencing token of a job claim: it grows with every claim of the job, so a write that
/// carries an older token is known to come from an owner that lost its claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// What a fenced write carries: the job it is made under and the token of the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fence {
    /// The job whose claim authorises the write.
    pub job: JobId,
    /// The token of that claim.
    pub token: FencingToken,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_id_round_trips_through_display_and_json() {
        let id = FlowId::new();
        assert_eq!(id.to_string().parse::<FlowId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<FlowId>(&json).unwrap(), id);
    }

    #[test]
    fn bad_id_names_what_was_expected() {
        let err = "nope".parse::<JobId>().unwrap_err();
        assert_eq!(err.to_string(), "invalid job id: \"nope\" is not a UUID");
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = FlowId::new();
        let b = FlowId::new();
        assert!(a < b);
    }
}
