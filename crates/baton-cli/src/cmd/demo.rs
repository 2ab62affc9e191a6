//! `baton demo` and `baton conductor --demo`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_core::board::{JobBoard, JobQuery, NewJob};
use baton_core::conductor::{InvalidOptions, Options, Summary};
use baton_core::model::Change;
use baton_core::registry::BuildError;
use baton_core::{AtomState, Conductor, Engine, EventKind, FlowState, JobState};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{json_arg, Database, Json};
use crate::args::{ConductorArgs, DemoArgs, DemoCommand, DemoPostArgs};
use crate::demo::{registry, SideEffects};
use crate::error::{CliError, Result};
use crate::exit;
use crate::hint::{self, Invocation};
use crate::output::{self, Style};

/// Runs the demo; returns the exit code.
pub(crate) async fn demo(db: &Database, args: DemoArgs, style: Style) -> Result<i32> {
    if let Some(DemoCommand::Post(post)) = args.post {
        self::post(db, post, style).await?;
        return Ok(exit::OK);
    }
    let mut params = json!({
        "stack": args.stack,
        "servers": args.servers,
        "volumes": args.volumes,
        "step_ms": args.step_ms,
    });
    if let Some(atom) = &args.fail_at {
        params["fail_at"] = json!(atom);
    }
    let effects = SideEffects::memory();
    let registry = demo_registry(effects.clone())?;
    let (flow, _) = registry
        .build_newest("stack-create", &params)
        .map_err(refused)?;
    if let Some(atom) = &args.fail_at {
        if !flow.contains(atom) {
            let names: Vec<&str> = flow.atom_names().collect();
            return Err(CliError::new(
                exit::BAD_INPUT,
                format!(
                    "--fail-at {atom:?} names no atom of the stack; its atoms are: {}",
                    names.join(", ")
                ),
            ));
        }
    }
    let total = flow.len();
    let mut options = Options::default();
    options.name = "demo".into();
    options.poll = Duration::from_millis(100);
    let token = match args.serve {
        Some(_) => super::serve::admin_token(None)?,
        None => None,
    };
    // With the console beside it, the run's steps are announced (PostgreSQL), so its pages
    // follow them at once rather than at the console's next poll.
    let backends = db
        .open_with(baton_sql::OpenOptions::new().announce_steps(args.serve.is_some()))
        .await?;
    // The console, if asked for, beside the run: bound before the job is posted, so its link
    // is printed with the job.
    let console_shutdown = CancellationToken::new();
    let mut console = tokio::task::JoinSet::new();
    let serving = match args.serve {
        Some(addr) => {
            let console_of = super::serve::console(db, backends.clone(), token);
            let read_only = console_of.is_read_only();
            let bound = console_of
                .bind(addr)
                .await
                .map_err(super::serve::console_error)?;
            let addr = bound.local_addr().map_err(|e| {
                CliError::new(exit::INTERNAL, "cannot read the console's address").caused_by(&e)
            })?;
            console.spawn(bound.run(console_shutdown.clone()));
            Some((addr, read_only))
        }
        None => None,
    };
    let board = backends.board;
    let engine = Engine::from_arc(backends.store);
    let mut events = engine.subscribe();
    let conductor = Conductor::new(board.clone(), engine, registry)
        .with_options(options)
        .map_err(|e| CliError::new(exit::INTERNAL, format!("the demo's conductor: {e}")))?;
    let job = board
        .post(
            NewJob::new(format!("stack-create {}", args.stack), "stack-create")
                .params(params)
                .key(format!("stack:{}", args.stack)),
        )
        .await?;
    outln!(
        "posted job {} to create stack {:?} ({} atoms){}",
        job.id,
        args.stack,
        total,
        args.fail_at
            .as_deref()
            .map(|a| format!(", with {a} set to fail"))
            .unwrap_or_default()
    );
    if let Some((addr, read_only)) = serving {
        outln!(
            "console: http://{addr}/flows/{} ({})",
            job.flow(),
            if read_only {
                "read-only: set BATON_ADMIN_TOKEN to act on it"
            } else {
                "actions take the admin token in BATON_ADMIN_TOKEN"
            }
        );
    }

    let shutdown = CancellationToken::new();
    let mut running = tokio::task::JoinSet::new();
    running.spawn(conductor.run(shutdown.clone()));

    let started = Instant::now();
    let mut done = 0usize;
    let mut check = tokio::time::interval(Duration::from_millis(200));
    let mut warned = false;
    let finished = loop {
        tokio::select! {
            Some(event) = events.next() => {
                let event = match event {
                    Ok(event) => event,
                    Err(lagged) => {
                        outln!("  ({lagged})");
                        continue;
                    }
                };
                if event.flow != job.flow() {
                    continue;
                }
                if let EventKind::Transition(change) = event.kind {
                    match change {
                        Change::Atom { atom, from, to, attempt } => {
                            // Count what stands built: a success adds one, undoing a success
                            // takes it away again.
                            if to == AtomState::Success {
                                done += 1;
                            }
                            if from == AtomState::Success && to != AtomState::Success {
                                done -= 1;
                            }
                            outln!("  [{done:>2}/{total}] {atom:<14} {:<10} (attempt {attempt})", paint(style, to.as_str()));
                        }
                        Change::Flow { to, .. } => outln!("  flow {}", paint(style, to.as_str())),
                    }
                }
            }
            Some(ended) = running.join_next() => {
                // Only an error stops the conductor before it is asked to.
                conductor_ended(ended)?;
                return Err(CliError::new(exit::INTERNAL, "the conductor stopped before the job ended"));
            }
            Some(ended) = console.join_next() => {
                console_ended(ended)?;
                return Err(CliError::new(exit::INTERNAL, "the console stopped before the job ended"));
            }
            _ = check.tick() => {
                let current = board.get(job.id).await?;
                if current.state.is_terminal() {
                    break current;
                }
                if !warned && current.state == JobState::Unclaimed && started.elapsed() > Duration::from_secs(3) {
                    warned = true;
                    outln!("  (waiting: an earlier job for stack {:?} is unfinished and runs first)", args.stack);
                }
            }
        }
    };
    shutdown.cancel();
    while let Some(ended) = running.join_next().await {
        conductor_ended(ended)?;
    }

    let outcome = finished.outcome.clone().unwrap_or_default();
    let state = outcome["state"].as_str().unwrap_or("UNKNOWN").to_owned();
    outln!(
        "\nstack {:?}: flow {} ended {} in {:.1}s",
        args.stack,
        job.flow(),
        paint(style, &state),
        started.elapsed().as_secs_f64()
    );
    if let Some(failures) = outcome["failures"].as_array() {
        for f in failures {
            outln!("  failure: {}", f.as_str().unwrap_or_default());
        }
    }
    let recorded = effects.recorded();
    let created = recorded.iter().filter(|e| e.action == "create").count();
    let deleted = recorded.iter().filter(|e| e.action == "delete").count();
    outln!(
        "fake cloud: {created} resources created, {deleted} deleted, {} left",
        created.saturating_sub(deleted)
    );
    if serving.is_none() {
        let (db_args, _) = db.hint_args();
        outln!(
            "\nwatch a run in a browser: {} {db_args}demo --serve",
            Invocation::current().prefix
        );
    }
    outln!("\ninspect it:");
    for line in hints(
        &Invocation::current(),
        db,
        &[
            format!("flows show {}", job.flow()),
            format!("jobs show {}", job.id),
        ],
    ) {
        outln!("  {line}");
    }

    if let Some((addr, _)) = serving {
        outln!(
            "\nthe console goes on serving at http://{addr}/flows/{}; SIGINT (Ctrl-C) or SIGTERM \
             stops it",
            job.flow()
        );
        tokio::select! {
            _ = super::signalled(&console_shutdown) => {}
            Some(ended) = console.join_next() => console_ended(ended)?,
        }
        console_shutdown.cancel();
        while let Some(ended) = console.join_next().await {
            console_ended(ended)?;
        }
    }

    let expected = if args.fail_at.is_some() {
        FlowState::Reverted
    } else {
        FlowState::Success
    };
    Ok(if state == expected.as_str() {
        exit::OK
    } else {
        exit::FLOW_FAILED
    })
}

