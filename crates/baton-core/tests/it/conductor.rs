//! Conductors on the memory board: running jobs, bad jobs, shutdown, lost claims, races.

use std::sync::Arc;
use std::time::Duration;

use baton_core::board::{JobBoard, JobQuery};
use baton_core::conductor::Options;
use baton_core::store::Store;
use baton_core::{
    Atom, Blueprint, Conductor, ConductorId, Engine, Flow, FlowState, JobState, MemoryJobBoard,
    MemoryStore, NewJob, Registry, RunOptions,
};
use baton_testkit::board::offer;
use baton_testkit::{Action, Log, Phase, Probe};
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub(super) fn registry(log: &Log, step: Duration) -> Registry {
    let log = log.clone();
    Registry::new()
        .register("steps", 1, move |params| {
            let n = params["steps"]
                .as_u64()
                .ok_or_else(|| "`steps` must be a number".to_owned())?;
            let mut flow = Flow::linear("steps");
            for i in 0..n {
                flow = flow.add(Atom::task(format!("s{i}"), Probe::new(&log).delay(step)));
            }
            Ok(Blueprint::new(flow))
        })
        .unwrap()
}

pub(super) fn fast_options() -> Options {
    let mut o = Options::default();
    o.lease = Duration::from_millis(600);
    o.heartbeat = Duration::from_millis(100);
    o.poll = Duration::from_millis(50);
    o.drain_timeout = Duration::from_secs(5);
    o
}

fn conductor(board: &MemoryJobBoard, store: &MemoryStore, registry: Registry) -> Conductor {
    Conductor::new(
        Arc::new(board.clone()),
        Engine::new(store.clone()),
        registry,
    )
    .with_options(fast_options())
    .unwrap()
}

