//! Job-board conformance: cases every [`JobBoard`] must pass, generic over the backend.
//!
//! Each case gets a board and the store whose flows it fences. A backend's tests expand
//! [`board_conformance!`](crate::board_conformance) with an expression making that pair.

use std::collections::HashSet;
use std::time::Duration;

use baton_core::board::{Cancel, ConductorInfo, Error, JobBoard, JobQuery, NewJob, Offer, Requeue};
use baton_core::model::{Batch, Write};
use baton_core::store::{self, FlowQuery, Store};
use baton_core::{
    Atom, ConductorId, CreateOptions, Engine, Flow, FlowState, Intention, JobState, RunOptions,
};
use chrono::Utc;
use serde_json::json;

mod cancel;

pub use cancel::*;

const LEASE: Duration = Duration::from_secs(30);

/// A batch that moves flow `flow` from `from` to `to` (intention execute) under `fence`.
fn flow_move(
    flow: baton_core::FlowId,
    fence: Option<baton_core::Fence>,
    from: FlowState,
    to: FlowState,
) -> Batch {
    let mut batch = Batch::new(flow, fence);
    batch.writes.push(Write::Flow {
        from,
        to,
        intention: Intention::Execute,
    });
    batch
}

/// Asserts that `store` refuses to start run `flow` under `fence`: a claim that was revoked.
async fn assert_fenced<S: Store>(store: &S, flow: baton_core::FlowId, fence: baton_core::Fence) {
    assert!(matches!(
        store
            .commit(&flow_move(
                flow,
                Some(fence),
                FlowState::Pending,
                FlowState::Running
            ))
            .await,
        Err(store::Error::Fenced { .. })
    ));
}

/// The owner of claim `old` creates run `id` of `flow` under it and abandons the job, and
/// another conductor claims it: the new claim.
async fn create_then_hand_over<B: JobBoard>(
    board: &B,
    engine: &Engine,
    flow: &baton_core::CompiledFlow,
    id: baton_core::FlowId,
    old: baton_core::Fence,
) -> baton_core::board::Claim {
    engine
        .create_with(
            flow,
            Default::default(),
            CreateOptions::new().id(id).fence(old),
        )
        .await
        .unwrap();
    board.abandon(old).await.unwrap();
    claim_next(board).await
}

/// The flows named `name` that the store lists in `state`.
async fn listed<S: Store>(store: &S, name: &str, state: FlowState) -> Vec<baton_core::FlowId> {
    store
        .list_flows(&FlowQuery::all().name(name).state(state))
        .await
        .unwrap()
        .iter()
        .map(|f| f.id)
        .collect()
}

/// The next eligible job, claimed by a new conductor: there must be one.
async fn claim_next<B: JobBoard>(board: &B) -> baton_core::board::Claim {
    board
        .claim(ConductorId::new(), LEASE, &offer())
        .await
        .unwrap()
        .expect("a job to claim")
}

/// A new, pending run of job `job`, as a conductor would create it (with the job's id).
pub fn job_run(job: baton_core::JobId, name: &str) -> baton_core::model::FlowRecord {
    baton_core::model::FlowRecord {
        id: baton_core::FlowId::for_job(job),
        name: name.into(),
        state: FlowState::Pending,
        intention: Intention::Execute,
        inputs: Default::default(),
        meta: json!({}),
        factory: None,
        fingerprint: None,
        deadline: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

fn job(name: &str) -> NewJob {
    NewJob::new(name, "noop")
}

/// What the cases' claimants offer: version 1 of the factories their jobs name (`noop`,
/// `steps`).
pub fn offer() -> Offer {
    Offer::new().with("noop", 1).with("steps", 1)
}

/// Many claimers racing: every job is claimed exactly once.
pub async fn claims_are_exclusive_under_concurrency<B: JobBoard + Clone + 'static, S: Store>(
    board: B,
    _store: S,
) {
    let mut posted = HashSet::new();
    for i in 0..24 {
        posted.insert(board.post(job(&format!("race-{i}"))).await.unwrap().id);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let board = board.clone();
        tasks.spawn(async move {
            let owner = ConductorId::new();
            let mut mine = Vec::new();
            while let Some(claim) = board.claim(owner, LEASE, &offer()).await.unwrap() {
                mine.push(claim.job.id);
            }
            mine
        });
    }
    let mut claimed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        claimed.extend(r.unwrap());
    }
    let unique: HashSet<_> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), unique.len(), "a job was claimed twice");
    assert_eq!(unique, posted);
}

/// An expired lease makes the job claimable again, with a larger token; the old claim is dead.
pub async fn expired_leases_are_reclaimed_with_a_new_token<B: JobBoard, S: Store>(
    board: B,
    _store: S,
) {
    let posted = board.post(job("expiring")).await.unwrap();
    let first = board
        .claim(ConductorId::new(), Duration::from_millis(100), &offer())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.job.id, posted.id);
    assert!(
        board
            .claim(ConductorId::new(), LEASE, &offer())
            .await
            .unwrap()
            .is_none(),
        "a live claim was taken"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = claim_next(&board).await;
    assert_eq!(second.job.id, posted.id);
    assert!(second.fence.token > first.fence.token);
    assert_eq!(second.job.attempts, 2);
    assert!(matches!(
        board.heartbeat(first.fence, LEASE, false).await,
        Err(Error::ClaimLost { .. })
    ));
    board.heartbeat(second.fence, LEASE, false).await.unwrap();
}

/// Heartbeat, consume, abandon, trash and flow writes all refuse a stale token.
pub async fn stale_tokens_are_refused_everywhere<B: JobBoard, S: Store + Clone + 'static>(
    board: B,
    store: S,
) {
    let posted = board.post(job("stale")).await.unwrap();
    let old = claim_next(&board).await;
    // The old owner creates the job's flow under its claim.
    let flow = Flow::linear("stale-flow")
        .add(Atom::from_fn("a", |_| async { Ok(json!(1)) }))
        .compile()
        .unwrap();
    let engine = Engine::new(store.clone());
    let new = create_then_hand_over(&board, &engine, &flow, posted.flow(), old.fence).await;
    assert!(new.fence.token > old.fence.token);

    let lost = |r: Result<(), Error>| matches!(r, Err(Error::ClaimLost { .. }));
    assert!(lost(
        board.heartbeat(old.fence, LEASE, false).await.map(|_| ())
    ));
    assert!(lost(board.consume(old.fence, json!("zombie")).await));
    assert!(lost(board.abandon(old.fence).await));
    assert!(lost(
        board
            .trash(posted.id, Some(old.fence), json!("zombie"))
            .await
    ));

    let mut batch = flow_move(
        posted.flow(),
        Some(old.fence),
        FlowState::Pending,
        FlowState::Running,
    );
    assert!(matches!(
        store.commit(&batch).await,
        Err(store::Error::Fenced { .. })
    ));
    batch.fence = Some(new.fence);
    store.commit(&batch).await.unwrap();
    assert_eq!(board.get(posted.id).await.unwrap().state, JobState::Claimed);
}

/// Jobs sharing a key run one at a time, in posting order; other jobs are not held up.
pub async fn keys_serialise_jobs_in_posting_order<B: JobBoard, S: Store>(board: B, _store: S) {
    let key = format!("stack-{}", ConductorId::new());
    let a = board.post(job("a").key(&key)).await.unwrap();
    let b = board.post(job("b").key(&key).priority(10)).await.unwrap();
    let free = board.post(job("free")).await.unwrap();
    let owner = ConductorId::new();
    let first = board.claim(owner, LEASE, &offer()).await.unwrap().unwrap();
    assert_eq!(
        first.job.id, a.id,
        "b has a higher priority but must wait for a"
    );
    let second = board.claim(owner, LEASE, &offer()).await.unwrap().unwrap();
    assert_eq!(second.job.id, free.id);
    assert!(
        board.claim(owner, LEASE, &offer()).await.unwrap().is_none(),
        "b ran beside a"
    );
    board.consume(first.fence, json!("done")).await.unwrap();
    let third = board.claim(owner, LEASE, &offer()).await.unwrap().unwrap();
    assert_eq!(third.job.id, b.id);
}

