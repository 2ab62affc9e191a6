//! Flow factories by name and version: how a conductor turns a job into a flow.
//!
//! A service registers a factory for each kind of job it runs (`stack-create`, `stack-update`,
//! ...), under a version. When a release changes what a factory builds (an atom added, a
//! wiring changed), it registers the new definition under a new version and keeps the old one
//! for as long as runs made with it may still be unfinished: a run is always resumed with the
//! version it was created with. A conductor offers the (factory, version) pairs its registry
//! holds ([`Registry::offer`]), and claims only jobs it can run.
//!
//! ```
//! use baton_core::{Atom, Blueprint, Flow, Registry};
//! use serde_json::json;
//!
//! let registry = Registry::new()
//!     .register("hello", 1, |_params| {
//!         Ok(Blueprint::new(Flow::linear("hello").add(Atom::from_fn("greet", |_| async {
//!             Ok(json!("hello"))
//!         }))))
//!     })?
//!     // Version 2 also says goodbye; runs made by version 1 finish on version 1.
//!     .register("hello", 2, |_params| {
//!         Ok(Blueprint::new(
//!             Flow::linear("hello")
//!                 .add(Atom::from_fn("greet", |_| async { Ok(json!("hello")) }))
//!                 .add(Atom::from_fn("part", |_| async { Ok(json!("goodbye")) })),
//!         ))
//!     })?;
//! assert_eq!(registry.newest("hello"), Some(2));
//! # Ok::<_, baton_core::registry::Error>(())
//! ```
//!
//! A factory can take its parameters as a type of its own ([`Registry::register_typed`]):
//! parameters that do not fit it are refused naming the field
//! ([`BuildError::InvalidParams`]), and it can return a
//! [`TypedFlow`](crate::typed::TypedFlow), a [`Flow`] or a [`Blueprint`] (or a `Result` of
//! one, to refuse parameters that fit the type but make no sense).
//!
//! ```
//! use baton_core::registry::BuildError;
//! use baton_core::typed::{atom, from_fn, Const, TypedFlow};
//! use baton_core::{FactoryRef, Registry, TaskError};
//! use serde::Deserialize;
//! use serde_json::json;
//!
//! #[derive(Deserialize)]
//! struct Params { servers: Vec<String> }
//!
//! let registry = Registry::new().register_typed("servers", 1, |p: Params| {
//!     let mut flow = TypedFlow::unordered("servers");
//!     for name in p.servers {
//!         let boot = from_fn(|name: String, _ctx| async move { Ok::<_, TaskError>(format!("srv-{name}")) });
//!         flow.add(atom(format!("boot-{name}"), boot), Const(name.clone()));
//!     }
//!     flow
//! })?;
//! assert!(registry.build_newest("servers", &json!({ "servers": ["web", "db"] })).is_ok());
//! let refused = registry.build_newest("servers", &json!({ "servers": ["web", 7] }));
//! assert!(matches!(
//!     refused,
//!     Err(BuildError::InvalidParams { field, .. }) if field == "servers[1]"
//! ));
//! # Ok::<_, baton_core::registry::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::board::Offer;
use crate::compile::CompiledFlow;
use crate::flow::Flow;
use crate::model::{FactoryRef, Inputs};

/// What a factory builds from a job's parameters: the flow and its inputs.
#[derive(Debug)]
pub struct Blueprint {
    /// The flow to run.
    pub flow: Flow,
    /// Its inputs.
    pub inputs: Inputs,
}

impl Blueprint {
    /// A blueprint with no inputs.
    #[must_use]
    pub fn new(flow: Flow) -> Self {
        Self {
            flow,
            inputs: Inputs::new(),
        }
    }

    /// Adds inputs.
    #[must_use]
    pub fn inputs(mut self, inputs: Inputs) -> Self {
        self.inputs = inputs;
        self
    }
}

type Factory = Arc<dyn Fn(&Value) -> Result<Blueprint, sealed::Refusal> + Send + Sync>;

/// What a factory may return: a [`Blueprint`], a [`Flow`], a
/// [`TypedFlow`](crate::typed::TypedFlow), or a `Result` of one of these whose error (any
/// `Display`) refuses the parameters ([`BuildError::BadParams`]). Implemented by this crate
/// only.
pub trait IntoBlueprint: sealed::Build {}

