//! A rolling upgrade as real processes: `baton conductor --demo` processes offering version 1
//! of `stack-create` are replaced one by one (SIGTERM, and one SIGKILL) by conductors offering
//! versions 1 and 2 while 20 stacks are created. Every run finishes on the version it was
//! created with, every job completes, and no step's side effect is repeated. And a job pinned
//! to a version no live conductor offers waits, visibly, for one that does.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_cli::demo::SideEffects;
use baton_core::board::{Job, JobBoard, JobQuery};
use baton_core::model::FactoryRef;
use baton_core::store::Store;
use baton_core::{AtomState, ConductorId, FlowId, JobId, JobState};
use support::fleet::{
    check_steps, conductor_command, creates, logs, output, poll_until, spawn, stop, stop_all,
    wait_for, wait_until, Conductor,
};
use support::{baton, pg_db, sqlite_db, stderr, stdout};

/// How many stacks the upgrade test creates.
const JOBS: usize = 20;
/// How long each fake cloud call takes: a version 1 stack is 7 calls one after another
/// (the servers boot side by side), so about 3 s.
const STEP_MS: u64 = 400;
/// The conductors' lease: how long the jobs of the killed conductor wait for another.
const LEASE_MS: u64 = 1500;
/// The atoms of a default stack (2 servers, 1 volume) at version 1: network, subnet, router,
/// 2 servers, the volume, its attachment, the check. Version 2 adds the security group.
const V1_ATOMS: usize = 8;

/// A conductor named `name` offering the demo factories' versions `versions` (`1`, `1,2`).
fn offering(db: &str, name: &str, effects: &Path, versions: &str) -> Conductor {
    let mut cmd = conductor_command(db, name, effects, LEASE_MS);
    cmd.args(["--demo-versions", versions]);
    spawn(cmd)
}

/// Posts `count` stack creates with `baton demo post`, pinned to `version` if given.
fn post(db: &str, count: usize, version: Option<u32>) -> Vec<JobId> {
    let params = serde_json::json!({ "step_ms": STEP_MS }).to_string();
    let count = count.to_string();
    let mut args = vec![
        "demo",
        "post",
        "--factory",
        "stack-create",
        "--params",
        &params,
        "--count",
        &count,
        "--json",
    ];
    let version = version.map(|v| v.to_string());
    if let Some(v) = &version {
        args.extend(["--version", v]);
    }
    let out = baton(db, &args);
    assert!(out.status.success(), "demo post: {}", stderr(&out));
    let jobs: Vec<Job> = serde_json::from_slice(&out.stdout).unwrap();
    jobs.into_iter().map(|j| j.id).collect()
}

/// The id under which the conductor process `child` registered, once it has.
async fn registered(board: &Arc<dyn JobBoard>, child: &Child) -> ConductorId {
    let pid = child.id();
    wait_for(
        &format!("conductor process {pid} registers"),
        Duration::from_secs(30),
        || {
            let board = board.clone();
            async move {
                let listed = board.conductors().await.unwrap();
                listed.iter().find(|c| c.pid == pid).map(|c| c.id)
            }
        },
    )
    .await
}

async fn all_jobs(board: &Arc<dyn JobBoard>) -> Vec<Job> {
    board.list(&JobQuery::all()).await.unwrap()
}

/// Whether `job`'s run is under way: at least one atom has succeeded, and two or more have
/// not. (Its conductor stopped now finishes the atoms running, which leaves at least one to
/// do: the only atoms that run side by side are the servers, and the volume comes after them.)
async fn under_way(store: &Arc<dyn Store>, job: &Job) -> bool {
    store.load_flow(job.flow()).await.is_ok_and(|s| {
        let done = s
            .atoms
            .iter()
            .filter(|a| a.state == AtomState::Success)
            .count();
        done >= 1 && s.atoms.len() - done >= 2
    })
}

/// Waits until conductor `owner` holds a job whose run is [`under_way`] (so that stopping
/// `owner` now interrupts it), and not one of `besides`; returns that job and all the jobs
/// `owner` holds.
async fn holding_a_run_under_way(
    board: &Arc<dyn JobBoard>,
    store: &Arc<dyn Store>,
    owner: ConductorId,
    besides: &BTreeSet<JobId>,
) -> (JobId, Vec<JobId>) {
    wait_for(
        &format!("conductor {owner} holds a run under way"),
        Duration::from_secs(30),
        || {
            let (board, store) = (board.clone(), store.clone());
            async move {
                let held = board
                    .list(&JobQuery::all().owner(owner).state(JobState::Claimed))
                    .await
                    .unwrap();
                for job in held.iter().filter(|j| !besides.contains(&j.id)) {
                    if under_way(&store, job).await {
                        return Some((job.id, held.iter().map(|j| j.id).collect()));
                    }
                }
                None
            }
        },
    )
    .await
}

