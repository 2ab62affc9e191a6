//! Testing your flows: a crash test, time you can skip, and assertions on a run's history.
//!
//! Behind the feature `testing`, for dev-dependencies:
//!
//! ```toml
//! [dev-dependencies]
//! baton = { version = "0.3", features = ["testing"] }
//! tokio = { version = "1", features = ["macros", "rt", "test-util"] }
//! ```
//!
//! # Why
//!
//! A flow is correct only if it survives its engine dying at any moment: the engine keeps its
//! side of that (every step is stored before it is acted on), but the flow's tasks must keep
//! theirs. A task called again after a crash must not make a second server; a `revert` must
//! undo an `execute` whose result was never stored. Such bugs show only when a crash comes at
//! the wrong moment, which no ordinary test arranges. And flows wait (backoff between retries,
//! time limits, deadlines), which a test should not.
//!
//! - [`CrashTest`] runs your flow once uninterrupted on a [`MemoryStore`](crate::MemoryStore),
//!   then kills its engine at each of its writes in turn ([`CrashStore`]), resumes every such
//!   run with a fresh engine and compares how it ended with the uninterrupted run: the flow's
//!   state, every atom's state, results and failures. A check of your own runs after every
//!   run, over the fake system your tasks act on ("exactly one server exists"). The first run
//!   that ends otherwise is reported naming the write, the atoms the crash caught mid-call and
//!   what differed ([`Divergence`]); [`CrashTest::fail_at`] makes a task fail, to cover the
//!   way back too.
//! - [`Clock::tokio`](crate::Clock::tokio) (for [`Engine::with_clock`](crate::Engine::with_clock);
//!   the crash test uses it by default): under tokio's paused time
//!   (`#[tokio::test(start_paused = true)]`) an hour of backoff, a task's time limit and a
//!   run's deadline pass at once, and the run stores the history real time would give it.
//! - [`assert_history`]: what ran, failed and was reverted, in order, how the run ended; a
//!   failure prints each expectation beside what the store holds, then the whole history.
//!
//! # Example
//!
//! A flow that creates a server on a fake cloud, then its DNS name; if a step fails, the server
//! is deleted. Its task passes the crash test because it asks the cloud for the server made
//! with its idempotency key before creating one, and its revert deletes by that key, which
//! works when the crash left no result to read the server's id from.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::{Arc, Mutex};
//!
//! use baton_core::testing::{assert_history, CrashTest};
//! use baton_core::typed::{atom, from_fn, Const, TypedFlow, TypedTask};
//! use baton_core::{compile, CompiledFlow, Engine, FlowState, MemoryStore};
//! use baton_core::{RevertContext, TaskContext, TaskError};
//!
//! /// The fake cloud: servers' ids by the key they were created with.
//! #[derive(Clone, Default)]
//! struct Cloud(Arc<Mutex<BTreeMap<String, String>>>);
//!
//! impl Cloud {
//!     fn servers(&self) -> usize {
//!         self.0.lock().unwrap().len()
//!     }
//! }
//!
//! struct CreateServer(Cloud);
//!
//! #[async_trait::async_trait]
//! impl TypedTask for CreateServer {
//!     type Input = String; // the server's name
//!     type Output = String; // its id
//!     type Error = TaskError;
//!
//!     async fn execute(&self, name: String, ctx: &TaskContext) -> Result<String, TaskError> {
//!         let mut servers = (self.0).0.lock().unwrap();
//!         let n = servers.len();
//!         let id = servers.entry(ctx.idempotency_key()).or_insert_with(|| format!("{name}-{n}"));
//!         Ok(id.clone())
//!     }
//!
//!     async fn revert(&self, _: String, _: Option<String>, ctx: &RevertContext) -> Result<(), TaskError> {
//!         (self.0).0.lock().unwrap().remove(&ctx.idempotency_key());
//!         Ok(())
//!     }
//! }
//!
//! fn stack(cloud: &Cloud) -> Result<CompiledFlow, compile::Error> {
//!     let mut flow = TypedFlow::linear("stack");
//!     let server = flow.add(atom("server", CreateServer(cloud.clone())), Const("web".to_owned()));
//!     flow.add(
//!         atom("dns", from_fn(|id: String, _| async move { Ok::<_, TaskError>(format!("www -> {id}")) })),
//!         &server,
//!     );
//!     flow.compile()
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! // Killed at any write and resumed, the flow ends as it would have, with one server.
//! let report = CrashTest::new(stack)
//!     .check(|end| match end.world.servers() {
//!         1 => Ok(()),
//!         n => Err(format!("{n} servers exist, one expected")),
//!     })
//!     .run()
//!     .await?;
//! assert_eq!(report.outcome.state, FlowState::Success);
//!
//! // The way back: `dns` fails, and no server is left, whatever the crash caught.
//! CrashTest::new(stack)
//!     .fail_at("dns")
//!     .check(|end| match end.world.servers() {
//!         0 => Ok(()),
//!         n => Err(format!("{n} servers left after the revert")),
//!     })
//!     .run()
//!     .await?;
//!
//! // One ordinary run, and what its history says.
//! let store = MemoryStore::new();
//! let flow = stack(&Cloud::default())?;
//! let outcome = Engine::new(store.clone()).start(&flow, Default::default()).await?;
//! assert_history(&store, outcome.flow)
//!     .ran(["server", "dns"])
//!     .ended(FlowState::Success)
//!     .await;
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! The same task creating a server on every call fails the first test: killed after the
//! server was created but before its result was stored, the resumed run creates a second one,
//! and the check says so, naming the write. And where `server` runs beside a step that fails
//! (an unordered flow, a graph), a revert that deletes the server by the id in its result
//! fails the second: killed once the sibling's failure is stored but while `server`'s call is
//! still under way, the resumed run reverts `server` without a result, and a server is left.

mod crash;
mod end;
mod history;
mod store;

pub use crash::{Crash, CrashReport, CrashTest, RunEnd};
pub use end::{Difference, Divergence};
pub use history::{assert_history, ExpectHistory, Expected, History, HistoryMismatch, Unmet};
pub use store::{CrashMode, CrashStore};

use crate::{compile, engine, store as stores};

/// Why a test of this module failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The flow does not compile.
    #[error("the flow does not compile: {0}")]
    Flow(#[from] compile::Error),
    /// [`CrashTest::fail_at`] names no task of the flow.
    #[error("the crash test is to fail atom {0:?}, but the flow has no task of that name")]
    UnknownAtom(String),
    /// The store failed to read or write something the test needed.
    #[error("the store failed: {0}")]
    Store(#[from] stores::Error),
    /// The uninterrupted run of a crash test failed (not its tasks: the engine, which has no
    /// end to compare with then).
    #[error("the uninterrupted run failed: {0}")]
    Uninterrupted(#[source] engine::Error),
    /// A run of a crash test failed before it came to the write it was to be killed at.
    #[error("{crash}: the run failed before that write: {source}")]
    Run {
        /// Where it was to be killed.
        crash: Box<Crash>,
        /// The engine's error.
        #[source]
        source: engine::Error,
    },
    /// A run killed by a crash test could not be resumed.
    #[error("{crash}; the resume failed: {source}")]
    Resume {
        /// Where it was killed.
        crash: Box<Crash>,
        /// The engine's error.
        #[source]
        source: engine::Error,
    },
    /// A run killed by a crash test and resumed ended otherwise than the uninterrupted run,
    /// or failed the test's check.
    #[error("{0}")]
    Diverged(Box<Divergence>),
    /// A run's history does not meet what [`assert_history`] expects of it.
    #[error("{0}")]
    History(Box<HistoryMismatch>),
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;
