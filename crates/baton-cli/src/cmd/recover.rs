//! `baton flows revert`, `baton flows resume` and `baton jobs retry`: operator recovery of
//! stranded and parked runs (`baton_core::recovery`); and `baton flows cancel` and `baton jobs
//! cancel`. None of them runs a flow here: the job goes back on the board, or carries the
//! request to its owner, and a conductor with the run's definition does the work.

use std::time::Duration;

use baton_core::board::{Cancel, Job, JobBoard};
use baton_core::recovery;
use baton_core::{FlowId, FlowState, JobId, JobState};

use super::{parse, Database};
use crate::args::{CancelArgs, RecoverArgs};
use crate::error::{CliError, Result};
use crate::exit;
use crate::output;

/// What an operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// `flows revert`.
    Revert,
    /// `flows resume`.
    Resume,
    /// `jobs retry`.
    Retry,
}

/// How often `--wait` looks at the job when the board sends no news of its end (see
/// `JobBoard::wait_for_end`): the SQLite board never does for an end made by another process,
/// such as a conductor.
pub(crate) const WAIT_POLL: Duration = Duration::from_millis(200);

/// Runs a recovery command.
pub(crate) async fn run(db: &Database, action: Action, args: RecoverArgs) -> Result<()> {
    let backends = match action {
        Action::Retry => {
            // Checked before the database is opened, as every command does.
            parse::<JobId>("job id", &args.id)?;
            db.open().await?
        }
        Action::Revert | Action::Resume => {
            parse::<FlowId>("flow id", &args.id)?;
            db.open().await?
        }
    };
    let (store, board) = (&*backends.store, &*backends.board);
    let job = match action {
        Action::Retry => recovery::retry(board, parse("job id", &args.id)?).await?,
        Action::Revert => recovery::revert(store, board, parse("flow id", &args.id)?).await?,
        Action::Resume => recovery::resume(store, board, parse("flow id", &args.id)?).await?,
    };
    if args.json {
        output::print_json(&job)?;
    } else {
        let what = match action {
            Action::Revert => "with a request to revert its run",
            Action::Resume | Action::Retry => "its run goes on in the direction it was heading",
        };
        outln!("job {} is back on the board, {what}", job.id);
        let fleet = board.conductors().await?;
        if let Some(note) = recovery::note(&job, &fleet) {
            outln!("  {note}");
        }
    }
    if !args.wait {
        return Ok(());
    }
    let ended = wait_at_rest(board, job.id).await?;
    let run = store
        .load_flow(ended.flow())
        .await
        .ok()
        .map(|s| s.flow.state);
    if args.json {
        output::print_json(&ended)?;
    } else {
        outln!(
            "job {} is {}; its run is {}",
            ended.id,
            ended.state,
            run.map_or_else(|| "not stored".to_owned(), |s| s.to_string())
        );
        if let Some(o) = &ended.outcome {
            outln!("  outcome: {o}");
        }
    }
    let wanted = match action {
        Action::Revert => ended.state == JobState::Complete && run == Some(FlowState::Reverted),
        Action::Resume | Action::Retry => {
            ended.state == JobState::Complete && run.is_some_and(FlowState::is_terminal)
        }
    };
    if wanted {
        Ok(())
    } else {
        Err(CliError::new(
            exit::FLOW_FAILED,
            format!(
                "job {} ended {} with its run {}",
                ended.id,
                ended.state,
                run.map_or_else(|| "not stored".to_owned(), |s| s.to_string())
            ),
        ))
    }
}

/// Waits until job `id` is at rest: complete, trashed or parked.
pub(crate) async fn wait_at_rest(board: &dyn JobBoard, id: JobId) -> Result<Job> {
    loop {
        let job = board.wait_for_end(id, WAIT_POLL).await?;
        if job.state.is_at_rest() {
            return Ok(job);
        }
    }
}

/// Runs `flows cancel` (`by_flow`, the id names the run) or `jobs cancel`.
pub(crate) async fn cancel(db: &Database, args: CancelArgs, by_flow: bool) -> Result<()> {
    // A job and its run share their id.
    let job: JobId = if by_flow {
        JobId::from_uuid(parse::<FlowId>("flow id", &args.id)?.as_uuid())
    } else {
        parse("job id", &args.id)?
    };
    let how = if args.no_revert {
        Cancel::Suspend
    } else {
        Cancel::Revert
    };
    let backends = db.open().await?;
    let (store, board) = (&*backends.store, &*backends.board);
    let job = match board.request_cancel(job, how).await {
        Err(baton_core::board::Error::JobNotFound(_)) if by_flow => {
            return Err(CliError::new(
                exit::NOT_FOUND,
                format!(
                    "no job drives flow {}: a run a process drives itself is cancelled there \
                     (Engine::cancel), and a stranded one is reverted with `baton flows revert`",
                    args.id
                ),
            ));
        }
        other => other?,
    };
    if args.json {
        output::print_json(&job)?;
    } else {
        let what = match how {
            Cancel::Revert => "cancel and revert its run",
            _ => "cancel and suspend its run, then park the job",
        };
        outln!("job {} is {}: asked to {what}", job.id, job.state);
    }
    if !args.wait {
        return Ok(());
    }
    let ended = wait_at_rest(board, job.id).await?;
    let run = store
        .load_flow(ended.flow())
        .await
        .ok()
        .map(|s| s.flow.state);
    if args.json {
        output::print_json(&ended)?;
    } else {
        outln!(
            "job {} is {}; its run is {}",
            ended.id,
            ended.state,
            run.map_or_else(|| "not stored".to_owned(), |s| s.to_string())
        );
        if let Some(o) = &ended.outcome {
            outln!("  outcome: {o}");
        }
    }
    let wanted = match how {
        Cancel::Revert => {
            ended.state == JobState::Complete && matches!(run, None | Some(FlowState::Reverted))
        }
        _ => ended.state == JobState::Parked || ended.state == JobState::Complete,
    };
    if wanted {
        Ok(())
    } else {
        Err(CliError::new(
            exit::FLOW_FAILED,
            format!(
                "job {} ended {} with its run {}",
                ended.id,
                ended.state,
                run.map_or_else(|| "not stored".to_owned(), |s| s.to_string())
            ),
        ))
    }
}