/// An abandoned job can be claimed again at once.
pub async fn abandon_hands_over_at_once<B: JobBoard, S: Store>(board: B, _store: S) {
    let posted = board.post(job("handover")).await.unwrap();
    let first = claim_next(&board).await;
    board.abandon(first.fence).await.unwrap();
    let unclaimed = board.get(posted.id).await.unwrap();
    assert_eq!(unclaimed.state, JobState::Unclaimed);
    assert_eq!(unclaimed.owner, None);
    let second = claim_next(&board).await;
    assert_eq!(second.job.id, posted.id);
    assert!(second.fence.token > first.fence.token);
}

/// Abandoning a job revokes its claim at once, before anyone claims the job again: the old
/// owner can neither write the job's flow nor renew the claim.
pub async fn abandon_revokes_the_claim<B: JobBoard, S: Store>(board: B, store: S) {
    let posted = board.post(job("abandoned")).await.unwrap();
    let claim = claim_next(&board).await;
    store
        .create_flow(&job_run(posted.id, "abandoned"), &[], Some(claim.fence))
        .await
        .unwrap();
    board.abandon(claim.fence).await.unwrap();
    let late = flow_move(
        posted.flow(),
        Some(claim.fence),
        FlowState::Pending,
        FlowState::Running,
    );
    let err = store.commit(&late).await.unwrap_err();
    assert!(matches!(err, store::Error::Fenced { .. }), "{err}");
    assert!(matches!(
        board.heartbeat(claim.fence, LEASE, false).await,
        Err(Error::ClaimLost { .. })
    ));
    assert_eq!(
        store.load_flow(posted.flow()).await.unwrap().flow.state,
        FlowState::Pending
    );
    let again = claim_next(&board).await;
    assert_eq!(again.job.id, posted.id);
    let mut next = late;
    next.fence = Some(again.fence);
    store.commit(&next).await.unwrap();
}

/// A claim fences its own job's flow and no other: a creation or a batch for another flow
/// made under it is refused, and changes nothing.
pub async fn a_claim_fences_only_its_jobs_flow<B: JobBoard, S: Store>(board: B, store: S) {
    let mine = board.post(job("mine")).await.unwrap();
    let theirs = board.post(job("theirs")).await.unwrap();
    let owner = ConductorId::new();
    let claim = board.claim(owner, LEASE, &offer()).await.unwrap().unwrap();
    assert_eq!(claim.job.id, mine.id);
    let their_claim = board.claim(owner, LEASE, &offer()).await.unwrap().unwrap();
    assert_eq!(their_claim.job.id, theirs.id);
    let refused = |r: store::Result<()>| matches!(r, Err(store::Error::Refused { .. }));

    // Another job's run, or a run of no job at all.
    let their_run = job_run(theirs.id, "theirs");
    let loose = job_run(baton_core::JobId::new(), "loose");
    for run in [&their_run, &loose] {
        assert!(refused(
            store.create_flow(run, &[], Some(claim.fence)).await
        ));
        let first = flow_move(
            run.id,
            Some(claim.fence),
            FlowState::Pending,
            FlowState::Running,
        );
        assert!(refused(
            store
                .create_and_commit(run, &[], Some(claim.fence), &first)
                .await
        ));
        assert!(matches!(
            store.load_flow(run.id).await,
            Err(store::Error::FlowNotFound(_))
        ));
    }

    // A batch for the other job's run.
    store
        .create_flow(&their_run, &[], Some(their_claim.fence))
        .await
        .unwrap();
    let mut batch = flow_move(
        their_run.id,
        Some(claim.fence),
        FlowState::Pending,
        FlowState::Running,
    );
    assert!(refused(store.commit(&batch).await));
    assert_eq!(
        store.load_flow(their_run.id).await.unwrap().flow.state,
        FlowState::Pending
    );
    batch.fence = Some(their_claim.fence);
    store.commit(&batch).await.unwrap();
}

/// The answer to a run's last write is lost (the connection dropped after the database
/// committed it) and the engine writes it again: the run ends as stored, and the job ends with
/// it (where the store ends jobs with the last step), rather than the retry being taken for a
/// lost claim. Both for a run that ends with a later batch and for one that ends with the
/// batch it is created with.
pub async fn a_lost_answer_to_the_last_step_is_not_a_lost_claim<
    B: JobBoard,
    S: Store + Clone + 'static,
>(
    board: B,
    store: S,
) {
    let one_task = Flow::linear("lost-answer")
        .add(Atom::from_fn("a", |_| async { Ok(json!(1)) }))
        .compile()
        .unwrap();
    let nothing = Flow::linear("lost-answer-at-creation").compile().unwrap();
    for flow in [&one_task, &nothing] {
        let posted = board.post(job(flow.name())).await.unwrap();
        let claim = claim_next(&board).await;
        assert_eq!(claim.job.id, posted.id);
        let losing = crate::FlakyStore::losing_the_end(store.clone());
        let outcome = Engine::new(losing.clone())
            .create_and_run(
                flow,
                Default::default(),
                CreateOptions::new().id(posted.flow()).fence(claim.fence),
                RunOptions::new().fence(claim.fence).consume_job(),
            )
            .await
            .unwrap();
        assert_eq!(losing.failures(), 1, "{}: no answer was lost", flow.name());
        assert_eq!(outcome.state, FlowState::Success, "{}", flow.name());
        assert_eq!(
            outcome.job_consumed,
            store.consumes_jobs(),
            "{}",
            flow.name()
        );
        if !outcome.job_consumed {
            board
                .consume(claim.fence, outcome.job_outcome())
                .await
                .unwrap();
        }
        let done = board.get(posted.id).await.unwrap();
        assert_eq!(done.state, JobState::Complete, "{}", flow.name());
        assert_eq!(done.outcome, Some(outcome.job_outcome()), "{}", flow.name());
        assert_eq!(
            store.load_flow(posted.flow()).await.unwrap().flow.state,
            FlowState::Success
        );
    }
}

/// An operator's release revokes the claim and hands the job over at once.
pub async fn release_revokes_the_claim<B: JobBoard, S: Store>(board: B, _store: S) {
    let posted = board.post(job("released")).await.unwrap();
    let first = claim_next(&board).await;
    board.release(posted.id).await.unwrap();
    assert!(matches!(
        board.heartbeat(first.fence, LEASE, false).await,
        Err(Error::ClaimLost { .. })
    ));
    let second = claim_next(&board).await;
    assert_eq!(second.job.id, posted.id);
    assert!(
        second.fence.token.0 > first.fence.token.0 + 1,
        "the release itself moved the token"
    );
    board.consume(second.fence, json!("done")).await.unwrap();
    assert!(matches!(
        board.release(posted.id).await,
        Err(Error::InvalidState { .. })
    ));
}