/// How the demo's conductor task ended, as the command's error if it failed.
fn conductor_ended(
    ended: std::result::Result<
        std::result::Result<Summary, baton_core::conductor::Error>,
        tokio::task::JoinError,
    >,
) -> Result<()> {
    match ended {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(conductor_failed(&e)),
        Err(e) => Err(CliError::new(
            exit::INTERNAL,
            format!("the conductor crashed: {e}"),
        )),
    }
}

/// How the demo's console ended, as the command's error if it failed.
fn console_ended(
    ended: std::result::Result<
        std::result::Result<(), baton_console::Error>,
        tokio::task::JoinError,
    >,
) -> Result<()> {
    match ended {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(super::serve::console_error(e)),
        Err(e) => Err(CliError::new(
            exit::INTERNAL,
            format!("the console crashed: {e}"),
        )),
    }
}

fn conductor_failed(e: &baton_core::conductor::Error) -> CliError {
    CliError::new(exit::INTERNAL, format!("the conductor failed: {e}")).caused_by(e)
}

fn paint(style: Style, state: &str) -> String {
    if !style.color {
        return state.to_owned();
    }
    let code = match state {
        "SUCCESS" | "COMPLETE" => "32",
        "FAILURE" | "REVERT_FAILURE" => "31",
        "REVERTING" | "REVERTED" | "RETRYING" => "33",
        "RUNNING" => "36",
        _ => return state.to_owned(),
    };
    format!("\x1b[{code}m{state}\x1b[0m")
}

