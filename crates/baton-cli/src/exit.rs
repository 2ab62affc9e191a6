//! The exit codes of the `baton` command, in one place. They are part of its interface:
//! scripts may rely on them.

/// The command did what was asked.
pub const OK: i32 = 0;
/// A flow the command ran ended other than expected (the demo's stack was not created).
pub const FLOW_FAILED: i32 = 1;
/// The command line was malformed (clap's own code).
pub const USAGE: i32 = 2;
/// A flow, job or conductor named on the command line does not exist.
pub const NOT_FOUND: i32 = 3;
/// Bad input: an unparsable id, URL or JSON, parameters a factory rejects.
pub const BAD_INPUT: i32 = 4;
/// The database could not be reached.
pub const UNAVAILABLE: i32 = 5;
/// The operation is not allowed in the object's current state (e.g. trashing a finished job).
pub const CONFLICT: i32 = 6;
/// Anything else: a bug, or stored data baton cannot read.
pub const INTERNAL: i32 = 70;

/// Every code with its meaning, for the help text and the docs.
pub const TABLE: &[(i32, &str)] = &[
    (OK, "success"),
    (FLOW_FAILED, "the flow did not end as expected"),
    (USAGE, "malformed command line"),
    (NOT_FOUND, "no such flow, job or conductor"),
    (BAD_INPUT, "bad input (id, URL, JSON, parameters)"),
    (UNAVAILABLE, "the database could not be reached"),
    (CONFLICT, "not allowed in the current state"),
    (INTERNAL, "internal error or unreadable data"),
];