/// A trashed job is never claimed, and trashing a claimed job revokes the claim.
pub async fn trash_hides_jobs_and_revokes_claims<B: JobBoard, S: Store>(board: B, _store: S) {
    let idle = board.post(job("idle")).await.unwrap();
    board
        .trash(idle.id, None, json!({"by": "operator"}))
        .await
        .unwrap();
    let busy = board.post(job("busy")).await.unwrap();
    let claim = claim_next(&board).await;
    assert_eq!(claim.job.id, busy.id);
    board
        .trash(busy.id, None, json!({"by": "operator"}))
        .await
        .unwrap();
    assert!(matches!(
        board.heartbeat(claim.fence, LEASE, false).await,
        Err(Error::ClaimLost { .. })
    ));
    assert!(board
        .claim(ConductorId::new(), LEASE, &offer())
        .await
        .unwrap()
        .is_none());
    let trashed = board
        .list(&JobQuery::all().state(JobState::Trashed))
        .await
        .unwrap();
    let ids: HashSet<_> = trashed.iter().map(|j| j.id).collect();
    assert!(ids.contains(&idle.id) && ids.contains(&busy.id));
    assert_eq!(
        board.get(idle.id).await.unwrap().outcome,
        Some(json!({"by": "operator"}))
    );
}

/// Higher priority first, then posting order.
pub async fn priorities_order_claims<B: JobBoard, S: Store>(board: B, _store: S) {
    let low = board.post(job("low")).await.unwrap();
    let high = board.post(job("high").priority(5)).await.unwrap();
    let low2 = board.post(job("low2")).await.unwrap();
    let owner = ConductorId::new();
    let order: Vec<_> = [
        board
            .claim(owner, LEASE, &offer())
            .await
            .unwrap()
            .unwrap()
            .job
            .id,
        board
            .claim(owner, LEASE, &offer())
            .await
            .unwrap()
            .unwrap()
            .job
            .id,
        board
            .claim(owner, LEASE, &offer())
            .await
            .unwrap()
            .unwrap()
            .job
            .id,
    ]
    .into();
    assert_eq!(order, vec![high.id, low.id, low2.id]);
}

/// Claiming several at once takes what claims one at a time would: by priority, then posting
/// order, never two of one key, never a job already claimed; and no more than asked.
pub async fn claims_up_to_take_what_single_claims_would<B: JobBoard, S: Store>(
    board: B,
    _store: S,
) {
    let key = format!("stack-{}", ConductorId::new());
    let low = board.post(job("low")).await.unwrap();
    let keyed = board.post(job("keyed").key(&key)).await.unwrap();
    let keyed_later = board
        .post(job("keyed-later").key(&key).priority(9))
        .await
        .unwrap();
    let high = board.post(job("high").priority(5)).await.unwrap();
    let taken = board.post(job("taken")).await.unwrap();
    // Another conductor holds the best job: it is not claimed again.
    let first = claim_next(&board).await;
    assert_eq!(first.job.id, high.id);
    let owner = ConductorId::new();
    let two = board.claim_up_to(owner, LEASE, 2, &offer()).await.unwrap();
    let ids: Vec<_> = two.iter().map(|c| c.job.id).collect();
    assert_eq!(ids, [low.id, keyed.id], "no more than asked, in order");
    let rest = board.claim_up_to(owner, LEASE, 10, &offer()).await.unwrap();
    let ids: Vec<_> = rest.iter().map(|c| c.job.id).collect();
    assert_eq!(
        ids,
        [taken.id],
        "the later job of a key waits for the earlier one"
    );
    assert!(board
        .claim_up_to(owner, LEASE, 10, &offer())
        .await
        .unwrap()
        .is_empty());
    for claim in two.iter().chain(&rest) {
        let stored = board.get(claim.job.id).await.unwrap();
        assert_eq!(stored.state, JobState::Claimed);
        assert_eq!(stored.token, claim.fence.token);
    }
    board.consume(two[1].fence, json!("done")).await.unwrap();
    let last = board.claim_up_to(owner, LEASE, 10, &offer()).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].job.id, keyed_later.id);
    assert!(board
        .claim_up_to(owner, LEASE, 0, &offer())
        .await
        .unwrap()
        .is_empty());
}

/// Consuming records the outcome and finishes the job.
pub async fn consume_records_the_outcome<B: JobBoard, S: Store>(board: B, _store: S) {
    let posted = board
        .post(job("consumed").params(json!({"size": 3})))
        .await
        .unwrap();
    let claim = claim_next(&board).await;
    assert_eq!(claim.job.params, json!({"size": 3}));
    board
        .consume(claim.fence, json!({"state": "SUCCESS"}))
        .await
        .unwrap();
    let done = board.get(posted.id).await.unwrap();
    assert_eq!(done.state, JobState::Complete);
    assert_eq!(done.outcome, Some(json!({"state": "SUCCESS"})));
    assert!(matches!(
        board.consume(claim.fence, json!(1)).await,
        Err(Error::ClaimLost { .. })
    ));
    assert!(matches!(
        board.trash(posted.id, None, json!(null)).await,
        Err(Error::InvalidState { .. })
    ));
}

