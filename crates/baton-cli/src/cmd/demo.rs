//! `baton demo` and `baton conductor --demo`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_core::board::{JobBoard, JobQuery, NewJob};
use baton_core::conductor::{InvalidOptions, Options};
use baton_core::model::Change;
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
    let registry = registry(effects.clone());
    let (flow, _) = registry
        .build_newest("stack-create", &params)
        .map_err(|e| CliError::new(exit::BAD_INPUT, e.to_string()))?;
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
    let backends = db.open().await?;
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
    while let Some(r) = running.join_next().await {
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(CliError::new(
                    exit::INTERNAL,
                    format!("the conductor failed: {e}"),
                ))
            }
            Err(e) => {
                return Err(CliError::new(
                    exit::INTERNAL,
                    format!("the conductor crashed: {e}"),
                ))
            }
        }
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

async fn post(db: &Database, args: DemoPostArgs, style: Style) -> Result<()> {
    let params = json_arg("--params", &args.params, Json::Object)?;
    registry(SideEffects::Discard)
        .build_newest(&args.factory, &params)
        .map_err(|e| CliError::new(exit::BAD_INPUT, e.to_string()))?;
    let board = db.open().await?.board;
    let board = &*board;
    let mut jobs = Vec::new();
    for i in 0..args.count {
        let mut new = NewJob::new(format!("{} #{i}", args.factory), args.factory.clone())
            .params(params.clone());
        if let Some(k) = &args.key {
            new = new.key(k.clone());
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
    super::jobs::print_jobs(&jobs, style);
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
        _ => None,
    };
    // Options the command line does not set (the drain timeout, the retention's interval).
    let message = message.unwrap_or_else(|| format!("invalid conductor options: {e}"));
    CliError::new(exit::BAD_INPUT, message)
}

/// Runs a conductor with the demo registry until interrupted.
pub(crate) async fn conductor(db: &Database, args: ConductorArgs) -> Result<()> {
    let options = conductor_options(&args)?;
    let effects = args
        .effects
        .clone()
        .map_or(SideEffects::Discard, SideEffects::File);
    let backends = db.open().await?;
    let board = backends.board;
    let conductor = Conductor::new(
        board.clone(),
        Engine::from_arc(backends.store),
        registry(effects),
    )
    .with_options(options)
    .map_err(|e| options_error(&e))?;
    let id = conductor.id();
    let shutdown = CancellationToken::new();
    let mut helpers = tokio::task::JoinSet::new();
    helpers.spawn(signals(shutdown.clone()));
    if args.exit_when_idle {
        helpers.spawn(exit_when_idle(
            board.clone(),
            shutdown.clone(),
            Duration::from_millis(args.poll_ms.max(50)),
        ));
    }
    eprintln!(
        "conductor {id} ({}) running; SIGINT or SIGTERM stops it",
        args.name
    );
    let summary = conductor
        .run(shutdown.clone())
        .await
        .map_err(|e| CliError::new(exit::INTERNAL, format!("the conductor failed: {e}")))?;
    shutdown.cancel();
    helpers.shutdown().await;
    outln!(
        "{}",
        json!({
            "conductor": id,
            "claimed": summary.claimed,
            "consumed": summary.consumed,
            "abandoned": summary.abandoned,
            "lost": summary.lost,
            "left_behind": summary.left_behind,
            "left_for_newer": summary.left_for_newer,
            "purged_runs": summary.purged_runs,
            "purged_jobs": summary.purged_jobs,
        })
    );
    Ok(())
}

async fn signals(shutdown: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
        () = shutdown.cancelled() => return,
    }
    eprintln!("stopping: suspending running flows and handing their jobs back");
    shutdown.cancel();
}

async fn exit_when_idle(board: Arc<dyn JobBoard>, shutdown: CancellationToken, every: Duration) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let unclaimed = board
            .list(&JobQuery::all().state(JobState::Unclaimed).limit(1))
            .await;
        let claimed = board
            .list(&JobQuery::all().state(JobState::Claimed).limit(1))
            .await;
        match (unclaimed, claimed) {
            (Ok(u), Ok(c)) if u.is_empty() && c.is_empty() => {
                shutdown.cancel();
                return;
            }
            _ => {}
        }
    }
}
