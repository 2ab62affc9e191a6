//! Job-board cases for cancel requests, supersede by key, and job deadlines.

use std::time::{Duration, Instant};

use baton_core::board::{Cancel, Error, Job, JobBoard, JobQuery};
use baton_core::store::Store;
use baton_core::{ConductorId, JobState};
use chrono::Utc;
use serde_json::json;

use super::{assert_fenced, claim_next, job, job_run, offer, LEASE};

/// Every job on `board`, in posting order.
async fn all<B: JobBoard>(board: &B) -> Vec<Job> {
    board.list(&JobQuery::all()).await.unwrap()
}

/// A job that nobody claimed carries the request, for whoever claims it; a revert wins over a
/// suspend, and asking again what a job carries changes nothing.
pub async fn unclaimed_jobs_carry_cancel_requests_to_their_claimant<B: JobBoard, S: Store>(
    board: B,
    _store: S,
) {
    let posted = board.post(job("waiting")).await.unwrap();
    let asked = board
        .request_cancel(posted.id, Cancel::Suspend)
        .await
        .unwrap();
    assert_eq!(
        (asked.state, asked.cancel, asked.token),
        (JobState::Unclaimed, Some(Cancel::Suspend), posted.token)
    );
    assert_eq!(board.get(posted.id).await.unwrap(), asked);
    // The same request again changes nothing, not even the time of the last change.
    let again = board
        .request_cancel(posted.id, Cancel::Suspend)
        .await
        .unwrap();
    assert_eq!(again, asked);
    // A revert replaces the suspend, and a suspend cannot take it back.
    let reverting = board
        .request_cancel(posted.id, Cancel::Revert)
        .await
        .unwrap();
    assert_eq!(reverting.cancel, Some(Cancel::Revert));
    let kept = board
        .request_cancel(posted.id, Cancel::Suspend)
        .await
        .unwrap();
    assert_eq!(kept, reverting);
    assert_eq!(
        board
            .request_cancel(posted.id, Cancel::Revert)
            .await
            .unwrap(),
        reverting
    );
    let claim = claim_next(&board).await;
    assert_eq!(claim.job.id, posted.id);
    assert_eq!(claim.job.cancel, Some(Cancel::Revert));
}

/// A claimed job carries the request and its owner lists it (nobody else does), the claim
/// untouched; a job whose owner died carries it to the next claimant.
pub async fn owners_learn_of_cancel_requests_on_their_jobs<B: JobBoard, S: Store>(
    board: B,
    _store: S,
) {
    let asked = board.post(job("asked")).await.unwrap();
    let quiet = board.post(job("quiet")).await.unwrap();
    let owner = ConductorId::new();
    let claims = board.claim_up_to(owner, LEASE, 2, &offer()).await.unwrap();
    assert_eq!(
        claims.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        [asked.id, quiet.id]
    );
    assert!(board.cancel_requests(owner).await.unwrap().is_empty());
    let now = board
        .request_cancel(asked.id, Cancel::Suspend)
        .await
        .unwrap();
    assert_eq!(
        (now.state, now.owner, now.token, now.cancel),
        (
            JobState::Claimed,
            Some(owner),
            claims[0].fence.token,
            Some(Cancel::Suspend)
        )
    );
    assert_eq!(
        board.cancel_requests(owner).await.unwrap(),
        [(asked.id, Cancel::Suspend)]
    );
    board
        .request_cancel(asked.id, Cancel::Revert)
        .await
        .unwrap();
    assert_eq!(
        board.cancel_requests(owner).await.unwrap(),
        [(asked.id, Cancel::Revert)]
    );
    assert!(board
        .cancel_requests(ConductorId::new())
        .await
        .unwrap()
        .is_empty());
    // The claim holds: the owner stops the run itself.
    for claim in &claims {
        board.heartbeat(claim.fence, LEASE, false).await.unwrap();
    }
    assert_eq!(board.get(quiet.id).await.unwrap().cancel, None);
    // Once the job is no longer claimed by the owner, it is no request of the owner's.
    board.abandon(claims[0].fence).await.unwrap();
    assert!(board.cancel_requests(owner).await.unwrap().is_empty());

    // An owner that died: its lease runs out, and the next claimant gets the request.
    let orphan = board.post(job("orphan")).await.unwrap();
    let dead = ConductorId::new();
    let doomed = loop {
        // The job handed back above comes first.
        let claim = board
            .claim(dead, Duration::from_millis(50), &offer())
            .await
            .unwrap()
            .unwrap();
        if claim.job.id == orphan.id {
            break claim;
        }
        board.consume(claim.fence, json!("done")).await.unwrap();
    };
    board
        .request_cancel(orphan.id, Cancel::Revert)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let next = claim_next(&board).await;
    assert_eq!(next.job.id, orphan.id);
    assert!(next.fence.token > doomed.fence.token);
    assert_eq!(next.job.cancel, Some(Cancel::Revert));
    assert_eq!(
        board
            .cancel_requests(next.job.owner.unwrap())
            .await
            .unwrap(),
        [(orphan.id, Cancel::Revert)]
    );
}