/// Purging deletes jobs that ended (complete or trashed) before the cutoff, oldest first and
/// no more than asked; open jobs and later ones stay, and the purged jobs' claims stay
/// refused, by the board and by the store.
pub async fn purge_deletes_only_jobs_that_ended_before_the_cutoff<B: JobBoard, S: Store>(
    board: B,
    store: S,
) {
    let owner = ConductorId::new();
    let done = board.post(job("done")).await.unwrap();
    let done_claim = board.claim(owner, LEASE, &offer()).await.unwrap().unwrap();
    assert_eq!(done_claim.job.id, done.id);
    board.consume(done_claim.fence, json!("ok")).await.unwrap();
    let trashed = board.post(job("trashed")).await.unwrap();
    board.trash(trashed.id, None, json!("no")).await.unwrap();
    let open = board.post(job("open")).await.unwrap();
    let open_claim = board.claim(owner, LEASE, &offer()).await.unwrap().unwrap();
    assert_eq!(open_claim.job.id, open.id);
    let waiting = board.post(job("waiting")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cutoff = Utc::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let late = board.post(job("late")).await.unwrap();
    board.trash(late.id, None, json!("later")).await.unwrap();

    assert_eq!(board.purge_jobs(cutoff, 0).await.unwrap(), 0);
    assert_eq!(board.purge_jobs(cutoff, 1).await.unwrap(), 1);
    assert!(matches!(
        board.get(done.id).await,
        Err(Error::JobNotFound(id)) if id == done.id
    ));
    assert!(board.get(trashed.id).await.is_ok(), "the limit was one");
    assert_eq!(board.purge_jobs(cutoff, 10).await.unwrap(), 1);
    assert_eq!(board.purge_jobs(cutoff, 10).await.unwrap(), 0);
    let left: Vec<_> = board
        .list(&JobQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(left, vec![open.id, waiting.id, late.id]);
    // The purged job's claim is refused by the board and by the store.
    assert!(board
        .heartbeat(done_claim.fence, LEASE, false)
        .await
        .is_err());
    let record = job_run(done.id, "purged");
    assert!(matches!(
        store
            .create_flow(&record, &[], Some(done_claim.fence))
            .await,
        Err(store::Error::Fenced { .. })
    ));
    // The open claim still works.
    board
        .heartbeat(open_claim.fence, LEASE, false)
        .await
        .unwrap();
    // The latest cutoff there is takes every ended job.
    let everything = chrono::DateTime::<Utc>::MAX_UTC;
    assert_eq!(board.purge_jobs(everything, 10).await.unwrap(), 1);
}

/// A run that ended while its job is still open (its conductor has not ended the job yet) is
/// not purged, however old: a conductor claiming the job would find no run and start it
/// afresh. Once the job ends, the run goes.
pub async fn runs_of_open_jobs_are_not_purged<B: JobBoard, S: Store>(board: B, store: S) {
    let posted = board.post(job("open-run")).await.unwrap();
    let claim = claim_next(&board).await;
    assert_eq!(claim.job.id, posted.id);
    let record = job_run(posted.id, "open-run");
    let flow = record.id;
    store
        .create_flow(&record, &[], Some(claim.fence))
        .await
        .unwrap();
    for (from, to) in [
        (FlowState::Pending, FlowState::Running),
        (FlowState::Running, FlowState::Success),
    ] {
        // Ended an hour ago: old enough for any purge.
        let mut batch = flow_move(flow, Some(claim.fence), from, to);
        batch.at = Utc::now() - chrono::Duration::hours(1);
        store.commit(&batch).await.unwrap();
    }
    let later = Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(store.purge_flows(later, 10).await.unwrap(), 0);
    assert_eq!(
        store.load_flow(flow).await.unwrap().flow.state,
        FlowState::Success
    );
    board.consume(claim.fence, json!("done")).await.unwrap();
    assert_eq!(store.purge_flows(later, 10).await.unwrap(), 1);
    assert!(matches!(
        store.load_flow(flow).await,
        Err(store::Error::FlowNotFound(_))
    ));
}

/// A run under a claim can end its job with its last step: where the store consumes jobs,
/// the flow's end and the job's are one commit (a stale claim changes neither); elsewhere
/// the job is left to the caller. Either way, the next job with the same key runs after.
pub async fn a_flows_last_step_can_consume_its_job<B: JobBoard, S: Store + Clone + 'static>(
    board: B,
    store: S,
) {
    let first = board.post(job("first").key("stack-9")).await.unwrap();
    let second = board.post(job("second").key("stack-9")).await.unwrap();
    let claim = claim_next(&board).await;
    assert_eq!(claim.job.id, first.id);
    let flow = Flow::linear("consumed-with-last-step")
        .add(Atom::from_fn("a", |_| async { Ok(json!(1)) }))
        .compile()
        .unwrap();
    let engine = Engine::new(store.clone());
    let outcome = engine
        .create_and_run(
            &flow,
            Default::default(),
            CreateOptions::new().id(first.flow()).fence(claim.fence),
            RunOptions::new().fence(claim.fence).consume_job(),
        )
        .await
        .unwrap();
    assert_eq!(outcome.state, FlowState::Success);
    assert_eq!(outcome.job_consumed, store.consumes_jobs());
    // The listings follow the flow to its end.
    assert_eq!(
        listed(&store, "consumed-with-last-step", FlowState::Success).await,
        [first.flow()]
    );
    if outcome.job_consumed {
        let done = board.get(first.id).await.unwrap();
        assert_eq!(done.state, JobState::Complete);
        assert_eq!(done.outcome, Some(outcome.job_outcome()));
        assert!(matches!(
            board.consume(claim.fence, json!("again")).await,
            Err(Error::ClaimLost { .. })
        ));
    } else {
        assert_eq!(board.get(first.id).await.unwrap().state, JobState::Claimed);
        board
            .consume(claim.fence, outcome.job_outcome())
            .await
            .unwrap();
    }

    // The next job with the key can run now; a claim it lost cannot end it.
    let old = claim_next(&board).await;
    assert_eq!(old.job.id, second.id);
    let new = create_then_hand_over(&board, &engine, &flow, second.flow(), old.fence).await;
    let mut last = flow_move(
        second.flow(),
        Some(old.fence),
        FlowState::Pending,
        FlowState::Running,
    );
    last.consume = Some(json!({"state": "zombie"}));
    let err = store.commit(&last).await.unwrap_err();
    if store.consumes_jobs() {
        assert!(matches!(err, store::Error::Fenced { .. }), "{err}");
    } else {
        assert!(matches!(err, store::Error::Refused { .. }), "{err}");
    }
    let untouched = board.get(second.id).await.unwrap();
    assert_eq!(untouched.state, JobState::Claimed);
    assert_eq!(untouched.token, new.fence.token);
    assert_eq!(untouched.outcome, None);
    assert!(store.history(second.flow()).await.unwrap().is_empty());

    // The new claim's writes go through, and the listings follow the flow: the first by the
    // careful way (the store forgot the flow when it refused the stale write), the second by
    // the one-statement way.
    let start = flow_move(
        second.flow(),
        Some(new.fence),
        FlowState::Pending,
        FlowState::Running,
    );
    store.commit(&start).await.unwrap();
    assert_eq!(
        listed(&store, "consumed-with-last-step", FlowState::Running).await,
        [second.flow()]
    );
    let suspend = flow_move(
        second.flow(),
        Some(new.fence),
        FlowState::Running,
        FlowState::Suspending,
    );
    store.commit(&suspend).await.unwrap();
    assert_eq!(
        listed(&store, "consumed-with-last-step", FlowState::Suspending).await,
        [second.flow()]
    );
    assert!(
        listed(&store, "consumed-with-last-step", FlowState::Running)
            .await
            .is_empty()
    );

    // A run with nothing to run ends with its first batch, which is stored with the run and
    // ends the job too, where the store can.
    let third = board.post(job("third").key("stack-9")).await.unwrap();
    board.consume(new.fence, json!("done")).await.unwrap();
    let claim = claim_next(&board).await;
    assert_eq!(claim.job.id, third.id);
    let empty = Flow::linear("nothing-to-run").compile().unwrap();
    let outcome = engine
        .create_and_run(
            &empty,
            Default::default(),
            CreateOptions::new().id(third.flow()).fence(claim.fence),
            RunOptions::new().fence(claim.fence).consume_job(),
        )
        .await
        .unwrap();
    assert_eq!(outcome.state, FlowState::Success);
    assert_eq!(outcome.job_consumed, store.consumes_jobs());
    let expected = if store.consumes_jobs() {
        JobState::Complete
    } else {
        JobState::Claimed
    };
    assert_eq!(board.get(third.id).await.unwrap().state, expected);
}

/// A run's first batch must carry the fence its creation is made under.
pub async fn a_first_batch_carries_the_creations_fence<B: JobBoard, S: Store>(board: B, store: S) {
    let posted = board.post(job("fenced-creation")).await.unwrap();
    let claim = claim_next(&board).await;
    let now = Utc::now();
    let flow = baton_core::model::FlowRecord {
        id: posted.flow(),
        name: "fenced-creation".into(),
        state: FlowState::Pending,
        intention: Intention::Execute,
        inputs: Default::default(),
        meta: json!({}),
        factory: None,
        fingerprint: None,
        deadline: None,
        created_at: now,
        updated_at: now,
    };
    let mut first = flow_move(flow.id, None, FlowState::Pending, FlowState::Running);
    let err = store
        .create_and_commit(&flow, &[], Some(claim.fence), &first)
        .await
        .unwrap_err();
    assert!(matches!(err, store::Error::Refused { .. }), "{err}");
    assert!(matches!(
        store.load_flow(flow.id).await,
        Err(store::Error::FlowNotFound(_))
    ));
    first.fence = Some(claim.fence);
    store
        .create_and_commit(&flow, &[], Some(claim.fence), &first)
        .await
        .unwrap();
    assert_eq!(
        store.load_flow(flow.id).await.unwrap().flow.state,
        FlowState::Running
    );
}

/// Malformed jobs and unknown ids are typed errors.
pub async fn bad_input_is_refused<B: JobBoard, S: Store>(board: B, _store: S) {
    assert!(matches!(
        board.post(NewJob::new("x", "")).await,
        Err(Error::InvalidJob(_))
    ));
    assert!(matches!(
        board.post(NewJob::new(" ", "f")).await,
        Err(Error::InvalidJob(_))
    ));
    let ghost = baton_core::JobId::new();
    assert!(matches!(board.get(ghost).await, Err(Error::JobNotFound(id)) if id == ghost));
    assert!(matches!(
        board.trash(ghost, None, json!(null)).await,
        Err(Error::JobNotFound(_))
    ));
}

/// A job's parameters get the limit every stored JSON value gets
/// ([`DEFAULT_MAX_VALUE_BYTES`] by default, as the board under test is made): over it, the post
/// is refused with `TooLarge`, naming the parameters, their size and the limit, and nothing is
/// posted; at the limit the job is posted.
///
/// [`DEFAULT_MAX_VALUE_BYTES`]: baton_core::store::DEFAULT_MAX_VALUE_BYTES
pub async fn params_over_the_limit_are_refused<B: JobBoard, S: Store>(board: B, _store: S) {
    let limit = baton_core::store::DEFAULT_MAX_VALUE_BYTES;
    // `{"x":"..."}`: eight bytes and the text.
    let params = |size: usize| json!({ "x": "p".repeat(size - 8) });
    // (Not `unwrap_err`, which would print the megabyte of parameters.)
    let Err(err) = board.post(job("too-big").params(params(limit + 1))).await else {
        panic!("parameters over the limit were posted");
    };
    assert!(
        matches!(&err, Error::TooLarge { what: "params", size, limit: l }
            if *size == limit + 1 && *l == limit),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("limit of {limit}")),
        "{err}"
    );
    assert!(board.list(&JobQuery::all()).await.unwrap().is_empty());
    let posted = board
        .post(job("just-fits").params(params(limit)))
        .await
        .unwrap();
    assert!(board.get(posted.id).await.unwrap().params == params(limit));
}

