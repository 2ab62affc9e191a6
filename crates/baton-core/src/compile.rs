//! Compilation: a nested [`Flow`] becomes one flat DAG of atoms with retry scopes.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;

use crate::flow::{Atom, AtomBody, Decider, Flow, Node, Pattern, Provides};
use crate::model::AtomKind;
use crate::retry::RetryPolicy;

/// Why a flow does not compile. Each variant names the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two atoms (or two children of one flow) share a name.
    #[error("duplicate name {0:?}: atom names must be unique in a flow")]
    DuplicateName(String),
    /// The ordering has a cycle.
    #[error("cycle between atoms {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// A link names no child of its flow.
    #[error("flow {flow:?} links {from:?} -> {to:?}, but {unknown:?} is not a child of it")]
    UnknownLinkTarget {
        /// The flow holding the link.
        flow: String,
        /// The link's source.
        from: String,
        /// The link's target.
        to: String,
        /// Which of the two is unknown.
        unknown: String,
    },
    /// A link in a flow that is not a graph flow.
    #[error("flow {0:?} has links, but only graph flows can have links")]
    LinkOutsideGraph(String),
    /// The atom given to `Flow::retry` is a task, or a retry controller was added as a child.
    #[error("atom {0:?} is in the wrong place: retry controllers go in `Flow::retry`, tasks in `Flow::add`")]
    MisplacedAtom(String),
    /// A symbol is provided by several atoms, and none of them is ordered after the others, so
    /// the consumer's input would depend on timing.
    #[error("atom {consumer:?} requires {symbol:?}, which {} provide without an order among them", .providers.join(", "))]
    AmbiguousProvider {
        /// The symbol.
        symbol: String,
        /// The atom requiring it.
        consumer: String,
        /// The competing providers.
        providers: Vec<String>,
    },
    /// A symbol is provided only by atoms that are not ordered before its consumer.
    #[error("atom {consumer:?} requires {symbol:?}, but its provider {provider:?} does not run before it: link them or put them in order")]
    UnorderedProvider {
        /// The symbol.
        symbol: String,
        /// The atom requiring it.
        consumer: String,
        /// An atom providing it, not ordered before the consumer.
        provider: String,
    },
    /// `inject` or `rebind` names an input the atom neither requires nor takes as optional: the
    /// task could never read it (most often a typo, or a missing `requires`).
    #[error("atom {atom:?} has an {via} for input {input:?}, which it neither requires nor takes as optional")]
    UndeclaredInput {
        /// The atom.
        atom: String,
        /// The input named by the `inject` or `rebind`.
        input: String,
        /// `inject` or `rebind`.
        via: &'static str,
    },
    /// An atom's or a flow's time limit cannot be kept.
    #[error("{what} {name:?} has a bad time limit: {problem}")]
    BadTimeout {
        /// `atom` or `flow`.
        what: &'static str,
        /// Its name.
        name: String,
        /// What is wrong with it.
        problem: TimeoutError,
    },
    /// An atom's retry policy cannot be kept.
    #[error("atom {atom:?} has a retry policy it cannot have: {problem}")]
    BadRetryPolicy {
        /// The atom.
        atom: String,
        /// What is wrong with it.
        problem: PolicyError,
    },
    /// The flow's result ([`Flow::returns`]) is a symbol no atom of the flow provides.
    #[error("flow {flow:?} returns {symbol:?}, which no atom of it provides")]
    UnknownResult {
        /// The flow.
        flow: String,
        /// The symbol it returns.
        symbol: String,
    },
    /// An atom added to a [`TypedFlow`](crate::typed::TypedFlow) is wired wrongly.
    #[error("atom {atom:?} is wired wrongly: {problem}")]
    BadWiring {
        /// The atom (for [`WiringError::NotProvided`], the untyped child asked for the
        /// symbol).
        atom: String,
        /// What is wrong.
        problem: WiringError,
    },
}

/// Why an atom's retry policy cannot be kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A policy on a retry controller, which decides at once and is never retried: a
    /// controller's subflow is retried by the controller itself.
    #[error("retry controllers decide at once and take no retry policy: give the policy to the tasks, or retry the subflow with the controller")]
    OnController,
}

