//! Typed tasks and flows whose wiring the compiler checks.
//!
//! The untyped API moves data between atoms by name: a task returns JSON, another
//! `requires` a symbol and reads it with `ctx.input("name")`, and nothing checks that the
//! names agree, nor that the JSON has the shape the reader expects, until the flow runs. That
//! suits flows built at run time from data. For flows written in Rust, this module gives:
//!
//! - [`TypedTask`]: a task with an [`Input`](TypedTask::Input), an
//!   [`Output`](TypedTask::Output) and an [`Error`](TypedTask::Error) of its own types. Its
//!   error type says which of its values are transient ([`Transient`]); closures get the same
//!   with [`from_fn`].
//! - [`TypedFlow`]: adding an atom returns a typed handle to its output ([`Out`]); giving that
//!   handle to another atom as its input makes the dependency, so no symbol's name is ever
//!   written, and the compiler checks that what an atom is given is exactly what its task
//!   takes. Constants ([`Const`]), the flow's inputs ([`FlowInput`]), tuples and lists of
//!   these, and fan-outs ([`TypedFlow::each`]) are given the same way ([`Args`]).
//! - Per-atom policies on the [`TypedAtom`]: a time limit, and retry policies for `execute`
//!   and `revert` ([`RetryPolicy`](crate::retry::RetryPolicy)).
//! - Typed factories: [`Registry::register_typed`](crate::Registry::register_typed) reads a
//!   job's parameters into a type of yours, and a mistake in them names the field.
//!
//! It is a layer over the untyped API, not beside it: a typed task runs as a
//! [`Task`](crate::Task) whose inputs are gathered and deserialized into its input type and
//! whose output is serialized and stored as JSON, and a [`TypedFlow`] builds an ordinary
//! [`Flow`](crate::Flow). Compiling, fingerprints, storage, resuming, the engine: all as for
//! any flow. Each typed atom provides one symbol, named like the atom; its inputs are named
//! by position (`"0"`, `"1"`, ...) and rebound to the symbols they read. Untyped atoms and
//! flows can be mixed in ([`TypedFlow::add_untyped`]).
//!
//! # Example
//!
//! A network, a subnet in it, then one server per name, in parallel, and a summary of them:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::time::Duration;
//!
//! use baton_core::retry::{Backoff, RetryPolicy};
//! use baton_core::typed::{atom, from_fn, Const, Transient, TypedFlow, TypedTask};
//! use baton_core::{Engine, FlowState, MemoryStore, TaskContext, TaskError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct Subnet { id: String, cidr: String }
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct Server { name: String, ip: String }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("the cloud is busy")]
//! struct Busy;
//!
//! impl Transient for Busy {
//!     fn is_transient(&self) -> bool { true }
//! }
//!
//! struct CreateServer;
//!
//! #[async_trait::async_trait]
//! impl TypedTask for CreateServer {
//!     type Input = (Subnet, String); // the subnet, and the server's name
//!     type Output = Server;
//!     type Error = Busy;
//!
//!     async fn execute(&self, (subnet, name): (Subnet, String), ctx: &TaskContext) -> Result<Server, Busy> {
//!         if ctx.attempt() == 1 && name == "db" {
//!             return Err(Busy); // transient: the atom's retry policy calls it again
//!         }
//!         let prefix = subnet.cidr.trim_end_matches("0/24");
//!         let host = if name == "web" { 10 } else { 11 };
//!         Ok(Server { ip: format!("{prefix}{host}"), name })
//!     }
//! }
//!
//! let mut flow = TypedFlow::linear("stack");
//! let cidr = flow.input::<String>("cidr");
//! let network = flow.add(
//!     atom("network", from_fn(|(): (), ctx| async move {
//!         Ok::<_, TaskError>(format!("net-{}", ctx.flow_id()))
//!     })),
//!     (),
//! );
//! let subnet = flow.add(
//!     atom("subnet", from_fn(|(net, cidr): (String, String), _ctx| async move {
//!         Ok::<_, TaskError>(Subnet { id: format!("{net}/sub"), cidr })
//!     })),
//!     (&network, &cidr),
//! );
//! let servers = flow.each("servers", ["web", "db"], |name| {
//!     let policy = RetryPolicy::attempts(3).backoff(Backoff::none());
//!     let server = atom(format!("server-{name}"), CreateServer)
//!         .timeout(Duration::from_secs(60))
//!         .retries(policy);
//!     (server, (&subnet, Const(name.to_owned())))
//! });
//! let summary = flow.add(
//!     atom("summary", from_fn(|servers: Vec<Server>, _ctx| async move {
//!         Ok::<_, TaskError>(servers.into_iter().map(|s| s.ip).collect::<Vec<String>>())
//!     })),
//!     &servers,
//! );
//! let flow = flow.compile()?;
//!
//! let mut inputs = baton_core::Inputs::new();
//! cidr.insert(&mut inputs, &"10.0.0.0/24".to_owned())?;
//! let outcome = Engine::new(MemoryStore::new()).start(&flow, inputs).await?;
//! assert_eq!(outcome.state, FlowState::Success);
//! assert_eq!(summary.get(&outcome)?, Some(vec!["10.0.0.10".to_owned(), "10.0.0.11".to_owned()]));
//! let db = servers.outs()[1].get(&outcome)?;
//! assert_eq!(db, Some(Server { name: "db".into(), ip: "10.0.0.11".into() }));
//! assert_eq!(outcome.failures.len(), 1, "the first call for db failed, and was retried");
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! A handle whose type is not the one the task takes does not compile:
//!
//! ```compile_fail,E0271
//! use baton_core::typed::{atom, from_fn, TypedFlow};
//! use baton_core::TaskError;
//!
//! let mut flow = TypedFlow::linear("mismatch");
//! let count = flow.add(atom("count", from_fn(|(): (), _| async { Ok::<u32, TaskError>(3) })), ());
//! // `greet` takes a String; `count` gives a u32.
//! flow.add(
//!     atom("greet", from_fn(|name: String, _| async move { Ok::<_, TaskError>(format!("hello, {name}")) })),
//!     &count,
//! );
//! ```
//!
//! Nor does a tuple with one value too many:
//!
//! ```compile_fail,E0271
//! use baton_core::typed::{atom, from_fn, Const, TypedFlow};
//! use baton_core::TaskError;
//!
//! let mut flow = TypedFlow::linear("too-many");
//! flow.add(
//!     atom("greet", from_fn(|name: String, _| async move { Ok::<_, TaskError>(name) })),
//!     (Const("a".to_owned()), Const("b".to_owned())),
//! );
//! ```

mod flow;
mod task;
mod wire;

pub use flow::{atom, Each, Ordered, Step, TypedAtom, TypedFlow};
pub use task::{from_fn, FnTyped, IntoTaskError, Transient, TypedTask};
pub use wire::{Args, Const, FlowInput, Out};
