//! The crash test: a flow killed at every write and resumed must end as an uninterrupted run
//! does.
//!
//! The engine's promise is that a run interrupted at any instruction and resumed from the store
//! ends exactly as an uninterrupted run would. Whether a *flow* keeps that promise depends on
//! its tasks too: a task whose `execute` makes a second resource when it is called again after
//! a crash, or whose `revert` needs a result that was never stored, breaks it only when a crash
//! comes at the wrong moment. The only moments that matter are the writes: between two writes
//! the store does not change, so a crash anywhere between them leaves what a crash at the
//! later one leaves. A crash test therefore runs the flow once uninterrupted, counting its
//! writes, then once per write and per [`CrashMode`] with the engine killed there, resumes each
//! with a fresh engine on what was stored, and compares the ends.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::end::End;
use super::{CrashMode, CrashStore, Difference, Divergence, Error, Result};
use crate::compile::{self, CompiledFlow};
use crate::engine::{self, Clock, CreateOptions, Engine, Outcome};
use crate::failure::TaskError;
use crate::ids::FlowId;
use crate::model::Inputs;
use crate::state::AtomState;
use crate::store::{self, MemoryStore, Store};
use crate::task::{RevertContext, Task, TaskContext};

type MakeWorld<W> = dyn Fn() -> W + Send + Sync;
type MakeFlow<W> = dyn Fn(&W) -> Result<CompiledFlow, compile::Error> + Send + Sync;
type Check<W> = dyn Fn(&RunEnd<'_, W>) -> Result<(), String> + Send + Sync;

/// Checks that a flow ends the same when its engine is killed at any write and a fresh engine
/// resumes it: flow state, atom states, results and failures.
///
/// `W` is the *world* the flow acts on: the fake cloud, database or API of your test, which a
/// crash does not reset. Each run gets a fresh world, and its flow is built over it; a resume
/// builds the flow again over the same world, as a new process would.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::{Arc, Mutex};
/// use baton_core::testing::CrashTest;
/// use baton_core::{Atom, Flow};
/// use serde_json::json;
///
/// /// The servers a fake cloud holds, by idempotency key.
/// #[derive(Default)]
/// struct Cloud(Arc<Mutex<Vec<String>>>);
///
/// let report = CrashTest::new(|cloud: &Cloud| {
///     let servers = cloud.0.clone();
///     Flow::linear("one-server")
///         .add(Atom::from_fn("server", move |ctx| {
///             let servers = servers.clone();
///             async move {
///                 let key = ctx.idempotency_key();
///                 let mut servers = servers.lock().unwrap();
///                 if !servers.contains(&key) {
///                     servers.push(key); // a second call after a crash finds it
///                 }
///                 Ok(json!("server-1"))
///             }
///         }))
///         .compile()
/// })
/// .check(|end| match end.world.0.lock().unwrap().len() {
///     1 => Ok(()),
///     n => Err(format!("{n} servers exist, one expected")),
/// })
/// .run()
/// .await?;
/// assert!(report.crashes > 0);
/// # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
pub struct CrashTest<W> {
    world: Box<MakeWorld<W>>,
    flow: Box<MakeFlow<W>>,
    inputs: Inputs,
    parallelism: Option<usize>,
    clock: Option<Clock>,
    fail_at: Option<String>,
    check: Option<Box<Check<W>>>,
}

impl<W> fmt::Debug for CrashTest<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrashTest")
            .field("inputs", &self.inputs)
            .field("parallelism", &self.parallelism)
            .field("clock", &self.clock)
            .field("fail_at", &self.fail_at)
            .field("check", &self.check.is_some())
            .finish_non_exhaustive()
    }
}

impl CrashTest<()> {
    /// A crash test of `flow`, for flows whose tasks act on no world of the test's.
    #[must_use]
    pub fn of(flow: CompiledFlow) -> Self {
        Self::with_world(|| (), move |()| Ok(flow.clone()))
    }
}

impl<W: Default + 'static> CrashTest<W> {
    /// A crash test of the flow `flow` builds over a world (`W::default()`, fresh for each
    /// run). `flow` is called again for every run and every resume.
    #[must_use]
    pub fn new<F>(flow: F) -> Self
    where
        F: Fn(&W) -> Result<CompiledFlow, compile::Error> + Send + Sync + 'static,
    {
        Self::with_world(W::default, flow)
    }
}