/// What is wrong with the wiring of an atom added to a [`TypedFlow`](crate::typed::TypedFlow).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WiringError {
    /// The atom reads the output of an atom that is not in the flow: a handle that came
    /// from another flow.
    #[error("it reads the output of {producer:?}, which is not in this flow (a handle from another flow?)")]
    ForeignHandle {
        /// The atom whose output it reads.
        producer: String,
    },
    /// A constant input does not serialize as JSON.
    #[error("its constant input {input} does not serialize as JSON: {error}")]
    Constant {
        /// The input's position among the atom's inputs, from 0.
        input: usize,
        /// The serializer's error.
        error: String,
    },
    /// A symbol said to be provided by an untyped atom or subflow is not provided by it.
    #[error("{provider:?} provides no symbol {symbol:?}")]
    NotProvided {
        /// The untyped atom or subflow.
        provider: String,
        /// The symbol.
        symbol: String,
    },
}

/// A time limit that cannot be kept: zero, or on an atom that cannot be timed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeoutError {
    /// A time limit of zero.
    #[error("a time limit of zero: give a positive duration, or none")]
    Zero,
    /// A time limit on a retry controller, which runs inline and cannot be cancelled.
    #[error("retry controllers decide at once and take no time limit")]
    OnController,
}

/// Where an atom's input comes from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A value injected on the atom.
    Inject(Value),
    /// A symbol from another atom's result.
    Atom { index: usize, symbol: String },
    /// A flow input.
    Input { symbol: String },
}

#[derive(Debug, Clone)]
pub(crate) struct Binding {
    pub(crate) arg: String,
    pub(crate) source: Source,
    /// The default of an optional input, used when its source has no value.
    pub(crate) default: Option<Value>,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledAtom {
    pub(crate) name: String,
    pub(crate) body: AtomBody,
    pub(crate) inputs: Vec<Binding>,
    pub(crate) provides: Provides,
    /// The time limit on each `execute`.
    pub(crate) timeout: Option<Duration>,
    /// The time limit on each `revert`.
    pub(crate) revert_timeout: Option<Duration>,
    /// How a failed `execute` is retried in place.
    pub(crate) retries: Option<RetryPolicy>,
    /// How a failed `revert` is retried in place.
    pub(crate) revert_retries: Option<RetryPolicy>,
}

impl CompiledAtom {
    pub(crate) fn kind(&self) -> AtomKind {
        match self.body {
            AtomBody::Task(_) => AtomKind::Task,
            AtomBody::Retry(_) => AtomKind::Retry,
        }
    }
}

#[derive(Clone)]
pub(crate) struct DeciderEdge {
    pub(crate) sources: Vec<usize>,
    pub(crate) decider: Decider,
}

impl std::fmt::Debug for DeciderEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeciderEdge")
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

/// A flow compiled into one DAG of atoms, ready to run.
///
/// Cheap to clone (clones share one definition): run many flows from one compiled flow.
#[derive(Debug, Clone)]
pub struct CompiledFlow(Arc<Compiled>);

/// The inside of a [`CompiledFlow`], shared by its clones. Nothing in it is public.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Compiled {
    pub(crate) name: String,
    pub(crate) atoms: Vec<CompiledAtom>,
    pub(crate) index: HashMap<String, usize>,
    pub(crate) preds: Vec<Vec<usize>>,
    pub(crate) succs: Vec<Vec<usize>>,
    pub(crate) deciders: Vec<Vec<DeciderEdge>>,
    /// Atoms in a topological order.
    pub(crate) topo: Vec<usize>,
    /// Each atom's position in `topo`.
    pub(crate) topo_pos: Vec<usize>,
    /// The innermost retry controller governing each atom (for a controller: its parent's).
    pub(crate) retry_of: Vec<Option<usize>>,
    /// For each retry controller, the atoms it governs (nested ones included, itself not), in
    /// topological order.
    pub(crate) scope: Vec<Vec<usize>>,
    /// The symbol whose value is the flow's result ([`Flow::returns`]).
    pub(crate) returns: Option<String>,
    /// The fingerprint, computed the first time it is asked for: every run created from the
    /// flow and every load of one compares it, and it hashes the whole structure.
    pub(crate) fingerprint: std::sync::OnceLock<crate::Fingerprint>,
}

impl std::ops::Deref for CompiledFlow {
    type Target = Compiled;

    fn deref(&self) -> &Compiled {
        &self.0
    }
}

impl CompiledFlow {
    /// The flow's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many atoms the flow has.
    #[must_use]
    pub fn len(&self) -> usize {
        self.atoms.len()
    }

