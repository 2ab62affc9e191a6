//! The demo: Heat-like flows over a fake cloud.
//!
//! A *stack* is a network, a subnet and a router, some servers booted in parallel, some
//! volumes, an attachment of each volume to a server, and a final check. Each resource is made
//! by a fake provider that takes a configurable time, and records what it does (create, delete)
//! in a [`SideEffects`] log. Crash tests read that log to prove that no step which succeeded
//! ran twice.
//!
//! Factories, by name, for a [`Registry`]:
//!
//! | factory | parameters |
//! | --- | --- |
//! | `stack-create` | `stack` (name), `servers` (2), `volumes` (1), `step_ms` (100), `fail_at` (an atom name) |
//! | `stack-update` | `stack`, `server` (the one to replace, `server-0`), `step_ms`, `fail_at` |
//! | `stack-delete` | `stack`, `servers`, `volumes`, `step_ms` |
//! | `steps` | `steps` (count), `step_ms` (100): a line of plain steps, for load and crash tests |
//!
//! Counts and times are bounded, so that no job can make a flow too big to build or a step
//! that never ends: at most 100 `servers` and 100 `volumes`, 10 000 `steps`, and a `step_ms`
//! of 600 000 (ten minutes).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use baton_core::{Atom, Blueprint, Flow, Registry, RevertContext, Task, TaskContext, TaskError};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// One thing a fake provider did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// `create` or `delete`.
    pub action: String,
    /// The resource id.
    pub resource: String,
    /// The atom that did it.
    pub atom: String,
    /// The flow run.
    pub flow: String,
    /// The atom's attempt.
    pub attempt: u32,
    /// When (RFC 3339).
    pub at: String,
}

/// Where providers record their side effects.
#[derive(Debug, Clone)]
pub enum SideEffects {
    /// Nowhere.
    Discard,
    /// In memory (for tests and the in-process demo).
    Memory(Arc<Mutex<Vec<Effect>>>),
    /// Appended to a file, one JSON object per line: survives the process being killed.
    File(PathBuf),
}

impl SideEffects {
    /// An empty in-memory log.
    #[must_use]
    pub fn memory() -> Self {
        SideEffects::Memory(Arc::default())
    }

    /// The effects recorded in memory (empty for the other kinds).
    #[must_use]
    pub fn recorded(&self) -> Vec<Effect> {
        match self {
            SideEffects::Memory(m) => m
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            _ => Vec::new(),
        }
    }

    async fn record(&self, effect: Effect) -> Result<(), TaskError> {
        match self {
            SideEffects::Discard => Ok(()),
            SideEffects::Memory(m) => {
                m.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(effect);
                Ok(())
            }
            SideEffects::File(path) => {
                let mut line = serde_json::to_vec(&effect)?;
                line.push(b'\n');
                // One write of a short line with O_APPEND: lines from several processes never
                // interleave, and a killed process leaves whole lines behind.
                let mut file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(|e| TaskError::from(e).context("recording a side effect"))?;
                file.write_all(&line).await?;
                file.flush().await?;
                Ok(())
            }
        }
    }

    /// Reads a side-effect file back.
    ///
    /// # Errors
    /// If the file cannot be read or a line is not an effect.
    pub fn read_file(path: &std::path::Path) -> Result<Vec<Effect>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("bad line {l:?}: {e}")))
            .collect()
    }
}

/// A fake provider: creates one resource, deletes it on revert.
#[derive(Debug)]
struct Resource {
    kind: &'static str,
    step: Duration,
    fail: bool,
    effects: SideEffects,
}

impl Resource {
    fn id(&self, ctx_key: &str, atom: &str) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ctx_key.hash(&mut h);
        format!("{}-{atom}-{:06x}", self.kind, h.finish() & 0xff_ffff)
    }
}

