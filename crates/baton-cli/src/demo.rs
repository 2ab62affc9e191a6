//! The demo: Heat-like flows over a fake cloud.
//!
//! A *stack* is a network, a subnet and a router, some servers booted in parallel, some
//! volumes, an attachment of each volume to a server, and a final check. Each resource is made
//! by a fake provider that takes a configurable time, and records what it does (create, delete)
//! in a [`SideEffects`] log. Crash tests read that log to prove that no step which succeeded
//! ran twice.
//!
//! The providers are written the way a real one should be, since users copy demo code:
//!
//! - **A create is idempotent.** Each resource is recorded with the idempotency key of the
//!   call that created it ([`TaskContext::idempotency_key`], the same for every re-run of one
//!   `execute` after a crash). A create first looks for a resource made with its key, and
//!   returns that one if there is one: an `execute` re-run because its process died after the
//!   cloud call, before its result was stored, finds the resource instead of making a second.
//!   (A real cloud API takes the key with the request and de-duplicates it itself; this fake
//!   looks first, which is enough for one caller of a key at a time.)
//! - **A revert finds what to undo by the key**, not only by the result: an `execute` that
//!   failed or was interrupted after its cloud call has no result
//!   ([`RevertContext::result`] is `None`), but its resource exists and must go. A resource
//!   already gone (a revert run again after a crash) is left alone.
//! - **No side effect for an owner that lost its claim.** A create prepares its request (half
//!   of `step_ms`), confirms that the run's claim still holds
//!   ([`TaskContext::confirm_claim`]), and only then makes its cloud call, then waits the
//!   other half for the resource to become ready; a delete confirms before its call too. A
//!   conductor that was paused or cut off while another took the job over makes no call after
//!   that. (A pause between the confirmation and the call is what the claim's fence is for: a
//!   real cloud would take [`TaskContext::fence`] with the request and refuse a stale one.) A
//!   call whose cancellation token fires (a time limit, a cancel, a self-fencing conductor)
//!   stops where it is.
//! - **Ids are stable.** A resource's id is derived from its key with FNV-1a, a hash that is
//!   the same on every platform and every Rust release (`std`'s `DefaultHasher` promises
//!   neither), so the same key gives the same id in any process, today and after an upgrade.
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
//! Parameters over the limits ([`MAX_STEPS`], [`MAX_SERVERS`] servers and volumes,
//! [`MAX_STEP_MS`]) are refused before anything is built.
//!
//! **Runs of earlier releases.** The factories are written on the typed API since 0.4; 0.3.0
//! built the same flows on the name-and-JSON API. A run 0.3.0 left unfinished resumes on
//! version 1 of its factory (a job of 0.3.0 names no version: one claimed before is read as
//! version 1, one never claimed is pinned to the newest version when claimed): 0.3.0
//! recorded no [fingerprint](baton_core::Fingerprint) of a run's wiring, so the engine checks
//! what such a run holds, its flow's name and each atom's name and kind in order, and version 1
//! of each factory keeps those exactly. Runs made from now on record their fingerprint, and a
//! change to a definition's wiring needs a new version (as `stack-create`'s security group
//! did), with the old one kept registered until its runs are done.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use baton_core::registry::{BuildError, Error as RegistryError};
use baton_core::typed::{atom, Out, TypedAtom, TypedFlow, TypedTask};
use baton_core::{ClaimError, Registry, RevertContext, TaskContext, TaskError};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// One thing a fake provider did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// `create` or `delete`: the cloud calls. Also, to show when a call ran: `begin` when an
    /// `execute` starts and `stop` when its cancellation token fires (it stopped there).
    pub action: String,
    /// The resource id.
    pub resource: String,
    /// The idempotency key of the `execute` that created the resource: how the fake cloud finds
    /// it again.
    #[serde(default)]
    pub key: String,
    /// The atom that did it.
    pub atom: String,
    /// The flow run.
    pub flow: String,
    /// The atom's attempt.
    pub attempt: u32,
    /// When (RFC 3339).
    pub at: String,
    /// The process that did it (0 in files of earlier versions).
    #[serde(default)]
    pub pid: u32,
}