    /// Whether the flow has no atoms.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.atoms.is_empty()
    }

    /// Whether the flow has an atom named `name`.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The atoms' names, in definition order.
    pub fn atom_names(&self) -> impl Iterator<Item = &str> {
        self.atoms.iter().map(|a| a.name.as_str())
    }

    /// The atoms' names in an order that respects every edge.
    pub fn topological_order(&self) -> impl Iterator<Item = &str> {
        self.topo.iter().map(|&i| self.atoms[i].name.as_str())
    }

    /// The edges of the DAG, as (from, to) atom names.
    pub fn edges(&self) -> impl Iterator<Item = (&str, &str)> {
        self.succs.iter().enumerate().flat_map(move |(from, tos)| {
            tos.iter()
                .map(move |&to| (self.atoms[from].name.as_str(), self.atoms[to].name.as_str()))
        })
    }

    /// The inputs the flow needs from outside: (atom, symbol) pairs that no atom provides, no
    /// injection fills and that have no default.
    pub fn required_inputs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.atoms.iter().flat_map(|a| {
            a.inputs
                .iter()
                .filter_map(move |b| match (&b.source, &b.default) {
                    (Source::Input { symbol }, None) => Some((a.name.as_str(), symbol.as_str())),
                    _ => None,
                })
        })
    }

    /// A copy of the flow whose task `name` is `wrap` of its task (same wiring, same
    /// fingerprint), or `None` if the flow has no task of that name.
    #[cfg(feature = "testing")]
    pub(crate) fn with_task(
        &self,
        name: &str,
        wrap: impl FnOnce(Arc<dyn crate::Task>) -> Arc<dyn crate::Task>,
    ) -> Option<CompiledFlow> {
        let &i = self.index.get(name)?;
        let AtomBody::Task(task) = &self.atoms[i].body else {
            return None;
        };
        let task = wrap(task.clone());
        let mut copy = Compiled::clone(self);
        copy.atoms[i].body = AtomBody::Task(task);
        Some(CompiledFlow(Arc::new(copy)))
    }

    /// The fingerprint of the flow's structure: what a run records to be resumed only with
    /// the definition it was made from (see [`Fingerprint`](crate::Fingerprint)).
    #[must_use]
    pub fn fingerprint(&self) -> crate::Fingerprint {
        *self
            .fingerprint
            .get_or_init(|| crate::fingerprint::of(self))
    }

    /// The DAG's shape: atom names and kinds, and edges. Stored with every run (in its
    /// metadata, under `graph`) so tools can draw a run without its definition.
    #[must_use]
    pub fn shape(&self) -> Shape {
        Shape {
            atoms: self
                .atoms
                .iter()
                .map(|a| ShapeAtom {
                    name: a.name.clone(),
                    kind: a.kind(),
                })
                .collect(),
            edges: self
                .succs
                .iter()
                .enumerate()
                .flat_map(|(f, ts)| ts.iter().map(move |&t| (f, t)))
                .collect(),
        }
    }

    /// The DAG in Graphviz DOT.
    #[must_use]
    pub fn to_dot(&self) -> String {
        self.shape().to_dot(&self.name)
    }

    /// The DAG as a Mermaid flowchart.
    #[must_use]
    pub fn to_mermaid(&self) -> String {
        self.shape().to_mermaid()
    }
}

/// One atom of a [`Shape`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShapeAtom {
    /// Its name.
    pub name: String,
    /// Task or retry controller.
    pub kind: AtomKind,
}

/// The shape of a compiled flow: its atoms and the edges between them (by index).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    /// The atoms, in definition order.
    pub atoms: Vec<ShapeAtom>,
    /// Edges, as (from, to) indexes into `atoms`.
    pub edges: Vec<(usize, usize)>,
}

impl Shape {
    /// The edges by the names of their atoms, `(from, to)`, in order (an edge naming an atom
    /// the shape does not hold, which only a damaged record has, is left out).
    pub fn named_edges(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.edges.iter().filter_map(|&(f, t)| {
            Some((
                self.atoms.get(f)?.name.as_str(),
                self.atoms.get(t)?.name.as_str(),
            ))
        })
    }

    /// The shape in Graphviz DOT, as a digraph named `name`. Nodes are `a0`, `a1`, ... (the
    /// atoms' indexes), labelled with the atoms' names, escaped so that any name reads back
    /// as written.
    #[must_use]
    pub fn to_dot(&self, name: &str) -> String {
        crate::draw::dot(self, name)
    }

