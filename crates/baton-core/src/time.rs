//! Time: the [`Clock`] the engine reads, and arithmetic on durations users give (retry delays,
//! leases, store backoff), saturating, so that a value too large for the clock means "as late as
//! the clock goes", never a panic.
//!
//! The engine reads the wall clock to stamp what it stores (a step's time, when a retry is due,
//! when an attempt runs out of time, a run's deadline) and waits with tokio's timers for the
//! difference between such a time and now. Both must move together: under tokio's paused time
//! (`tokio::time::pause`, `#[tokio::test(start_paused = true)]`) the timers fire at once but
//! the system's wall clock does not move, so an engine reading it would find the retry still
//! not due and wait again, for ever. [`Clock::tokio`] is a wall clock that moves with tokio's
//! time, for such tests; production keeps the system's clock, read exactly where it was.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Where an [engine](crate::Engine) reads the time.
///
/// [`Clock::system`] (the default) is the system's wall clock. [`Clock::tokio`] is a wall clock
/// that moves with tokio's time: it starts at the system's time and moves on as much as
/// `tokio::time::Instant` does. In real time the two agree; under paused time
/// (`#[tokio::test(start_paused = true)]`), only the tokio clock moves when tokio advances time
/// (`tokio::time::advance`, or the runtime jumping to the next timer when it is idle), so an
/// hour of backoff, a task's time limit or a run's deadline pass in a test at once, and the
/// engine stores the same history as it would in real time, an hour later.
///
/// Copy it freely: it is a few words, and reading the system clock through it costs what
/// `Utc::now()` costs, plus one branch.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// use std::time::Duration;
/// use baton_core::Clock;
///
/// let clock = Clock::tokio();
/// let before = clock.now();
/// tokio::time::sleep(Duration::from_secs(3600)).await; // paused: returns at once
/// assert_eq!(clock.now() - before, chrono::Duration::hours(1));
/// # })
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock(Source);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Source {
    #[default]
    System,
    /// `wall` at `start` on tokio's clock, moving as tokio's clock moves.
    Tokio {
        wall: DateTime<Utc>,
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// The system's wall clock (`Utc::now()`): the default.
    #[must_use]
    pub const fn system() -> Self {
        Self(Source::System)
    }

    /// A wall clock that moves with tokio's time, starting at the system's time now.
    #[must_use]
    pub fn tokio() -> Self {
        Self::tokio_from(Utc::now())
    }

    /// A wall clock that moves with tokio's time, starting at `start` now (a fixed start makes
    /// the times a test stores the same on every run).
    #[must_use]
    pub fn tokio_from(start: DateTime<Utc>) -> Self {
        Self(Source::Tokio {
            wall: start,
            start: tokio::time::Instant::now(),
        })
    }

    /// The time now.
    #[must_use]
    #[inline]
    pub fn now(&self) -> DateTime<Utc> {
        match self.0 {
            Source::System => Utc::now(),
            Source::Tokio { wall, start } => after(wall, start.elapsed()),
        }
    }
}

/// `at` plus `delay`, or the latest time chrono holds when that is further away.
pub(crate) fn after(at: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|delay| at.checked_add_signed(delay))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The wait after `delay` in a doubling backoff: twice as long, at most `max`.
pub(crate) fn doubled(delay: Duration, max: Duration) -> Duration {
    delay.saturating_mul(2).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_saturates_at_the_end_of_time() {
        let now = Utc::now();
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + chrono::Duration::seconds(1)
        );
        assert_eq!(after(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        // Representable as a chrono duration, but past the end of the calendar.
        let far = Duration::from_secs(i64::MAX as u64 / 1000);
        assert_eq!(after(now, far), DateTime::<Utc>::MAX_UTC);
    }

    #[test]
    fn doubled_saturates_then_caps() {
        let max = Duration::from_secs(5);
        assert_eq!(doubled(Duration::from_secs(1), max), Duration::from_secs(2));
        assert_eq!(doubled(Duration::from_secs(4), max), max);
        assert_eq!(doubled(Duration::MAX, Duration::MAX), Duration::MAX);
    }
}