pub(super) async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn all_jobs_in(board: &MemoryJobBoard, state: JobState, n: usize) -> bool {
    board
        .list(&JobQuery::all().state(state))
        .await
        .unwrap()
        .len()
        == n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conductor_runs_posted_jobs_to_completion() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    for i in 0..5 {
        board
            .post(NewJob::new(format!("job-{i}"), "steps").params(json!({"steps": 3})))
            .await
            .unwrap();
    }
    let shutdown = CancellationToken::new();
    let c = tokio::spawn(
        conductor(&board, &store, registry(&log, Duration::ZERO)).run(shutdown.clone()),
    );
    wait_until("every job is complete", || {
        all_jobs_in(&board, JobState::Complete, 5)
    })
    .await;
    shutdown.cancel();
    let summary = c.await.unwrap().unwrap();
    assert_eq!((summary.claimed, summary.consumed), (5, 5));
    for job in board.list(&JobQuery::all()).await.unwrap() {
        assert_eq!(job.outcome.as_ref().unwrap()["state"], json!("SUCCESS"));
        let flow = store.load_flow(job.flow()).await.unwrap();
        assert_eq!(flow.flow.state, FlowState::Success);
        assert_eq!(flow.flow.meta["job"], json!(job.id));
    }
    assert_eq!(log.sequence(Action::Execute, Phase::Ok).len(), 15);
    assert!(
        board.conductors().await.unwrap().is_empty(),
        "the conductor deregistered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_are_parked_and_jobs_nobody_can_run_wait() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    let unknown = board
        .post(NewJob::new("u", "no-such-factory"))
        .await
        .unwrap();
    let bad = board
        .post(NewJob::new("b", "steps").params(json!({"steps": "many"})))
        .await
        .unwrap();
    let good = board
        .post(NewJob::new("g", "steps").params(json!({"steps": 1})))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let c = tokio::spawn(
        conductor(&board, &store, registry(&log, Duration::ZERO)).run(shutdown.clone()),
    );
    wait_until(
        "the bad job is parked and the good one complete",
        || async {
            board.get(bad.id).await.unwrap().state == JobState::Parked
                && board.get(good.id).await.unwrap().state == JobState::Complete
        },
    )
    .await;
    shutdown.cancel();
    let summary = c.await.unwrap().unwrap();
    assert_eq!((summary.parked, summary.consumed), (1, 1));
    // Nobody offers its factory: it waits, never claimed, never consumed.
    let unknown = board.get(unknown.id).await.unwrap();
    assert_eq!((unknown.state, unknown.attempts), (JobState::Unclaimed, 0));
    let bad = board.get(bad.id).await.unwrap();
    let outcome = bad.outcome.unwrap();
    assert_eq!(outcome["parked"], "build", "{outcome}");
    assert!(
        outcome["error"]
            .as_str()
            .unwrap()
            .contains("`steps` must be a number"),
        "{outcome}"
    );
    assert_eq!(bad.attempts, 1);
    assert_eq!(
        bad.version,
        Some(1),
        "the claim pinned the newest version offered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_suspends_flows_and_another_conductor_finishes_them() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    let job = board
        .post(NewJob::new("long", "steps").params(json!({"steps": 20})))
        .await
        .unwrap();
    let first = CancellationToken::new();
    let c1 = tokio::spawn(
        conductor(&board, &store, registry(&log, Duration::from_millis(20))).run(first.clone()),
    );
    wait_until("a few steps ran", || {
        let log = log.clone();
        async move { log.sequence(Action::Execute, Phase::Ok).len() >= 3 }
    })
    .await;
    first.cancel();
    let summary = c1.await.unwrap().unwrap();
    assert_eq!(summary.abandoned, 1);
    assert_eq!(board.get(job.id).await.unwrap().state, JobState::Unclaimed);
    assert_eq!(
        store.load_flow(job.flow()).await.unwrap().flow.state,
        FlowState::Suspended
    );

    let second = CancellationToken::new();
    let c2 = tokio::spawn(
        conductor(&board, &store, registry(&log, Duration::from_millis(1))).run(second.clone()),
    );
    wait_until("the job is complete", || {
        all_jobs_in(&board, JobState::Complete, 1)
    })
    .await;
    second.cancel();
    c2.await.unwrap().unwrap();
    let runs = log.successes(Action::Execute);
    assert_eq!(runs.len(), 20);
    assert!(runs.values().all(|&n| n == 1), "a step ran twice: {runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conductors_racing_for_jobs_run_each_exactly_once() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    for i in 0..20 {
        board
            .post(NewJob::new(format!("job-{i}"), "steps").params(json!({"steps": 2})))
            .await
            .unwrap();
    }
    let shutdown = CancellationToken::new();
    let mut fleet = tokio::task::JoinSet::new();
    for _ in 0..3 {
        fleet.spawn(
            conductor(&board, &store, registry(&log, Duration::from_millis(2)))
                .run(shutdown.clone()),
        );
    }
    wait_until("every job is complete", || {
        all_jobs_in(&board, JobState::Complete, 20)
    })
    .await;
    shutdown.cancel();
    let mut consumed = 0;
    while let Some(s) = fleet.join_next().await {
        consumed += s.unwrap().unwrap().consumed;
    }
    assert_eq!(consumed, 20);
    let runs = log.successes(Action::Execute);
    // Steps are named s0, s1 in every job's flow: 20 jobs each ran each step once.
    assert_eq!(runs.get("s0"), Some(&20));
    assert_eq!(runs.get("s1"), Some(&20));
}

/// An owner that stalls past its lease (as if paused) loses the job to another conductor, and
/// when it wakes, the store refuses everything it tries to write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_owner_cannot_write_after_losing_its_claim() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    let job = board
        .post(NewJob::new("contested", "steps").params(json!({"steps": 2})))
        .await
        .unwrap();

    // The zombie: claims with a short lease, starts the flow, and stalls inside a task without
    // heartbeating.
    let claim = board
        .claim(ConductorId::new(), Duration::from_millis(100), &offer())
        .await
        .unwrap()
        .unwrap();
    let stall = Flow::linear("steps")
        .add(Atom::task(
            "s0",
            Probe::new(&log).delay(Duration::from_millis(800)),
        ))
        .add(Atom::task("s1", Probe::new(&log)))
        .compile()
        .unwrap();
    let engine = Engine::new(store.clone());
    engine
        .create_with(
            &stall,
            Default::default(),
            baton_core::CreateOptions::new()
                .id(job.flow())
                .fence(claim.fence),
        )
        .await
        .unwrap();
    let flow_id = job.flow();
    let zombie = tokio::spawn({
        let engine = engine.clone();
        let flow = stall.clone();
        async move {
            engine
                .run_with(&flow, flow_id, RunOptions::new().fence(claim.fence))
                .await
        }
    });

    // Meanwhile a healthy conductor takes over once the lease has expired and finishes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shutdown = CancellationToken::new();
    let healthy = tokio::spawn(
        conductor(&board, &store, registry(&log, Duration::ZERO)).run(shutdown.clone()),
    );
    wait_until("the job is complete", || {
        all_jobs_in(&board, JobState::Complete, 1)
    })
    .await;
    shutdown.cancel();
    healthy.await.unwrap().unwrap();
    let history_before = store.history(job.flow()).await.unwrap();

    // The zombie wakes: its write is fenced, and the flow's history does not move.
    let err = zombie.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            baton_core::engine::Error::Store(baton_core::store::Error::Fenced { .. })
        ),
        "{err}"
    );
    assert_eq!(store.history(job.flow()).await.unwrap(), history_before);
    assert_eq!(
        store.load_flow(job.flow()).await.unwrap().flow.state,
        FlowState::Success
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trashing_a_running_job_halts_its_flow() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    let job = board
        .post(NewJob::new("doomed", "steps").params(json!({"steps": 50})))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let c = tokio::spawn(
        conductor(&board, &store, registry(&log, Duration::from_millis(20))).run(shutdown.clone()),
    );
    wait_until("a step ran", || {
        let log = log.clone();
        async move { !log.sequence(Action::Execute, Phase::Ok).is_empty() }
    })
    .await;
    board
        .trash(job.id, None, json!({"by": "operator"}))
        .await
        .unwrap();
    wait_until("the conductor let go", || {
        let store = store.clone();
        let job = job.clone();
        async move {
            let h1 = store.history(job.flow()).await.unwrap().len();
            tokio::time::sleep(Duration::from_millis(300)).await;
            store.history(job.flow()).await.unwrap().len() == h1
        }
    })
    .await;
    shutdown.cancel();
    let summary = c.await.unwrap().unwrap();
    assert_eq!(summary.lost, 1);
    let flow = store.load_flow(job.flow()).await.unwrap();
    assert_ne!(flow.flow.state, FlowState::Success);
    assert!(log.sequence(Action::Execute, Phase::Ok).len() < 50);
}