    /// The shape as a Mermaid flowchart. Nodes are `a0`, `a1`, ... (the atoms' indexes),
    /// labelled with the atoms' names, escaped so that any name reads back as written.
    #[must_use]
    pub fn to_mermaid(&self) -> String {
        crate::draw::mermaid(self)
    }
}

/// The flattened form of one child: its atoms and its entry and exit atoms.
struct Part {
    members: Range<usize>,
    sources: Vec<usize>,
    sinks: Vec<usize>,
}

#[derive(Default)]
struct Builder {
    atoms: Vec<Atom>,
    names: HashMap<String, usize>,
    edges: HashSet<(usize, usize)>,
    deciders: Vec<(usize, DeciderEdge)>,
    retry_of: Vec<Option<usize>>,
    scopes: Vec<(usize, Range<usize>)>,
    /// Each atom's time limits, execute and revert, defaults applied.
    limits: Vec<(Option<Duration>, Option<Duration>)>,
}

impl Builder {
    fn push_atom(
        &mut self,
        atom: &Atom,
        retry: Option<usize>,
        default_timeout: Option<Duration>,
    ) -> Result<usize, Error> {
        check_declared(atom)?;
        let bad = |problem| Error::BadTimeout {
            what: "atom",
            name: atom.name.clone(),
            problem,
        };
        let limits = match atom.body {
            AtomBody::Retry(_) => {
                if atom.timeout.is_some() || atom.revert_timeout.is_some() {
                    return Err(bad(TimeoutError::OnController));
                }
                if atom.retries.is_some() || atom.revert_retries.is_some() {
                    return Err(Error::BadRetryPolicy {
                        atom: atom.name.clone(),
                        problem: PolicyError::OnController,
                    });
                }
                (None, None)
            }
            AtomBody::Task(_) => {
                if [atom.timeout, atom.revert_timeout].contains(&Some(Duration::ZERO)) {
                    return Err(bad(TimeoutError::Zero));
                }
                let execute = atom.timeout.or(default_timeout);
                (execute, atom.revert_timeout.or(execute))
            }
        };
        let index = self.atoms.len();
        if self.names.insert(atom.name.clone(), index).is_some() {
            return Err(Error::DuplicateName(atom.name.clone()));
        }
        self.atoms.push(atom.clone());
        self.retry_of.push(retry);
        self.limits.push(limits);
        Ok(index)
    }

    fn connect(&mut self, from: &[usize], to: &[usize]) {
        for &f in from {
            for &t in to {
                self.edges.insert((f, t));
            }
        }
    }

    fn flatten(
        &mut self,
        flow: &Flow,
        parent_retry: Option<usize>,
        parent_timeout: Option<Duration>,
    ) -> Result<Part, Error> {
        let start = self.atoms.len();
        if flow.default_timeout == Some(Duration::ZERO) {
            return Err(Error::BadTimeout {
                what: "flow",
                name: flow.name.clone(),
                problem: TimeoutError::Zero,
            });
        }
        let timeout = flow.default_timeout.or(parent_timeout);
        let retry = match &flow.retry {
            Some(r) => {
                if !matches!(r.body, AtomBody::Retry(_)) {
                    return Err(Error::MisplacedAtom(r.name.clone()));
                }
                Some(self.push_atom(r, parent_retry, None)?)
            }
            None => None,
        };
        let inner_retry = retry.or(parent_retry);
        if !flow.links.is_empty() && flow.pattern != Pattern::Graph {
            return Err(Error::LinkOutsideGraph(flow.name.clone()));
        }

        let mut parts = Vec::with_capacity(flow.children.len());
        let mut child_names = HashMap::new();
        for child in &flow.children {
            if child_names
                .insert(child.name().to_owned(), parts.len())
                .is_some()
            {
                return Err(Error::DuplicateName(child.name().to_owned()));
            }
            let part = match child {
                Node::Atom(a) => {
                    if !matches!(a.body, AtomBody::Task(_)) {
                        return Err(Error::MisplacedAtom(a.name.clone()));
                    }
                    let i = self.push_atom(a, inner_retry, timeout)?;
                    Part {
                        members: i..i + 1,
                        sources: vec![i],
                        sinks: vec![i],
                    }
                }
                Node::Flow(f) => self.flatten(f, inner_retry, timeout)?,
            };
            parts.push(part);
        }

        let (sources, sinks) = match flow.pattern {
            Pattern::Linear => {
                let non_empty: Vec<&Part> =
                    parts.iter().filter(|p| !p.members.is_empty()).collect();
                for pair in non_empty.windows(2) {
                    let (a, b) = (pair[0].sinks.clone(), pair[1].sources.clone());
                    self.connect(&a, &b);
                }
                (
                    non_empty
                        .first()
                        .map(|p| p.sources.clone())
                        .unwrap_or_default(),
                    non_empty
                        .last()
                        .map(|p| p.sinks.clone())
                        .unwrap_or_default(),
                )
            }
            Pattern::Unordered => (
                parts.iter().flat_map(|p| p.sources.clone()).collect(),
                parts.iter().flat_map(|p| p.sinks.clone()).collect(),
            ),
            Pattern::Graph => self.graph_edges(flow, &parts, &child_names)?,
        };

        let end = self.atoms.len();
        match retry {
            Some(r) => {
                self.scopes.push((r, r + 1..end));
                self.connect(&[r], &sources);
                let sinks = if sinks.is_empty() { vec![r] } else { sinks };
                Ok(Part {
                    members: start..end,
                    sources: vec![r],
                    sinks,
                })
            }
            None => Ok(Part {
                members: start..end,
                sources,
                sinks,
            }),
        }
    }