#[async_trait]
impl Task for Resource {
    async fn execute(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        tokio::time::sleep(self.step).await;
        if self.fail {
            return Err(TaskError::msg(format!(
                "{} {} failed: quota exceeded",
                self.kind,
                ctx.atom()
            )));
        }
        let id = self.id(&ctx.idempotency_key(), ctx.atom());
        self.effects
            .record(Effect {
                action: "create".into(),
                resource: id.clone(),
                atom: ctx.atom().into(),
                flow: ctx.flow_id().to_string(),
                attempt: ctx.attempt(),
                at: Utc::now().to_rfc3339(),
            })
            .await?;
        Ok(json!({ "id": id, "kind": self.kind }))
    }

    async fn revert(&self, ctx: RevertContext) -> Result<(), TaskError> {
        let Some(id) = ctx.result().and_then(|r| r["id"].as_str()) else {
            return Ok(());
        };
        self.effects
            .record(Effect {
                action: "delete".into(),
                resource: id.to_owned(),
                atom: ctx.atom().into(),
                flow: ctx.flow_id().to_string(),
                attempt: 0,
                at: Utc::now().to_rfc3339(),
            })
            .await
    }
}

/// Parameters common to the demo factories.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StackParams {
    #[serde(default = "default_stack")]
    stack: String,
    #[serde(default = "default_servers")]
    servers: u32,
    #[serde(default = "default_volumes")]
    volumes: u32,
    #[serde(default = "default_step_ms")]
    step_ms: u64,
    #[serde(default)]
    fail_at: Option<String>,
    #[serde(default = "default_server")]
    server: String,
    #[serde(default)]
    steps: u32,
}

fn default_stack() -> String {
    "demo".into()
}
const fn default_servers() -> u32 {
    2
}
const fn default_volumes() -> u32 {
    1
}
const fn default_step_ms() -> u64 {
    100
}
fn default_server() -> String {
    "server-0".into()
}

/// The most servers, volumes and steps a demo flow has, and the longest `step_ms`.
const MAX_SERVERS: u32 = 100;
const MAX_VOLUMES: u32 = 100;
const MAX_STEPS: u32 = 10_000;
const MAX_STEP_MS: u64 = 600_000;

fn parse(params: &Value) -> Result<StackParams, String> {
    let params = if params.is_null() {
        json!({})
    } else {
        params.clone()
    };
    let p: StackParams = serde_path_to_error::deserialize(params).map_err(|e| {
        match e.path().to_string().as_str() {
            "." => format!("bad parameters: {}", e.inner()),
            path => format!("bad parameter `{path}`: {}", e.inner()),
        }
    })?;
    for (name, value, max) in [
        ("servers", u64::from(p.servers), u64::from(MAX_SERVERS)),
        ("volumes", u64::from(p.volumes), u64::from(MAX_VOLUMES)),
        ("steps", u64::from(p.steps), u64::from(MAX_STEPS)),
        ("step_ms", p.step_ms, MAX_STEP_MS),
    ] {
        if value > max {
            return Err(format!(
                "bad parameter `{name}`: {value} is more than the demo allows, {max}"
            ));
        }
    }
    Ok(p)
}

struct Maker<'a> {
    p: &'a StackParams,
    effects: &'a SideEffects,
}

impl Maker<'_> {
    fn atom(&self, name: &str, kind: &'static str) -> Atom {
        Atom::task(
            name,
            Resource {
                kind,
                step: Duration::from_millis(self.p.step_ms),
                fail: self.p.fail_at.as_deref() == Some(name),
                effects: self.effects.clone(),
            },
        )
    }
}

