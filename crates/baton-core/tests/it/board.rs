//! The memory job board passes the job-board conformance suite.

use baton_core::{MemoryJobBoard, MemoryStore};

fn pair() -> (MemoryJobBoard, MemoryStore) {
    let store = MemoryStore::new();
    (MemoryJobBoard::new(&store), store)
}

baton_testkit::board_conformance!(pair());

/// A conductor unseen for longer than `CONDUCTOR_UNSEEN_LIMIT` is forgotten; a fresh one stays.
#[tokio::test]
async fn conductors_unseen_for_long_are_forgotten() {
    use baton_core::board::{ConductorInfo, JobBoard, CONDUCTOR_UNSEEN_LIMIT};
    use baton_core::ConductorId;
    use chrono::Utc;

    let (board, _store) = pair();
    let now = Utc::now();
    let fresh = ConductorInfo {
        id: ConductorId::new(),
        name: "fresh".into(),
        host: "h".into(),
        pid: 1,
        started_at: now,
        last_seen: now,
        offer: Default::default(),
    };
    let mut silent = fresh.clone();
    silent.id = ConductorId::new();
    silent.name = "silent".into();
    silent.last_seen = now
        - chrono::Duration::from_std(CONDUCTOR_UNSEEN_LIMIT).unwrap()
        - chrono::Duration::seconds(1);
    board.register(&fresh).await.unwrap();
    board.register(&silent).await.unwrap();
    let listed: Vec<String> = board
        .conductors()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(listed, ["fresh"]);
    // Reporting in again brings it back.
    silent.last_seen = Utc::now();
    board.register(&silent).await.unwrap();
    assert_eq!(board.conductors().await.unwrap().len(), 2);
}