impl<W: 'static> CrashTest<W> {
    /// A crash test of the flow `flow` builds over the world `world` makes (called once per
    /// run).
    #[must_use]
    pub fn with_world<M, F>(world: M, flow: F) -> Self
    where
        M: Fn() -> W + Send + Sync + 'static,
        F: Fn(&W) -> Result<CompiledFlow, compile::Error> + Send + Sync + 'static,
    {
        Self {
            world: Box::new(world),
            flow: Box::new(flow),
            inputs: Inputs::new(),
            parallelism: None,
            clock: None,
            fail_at: None,
            check: None,
        }
    }

    /// Runs the flow with `inputs`.
    #[must_use]
    pub fn inputs(mut self, inputs: Inputs) -> Self {
        self.inputs = inputs;
        self
    }

    /// Lets the engines run up to `parallelism` atoms at once (the engine's default
    /// otherwise).
    #[must_use]
    pub fn parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = Some(parallelism);
        self
    }

    /// The clock every engine of the test reads. By default one [`Clock::tokio`], made when
    /// the test starts and shared by all its runs: under tokio's paused time
    /// (`#[tokio::test(start_paused = true)]`) backoff and time limits then pass at once.
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Makes task `atom` fail every call, without calling its `execute` (a fatal error), so
    /// that the test covers the flow's way back: what ran before it is reverted (its own
    /// `revert` is called too, with the failure and no result, as for any failed task).
    /// [`Error::UnknownAtom`] if the flow has no task of that name.
    #[must_use]
    pub fn fail_at(mut self, atom: impl Into<String>) -> Self {
        self.fail_at = Some(atom.into());
        self
    }

    /// Calls `check` after each run: the uninterrupted one, and every run killed and resumed.
    /// An `Err` is reported as a [`Difference::Check`] of that run, naming the crash. Check
    /// what the store cannot show: the world (`RunEnd::world`), say that exactly one server
    /// exists, or that it holds what the uninterrupted run left (`RunEnd::reference`).
    #[must_use]
    pub fn check<F>(mut self, check: F) -> Self
    where
        F: Fn(&RunEnd<'_, W>) -> Result<(), String> + Send + Sync + 'static,
    {
        self.check = Some(Box::new(check));
        self
    }

    /// Runs the test on a fresh [`MemoryStore`].
    ///
    /// # Errors
    /// The first crash after which the run ended differently ([`Error::Diverged`]) or could
    /// not be resumed ([`Error::Resume`]); a flow that does not build, an uninterrupted run
    /// that fails, a store that fails.
    pub async fn run(&self) -> Result<CrashReport> {
        self.run_on(MemoryStore::new()).await
    }

    /// Runs the test on `store`; each run is a new flow in it.
    ///
    /// # Errors
    /// As [`CrashTest::run`].
    pub async fn run_on<S: Store + Clone + 'static>(&self, store: S) -> Result<CrashReport> {
        let clock = self.clock.unwrap_or_else(Clock::tokio);
        let (world, flow) = self.build()?;
        let counting = CrashStore::counting(store.clone());
        let outcome = self
            .start(counting.clone(), &flow, FlowId::new(), clock)
            .await
            .map_err(Error::Uninterrupted)?;
        let reference = Reference {
            writes: counting.writes(),
            end: End::read(&store, &outcome).await?,
            world,
        };
        self.verdict(
            &RunEnd {
                crash: None,
                world: &reference.world,
                reference: &reference.world,
                outcome: &outcome,
                store: &store,
            },
            Vec::new(),
        )?;
        let mut report = CrashReport {
            writes: reference.writes,
            runs: 0,
            crashes: 0,
            outcome,
        };
        for write in 1..=reference.writes {
            for mode in CrashMode::ALL {
                report.runs += 1;
                if self
                    .crash_at(&store, clock, &reference, write, mode)
                    .await?
                {
                    report.crashes += 1;
                }
            }
        }
        Ok(report)
    }

    /// Runs the flow with its engine killed at `write`, as `mode` says, resumes it with a fresh
    /// engine and compares its end with the uninterrupted run's. `Ok(true)` if the engine was
    /// killed (`false`: the run ended before that write).
    async fn crash_at<S: Store + Clone + 'static>(
        &self,
        store: &S,
        clock: Clock,
        reference: &Reference<W>,
        write: u64,
        mode: CrashMode,
    ) -> Result<bool> {
        let (world, flow) = self.build()?;
        let id = FlowId::new();
        let crashing = CrashStore::new(store.clone(), write, mode);
        let first = self.start(crashing.clone(), &flow, id, clock).await;
        // Let the tasks the dead engine dropped reach their next await point.
        tokio::task::yield_now().await;
        let mut crash = Crash {
            write,
            writes: reference.writes,
            mode,
            reached: crashing.crashed(),
            stored: true,
            running: Vec::new(),
            reverting: Vec::new(),
        };
        let (outcome, went_on) = match first {
            Ok(outcome) => (outcome, crash.reached),
            Err(source) if !crash.reached => {
                return Err(Error::Run {
                    crash: Box::new(crash),
                    source,
                })
            }
            Err(_) => {
                crash.caught(store, id).await?;
                (self.resume(store, &world, &crash, id, clock).await?, false)
            }
        };
        let caught = [&crash.running[..], &crash.reverting[..]].concat();
        let mut differences = reference
            .end
            .differences(&End::read(store, &outcome).await?, &caught);
        if went_on {
            differences.insert(0, Difference::WentOn);
        }
        let end = RunEnd {
            crash: Some(&crash),
            world: &world,
            reference: &reference.world,
            outcome: &outcome,
            store,
        };
        self.verdict(&end, differences)?;
        Ok(crash.reached)
    }

    /// Adds the check's verdict on `end` to `differences`, and reports them, if any.
    fn verdict(&self, end: &RunEnd<'_, W>, mut differences: Vec<Difference>) -> Result<()> {
        if let Some(Err(message)) = self.check.as_ref().map(|check| check(end)) {
            differences.push(Difference::Check(message));
        }
        if differences.is_empty() {
            return Ok(());
        }
        Err(Error::Diverged(Box::new(Divergence {
            crash: end.crash.cloned(),
            differences,
        })))
    }

    /// A fresh world and the flow built over it.
    fn build(&self) -> Result<(W, CompiledFlow)> {
        let world = (self.world)();
        let flow = self.flow(&world)?;
        Ok((world, flow))
    }

    /// The flow built over `world`, with the failure asked for.
    fn flow(&self, world: &W) -> Result<CompiledFlow> {
        let flow = (self.flow)(world)?;
        let Some(atom) = &self.fail_at else {
            return Ok(flow);
        };
        flow.with_task(atom, |task| Arc::new(FailAt(task)))
            .ok_or_else(|| Error::UnknownAtom(atom.clone()))
    }

    fn engine(&self, store: impl Store + 'static, clock: Clock) -> Engine {
        let engine = Engine::new(store).with_clock(clock);
        match self.parallelism {
            Some(n) => engine.with_parallelism(n),
            None => engine,
        }
    }

    /// Creates run `id` of `flow` on `store`, then runs it.
    async fn start(
        &self,
        store: impl Store + 'static,
        flow: &CompiledFlow,
        id: FlowId,
        clock: Clock,
    ) -> engine::Result<Outcome> {
        let engine = self.engine(store, clock);
        engine
            .create_with(flow, self.inputs.clone(), CreateOptions::new().id(id))
            .await?;
        engine.run(flow, id).await
    }

    /// Resumes run `id` after `crash` with a fresh engine and the flow built anew over the
    /// same world; a run the crash left unstored is started afresh.
    async fn resume<S: Store + Clone + 'static>(
        &self,
        store: &S,
        world: &W,
        crash: &Crash,
        id: FlowId,
        clock: Clock,
    ) -> Result<Outcome> {
        let flow = self.flow(world)?;
        let outcome = if crash.stored {
            self.engine(store.clone(), clock).run(&flow, id).await
        } else {
            self.start(store.clone(), &flow, id, clock).await
        };
        outcome.map_err(|source| Error::Resume {
            crash: Box::new(crash.clone()),
            source,
        })
    }
}

