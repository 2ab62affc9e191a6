//! Defining flows: atoms, the three patterns, links, deciders and retry scopes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::retry::{RetryController, RetryPolicy};
use crate::task::{FnTask, Task, TaskContext};
use crate::TaskError;

/// What an atom's result provides to the atoms after it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Provides {
    /// Nothing: the result is stored but no one can require it.
    #[default]
    Nothing,
    /// One symbol: the whole result.
    One(String),
    /// Several symbols: a JSON array result gives them by position, an object by key.
    Many(Vec<String>),
}

impl Provides {
    /// The symbols provided.
    #[must_use]
    pub fn names(&self) -> &[String] {
        match self {
            Provides::Nothing => &[],
            Provides::One(n) => std::slice::from_ref(n),
            Provides::Many(ns) => ns,
        }
    }
}

/// The behaviour of an atom: a task or a retry controller.
#[derive(Clone)]
pub(crate) enum AtomBody {
    Task(Arc<dyn Task>),
    Retry(Arc<dyn RetryController>),
}

impl fmt::Debug for AtomBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AtomBody::Task(_) => f.write_str("Task"),
            AtomBody::Retry(_) => f.write_str("Retry"),
        }
    }
}

/// A named unit of a flow, with the symbols it requires and provides.
///
/// ```
/// use baton_core::Atom;
/// use serde_json::json;
///
/// let atom = Atom::from_fn("boot", |ctx| async move {
///     let image: String = ctx.input("image")?;
///     Ok(json!({ "server": format!("srv-{image}") }))
/// })
/// .requires(["image"])
/// .rebind("image", "default_image") // read the symbol `default_image` as input `image`
/// .provides("server");
/// # let _ = atom;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Atom {
    pub(crate) name: String,
    pub(crate) body: AtomBody,
    pub(crate) requires: Vec<String>,
    pub(crate) optional: BTreeMap<String, Value>,
    pub(crate) provides: Provides,
    pub(crate) rebind: BTreeMap<String, String>,
    pub(crate) inject: BTreeMap<String, Value>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) revert_timeout: Option<Duration>,
    pub(crate) retries: Option<RetryPolicy>,
    pub(crate) revert_retries: Option<RetryPolicy>,
}

impl Atom {
    fn with_body(name: impl Into<String>, body: AtomBody) -> Self {
        Self {
            name: name.into(),
            body,
            requires: Vec::new(),
            optional: BTreeMap::new(),
            provides: Provides::Nothing,
            rebind: BTreeMap::new(),
            inject: BTreeMap::new(),
            timeout: None,
            revert_timeout: None,
            retries: None,
            revert_retries: None,
        }
    }

    /// An atom running `task`.
    pub fn task(name: impl Into<String>, task: impl Task) -> Self {
        Self::with_body(name, AtomBody::Task(Arc::new(task)))
    }

    /// An atom running a shared task.
    pub fn shared(name: impl Into<String>, task: Arc<dyn Task>) -> Self {
        Self::with_body(name, AtomBody::Task(task))
    }

    /// An atom whose `execute` is a closure (and whose `revert` does nothing). For a closure
    /// revert, build an [`FnTask`] and use [`Atom::task`].
    pub fn from_fn<F, Fut>(name: impl Into<String>, f: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Value, TaskError>> + Send + 'static,
    {
        Self::task(name, FnTask::new(f))
    }

    /// A retry controller atom, for [`Flow::retry`].
    pub fn retry(name: impl Into<String>, controller: impl RetryController) -> Self {
        Self::with_body(name, AtomBody::Retry(Arc::new(controller)))
    }

    /// The atom's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds required inputs, by the names the task reads them with.
    pub fn requires<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for n in names {
            let n = n.into();
            if !self.requires.contains(&n) {
                self.requires.push(n);
            }
        }
        self
    }

    /// Adds an optional input: used if some atom or the flow's inputs provide it, `default`
    /// otherwise.
    pub fn optional(mut self, name: impl Into<String>, default: impl Into<Value>) -> Self {
        self.optional.insert(name.into(), default.into());
        self
    }

    /// Provides the whole result as `symbol`.
    pub fn provides(mut self, symbol: impl Into<String>) -> Self {
        self.provides = Provides::One(symbol.into());
        self
    }

    /// Provides several symbols from the result: by position if it is a JSON array, by key if
    /// it is an object.
    pub fn provides_many<I, S>(mut self, symbols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.provides = Provides::Many(symbols.into_iter().map(Into::into).collect());
        self
    }

    /// Reads the input the task calls `input` from the symbol `symbol`. `input` must be
    /// declared with [`Atom::requires`] or [`Atom::optional`]; otherwise
    /// [`compile`](Flow::compile) refuses the flow
    /// ([`UndeclaredInput`](crate::compile::Error::UndeclaredInput)).
    pub fn rebind(mut self, input: impl Into<String>, symbol: impl Into<String>) -> Self {
        self.rebind.insert(input.into(), symbol.into());
        self
    }