/// A waiting conductor wakes when a job is posted.
pub async fn posting_wakes_waiters<B: JobBoard + Clone + 'static, S: Store>(board: B, _store: S) {
    let waiter = {
        let board = board.clone();
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            board.wait_for_work(Duration::from_secs(20)).await;
            start.elapsed()
        })
    };
    // Give the waiter time to start waiting, then post.
    tokio::time::sleep(Duration::from_millis(200)).await;
    board.post(job("wake")).await.unwrap();
    let waited = waiter.await.unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "the waiter slept through the post ({waited:?})"
    );
}

/// A claim takes only jobs its offer covers, and pins an unpinned job to the newest version
/// it offers; jobs it cannot run are left for others, untouched.
pub async fn claims_take_only_jobs_the_offer_covers<B: JobBoard, S: Store>(board: B, _store: S) {
    let alpha = board.post(NewJob::new("a", "alpha")).await.unwrap();
    let beta = board
        .post(NewJob::new("b", "beta").version(2))
        .await
        .unwrap();
    let alpha3 = board
        .post(NewJob::new("a3", "alpha").version(3))
        .await
        .unwrap();
    assert_eq!(alpha.version, None);
    assert_eq!(beta.version, Some(2));

    let old = Offer::new().with("alpha", 1).with("alpha", 2);
    let claim = board
        .claim(ConductorId::new(), LEASE, &old)
        .await
        .unwrap()
        .expect("alpha can be run");
    assert_eq!(claim.job.id, alpha.id);
    assert_eq!(
        claim.job.version,
        Some(2),
        "pinned to the newest version offered"
    );
    assert_eq!(board.get(alpha.id).await.unwrap().version, Some(2));
    assert!(
        board
            .claim(ConductorId::new(), LEASE, &old)
            .await
            .unwrap()
            .is_none(),
        "beta is not offered and alpha v3 not either"
    );
    let claims = board
        .claim_up_to(ConductorId::new(), LEASE, 5, &old)
        .await
        .unwrap();
    assert!(claims.is_empty(), "{claims:?}");
    for id in [beta.id, alpha3.id] {
        let waiting = board.get(id).await.unwrap();
        assert_eq!((waiting.state, waiting.attempts), (JobState::Unclaimed, 0));
    }
    let claim = board
        .claim(ConductorId::new(), LEASE, &Offer::new().with("beta", 2))
        .await
        .unwrap()
        .expect("beta v2 can be run");
    assert_eq!((claim.job.id, claim.job.version), (beta.id, Some(2)));
    let claim = board
        .claim(ConductorId::new(), LEASE, &Offer::new().with("alpha", 3))
        .await
        .unwrap()
        .expect("alpha v3 can be run");
    assert_eq!((claim.job.id, claim.job.version), (alpha3.id, Some(3)));
    assert!(board
        .claim(ConductorId::new(), LEASE, &Offer::new())
        .await
        .unwrap()
        .is_none());
}

/// A job nobody can run waits, and holds back the later jobs of its key.
pub async fn a_job_nobody_can_run_holds_its_key<B: JobBoard, S: Store>(board: B, _store: S) {
    let first = board
        .post(NewJob::new("first", "retired").key("stack-1"))
        .await
        .unwrap();
    let second = board.post(job("second").key("stack-1")).await.unwrap();
    let free = board.post(job("free")).await.unwrap();
    let claims = board
        .claim_up_to(ConductorId::new(), LEASE, 5, &offer())
        .await
        .unwrap();
    let ids: Vec<_> = claims.iter().map(|c| c.job.id).collect();
    assert_eq!(
        ids,
        [free.id],
        "the second job of the key waits behind the first"
    );
    assert_eq!(
        board.get(first.id).await.unwrap().state,
        JobState::Unclaimed
    );
    assert_eq!(
        board.get(second.id).await.unwrap().state,
        JobState::Unclaimed
    );
}

/// Parking stops a job under its current claim: the token moves on, the reason is its
/// outcome, the job keeps its key, and purges leave it alone; requeueing puts it back.
pub async fn parking_keeps_the_job_and_its_key_for_an_operator<B: JobBoard, S: Store>(
    board: B,
    store: S,
) {
    let parked = board.post(job("parked").key("stack-2")).await.unwrap();
    let behind = board.post(job("behind").key("stack-2")).await.unwrap();
    let claim = board
        .claim(ConductorId::new(), LEASE, &offer())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.job.id, parked.id);
    let record = job_run(parked.id, "parked-run");
    store
        .create_flow(&record, &[], Some(claim.fence))
        .await
        .unwrap();
    board
        .park(
            claim.fence,
            json!({"parked": "definition", "error": "v1 is gone"}),
        )
        .await
        .unwrap();
    let job = board.get(parked.id).await.unwrap();
    assert_eq!(job.state, JobState::Parked);
    assert_eq!(
        job.outcome,
        Some(json!({"parked": "definition", "error": "v1 is gone"}))
    );
    assert_eq!(job.owner, None);
    assert!(job.token > claim.fence.token, "parking moves the token");
    // The claim is gone everywhere.
    assert!(matches!(
        board.heartbeat(claim.fence, LEASE, false).await,
        Err(Error::ClaimLost { .. })
    ));
    assert!(matches!(
        board.park(claim.fence, json!("again")).await,
        Err(Error::ClaimLost { .. })
    ));
    assert_fenced(&store, record.id, claim.fence).await;
    // Its key is held: the next job of the key waits.
    assert!(board
        .claim(ConductorId::new(), LEASE, &offer())
        .await
        .unwrap()
        .is_none());
    // Purges leave a parked job (and its run) alone.
    let later = Utc::now() + chrono::Duration::days(1);
    assert_eq!(board.purge_jobs(later, 10).await.unwrap(), 0);
    // An operator retries it: back on the board, first of its key again.
    let requeued = board.requeue(parked.id, Requeue::retry()).await.unwrap();
    assert_eq!(requeued.state, JobState::Unclaimed);
    assert_eq!(requeued.outcome, None);
    assert_eq!(requeued.cancel, None);
    let again = board
        .claim(ConductorId::new(), LEASE, &offer())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.job.id, parked.id);
    assert_eq!(
        again.job.stalled_claims, 1,
        "a requeued job starts its stall count afresh"
    );
    assert_eq!(
        board.get(behind.id).await.unwrap().state,
        JobState::Unclaimed
    );
}