/// A conductor claims again only when the board may have work for it; with polling all but
/// off (a minute), what it runs must still come at once: jobs posted while it is busy, and
/// the next job of a key when the one before ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_polling_off_wake_ups_alone_bring_the_work() {
    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    let mut options = fast_options();
    options.poll = Duration::from_secs(60);
    options.concurrency = 2;
    let c = Conductor::new(
        Arc::new(board.clone()),
        Engine::new(store.clone()),
        registry(&log, Duration::from_millis(20)),
    )
    .with_options(options)
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(c.run(shutdown.clone()));
    let started = std::time::Instant::now();

    // Three jobs of one key (one at a time, each waking the conductor for the next as it
    // ends), and jobs without a key posted while it is busy with them.
    for i in 0..3 {
        board
            .post(
                NewJob::new(format!("keyed-{i}"), "steps")
                    .key("stack-1")
                    .params(json!({"steps": 3})),
            )
            .await
            .unwrap();
    }
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        board
            .post(NewJob::new(format!("free-{i}"), "steps").params(json!({"steps": 2})))
            .await
            .unwrap();
    }
    wait_until("every job is complete", || {
        all_jobs_in(&board, JobState::Complete, 7)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the conductor waited for a poll"
    );
    shutdown.cancel();
    let summary = running.await.unwrap().unwrap();
    assert_eq!(summary.claimed, 7);
}