    /// Gives the input `input` a fixed value for this atom only, whatever else provides it.
    /// `input` must be declared with [`Atom::requires`] or [`Atom::optional`]; otherwise
    /// [`compile`](Flow::compile) refuses the flow
    /// ([`UndeclaredInput`](crate::compile::Error::UndeclaredInput)).
    pub fn inject(mut self, input: impl Into<String>, value: impl Into<Value>) -> Self {
        self.inject.insert(input.into(), value.into());
        self
    }

    /// Limits each call of the task's `execute` (and of its `revert`, unless
    /// [`Atom::revert_timeout`] sets another limit) to `limit`.
    ///
    /// An `execute` past its limit is cancelled (its [cancellation
    /// token](crate::TaskContext::cancellation) fires and its future is dropped) and fails with
    /// a retryable [`Timeout`](crate::FailureKind::Timeout) failure, which retry controllers
    /// see like any other. A `revert` past its limit ends `REVERT_FAILURE`. The deadline of a
    /// running attempt is stored with it, so a run resumed after a crash counts from the
    /// attempt's first start, not from the resume. Overrides the flow's
    /// [`Flow::default_timeout`]. A zero limit, or one on a retry controller, is refused by
    /// [`Flow::compile`].
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Limits each call of the task's `revert` to `limit` (see [`Atom::timeout`]); past it,
    /// the revert is cancelled and the atom ends `REVERT_FAILURE` (or, with
    /// [`Atom::revert_retries`], is called again).
    pub fn revert_timeout(mut self, limit: Duration) -> Self {
        self.revert_timeout = Some(limit);
        self
    }

    /// Retries the task's `execute` in place after a failure, as `policy` says: the atom goes
    /// `FAILURE`, then `RETRYING` with the time of its next call stored
    /// ([`AtomRecord::retry_at`](crate::model::AtomRecord::retry_at)), then `RUNNING` again
    /// with a larger attempt number and the same
    /// [idempotency key](crate::TaskContext::idempotency_key) (nothing was undone). The
    /// failures of earlier calls are kept in the atom's
    /// [`retry_history`](crate::model::AtomRecord::retry_history) and reported in the
    /// [`Outcome`](crate::Outcome).
    ///
    /// With a time limit ([`Atom::timeout`]), a call cut at the limit is a transient failure
    /// and is retried like one. Once the policy gives up, the failure goes to the flow's
    /// retry controllers as it would without a policy. No retry starts while the run is
    /// reverting, cancelled or past its deadline. A retry controller atom takes no policy:
    /// [`Flow::compile`] refuses it
    /// ([`BadRetryPolicy`](crate::compile::Error::BadRetryPolicy)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use baton_core::retry::{Backoff, RetryPolicy};
    /// use baton_core::{Atom, TaskError};
    /// use serde_json::json;
    ///
    /// let boot = Atom::from_fn("boot", |_| async { Err::<serde_json::Value, _>(TaskError::msg("busy").retryable()) })
    ///     .timeout(Duration::from_secs(30))
    ///     .retries(RetryPolicy::attempts(4).backoff(Backoff::exponential(
    ///         Duration::from_secs(1),
    ///         Duration::from_secs(20),
    ///     )))
    ///     .revert_retries(RetryPolicy::attempts(10));
    /// # let _ = boot;
    /// ```
    pub fn retries(mut self, policy: RetryPolicy) -> Self {
        self.retries = Some(policy);
        self
    }

    /// Retries the task's `revert` in place after a failure, as `policy` says: the atom stays
    /// `REVERTING`, the failure of the last call in
    /// [`revert_failure`](crate::model::AtomRecord::revert_failure) and the time of the next
    /// call in [`retry_at`](crate::model::AtomRecord::retry_at), both stored, until a call
    /// succeeds (`REVERTED`) or the policy gives up (`REVERT_FAILURE`). A call cut at its time
    /// limit ([`Atom::revert_timeout`]) is a transient failure.
    pub fn revert_retries(mut self, policy: RetryPolicy) -> Self {
        self.revert_retries = Some(policy);
        self
    }
}

/// A function deciding, from the results of a link's source, whether its target runs.
pub type Decider = Arc<dyn Fn(&BTreeMap<String, Value>) -> bool + Send + Sync>;

/// How a flow orders its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// One after the other, in the order added.
    Linear,
    /// In no particular order; they may run in parallel.
    Unordered,
    /// In the order of explicit links and of data dependencies between them.
    Graph,
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Atom(Atom),
    Flow(Flow),
}

impl Node {
    pub(crate) fn name(&self) -> &str {
        match self {
            Node::Atom(a) => &a.name,
            Node::Flow(f) => &f.name,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) decider: Option<Decider>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("decider", &self.decider.is_some())
            .finish()
    }
}

