//! Bounding what the engine stores about failures, so that recording a failure never fails.
//!
//! A store limits the size of one stored value (the SQL stores' `max_value_bytes`, 1 MiB by
//! default), while a failure's message and causes, and a retry controller's history, are as
//! long as tasks and retries make them. The engine clips them as it records them (never on a
//! step that succeeds), to the sizes of its [`Options`](crate::engine::Options):
//!
//! - A text is clipped in the middle: it keeps its head and its tail, on character
//!   boundaries, around a mark saying how many bytes were cut. Texts are clipped longest
//!   first, to one common length, the shorter ones left whole; never to less than 64 bytes.
//! - A failure over `max_failure_bytes` (its JSON) has its texts (message and causes)
//!   clipped. When its causes are too many for that, it keeps the first 8 and the last 8
//!   with a cause between saying how many were cut (then the first and last one, then none).
//! - A retry history always keeps its first attempt and its last 8; the attempts between
//!   are counted in [`RetryAttempt::dropped_before`], so
//!   [`History::len`](crate::retry::History::len) still counts every attempt and the built-in
//!   controllers (which count attempts) decide as before. If its JSON is over
//!   `max_history_bytes`, its failures' texts are clipped; when that is not enough, first
//!   each attempt keeps only its first and last failure (the others counted in
//!   [`RetryAttempt::dropped_failures`]), then values over 256 bytes become `null`, then only
//!   the latest attempt is kept.
//!
//! Each step is a function of what is clipped alone, so clipping again after a crash gives
//! the same record.

use std::io;

use serde::Serialize;
use serde_json::Value;

use crate::failure::Failure;
use crate::model::RetryAttempt;

/// Causes kept at each end of a failure's chain when it is cut.
const KEEP_CAUSES: usize = 8;
/// Attempts a retry history keeps at its start, whatever its size.
const HISTORY_KEEP_FIRST: usize = 1;
/// Attempts a retry history keeps at its end, whatever its size.
const HISTORY_KEEP_LAST: usize = 8;
/// The least failure limit the engine applies: room for a failure's fields and a little of
/// its texts.
const MIN_FAILURE_BYTES: usize = 1 << 10;
/// The least history limit the engine applies.
const MIN_HISTORY_BYTES: usize = 8 << 10;
/// A retry attempt's value longer than this (JSON bytes) is dropped when nothing else made the
/// history small enough.
const SMALL_VALUE: usize = 256;

/// The length of `value`'s JSON, counted without writing it anywhere (`usize::MAX` if it does
/// not serialize).
pub(crate) fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// The length of byte `b` of a UTF-8 text in a JSON string, as `serde_json` escapes it (it
/// escapes only ASCII: quotes, backslashes and control characters).
fn byte_len(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
        0x00..=0x1f => 6,
        _ => 1,
    }
}

/// The length of `c` in a JSON string.
fn char_len(c: char) -> usize {
    match u8::try_from(c) {
        Ok(b) if b.is_ascii() => byte_len(b),
        _ => c.len_utf8(),
    }
}

/// The length of `s` in a JSON string, quotes left out.
fn text_len(s: &str) -> usize {
    s.bytes().map(byte_len).sum()
}

/// The mark put where `cut` bytes of a text were cut out.
fn mark(cut: usize) -> String {
    format!(" [... {cut} bytes cut ...] ")
}

/// Clips `s` in the middle so that its length in JSON is at most `cap`: its head and its tail,
/// on character boundaries, around a mark saying how many bytes were cut. (With `cap`
/// shorter than the mark, only the mark is left.)
fn clip_text(s: &mut String, cap: usize) {
    if text_len(s) <= cap {
        return;
    }
    let keep = cap.saturating_sub(mark(s.len()).len());
    let (head_budget, tail_budget) = (keep - keep / 2, keep / 2);
    let mut head = s.len();
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += char_len(c);
        if used > head_budget {
            head = i;
            break;
        }
    }
    let mut tail = head;
    let mut used = 0;
    for (i, c) in s[head..].char_indices().rev() {
        used += char_len(c);
        if used > tail_budget {
            tail = head + i + c.len_utf8();
            break;
        }
    }
    let clipped = format!("{}{}{}", &s[..head], mark(tail - head), &s[tail..]);
    *s = clipped;
}

