//! `baton jobs`.

use baton_core::board::{Job, JobQuery, NewJob};
use baton_core::{ConductorId, JobId, JobState};
use comfy_table::Cell;
use serde_json::json;

use super::{json_arg, parse, Database, Json};
use crate::args::JobsCommand;
use crate::error::Result;
use crate::output::{self, Style};

/// Runs a `jobs` command: checks its arguments, then opens the database.
pub(crate) async fn run(db: &Database, command: JobsCommand, style: Style) -> Result<()> {
    match command {
        JobsCommand::List {
            state,
            key,
            owner,
            limit,
            json,
        } => {
            let mut query = JobQuery::all();
            if let Some(s) = state {
                query = query.state(parse::<JobState>("job state", &s.to_uppercase())?);
            }
            if let Some(k) = key {
                query = query.key(k);
            }
            if let Some(o) = owner {
                query = query.owner(parse::<ConductorId>("conductor id", &o)?);
            }
            if let Some(l) = limit {
                query = query.limit(l);
            }
            let jobs = db.open().await?.board.list(&query).await?;
            if json {
                return output::print_json(&jobs);
            }
            print_jobs(&jobs, style);
            Ok(())
        }
        JobsCommand::Show { id, json } => {
            let id = parse::<JobId>("job id", &id)?;
            let job = db.open().await?.board.get(id).await?;
            if json {
                return output::print_json(&job);
            }
            print_job(&job);
            Ok(())
        }
        JobsCommand::Post {
            factory,
            name,
            params,
            key,
            priority,
            json,
        } => {
            let params = json_arg("--params", &params, Json::Any)?;
            let board = db.open().await?.board;
            let mut new = NewJob::new(name.unwrap_or_else(|| factory.clone()), factory)
                .params(params)
                .priority(priority);
            if let Some(k) = key {
                new = new.key(k);
            }
            let job = board.post(new).await?;
            // This process exits next: send any wake-up the board held back.
            board.flush_wake_ups().await;
            if json {
                return output::print_json(&job);
            }
            outln!("posted job {} (its flow will be {})", job.id, job.flow());
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
        JobsCommand::Trash { id, reason } => {
            let id = parse::<JobId>("job id", &id)?;
            let board = db.open().await?.board;
            board.trash(id, None, json!({ "trashed": reason })).await?;
            outln!("job {id} trashed");
            Ok(())
        }
    }
}

pub(crate) fn print_jobs(jobs: &[Job], style: Style) {
    let mut t = output::table(
        style,
        &[
            "id", "name", "factory", "key", "state", "owner", "attempts", "posted",
        ],
    );
    for j in jobs {
        t.add_row(vec![
            Cell::new(j.id),
            Cell::new(&j.name),
            Cell::new(&j.factory),
            Cell::new(j.key.as_deref().unwrap_or("-")),
            output::state_cell(style, j.state.as_str()),
            Cell::new(j.owner.map_or_else(|| "-".to_owned(), |o| o.to_string())),
            Cell::new(j.attempts),
            Cell::new(output::time(Some(j.created_at))),
        ]);
    }
    output::print_table(&t);
}

fn print_job(j: &Job) {
    outln!("job       {}  {}", j.id, j.name);
    outln!("factory   {}", j.factory);
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
    outln!("flow      {}", j.flow());
    outln!("posted    {}", output::time(Some(j.created_at)));
    outln!("updated   {}", output::time(Some(j.updated_at)));
    if let Some(o) = &j.outcome {
        outln!("outcome   {o}");
    }
}