/// The lines of a hint: each of `commands` in the form that runs as `invocation` started
/// this process, on `db`, and notes on installing the command and on a hidden password.
fn hints(invocation: &Invocation, db: &Database, commands: &[String]) -> Vec<String> {
    let (db_args, hidden) = db.hint_args();
    let mut lines: Vec<String> = commands
        .iter()
        .map(|c| format!("{} {db_args}{c}", invocation.prefix))
        .collect();
    if invocation.install_note {
        lines.push(format!(
            "(to type `baton` instead of `{}`, install it: {})",
            invocation.prefix,
            hint::INSTALL
        ));
    }
    if hidden {
        lines.push(
            "(the password is not shown: put the URL in BATON_DATABASE_URL and leave out --db)"
                .to_owned(),
        );
    }
    lines
}

/// Why the demo's registry built nothing from the parameters given: parameters that do not
/// fit the factory's type are named the way the factory names those over its limits
/// (``bad parameter `servers`: ...``).
fn refused(e: BuildError) -> CliError {
    let message = match e {
        BuildError::InvalidParams {
            factory,
            field,
            reason,
        } => {
            let what = match field.as_str() {
                "." => "bad parameters".to_owned(),
                path => format!("bad parameter `{path}`"),
            };
            format!("flow factory {factory} rejected its parameters: {what}: {reason}")
        }
        e => e.to_string(),
    };
    CliError::new(exit::BAD_INPUT, message)
}

async fn post(db: &Database, args: DemoPostArgs, style: Style) -> Result<()> {
    let params = json_arg("--params", &args.params, Json::Object)?;
    let registry = demo_registry(SideEffects::Discard)?;
    match args.version {
        Some(v) => registry.build(&baton_core::FactoryRef::new(&args.factory, v), &params),
        None => registry.build_newest(&args.factory, &params),
    }
    .map_err(refused)?;
    let deadline = args.deadline.map(super::deadline_from_now).transpose()?;
    let board = db.open().await?.board;
    let board = &*board;
    let mut jobs = Vec::new();
    for i in 0..args.count {
        let mut new = NewJob::new(format!("{} #{i}", args.factory), args.factory.clone())
            .params(params.clone());
        if let Some(k) = &args.key {
            new = new.key(k.clone());
        }
        if let Some(v) = args.version {
            new = new.version(v);
        }
        // The first job replaces the earlier ones of the key; the others queue behind it.
        if args.supersede && i == 0 {
            new = new.supersede();
        }
        if let Some(at) = deadline {
            new = new.deadline(at);
        }
        match board.post(new).await {
            Ok(job) => jobs.push(job),
            Err(e) => {
                // The jobs posted so far stay posted: announce them before reporting.
                if !jobs.is_empty() {
                    board.flush_wake_ups().await;
                }
                return Err(e.into());
            }
        }
    }
    // This process exits next: send any wake-up the board held back for a later post.
    board.flush_wake_ups().await;
    if args.json {
        return output::print_json(&jobs);
    }
    let fleet = board.conductors().await?;
    super::jobs::print_jobs(&jobs, &fleet, style);
    Ok(())
}

