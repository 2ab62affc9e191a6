//! `baton jobs`.

use baton_core::board::{ConductorInfo, Job, JobQuery, NewJob};
use baton_core::handle::Ended;
use baton_core::recovery;
use baton_core::{ConductorId, JobHandle, JobId, JobState};
use comfy_table::Cell;

use super::{json_arg, parse, Database, Json};
use crate::args::JobsCommand;
use crate::error::{CliError, Result};
use crate::exit;
use crate::output::{self, Style};

/// Runs a `jobs` command: checks its arguments, then opens the database.
pub(crate) async fn run(db: &Database, command: JobsCommand, style: Style) -> Result<()> {
    match command {
        JobsCommand::List {
            state,
            key,
            owner,
            limit,
            after,
            json,
        } => {
            let mut query = JobQuery::all().limit(limit);
            if let Some(a) = after {
                query = query.after(super::parse_after::<JobId>(&a)?);
            }
            if let Some(s) = state {
                query = query.state(parse::<JobState>("job state", &s.to_uppercase())?);
            }
            if let Some(k) = key {
                query = query.key(k);
            }
            if let Some(o) = owner {
                query = query.owner(parse::<ConductorId>("conductor id", &o)?);
            }
            let board = db.open().await?.board;
            let jobs = board.list(&query).await?;
            if json {
                output::print_json(&jobs)?;
            } else {
                let fleet = board.conductors().await?;
                print_jobs(&jobs, &fleet, style);
            }
            output::page_hint(jobs.len(), limit, jobs.last().map(|j| j.id));
            Ok(())
        }
        JobsCommand::Show { id, json } => {
            let id = parse::<JobId>("job id", &id)?;
            let board = db.open().await?.board;
            let job = board.get(id).await?;
            if json {
                return output::print_json(&job);
            }
            let fleet = board.conductors().await?;
            print_job(&job, &fleet);
            Ok(())
        }
        JobsCommand::Wait { id, json } => {
            let id = parse::<JobId>("job id", &id)?;
            let board = db.open().await?.board;
            let handle: JobHandle<serde_json::Value> =
                JobHandle::new(board, id).poll_every(super::recover::WAIT_POLL);
            let ended = handle.wait().await?;
            if json {
                output::print_json(&handle.job().await?)?;
            } else {
                outln!("job {id} {}", describe(&ended));
            }
            match ended {
                Ended::Succeeded(_) => Ok(()),
                _ => Err(CliError::new(
                    exit::FLOW_FAILED,
                    format!("job {id} did not succeed"),
                )),
            }
        }
        JobsCommand::Post {
            factory,
            name,
            params,
            key,
            priority,
            version,
            supersede,
            deadline,
            json,
        } => {
            let params = json_arg("--params", &params, Json::Any)?;
            let deadline = deadline.map(super::deadline_from_now).transpose()?;
            let board = db.open().await?.board;
            let mut new = NewJob::new(name.unwrap_or_else(|| factory.clone()), factory)
                .params(params)
                .priority(priority);
            if let Some(k) = key {
                new = new.key(k);
            }
            if let Some(v) = version {
                new = new.version(v);
            }
            if supersede {
                new = new.supersede();
            }
            if let Some(at) = deadline {
                new = new.deadline(at);
            }
            let job = board.post(new).await?;
            // This process exits next: send any wake-up the board held back.
            board.flush_wake_ups().await;
            if json {
                return output::print_json(&job);
            }
            outln!("posted job {} (its flow will be {})", job.id, job.flow());
            for old in &job.supersedes {
                outln!("  supersedes job {old}: asked to cancel and revert its run");
            }
            Ok(())
        }
        JobsCommand::Abandon { id } => {
            let id = parse::<JobId>("job id", &id)?;
            db.open().await?.board.release(id).await?;
            outln!("job {id} released: any conductor may claim it now");
            Ok(())
        }
        JobsCommand::Purge(args) => {
            let before = super::cutoff(&args.cutoff)?;
            let backends = db.open().await?;
            let board = &*backends.board;
            super::purge("job", &args, before, |before, n| async move {
                Ok(board.purge_jobs(before, n).await?)
            })
            .await
        }
        JobsCommand::Retry(args) => {
            super::recover::run(db, super::recover::Action::Retry, args).await
        }
        JobsCommand::Cancel(args) => super::recover::cancel(db, args, false).await,
        JobsCommand::Trash { id, reason, force } => {
            let id = parse::<JobId>("job id", &id)?;
            let backends = db.open().await?;
            match recovery::trash(&*backends.store, &*backends.board, id, &reason, force).await {
                Err(recovery::Error::Unfinished { state, .. }) => {
                    return Err(CliError::new(
                        exit::CONFLICT,
                        format!(
                            "job {id}'s run is unfinished ({state}): trashing the job would leave \
                             it half done and free its key; revert it instead (flows revert {id}), \
                             or pass --force"
                        ),
                    ));
                }
                other => other?,
            };
            outln!("job {id} trashed");
            Ok(())
        }
    }
}

