//! The memory job board passes the job-board conformance suite.

use baton_core::{MemoryJobBoard, MemoryStore};

fn pair() -> (MemoryJobBoard, MemoryStore) {
    let store = MemoryStore::new();
    (MemoryJobBoard::new(&store), store)
}

baton_testkit::board_conformance!(pair());