mod sealed {
    /// Why a factory built nothing.
    #[derive(Debug)]
    pub enum Refusal {
        /// The factory refused the parameters, saying why.
        Reason(String),
        /// The parameters do not fit the factory's type.
        Field { field: String, reason: String },
        /// The flow it built is wired wrongly.
        Compile(crate::compile::Error),
    }

    /// Makes the blueprint. Only this crate implements it.
    pub trait Build {
        fn build(self) -> Result<super::Blueprint, Refusal>;
    }
}

impl sealed::Build for Blueprint {
    fn build(self) -> Result<Blueprint, sealed::Refusal> {
        Ok(self)
    }
}
impl IntoBlueprint for Blueprint {}

impl sealed::Build for Flow {
    fn build(self) -> Result<Blueprint, sealed::Refusal> {
        Ok(Blueprint::new(self))
    }
}
impl IntoBlueprint for Flow {}

impl sealed::Build for crate::typed::TypedFlow {
    fn build(self) -> Result<Blueprint, sealed::Refusal> {
        self.into_flow()
            .map(Blueprint::new)
            .map_err(sealed::Refusal::Compile)
    }
}
impl IntoBlueprint for crate::typed::TypedFlow {}

impl<B: IntoBlueprint, E: fmt::Display> sealed::Build for Result<B, E> {
    fn build(self) -> Result<Blueprint, sealed::Refusal> {
        self.map_err(|e| sealed::Refusal::Reason(e.to_string()))
            .and_then(sealed::Build::build)
    }
}
impl<B: IntoBlueprint, E: fmt::Display> IntoBlueprint for Result<B, E> {}

/// Why a factory cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The factory's name is empty (or only white space).
    #[error("a flow factory needs a name")]
    EmptyName,
    /// Versions start at 1.
    #[error("flow factory {factory:?}: version 0 is not a version (versions start at 1)")]
    ZeroVersion {
        /// The factory.
        factory: String,
    },
    /// This version of the factory is registered already.
    #[error("flow factory {factory:?} version {version} is registered twice")]
    Duplicate {
        /// The factory.
        factory: String,
        /// The version.
        version: u32,
    },
}

/// Why a job could not be turned into a flow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No factory has this name.
    #[error("no flow factory named {0:?} is registered")]
    UnknownFactory(String),
    /// The factory has no such version here.
    #[error("flow factory {factory:?} has no version {version} here (versions registered: {})", fmt_versions(.registered))]
    UnknownVersion {
        /// The factory.
        factory: String,
        /// The version asked for.
        version: u32,
        /// The versions this registry holds.
        registered: Vec<u32>,
    },
    /// The factory refused the parameters.
    #[error("flow factory {factory} rejected its parameters: {reason}")]
    BadParams {
        /// The factory and version.
        factory: FactoryRef,
        /// Why.
        reason: String,
    },
    /// The parameters do not fit the type a typed factory
    /// ([`Registry::register_typed`]) takes.
    #[error(
        "flow factory {factory} got parameters that do not fit its type, at `{field}`: {reason}"
    )]
    InvalidParams {
        /// The factory and version.
        factory: FactoryRef,
        /// Where in the parameters: a path such as `servers[1].flavor`, or `.` for the
        /// parameters as a whole (a missing field is named in `reason`).
        field: String,
        /// What is wrong there.
        reason: String,
    },
    /// The factory panicked.
    #[error("flow factory {factory} panicked: {message}")]
    Panicked {
        /// The factory and version.
        factory: FactoryRef,
        /// The panic's message.
        message: String,
    },
    /// The flow the factory built does not compile.
    #[error("flow factory {factory} built a flow that does not compile: {error}")]
    Compile {
        /// The factory and version.
        factory: FactoryRef,
        /// The compiler's error.
        error: Box<crate::compile::Error>,
    },
}

fn fmt_versions(versions: &[u32]) -> String {
    if versions.is_empty() {
        return "none".into();
    }
    let v: Vec<String> = versions.iter().map(u32::to_string).collect();
    v.join(", ")
}

/// Flow factories by name and version. See the [module documentation](self).
#[derive(Clone, Default)]
#[must_use]
pub struct Registry {
    factories: BTreeMap<String, BTreeMap<u32, Factory>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("offer", &self.offer())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `factory` as version `version` of `name`. It gets a job's parameters and
    /// returns the flow to run, or a message saying what is wrong with the parameters. It
    /// should be a pure function of the parameters: a run is rebuilt with it whenever it is
    /// resumed.
    ///
    /// # Errors
    /// [`Error::EmptyName`], [`Error::ZeroVersion`], or [`Error::Duplicate`] if this version
    /// of the factory is registered already.
    pub fn register<F>(
        self,
        name: impl Into<String>,
        version: u32,
        factory: F,
    ) -> Result<Self, Error>
    where
        F: Fn(&Value) -> Result<Blueprint, String> + Send + Sync + 'static,
    {
        self.insert(
            name.into(),
            version,
            Arc::new(move |params| factory(params).map_err(sealed::Refusal::Reason)),
        )
    }