/// How a job ended, in words (after "job <id>").
fn describe(ended: &Ended<serde_json::Value>) -> String {
    let failures = |all: &[String]| {
        all.iter()
            .map(|f| format!("\n  failure: {f}"))
            .collect::<String>()
    };
    match ended {
        Ended::Succeeded(serde_json::Value::Null) => "succeeded".to_owned(),
        Ended::Succeeded(result) => format!("succeeded\n  result: {result}"),
        Ended::Reverted { failures: all } => format!("was reverted{}", failures(all)),
        Ended::Failed { failures: all } => {
            format!("failed, and reverting it failed too{}", failures(all))
        }
        Ended::NotStarted { reason } => format!("ended before its run started: {reason}"),
        Ended::Parked { kind, reason, .. } => {
            format!("is parked ({kind}), waiting for an operator: {reason}")
        }
        Ended::Trashed { reason } => format!("was trashed: {reason}"),
        other => format!("ended: {other:?}"),
    }
}

pub(crate) fn print_jobs(jobs: &[Job], fleet: &[ConductorInfo], style: Style) {
    let mut t = output::table(
        style,
        &[
            "id", "name", "factory", "key", "state", "owner", "attempts", "posted", "note",
        ],
    );
    for j in jobs {
        t.add_row(vec![
            Cell::new(j.id),
            Cell::new(&j.name),
            Cell::new(factory(j)),
            Cell::new(j.key.as_deref().unwrap_or("-")),
            output::state_cell(style, j.state.as_str()),
            Cell::new(j.owner.map_or_else(|| "-".to_owned(), |o| o.to_string())),
            Cell::new(j.attempts),
            Cell::new(output::time(Some(j.created_at))),
            Cell::new(output::truncate_text(
                &recovery::note(j, fleet).unwrap_or_else(|| "-".to_owned()),
                60,
            )),
        ]);
    }
    output::print_table(&t);
}

/// The job's factory, with its version once pinned.
fn factory(j: &Job) -> String {
    j.factory_ref()
        .map_or_else(|| j.factory.clone(), |f| f.to_string())
}

fn print_job(j: &Job, fleet: &[ConductorInfo]) {
    outln!("job       {}  {}", j.id, j.name);
    outln!("factory   {}", factory(j));
    outln!("params    {}", j.params);
    outln!("key       {}", j.key.as_deref().unwrap_or("-"));
    outln!("priority  {}", j.priority);
    outln!("state     {}", j.state);
    outln!(
        "owner     {}",
        j.owner.map_or_else(|| "-".to_owned(), |o| o.to_string())
    );
    outln!("lease     {}", output::time(j.lease_expires_at));
    outln!("token     {}", j.token);
    outln!("attempts  {}", j.attempts);
    outln!(
        "stalled   {} claims in a row without progress",
        j.stalled_claims
    );
    outln!("flow      {}", j.flow());
    outln!("posted    {}", output::time(Some(j.created_at)));
    outln!("updated   {}", output::time(Some(j.updated_at)));
    if let Some(o) = &j.outcome {
        outln!("outcome   {o}");
    }
    if let Some(note) = recovery::note(j, fleet) {
        outln!("note      {note}");
    }
}