/// The summary a conductor prints when it stops: its last line of output, as JSON.
fn summary(effects: &Path, name: &str) -> serde_json::Value {
    let out = output(effects, name);
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}'s summary {line:?}: {e}"))
}

/// Checks the run `flow` of a job pinned to `version` of `stack-create`, named `what` in
/// failures: it ended `SUCCESS` on that version, with that version's atoms, each of which
/// succeeded once and made at most one side effect per attempt (see [`check_steps`]). Returns
/// its atoms' names, sorted, and how many attempts were re-runs.
async fn check_run(
    store: &Arc<dyn Store>,
    flow: FlowId,
    version: u32,
    creates: &BTreeMap<(String, String), u32>,
    what: &str,
) -> (Vec<String>, u32) {
    let snap = store.load_flow(flow).await.unwrap();
    assert_eq!(
        snap.flow.factory,
        Some(FactoryRef::new("stack-create", version)),
        "{what}"
    );
    let mut atoms: Vec<String> = snap.atoms.iter().map(|a| a.name.clone()).collect();
    atoms.sort();
    assert_eq!(
        atoms.len(),
        V1_ATOMS + usize::from(version == 2),
        "{what} at version {version}: {atoms:?}"
    );
    assert_eq!(
        atoms.iter().any(|a| a == "security-group"),
        version == 2,
        "{what} at version {version}: {atoms:?}"
    );
    let history = store.history(flow).await.unwrap();
    let reruns = check_steps(&snap, &history, creates, what);
    (atoms, reruns)
}

/// Waits until job `id` is complete (a minute at most).
async fn completed(board: &Arc<dyn JobBoard>, id: JobId) -> Job {
    wait_until(
        &format!("job {id} is complete"),
        Duration::from_secs(60),
        || {
            let board = board.clone();
            async move { support::fleet::is_complete(&*board, id).await }
        },
    )
    .await;
    board.get(id).await.unwrap()
}