    /// Adds a graph flow's edges between its children: explicit links, and data dependencies
    /// (a child requiring a symbol another child provides runs after it). Returns the flow's
    /// sources and sinks: the children nothing precedes, and those nothing follows.
    fn graph_edges(
        &mut self,
        flow: &Flow,
        parts: &[Part],
        child_names: &HashMap<String, usize>,
    ) -> Result<(Vec<usize>, Vec<usize>), Error> {
        let mut child_edges: HashSet<(usize, usize)> = HashSet::new();
        for link in &flow.links {
            let lookup = |n: &str| {
                child_names
                    .get(n)
                    .copied()
                    .ok_or_else(|| Error::UnknownLinkTarget {
                        flow: flow.name.clone(),
                        from: link.from.clone(),
                        to: link.to.clone(),
                        unknown: n.to_owned(),
                    })
            };
            let (f, t) = (lookup(&link.from)?, lookup(&link.to)?);
            if f == t {
                return Err(Error::Cycle(vec![link.from.clone(), link.to.clone()]));
            }
            child_edges.insert((f, t));
            if let Some(decider) = &link.decider {
                let sources: Vec<usize> = parts[f].members.clone().collect();
                for &target in &parts[t].sources {
                    self.deciders.push((
                        target,
                        DeciderEdge {
                            sources: sources.clone(),
                            decider: decider.clone(),
                        },
                    ));
                }
            }
        }

        // Data dependencies between children.
        let mut provided_by: HashMap<&str, Vec<usize>> = HashMap::new();
        for (c, part) in parts.iter().enumerate() {
            for i in part.members.clone() {
                for s in self.atoms[i].provides.names() {
                    provided_by.entry(s.as_str()).or_default().push(c);
                }
            }
        }
        for (c, part) in parts.iter().enumerate() {
            for i in part.members.clone() {
                for symbol in required_symbols(&self.atoms[i]) {
                    if let Some(providers) = provided_by.get(symbol.as_str()) {
                        for &p in providers {
                            if p != c {
                                child_edges.insert((p, c));
                            }
                        }
                    }
                }
            }
        }

        let mut has_in = vec![false; parts.len()];
        let mut has_out = vec![false; parts.len()];
        for &(f, t) in &child_edges {
            has_in[t] = true;
            has_out[f] = true;
            let (a, b) = (parts[f].sinks.clone(), parts[t].sources.clone());
            self.connect(&a, &b);
        }
        let sources = (0..parts.len())
            .filter(|&c| !has_in[c])
            .flat_map(|c| parts[c].sources.clone())
            .collect();
        let sinks = (0..parts.len())
            .filter(|&c| !has_out[c])
            .flat_map(|c| parts[c].sinks.clone())
            .collect();
        Ok((sources, sinks))
    }
}

/// Refuses an `inject` or `rebind` of an input the atom does not declare: the task could never
/// read it, and the input it meant would silently come from elsewhere (or be missing).
fn check_declared(atom: &Atom) -> Result<(), Error> {
    let declared =
        |input: &str| atom.requires.iter().any(|r| r == input) || atom.optional.contains_key(input);
    let undeclared = atom
        .inject
        .keys()
        .map(|input| (input, "inject"))
        .chain(atom.rebind.keys().map(|input| (input, "rebind")))
        .find(|(input, _)| !declared(input));
    match undeclared {
        Some((input, via)) => Err(Error::UndeclaredInput {
            atom: atom.name.clone(),
            input: input.clone(),
            via,
        }),
        None => Ok(()),
    }
}