    /// Registers `factory` as version `version` of `name`, taking a job's parameters as a
    /// `P`. Parameters that do not deserialize as `P` are refused before the factory is
    /// called, naming where they do not fit ([`BuildError::InvalidParams`]); a job posted
    /// without parameters (`null`) is read as `{}` when `P` does not take `null`, so a
    /// struct whose fields all have defaults takes it. The factory returns what to run: a
    /// [`TypedFlow`](crate::typed::TypedFlow), a [`Flow`], a [`Blueprint`] (with inputs), or
    /// a `Result` of one whose error refuses the parameters ([`BuildError::BadParams`]). Like
    /// any factory, it should be a pure function of the parameters.
    ///
    /// Jobs still carry their parameters as JSON: posting one (from the command line, say)
    /// is unchanged.
    ///
    /// # Errors
    /// As [`Registry::register`].
    pub fn register_typed<P, B, F>(
        self,
        name: impl Into<String>,
        version: u32,
        factory: F,
    ) -> Result<Self, Error>
    where
        P: DeserializeOwned,
        B: IntoBlueprint,
        F: Fn(P) -> B + Send + Sync + 'static,
    {
        self.insert(
            name.into(),
            version,
            Arc::new(move |params| {
                let params: P = typed_params(params)?;
                sealed::Build::build(factory(params))
            }),
        )
    }

    fn insert(mut self, name: String, version: u32, factory: Factory) -> Result<Self, Error> {
        if name.trim().is_empty() {
            return Err(Error::EmptyName);
        }
        if version == 0 {
            return Err(Error::ZeroVersion { factory: name });
        }
        let versions = self.factories.entry(name.clone()).or_default();
        if versions.contains_key(&version) {
            return Err(Error::Duplicate {
                factory: name,
                version,
            });
        }
        versions.insert(version, factory);
        Ok(self)
    }

    /// Keeps only the versions `keep` says yes to (for example to run a conductor that offers
    /// only the older versions during a staged upgrade); factories left with no version go.
    pub fn retain(mut self, mut keep: impl FnMut(&str, u32) -> bool) -> Self {
        for (name, versions) in &mut self.factories {
            versions.retain(|&v, _| keep(name, v));
        }
        self.factories.retain(|_, versions| !versions.is_empty());
        self
    }

    /// The registered names, sorted.
    #[must_use]
    pub fn names(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }

