//! Waiting for SQLite's answer without falling asleep at once.
//!
//! sqlx runs each SQLite connection on a thread of its own: a statement is a message to that
//! thread and its answer a message back, which wakes the task that waits for it. When the
//! task's thread went to sleep meanwhile, the operating system has to wake it, and on a small
//! virtual machine that wake-up (an interrupt to an idle processor) costs more than SQLite's
//! work for a one-row commit. [`spin_then_sleep`] keeps polling the answer for a short while,
//! offering the processor to other threads in between, and only then lets the task sleep
//! until it is woken as usual.

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Awaits `fut`, polling it again and again for up to `budget` (yielding the thread to the
/// operating system between polls) before waiting to be woken like any future. A zero budget
/// awaits it plainly.
///
/// This is how [`SqliteStore`](crate::SqliteStore) waits for its commits (see
/// [`SqliteOptions::spin`](crate::SqliteOptions::spin)); `baton-bench` measures its floor of
/// single-row commits the same way, so that the two compare like with like.
///
/// While it polls, the runtime thread runs nothing else: keep `budget` near the time the
/// answer usually takes (tens of microseconds for a SQLite commit).
///
/// # Cancel safety
/// As cancel safe as `fut`: dropping this drops `fut`.
pub async fn spin_then_sleep<F: Future>(budget: Duration, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    if budget.is_zero() {
        return fut.await;
    }
    let start = Instant::now();
    std::future::poll_fn(|cx| loop {
        match fut.as_mut().poll(cx) {
            Poll::Ready(out) => return Poll::Ready(out),
            Poll::Pending if start.elapsed() < budget => std::thread::yield_now(),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_that_comes_late_is_still_awaited() {
        let late = tokio::time::sleep(Duration::from_millis(20));
        let started = Instant::now();
        spin_then_sleep(Duration::from_micros(50), async {
            late.await;
            7
        })
        .await;
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn an_answer_from_another_thread_is_taken_while_spinning() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_micros(100));
            let _ = tx.send(41);
        });
        let got = spin_then_sleep(Duration::from_secs(5), rx).await;
        assert_eq!(got, Ok(41));
    }

    #[tokio::test]
    async fn a_zero_budget_awaits_plainly() {
        assert_eq!(spin_then_sleep(Duration::ZERO, async { 3 }).await, 3);
    }
}
