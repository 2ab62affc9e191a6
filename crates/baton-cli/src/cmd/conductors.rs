//! `baton conductors`.

use baton_core::board::JobBoard;
use comfy_table::Cell;

use crate::args::ConductorsCommand;
use crate::error::Result;
use crate::output::{self, Style};

pub(crate) async fn run(
    board: &dyn JobBoard,
    command: ConductorsCommand,
    style: Style,
) -> Result<()> {
    match command {
        ConductorsCommand::List { json } => {
            let fleet = board.conductors().await?;
            if json {
                return output::print_json(&fleet);
            }
            let mut t = output::table(
                style,
                &["id", "name", "host", "pid", "started", "last seen"],
            );
            for c in &fleet {
                t.add_row(vec![
                    Cell::new(c.id),
                    Cell::new(&c.name),
                    Cell::new(&c.host),
                    Cell::new(c.pid),
                    Cell::new(output::time(Some(c.started_at))),
                    Cell::new(output::time(Some(c.last_seen))),
                ]);
            }
            output::print_table(&t);
            Ok(())
        }
    }
}
