//! The memory store passes the store conformance suite.

use baton_core::MemoryStore;

baton_testkit::store_conformance!(MemoryStore::new());
