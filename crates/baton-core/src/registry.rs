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

use std::collections::BTreeMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

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

type Factory = Arc<dyn Fn(&Value) -> Result<Blueprint, String> + Send + Sync>;

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
        mut self,
        name: impl Into<String>,
        version: u32,
        factory: F,
    ) -> Result<Self, Error>
    where
        F: Fn(&Value) -> Result<Blueprint, String> + Send + Sync + 'static,
    {
        let name = name.into();
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
        versions.insert(version, Arc::new(factory));
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
            Ok(blueprint.flow.compile().map(|c| (c, blueprint.inputs)))
        }));
        match built {
            Ok(Ok(Ok(built))) => Ok(built),
            Ok(Ok(Err(error))) => Err(BuildError::Compile {
                factory: factory.clone(),
                error: Box::new(error),
            }),
            Ok(Err(reason)) => Err(BuildError::BadParams {
                factory: factory.clone(),
                reason,
            }),
            Err(panic) => Err(BuildError::Panicked {
                factory: factory.clone(),
                message: crate::panic_message(panic.as_ref()),
            }),
        }
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
}
