//! [`TypedFlow`]: a flow builder whose atoms are wired by typed handles.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::task::{Adapter, TypedTask};
use super::wire::{sealed::Wire, ArgSource, Args, FlowInput, Out, Shape, Wiring};
use crate::compile::{self, CompiledFlow, WiringError};
use crate::flow::{Atom, Flow, FlowChild, Link, Node};
use crate::retry::RetryPolicy;

/// A typed task with a name and the settings of its atom, ready to be added to a
/// [`TypedFlow`]: made by [`atom`].
#[must_use]
pub struct TypedAtom<T> {
    name: String,
    task: T,
    timeout: Option<Duration>,
    revert_timeout: Option<Duration>,
    retries: Option<RetryPolicy>,
    revert_retries: Option<RetryPolicy>,
}

/// The typed task `task` as an atom named `name` (unique in its flow).
pub fn atom<T: TypedTask>(name: impl Into<String>, task: T) -> TypedAtom<T> {
    TypedAtom {
        name: name.into(),
        task,
        timeout: None,
        revert_timeout: None,
        retries: None,
        revert_retries: None,
    }
}

impl<T> TypedAtom<T> {
    /// The atom's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Limits each call of `execute` (and of `revert`, unless
    /// [`revert_timeout`](TypedAtom::revert_timeout) says otherwise): see [`Atom::timeout`].
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Limits each call of `revert`: see [`Atom::revert_timeout`].
    pub fn revert_timeout(mut self, limit: Duration) -> Self {
        self.revert_timeout = Some(limit);
        self
    }

    /// Retries a failed `execute` in place: see [`Atom::retries`].
    pub fn retries(mut self, policy: RetryPolicy) -> Self {
        self.retries = Some(policy);
        self
    }

    /// Retries a failed `revert` in place: see [`Atom::revert_retries`].
    pub fn revert_retries(mut self, policy: RetryPolicy) -> Self {
        self.revert_retries = Some(policy);
        self
    }
}

impl<T> fmt::Debug for TypedAtom<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedAtom")
            .field("name", &self.name)
            .field("task", &std::any::type_name::<T>())
            .field("timeout", &self.timeout)
            .field("revert_timeout", &self.revert_timeout)
            .field("retries", &self.retries)
            .field("revert_retries", &self.revert_retries)
            .finish()
    }
}

/// Something a flow can order another step after ([`TypedFlow::after`]): an atom's [`Out`],
/// a fan-out's [`Each`], a subflow's or an untyped child's [`Step`].
pub trait Ordered: sealed::Named {}

mod sealed {
    /// The name of a child of a flow. Only this crate implements it.
    pub trait Named {
        fn child_name(&self) -> &str;
    }
}

impl<T> sealed::Named for Out<T> {
    fn child_name(&self) -> &str {
        self.atom()
    }
}
impl<T> Ordered for Out<T> {}

impl<S: sealed::Named + ?Sized> sealed::Named for &S {
    fn child_name(&self) -> &str {
        (**self).child_name()
    }
}
impl<S: Ordered + ?Sized> Ordered for &S {}

/// A child added to a [`TypedFlow`] that has no typed output: a subflow
/// ([`TypedFlow::add_flow`]) or an untyped atom or flow ([`TypedFlow::add_untyped`]). Order
/// other steps after it with [`TypedFlow::after`]; read a symbol it provides with
/// [`Step::output`].
#[derive(Debug, Clone)]
pub struct Step {
    name: Arc<str>,
    /// The symbols provided inside it, with the atom providing each.
    provides: Vec<(String, String)>,
}

impl Step {
    /// The child's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A typed handle to the symbol `symbol`, which an atom of this child provides. The type
    /// is taken on trust for untyped atoms: a value that does not fit fails the atom reading
    /// it, at run time, naming it.
    ///
    /// # Errors
    /// [`compile::Error::BadWiring`] ([`WiringError::NotProvided`]) if no atom of the child
    /// provides `symbol`.
    pub fn output<T>(&self, symbol: &str) -> Result<Out<T>, compile::Error> {
        output_of(&self.name, &self.provides, symbol)
    }
}