/// The stack-create flow.
fn stack_create(p: &StackParams, effects: &SideEffects) -> Flow {
    let m = Maker { p, effects };
    let mut servers = Flow::unordered("servers");
    for i in 0..p.servers {
        servers = servers.add(
            m.atom(&format!("server-{i}"), "server")
                .requires(["subnet"])
                .provides(format!("server_{i}")),
        );
    }
    let mut volumes = Flow::unordered("volumes");
    for i in 0..p.volumes {
        volumes = volumes.add(
            m.atom(&format!("volume-{i}"), "volume")
                .provides(format!("volume_{i}")),
        );
    }
    let mut attach = Flow::unordered("attachments");
    for i in 0..p.volumes.min(p.servers) {
        attach = attach.add(
            m.atom(&format!("attach-{i}"), "attachment")
                .requires([format!("server_{i}"), format!("volume_{i}")]),
        );
    }
    Flow::linear(format!("stack-create:{}", p.stack))
        .add(m.atom("network", "network").provides("network"))
        .add(
            m.atom("subnet", "subnet")
                .requires(["network"])
                .provides("subnet"),
        )
        .add(m.atom("router", "router").requires(["subnet"]))
        .add(servers)
        .add(volumes)
        .add(attach)
        .add(m.atom("check", "check"))
}

/// The stack-update flow: replace one server, moving its volume, keeping the old one until
/// the new one works; a failure anywhere puts the old layout back.
fn stack_update(p: &StackParams, effects: &SideEffects) -> Flow {
    let m = Maker { p, effects };
    let old = &p.server;
    Flow::linear(format!("stack-update:{}", p.stack))
        .add(
            m.atom(&format!("{old}-replacement"), "server")
                .provides("new_server"),
        )
        .add(m.atom("detach-volume", "detachment"))
        .add(
            m.atom("attach-volume", "attachment")
                .requires(["new_server"]),
        )
        .add(m.atom(&format!("{old}-retire"), "retirement"))
}

/// The stack-delete flow: everything a stack has, removed newest first.
fn stack_delete(p: &StackParams, effects: &SideEffects) -> Flow {
    let m = Maker { p, effects };
    let mut flow = Flow::linear(format!("stack-delete:{}", p.stack));
    let mut servers = Flow::unordered("delete-servers");
    for i in 0..p.servers {
        servers = servers.add(m.atom(&format!("delete-server-{i}"), "deletion"));
    }
    let mut volumes = Flow::unordered("delete-volumes");
    for i in 0..p.volumes {
        volumes = volumes.add(m.atom(&format!("delete-volume-{i}"), "deletion"));
    }
    flow = flow.add(volumes).add(servers);
    for name in ["router", "subnet", "network"] {
        flow = flow.add(m.atom(&format!("delete-{name}"), "deletion"));
    }
    flow
}

/// A line of `steps` plain steps.
fn steps(p: &StackParams, effects: &SideEffects) -> Flow {
    let m = Maker { p, effects };
    let mut flow = Flow::linear("steps");
    for i in 0..p.steps {
        flow = flow.add(m.atom(&format!("step-{i:04}"), "step"));
    }
    flow
}

type Builder = fn(&StackParams, &SideEffects) -> Flow;