/// The conductor's options from its arguments, checked.
fn conductor_options(args: &ConductorArgs) -> Result<Options> {
    let mut options = Options::default();
    options.name = args.name.clone();
    options.concurrency = args.concurrency;
    options.lease = Duration::from_millis(args.lease_ms);
    options.heartbeat = Duration::from_millis(args.heartbeat_ms);
    options.poll = Duration::from_millis(args.poll_ms);
    options.gather = Duration::from_millis(args.gather_ms);
    options.retention = args.retain;
    options.self_fence_margin = args.self_fence_margin_ms.map(Duration::from_millis);
    options.drain_timeout = Duration::from_millis(args.drain_timeout_ms);
    options.validate().map_err(|e| options_error(&e))?;
    Ok(options)
}

/// An option error in the words of the command line: its flags, in milliseconds.
fn options_error(e: &InvalidOptions) -> CliError {
    let flag = |option: &str| match option {
        "lease" => Some("--lease-ms"),
        "heartbeat" => Some("--heartbeat-ms"),
        "poll" => Some("--poll-ms"),
        "gather" => Some("--gather-ms"),
        "self_fence_margin" => Some("--self-fence-margin-ms"),
        "drain_timeout" => Some("--drain-timeout-ms"),
        _ => None,
    };
    let message = match e {
        InvalidOptions::ZeroConcurrency => {
            Some("--concurrency 0 would run no job: give 1 or more".to_owned())
        }
        InvalidOptions::TooShort { option, value, min } => flag(option).map(|flag| {
            let (value, min) = (value.as_millis(), min.as_millis());
            format!("{flag} {value} is too short: give {min} or more")
        }),
        InvalidOptions::TooLong { option, value, max } => flag(option).map(|flag| {
            let (value, max) = (value.as_millis(), max.as_millis());
            format!("{flag} {value} is too long: give {max} or less")
        }),
        InvalidOptions::HeartbeatTooSlow {
            heartbeat,
            lease,
            max_heartbeat,
            min_lease,
        } => Some(format!(
            "--heartbeat-ms {} is more than a third of --lease-ms {}, so one late heartbeat \
             would lose the claim: give --heartbeat-ms {} or less, or --lease-ms {} or more",
            heartbeat.as_millis(),
            lease.as_millis(),
            max_heartbeat.as_millis(),
            min_lease.as_millis()
        )),
        InvalidOptions::MarginTooLong {
            margin,
            lease,
            heartbeat,
            max,
        } => Some(format!(
            "--self-fence-margin-ms {} leaves less than two heartbeats (--heartbeat-ms {}) of \
             --lease-ms {}: give --self-fence-margin-ms {} or less, or a longer lease",
            margin.as_millis(),
            heartbeat.as_millis(),
            lease.as_millis(),
            max.as_millis()
        )),
        _ => None,
    };
    // Options the command line does not set (the retention's interval).
    let message = message.unwrap_or_else(|| format!("invalid conductor options: {e}"));
    CliError::new(exit::BAD_INPUT, message)
}

/// The shortest call timeout a conductor takes, whatever its lease: below it, calls that are
/// only slow (a busy machine, a busy SQLite file) would fail as lost.
const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(100);

/// The call timeout of a conductor's store and board (see `baton_sql::deadline`): a third of
/// its lease, no more than the default (5 s) and no less than [`MIN_CALL_TIMEOUT`].
///
/// A call the database does not answer then fails well before the lease runs out: the
/// conductor logs it at once and retries. With the self-fencing margin at a fifth of the
/// lease, two heartbeats in a row can time out and a third still be sent before the
/// conductor stops its jobs itself, so one connection lost to a dead path costs no job.
/// Shorter would fail calls that are only slow; the default bounds calls of long leases.
/// (Leases under 300 ms, for tests, get calls longer than a third of them.)
fn call_timeout(lease: Duration) -> Duration {
    (lease / 3).clamp(MIN_CALL_TIMEOUT, baton_sql::DEFAULT_CALL_TIMEOUT)
}