impl sealed::Named for Step {
    fn child_name(&self) -> &str {
        &self.name
    }
}
impl Ordered for Step {}

/// The outputs of a fan-out ([`TypedFlow::each`]): one handle per item, in the items' order.
/// Given as an atom's input, it is a `Vec` of the outputs.
pub struct Each<T> {
    name: Arc<str>,
    outs: Vec<Out<T>>,
}

impl<T> Each<T> {
    /// The subflow's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The handles, in the items' order.
    #[must_use]
    pub fn outs(&self) -> &[Out<T>] {
        &self.outs
    }

    /// How many atoms the fan-out made.
    #[must_use]
    pub fn len(&self) -> usize {
        self.outs.len()
    }

    /// Whether it made none (no items).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.outs.is_empty()
    }
}

impl<T> Clone for Each<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            outs: self.outs.clone(),
        }
    }
}

impl<T> fmt::Debug for Each<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Each")
            .field("name", &self.name)
            .field("outs", &self.outs)
            .finish()
    }
}

impl<'a, T> IntoIterator for &'a Each<T> {
    type Item = &'a Out<T>;
    type IntoIter = std::slice::Iter<'a, Out<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.outs.iter()
    }
}

impl<T> sealed::Named for Each<T> {
    fn child_name(&self) -> &str {
        &self.name
    }
}
impl<T> Ordered for Each<T> {}

impl<T> Wire for Each<T> {
    fn wire(&self, wiring: &mut Wiring) -> Shape {
        self.outs.as_slice().wire(wiring)
    }
}

impl<T> Args for Each<T> {
    type Value = Vec<T>;
}

/// A flow whose atoms are typed tasks wired by typed handles: see the
/// [module documentation](super). It builds an ordinary [`Flow`] ([`TypedFlow::into_flow`]),
/// so compiling, fingerprints and storage are those of any flow.
#[must_use]
pub struct TypedFlow {
    flow: Flow,
    /// Every atom in the flow and its subflows.
    atoms: BTreeSet<String>,
    /// (atom, atom whose output it reads), for every handle an atom was given.
    reads: Vec<(String, String)>,
    /// What went wrong while building, reported by `into_flow`.
    errors: Vec<compile::Error>,
}

impl fmt::Debug for TypedFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedFlow")
            .field("flow", &self.flow)
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

