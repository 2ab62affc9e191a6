//! Time arithmetic on durations users give (retry delays, leases, store backoff): saturating,
//! so that a value too large for the clock means "as late as the clock goes", never a panic.

use std::time::Duration;

use chrono::{DateTime, Utc};

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