/// What every run of a crash test is compared with: the uninterrupted run.
struct Reference<W> {
    /// How many writes it made.
    writes: u64,
    /// How it ended.
    end: End,
    /// Its world, as it left it.
    world: W,
}

/// What a [`CrashTest::check`] is given after a run.
#[derive(Debug)]
#[non_exhaustive]
pub struct RunEnd<'a, W> {
    /// The crash the run was resumed from; `None` for the uninterrupted run.
    pub crash: Option<&'a Crash>,
    /// The world of this run.
    pub world: &'a W,
    /// The world of the uninterrupted run, as it left it.
    pub reference: &'a W,
    /// How the run ended.
    pub outcome: &'a Outcome,
    /// The store the run is in (`outcome.flow` is its id).
    pub store: &'a dyn Store,
}

/// Where a run of a [`CrashTest`] was killed, and what the crash caught.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Crash {
    /// The write the engine was killed at (from 1).
    pub write: u64,
    /// How many writes the uninterrupted run made.
    pub writes: u64,
    /// Whether that write reached the store.
    pub mode: CrashMode,
    /// Whether the run got as far as that write: `false` if it ended after fewer writes than
    /// the uninterrupted run (and was not killed at all).
    pub reached: bool,
    /// Whether the run was stored when the engine died. A crash at the write that creates it
    /// leaves nothing: the run is then started afresh.
    pub stored: bool,
    /// The tasks caught mid-`execute` (stored `RUNNING`): the resume calls them again.
    pub running: Vec<String>,
    /// The tasks caught mid-`revert` (stored `REVERTING`): the resume reverts them again.
    pub reverting: Vec<String>,
}