/// Runs a conductor with the demo registry until interrupted.
pub(crate) async fn conductor(db: &Database, args: ConductorArgs) -> Result<()> {
    let options = conductor_options(&args)?;
    let effects = args
        .effects
        .clone()
        .map_or(SideEffects::Discard, SideEffects::File);
    let registry = offered(demo_registry(effects)?, args.demo_versions.as_deref())?;
    let offer = registry.offer();
    let call_timeout = call_timeout(options.lease);
    // Before the engine and the conductor are built: they take their metric handles then.
    let metrics = match args.metrics_listen {
        Some(addr) => Some(metrics_listener(addr).await?),
        None => None,
    };
    let backends = db
        .open_with(
            baton_sql::OpenOptions::new()
                .call_timeout(call_timeout)
                .announce_steps(args.announce_steps),
        )
        .await?;
    let board = backends.board;
    let conductor = Conductor::new(board.clone(), Engine::from_arc(backends.store), registry)
        .with_options(options)
        .map_err(|e| options_error(&e))?;
    let id = conductor.id();
    let shutdown = CancellationToken::new();
    let mut helpers = tokio::task::JoinSet::new();
    helpers.spawn(signals(shutdown.clone()));
    if let Some((listener, exporter)) = metrics {
        let shutdown = shutdown.clone();
        helpers.spawn(async move {
            baton_console::metrics::serve(listener, exporter, shutdown)
                .await
                .map_err(|e| {
                    CliError::new(exit::UNAVAILABLE, format!("serving metrics failed: {e}"))
                })
        });
    }
    if args.exit_when_idle {
        helpers.spawn(exit_when_idle(
            board.clone(),
            offer,
            shutdown.clone(),
            Duration::from_millis(args.poll_ms.max(50)),
        ));
    }
    eprintln!(
        "conductor {id} ({}) running, database calls time out after {}ms; SIGINT or SIGTERM \
         stops it",
        args.name,
        call_timeout.as_millis()
    );
    let summary = conductor
        .run(shutdown.clone())
        .await
        .map_err(|e| conductor_failed(&e))?;
    shutdown.cancel();
    while let Some(helper) = helpers.join_next().await {
        if let Ok(Err(e)) = helper {
            return Err(e);
        }
    }
    outln!(
        "{}",
        json!({
            "conductor": id,
            "claimed": summary.claimed,
            "consumed": summary.consumed,
            "abandoned": summary.abandoned,
            "lost": summary.lost,
            "parked": summary.parked,
            "left_behind": summary.left_behind,
            "left_for_newer": summary.left_for_newer,
            "purged_runs": summary.purged_runs,
            "purged_jobs": summary.purged_jobs,
        })
    );
    Ok(())
}

/// Installs the metrics recorder and binds `addr` for `--metrics-listen`, printing where the
/// metrics are served (the port chosen, if `addr`'s was 0).
async fn metrics_listener(
    addr: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, baton_console::metrics::Exporter)> {
    let exporter = baton_console::metrics::install()
        .map_err(|e| CliError::new(exit::INTERNAL, format!("--metrics-listen: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        CliError::new(
            exit::UNAVAILABLE,
            format!("--metrics-listen {addr}: cannot listen there: {e}"),
        )
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    eprintln!("metrics at http://{bound}/metrics");
    Ok((listener, exporter))
}

async fn signals(shutdown: CancellationToken) -> Result<()> {
    if !super::signalled(&shutdown).await {
        return Ok(());
    }
    eprintln!("stopping: suspending running flows and handing their jobs back");
    shutdown.cancel();
    Ok(())
}

/// Stops the conductor once the board has no unclaimed or claimed job; also (with the error)
/// when the board cannot tell, other than for a while.
/// How many waiting (and claimed) jobs `--exit-when-idle` looks at for one it could run.
const IDLE_LOOK: usize = 10_000;

async fn exit_when_idle(
    board: Arc<dyn JobBoard>,
    offer: baton_core::board::Offer,
    shutdown: CancellationToken,
    every: Duration,
) -> Result<()> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
        // Idle: no job waiting or claimed that this conductor could run (a job pinned to a
        // version it does not offer is another conductor's).
        let idle = async {
            for state in [JobState::Unclaimed, JobState::Claimed] {
                if board
                    .list(&JobQuery::all().state(state).limit(IDLE_LOOK))
                    .await?
                    .iter()
                    .any(|j| offer.covers(j))
                {
                    return Ok(false);
                }
            }
            Ok::<_, baton_core::board::Error>(true)
        };
        match idle.await {
            Ok(false) => {}
            Ok(true) => {
                shutdown.cancel();
                return Ok(());
            }
            Err(e) if e.is_transient() => {}
            Err(e) => {
                let err = CliError::from(e);
                tracing::error!(
                    error = %err.message,
                    cause = err.cause.as_deref().unwrap_or("-"),
                    "cannot tell whether the board is idle: stopping"
                );
                shutdown.cancel();
                return Err(err);
            }
        }
    }
}