/// A flow: atoms and subflows composed linearly, unordered or as a graph, with an optional
/// retry controller governing all of them.
///
/// ```
/// use baton_core::{Atom, Flow, retry::Times};
/// use serde_json::json;
///
/// let flow = Flow::linear("stack")
///     .add(Atom::from_fn("network", |_| async { Ok(json!("net-1")) }).provides("network"))
///     .add(
///         Flow::unordered("servers")
///             .retry(Atom::retry("servers-retry", Times::new(3)))
///             .add(Atom::from_fn("web", |_| async { Ok(json!("srv-web")) }).requires(["network"]))
///             .add(Atom::from_fn("db", |_| async { Ok(json!("srv-db")) }).requires(["network"])),
///     );
/// let compiled = flow.compile().unwrap();
/// assert_eq!(compiled.len(), 4); // three tasks and the retry controller
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Flow {
    pub(crate) name: String,
    pub(crate) pattern: Pattern,
    pub(crate) children: Vec<Node>,
    pub(crate) links: Vec<Link>,
    pub(crate) retry: Option<Atom>,
    pub(crate) default_timeout: Option<Duration>,
}

impl Flow {
    fn new(name: impl Into<String>, pattern: Pattern) -> Self {
        Self {
            name: name.into(),
            pattern,
            children: Vec::new(),
            links: Vec::new(),
            retry: None,
            default_timeout: None,
        }
    }

    /// A flow whose children run one after the other.
    pub fn linear(name: impl Into<String>) -> Self {
        Self::new(name, Pattern::Linear)
    }

    /// A flow whose children have no order among themselves and may run in parallel.
    pub fn unordered(name: impl Into<String>) -> Self {
        Self::new(name, Pattern::Unordered)
    }

    /// A flow ordered by explicit [`Flow::link`]s and by data: a child that requires a symbol
    /// another child provides runs after it.
    pub fn graph(name: impl Into<String>) -> Self {
        Self::new(name, Pattern::Graph)
    }

    /// The flow's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the flow orders its children.
    #[must_use]
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// Adds an atom or a subflow.
    #[allow(clippy::should_implement_trait)] // a builder step, not arithmetic
    pub fn add(mut self, child: impl Into<FlowChild>) -> Self {
        self.children.push(child.into().0);
        self
    }

    /// Governs the flow with a retry controller atom (made with [`Atom::retry`]); it runs
    /// before the flow's children and decides what happens when one of them fails.
    pub fn retry(mut self, controller: Atom) -> Self {
        self.retry = Some(controller);
        self
    }

    /// Gives every task of this flow, and of its subflows, the time limit `limit` (see
    /// [`Atom::timeout`]) unless the task, or a subflow nearer to it, sets its own.
    pub fn default_timeout(mut self, limit: Duration) -> Self {
        self.default_timeout = Some(limit);
        self
    }

    /// (Graph flows) `to` runs after `from`; both name children of this flow (atoms or
    /// subflows).
    pub fn link(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.links.push(Link {
            from: from.into(),
            to: to.into(),
            decider: None,
        });
        self
    }

    /// (Graph flows) `to` runs after `from`, and only if `decider`, given the results of
    /// `from`'s atoms by name, says so. Otherwise `to` is skipped (state `IGNORE`), and so is
    /// every atom after it whose predecessors were all skipped, or that needs a value a skipped
    /// atom would have provided. An atom joining a skipped branch and one that ran still runs.
    pub fn link_if<F>(mut self, from: impl Into<String>, to: impl Into<String>, decider: F) -> Self
    where
        F: Fn(&BTreeMap<String, Value>) -> bool + Send + Sync + 'static,
    {
        self.links.push(Link {
            from: from.into(),
            to: to.into(),
            decider: Some(Arc::new(decider)),
        });
        self
    }

    /// Compiles the flow into a DAG the engine can run.
    ///
    /// # Errors
    /// A [`compile::Error`](crate::compile::Error) naming the culprit: a duplicate name, a cycle,
    /// a link to an unknown child, a symbol whose providers cannot be ordered before its
    /// consumer, or an `inject` or `rebind` of an input the atom does not declare.
    pub fn compile(&self) -> Result<crate::compile::CompiledFlow, crate::compile::Error> {
        crate::compile::compile(self)
    }
}

/// Something that can be added to a flow: an [`Atom`] or a [`Flow`].
#[derive(Debug, Clone)]
pub struct FlowChild(pub(crate) Node);

impl From<Atom> for FlowChild {
    fn from(a: Atom) -> Self {
        FlowChild(Node::Atom(a))
    }
}

impl From<Flow> for FlowChild {
    fn from(f: Flow) -> Self {
        FlowChild(Node::Flow(f))
    }
}