    /// The registered versions of `name`, oldest first.
    #[must_use]
    pub fn versions(&self, name: &str) -> Vec<u32> {
        self.factories
            .get(name)
            .map(|v| v.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The newest registered version of `name`.
    #[must_use]
    pub fn newest(&self, name: &str) -> Option<u32> {
        self.factories.get(name)?.keys().next_back().copied()
    }

    /// Whether the registry holds no factory.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.factories.is_empty()
    }

    /// What a conductor with this registry can run: every registered (factory, version).
    pub fn offer(&self) -> Offer {
        let mut offer = Offer::new();
        for (name, versions) in &self.factories {
            for &v in versions.keys() {
                offer = offer.with(name.clone(), v);
            }
        }
        offer
    }

    /// Builds the flow of the newest version of factory `name` with `params` (to check a job's
    /// parameters before posting it, say), as [`Registry::build`] does.
    ///
    /// # Errors
    /// As [`Registry::build`].
    pub fn build_newest(
        &self,
        name: &str,
        params: &Value,
    ) -> Result<(CompiledFlow, Inputs), BuildError> {
        let version = self
            .newest(name)
            .ok_or_else(|| BuildError::UnknownFactory(name.to_owned()))?;
        self.build(&FactoryRef::new(name, version), params)
    }

    /// Builds and compiles the flow of `factory` (a name and a version) with `params`. A
    /// factory that panics is caught and reported ([`BuildError::Panicked`]), so one bad job
    /// cannot take its conductor down. (A factory that aborts the process, running out of
    /// memory say, cannot be caught: conductors park a job claimed too often without
    /// progress, see [`conductor::Options::max_stalled_claims`](crate::conductor::Options::max_stalled_claims).)
    ///
    /// # Errors
    /// A [`BuildError`] naming the factory, its version and what went wrong.
    pub fn build(
        &self,
        factory: &FactoryRef,
        params: &Value,
    ) -> Result<(CompiledFlow, Inputs), BuildError> {
        let versions = self
            .factories
            .get(&factory.name)
            .ok_or_else(|| BuildError::UnknownFactory(factory.name.clone()))?;
        let f = versions
            .get(&factory.version)
            .ok_or_else(|| BuildError::UnknownVersion {
                factory: factory.name.clone(),
                version: factory.version,
                registered: versions.keys().copied().collect(),
            })?;
        let built = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let blueprint = f(params)?;
            blueprint
                .flow
                .compile()
                .map(|c| (c, blueprint.inputs))
                .map_err(sealed::Refusal::Compile)
        }));
        let factory = factory.clone();
        match built {
            Ok(Ok(built)) => Ok(built),
            Ok(Err(sealed::Refusal::Compile(error))) => Err(BuildError::Compile {
                factory,
                error: Box::new(error),
            }),
            Ok(Err(sealed::Refusal::Reason(reason))) => {
                Err(BuildError::BadParams { factory, reason })
            }
            Ok(Err(sealed::Refusal::Field { field, reason })) => Err(BuildError::InvalidParams {
                factory,
                field,
                reason,
            }),
            Err(panic) => Err(BuildError::Panicked {
                factory,
                message: crate::panic_message(panic.as_ref()),
            }),
        }
    }
}