impl Effect {
    /// Whether this is a cloud call (`create` or `delete`), not a mark of when a call ran.
    #[must_use]
    pub fn is_call(&self) -> bool {
        self.action == "create" || self.action == "delete"
    }
}

/// Where providers record their side effects: the fake cloud. The resources it holds are those
/// created and not deleted since ([`SideEffects::find`]).
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

    /// The resource created with idempotency key `key` and not deleted since, if any (always
    /// `None` for [`SideEffects::Discard`], which keeps nothing).
    ///
    /// # Errors
    /// If the file cannot be read or holds a line that is not an effect.
    pub async fn find(&self, key: &str) -> Result<Option<String>, TaskError> {
        let last = match self {
            SideEffects::Discard => None,
            SideEffects::Memory(m) => m
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .rev()
                .find(|e| e.key == key && e.is_call())
                .cloned(),
            SideEffects::File(path) => {
                let text = match tokio::fs::read_to_string(path).await {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                    Err(e) => return Err(TaskError::from(e).context("reading the side effects")),
                };
                // Only the lines that hold the key (as JSON writes it) are parsed.
                let quoted = serde_json::to_string(key)?;
                let mut last = None;
                for line in text.lines().filter(|l| l.contains(&quoted)) {
                    let effect: Effect = serde_json::from_str(line)?;
                    if effect.key == key && effect.is_call() {
                        last = Some(effect);
                    }
                }
                last
            }
        };
        Ok(last.filter(|e| e.action == "create").map(|e| e.resource))
    }

    /// Reads a side-effect file back: its whole lines (a last line still being written by
    /// another process is left out).
    ///
    /// # Errors
    /// If the file cannot be read or a line is not an effect.
    pub fn read_file(path: &std::path::Path) -> Result<Vec<Effect>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        // A last line without its newline is a write still under way in another process
        // (a reader can see part of it): it is left for the next read.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("bad line {l:?}: {e}")))
            .collect()
    }
}

/// What a fake provider made: the resource's id and kind. Stored as the atom's result
/// (`{"id": ..., "kind": ...}`), and given to the providers of the resources made on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Made {
    /// The resource id.
    pub id: String,
    /// Its kind (`network`, `server`, ...).
    pub kind: String,
}

/// A fake provider: creates one resource, deletes it on revert. Its input is what the
/// resource is made on (the network of a subnet, the server and the volume of an
/// attachment): being given those is what orders it after their providers.
#[derive(Debug)]
struct Resource {
    kind: &'static str,
    step: Duration,
    fail: bool,
    effects: SideEffects,
}

/// The id of a resource of `kind` made by `atom` with idempotency key `key`: the same for the
/// same key in every process and with every Rust release (FNV-1a over the key's bytes), short
/// enough to read. (A real provider returns ids of its own; it is the key that must be stable.)
#[must_use]
pub fn resource_id(kind: &str, atom: &str, key: &str) -> String {
    let mut hash = fnv::FnvHasher::default();
    std::hash::Hasher::write(&mut hash, key.as_bytes());
    let tag = std::hash::Hasher::finish(&hash) & 0xff_ffff;
    format!("{kind}-{atom}-{tag:06x}")
}

impl Resource {
    fn made(&self, id: String) -> Made {
        let kind = self.kind.to_owned();
        Made { id, kind }
    }

    fn effect(&self, action: &str, key: &str, atom: &str, flow: String, attempt: u32) -> Effect {
        Effect {
            action: action.into(),
            resource: String::new(),
            key: key.into(),
            atom: atom.into(),
            flow,
            attempt,
            at: Utc::now().to_rfc3339(),
            pid: std::process::id(),
        }
    }
}

