//! Fleets of real `baton conductor --demo` processes: starting, signalling, stopping, waiting.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use baton_cli::demo::Effect;
use baton_core::model::{Change, FlowSnapshot, Transition};
use baton_core::{AtomState, FlowState};

/// `baton --db <db> conductor --demo --name <name>` with short timings (a `lease_ms` lease,
/// a heartbeat every 200 ms, a poll every 50 ms), two jobs at once, its side effects appended
/// to `effects`, and its standard output and error to `<name>.out` and `<name>.log` beside
/// `effects` (see [`output`] and [`logs`]). Add arguments (`--demo-versions`) before
/// [`spawn`]ing it.
pub fn conductor_command(db: &str, name: &str, effects: &Path, lease_ms: u64) -> Command {
    conductor_command_with(db, name, effects, lease_ms, 200)
}

/// [`conductor_command`] with a heartbeat every `heartbeat_ms`.
pub fn conductor_command_with(
    db: &str,
    name: &str,
    effects: &Path,
    lease_ms: u64,
    heartbeat_ms: u64,
) -> Command {
    let mut cmd = super::command(
        Some(db),
        &["conductor", "--demo", "--name", name, "--concurrency", "2"],
    );
    cmd.args([
        "--lease-ms",
        &lease_ms.to_string(),
        "--heartbeat-ms",
        &heartbeat_ms.to_string(),
        "--poll-ms",
        "50",
    ])
    .arg("--effects")
    .arg(effects);
    // To files, not pipes: nothing reads a pipe while the conductor runs, and a full one would
    // block its log writes, and with them the conductor.
    let file = |ext: &str| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(effects.with_file_name(format!("{name}.{ext}")))
            .unwrap()
    };
    cmd.stdin(Stdio::null())
        .stdout(file("out"))
        .stderr(file("log"));
    cmd
}

/// A conductor process, killed (SIGKILL) if it is still running when dropped: a test that
/// fails half-way leaves no conductor behind. It is its [`Child`] otherwise.
#[derive(Debug)]
pub struct Conductor(Child);

impl std::ops::Deref for Conductor {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Conductor {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Conductor {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Starts a command made by [`conductor_command`].
pub fn spawn(mut cmd: Command) -> Conductor {
    Conductor(cmd.spawn().expect("the conductor starts"))
}

/// A conductor offering every version of every demo factory (see [`conductor_command`]).
pub fn conductor(db: &str, name: &str, effects: &Path, lease_ms: u64) -> Conductor {
    spawn(conductor_command(db, name, effects, lease_ms))
}

/// What conductor `name` (started with `effects`) printed on its standard output.
pub fn output(effects: &Path, name: &str) -> String {
    std::fs::read_to_string(effects.with_file_name(format!("{name}.out"))).unwrap_or_default()
}

/// Every conductor's log in the folder of `effects`, each under its name: for the message of
/// a failed test.
pub fn logs(effects: &Path) -> String {
    let Some(dir) = effects.parent() else {
        return String::new();
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "log"));
    files.sort();
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            format!("--- {}\n{text}", p.display())
        })
        .collect()
}

/// Sends `sig` (`TERM`, `STOP`, ...) to `child`.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

/// Stops `child` as an operator would (SIGTERM: it suspends its runs and hands their jobs
/// back), killing it if it is still there after 20 s; how it exited.
pub fn stop(mut child: Conductor) -> ExitStatus {
    signal(&child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
    }
    child.wait().unwrap()
}

/// [`stop`]s each of `children`.
pub fn stop_all(children: Vec<Conductor>) {
    for c in children {
        stop(c);
    }
}

/// Whether `check` came true within `limit` (checked every 25 ms).
pub async fn poll_until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    true
}

/// Waits until `check` is true; fails the test, naming `what`, if that takes over `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        poll_until(limit, check).await,
        "timed out waiting until {what}"
    );
}

/// Waits until `check` gives something, and returns it; fails the test, naming `what`, if that
/// takes over `limit` (checked every 25 ms).
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until at least `n` steps of run `flow` succeeded (its owner is a few steps in, so
/// stopping it now interrupts it), for up to 60 s.
pub async fn wait_for_steps(
    store: &std::sync::Arc<dyn baton_core::store::Store>,
    flow: baton_core::FlowId,
    n: usize,
) {
    wait_until(
        &format!("{n} steps succeeded"),
        Duration::from_secs(60),
        || {
            let store = store.clone();
            async move {
                store.load_flow(flow).await.is_ok_and(|s| {
                    s.atoms
                        .iter()
                        .filter(|a| a.state == AtomState::Success)
                        .count()
                        >= n
                })
            }
        },
    )
    .await;
}

/// How many resources each step created, by run (its flow id, as text) and atom.
pub fn creates(effects: &[Effect]) -> BTreeMap<(String, String), u32> {
    let mut creates = BTreeMap::new();
    for e in effects.iter().filter(|e| e.action == "create") {
        *creates.entry((e.flow.clone(), e.atom.clone())).or_default() += 1;
    }
    creates
}

/// Checks, step by step, a run that ended `SUCCESS` (`snap`, with its `history`), named `what`
/// in failures: every atom came to `SUCCESS` exactly once, and made its side effect at least
/// once and at most once per attempt (`creates`, from [`creates`]). The history is the proof
/// that no step which had succeeded ran again: a step is executed once per attempt, attempts
/// only grow from `RUNNING` (a step caught mid-call), and each step succeeded once. Returns how
/// many attempts were re-runs.
pub fn check_steps(
    snap: &FlowSnapshot,
    history: &[Transition],
    creates: &BTreeMap<(String, String), u32>,
    what: &str,
) -> u32 {
    assert_eq!(snap.flow.state, FlowState::Success, "{what}");
    let mut reruns = 0;
    for a in &snap.atoms {
        assert_eq!(a.state, AtomState::Success, "{} of {what}", a.name);
        let successes = history
            .iter()
            .filter(|t| matches!(&t.change, Change::Atom { atom, to: AtomState::Success, .. } if atom == &a.name))
            .count();
        assert_eq!(
            successes, 1,
            "{} of {what} succeeded {successes} times",
            a.name
        );
        let made = creates
            .get(&(snap.flow.id.to_string(), a.name.clone()))
            .copied()
            .unwrap_or(0);
        assert!(
            (1..=a.attempt).contains(&made),
            "{} of {what} made {made} side effects in {} attempts",
            a.name,
            a.attempt
        );
        reruns += a.attempt - 1;
    }
    reruns
}

/// Whether job `id` is `COMPLETE`, for a test polling a board while conductors write to its
/// database: a transient error (SQLite busy past the call timeout on a loaded machine) is
/// "not yet"; any other error fails the test.
pub async fn is_complete(board: &dyn baton_core::JobBoard, id: baton_core::JobId) -> bool {
    match board.get(id).await {
        Ok(job) => job.state == baton_core::JobState::Complete,
        Err(e) if e.is_transient() => false,
        Err(e) => panic!("reading job {id}: {e}"),
    }
}