/// Every claim counts a stall; a heartbeat reporting progress and a hand-back reset it.
pub async fn stalled_claims_count_claims_without_progress<B: JobBoard, S: Store>(
    board: B,
    _store: S,
) {
    let posted = board.post(job("crashy")).await.unwrap();
    assert_eq!(posted.stalled_claims, 0);
    let short = Duration::from_millis(50);
    let mut last = None;
    for expected in 1..=3 {
        let claim = loop {
            if let Some(c) = board
                .claim(ConductorId::new(), short, &offer())
                .await
                .unwrap()
            {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(claim.job.stalled_claims, expected);
        last = Some(claim);
    }
    let claim = last.unwrap();
    // A heartbeat without progress changes nothing; with progress, the count starts over.
    board.heartbeat(claim.fence, LEASE, false).await.unwrap();
    assert_eq!(board.get(posted.id).await.unwrap().stalled_claims, 3);
    board.heartbeat(claim.fence, LEASE, true).await.unwrap();
    assert_eq!(board.get(posted.id).await.unwrap().stalled_claims, 0);
    // Handing the job back is no stall either.
    board.abandon(claim.fence).await.unwrap();
    let next = board
        .claim(ConductorId::new(), LEASE, &offer())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.job.stalled_claims, 1);
    board.abandon(next.fence).await.unwrap();
    assert_eq!(board.get(posted.id).await.unwrap().stalled_claims, 0);
}

/// `requeue` puts back what an operator may put back, and refuses the rest, changing nothing.
pub async fn requeue_puts_back_only_what_may_go_back<B: JobBoard, S: Store>(board: B, store: S) {
    assert!(matches!(
        board
            .requeue(baton_core::JobId::new(), Requeue::retry())
            .await,
        Err(Error::JobNotFound(_))
    ));
    // A job running under a live lease is its owner's.
    let running = board.post(job("running")).await.unwrap();
    let claim = board
        .claim(ConductorId::new(), LEASE, &offer())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.job.id, running.id);
    assert!(matches!(
        board.requeue(running.id, Requeue::revert()).await,
        Err(Error::InvalidState {
            state: JobState::Claimed,
            ..
        })
    ));
    assert_eq!(board.get(running.id).await.unwrap().cancel, None);
    // A job that ended goes back only when asked to reopen it, and only while its run is
    // unfinished.
    let record = job_run(running.id, "running");
    store
        .create_flow(&record, &[], Some(claim.fence))
        .await
        .unwrap();
    board.consume(claim.fence, json!("done")).await.unwrap();
    assert!(matches!(
        board.requeue(running.id, Requeue::retry()).await,
        Err(Error::InvalidState {
            state: JobState::Complete,
            ..
        })
    ));
    assert_eq!(
        board.get(running.id).await.unwrap().state,
        JobState::Complete
    );
    let reopened = board
        .requeue(running.id, Requeue::revert().reopening_ended())
        .await
        .unwrap();
    assert_eq!(reopened.state, JobState::Unclaimed);
    assert_eq!(reopened.cancel, Some(Cancel::Revert));
    assert_eq!(reopened.outcome, None);
    // Its run ends; the job is consumed again; now it cannot be reopened.
    let again = claim_next(&board).await;
    assert_eq!(again.job.id, running.id);
    for (from, to) in [
        (FlowState::Pending, FlowState::Running),
        (FlowState::Running, FlowState::Success),
    ] {
        store
            .commit(&flow_move(record.id, Some(again.fence), from, to))
            .await
            .unwrap();
    }
    board.consume(again.fence, json!("done")).await.unwrap();
    assert!(matches!(
        board
            .requeue(running.id, Requeue::revert().reopening_ended())
            .await,
        Err(Error::InvalidState {
            state: JobState::Complete,
            ..
        })
    ));
    assert_eq!(
        board.get(running.id).await.unwrap().outcome,
        Some(json!("done"))
    );
    // A claim whose lease ran out is revoked by a requeue: its owner can write nothing more.
    let stale = board.post(job("stale")).await.unwrap();
    let short = board
        .claim(ConductorId::new(), Duration::from_millis(50), &offer())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(short.job.id, stale.id);
    let stale_run = job_run(stale.id, "stale");
    store
        .create_flow(&stale_run, &[], Some(short.fence))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let requeued = board.requeue(stale.id, Requeue::revert()).await.unwrap();
    assert_eq!(
        (requeued.state, requeued.owner),
        (JobState::Unclaimed, None)
    );
    assert!(matches!(
        board.heartbeat(short.fence, LEASE, false).await,
        Err(Error::ClaimLost { .. })
    ));
    assert_fenced(&store, stale_run.id, short.fence).await;
    board
        .trash(stale.id, None, json!("done with it"))
        .await
        .unwrap();
    // A waiting job stays waiting, with the request added; its claimer sees it.
    let waiting = board.post(job("waiting")).await.unwrap();
    let asked = board.requeue(waiting.id, Requeue::revert()).await.unwrap();
    assert_eq!(
        (asked.state, asked.cancel),
        (JobState::Unclaimed, Some(Cancel::Revert))
    );
    let claims = board
        .claim_up_to(ConductorId::new(), LEASE, 5, &offer())
        .await
        .unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].job.id, waiting.id);
    assert_eq!(claims[0].job.cancel, Some(Cancel::Revert));
}

/// Retention keeps a job that ended while its run did not (trashed mid-run): it is what an
/// operator recovers the run with.
pub async fn jobs_of_unfinished_runs_are_not_purged<B: JobBoard, S: Store>(board: B, store: S) {
    let posted = board.post(job("half-done")).await.unwrap();
    let claim = claim_next(&board).await;
    let record = job_run(posted.id, "half-done");
    store
        .create_flow(&record, &[], Some(claim.fence))
        .await
        .unwrap();
    store
        .commit(&flow_move(
            record.id,
            Some(claim.fence),
            FlowState::Pending,
            FlowState::Running,
        ))
        .await
        .unwrap();
    board
        .trash(posted.id, None, json!("gave up"))
        .await
        .unwrap();
    let later = Utc::now() + chrono::Duration::days(1);
    assert_eq!(board.purge_jobs(later, 10).await.unwrap(), 0);
    assert_eq!(board.get(posted.id).await.unwrap().state, JobState::Trashed);
}

/// The backlog counts the jobs waiting to be claimed, by factory: not the claimed, ended or
/// trashed ones.
pub async fn backlog_counts_waiting_jobs_by_factory<B: JobBoard, S: Store>(board: B, _store: S) {
    assert!(board.backlog().await.unwrap().is_empty());
    for (name, factory) in [
        ("n1", "noop"),
        ("n2", "noop"),
        ("n3", "noop"),
        ("s1", "steps"),
        ("x", "other \"one\""),
    ] {
        board.post(NewJob::new(name, factory)).await.unwrap();
    }
    let count = |backlog: &std::collections::BTreeMap<String, u64>, f: &str| {
        backlog.get(f).copied().unwrap_or(0)
    };
    let backlog = board.backlog().await.unwrap();
    assert_eq!(count(&backlog, "noop"), 3);
    assert_eq!(count(&backlog, "steps"), 1);
    assert_eq!(count(&backlog, "other \"one\""), 1);
    // Claimed (n1), consumed (n2), trashed (s1): no longer waiting.
    let first = claim_next(&board).await;
    assert_eq!(first.job.name, "n1");
    let second = claim_next(&board).await;
    board.consume(second.fence, json!({})).await.unwrap();
    let steps = board
        .list(&JobQuery::all().state(JobState::Unclaimed))
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.name == "s1")
        .unwrap();
    board.trash(steps.id, None, json!({})).await.unwrap();
    let backlog = board.backlog().await.unwrap();
    assert_eq!(count(&backlog, "noop"), 1, "{backlog:?}");
    assert_eq!(count(&backlog, "steps"), 0, "{backlog:?}");
    assert_eq!(backlog.values().sum::<u64>(), 2, "{backlog:?}");
}

