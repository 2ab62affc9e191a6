//! Updates a Heat-like stack by replacing its server: boot the new server, move the data volume
//! over, delete the old server. When a step fails, the update is undone and the stack keeps its
//! old layout.
//!
//! ```text
//! cargo run --example stack_update                              # web-1 is replaced by web-2
//! cargo run --example stack_update -- --fail-at move-volume     # the update is rolled back
//! ```
//!
//! `--fail-at` takes one of `create-server`, `move-volume`, `delete-old-server`. The flow runs
//! on SQLite in a temporary folder. Deleting the old server is the last step on purpose: it is
//! the one thing that cannot be undone, so nothing that can still fail comes after it.
//!
//! The failure comes *after* the step's call to the cloud went through (the new server exists
//! but never answers; the volume moved but the step timed out), the hard case for an undo:
//! the step has no result, so each revert works from what does not depend on one. Creating
//! the server records the step's idempotency key with it, and the revert deletes the server
//! made with that key; moving the volume back needs only the step's inputs. Only
//! `delete-old-server` fails before its call, since nothing could undo it.

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use baton::model::Change;
use baton::sql::SqliteStore;
use baton::{
    Atom, Engine, EventKind, Flow, FlowState, FnTask, RevertContext, TaskContext, TaskError,
};
use serde_json::json;

/// One resource in the [`Cloud`]: what it is, and the idempotency key of the request that
/// created it (none for what was there before).
#[derive(Clone, PartialEq)]
struct Entry {
    what: String,
    made_by: Option<String>,
}

/// A pretend cloud: resource name -> what it is.
#[derive(Clone, Default)]
struct Cloud(Arc<Mutex<BTreeMap<String, Entry>>>);

impl Cloud {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Entry>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
    /// Sets what `name` is (creating it if need be), keeping who made it.
    fn set(&self, name: &str, what: String) {
        self.with(|c| match c.get_mut(name) {
            Some(e) => e.what = what,
            None => {
                let made_by = None;
                c.insert(name.to_owned(), Entry { what, made_by });
            }
        });
    }
    /// Creates `name` with the request's idempotency `key`; a repeated request changes nothing.
    fn create(&self, name: &str, what: String, key: &str) -> Result<(), TaskError> {
        self.with(|c| match c.get(name) {
            Some(e) if e.made_by.as_deref() == Some(key) => Ok(()),
            Some(_) => Err(TaskError::msg(format!("{name} already exists"))),
            None => {
                let made_by = Some(key.to_owned());
                c.insert(name.to_owned(), Entry { what, made_by });
                Ok(())
            }
        })
    }
    /// Deletes what the request with idempotency `key` created, if it still exists.
    fn remove_made_by(&self, key: &str) {
        self.with(|c| c.retain(|_, e| e.made_by.as_deref() != Some(key)));
    }
    fn remove(&self, name: &str) {
        self.with(|c| c.remove(name));
    }
    fn snapshot(&self) -> BTreeMap<String, String> {
        self.with(|c| c.iter().map(|(n, e)| (n.clone(), e.what.clone())).collect())
    }
    fn print(&self, title: &str) {
        println!("{title}");
        for (name, what) in self.snapshot() {
            println!("  {name:<16} {what}");
        }
    }
}

const ATOMS: [&str; 3] = ["create-server", "move-volume", "delete-old-server"];

/// Fails the step named by `--fail-at`.
fn injected(fail_at: Option<&str>, atom: &str) -> Result<(), TaskError> {
    if fail_at == Some(atom) {
        return Err(TaskError::msg(format!(
            "{atom}: the cloud said no (injected)"
        )));
    }
    Ok(())
}