/// The shortest a text is clipped to: enough for its mark and a little of each end.
const MIN_TEXT: usize = 64;

/// The length every text longer than it must be clipped to, so that texts of lengths `lens`
/// add up to at most `room`: `usize::MAX` when they fit already, `None` when that length
/// would be under [`MIN_TEXT`] (clipping texts cannot do it; something else must go).
fn common_cap(lens: &[usize], room: usize) -> Option<usize> {
    if lens.iter().sum::<usize>() <= room {
        return Some(usize::MAX);
    }
    let mut sorted = lens.to_vec();
    sorted.sort_unstable();
    let mut rest = room;
    for (k, &len) in sorted.iter().enumerate() {
        let left = sorted.len() - k;
        if len.saturating_mul(left) <= rest {
            rest -= len;
        } else {
            let cap = rest / left;
            return (cap >= MIN_TEXT).then_some(cap);
        }
    }
    Some(usize::MAX)
}

/// Clips every text of `failures` longer than `cap` to it.
fn clip_texts<'a>(failures: impl Iterator<Item = &'a mut Failure>, cap: usize) {
    for f in failures {
        for text in std::iter::once(&mut f.message).chain(f.causes.iter_mut()) {
            clip_text(text, cap);
        }
    }
}

/// The lengths of the texts of `failures`, as [`clip_texts`] visits them.
fn text_lens<'a>(failures: impl Iterator<Item = &'a Failure>) -> Vec<usize> {
    failures
        .flat_map(|f| std::iter::once(&f.message).chain(&f.causes))
        .map(|t| text_len(t))
        .collect()
}

/// The cause put where `cut` causes were cut out.
fn cause_mark(cut: usize) -> String {
    format!("[... {cut} causes cut ...]")
}

/// Makes `failure`'s JSON at most `limit` bytes, keeping what it can (see the
/// [module documentation](self)).
pub(crate) fn clip_failure(failure: &mut Failure, limit: usize) {
    let limit = limit.max(MIN_FAILURE_BYTES);
    let total = json_len(failure);
    if total <= limit {
        return;
    }
    let n = failure.causes.len();
    let lens = text_lens(std::iter::once(&*failure));
    let base = total - lens.iter().sum::<usize>();
    // All the causes, then fewer and fewer at each end: the first that leaves room enough.
    for keep in [n, KEEP_CAUSES, 1, 0] {
        let cut = if n > 2 * keep + 1 { n - 2 * keep } else { 0 };
        let (fixed, kept) = if cut == 0 {
            (base, lens.clone())
        } else {
            // `cut` causes go, one mark comes: each cause costs its text, quotes and comma.
            let fixed = base - 3 * (cut - 1) + text_len(&cause_mark(cut));
            let ends = lens[..=keep].iter().chain(&lens[1 + n - keep..]);
            (fixed, ends.copied().collect())
        };
        if let Some(cap) = common_cap(&kept, limit.saturating_sub(fixed)) {
            if cut > 0 {
                failure.causes.splice(keep..keep + cut, [cause_mark(cut)]);
            }
            clip_texts(std::iter::once(failure), cap);
            return;
        }
    }
    // The fields that are not text take the whole limit: keep the least of the texts.
    if n > 1 {
        failure.causes = vec![cause_mark(n)];
    }
    clip_texts(std::iter::once(failure), MIN_TEXT);
}

/// Leaves out the attempts of `history` between its first `first` and its last `last`,
/// counting them in the attempt after the gap.
fn drop_attempts(history: &mut Vec<RetryAttempt>, first: usize, last: usize) {
    if history.len() <= first + last {
        return;
    }
    let end = history.len() - last;
    let dropped = history.drain(first..end).fold(0u32, |n, a| {
        n.saturating_add(1).saturating_add(a.dropped_before)
    });
    if let Some(next) = history.get_mut(first) {
        next.dropped_before = next.dropped_before.saturating_add(dropped);
    }
}

/// Keeps only the first and the last failure of each attempt, counting the others.
fn keep_end_failures(history: &mut Vec<RetryAttempt>) {
    for attempt in history {
        let n = attempt.failures.len();
        if n > 2 {
            attempt.failures.drain(1..n - 1);
            let dropped = u32::try_from(n - 2).unwrap_or(u32::MAX);
            attempt.dropped_failures = attempt.dropped_failures.saturating_add(dropped);
        }
    }
}