/// The symbols an atom reads from other atoms or the flow's inputs (after `rebind`, without the
/// injected ones).
fn required_symbols(atom: &Atom) -> impl Iterator<Item = String> + '_ {
    atom.requires
        .iter()
        .chain(atom.optional.keys())
        .filter(|arg| !atom.inject.contains_key(*arg))
        .map(|arg| atom.rebind.get(arg).unwrap_or(arg).clone())
}

pub(crate) fn compile(flow: &Flow) -> Result<CompiledFlow, Error> {
    let mut b = Builder::default();
    b.flatten(flow, None, None)?;
    let n = b.atoms.len();

    let mut graph: DiGraph<(), ()> = DiGraph::with_capacity(n, b.edges.len());
    for _ in 0..n {
        graph.add_node(());
    }
    let mut edges: Vec<(usize, usize)> = b.edges.iter().copied().collect();
    edges.sort_unstable();
    for &(f, t) in &edges {
        graph.add_edge(NodeIndex::new(f), NodeIndex::new(t), ());
    }
    let topo = match petgraph::algo::toposort(&graph, None) {
        Ok(order) => order.into_iter().map(NodeIndex::index).collect::<Vec<_>>(),
        Err(_) => {
            let cycle = tarjan_scc(&graph)
                .into_iter()
                .find(|scc| scc.len() > 1)
                .unwrap_or_default();
            let mut names: Vec<String> = cycle
                .iter()
                .map(|i| b.atoms[i.index()].name.clone())
                .collect();
            names.sort();
            return Err(Error::Cycle(names));
        }
    };
    let mut topo_pos = vec![0; n];
    for (pos, &i) in topo.iter().enumerate() {
        topo_pos[i] = pos;
    }
    let mut preds = vec![Vec::new(); n];
    let mut succs = vec![Vec::new(); n];
    for &(f, t) in &edges {
        preds[t].push(f);
        succs[f].push(t);
    }

    // Resolve every input to its source.
    let mut providers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, a) in b.atoms.iter().enumerate() {
        for s in a.provides.names() {
            providers.entry(s.as_str()).or_default().push(i);
        }
    }
    let mut reach = Reach::new(n);
    let dag = Dag {
        preds: &preds,
        succs: &succs,
        pos: &topo_pos,
    };
    let mut compiled = Vec::with_capacity(n);
    for (i, atom) in b.atoms.iter().enumerate() {
        let mut inputs = Vec::new();
        let args = atom
            .requires
            .iter()
            .map(|a| (a, None))
            .chain(atom.optional.iter().map(|(a, d)| (a, Some(d.clone()))));
        for (arg, default) in args {
            if let Some(v) = atom.inject.get(arg) {
                inputs.push(Binding {
                    arg: arg.clone(),
                    source: Source::Inject(v.clone()),
                    default: None,
                });
                continue;
            }
            let symbol = atom.rebind.get(arg).unwrap_or(arg).clone();
            let candidates: Vec<usize> = providers
                .get(symbol.as_str())
                .map(|ps| ps.iter().copied().filter(|&p| p != i).collect())
                .unwrap_or_default();
            let ordered: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&p| reach.is_ancestor(p, i, &dag))
                .collect();
            let source = match ordered.as_slice() {
                [] => match candidates.first() {
                    Some(&p) if default.is_none() => {
                        return Err(Error::UnorderedProvider {
                            symbol,
                            consumer: atom.name.clone(),
                            provider: b.atoms[p].name.clone(),
                        })
                    }
                    _ => Source::Input { symbol },
                },
                [p] => Source::Atom { index: *p, symbol },
                many => {
                    // The nearest provider wins, if one comes after all the others.
                    let latest = many.iter().copied().find(|&p| {
                        many.iter()
                            .all(|&q| q == p || reach.is_ancestor(q, p, &dag))
                    });
                    match latest {
                        Some(p) => Source::Atom { index: p, symbol },
                        None => {
                            let mut names: Vec<String> =
                                many.iter().map(|&p| b.atoms[p].name.clone()).collect();
                            names.sort();
                            return Err(Error::AmbiguousProvider {
                                symbol,
                                consumer: atom.name.clone(),
                                providers: names,
                            });
                        }
                    }
                }
            };
            inputs.push(Binding {
                arg: arg.clone(),
                source,
                default,
            });
        }
        let (timeout, revert_timeout) = b.limits[i];
        compiled.push(CompiledAtom {
            name: atom.name.clone(),
            body: atom.body.clone(),
            inputs,
            provides: atom.provides.clone(),
            timeout,
            revert_timeout,
            retries: atom.retries,
            revert_retries: atom.revert_retries,
        });
    }

    if let Some(symbol) = &flow.returns {
        if !providers.contains_key(symbol.as_str()) {
            return Err(Error::UnknownResult {
                flow: flow.name.clone(),
                symbol: symbol.clone(),
            });
        }
    }
    let mut deciders = vec![Vec::new(); n];
    for (target, edge) in b.deciders {
        deciders[target].push(edge);
    }
    let mut scope = vec![Vec::new(); n];
    for (r, members) in b.scopes {
        let mut members: Vec<usize> = members.collect();
        members.sort_unstable_by_key(|&m| topo_pos[m]);
        scope[r] = members;
    }
    Ok(CompiledFlow(Arc::new(Compiled {
        name: flow.name.clone(),
        atoms: compiled,
        index: b.names,
        preds,
        succs,
        deciders,
        topo,
        topo_pos,
        retry_of: b.retry_of,
        scope,
        returns: flow.returns.clone(),
        fingerprint: std::sync::OnceLock::new(),
    })))
}