/// Conductors register, show up in the fleet, and leave it.
pub async fn conductors_register_and_leave<B: JobBoard, S: Store>(board: B, _store: S) {
    let now = Utc::now();
    let info = ConductorInfo {
        id: ConductorId::new(),
        name: "c1".into(),
        host: "host-a".into(),
        pid: 42,
        started_at: now,
        last_seen: now,
        offer: offer(),
    };
    board.register(&info).await.unwrap();
    let fleet = board.conductors().await.unwrap();
    assert!(fleet
        .iter()
        .any(|c| c.id == info.id && c.host == "host-a" && c.pid == 42 && c.offer == offer()));
    board.deregister(info.id).await.unwrap();
    assert!(!board
        .conductors()
        .await
        .unwrap()
        .iter()
        .any(|c| c.id == info.id));
}

/// Reads every page of `query` with pages of `size`, each after the previous page's last row,
/// checking that no page is longer than `size` and that every row passes the filter: the rows
/// in the order they came.
async fn all_job_pages<B: JobBoard>(
    board: &B,
    query: &JobQuery,
    size: usize,
) -> Vec<baton_core::JobId> {
    let mut seen = Vec::new();
    let mut page_query = query.clone().limit(size);
    loop {
        let page = board.list(&page_query).await.unwrap();
        assert!(
            page.len() <= size,
            "a page of {} jobs with limit {size}",
            page.len()
        );
        assert!(page.iter().all(|j| query.matches(j)), "{query:?}: {page:?}");
        seen.extend(page.iter().map(|j| j.id));
        match page.last() {
            Some(last) if page.len() == size => page_query = page_query.after(last.id),
            _ => return seen,
        }
    }
}

/// Listings page: pages of any size, each after the last row of the one before, hold every
/// job the filter selects exactly once, in posting order, with each filter (state, key,
/// owner); a page after a job the board does not hold is refused, naming the job.
pub async fn listings_page_through_every_job_once<B: JobBoard, S: Store>(board: B, _store: S) {
    let keys = [
        format!("page-a-{}", ConductorId::new()),
        format!("page-b-{}", ConductorId::new()),
    ];
    let mut posted = Vec::new();
    for i in 0..8 {
        let mut new = job(&format!("page-{i}"));
        if i % 3 != 2 {
            new = new.key(&keys[i % 2]);
        }
        posted.push(board.post(new).await.unwrap().id);
    }
    // Two owners claim some (the first free job of each key, and the keyless ones); one claim
    // ends, one job is trashed.
    let owners = [ConductorId::new(), ConductorId::new()];
    let mut claims = Vec::new();
    for owner in owners.iter().cycle().take(3) {
        if let Some(claim) = board.claim(*owner, LEASE, &offer()).await.unwrap() {
            claims.push(claim);
        }
    }
    assert_eq!(claims.len(), 3, "three jobs to claim");
    board
        .consume(claims[0].fence, json!({"done": true}))
        .await
        .unwrap();
    board
        .trash(posted[7], None, json!({"by": "tests"}))
        .await
        .unwrap();
    let mut jobs = Vec::new();
    for id in &posted {
        jobs.push(board.get(*id).await.unwrap());
    }
    let queries = [
        JobQuery::all(),
        JobQuery::all().state(JobState::Unclaimed),
        JobQuery::all().state(JobState::Claimed),
        JobQuery::all().key(&keys[0]),
        JobQuery::all().key(&keys[1]).state(JobState::Unclaimed),
        JobQuery::all().owner(owners[0]),
        JobQuery::all().owner(owners[1]),
    ];
    for query in &queries {
        let expected: Vec<_> = jobs
            .iter()
            .filter(|j| query.matches(j))
            .map(|j| j.id)
            .collect();
        assert!(!expected.is_empty(), "{query:?} selects no job");
        for size in [1, 2, 3, expected.len(), expected.len() + 1] {
            let seen = all_job_pages(&board, query, size).await;
            let unique: HashSet<_> = seen.iter().collect();
            assert_eq!(
                unique.len(),
                seen.len(),
                "{query:?} in pages of {size}: a job twice"
            );
            // Only the jobs of this case count (a board may hold others).
            let mine: Vec<_> = seen.into_iter().filter(|id| posted.contains(id)).collect();
            assert_eq!(mine, expected, "{query:?} in pages of {size}");
        }
    }
    // After the newest job, nothing of this case follows.
    let tail = board.list(&JobQuery::all().after(posted[7])).await.unwrap();
    assert!(tail.iter().all(|j| !posted.contains(&j.id)));
    // A cursor the board does not hold is refused, naming it.
    let ghost = baton_core::JobId::new();
    let err = board
        .list(&JobQuery::all().after(ghost).limit(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnknownCursor(id) if id == ghost),
        "{err}"
    );
    assert!(err.to_string().contains(&ghost.to_string()));
}

/// The next job `owner` claims (`None`: none may run now).
async fn next_id<B: JobBoard>(board: &B, owner: ConductorId) -> Option<baton_core::JobId> {
    board
        .claim(owner, LEASE, &offer())
        .await
        .unwrap()
        .map(|c| c.job.id)
}

/// The ids of the jobs `query` lists.
async fn listed_jobs<B: JobBoard>(board: &B, query: JobQuery) -> Vec<baton_core::JobId> {
    board
        .list(&query)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect()
}

