//! Creates a small Heat-like "stack" with fake cloud providers, and shows the revert when one
//! step fails.
//!
//! ```text
//! cargo run --example stack_create                       # network, subnet, two servers, a volume
//! cargo run --example stack_create -- --fail-at server-b # server-b fails: everything is undone
//! ```
//!
//! The stack: a network, then a subnet on it, then two servers booted in parallel on the
//! subnet, then a volume attached to the first server. Each provider records what it created
//! in a fake cloud, so the end of the run shows what exists.
//!
//! The flow is written on the typed API (`baton::typed`): one task type, `Create`, takes the
//! ids of the resources it is made on and returns the id of the one it makes. Giving an atom
//! the handles of others' outputs is what orders it after them; no symbol is named.
//!
//! `--fail-at` makes a step fail *after* its cloud call went through (the server was created
//! but never became active), the hard case for an undo: the step has no result, so its revert
//! finds the resource by the step's idempotency key. The cloud must be empty at the end.

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::typed::{atom, Out, TypedAtom, TypedFlow, TypedTask};
use baton::{Engine, EventKind, MemoryStore, RevertContext, TaskContext, TaskError};

/// One resource in the [`Cloud`].
#[derive(Clone)]
struct Resource {
    id: String,
    what: String,
}

/// A pretend cloud that keeps each resource under the idempotency key of the request that
/// made it, as cloud APIs that take a client token do: a repeated request gets the resource
/// the first one made, and the key finds it again.
#[derive(Clone, Default)]
struct Cloud(Arc<Mutex<BTreeMap<String, Resource>>>);

impl Cloud {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Resource>) -> T) -> T {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
    /// Creates `resource` under `key`, unless `key` already made one: the id of the resource.
    fn create(&self, key: &str, resource: Resource) -> String {
        self.with(|c| c.entry(key.to_owned()).or_insert(resource).id.clone())
    }
    /// Deletes the resource made with `key`, if it exists.
    fn delete(&self, key: &str) {
        self.with(|c| c.remove(key));
    }
    fn list(&self) -> Vec<Resource> {
        let mut all: Vec<Resource> = self.with(|c| c.values().cloned().collect());
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}

/// Creates one resource on the resources given as its input (their ids), and returns its id;
/// deletes it on revert. The request carries the step's idempotency key, so a call repeated
/// after a crash gets the resource the first call made, and the revert finds it by the key
/// even when the step has no result (it failed, or its process died, after the call went
/// through).
struct Create {
    cloud: Cloud,
    kind: &'static str,
    fail: bool,
}

#[async_trait::async_trait]
impl TypedTask for Create {
    type Input = Vec<String>;
    type Output = String;
    type Error = TaskError;

    async fn execute(&self, parents: Vec<String>, ctx: &TaskContext) -> Result<String, TaskError> {
        let key = ctx.idempotency_key();
        let on = if parents.is_empty() {
            String::new()
        } else {
            format!(" on {}", parents.join(", "))
        };
        let id = self.cloud.create(
            &key,
            Resource {
                id: format!("{}/{}-{}", ctx.atom(), self.kind, short_id(&key)),
                what: format!("{}{on}", self.kind),
            },
        );
        // Wait for the resource to become ready.
        tokio::time::sleep(Duration::from_millis(80)).await;
        if self.fail {
            return Err(TaskError::msg(format!("{id} never became active")));
        }
        Ok(id)
    }

    async fn revert(
        &self,
        _parents: Vec<String>,
        _id: Option<String>,
        ctx: &RevertContext,
    ) -> Result<(), TaskError> {
        // By the key, not the result: a step that failed after its call has none.
        self.cloud.delete(&ctx.idempotency_key());
        Ok(())
    }
}

/// A short tag derived from an idempotency key, the same in every process and with every Rust
/// release (FNV-1a; `std`'s `DefaultHasher` may change its output in any release).
fn short_id(key: &str) -> String {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(key.as_bytes());
    format!("{:06x}", h.finish() & 0xff_ffff)
}

fn stack(cloud: &Cloud, fail_at: Option<&str>) -> TypedFlow {
    let create = |name: &str, kind: &'static str| -> TypedAtom<Create> {
        let fail = fail_at == Some(name);
        atom(
            name,
            Create {
                cloud: cloud.clone(),
                kind,
                fail,
            },
        )
    };
    // Each resource is given the ids of those it is made on: the handles to their outputs.
    let nothing: Vec<Out<String>> = Vec::new();
    let mut flow = TypedFlow::linear("stack-create");
    let network = flow.add(create("network", "net"), &nothing);
    let subnet = flow.add(create("subnet", "subnet"), vec![&network]);
    // The servers, in parallel: a fan-out, one atom per name.
    let servers = flow.each("servers", ["server-a", "server-b"], |name| {
        (create(name, "server"), vec![&subnet])
    });
    let volume = flow.add(create("volume", "volume"), &nothing);
    flow.add(
        create("attach", "attachment"),
        vec![&servers.outs()[0], &volume],
    );
    flow
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let fail_at = args
        .iter()
        .position(|a| a == "--fail-at")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);

    let cloud = Cloud::default();
    let flow = stack(&cloud, fail_at).compile()?;
    let engine = Engine::new(MemoryStore::new()).with_parallelism(4);

    // Print every committed transition as it happens.
    let mut events = engine.subscribe();
    let printer = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(lagged) => {
                    println!("  ({lagged})");
                    continue;
                }
            };
            if let EventKind::Transition(change) = event.kind {
                match change {
                    baton::model::Change::Atom {
                        atom, to, attempt, ..
                    } => {
                        println!("  {atom:<10} {to:<10} (attempt {attempt})");
                    }
                    baton::model::Change::Flow { to, .. } => println!("  flow       {to}"),
                }
            }
        }
    });

    println!(
        "creating stack{}",
        fail_at
            .map(|a| format!(" ({a} will fail)"))
            .unwrap_or_default()
    );
    let outcome = engine.start(&flow, Default::default()).await?;
    drop(engine);
    printer.await?;

    println!("\nflow {} ended {}", outcome.flow, outcome.state);
    for failure in &outcome.failures {
        println!("  failure: {failure}");
    }
    println!("resources in the cloud now:");
    let resources = cloud.list();
    if resources.is_empty() {
        println!("  (none)");
    }
    for r in &resources {
        println!("  {}: {}", r.id, r.what);
    }
    let expected = if fail_at.is_some() {
        baton::FlowState::Reverted
    } else {
        baton::FlowState::Success
    };
    anyhow::ensure!(
        outcome.state == expected,
        "expected the flow to end {expected}"
    );
    if fail_at.is_some() {
        anyhow::ensure!(resources.is_empty(), "the undo left resources behind");
    }
    Ok(())
}