impl TypedFlow {
    fn new(flow: Flow) -> Self {
        Self {
            flow,
            atoms: BTreeSet::new(),
            reads: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// A flow whose children run one after the other, in the order added ([`Flow::linear`]).
    pub fn linear(name: impl Into<String>) -> Self {
        Self::new(Flow::linear(name))
    }

    /// A flow whose children have no order among themselves and may run in parallel
    /// ([`Flow::unordered`]); a child reading another's output is refused by the compiler.
    pub fn unordered(name: impl Into<String>) -> Self {
        Self::new(Flow::unordered(name))
    }

    /// A flow ordered by data ([`Flow::graph`]): an atom runs after the atoms whose outputs
    /// it is given, and after the steps [`TypedFlow::after`] names; the rest in parallel.
    pub fn graph(name: impl Into<String>) -> Self {
        Self::new(Flow::graph(name))
    }

    /// The flow's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.flow.name()
    }

    /// Governs the flow with a retry controller (see [`Flow::retry`]), which retries the
    /// flow's children as a group.
    pub fn retry(mut self, controller: Atom) -> Self {
        self.atoms.insert(controller.name().to_owned());
        self.flow = self.flow.retry(controller);
        self
    }

    /// Gives every task of the flow, and of its subflows, a time limit unless it has its own
    /// (see [`Flow::default_timeout`]).
    pub fn default_timeout(mut self, limit: Duration) -> Self {
        self.flow = self.flow.default_timeout(limit);
        self
    }

    /// A handle to the flow input `name`, of type `T`: give its value when creating a run
    /// ([`FlowInput::insert`]).
    #[must_use]
    pub fn input<T>(&self, name: impl Into<Arc<str>>) -> FlowInput<T> {
        FlowInput::new(name)
    }

    /// A typed handle to the symbol `symbol`, which an atom already in this flow provides: its
    /// retry controller's value (what a [`ForEach`](crate::retry::ForEach) tries, say), or a
    /// symbol of an untyped child. The type is taken on trust, as for [`Step::output`].
    ///
    /// # Errors
    /// [`compile::Error::BadWiring`] ([`WiringError::NotProvided`]) if no atom of the flow
    /// provides `symbol`.
    pub fn output<T>(&self, symbol: &str) -> Result<Out<T>, compile::Error> {
        let mut provides = Vec::new();
        collect_provides_in(&self.flow, &mut provides);
        output_of(self.name(), &provides, symbol)
    }

    /// Adds `atom`, given `args` as its input, and returns a handle to its output.
    ///
    /// `args` must make exactly the task's input type (see [`Args`]), or this does not
    /// compile. Each handle in `args` makes the atom read that output: in a graph flow the
    /// atom runs after its producers; in a linear flow, add producers first (the flow
    /// compiler refuses the flow otherwise).
    pub fn add<T, A>(&mut self, atom: TypedAtom<T>, args: A) -> Out<T::Output>
    where
        T: TypedTask,
        A: Args<Value = T::Input>,
    {
        let mut wiring = Wiring::default();
        let shape = args.wire(&mut wiring);
        let name = atom.name;
        for problem in wiring.errors {
            self.errors.push(compile::Error::BadWiring {
                atom: name.clone(),
                problem,
            });
        }
        let mut built = Atom::task(
            name.clone(),
            Adapter {
                task: atom.task,
                shape,
            },
        );
        for (k, source) in wiring.args.into_iter().enumerate() {
            let arg = Shape::arg_name(k);
            built = built.requires([arg.clone()]);
            built = match source {
                ArgSource::Atom { atom, symbol } => {
                    self.reads.push((name.clone(), atom.to_string()));
                    built.rebind(arg, symbol.to_string())
                }
                ArgSource::Input(symbol) => built.rebind(arg, symbol.to_string()),
                ArgSource::Const(value) => built.inject(arg, value),
            };
        }
        built.provides = crate::flow::Provides::One(name.clone());
        built.timeout = atom.timeout;
        built.revert_timeout = atom.revert_timeout;
        built.retries = atom.retries;
        built.revert_retries = atom.revert_retries;
        self.atoms.insert(name.clone());
        self.flow.children.push(Node::Atom(built));
        Out::new(name.as_str(), name.as_str())
    }

    /// Fans out: adds an unordered subflow named `name` (its atoms may run in parallel) with
    /// one atom per item, made by `f` from the item (the atom, and its input). Returns the
    /// atoms' outputs, in the items' order; given as an atom's input, they are a `Vec`.
    pub fn each<I, T, A, F>(
        &mut self,
        name: impl Into<String>,
        items: I,
        mut f: F,
    ) -> Each<T::Output>
    where
        I: IntoIterator,
        T: TypedTask,
        A: Args<Value = T::Input>,
        F: FnMut(I::Item) -> (TypedAtom<T>, A),
    {
        let mut sub = TypedFlow::unordered(name);
        let outs = items
            .into_iter()
            .map(|item| {
                let (atom, args) = f(item);
                sub.add(atom, args)
            })
            .collect();
        let step = self.add_flow(sub);
        Each {
            name: step.name,
            outs,
        }
    }

    /// Adds a typed subflow (its own pattern, its own retry controller). Handles from it can
    /// be given to atoms of this flow, and handles from this flow to its atoms.
    pub fn add_flow(&mut self, sub: TypedFlow) -> Step {
        let node = Node::Flow(sub.flow);
        let step = step_of(&node);
        self.atoms.extend(sub.atoms);
        self.reads.extend(sub.reads);
        self.errors.extend(sub.errors);
        self.flow.children.push(node);
        step
    }

    /// Adds an untyped atom or flow (built with [`Atom`] and [`Flow`]): the escape hatch for
    /// what the typed API does not cover. Read what it provides with [`Step::output`]; give
    /// it typed outputs by their [`Out::symbol`].
    pub fn add_untyped(&mut self, child: impl Into<FlowChild>) -> Step {
        let node = child.into().0;
        let step = step_of(&node);
        collect_atoms(&node, &mut self.atoms);
        self.flow.children.push(node);
        step
    }

    /// Orders `then` after `first`, with no data between them (a graph flow's link, see
    /// [`Flow::link`]). Both must be children of this flow: atoms added to it, its fan-outs,
    /// its subflows; and the flow must be a graph flow (the compiler refuses links elsewhere).
    pub fn after(&mut self, first: &impl Ordered, then: &impl Ordered) {
        self.flow.links.push(Link {
            from: first.child_name().to_owned(),
            to: then.child_name().to_owned(),
            decider: None,
        });
    }

    /// The flow as an ordinary [`Flow`], for [`Flow::compile`], a
    /// [`Blueprint`](crate::Blueprint), or for adding to an untyped flow.
    ///
    /// # Errors
    /// [`compile::Error::BadWiring`] naming the atom: a handle from another flow
    /// ([`WiringError::ForeignHandle`]), a constant that does not serialize
    /// ([`WiringError::Constant`]).
    pub fn into_flow(self) -> Result<Flow, compile::Error> {
        self.check()?;
        Ok(self.flow)
    }

    /// Compiles the flow, as [`Flow::compile`] does.
    ///
    /// # Errors
    /// As [`TypedFlow::into_flow`] and [`Flow::compile`].
    pub fn compile(&self) -> Result<CompiledFlow, compile::Error> {
        self.check()?;
        self.flow.compile()
    }

    fn check(&self) -> Result<(), compile::Error> {
        if let Some(error) = self.errors.first() {
            return Err(error.clone());
        }
        match self.reads.iter().find(|(_, p)| !self.atoms.contains(p)) {
            Some((atom, producer)) => Err(compile::Error::BadWiring {
                atom: atom.clone(),
                problem: WiringError::ForeignHandle {
                    producer: producer.clone(),
                },
            }),
            None => Ok(()),
        }
    }
}

/// Every atom of `node`, by name.
fn collect_atoms(node: &Node, out: &mut BTreeSet<String>) {
    match node {
        Node::Atom(a) => {
            out.insert(a.name.clone());
        }
        Node::Flow(f) => {
            if let Some(r) = &f.retry {
                out.insert(r.name.clone());
            }
            for child in &f.children {
                collect_atoms(child, out);
            }
        }
    }
}

/// The symbols provided in `node`, with their providers, in definition order.
fn collect_provides(node: &Node, out: &mut Vec<(String, String)>) {
    match node {
        Node::Atom(a) => {
            for s in a.provides.names() {
                out.push((s.clone(), a.name.clone()));
            }
        }
        Node::Flow(f) => collect_provides_in(f, out),
    }
}

/// The symbols provided in `flow`, with their providers, in definition order.
fn collect_provides_in(flow: &Flow, out: &mut Vec<(String, String)>) {
    if let Some(r) = &flow.retry {
        for s in r.provides.names() {
            out.push((s.clone(), r.name.clone()));
        }
    }
    for child in &flow.children {
        collect_provides(child, out);
    }
}

/// A handle to `symbol`, the last of `provides` (symbols and their providers, found in
/// `owner`) to provide it.
fn output_of<T>(
    owner: &str,
    provides: &[(String, String)],
    symbol: &str,
) -> Result<Out<T>, compile::Error> {
    provides
        .iter()
        .rev()
        .find(|(s, _)| s == symbol)
        .map(|(s, atom)| Out::new(atom.as_str(), s.as_str()))
        .ok_or_else(|| compile::Error::BadWiring {
            atom: owner.to_owned(),
            problem: WiringError::NotProvided {
                provider: owner.to_owned(),
                symbol: symbol.to_owned(),
            },
        })
}

/// A handle to the child `node`, about to be added.
fn step_of(node: &Node) -> Step {
    let mut provides = Vec::new();
    collect_provides(node, &mut provides);
    Step {
        name: node.name().into(),
        provides,
    }
}
