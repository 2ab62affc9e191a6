//! The `baton` command line, as a library: the binary's `main` only calls into it.
//!
//! - [`demo`]: the Heat-style demo flows (stack create, update, delete) over fake cloud
//!   providers that record every side effect.

#![forbid(unsafe_code)]

pub mod demo;