/// How often, and how many times, a provider asks again when its claim cannot be confirmed
/// (the board does not answer): about a minute, far past any lease, by when a conductor has
/// stopped the task itself.
const CONFIRM_RETRY: Duration = Duration::from_millis(250);
const CONFIRM_TRIES: u32 = 240;

/// Waits until the run's claim is confirmed (`ask` asks once): a lost claim is an error (the
/// run is being stopped); a board that cannot say is asked again.
async fn confirm<F, Fut>(ask: F) -> Result<(), TaskError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<baton_core::ClaimHeld, ClaimError>>,
{
    for _ in 0..CONFIRM_TRIES {
        match ask().await {
            Ok(_) => return Ok(()),
            Err(e @ ClaimError::Lost { .. }) => return Err(TaskError::from(e)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot confirm the claim yet");
                tokio::time::sleep(CONFIRM_RETRY).await;
            }
        }
    }
    Err(TaskError::msg("the claim could not be confirmed").retryable())
}

#[async_trait]
impl TypedTask for Resource {
    type Input = Vec<Made>;
    type Output = Made;
    type Error = TaskError;

    async fn execute(&self, _on: Vec<Made>, ctx: &TaskContext) -> Result<Made, TaskError> {
        if self.fail {
            // The cloud refuses at once: nothing was made.
            return Err(TaskError::msg(format!(
                "{} {} failed: quota exceeded",
                self.kind,
                ctx.atom()
            )));
        }
        let key = ctx.idempotency_key();
        let (atom, flow, attempt) = (ctx.atom(), ctx.flow_id().to_string(), ctx.attempt());
        // The call may have been made before, by an `execute` whose process died before its
        // result was stored: then the resource exists, and is the answer.
        if let Some(id) = self.effects.find(&key).await? {
            return Ok(self.made(id));
        }
        self.effects
            .record(self.effect("begin", &key, atom, flow.clone(), attempt))
            .await?;
        // Marks when the call stopped, if it is stopped: not when it ends on its own.
        let ended = tokio_util::sync::CancellationToken::new();
        let (token, stopped) = (
            ctx.cancellation(),
            self.effect("stop", &key, atom, flow.clone(), attempt),
        );
        let (effects, watch_ended) = (self.effects.clone(), ended.clone());
        tokio::spawn(async move {
            tokio::select! {
                biased;
                () = token.cancelled() => {
                    let stopped = Effect { at: Utc::now().to_rfc3339(), ..stopped };
                    if let Err(e) = effects.record(stopped).await {
                        tracing::warn!(error = %e, "could not record that a call stopped");
                    }
                }
                () = watch_ended.cancelled() => {}
            }
        });
        // Half of `step` preparing the request; the call itself, if the claim still holds;
        // the other half waiting for the resource to become ready.
        let made = async {
            tokio::time::sleep(self.step / 2).await;
            confirm(|| ctx.confirm_claim()).await?;
            let id = resource_id(self.kind, atom, &key);
            self.effects
                .record(Effect {
                    resource: id.clone(),
                    ..self.effect("create", &key, atom, flow, attempt)
                })
                .await?;
            tokio::time::sleep(self.step - self.step / 2).await;
            Ok(self.made(id))
        }
        .await;
        ended.cancel();
        made
    }