/// Reachability queries on the DAG.
///
/// Most queries ask whether a provider is an ancestor of a nearby consumer; a backwards search
/// from the consumer that never visits atoms placed before the provider in topological order
/// answers those in a few steps. A provider asked about many times (one symbol read by many
/// atoms) gets its full set of descendants computed once instead, so compiling stays close to
/// linear in the size of the flow.
struct Reach {
    stamp: Vec<u32>,
    epoch: u32,
    stack: Vec<usize>,
    asked: HashMap<usize, u32>,
    descendants: HashMap<usize, Vec<u64>>,
}

/// Queries about one provider after which its descendants are computed once.
const DESCENDANTS_AFTER: u32 = 4;

impl Reach {
    fn new(n: usize) -> Self {
        Self {
            stamp: vec![0; n],
            epoch: 0,
            stack: Vec::new(),
            asked: HashMap::new(),
            descendants: HashMap::new(),
        }
    }

    fn next_epoch(&mut self) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamp.fill(0);
            self.epoch = 1;
        }
        self.epoch
    }

    fn is_ancestor(&mut self, a: usize, b: usize, g: &Dag<'_>) -> bool {
        if g.pos[a] >= g.pos[b] {
            return false;
        }
        if let Some(bits) = self.descendants.get(&a) {
            return bits[b / 64] & (1 << (b % 64)) != 0;
        }
        let asked = self.asked.entry(a).or_insert(0);
        *asked += 1;
        if *asked >= DESCENDANTS_AFTER {
            let bits = self.descendants_of(a, g);
            let found = bits[b / 64] & (1 << (b % 64)) != 0;
            self.descendants.insert(a, bits);
            return found;
        }
        let epoch = self.next_epoch();
        self.stack.clear();
        self.stack.push(b);
        while let Some(x) = self.stack.pop() {
            for &p in &g.preds[x] {
                if p == a {
                    return true;
                }
                if g.pos[p] > g.pos[a] && self.stamp[p] != epoch {
                    self.stamp[p] = epoch;
                    self.stack.push(p);
                }
            }
        }
        false
    }

    fn descendants_of(&mut self, a: usize, g: &Dag<'_>) -> Vec<u64> {
        let mut bits = vec![0u64; g.succs.len().div_ceil(64)];
        self.stack.clear();
        self.stack.push(a);
        while let Some(x) = self.stack.pop() {
            for &s in &g.succs[x] {
                if bits[s / 64] & (1 << (s % 64)) == 0 {
                    bits[s / 64] |= 1 << (s % 64);
                    self.stack.push(s);
                }
            }
        }
        bits
    }
}

/// The DAG's adjacency and topological positions, for [`Reach`].
struct Dag<'a> {
    preds: &'a [Vec<usize>],
    succs: &'a [Vec<usize>],
    pos: &'a [usize],
}