/// Replaces the values over [`SMALL_VALUE`] bytes with `null`.
fn drop_large_values(history: &mut Vec<RetryAttempt>) {
    for attempt in history {
        if json_len(&attempt.value) > SMALL_VALUE {
            attempt.value = Value::Null;
        }
    }
}

/// Keeps only the latest attempt (counting the others).
fn keep_latest(history: &mut Vec<RetryAttempt>) {
    drop_attempts(history, 0, 1);
}

/// Makes `history`'s JSON at most `limit` bytes, keeping what it can (see the
/// [module documentation](self)).
pub(crate) fn clip_history(history: &mut Vec<RetryAttempt>, limit: usize) {
    let limit = limit.max(MIN_HISTORY_BYTES);
    drop_attempts(history, HISTORY_KEEP_FIRST, HISTORY_KEEP_LAST);
    let failures = |h: &mut Vec<RetryAttempt>| -> Vec<usize> {
        text_lens(h.iter().flat_map(|a| a.failures.iter()))
    };
    // Less and less kept but the texts; the first that leaves the texts room enough.
    let shrink: [fn(&mut Vec<RetryAttempt>); 4] =
        [|_| {}, keep_end_failures, drop_large_values, keep_latest];
    for step in shrink {
        step(history);
        let total = json_len(history);
        if total <= limit {
            return;
        }
        let lens = failures(history);
        let fixed = total - lens.iter().sum::<usize>();
        if let Some(cap) = common_cap(&lens, limit.saturating_sub(fixed)) {
            clip_texts(history.iter_mut().flat_map(|a| a.failures.iter_mut()), cap);
            return;
        }
    }
    clip_texts(
        history.iter_mut().flat_map(|a| a.failures.iter_mut()),
        MIN_TEXT,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::{FailureKind, TaskError};
    use serde_json::json;

    fn failure(message: &str) -> Failure {
        TaskError::msg(message).into_failure("atom", 1, FailureKind::Execute)
    }

    #[test]
    fn text_lengths_are_what_serde_json_writes() {
        for s in [
            "plain",
            "quote \" and \\ back",
            "tab\t nl\n cr\r \u{8}\u{c}",
            "\0\u{1}\u{1f}",
            "é 漢字 🦀",
        ] {
            assert_eq!(
                text_len(s) + 2,
                serde_json::to_string(s).unwrap().len(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_clipped_text_keeps_its_head_and_tail_and_marks_the_cut() {
        let mut s = format!(
            "{}{}{}",
            "a".repeat(1000),
            "b".repeat(10_000),
            "c".repeat(1000)
        );
        clip_text(&mut s, 1000);
        assert!(text_len(&s) <= 1000, "{}", text_len(&s));
        assert!(s.starts_with(&"a".repeat(400)));
        assert!(s.ends_with(&"c".repeat(400)));
        let cut = 12_000 - (s.len() - mark(0).len() - 4);
        assert!(s.contains(&format!(" [... {cut} bytes cut ...] ")), "{s}");
    }

    #[test]
    fn clipping_cuts_on_character_boundaries_and_counts_escapes() {
        for body in [
            "漢字🦀é".repeat(5000),
            "éèü".repeat(10_000),
            "\"\u{1}".repeat(10_000),
        ] {
            for cap in [100, 101, 102, 103, 500] {
                let mut s = body.clone();
                clip_text(&mut s, cap);
                assert!(text_len(&s) <= cap, "{cap}: {}", text_len(&s));
                assert!(s.contains("bytes cut"));
            }
        }
    }

    #[test]
    fn the_longest_texts_are_clipped_to_a_common_length() {
        assert_eq!(common_cap(&[50, 5000, 9000], 20_000), Some(usize::MAX));
        assert_eq!(common_cap(&[50, 5000, 9000], 2050), Some(1000));
        assert_eq!(
            common_cap(&[50, 5000, 9000], 100),
            None,
            "under the least length"
        );
    }

    #[test]
    fn a_huge_failure_fits_its_limit_with_head_and_tail() {
        let mut f = failure(&format!("start {} end", "m".repeat(10 << 20)));
        for i in 0..100 {
            f.causes.push(format!("cause {i} {}", "c".repeat(100_000)));
        }
        let before = f.clone();
        clip_failure(&mut f, 64 << 10);
        assert!(json_len(&f) <= 64 << 10, "{}", json_len(&f));
        assert!(f.message.starts_with("start mmm") && f.message.ends_with("mmm end"));
        assert_eq!(f.causes.len(), 100, "room enough for every cause, clipped");
        assert!(f.causes[99].starts_with("cause 99 ") && f.causes[99].contains("bytes cut"));
        assert_eq!(
            (&f.atom, f.attempt, f.kind),
            (&before.atom, before.attempt, before.kind)
        );
        // Too many causes to keep them all: the first and last 8.
        let mut f = failure("boom");
        f.causes = (0..1000)
            .map(|i| format!("cause {i} {}", "c".repeat(1000)))
            .collect();
        clip_failure(&mut f, 64 << 10);
        assert!(json_len(&f) <= 64 << 10, "{}", json_len(&f));
        assert_eq!(f.message, "boom");
        assert_eq!(f.causes.len(), 17);
        assert_eq!(f.causes[7], format!("cause 7 {}", "c".repeat(1000)));
        assert_eq!(f.causes[8], "[... 984 causes cut ...]");
        assert!(f.causes[16].starts_with("cause 999 "));
        // A failure under its limit is left as it is.
        let mut small = failure("boom");
        small.causes = (0..50).map(|i| i.to_string()).collect();
        let copy = small.clone();
        clip_failure(&mut small, 64 << 10);
        assert_eq!(small, copy);
    }

    fn attempts(n: usize, message: &str) -> Vec<RetryAttempt> {
        (0..n)
            .map(|i| RetryAttempt::new(json!(i), vec![failure(message)]))
            .collect()
    }

    fn counted(history: &[RetryAttempt]) -> usize {
        history.iter().map(|a| 1 + a.dropped_before as usize).sum()
    }

    #[test]
    fn a_long_history_keeps_its_first_and_last_attempts_and_counts_the_rest() {
        let mut h = attempts(100, "boom");
        clip_history(&mut h, 256 << 10);
        assert_eq!(h.len(), 9);
        assert_eq!(counted(&h), 100);
        assert_eq!(h[0].value, json!(0));
        assert_eq!(h[1].value, json!(92));
        assert_eq!(h[1].dropped_before, 91);
        // Clipping again (after more attempts) keeps the count.
        h.push(RetryAttempt::new(json!(100), vec![failure("boom")]));
        clip_history(&mut h, 256 << 10);
        assert_eq!((h.len(), counted(&h)), (9, 101));
        assert_eq!(h[1].value, json!(93));
        let again = h.clone();
        clip_history(&mut h, 256 << 10);
        assert_eq!(h, again, "clipping is idempotent");
    }

    #[test]
    fn a_history_over_its_limit_is_shrunk_until_it_fits() {
        let limit = 16 << 10;
        // Long texts: clipped.
        let mut h = attempts(5, &"x".repeat(100_000));
        clip_history(&mut h, limit);
        assert!(json_len(&h) <= limit);
        assert_eq!((h.len(), counted(&h)), (5, 5));
        assert!(h[4].failures[0].message.contains("bytes cut"));
        // Many failures an attempt: the first and last kept.
        let mut h = attempts(2, "boom");
        h[1].failures = (0..1000).map(|i| failure(&format!("f{i}"))).collect();
        clip_history(&mut h, limit);
        assert!(json_len(&h) <= limit);
        assert_eq!(h[1].failures.len(), 2);
        assert_eq!(h[1].dropped_failures, 998);
        assert_eq!(h[1].failures[1].message, "f999");
        // Large values: dropped.
        let mut h = attempts(3, "boom");
        for a in &mut h {
            a.value = json!("v".repeat(10_000));
        }
        clip_history(&mut h, limit);
        assert!(json_len(&h) <= limit);
        assert_eq!((h.len(), counted(&h)), (3, 3));
        assert!(h.iter().all(|a| a.value.is_null()));
    }
}
