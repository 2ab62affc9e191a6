//! `baton flows`.

use baton_core::model::Change;
use baton_core::store::{FlowQuery, RunView, Store};
use baton_core::{AtomState, FlowId, FlowState};
use comfy_table::Cell;

use super::{parse, Database};
use crate::args::{FlowsCommand, GraphFormat};
use crate::error::{CliError, Result};
use crate::exit;
use crate::output::{self, Style};

const RESULT_WIDTH: usize = 48;

/// Runs a `flows` command: checks its arguments, then opens the database.
pub(crate) async fn run(db: &Database, command: FlowsCommand, style: Style) -> Result<()> {
    match command {
        FlowsCommand::List {
            state,
            name,
            factory,
            version,
            stranded,
            limit,
            after,
            json,
        } => {
            let mut query = FlowQuery::all().limit(limit);
            if let Some(a) = after {
                query = query.after(super::parse_after::<FlowId>(&a)?);
            }
            if let Some(s) = state {
                query = query.state(parse::<FlowState>("flow state", &s.to_uppercase())?);
            }
            if let Some(n) = name {
                query = query.name(n);
            }
            if let Some(f) = factory {
                query = query.factory(f);
            }
            if let Some(v) = version {
                query = query.version(v);
            }
            let backends = db.open().await?;
            if stranded {
                return list_stranded(&*backends.store, &*backends.board, &query, json, style)
                    .await;
            }
            list(&*backends.store, &query, json, style).await
        }
        FlowsCommand::Revert(args) => {
            super::recover::run(db, super::recover::Action::Revert, args).await
        }
        FlowsCommand::Resume(args) => {
            super::recover::run(db, super::recover::Action::Resume, args).await
        }
        FlowsCommand::Cancel(args) => super::recover::cancel(db, args, true).await,
        FlowsCommand::Show { id, full, json } => {
            let id: FlowId = parse("flow id", &id)?;
            show(&*db.open().await?.store, id, full, json, style).await
        }
        FlowsCommand::Graph { id, format } => {
            let id: FlowId = parse("flow id", &id)?;
            graph(&*db.open().await?.store, id, format).await
        }
        FlowsCommand::Purge(args) => {
            let before = super::cutoff(&args.cutoff)?;
            let backends = db.open().await?;
            let store = &*backends.store;
            // Runs are kept for a while after they end whatever the cutoff: report the
            // cutoff the store applies.
            let before = baton_core::store::purge_cutoff(before, chrono::Utc::now());
            super::purge("run", &args, before, |before, n| async move {
                Ok(store.purge_flows(before, n).await?)
            })
            .await
        }
    }
}

async fn list(store: &dyn Store, query: &FlowQuery, as_json: bool, style: Style) -> Result<()> {
    let flows = store.list_flows(query).await?;
    let hint = || {
        output::page_hint(
            flows.len(),
            query.limit.unwrap_or(usize::MAX),
            flows.last().map(|f| f.id),
        )
    };
    if as_json {
        output::print_json(&flows)?;
        hint();
        return Ok(());
    }
    let mut t = output::table(
        style,
        &["id", "name", "state", "factory", "created", "updated"],
    );
    for f in &flows {
        t.add_row(vec![
            Cell::new(f.id),
            Cell::new(&f.name),
            output::state_cell(style, f.state.as_str()),
            Cell::new(
                f.factory
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), ToString::to_string),
            ),
            Cell::new(output::time(Some(f.created_at))),
            Cell::new(output::time(Some(f.updated_at))),
        ]);
    }
    output::print_table(&t);
    hint();
    Ok(())
}

/// `flows list --stranded`: unfinished runs no conductor will take up by itself.
async fn list_stranded(
    store: &dyn Store,
    board: &dyn baton_core::JobBoard,
    query: &FlowQuery,
    as_json: bool,
    style: Style,
) -> Result<()> {
    let stranded = baton_core::recovery::stranded(store, board, query).await?;
    let hint = || {
        output::page_hint(
            stranded.len(),
            query.limit.unwrap_or(usize::MAX),
            stranded.last().map(|s| s.flow.id),
        );
    };
    if as_json {
        output::print_json(&stranded)?;
        hint();
        return Ok(());
    }
    let mut t = output::table(
        style,
        &["id", "name", "state", "factory", "because", "updated"],
    );
    for s in &stranded {
        let f = &s.flow;
        t.add_row(vec![
            Cell::new(f.id),
            Cell::new(&f.name),
            output::state_cell(style, f.state.as_str()),
            Cell::new(
                f.factory
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), ToString::to_string),
            ),
            Cell::new(s.because),
            Cell::new(output::time(Some(f.updated_at))),
        ]);
    }
    output::print_table(&t);
    hint();
    Ok(())
}

