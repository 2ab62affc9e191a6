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

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::{
    Atom, Engine, EventKind, Flow, MemoryStore, RevertContext, Task, TaskContext, TaskError,
};
use serde_json::{json, Value};

/// A pretend cloud: resource id -> description.
#[derive(Clone, Default)]
struct Cloud(Arc<Mutex<BTreeMap<String, String>>>);

impl Cloud {
    fn create(&self, id: &str, what: String) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned(), what);
    }
    fn delete(&self, id: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }
    fn list(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .into_iter()
            .collect()
    }
}

/// Creates one resource; deletes it on revert. Its id is derived from the idempotency key, so a
/// repeated call after a crash finds the same resource instead of making a second one.
struct Create {
    cloud: Cloud,
    kind: &'static str,
    fail: bool,
}

#[async_trait::async_trait]
impl Task for Create {
    async fn execute(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        tokio::time::sleep(Duration::from_millis(80)).await;
        if self.fail {
            return Err(TaskError::msg(format!("{} quota exceeded", self.kind)));
        }
        let id = format!("{}-{:06x}", self.kind, short_hash(&ctx.idempotency_key()));
        let parents: Vec<String> = ctx
            .inputs()
            .values()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let on = if parents.is_empty() {
            String::new()
        } else {
            format!(" on {}", parents.join(", "))
        };
        self.cloud.create(
            &format!("{}/{}", ctx.atom(), id),
            format!("{}{on}", self.kind),
        );
        Ok(json!(id))
    }

    async fn revert(&self, ctx: RevertContext) -> Result<(), TaskError> {
        if let Some(id) = ctx.result().and_then(Value::as_str) {
            self.cloud.delete(&format!("{}/{}", ctx.atom(), id));
        }
        Ok(())
    }
}

/// A short, stable tag for an idempotency key (a real provider would send the key itself).
fn short_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish() & 0xff_ffff
}

fn stack(cloud: &Cloud, fail_at: Option<&str>) -> Flow {
    let create = |name: &str, kind: &'static str| {
        Atom::task(
            name,
            Create {
                cloud: cloud.clone(),
                kind,
                fail: fail_at == Some(name),
            },
        )
    };
    Flow::linear("stack-create")
        .add(create("network", "net").provides("network"))
        .add(
            create("subnet", "subnet")
                .requires(["network"])
                .provides("subnet"),
        )
        .add(
            Flow::unordered("servers")
                .add(
                    create("server-a", "server")
                        .requires(["subnet"])
                        .provides("server_a"),
                )
                .add(
                    create("server-b", "server")
                        .requires(["subnet"])
                        .provides("server_b"),
                ),
        )
        .add(create("volume", "volume").provides("volume"))
        .add(create("attach", "attachment").requires(["server_a", "volume"]))
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
    for (id, what) in resources {
        println!("  {id}: {what}");
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
    Ok(())
}