/// The demo's registry (see [`registry`]).
fn demo_registry(effects: SideEffects) -> Result<baton_core::Registry> {
    registry(effects).map_err(|e| CliError::new(exit::INTERNAL, format!("the demo registry: {e}")))
}

/// The demo registry with only the versions `--demo-versions` lists, for the factories that
/// have one of them (the others keep all theirs).
fn offered(
    registry: baton_core::Registry,
    versions: Option<&[u32]>,
) -> Result<baton_core::Registry> {
    let Some(versions) = versions else {
        return Ok(registry);
    };
    if let Some(v) = versions
        .iter()
        .find(|&&v| !crate::demo::VERSIONS.iter().any(|&(_, has)| has == v))
    {
        let known: Vec<String> = crate::demo::VERSIONS
            .iter()
            .map(|(f, v)| format!("{f} {v}"))
            .collect();
        return Err(CliError::new(
            exit::BAD_INPUT,
            format!(
                "--demo-versions {v}: no demo factory has version {v} (there are: {})",
                known.join(", ")
            ),
        ));
    }
    let listed = |factory: &str| {
        crate::demo::VERSIONS
            .iter()
            .any(|&(f, v)| f == factory && versions.contains(&v))
    };
    Ok(registry.retain(|factory, v| !listed(factory) || versions.contains(&v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::board::Error as BoardError;
    use baton_core::{MemoryJobBoard, MemoryStore};
    use baton_testkit::{BoardOp, FaultyBoard};

    fn board() -> FaultyBoard<MemoryJobBoard> {
        FaultyBoard::new(MemoryJobBoard::new(&MemoryStore::new()))
    }

    #[tokio::test]
    async fn exit_when_idle_stops_the_conductor_when_the_board_cannot_tell() {
        let board = board();
        board.fail(BoardOp::List, || {
            BoardError::CorruptDatabase("database disk image is malformed".into())
        });
        let shutdown = CancellationToken::new();
        let idle = exit_when_idle(
            Arc::new(board),
            baton_core::board::Offer::new().with("steps", 1),
            shutdown.clone(),
            Duration::from_millis(1),
        );
        let err = tokio::time::timeout(Duration::from_secs(10), idle)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code, exit::INTERNAL);
        assert!(err.message.contains("corrupt"), "{}", err.message);
        assert!(shutdown.is_cancelled(), "the conductor is told to stop");
    }

    #[test]
    fn a_conductors_call_timeout_is_a_third_of_its_lease_within_bounds() {
        for (lease_ms, timeout) in [
            (3_000, Duration::from_millis(1_000)),
            (10_000, Duration::from_nanos(3_333_333_333)),
            (15_000, baton_sql::DEFAULT_CALL_TIMEOUT),
            (60_000, baton_sql::DEFAULT_CALL_TIMEOUT),
            (300, Duration::from_millis(100)),
            (1, MIN_CALL_TIMEOUT),
        ] {
            assert_eq!(call_timeout(Duration::from_millis(lease_ms)), timeout);
        }
    }

    #[tokio::test]
    async fn exit_when_idle_waits_out_an_unreachable_board() {
        let board = board();
        board.fail(BoardOp::List, || BoardError::Unavailable("refused".into()));
        let shutdown = CancellationToken::new();
        let idle = tokio::spawn(exit_when_idle(
            Arc::new(board.clone()),
            baton_core::board::Offer::new().with("steps", 1),
            shutdown.clone(),
            Duration::from_millis(1),
        ));
        while board.failed() < 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(!shutdown.is_cancelled(), "an outage is not the end");
        board.heal();
        idle.await.unwrap().unwrap();
        assert!(shutdown.is_cancelled(), "the empty board is idle");
    }
}