/// A parked job asked to suspend is left as it is; asked to revert, it goes back on the board
/// with the request, its old claim revoked everywhere, as an operator's requeue puts it.
pub async fn parked_jobs_asked_to_revert_go_back_to_be_reverted<B: JobBoard, S: Store>(
    board: B,
    store: S,
) {
    let posted = board.post(job("parked").key("stack-c")).await.unwrap();
    let claim = claim_next(&board).await;
    let record = job_run(posted.id, "parked-run");
    store
        .create_flow(&record, &[], Some(claim.fence))
        .await
        .unwrap();
    board
        .park(claim.fence, json!({"parked": "definition"}))
        .await
        .unwrap();
    let parked = board.get(posted.id).await.unwrap();
    let same = board
        .request_cancel(posted.id, Cancel::Suspend)
        .await
        .unwrap();
    assert_eq!(same, parked, "a parked job is at rest already");
    assert_eq!(board.get(posted.id).await.unwrap(), parked);

    let reopened = board
        .request_cancel(posted.id, Cancel::Revert)
        .await
        .unwrap();
    assert_eq!(
        (reopened.state, reopened.cancel, reopened.outcome.clone()),
        (JobState::Unclaimed, Some(Cancel::Revert), None)
    );
    assert!(
        reopened.token > parked.token,
        "the reopening moves the token"
    );
    assert_fenced(&store, record.id, claim.fence).await;
    let next = claim_next(&board).await;
    assert_eq!(
        (next.job.id, next.job.cancel),
        (posted.id, Some(Cancel::Revert))
    );
}

/// Parking answers a request to suspend (it is cleared); a request to revert stays.
pub async fn parking_answers_a_request_to_suspend<B: JobBoard, S: Store>(board: B, _store: S) {
    let suspended = board.post(job("suspended")).await.unwrap();
    let claim = claim_next(&board).await;
    board
        .request_cancel(suspended.id, Cancel::Suspend)
        .await
        .unwrap();
    board
        .park(claim.fence, json!({"parked": "suspended"}))
        .await
        .unwrap();
    let parked = board.get(suspended.id).await.unwrap();
    assert_eq!((parked.state, parked.cancel), (JobState::Parked, None));

    let reverting = board.post(job("reverting")).await.unwrap();
    let claim = claim_next(&board).await;
    board
        .request_cancel(reverting.id, Cancel::Revert)
        .await
        .unwrap();
    board
        .park(claim.fence, json!({"parked": "store"}))
        .await
        .unwrap();
    let parked = board.get(reverting.id).await.unwrap();
    assert_eq!(
        (parked.state, parked.cancel),
        (JobState::Parked, Some(Cancel::Revert))
    );
}