/// However many jobs ended before them, claims take the waiting jobs by priority, then posting
/// order; a job put back on the board (abandoned, or an ended job reopened) takes its old place
/// in that order; keys hold through parked jobs; listings by state, purges and fences see what
/// they would on a board with no history. (Boards keep what claims read apart from what ended:
/// this is what they must keep doing.)
pub async fn claims_keep_their_order_among_ended_jobs<B: JobBoard, S: Store>(board: B, store: S) {
    let owner = ConductorId::new();
    // A history: 30 jobs, every fifth of key "k", the others every third of priority 5, each
    // claimed and ended (consumed, or trashed under its claim) before the next claim.
    let mut old = Vec::new();
    for i in 0..30 {
        let mut new = job(&format!("old-{i}"));
        if i % 5 == 0 {
            new = new.key("k");
        } else if i % 3 == 0 {
            new = new.priority(5);
        }
        old.push(board.post(new).await.unwrap());
    }
    let mut expected: Vec<_> = old.iter().enumerate().collect();
    expected.sort_by_key(|(i, j)| (std::cmp::Reverse(j.priority), *i));
    let mut fences = Vec::new();
    let mut reopenable = None;
    for (n, (_, want)) in expected.iter().enumerate() {
        let claim = claim_next(&board).await;
        assert_eq!(claim.job.id, want.id, "claim {n} of the history");
        if n % 2 == 0 {
            board.consume(claim.fence, json!("ok")).await.unwrap();
        } else {
            if reopenable.is_none() && claim.job.priority == 0 {
                // A run left unfinished, so that its trashed job may be reopened.
                store
                    .create_flow(&job_run(claim.job.id, "old"), &[], Some(claim.fence))
                    .await
                    .unwrap();
                reopenable = Some(claim.job.clone());
            }
            board
                .trash(claim.job.id, Some(claim.fence), json!("no"))
                .await
                .unwrap();
        }
        fences.push(claim.fence);
    }
    assert_eq!(next_id(&board, owner).await, None, "the history has ended");
    let reopened = reopenable.expect("a trashed job of priority 0");

    // New jobs among the ended ones; one ended job is reopened and one claim handed back.
    let a = board.post(job("a")).await.unwrap();
    let b = board.post(job("b").key("k2")).await.unwrap();
    let c = board.post(job("c").key("k2").priority(9)).await.unwrap();
    let d = board.post(job("d").priority(1)).await.unwrap();
    board
        .requeue(reopened.id, Requeue::retry().reopening_ended())
        .await
        .unwrap();
    assert_eq!(
        listed_jobs(&board, JobQuery::all().state(JobState::Unclaimed)).await,
        vec![reopened.id, a.id, b.id, c.id, d.id],
        "waiting jobs are listed in posting order"
    );
    assert_eq!(
        listed_jobs(&board, JobQuery::all().state(JobState::Unclaimed).limit(2)).await,
        vec![reopened.id, a.id]
    );
    assert_eq!(
        listed_jobs(&board, JobQuery::all().state(JobState::Complete))
            .await
            .len(),
        15
    );
    assert_eq!(
        listed_jobs(&board, JobQuery::all().key("k")).await.len(),
        6,
        "listings by key see ended jobs too"
    );
    let first = claim_next(&board).await;
    assert_eq!(first.job.id, d.id, "priority first");
    board.abandon(first.fence).await.unwrap();
    // `c` outranks everything but waits for `b`, the earlier job of its key.
    assert_eq!(
        next_id(&board, owner).await,
        Some(d.id),
        "an abandoned job keeps its place"
    );
    assert_eq!(
        next_id(&board, owner).await,
        Some(reopened.id),
        "a reopened job keeps its place"
    );
    assert_eq!(next_id(&board, owner).await, Some(a.id));
    let b_claim = claim_next(&board).await;
    assert_eq!(b_claim.job.id, b.id);
    assert_eq!(next_id(&board, owner).await, None, "c waits for b");
    board.consume(b_claim.fence, json!("ok")).await.unwrap();
    assert_eq!(next_id(&board, owner).await, Some(c.id));

    // A parked job holds its key until it is trashed.
    let p = board.post(job("p").key("k3")).await.unwrap();
    let q = board.post(job("q").key("k3").priority(9)).await.unwrap();
    let p_claim = claim_next(&board).await;
    assert_eq!(p_claim.job.id, p.id);
    board.park(p_claim.fence, json!("look")).await.unwrap();
    assert_eq!(
        next_id(&board, owner).await,
        None,
        "q waits for the parked p"
    );
    assert_eq!(
        listed_jobs(&board, JobQuery::all().state(JobState::Parked)).await,
        vec![p.id]
    );
    board
        .trash(p.id, None, json!("done with it"))
        .await
        .unwrap();
    let q_claim = claim_next(&board).await;
    assert_eq!(q_claim.job.id, q.id);
    assert_eq!(
        listed_jobs(&board, JobQuery::all().state(JobState::Claimed)).await,
        vec![reopened.id, a.id, c.id, d.id, q.id]
    );
    assert_eq!(
        listed_jobs(&board, JobQuery::all().owner(owner)).await,
        vec![reopened.id, a.id, c.id, d.id],
        "claimed by the first owner"
    );

    // Ending what is claimed and purging everything leaves only the reopened job, whose run
    // is unfinished; the fences of purged jobs stay refused, and new posts are claimed.
    for job in board
        .list(&JobQuery::all().state(JobState::Claimed))
        .await
        .unwrap()
    {
        let fence = baton_core::Fence {
            job: job.id,
            token: job.token,
        };
        board.consume(fence, json!("ok")).await.unwrap();
    }
    assert_eq!(
        board
            .purge_jobs(chrono::DateTime::<Utc>::MAX_UTC, 1000)
            .await
            .unwrap(),
        35
    );
    assert_eq!(
        listed_jobs(&board, JobQuery::all()).await,
        vec![reopened.id]
    );
    for fence in &fences[..3] {
        assert!(board.heartbeat(*fence, LEASE, false).await.is_err());
    }
    let e = board.post(job("e").key("k")).await.unwrap();
    assert_eq!(
        next_id(&board, owner).await,
        Some(e.id),
        "key k is free again"
    );
    assert_eq!(
        listed_jobs(&board, JobQuery::all().state(JobState::Claimed)).await,
        vec![e.id]
    );
}

/// Expands to one `#[tokio::test]` per job-board case, each given `(board, store)` from
/// `$make` (an expression, which may `.await`). With `optional:`, `$make` gives an `Option` and
/// `None` skips the case (for backends whose server may be missing).
#[macro_export]
macro_rules! board_conformance {
    (optional: $make:expr) => {
        $crate::board_conformance!(@all [optional] $make);
    };
    ($make:expr) => {
        $crate::board_conformance!(@all [required] $make);
    };
    (@all [$mode:ident] $make:expr) => {
        $crate::board_conformance!(@cases [$mode] $make;
            claims_are_exclusive_under_concurrency,
            expired_leases_are_reclaimed_with_a_new_token,
            stale_tokens_are_refused_everywhere,
            keys_serialise_jobs_in_posting_order,
            abandon_hands_over_at_once,
            abandon_revokes_the_claim,
            a_claim_fences_only_its_jobs_flow,
            a_lost_answer_to_the_last_step_is_not_a_lost_claim,
            release_revokes_the_claim,
            trash_hides_jobs_and_revokes_claims,
            priorities_order_claims,
            claims_up_to_take_what_single_claims_would,
            consume_records_the_outcome,
            a_flows_last_step_can_consume_its_job,
            a_first_batch_carries_the_creations_fence,
            bad_input_is_refused,
            params_over_the_limit_are_refused,
            posting_wakes_waiters,
            conductors_register_and_leave,
            purge_deletes_only_jobs_that_ended_before_the_cutoff,
            runs_of_open_jobs_are_not_purged,
            claims_take_only_jobs_the_offer_covers,
            a_job_nobody_can_run_holds_its_key,
            parking_keeps_the_job_and_its_key_for_an_operator,
            stalled_claims_count_claims_without_progress,
            requeue_puts_back_only_what_may_go_back,
            jobs_of_unfinished_runs_are_not_purged,
            unclaimed_jobs_carry_cancel_requests_to_their_claimant,
            owners_learn_of_cancel_requests_on_their_jobs,
            parked_jobs_asked_to_revert_go_back_to_be_reverted,
            parking_answers_a_request_to_suspend,
            cancel_requests_on_ended_or_unknown_jobs_change_nothing,
            cancel_requests_wake_the_waiting_owner,
            superseding_posts_revert_the_earlier_jobs_of_their_key,
            deadlines_are_kept_and_past_ones_refused,
            superseding_without_a_key_is_refused,
            listings_page_through_every_job_once,
            claims_keep_their_order_among_ended_jobs,
            backlog_counts_waiting_jobs_by_factory,
        );
    };
    (@cases [required] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (board, store) = $make;
                $crate::board::$case(board, store).await;
            }
        )*
    };
    (@cases [optional] $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some((board, store)) = $make {
                    $crate::board::$case(board, store).await;
                }
            }
        )*
    };
}