    async fn revert(
        &self,
        _on: Vec<Made>,
        _made: Option<Made>,
        ctx: &RevertContext,
    ) -> Result<(), TaskError> {
        // By the key, not the result: an `execute` interrupted after its cloud call left no
        // result, but a resource. And only if it still exists: a revert may run twice.
        let key = ctx.idempotency_key();
        let Some(id) = self.effects.find(&key).await? else {
            return Ok(());
        };
        confirm(|| ctx.confirm_claim()).await?;
        self.effects
            .record(Effect {
                resource: id,
                ..self.effect("delete", &key, ctx.atom(), ctx.flow_id().to_string(), 0)
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

/// The most steps a `steps` flow may have.
pub const MAX_STEPS: u32 = 10_000;
/// The most servers, and the most volumes, a stack may have. (Each server is linked to each
/// volume, and each volume to each attachment: a stack's edges grow with the square.)
pub const MAX_SERVERS: u32 = 100;
/// The longest a fake cloud call may take (`step_ms`): an hour.
pub const MAX_STEP_MS: u64 = 3_600_000;

impl StackParams {
    /// Refuses counts over the limits, before anything is built: a flow of
    /// `steps: 4294967295` would not fit in memory.
    fn check(&self) -> Result<(), String> {
        for (name, value, limit) in [
            ("steps", u64::from(self.steps), u64::from(MAX_STEPS)),
            ("servers", u64::from(self.servers), u64::from(MAX_SERVERS)),
            ("volumes", u64::from(self.volumes), u64::from(MAX_SERVERS)),
            ("step_ms", self.step_ms, MAX_STEP_MS),
        ] {
            if value > limit {
                return Err(format!(
                    "bad parameter `{name}`: {value} is over the limit of {limit}"
                ));
            }
        }
        Ok(())
    }
}

/// Adds the demo's providers to a flow.
struct Maker<'a> {
    p: &'a StackParams,
    effects: &'a SideEffects,
}

impl Maker<'_> {
    /// Adds a provider of a `kind` resource, named `name`, made on the resources `on`.
    fn add(
        &self,
        flow: &mut TypedFlow,
        name: &str,
        kind: &'static str,
        on: &[&Out<Made>],
    ) -> Out<Made> {
        flow.add(self.atom(name, kind), on)
    }

    fn atom(&self, name: &str, kind: &'static str) -> TypedAtom<Resource> {
        atom(
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
fn stack_create(p: &StackParams, effects: &SideEffects) -> TypedFlow {
    stack_create_version(p, effects, 1)
}

/// Version 2 of stack-create: a security group, made after the router, that every server is
/// booted in. (Version 1 stays registered beside it: runs it started finish on it.)
fn stack_create_v2(p: &StackParams, effects: &SideEffects) -> TypedFlow {
    stack_create_version(p, effects, 2)
}

fn stack_create_version(p: &StackParams, effects: &SideEffects, version: u32) -> TypedFlow {
    let m = Maker { p, effects };
    let mut flow = TypedFlow::linear(format!("stack-create:{}", p.stack));
    let network = m.add(&mut flow, "network", "network", &[]);
    let subnet = m.add(&mut flow, "subnet", "subnet", &[&network]);
    m.add(&mut flow, "router", "router", &[&subnet]);
    let mut server_on = vec![subnet];
    if version >= 2 {
        let group = m.add(&mut flow, "security-group", "security_group", &[&network]);
        server_on.push(group);
    }
    let servers = flow.each("servers", 0..p.servers, |i| {
        (m.atom(&format!("server-{i}"), "server"), server_on.clone())
    });
    let volumes = flow.each("volumes", 0..p.volumes, |i| {
        (
            m.atom(&format!("volume-{i}"), "volume"),
            Vec::<Out<Made>>::new(),
        )
    });
    // Volume i is attached to server i.
    let pairs = servers.outs().iter().zip(volumes.outs()).enumerate();
    flow.each("attachments", pairs, |(i, (server, volume))| {
        (
            m.atom(&format!("attach-{i}"), "attachment"),
            vec![server, volume],
        )
    });
    m.add(&mut flow, "check", "check", &[]);
    flow
}

/// The stack-update flow: replace one server, moving its volume, keeping the old one until
/// the new one works; a failure anywhere puts the old layout back.
fn stack_update(p: &StackParams, effects: &SideEffects) -> TypedFlow {
    let m = Maker { p, effects };
    let old = &p.server;
    let mut flow = TypedFlow::linear(format!("stack-update:{}", p.stack));
    let new_server = m.add(&mut flow, &format!("{old}-replacement"), "server", &[]);
    m.add(&mut flow, "detach-volume", "detachment", &[]);
    m.add(&mut flow, "attach-volume", "attachment", &[&new_server]);
    m.add(&mut flow, &format!("{old}-retire"), "retirement", &[]);
    flow
}

/// The stack-delete flow: everything a stack has, removed newest first.
fn stack_delete(p: &StackParams, effects: &SideEffects) -> TypedFlow {
    let m = Maker { p, effects };
    let mut flow = TypedFlow::linear(format!("stack-delete:{}", p.stack));
    let nothing = Vec::<Out<Made>>::new;
    flow.each("delete-volumes", 0..p.volumes, |i| {
        (m.atom(&format!("delete-volume-{i}"), "deletion"), nothing())
    });
    flow.each("delete-servers", 0..p.servers, |i| {
        (m.atom(&format!("delete-server-{i}"), "deletion"), nothing())
    });
    for name in ["router", "subnet", "network"] {
        m.add(&mut flow, &format!("delete-{name}"), "deletion", &[]);
    }
    flow
}

/// A line of `steps` plain steps.
fn steps(p: &StackParams, effects: &SideEffects) -> TypedFlow {
    let m = Maker { p, effects };
    let mut flow = TypedFlow::linear("steps");
    for i in 0..p.steps {
        m.add(&mut flow, &format!("step-{i:04}"), "step", &[]);
    }
    flow
}

type Builder = fn(&StackParams, &SideEffects) -> TypedFlow;

/// The versions of each demo factory: `stack-create` has two (version 2 adds a security group
/// before the servers), the others one.
pub const VERSIONS: &[(&str, u32)] = &[
    ("stack-create", 1),
    ("stack-create", 2),
    ("stack-update", 1),
    ("stack-delete", 1),
    ("steps", 1),
];

/// The demo registry: `stack-create` (versions 1 and 2), `stack-update`, `stack-delete` and
/// `steps`, recording side effects in `effects`. The factories take their parameters as a type
/// of their own ([`Registry::register_typed`]): parameters that do not fit it are refused
/// naming the field, and counts over the limits before anything is built.
///
/// # Errors
/// None in practice: every name and version is distinct (the registry's own checks).
pub fn registry(effects: SideEffects) -> Result<Registry, RegistryError> {
    let builders: [(&str, u32, Builder); 5] = [
        ("stack-create", 1, stack_create),
        ("stack-create", 2, stack_create_v2),
        ("stack-update", 1, stack_update),
        ("stack-delete", 1, stack_delete),
        ("steps", 1, steps),
    ];
    let mut registry = Registry::new();
    for (name, version, build) in builders {
        let effects = effects.clone();
        registry = registry.register_typed(name, version, move |p: StackParams| {
            p.check().map(|()| build(&p, &effects))
        })?;
    }
    Ok(registry)
}

/// For fuzzing and property tests (not part of the API): builds `params` with every demo
/// factory, which must either refuse them ([`BuildError::InvalidParams`],
/// [`BuildError::BadParams`]) or build a flow within the limits; a description of anything
/// else.
///
/// # Errors
/// What went wrong, if anything did.
#[doc(hidden)]
pub fn fuzz_params(params: &Value) -> Result<(), String> {
    let registry = registry(SideEffects::Discard).map_err(|e| e.to_string())?;
    for &(factory, version) in VERSIONS {
        match registry.build(&baton_core::FactoryRef::new(factory, version), params) {
            Ok((flow, _)) => {
                let most = MAX_STEPS as usize + 3 * MAX_SERVERS as usize + 4;
                if flow.len() > most {
                    return Err(format!(
                        "{factory} built {} atoms from {params}",
                        flow.len()
                    ));
                }
            }
            Err(BuildError::BadParams { .. } | BuildError::InvalidParams { .. }) => {}
            Err(e) => return Err(format!("{factory} from {params}: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::engine::Error as EngineError;
    use baton_core::model::Change;
    use baton_core::store::Store;
    use baton_core::{AtomState, Control, Engine, EventKind, FlowState, MemoryStore, RunOptions};
    use serde_json::json;

    #[tokio::test]
    async fn a_line_still_being_written_is_left_for_the_next_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("effects.jsonl");
        let effects = SideEffects::File(path.clone());
        effects.record(effects_sample("create")).await.unwrap();
        let whole = std::fs::read(&path).unwrap();
        // Another process's write, seen half done.
        let mut torn = whole.clone();
        torn.extend_from_slice(&whole[..whole.len() / 2]);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(SideEffects::read_file(&path).unwrap().len(), 1);
        // Once whole, it is read.
        torn.extend_from_slice(&whole[whole.len() / 2..]);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(SideEffects::read_file(&path).unwrap().len(), 2);
        // A line that is whole and wrong is still an error.
        torn.extend_from_slice(b"{not json}\n");
        std::fs::write(&path, &torn).unwrap();
        assert!(SideEffects::read_file(&path).is_err());
    }

    fn effects_sample(action: &str) -> Effect {
        Effect {
            action: action.into(),
            resource: "res-1".into(),
            key: "key-1".into(),
            atom: "step-0000".into(),
            flow: "flow-1".into(),
            attempt: 1,
            at: Utc::now().to_rfc3339(),
            pid: std::process::id(),
        }
    }

    /// Runs flow `id` in a task of its own, under `control`.
    fn run_in_task(
        engine: &Engine,
        flow: &baton_core::CompiledFlow,
        id: baton_core::FlowId,
        control: &Control,
    ) -> tokio::task::JoinHandle<Result<baton_core::Outcome, EngineError>> {
        let (engine, flow, control) = (engine.clone(), flow.clone(), control.clone());
        tokio::spawn(async move {
            engine
                .run_with(&flow, id, RunOptions::new().control(control))
                .await
        })
    }

    /// The resources the fake cloud holds: created and not deleted since.
    fn left(effects: &[Effect]) -> Vec<String> {
        let mut last: std::collections::BTreeMap<&str, &Effect> = Default::default();
        for e in effects.iter().filter(|e| e.is_call()) {
            last.insert(&e.key, e);
        }
        last.values()
            .filter(|e| e.action == "create")
            .map(|e| e.resource.clone())
            .collect()
    }

    async fn run(factory: &str, params: Value) -> (baton_core::Outcome, Vec<Effect>) {
        let effects = SideEffects::memory();
        let (flow, inputs) = registry(effects.clone())
            .unwrap()
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
        // network, subnet, router, security group (version 2), 3 servers, 2 volumes,
        // 2 attachments, check
        assert_eq!(effects.iter().filter(|e| e.action == "create").count(), 12);
    }

    /// Version 1 of stack-create, still registered beside version 2, builds the stack without
    /// a security group; version 2 boots every server in one.
    #[test]
    fn both_versions_of_stack_create_are_registered() {
        let registry = registry(SideEffects::Discard).unwrap();
        assert_eq!(registry.versions("stack-create"), [1, 2]);
        let build = |v| {
            registry
                .build(&baton_core::FactoryRef::new("stack-create", v), &json!({}))
                .unwrap()
                .0
        };
        let (v1, v2) = (build(1), build(2));
        assert!(!v1.contains("security-group"));
        assert!(v2.contains("security-group"));
        assert_eq!(v2.len(), v1.len() + 1);
        assert!(v2
            .edges()
            .any(|(from, to)| from == "security-group" && to == "server-0"));
        assert_ne!(v1.fingerprint(), v2.fingerprint());
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
            .unwrap()
            .build_newest("stack-create", &json!({"servers": "two"}))
            .unwrap_err();
        assert!(err.to_string().contains("servers"), "{err}");
        let err = registry(SideEffects::Discard)
            .unwrap()
            .build_newest("stack-create", &json!({"colour": "blue"}))
            .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    /// The run's process dies (the run is halted) while `server-0` waits for the server it
    /// has just created to boot, and the flow is already reverting (`server-1` failed): the
    /// store has `server-0` running, with no result. The engine that resumes the run reverts
    /// it, and its revert finds the server by the key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_interrupted_after_its_cloud_call_is_undone_by_the_revert() {
        let effects = SideEffects::memory();
        let params = json!({"step_ms": 500, "servers": 2, "fail_at": "server-1"});
        let (flow, inputs) = registry(effects.clone())
            .unwrap()
            .build_newest("stack-create", &params)
            .unwrap();
        let store = MemoryStore::new();
        let engine = Engine::new(store.clone()).with_parallelism(4);
        let mut events = engine.subscribe();
        let id = engine.create(&flow, inputs).await.unwrap();
        let control = Control::new();
        let run = run_in_task(&engine, &flow, id, &control);
        while let Some(event) = events.next().await {
            // A subscriber this close to the run never falls behind.
            let event = event.unwrap();
            if let EventKind::Transition(Change::Flow { to, .. }) = event.kind {
                if to == FlowState::Reverting {
                    break;
                }
            }
        }
        // server-0 runs beside server-1: wait for its cloud call (it then waits `step_ms`
        // for the server to boot), and halt the run there.
        for _ in 0..1000 {
            if left(&effects.recorded())
                .iter()
                .any(|r| r.starts_with("server-server-0-"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        control.halt();
        assert!(matches!(run.await.unwrap(), Err(EngineError::Halted(_))));
        let snap = store.load_flow(id).await.unwrap();
        let server = snap.atoms.iter().find(|a| a.name == "server-0").unwrap();
        assert_eq!(
            (server.state, &server.result),
            (AtomState::Running, &None),
            "server-0 was caught waiting for its server"
        );
        assert!(left(&effects.recorded())
            .iter()
            .any(|r| r.starts_with("server-server-0-")));

        let outcome = Engine::new(store).run(&flow, id).await.unwrap();
        assert_eq!(outcome.state, FlowState::Reverted);
        let recorded = effects.recorded();
        assert_eq!(left(&recorded), Vec::<String>::new(), "{recorded:#?}");
    }

    /// The run's process dies after `step-0001` created its resource, before the result was
    /// stored: the engine that resumes the run runs `step-0001` again, with the same key,
    /// which finds the resource instead of making a second.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_run_again_after_a_crash_finds_its_resource() {
        let effects = SideEffects::memory();
        let (flow, inputs) = registry(effects.clone())
            .unwrap()
            .build_newest("steps", &json!({"steps": 3, "step_ms": 500}))
            .unwrap();
        let store = MemoryStore::new();
        let engine = Engine::new(store.clone());
        let id = engine.create(&flow, inputs).await.unwrap();
        let control = Control::new();
        let run = run_in_task(&engine, &flow, id, &control);
        for _ in 0..1000 {
            if effects
                .recorded()
                .iter()
                .any(|e| e.atom == "step-0001" && e.action == "create")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        control.halt();
        assert!(matches!(run.await.unwrap(), Err(EngineError::Halted(_))));

        let outcome = Engine::new(store.clone()).run(&flow, id).await.unwrap();
        assert_eq!(outcome.state, FlowState::Success);
        let snap = store.load_flow(id).await.unwrap();
        let step = snap.atoms.iter().find(|a| a.name == "step-0001").unwrap();
        assert_eq!(step.attempt, 2, "step-0001 ran again");
        let creates: Vec<Effect> = effects
            .recorded()
            .into_iter()
            .filter(|e| e.atom == "step-0001" && e.is_call())
            .collect();
        assert_eq!(creates.len(), 1, "one resource, not two: {creates:#?}");
        assert_eq!(
            step.result.as_ref().unwrap()["id"],
            json!(creates[0].resource),
            "the re-run answered with the resource of the first"
        );
    }

    #[test]
    fn resource_ids_are_the_same_in_every_process_and_release() {
        // FNV-1a of the key's bytes, low 24 bits: 0x731716d1640f403e.
        assert_eq!(
            resource_id(
                "server",
                "server-0",
                "01a212fe-59db-735c-a5d3-d255ea0500da/server-0/0"
            ),
            "server-server-0-0f403e"
        );
    }

    #[test]
    fn counts_over_the_limits_are_refused_before_anything_is_built() {
        let registry = registry(SideEffects::Discard).unwrap();
        let refused = |factory: &str, params: Value, named: &str| {
            let Err(err) = registry.build_newest(factory, &params) else {
                panic!("{factory} built a flow from {params}");
            };
            assert!(err.to_string().contains(named), "{factory} {params}: {err}");
        };
        let most = u64::from(u32::MAX);
        refused(
            "steps",
            json!({"steps": 10_001}),
            "`steps`: 10001 is over the limit of 10000",
        );
        refused("steps", json!({ "steps": most }), "`steps`: 4294967295");
        refused(
            "stack-create",
            json!({"servers": 101}),
            "`servers`: 101 is over the limit",
        );
        refused("stack-create", json!({ "volumes": most }), "`volumes`");
        refused("stack-delete", json!({ "servers": most }), "`servers`");
        refused("steps", json!({ "step_ms": u64::MAX }), "`step_ms`");
        // At the limits, the flows are built.
        let (flow, _) = registry
            .build_newest("steps", &json!({"steps": 10_000, "step_ms": 3_600_000}))
            .unwrap();
        assert_eq!(flow.len(), 10_000);
        let (flow, _) = registry
            .build_newest("stack-create", &json!({"servers": 100, "volumes": 100}))
            .unwrap();
        // Version 2: one atom more than version 1, the security group.
        assert_eq!(flow.len(), 305);
    }

    /// JSON of any shape, with the demo's parameter names and the numbers around its limits
    /// more likely than chance would make them.
    fn any_params() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let number = prop_oneof![
            0u64..30,
            Just(100),
            Just(101),
            Just(10_000),
            Just(10_001),
            Just(u64::from(u32::MAX)),
            Just(u64::MAX),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            number.prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "\\PC{0,24}".prop_map(Value::from),
        ];
        let key = prop_oneof![
            Just("stack".to_owned()),
            Just("servers".to_owned()),
            Just("volumes".to_owned()),
            Just("step_ms".to_owned()),
            Just("fail_at".to_owned()),
            Just("server".to_owned()),
            Just("steps".to_owned()),
            "[a-z_]{1,8}",
        ];
        leaf.prop_recursive(3, 48, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        // 256 cases by default; PROPTEST_CASES=100000 runs more (CONTRIBUTING.md).
        #[test]
        fn any_parameters_build_a_bounded_flow_or_are_refused(params in any_params()) {
            proptest::prop_assert_eq!(fuzz_params(&params), Ok(()));
        }
    }

    #[tokio::test]
    async fn file_effects_survive_as_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("effects.jsonl");
        let effects = SideEffects::File(path.clone());
        let (flow, inputs) = registry(effects)
            .unwrap()
            .build_newest("steps", &json!({"steps": 5, "step_ms": 0}))
            .unwrap();
        Engine::new(MemoryStore::new())
            .start(&flow, inputs)
            .await
            .unwrap();
        let read = SideEffects::read_file(&path).unwrap();
        let calls: Vec<&Effect> = read.iter().filter(|e| e.is_call()).collect();
        assert_eq!(calls.len(), 5);
        assert!(calls.iter().all(|e| e.action == "create" && e.attempt == 1));
        assert_eq!(read.iter().filter(|e| e.action == "begin").count(), 5);
        assert!(read.iter().all(|e| e.pid == std::process::id()));
    }
}