async fn show(
    store: &dyn Store,
    id: FlowId,
    full: bool,
    as_json: bool,
    style: Style,
) -> Result<()> {
    let view = RunView::load(store, id).await?;
    if as_json {
        return output::print_json(&view);
    }
    let (snap, history) = (&view, &view.history);
    let width = (!full).then_some(RESULT_WIDTH);
    let f = &snap.flow;
    outln!("flow     {}  {}", f.id, f.name);
    outln!("state    {} (heading: {})", f.state, f.intention);
    outln!(
        "created  {}   updated {}",
        output::time(Some(f.created_at)),
        output::time(Some(f.updated_at))
    );
    if let Some(job) = f.meta.get("job") {
        outln!("job      {}", job.as_str().unwrap_or_default());
    }
    if let Some(factory) = &f.factory {
        outln!("factory  {factory}");
    }
    if let Some(fingerprint) = &f.fingerprint {
        outln!("definition fingerprint {fingerprint}");
    }
    if !f.inputs.is_empty() {
        outln!(
            "inputs   {}",
            output::truncate(&serde_json::Value::Object(f.inputs.clone()), width)
        );
    }
    outln!();

    let mut t = output::table(
        style,
        &[
            "atom", "kind", "state", "attempt", "started", "took", "result",
        ],
    );
    for a in &snap.atoms {
        let mut result = match (&a.result, &a.failure, &a.revert_failure) {
            (_, _, Some(f)) if a.state == AtomState::Reverting => {
                format!("revert failed: {}", f.message)
            }
            (Some(r), _, _) => output::truncate(r, width),
            (None, Some(f), _) => format!("failed: {}", f.message),
            _ => String::new(),
        };
        // Waiting to be called again (a retry policy or a retry controller's backoff).
        if let (Some(at), AtomState::Retrying | AtomState::Reverting) = (a.retry_at, a.state) {
            if !result.is_empty() {
                result.push_str("; ");
            }
            result.push_str(&format!("retrying at {}", output::time(Some(at))));
        }
        t.add_row(vec![
            Cell::new(&a.name),
            Cell::new(a.kind.as_str()),
            output::state_cell(style, a.state.as_str()),
            Cell::new(a.attempt),
            Cell::new(output::time(a.started_at)),
            Cell::new(output::duration(a.started_at, a.finished_at)),
            Cell::new(result),
        ]);
    }
    output::print_table(&t);

    let failures: Vec<_> = snap
        .atoms
        .iter()
        .flat_map(|a| {
            a.retry_history
                .iter()
                .flat_map(|h| h.failures.iter())
                .chain(a.failure.iter())
                .chain(a.revert_failure.iter())
        })
        .collect();
    if !failures.is_empty() {
        outln!("\nfailures:");
        for fl in failures {
            outln!(
                "  {} (attempt {}, {:?}): {}",
                fl.atom,
                fl.attempt,
                fl.kind,
                fl.message
            );
            for cause in &fl.causes {
                outln!("    caused by: {cause}");
            }
        }
    }

    outln!("\nhistory:");
    let mut h = output::table(style, &["seq", "at", "subject", "from", "to", "attempt"]);
    for tr in history {
        let (subject, from, to, attempt) = match &tr.change {
            Change::Flow { from, to } => {
                ("flow".to_owned(), from.as_str(), to.as_str(), String::new())
            }
            Change::Atom {
                atom,
                from,
                to,
                attempt,
            } => (
                atom.clone(),
                from.as_str(),
                to.as_str(),
                attempt.to_string(),
            ),
        };
        h.add_row(vec![
            Cell::new(tr.seq),
            Cell::new(tr.at.format("%H:%M:%S%.3f")),
            Cell::new(subject),
            Cell::new(from),
            output::state_cell(style, to),
            Cell::new(attempt),
        ]);
    }
    output::print_table(&h);
    Ok(())
}

async fn graph(store: &dyn Store, id: FlowId, format: GraphFormat) -> Result<()> {
    let snap = store.load_flow(id).await?;
    let shape = snap.flow.shape().ok_or_else(|| {
        CliError::new(
            exit::NOT_FOUND,
            format!("flow {id} has no recorded graph (it was created without one)"),
        )
    })?;
    match format {
        GraphFormat::Dot => out!("{}", shape.to_dot(&snap.flow.name)),
        GraphFormat::Mermaid => out!("{}", shape.to_mermaid()),
    }
    Ok(())
}