/// A job that ended refuses a cancel request with `Ended`, and an unknown one with
/// `JobNotFound`; nothing stored changes.
pub async fn cancel_requests_on_ended_or_unknown_jobs_change_nothing<B: JobBoard, S: Store>(
    board: B,
    _store: S,
) {
    let done = board.post(job("done")).await.unwrap();
    let claim = claim_next(&board).await;
    board.consume(claim.fence, json!("ok")).await.unwrap();
    let gone = board.post(job("gone")).await.unwrap();
    board.trash(gone.id, None, json!("no")).await.unwrap();
    let before = all(&board).await;
    for (id, state) in [(done.id, JobState::Complete), (gone.id, JobState::Trashed)] {
        for how in [Cancel::Revert, Cancel::Suspend] {
            match board.request_cancel(id, how).await {
                Err(Error::Ended { job, state: s }) => assert_eq!((job, s), (id, state)),
                other => panic!("a cancel request on a {state} job answered {other:?}"),
            }
        }
    }
    let unknown = baton_core::JobId::new();
    assert!(matches!(
        board.request_cancel(unknown, Cancel::Revert).await,
        Err(Error::JobNotFound(id)) if id == unknown
    ));
    assert_eq!(all(&board).await, before);
}

/// An owner waiting for cancel requests is woken when one is made (here by another handle on
/// the board), well before its wait's timeout, and then finds it.
pub async fn cancel_requests_wake_the_waiting_owner<B: JobBoard + Clone + 'static, S: Store>(
    board: B,
    _store: S,
) {
    let posted = board.post(job("to-stop")).await.unwrap();
    let owner = ConductorId::new();
    let claim = board.claim(owner, LEASE, &offer()).await.unwrap().unwrap();
    assert_eq!(claim.job.id, posted.id);
    let waiter = {
        let board = board.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            board.wait_for_cancel(owner, Duration::from_secs(30)).await;
            start.elapsed()
        })
    };
    // Give the waiter time to start waiting, then ask.
    tokio::time::sleep(Duration::from_millis(200)).await;
    board
        .request_cancel(posted.id, Cancel::Revert)
        .await
        .unwrap();
    let waited = waiter.await.unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "the owner slept through the request ({waited:?})"
    );
    assert_eq!(
        board.cancel_requests(owner).await.unwrap(),
        [(posted.id, Cancel::Revert)]
    );
}