/// A conductor with a retention deletes what ended longer ago than it, beside its work, and
/// counts it; what is open, or ended too recently, stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conductor_with_a_retention_purges_what_ended_long_ago() {
    use baton_core::model::{AtomKind, AtomRecord, Batch, FlowRecord, Write};
    use baton_core::store::FlowQuery;
    use baton_core::{FlowId, Intention};

    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    // Two runs that ended an hour ago, one still running since then.
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut old = Vec::new();
    for end in [FlowState::Success, FlowState::Failure, FlowState::Running] {
        let flow = FlowRecord {
            id: FlowId::new(),
            name: "old".into(),
            state: FlowState::Pending,
            intention: Intention::Execute,
            inputs: Default::default(),
            meta: json!({}),
            factory: None,
            fingerprint: None,
            deadline: None,
            created_at: an_hour_ago,
            updated_at: an_hour_ago,
        };
        store
            .create_flow(&flow, &[AtomRecord::pending("a", AtomKind::Task)], None)
            .await
            .unwrap();
        let mut moves = vec![(FlowState::Pending, FlowState::Running)];
        if end != FlowState::Running {
            moves.push((FlowState::Running, end));
        }
        for (from, to) in moves {
            let mut batch = Batch::new(flow.id, None);
            batch.at = an_hour_ago;
            batch.writes.push(Write::Flow {
                from,
                to,
                intention: Intention::Execute,
            });
            store.commit(&batch).await.unwrap();
        }
        old.push(flow.id);
    }
    // Two jobs that end now.
    for i in 0..2 {
        board
            .post(NewJob::new(format!("job-{i}"), "steps").params(json!({"steps": 1})))
            .await
            .unwrap();
    }
    let mut options = fast_options();
    options.retention = Some(Duration::ZERO);
    options.retention_every = Duration::from_millis(20);
    let shutdown = CancellationToken::new();
    let c = tokio::spawn(
        Conductor::new(
            Arc::new(board.clone()),
            Engine::new(store.clone()),
            registry(&log, Duration::ZERO),
        )
        .with_options(options)
        .unwrap()
        .run(shutdown.clone()),
    );
    wait_until("the ended jobs and the old ended runs are gone", || async {
        board.list(&JobQuery::all()).await.unwrap().is_empty()
            && store.load_flow(old[0]).await.is_err()
            && store.load_flow(old[1]).await.is_err()
    })
    .await;
    shutdown.cancel();
    let summary = c.await.unwrap().unwrap();
    assert_eq!((summary.consumed, summary.purged_jobs), (2, 2));
    assert_eq!(summary.purged_runs, 2);
    // The run still running, and the jobs' runs that ended just now, stay.
    let left = store.list_flows(&FlowQuery::all()).await.unwrap();
    assert_eq!(left.len(), 3, "{left:?}");
    assert_eq!(
        store.load_flow(old[2]).await.unwrap().flow.state,
        FlowState::Running
    );
}

/// Options that would make a conductor panic (a zero heartbeat), spin (a zero poll), lose its
/// claims (a zero lease, a heartbeat near the lease), run nothing (no concurrency) or overflow
/// a clock are refused when the conductor is built, naming the option and what would work.
#[test]
fn options_that_cannot_work_are_refused_when_the_conductor_is_built() {
    use baton_core::conductor::InvalidOptions;
    let ms = Duration::from_millis;
    let year = Options::MAX_DURATION;
    type Change = fn(&mut Options);
    let cases: Vec<(Change, InvalidOptions, &str)> = vec![
        (
            |o| o.concurrency = 0,
            InvalidOptions::ZeroConcurrency,
            "concurrency 0 would run no job: give 1 or more",
        ),
        (
            |o| o.heartbeat = Duration::ZERO,
            InvalidOptions::TooShort {
                option: "heartbeat",
                value: Duration::ZERO,
                min: ms(1),
            },
            "heartbeat 0ms is too short: give 1ms or more",
        ),
        (
            |o| o.lease = Duration::ZERO,
            InvalidOptions::TooShort {
                option: "lease",
                value: Duration::ZERO,
                min: ms(1),
            },
            "lease 0ms is too short: give 1ms or more",
        ),
        (
            |o| o.poll = Duration::from_micros(500),
            InvalidOptions::TooShort {
                option: "poll",
                value: Duration::from_micros(500),
                min: ms(1),
            },
            "poll 500µs is too short: give 1ms or more",
        ),
        (
            |o| o.retention_every = Duration::ZERO,
            InvalidOptions::TooShort {
                option: "retention_every",
                value: Duration::ZERO,
                min: ms(1),
            },
            "retention_every 0ms is too short: give 1ms or more",
        ),
        (
            |o| o.retention_every = Duration::MAX,
            InvalidOptions::TooLong {
                option: "retention_every",
                value: Duration::MAX,
                max: Options::MAX_DURATION,
            },
            "retention_every",
        ),
        (
            |o| o.lease = Options::MAX_DURATION + Duration::from_millis(1),
            InvalidOptions::TooLong {
                option: "lease",
                value: year + ms(1),
                max: year,
            },
            "lease 31536000001ms is too long: give 31536000s or less",
        ),
        (
            |o| o.drain_timeout = Duration::MAX,
            InvalidOptions::TooLong {
                option: "drain_timeout",
                value: Duration::MAX,
                max: year,
            },
            "drain_timeout",
        ),
        (
            |o| o.gather = Duration::from_secs(3600),
            InvalidOptions::TooLong {
                option: "gather",
                value: Duration::from_secs(3600),
                max: Options::MAX_HEARTBEAT,
            },
            "gather 3600s is too long: give 200s or less",
        ),
        (
            |o| {
                o.lease = Duration::from_secs(1);
                o.heartbeat = Duration::from_secs(5);
            },
            InvalidOptions::HeartbeatTooSlow {
                heartbeat: Duration::from_secs(5),
                lease: Duration::from_secs(1),
                max_heartbeat: ms(333),
                min_lease: Duration::from_secs(15),
            },
            "heartbeat 5s is more than a third of the lease 1s, so one late heartbeat would lose \
             the claim: give a heartbeat of 333ms or less, or a lease of 15s or more",
        ),
        (
            |o| {
                o.lease = Duration::from_secs(10);
                o.heartbeat = Duration::from_millis(3334);
            },
            InvalidOptions::HeartbeatTooSlow {
                heartbeat: ms(3334),
                lease: Duration::from_secs(10),
                max_heartbeat: ms(3333),
                min_lease: ms(10002),
            },
            "give a heartbeat of 3333ms or less, or a lease of 10002ms or more",
        ),
        (
            |o| o.self_fence_margin = Some(Duration::ZERO),
            InvalidOptions::TooShort {
                option: "self_fence_margin",
                value: Duration::ZERO,
                min: ms(1),
            },
            "self_fence_margin 0ms is too short: give 1ms or more",
        ),
        (
            |o| {
                o.lease = Duration::from_secs(3);
                o.heartbeat = Duration::from_millis(500);
                o.self_fence_margin = Some(Duration::from_millis(2500));
            },
            InvalidOptions::MarginTooLong {
                margin: ms(2500),
                lease: Duration::from_secs(3),
                heartbeat: ms(500),
                max: Duration::from_secs(2),
            },
            "self_fence_margin 2500ms leaves less than two heartbeats (500ms) of the lease 3s: \
             give a margin of 2s or less, or a longer lease",
        ),
    ];
    for (change, expected, message) in cases {
        let mut options = Options::default();
        change(&mut options);
        let err = options.validate().unwrap_err();
        assert_eq!(err, expected);
        assert!(err.to_string().contains(message), "{err}");
        let (store, log) = (MemoryStore::new(), Log::new());
        let built = Conductor::new(
            Arc::new(MemoryJobBoard::new(&store)),
            Engine::new(store.clone()),
            registry(&log, Duration::ZERO),
        )
        .with_options(options);
        assert_eq!(built.unwrap_err(), expected);
    }
}