/// A job's parameters as a `P`: `null` (no parameters) read as `{}` if `P` does not take
/// `null`; what does not fit named by its path.
fn typed_params<P: DeserializeOwned>(params: &Value) -> Result<P, sealed::Refusal> {
    let refusal = |e: serde_path_to_error::Error<serde_json::Error>| sealed::Refusal::Field {
        field: e.path().to_string(),
        reason: e.into_inner().to_string(),
    };
    match serde_path_to_error::deserialize(params) {
        Ok(p) => Ok(p),
        // Said about `{}`, the error names a missing field rather than the `null`.
        Err(_) if params.is_null() => {
            serde_path_to_error::deserialize(&Value::Object(serde_json::Map::new()))
                .map_err(refusal)
        }
        Err(e) => Err(refusal(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Atom;
    use serde_json::json;

    fn one_atom(_: &Value) -> Result<Blueprint, String> {
        Ok(Blueprint::new(
            Flow::linear("f").add(Atom::from_fn("a", |_| async { Ok(json!(1)) })),
        ))
    }

    #[test]
    fn versions_are_registered_and_offered() {
        let r = Registry::new()
            .register("f", 2, one_atom)
            .and_then(|r| r.register("f", 1, one_atom))
            .and_then(|r| r.register("g", 7, one_atom));
        let r = match r {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(r.names(), ["f", "g"]);
        assert_eq!(r.versions("f"), [1, 2]);
        assert_eq!(r.newest("f"), Some(2));
        assert_eq!(r.newest("h"), None);
        let offer = r.offer();
        assert!(offer.can_run("f", Some(1)));
        assert!(offer.can_run("g", None));
        assert!(!offer.can_run("g", Some(1)));
        assert_eq!(offer.newest("f"), Some(2));
        let older = r.retain(|_, v| v < 2);
        assert_eq!(older.names(), ["f"]);
    }

    #[test]
    fn bad_registrations_are_typed_errors() {
        assert_eq!(
            Registry::new().register("f", 0, one_atom).err(),
            Some(Error::ZeroVersion {
                factory: "f".into()
            })
        );
        assert_eq!(
            Registry::new().register(" ", 1, one_atom).err(),
            Some(Error::EmptyName)
        );
        let twice = Registry::new()
            .register("f", 1, one_atom)
            .and_then(|r| r.register("f", 1, one_atom));
        assert_eq!(
            twice.err(),
            Some(Error::Duplicate {
                factory: "f".into(),
                version: 1
            })
        );
    }

    #[test]
    fn builds_name_what_went_wrong() {
        let r = Registry::new()
            .register("f", 1, one_atom)
            .and_then(|r| r.register("bad", 1, |_| Err("no".into())))
            .and_then(|r| r.register("boom", 1, |_| panic!("factory exploded")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.build(&FactoryRef::new("f", 1), &json!({})).is_ok());
        assert_eq!(
            r.build(&FactoryRef::new("nope", 1), &json!({})).err(),
            Some(BuildError::UnknownFactory("nope".into()))
        );
        let unknown = r.build(&FactoryRef::new("f", 3), &json!({})).err();
        assert_eq!(
            unknown.as_ref().map(ToString::to_string).as_deref(),
            Some("flow factory \"f\" has no version 3 here (versions registered: 1)")
        );
        assert!(matches!(
            r.build(&FactoryRef::new("bad", 1), &json!({})),
            Err(BuildError::BadParams { reason, .. }) if reason == "no"
        ));
        assert!(matches!(
            r.build(&FactoryRef::new("boom", 1), &json!({})),
            Err(BuildError::Panicked { message, .. }) if message == "factory exploded"
        ));
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Stack {
        servers: Vec<Server>,
        #[serde(default)]
        note: Option<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Server {
        name: String,
        flavor: String,
    }

    fn typed_registry() -> Registry {
        use crate::typed::{atom, from_fn, Const, TypedFlow};
        Registry::new()
            .register_typed("stack", 1, |p: Stack| {
                if p.servers.is_empty() {
                    return Err("a stack needs a server");
                }
                let mut flow = TypedFlow::unordered("stack");
                for s in p.servers {
                    let boot =
                        from_fn(
                            |flavor: String, _| async move { Ok::<_, crate::TaskError>(flavor) },
                        );
                    flow.add(atom(s.name, boot), Const(s.flavor));
                }
                Ok(flow)
            })
            .and_then(|r| {
                r.register_typed("defaults", 1, |p: Option<u32>| {
                    Blueprint::new(
                        Flow::linear("defaults")
                            .add(Atom::from_fn("a", move |_| async move { Ok(json!(p)) })),
                    )
                })
            })
            .and_then(|r| {
                r.register_typed("foreign", 1, |(): ()| {
                    let mut other = TypedFlow::linear("other");
                    let out = other.add(
                        atom(
                            "x",
                            from_fn(|(): (), _| async { Ok::<_, crate::TaskError>(1) }),
                        ),
                        (),
                    );
                    let mut flow = TypedFlow::linear("foreign");
                    flow.add(
                        atom(
                            "y",
                            from_fn(|n: i32, _| async move { Ok::<_, crate::TaskError>(n) }),
                        ),
                        &out,
                    );
                    flow
                })
            })
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn typed_params_that_do_not_fit_name_the_field() {
        let r = typed_registry();
        let stack = FactoryRef::new("stack", 1);
        let good = json!({"servers": [{"name": "web", "flavor": "small"}]});
        let (flow, _) = r.build(&stack, &good).unwrap();
        assert_eq!(flow.len(), 1);
        let err = r
            .build(
                &stack,
                &json!({"servers": [{"name": "web", "flavor": "small"}, {"name": "db", "flavor": 2}]}),
            )
            .unwrap_err();
        assert!(
            matches!(&err, BuildError::InvalidParams { field, .. } if field == "servers[1].flavor"),
            "{err:?}"
        );
        assert!(err.to_string().contains("`servers[1].flavor`"), "{err}");
        let missing = r.build(&stack, &json!({"note": "x"})).unwrap_err();
        assert!(
            matches!(&missing, BuildError::InvalidParams { field, reason, .. } if field == "." && reason.contains("missing field `servers`")),
            "{missing:?}"
        );
        // No parameters at all: read as `{}`, so the missing field is named.
        let none = r.build(&stack, &Value::Null).unwrap_err();
        assert!(
            matches!(&none, BuildError::InvalidParams { reason, .. } if reason.contains("`servers`")),
            "{none:?}"
        );
        // A type that takes `null` gets it.
        assert!(r
            .build(&FactoryRef::new("defaults", 1), &Value::Null)
            .is_ok());
        // Parameters that fit but that the factory refuses.
        assert!(matches!(
            r.build(&stack, &json!({"servers": []})),
            Err(BuildError::BadParams { reason, .. }) if reason == "a stack needs a server"
        ));
        // A typed flow wired wrongly is a compile error.
        assert!(matches!(
            r.build(&FactoryRef::new("foreign", 1), &Value::Null),
            Err(BuildError::Compile { error, .. })
                if matches!(*error, crate::compile::Error::BadWiring { ref atom, .. } if atom == "y")
        ));
    }
}