/// A superseding post asks the earlier unfinished jobs of its key to revert (a claimed one
/// keeps its claim, its owner told; a parked one goes back to be reverted; ended ones and
/// other keys are left alone), lists them, and waits behind them: it is claimable only once
/// they are consumed.
pub async fn superseding_posts_revert_the_earlier_jobs_of_their_key<B: JobBoard, S: Store>(
    board: B,
    _store: S,
) {
    let ended = board.post(job("ended").key("stack-s")).await.unwrap();
    let claim = claim_next(&board).await;
    assert_eq!(claim.job.id, ended.id);
    board.consume(claim.fence, json!("ok")).await.unwrap();
    let running = board.post(job("running").key("stack-s")).await.unwrap();
    let owner = ConductorId::new();
    let claim = board.claim(owner, LEASE, &offer()).await.unwrap().unwrap();
    assert_eq!(claim.job.id, running.id);
    let waiting = board.post(job("waiting").key("stack-s")).await.unwrap();
    let other = board.post(job("other").key("stack-t")).await.unwrap();

    let new = board
        .post(job("update").key("stack-s").supersede())
        .await
        .unwrap();
    assert_eq!(new.supersedes, [running.id, waiting.id]);
    assert_eq!((new.state, new.cancel), (JobState::Unclaimed, None));
    assert_eq!(board.get(new.id).await.unwrap(), new);
    let now = board.get(running.id).await.unwrap();
    assert_eq!(
        (now.state, now.token, now.cancel),
        (JobState::Claimed, claim.fence.token, Some(Cancel::Revert))
    );
    assert_eq!(
        board.cancel_requests(owner).await.unwrap(),
        [(running.id, Cancel::Revert)]
    );
    assert_eq!(
        board.get(waiting.id).await.unwrap().cancel,
        Some(Cancel::Revert)
    );
    assert_eq!(board.get(other.id).await.unwrap().cancel, None);
    assert_eq!(board.get(ended.id).await.unwrap().cancel, None);

    // Nothing of the key is claimable while the old run is reverted.
    let others = claim_next(&board).await;
    assert_eq!(others.job.id, other.id);
    assert!(board
        .claim(ConductorId::new(), LEASE, &offer())
        .await
        .unwrap()
        .is_none());
    board.consume(claim.fence, json!("reverted")).await.unwrap();
    let next = claim_next(&board).await;
    assert_eq!(
        (next.job.id, next.job.cancel),
        (waiting.id, Some(Cancel::Revert))
    );
    board.consume(next.fence, json!("reverted")).await.unwrap();
    let last = claim_next(&board).await;
    assert_eq!((last.job.id, last.job.cancel), (new.id, None));

    // A parked job of the key goes back to be reverted, ahead of the new one.
    let parked = board.post(job("parked").key("stack-p")).await.unwrap();
    let claim = claim_next(&board).await;
    board
        .park(claim.fence, json!({"parked": "definition"}))
        .await
        .unwrap();
    let replacing = board
        .post(job("replacing").key("stack-p").supersede())
        .await
        .unwrap();
    assert_eq!(replacing.supersedes, [parked.id]);
    let reopened = board.get(parked.id).await.unwrap();
    assert_eq!(
        (reopened.state, reopened.cancel),
        (JobState::Unclaimed, Some(Cancel::Revert))
    );
    let next = claim_next(&board).await;
    assert_eq!(next.job.id, parked.id);
    board.consume(next.fence, json!("reverted")).await.unwrap();
    assert_eq!(claim_next(&board).await.job.id, replacing.id);

    // With nothing earlier, a superseding post supersedes nothing.
    let alone = board
        .post(job("alone").key("stack-u").supersede())
        .await
        .unwrap();
    assert!(alone.supersedes.is_empty());
    assert_eq!(claim_next(&board).await.job.id, alone.id);
}

/// A job's deadline comes back to the millisecond, on every read; a deadline that is not in the
/// future is refused, naming it, and nothing is posted.
pub async fn deadlines_are_kept_and_past_ones_refused<B: JobBoard, S: Store>(board: B, _store: S) {
    let at = Utc::now() + chrono::Duration::hours(1) + chrono::Duration::nanoseconds(123_456);
    let millis = chrono::DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap();
    let posted = board.post(job("timed").deadline(at)).await.unwrap();
    assert_eq!(posted.deadline, Some(millis));
    assert_eq!(board.get(posted.id).await.unwrap().deadline, Some(millis));
    assert_eq!(all(&board).await[0].deadline, Some(millis));
    let claim = claim_next(&board).await;
    assert_eq!(claim.job.deadline, Some(millis));
    let untimed = board.post(job("untimed")).await.unwrap();
    assert_eq!(untimed.deadline, None);

    let before = all(&board).await;
    let past = Utc::now() - chrono::Duration::seconds(5);
    match board.post(job("late").deadline(past)).await {
        Err(Error::InvalidJob(why)) => {
            assert!(why.contains("deadline"), "{why}");
            let shown = past.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert!(why.contains(&shown), "{why} does not name {shown}");
            assert!(why.contains("now"), "{why}");
        }
        other => panic!("a past deadline was answered {other:?}"),
    }
    assert_eq!(all(&board).await, before);
}

/// A superseding job without a key is refused, naming the problem, and changes nothing.
pub async fn superseding_without_a_key_is_refused<B: JobBoard, S: Store>(board: B, _store: S) {
    let earlier = board.post(job("earlier").key("stack-k")).await.unwrap();
    let before = all(&board).await;
    match board.post(job("keyless").supersede()).await {
        Err(Error::InvalidJob(why)) => assert!(why.contains("key"), "{why}"),
        other => panic!("a keyless superseding job was answered {other:?}"),
    }
    assert_eq!(all(&board).await, before);
    assert_eq!(board.get(earlier.id).await.unwrap().cancel, None);
}
