//! `baton conductors`.

use comfy_table::Cell;

use super::Database;
use crate::args::ConductorsCommand;
use crate::error::Result;
use crate::output::{self, Style};

/// Runs a `conductors` command.
pub(crate) async fn run(db: &Database, command: ConductorsCommand, style: Style) -> Result<()> {
    match command {
        ConductorsCommand::List { json } => {
            let fleet = db.open().await?.board.conductors().await?;
            if json {
                return output::print_json(&fleet);
            }
            let mut t = output::table(
                style,
                &[
                    "id",
                    "name",
                    "host",
                    "pid",
                    "started",
                    "last seen",
                    "offers",
                ],
            );
            for c in &fleet {
                t.add_row(vec![
                    Cell::new(c.id),
                    Cell::new(&c.name),
                    Cell::new(&c.host),
                    Cell::new(c.pid),
                    Cell::new(output::time(Some(c.started_at))),
                    Cell::new(output::time(Some(c.last_seen))),
                    Cell::new(&c.offer),
                ]);
            }
            output::print_table(&t);
            Ok(())
        }
    }
}