fn update_flow(cloud: &Cloud, fail_at: Option<&str>) -> Flow {
    let fail_at: Option<Arc<str>> = fail_at.map(Arc::from);

    // 1. Boot the replacement; revert: delete the server this step's request created (found
    //    by the request's idempotency key, so also when the step failed after the call).
    let create = {
        let (c, r, fail) = (cloud.clone(), cloud.clone(), fail_at.clone());
        FnTask::new(move |ctx: TaskContext| {
            let (cloud, fail) = (c.clone(), fail.clone());
            async move {
                let name: String = ctx.input("new_server")?;
                let flavor: String = ctx.input("flavor")?;
                cloud.create(
                    &format!("server/{name}"),
                    format!("ACTIVE, flavor {flavor}"),
                    &ctx.idempotency_key(),
                )?;
                injected(fail.as_deref(), ctx.atom())?;
                Ok(json!(name))
            }
        })
        .on_revert(move |ctx: RevertContext| {
            let cloud = r.clone();
            async move {
                cloud.remove_made_by(&ctx.idempotency_key());
                Ok(())
            }
        })
    };

    // 2. Detach the volume from the old server and attach it to the new one; revert: attach it
    //    to the old server again (from the inputs: the step may have no result).
    let move_volume = {
        let (c, r, fail) = (cloud.clone(), cloud.clone(), fail_at.clone());
        FnTask::new(move |ctx: TaskContext| {
            let (cloud, fail) = (c.clone(), fail.clone());
            async move {
                let volume: String = ctx.input("volume")?;
                let from: String = ctx.input("old_server")?;
                let to: String = ctx.input("server")?;
                cloud.set(&format!("volume/{volume}"), format!("attached to {to}"));
                injected(fail.as_deref(), ctx.atom())?;
                Ok(json!({ "volume": volume, "from": from, "to": to }))
            }
        })
        .on_revert(move |ctx: RevertContext| {
            let cloud = r.clone();
            async move {
                let volume: String = ctx.input("volume")?;
                let from: String = ctx.input("old_server")?;
                cloud.set(&format!("volume/{volume}"), format!("attached to {from}"));
                Ok(())
            }
        })
    };

    // 3. Delete the old server: the point of no return, hence last (and it fails, if asked to,
    //    before its call).
    let delete_old = {
        let (c, fail) = (cloud.clone(), fail_at);
        FnTask::new(move |ctx: TaskContext| {
            let (cloud, fail) = (c.clone(), fail.clone());
            async move {
                injected(fail.as_deref(), ctx.atom())?;
                let old: String = ctx.input("old_server")?;
                cloud.remove(&format!("server/{old}"));
                Ok(json!(old))
            }
        })
    };

    Flow::linear("stack-update")
        .add(
            Atom::task("create-server", create)
                .requires(["new_server", "flavor"])
                .provides("server"),
        )
        .add(Atom::task("move-volume", move_volume).requires(["volume", "old_server", "server"]))
        .add(Atom::task("delete-old-server", delete_old).requires(["old_server"]))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let fail_at = args
        .iter()
        .position(|a| a == "--fail-at")
        .map(|i| args.get(i + 1).map(String::as_str))
        .map(|a| a.ok_or_else(|| anyhow::anyhow!("--fail-at needs an atom name")))
        .transpose()?;
    if let Some(atom) = fail_at {
        anyhow::ensure!(
            ATOMS.contains(&atom),
            "unknown atom {atom:?}: pick one of {ATOMS:?}"
        );
    }

    // The stack as it is before the update.
    let cloud = Cloud::default();
    cloud.set("network/private", "10.0.0.0/24".into());
    cloud.set("server/web-1", "ACTIVE, flavor m1.small".into());
    cloud.set("volume/data", "attached to web-1".into());
    let before = cloud.snapshot();
    cloud.print("before the update:");

    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&format!(
        "sqlite://{}",
        dir.path().join("stack.db").display()
    ))
    .await?;
    let engine = Engine::new(store);

    // Print every committed transition of an atom.
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
            if let EventKind::Transition(Change::Atom { atom, to, .. }) = event.kind {
                println!("  {atom:<18} {to}");
            }
        }
    });

    let flow = update_flow(&cloud, fail_at).compile()?;
    let mut inputs = serde_json::Map::new();
    inputs.insert("old_server".into(), json!("web-1"));
    inputs.insert("new_server".into(), json!("web-2"));
    inputs.insert("flavor".into(), json!("m1.large"));
    inputs.insert("volume".into(), json!("data"));
    println!(
        "\nreplacing web-1 with web-2{}",
        fail_at
            .map(|a| format!(" ({a} will fail)"))
            .unwrap_or_default()
    );
    let outcome = engine.start(&flow, inputs).await?;
    drop(engine);
    printer.await?;

    println!("\nupdate ended {}", outcome.state);
    for failure in &outcome.failures {
        println!("  failure: {failure}");
    }
    cloud.print("after the update:");

    let after = cloud.snapshot();
    if fail_at.is_some() {
        anyhow::ensure!(
            outcome.state == FlowState::Reverted,
            "the update should be undone"
        );
        anyhow::ensure!(after == before, "the revert should restore the old layout");
    } else {
        anyhow::ensure!(outcome.is_success(), "the update should succeed");
        anyhow::ensure!(
            !after.contains_key("server/web-1")
                && after.contains_key("server/web-2")
                && after.get("volume/data").map(String::as_str) == Some("attached to web-2"),
            "web-2 should have replaced web-1 and hold the volume"
        );
    }
    Ok(())
}