/// The defaults and the extremes each rule allows are accepted, and a conductor at the upper
/// extremes runs a job and stops without overflowing a clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_defaults_and_the_limits_of_each_rule_are_accepted() {
    let ms = Duration::from_millis;
    Options::default().validate().unwrap();
    let mut least = Options::default();
    least.concurrency = 1;
    least.lease = ms(3);
    least.heartbeat = ms(1);
    least.poll = ms(1);
    least.drain_timeout = Duration::ZERO;
    least.gather = Duration::ZERO;
    least.retention = Some(Duration::ZERO);
    least.retention_every = ms(1);
    least.validate().unwrap();
    let mut most = Options::default();
    most.concurrency = usize::MAX;
    most.lease = Options::MAX_DURATION;
    most.heartbeat = Options::MAX_HEARTBEAT;
    most.poll = Options::MAX_DURATION;
    most.drain_timeout = Options::MAX_DURATION;
    most.gather = Options::MAX_HEARTBEAT;
    most.retention = Some(Duration::MAX);
    most.retention_every = Options::MAX_DURATION;
    most.validate().unwrap();

    let (store, log) = (MemoryStore::new(), Log::new());
    let board = MemoryJobBoard::new(&store);
    let conductor = Conductor::new(
        Arc::new(board.clone()),
        Engine::new(store.clone()),
        registry(&log, Duration::ZERO),
    )
    .with_options(most)
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(conductor.run(shutdown.clone()));
    board
        .post(NewJob::new("one", "steps").params(json!({"steps": 2})))
        .await
        .unwrap();
    wait_until("the job is complete", || {
        all_jobs_in(&board, JobState::Complete, 1)
    })
    .await;
    shutdown.cancel();
    let summary = running.await.unwrap().unwrap();
    assert_eq!((summary.claimed, summary.consumed), (1, 1));
}
