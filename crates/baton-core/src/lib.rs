//! baton's core: flows of tasks as DAGs, an engine that persists every step before acting on
//! it, and the traits durable backends implement.
//!
//! # Concepts
//!
//! - An [`Atom`] is a named unit of a flow: a [`Task`] (async `execute` and `revert`) or a
//!   retry controller ([`retry`]). Atoms *require* and *provide* named symbols; that is how
//!   data moves between them.
//! - A [`Flow`] composes atoms and other flows: [`Flow::linear`], [`Flow::unordered`] (may run
//!   in parallel) or [`Flow::graph`] (ordered by links and data dependencies).
//! - [`Flow::compile`] turns a flow into one DAG ([`CompiledFlow`]), rejecting cycles,
//!   duplicate names and unresolvable symbols with an error naming the culprit.
//! - [`typed`]: typed tasks ([`TypedTask`](typed::TypedTask)) and flows whose wiring the
//!   compiler checks ([`TypedFlow`](typed::TypedFlow)), over the untyped API.
//! - The [`Engine`] runs a compiled flow against a [`Store`](store::Store), committing every
//!   transition before acting on it. A run interrupted anywhere resumes from the store with
//!   [`Engine::run`].
//! - `testing` (feature `testing`, for dev-dependencies): check that a flow of yours ends the
//!   same when its engine is killed at any write, skip backoff and time limits in tests, and
//!   assert on a run's stored history.
//!
//! # Quick start
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use baton_core::{Atom, Engine, Flow, FlowState, MemoryStore};
//! use serde_json::json;
//!
//! let flow = Flow::linear("provision")
//!     .add(Atom::from_fn("network", |_| async { Ok(json!("net-1")) }).provides("network"))
//!     .add(Atom::from_fn("server", |ctx| async move {
//!         let net: String = ctx.input("network")?;
//!         Ok(json!(format!("server on {net}")))
//!     }).requires(["network"]).provides("server"))
//!     .compile()?;
//!
//! let store = MemoryStore::new();
//! let engine = Engine::new(store.clone());
//! let outcome = engine.start(&flow, Default::default()).await?;
//! assert_eq!(outcome.state, FlowState::Success);
//! assert_eq!(outcome.symbol("server"), Some(&json!("server on net-1")));
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! # Architecture invariants
//!
//! This crate does no I/O of its own and starts no runtime: it runs on the caller's tokio
//! runtime and reaches storage only through the [`Store`](store::Store) trait. It knows nothing
//! of SQL.

#![forbid(unsafe_code)]

pub mod board;
mod clip;
pub mod compile;
pub mod conductor;
mod draw;
pub mod engine;
mod failure;
pub mod fingerprint;
mod flow;
pub mod handle;
mod ids;
pub mod metrics;
pub mod model;
pub mod recovery;
pub mod registry;
pub mod retry;
mod state;
pub mod store;
mod task;
#[cfg(feature = "testing")]
pub mod testing;
mod time;
pub mod typed;

pub use board::{JobBoard, MemoryJobBoard, NewJob};
pub use compile::CompiledFlow;
pub use conductor::Conductor;
pub use engine::{
    Clock, Control, CreateOptions, Engine, Event, EventKind, Events, Lagged, Outcome, RunOptions,
};
pub use failure::{Failure, FailureKind, ResultExt, Retryability, TaskError};
pub use fingerprint::{Fingerprint, ParseFingerprintError};
pub use flow::{Atom, Decider, Flow, FlowChild, Pattern, Provides};
pub use handle::JobHandle;
pub use ids::{ConductorId, Fence, FencingToken, FlowId, JobId, ParseIdError};
pub use model::{FactoryRef, Inputs};
pub use registry::{Blueprint, Registry};
pub use state::{AtomState, FlowState, Intention, JobState, ParseStateError};
pub use store::MemoryStore;
pub use task::{ClaimCheck, ClaimError, ClaimHeld, FnTask, RevertContext, Task, TaskContext};

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic whose value is not text".to_owned()
    }
}
