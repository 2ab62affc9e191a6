//! RFC 3339 timestamps in UTC, written and read without going through `core::fmt`.
//!
//! Every step of a flow holds two or three timestamps, and chrono writes one through its
//! `Display` machinery in about 2 500 instructions (callgrind), more than the rest of a
//! step's encoding together. These functions write the very same text as chrono (see the
//! tests) for the times a store meets (years 0 to 9999, no leap second) in about a tenth of
//! that, and read it back likewise; anything else goes to chrono, so the results never differ.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};

/// How many digits of the second's fraction to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fraction {
    /// As few as chrono's own `Display` and serde forms write: none for a whole second, else 3,
    /// 6 or 9 digits, whichever shows the nanoseconds exactly.
    Auto,
    /// Always 9 digits (chrono's `SecondsFormat::Nanos`): fixed width, so text order is time
    /// order.
    Nanos,
}

/// The longest text: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const MAX_LEN: usize = 30;

/// A timestamp written as text, held on the stack.
pub(crate) struct Text {
    buf: [u8; MAX_LEN],
    len: usize,
}

impl Text {
    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits and punctuation are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// Writes `t` in RFC 3339 with `Z` for UTC, exactly as chrono would (`Display`/serde for
/// [`Fraction::Auto`], `to_rfc3339_opts(SecondsFormat::Nanos, true)` for
/// [`Fraction::Nanos`]), or `None` for a time this does not write: a year outside 0..=9999 or
/// a leap second. Callers fall back to chrono for those.
pub(crate) fn write_fast(t: DateTime<Utc>, fraction: Fraction) -> Option<Text> {
    // The accessors of `DateTime` convert to local time on every call; UTC's is the naive one.
    let t = t.naive_utc();
    let year = t.year();
    let nanos = t.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let mut buf = [0u8; MAX_LEN];
    let mut at = 0;
    let mut put = |value: u32, digits: u32, then: u8| {
        let mut div = 10u32.pow(digits.saturating_sub(1));
        for _ in 0..digits {
            // `value / div % 10` is a single digit, so the cast cannot truncate.
            buf[at] = b'0' + (value / div % 10) as u8;
            div /= 10;
            at += 1;
        }
        buf[at] = then;
        at += 1;
    };
    put(year.unsigned_abs(), 4, b'-');
    put(t.month(), 2, b'-');
    put(t.day(), 2, b'T');
    put(t.hour(), 2, b':');
    put(t.minute(), 2, b':');
    let (value, digits) = match fraction {
        Fraction::Nanos => (nanos, 9),
        Fraction::Auto if nanos == 0 => (0, 0),
        Fraction::Auto if nanos.is_multiple_of(1_000_000) => (nanos / 1_000_000, 3),
        Fraction::Auto if nanos.is_multiple_of(1_000) => (nanos / 1_000, 6),
        Fraction::Auto => (nanos, 9),
    };
    if digits == 0 {
        put(t.second(), 2, b'Z');
    } else {
        put(t.second(), 2, b'.');
        put(value, digits, b'Z');
    }
    Some(Text { buf, len: at })
}

/// Reads the form [`write_fast`] writes (`YYYY-MM-DDTHH:MM:SS`, an optional fraction of 1 to 9
/// digits, `Z`), or `None` when `text` is not in exactly that form or names no valid time:
/// callers then ask chrono, which reads every RFC 3339 form and names what is wrong.
pub(crate) fn read_fast(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    if b.len() < 20 || b.last() != Some(&b'Z') {
        return None;
    }
    let num = |from: usize, n: usize| -> Option<u32> {
        let mut v = 0u32;
        for &c in b.get(from..from + n)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        Some(v)
    };
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if seps.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let year = i32::try_from(num(0, 4)?).ok()?;
    let (month, day) = (num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let nanos = match b.len() - 20 {
        0 => 0,
        // A dot and 1 to 9 digits.
        n @ 2..=10 if b[19] == b'.' => num(20, n - 1)? * 10u32.pow(u32::try_from(10 - n).ok()?),
        _ => return None,
    };
    if second > 59 {
        return None;
    }
    let naive =
        NaiveDate::from_ymd_opt(year, month, day)?.and_hms_nano_opt(hour, minute, second, nanos)?;
    Some(naive.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{SecondsFormat, TimeZone};

    /// Times spread over the whole range this writes, with fractions of every width.
    fn samples() -> Vec<DateTime<Utc>> {
        let mut out = vec![
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(2000, 2, 29, 12, 30, 45).unwrap(),
            Utc::now(),
        ];
        // A fixed pseudo-random walk (splitmix64) over seconds and nanoseconds.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let (lo, hi) = (-62_167_219_200_i64, 253_402_300_799_i64); // years 0 and 9999
        for i in 0..20_000 {
            let span = u64::try_from(hi - lo).unwrap();
            let secs = lo + i64::try_from(next() % span).unwrap();
            let nanos = match i % 4 {
                0 => 0,
                1 => u32::try_from(next() % 1000).unwrap() * 1_000_000,
                2 => u32::try_from(next() % 1_000_000).unwrap() * 1_000,
                _ => u32::try_from(next() % 1_000_000_000).unwrap(),
            };
            out.push(DateTime::from_timestamp(secs, nanos).unwrap());
        }
        out
    }

    #[test]
    fn writes_what_chrono_writes() {
        for t in samples() {
            let chrono_auto = serde_json::to_string(&t).unwrap();
            let fast = write_fast(t, Fraction::Auto).unwrap();
            assert_eq!(format!("\"{}\"", fast.as_str()), chrono_auto, "{t:?}");
            let fast = write_fast(t, Fraction::Nanos).unwrap();
            assert_eq!(
                fast.as_str(),
                t.to_rfc3339_opts(SecondsFormat::Nanos, true),
                "{t:?}"
            );
        }
    }

    #[test]
    fn reads_back_what_it_writes() {
        for t in samples() {
            for fraction in [Fraction::Auto, Fraction::Nanos] {
                let text = write_fast(t, fraction).unwrap();
                assert_eq!(read_fast(text.as_str()), Some(t), "{}", text.as_str());
            }
        }
    }

    #[test]
    fn leaves_other_times_to_chrono() {
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        let far = Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap();
        let early = Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap();
        for t in [leap, far, early] {
            assert!(write_fast(t, Fraction::Auto).is_none(), "{t:?}");
            assert!(write_fast(t, Fraction::Nanos).is_none(), "{t:?}");
        }
    }

    #[test]
    fn refuses_what_is_not_exactly_its_form() {
        for text in [
            "",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+00:00",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00.1234567890Z",
            "2024-13-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:60:00Z",
            "2016-12-31T23:59:60Z",
            "+2024-01-01T00:00:0Z",
            "2024-01-01T00:00:00.12a4Z",
            "２０２４-01-01T00:00:00Z",
        ] {
            assert_eq!(read_fast(text), None, "{text}");
        }
        assert_eq!(
            read_fast("2024-01-01T00:00:00.5Z"),
            Some(
                Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
                    + chrono::Duration::milliseconds(500)
            )
        );
    }
}