/// The demo registry: `stack-create`, `stack-update`, `stack-delete` and `steps`, recording
/// side effects in `effects`.
pub fn registry(effects: SideEffects) -> Registry {
    let builders: [(&str, Builder); 4] = [
        ("stack-create", stack_create),
        ("stack-update", stack_update),
        ("stack-delete", stack_delete),
        ("steps", steps),
    ];
    let mut registry = Registry::new();
    for (name, build) in builders {
        let effects = effects.clone();
        registry = match registry.register(name, 1, move |params| {
            let p = parse(params)?;
            Ok(Blueprint::new(build(&p, &effects)))
        }) {
            Ok(registry) => registry,
            // Every name and version above is distinct.
            Err(e) => unreachable!("the demo registry: {e}"),
        };
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::{Engine, FlowState, MemoryStore};

    async fn run(factory: &str, params: Value) -> (baton_core::Outcome, Vec<Effect>) {
        let effects = SideEffects::memory();
        let (flow, inputs) = registry(effects.clone())
            .build_newest(factory, &params)
            .unwrap();
        let outcome = Engine::new(MemoryStore::new())
            .start(&flow, inputs)
            .await
            .unwrap();
        (outcome, effects.recorded())
    }

    #[tokio::test]
    async fn stack_create_builds_every_resource() {
        let (outcome, effects) = run(
            "stack-create",
            json!({"step_ms": 0, "servers": 3, "volumes": 2}),
        )
        .await;
        assert_eq!(outcome.state, FlowState::Success);
        // network, subnet, router, 3 servers, 2 volumes, 2 attachments, check
        assert_eq!(effects.iter().filter(|e| e.action == "create").count(), 11);
    }

    #[tokio::test]
    async fn a_failed_server_undoes_the_whole_stack() {
        let (outcome, effects) =
            run("stack-create", json!({"step_ms": 0, "fail_at": "server-1"})).await;
        assert_eq!(outcome.state, FlowState::Reverted);
        let created: Vec<_> = effects
            .iter()
            .filter(|e| e.action == "create")
            .map(|e| &e.resource)
            .collect();
        let deleted: Vec<_> = effects
            .iter()
            .filter(|e| e.action == "delete")
            .map(|e| &e.resource)
            .collect();
        let mut c = created.clone();
        let mut d = deleted.clone();
        c.sort();
        d.sort();
        assert_eq!(c, d, "everything created was deleted");
        assert!(!created.is_empty());
    }

    #[tokio::test]
    async fn update_and_delete_flows_run() {
        assert_eq!(
            run("stack-update", json!({"step_ms": 0})).await.0.state,
            FlowState::Success
        );
        let (outcome, effects) = run(
            "stack-update",
            json!({"step_ms": 0, "fail_at": "server-0-retire"}),
        )
        .await;
        assert_eq!(outcome.state, FlowState::Reverted);
        assert_eq!(effects.iter().filter(|e| e.action == "delete").count(), 3);
        assert_eq!(
            run("stack-delete", json!({"step_ms": 0})).await.0.state,
            FlowState::Success
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = registry(SideEffects::Discard)
            .build_newest("stack-create", &json!({"servers": "two"}))
            .unwrap_err();
        assert!(err.to_string().contains("servers"), "{err}");
        let err = registry(SideEffects::Discard)
            .build_newest("stack-create", &json!({"colour": "blue"}))
            .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    /// Counts and times that would take forever to build or to run are refused, naming the
    /// parameter and the limit; the limits themselves are accepted.
    #[test]
    fn counts_and_times_are_bounded() {
        let registry = registry(SideEffects::Discard);
        for (factory, params, message) in [
            ("stack-create", json!({"servers": u32::MAX}), "bad parameter `servers`: 4294967295 is more than the demo allows, 100"),
            ("stack-delete", json!({"volumes": 101}), "bad parameter `volumes`: 101 is more than the demo allows, 100"),
            ("steps", json!({"steps": 10_001}), "bad parameter `steps`: 10001 is more than the demo allows, 10000"),
            ("stack-update", json!({"step_ms": u64::MAX}), "bad parameter `step_ms`: 18446744073709551615 is more than the demo allows, 600000"),
        ] {
            let err = registry.build_newest(factory, &params).unwrap_err();
            assert!(err.to_string().contains(message), "{err}");
        }
        let most = json!({"servers": 100, "volumes": 100, "step_ms": 600_000});
        registry.build_newest("stack-create", &most).unwrap();
        registry
            .build_newest("steps", &json!({"steps": 10_000}))
            .unwrap();
    }

    #[tokio::test]
    async fn file_effects_survive_as_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("effects.jsonl");
        let effects = SideEffects::File(path.clone());
        let (flow, inputs) = registry(effects)
            .build_newest("steps", &json!({"steps": 5, "step_ms": 0}))
            .unwrap();
        Engine::new(MemoryStore::new())
            .start(&flow, inputs)
            .await
            .unwrap();
        let read = SideEffects::read_file(&path).unwrap();
        assert_eq!(read.len(), 5);
        assert!(read.iter().all(|e| e.action == "create" && e.attempt == 1));
    }
}