async fn rolling_upgrade(db: &str) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects.jsonl");
    let backends = baton_sql::open(db).await.unwrap();
    let (board, store) = (backends.board.clone(), backends.store.clone());
    let posted: BTreeSet<JobId> = post(db, JOBS, None).into_iter().collect();
    assert_eq!(posted.len(), JOBS);

    // The fleet of the old release: version 1 only.
    let old: Vec<(String, Conductor)> = (0..3)
        .map(|i| {
            let name = format!("old-{i}");
            let child = offering(db, &name, &effects, "1");
            (name, child)
        })
        .collect();
    let mut old_ids = Vec::new();
    for (_, child) in &old {
        old_ids.push(registered(&board, child).await);
    }
    wait_until(
        "the old conductors hold two jobs each",
        Duration::from_secs(30),
        || {
            let (board, old_ids) = (board.clone(), old_ids.clone());
            async move {
                let jobs = board
                    .list(&JobQuery::all().state(JobState::Claimed))
                    .await
                    .unwrap();
                old_ids
                    .iter()
                    .all(|id| jobs.iter().filter(|j| j.owner == Some(*id)).count() == 2)
            }
        },
    )
    .await;
    // Claimed by conductors offering version 1 only: pinned to it, before any other came.
    let first_claimed: BTreeSet<JobId> = all_jobs(&board)
        .await
        .iter()
        .filter(|j| {
            assert!(matches!(j.version, None | Some(1)), "{j:?}");
            j.version.is_some()
        })
        .map(|j| j.id)
        .collect();

    // The rolling upgrade: a conductor of the new release (versions 1 and 2) comes, then an
    // old one goes while it holds a run under way: SIGTERM (it suspends its runs and hands
    // their jobs back), or SIGKILL (they wait for their leases to run out).
    let mut fleet = Vec::new();
    let mut interrupted = BTreeSet::new();
    let mut claimed_beside_new = None;
    let mut killed = None;
    for (i, ((name, child), old_id)) in old.into_iter().zip(old_ids).enumerate() {
        let new = offering(db, &format!("new-{i}"), &effects, "1,2");
        registered(&board, &new).await;
        fleet.push(new);
        // The second is killed, running a job it claimed beside the new conductors (pinned
        // to version 1 all the same: the newest it offers); the others get SIGTERM.
        let kill = i == 1;
        let besides = if kill {
            first_claimed.clone()
        } else {
            BTreeSet::new()
        };
        let (under_way, held) = holding_a_run_under_way(&board, &store, old_id, &besides).await;
        if kill {
            claimed_beside_new = Some(under_way);
            let mut child = child;
            killed = Some(child.id());
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        } else {
            let status = stop(child);
            assert!(status.success(), "{name} exited with {status}");
            let summary = summary(&effects, &name);
            assert!(
                summary["abandoned"].as_u64() >= Some(1),
                "{name} stopped holding a run under way, yet handed nothing back: {summary}"
            );
        }
        for id in held {
            let job = board.get(id).await.unwrap();
            if !kill {
                // Handed back at once, not left for its lease to run out.
                assert_ne!(job.owner, Some(old_id), "{name} still owns {job:?}");
            }
            // Unless it ended with the step the conductor was at, someone else finishes it.
            if job.state != JobState::Complete {
                interrupted.insert(id);
            }
        }
        eprintln!("{name} gone at {:.1?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let upgraded = started.elapsed();
    let claimed_beside_new = claimed_beside_new.unwrap();
    assert!(
        interrupted.contains(&claimed_beside_new),
        "job {claimed_beside_new} was under way at the kill, yet complete after it"
    );
    // No old conductor is left to claim them: these will be pinned by the new release.
    let unpinned: BTreeSet<JobId> = all_jobs(&board)
        .await
        .iter()
        .filter(|j| j.version.is_none())
        .map(|j| j.id)
        .collect();
    // No live conductor offers version 1 only. (On SQLite the board lists the killed one until
    // it has been quiet for a while; it is dead all the same.)
    let listed = board.conductors().await.unwrap();
    for c in &fleet {
        let info = listed.iter().find(|i| i.pid == c.id()).expect("registered");
        assert!(
            info.offer.can_run("stack-create", Some(1))
                && info.offer.can_run("stack-create", Some(2)),
            "{info:?}"
        );
    }
    for info in &listed {
        let v1_only = !info.offer.can_run("stack-create", Some(2));
        assert!(!v1_only || Some(info.pid) == killed, "{info:?}");
    }

    let at_rest = poll_until(Duration::from_secs(180), || {
        let board = board.clone();
        async move {
            all_jobs(&board).await.iter().all(|j| {
                matches!(
                    j.state,
                    JobState::Complete | JobState::Parked | JobState::Trashed
                )
            })
        }
    })
    .await;
    if !at_rest {
        let waiting: Vec<String> = all_jobs(&board)
            .await
            .iter()
            .filter(|j| !j.state.is_terminal())
            .map(|j| format!("{} {} v{:?} owner {:?}", j.id, j.state, j.version, j.owner))
            .collect();
        panic!(
            "not every job came to rest: {waiting:#?}\n{}",
            logs(&effects)
        );
    }
    stop_all(fleet);

    let jobs = all_jobs(&board).await;
    assert_eq!(jobs.iter().map(|j| j.id).collect::<BTreeSet<_>>(), posted);
    let unfinished: Vec<String> = jobs
        .iter()
        .filter(|j| j.state != JobState::Complete)
        .map(|j| format!("{} {}: {:?}", j.id, j.state, j.outcome))
        .collect();
    assert!(
        unfinished.is_empty(),
        "jobs not complete: {unfinished:#?}\n{}",
        logs(&effects)
    );

    // Side effects, by run and atom: how many creates, and the resources left standing.
    let effects_log = SideEffects::read_file(&effects).unwrap();
    let creates = creates(&effects_log);
    let mut last_by_key = BTreeMap::new();
    for e in effects_log.iter().filter(|e| e.is_call()) {
        assert_eq!(e.action, "create", "nothing is deleted: {e:?}");
        last_by_key.insert(e.key.clone(), e);
    }
    let mut standing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in last_by_key.values() {
        standing
            .entry(e.flow.clone())
            .or_default()
            .push(e.atom.clone());
    }

    let (mut v1, mut v2, mut reruns) = (0, 0, 0);
    for job in &jobs {
        let name = format!("job {}", job.id);
        assert_eq!(
            job.outcome.as_ref().unwrap()["state"],
            serde_json::json!("SUCCESS"),
            "{name}"
        );
        let version = job.version.expect("pinned");
        match version {
            1 => v1 += 1,
            2 => v2 += 1,
            v => panic!("{name} pinned to version {v}"),
        }
        if first_claimed.contains(&job.id) || interrupted.contains(&job.id) {
            assert_eq!(version, 1, "{name} was claimed first by an old conductor");
        }
        if interrupted.contains(&job.id) {
            assert!(job.attempts >= 2, "{name} was taken over: {job:?}");
        }
        if unpinned.contains(&job.id) {
            assert_eq!(version, 2, "{name} was claimed first by a new conductor");
        }

        let (atoms, rerun) = check_run(&store, job.flow(), version, &creates, &name).await;
        reruns += rerun;
        // The stack keeps what it built: one resource for each of its atoms, no more.
        let mut kept = standing.remove(&job.flow().to_string()).unwrap_or_default();
        kept.sort();
        assert_eq!(kept, atoms, "{name}'s resources");
    }
    assert!(
        standing.is_empty(),
        "resources of no job's run: {standing:?}"
    );
    assert!(
        v1 > 0 && v2 > 0,
        "{v1} runs on version 1, {v2} on version 2"
    );
    eprintln!(
        "upgraded in {upgraded:.1?} with {} jobs left unpinned; {v1} runs on version 1, {v2} on \
         version 2; {} taken over; {reruns} steps re-run; {:.1?} in all",
        unpinned.len(),
        interrupted.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rolling_upgrade_finishes_every_run_on_its_version() {
    let db = sqlite_db();
    rolling_upgrade(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rolling_upgrade_finishes_every_run_on_its_version() {
    let Some(db) = pg_db().await else { return };
    rolling_upgrade(&db.url).await;
}

/// A fleet offering only version 2 leaves a job pinned to version 1 waiting, unclaimed and
/// saying why; a conductor offering version 1, started later, runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_job_pinned_to_a_version_nobody_offers_waits_for_a_conductor_that_does() {
    let db = sqlite_db();
    let db = db.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects.jsonl");
    let backends = baton_sql::open(db).await.unwrap();
    let (board, store) = (backends.board.clone(), backends.store.clone());
    let mut fleet: Vec<Conductor> = (0..2)
        .map(|i| offering(db, &format!("new-{i}"), &effects, "2"))
        .collect();
    for c in &fleet {
        registered(&board, c).await;
    }
    // The pinned job is posted first: a conductor that could claim it would take it before
    // the other.
    let pinned = post(db, 1, Some(1))[0];
    let other = post(db, 1, None)[0];
    assert_eq!(completed(&board, other).await.version, Some(2));

    let waiting = board.get(pinned).await.unwrap();
    assert_eq!(
        (
            waiting.state,
            waiting.attempts,
            waiting.version,
            waiting.owner
        ),
        (JobState::Unclaimed, 0, Some(1), None),
        "{waiting:?}"
    );
    let list = baton(db, &["jobs", "list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let listed = stdout(&list);
    let line = |id: JobId| {
        listed
            .lines()
            .find(|l| l.contains(&id.to_string()))
            .unwrap_or_else(|| panic!("job {id} is not listed: {listed}"))
            .to_owned()
    };
    assert!(
        line(pinned).contains("waits: no live conductor offers stack-create v1"),
        "{listed}"
    );
    assert!(!line(other).contains("waits"), "{listed}");

    // A conductor that still has version 1 comes, and runs it on version 1.
    fleet.push(offering(db, "old", &effects, "1"));
    let done = completed(&board, pinned).await;
    stop_all(fleet);
    assert_eq!(
        done.outcome.as_ref().unwrap()["state"],
        "SUCCESS",
        "{done:?}"
    );
    assert_eq!(
        done.attempts, 1,
        "claimed once, by the conductor offering it"
    );
    let creates = creates(&SideEffects::read_file(&effects).unwrap());
    for (id, version) in [(pinned, 1), (other, 2)] {
        check_run(
            &store,
            FlowId::for_job(id),
            version,
            &creates,
            &format!("job {id}"),
        )
        .await;
    }
}
