//! baton: durable, distributed workflows.
//!
//! Flows are DAGs of tasks with `execute` and `revert`; an engine runs them and persists every
//! step before acting on it, so a flow interrupted at any point resumes where it stopped, in
//! the same process or another one. This facade re-exports [`baton_core`]; SQL stores and the
//! job board come in their own crates behind features.
//!
//! See the repository's `docs/` for the user guide.

#![forbid(unsafe_code)]

pub use baton_core::*;