impl Crash {
    /// Reads what the crash left of run `id` in `store`.
    async fn caught(&mut self, store: &impl Store, id: FlowId) -> Result<()> {
        let snapshot = match store.load_flow(id).await {
            Ok(snapshot) => snapshot,
            Err(store::Error::FlowNotFound(_)) => {
                self.stored = false;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let caught = |state: AtomState| {
            snapshot
                .atoms
                .iter()
                .filter(|a| a.state == state)
                .map(|a| a.name.clone())
                .collect()
        };
        self.running = caught(AtomState::Running);
        self.reverting = caught(AtomState::Reverting);
        Ok(())
    }
}

/// `"a"`, `"a" and "b"`, `"a", "b" and "c"`.
fn quoted_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (write, writes) = (self.write, self.writes);
        if !self.reached {
            return write!(
                f,
                "the run meant to be killed at write {write} of {writes} ended before that write"
            );
        }
        let when = match self.mode {
            CrashMode::BeforeWrite => "before it was stored",
            CrashMode::AfterWrite => "after it was stored",
        };
        write!(f, "killed at write {write} of {writes}, {when}")?;
        if !self.stored {
            return f.write_str(", before the run was stored");
        }
        match (&self.running[..], &self.reverting[..]) {
            ([], []) => f.write_str(", with no task mid-call"),
            (running, []) => write!(f, ", with {} running", quoted_list(running)),
            ([], reverting) => write!(f, ", with {} reverting", quoted_list(reverting)),
            (running, reverting) => write!(
                f,
                ", with {} running and {} reverting",
                quoted_list(running),
                quoted_list(reverting)
            ),
        }
    }
}

/// What a [`CrashTest`] covered.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CrashReport {
    /// The writes of the uninterrupted run: each was a place to kill the engine.
    pub writes: u64,
    /// The runs made to be killed: one per write and per [`CrashMode`].
    pub runs: u64,
    /// The runs that were killed and resumed (runs that ended before their write were not).
    pub crashes: u64,
    /// How the uninterrupted run ended: what every resumed run was compared with.
    pub outcome: Outcome,
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} runs killed at one of {} writes and resumed ({} crashed), each ending as the \
             uninterrupted run did: {}",
            self.runs, self.writes, self.crashes, self.outcome.state
        )
    }
}

/// The task [`CrashTest::fail_at`] puts in place of another: its `execute` fails at once,
/// its `revert` is the task's own.
struct FailAt(Arc<dyn Task>);

#[async_trait]
impl Task for FailAt {
    async fn execute(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        Err(TaskError::msg(format!(
            "atom {:?} failed: the crash test fails it on purpose",
            ctx.atom()
        )))
    }

    async fn revert(&self, ctx: RevertContext) -> Result<(), TaskError> {
        self.0.revert(ctx).await
    }
}
