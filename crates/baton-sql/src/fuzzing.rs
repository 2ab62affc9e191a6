//! Entry points for fuzzing what the SQL stores read back from a database. Not part of the API.
//!
//! A database can hold anything in a column: a hand edit, a bug, a disk that flipped bits. What
//! the stores decode (a step's body, an atom's, flow's, transition's or job's row, SQLite's
//! packed rows, timestamps) must come out as a record or as an error that names the damage
//! (`Corrupt`, or `TooNew` for a row of a newer baton), never as a panic, and decoding must not
//! allocate more than a small multiple of what it was given.
//!
//! [`stored`] takes arbitrary bytes: its first byte picks the decoder, and the rest is cut into
//! the decoder's columns (text columns end at a `0x1f` byte; a number column takes up to eight
//! bytes, little-endian). It returns `Err` with a description when a decoder breaks that
//! promise otherwise than by panicking. The property tests below run it on generated input in
//! every `cargo test`; the cargo-fuzz targets in the repository's `fuzz/` folder run it for as
//! long as one likes (see `CONTRIBUTING.md`).

use baton_core::board;
use baton_core::store::Error;
use baton_core::FlowId;
use chrono::{DateTime, Utc};

use crate::codec::{self, RawAtom, RawFlow, RawTransition};
use crate::steplog::{self, StepRow};

/// Decodes `data` as one kind of stored value, chosen by its first byte (see the
/// [module documentation](self)).
///
/// # Errors
/// A description of what went wrong, if a decoder answered with anything but a record or an
/// error naming the damage.
pub fn stored(data: &[u8]) -> Result<(), String> {
    let Some((&which, rest)) = data.split_first() else {
        return Ok(());
    };
    let mut input = Columns(rest);
    match which % 8 {
        0 => step(&input.text(), input.version()),
        1 => atom_row(&mut input),
        2 => flow_row(&mut input),
        3 => transition_row(&mut input),
        4 => packed_atoms(&input.text()),
        5 => packed_steps(&input.text()),
        6 => {
            let _ = time(&input.text());
            Ok(())
        }
        _ => job_row(&mut input),
    }
}

/// Decodes a step's `body` stamped with `model_version`, then numbers its transitions.
///
/// # Errors
/// As [`stored`].
pub fn step(body: &str, model_version: i64) -> Result<(), String> {
    let row = StepRow {
        seq: 1,
        at: DateTime::<Utc>::UNIX_EPOCH,
        body: body.to_owned(),
        model_version,
    };
    match steplog::decode(flow(), &row) {
        Ok(writes) => {
            // A write takes more than one byte of the body.
            if writes.len() > body.len() {
                return Err(format!("{} writes from {} bytes", writes.len(), body.len()));
            }
            // Numbered on from the highest number a history row can hold.
            steplog::transitions(flow(), u64::MAX >> 1, std::slice::from_ref(&row))
                .map(|_| ())
                .or_else(named)
        }
        Err(e) => named(e),
    }
}

/// A timestamp as the stores write it, or any RFC 3339 text.
#[must_use]
pub fn time(text: &str) -> Option<DateTime<Utc>> {
    codec::parse_time(text).ok()
}

/// Decodes SQLite's packed atom rows (a JSON array of arrays, see `sqlite.rs`).
///
/// # Errors
/// As [`stored`].
pub fn packed_atoms(json: &str) -> Result<(), String> {
    #[cfg(feature = "sqlite")]
    if let Ok(rows) = serde_json::from_str::<Vec<crate::sqlite::PackedAtom>>(json) {
        for row in rows {
            crate::sqlite::unpack_atom(flow(), row)
                .map(|_| ())
                .or_else(named)?;
        }
    }
    let _ = json;
    Ok(())
}

/// Decodes SQLite's packed step rows (a JSON array of `[id, seq, at, body, model_version]`).
///
/// # Errors
/// As [`stored`].
pub fn packed_steps(json: &str) -> Result<(), String> {
    let Ok(rows) = serde_json::from_str::<Vec<(i64, i64, String, String, i64)>>(json) else {
        return Ok(());
    };
    for (_, _, at, body, model_version) in rows {
        let _ = time(&at);
        step(&body, model_version)?;
    }
    Ok(())
}

fn atom_row(input: &mut Columns<'_>) -> Result<(), String> {
    let raw = RawAtom {
        kind: input.text(),
        state: input.text(),
        intention: input.text(),
        attempt: input.int(),
        round: input.int(),
        result: input.optional_text(),
        failure: input.optional_text(),
        revert_failure: input.optional_text(),
        retry_history: input.text(),
        retry_at: None,
        progress: f64::from_bits(u64::from_le_bytes(input.int().to_le_bytes())),
        started_at: None,
        finished_at: None,
        deadline: None,
        model_version: input.version(),
    };
    codec::decode_atom(flow(), input.text(), raw)
        .map(|_| ())
        .or_else(named)
}

fn flow_row(input: &mut Columns<'_>) -> Result<(), String> {
    let raw = RawFlow {
        id: flow(),
        name: input.text(),
        state: input.text(),
        intention: input.text(),
        inputs: input.text(),
        meta: input.text(),
        created_at: DateTime::<Utc>::UNIX_EPOCH,
        updated_at: DateTime::<Utc>::UNIX_EPOCH,
        model_version: input.version(),
        factory: input.optional_text(),
        factory_version: Some(input.int()),
        fingerprint: input.optional_text(),
        deadline: None,
        deadline_then: input.optional_text(),
    };
    codec::decode_flow(raw).map(|_| ()).or_else(named)
}

fn transition_row(input: &mut Columns<'_>) -> Result<(), String> {
    let raw = RawTransition {
        seq: input.int(),
        at: DateTime::<Utc>::UNIX_EPOCH,
        subject: input.text(),
        atom: input.optional_text(),
        from_state: input.text(),
        to_state: input.text(),
        attempt: Some(input.int()),
    };
    codec::decode_transition(flow(), raw)
        .map(|_| ())
        .or_else(named)
}

fn job_row(input: &mut Columns<'_>) -> Result<(), String> {
    let raw = crate::board_common::RawJob {
        id: input.text(),
        name: input.text(),
        factory: input.text(),
        params: serde_json::Value::Null,
        key: input.optional_text(),
        priority: input.int(),
        state: input.text(),
        owner: input.optional_text(),
        lease_expires_at: Some(input.int()),
        token: input.int(),
        attempts: input.int(),
        outcome: None,
        version: Some(input.int()),
        stalled_claims: input.int(),
        cancel: input.optional_text(),
        deadline: Some(input.int()),
        supersedes: input.optional_text().map(|t| vec![t]),
        created_at: DateTime::<Utc>::UNIX_EPOCH,
        updated_at: DateTime::<Utc>::UNIX_EPOCH,
    };
    match raw.decode() {
        Ok(_) | Err(board::Error::Corrupt { .. }) => Ok(()),
        Err(e) => Err(format!("a job row's damage answered as {e:?}")),
    }
}

/// The flow every decoded row belongs to.
fn flow() -> FlowId {
    FlowId::from_uuid(uuid::Uuid::nil())
}

/// `Ok` for an error that names the damage; the error, described, for any other.
fn named(e: Error) -> Result<(), String> {
    match e {
        Error::Corrupt { .. } | Error::TooNew { .. } => Ok(()),
        other => Err(format!("damage answered as {other:?}")),
    }
}

/// Arbitrary bytes cut into columns.
struct Columns<'a>(&'a [u8]);

impl Columns<'_> {
    /// A text column: up to the next `0x1f` byte (or the end), as UTF-8 with the invalid bytes
    /// replaced.
    fn text(&mut self) -> String {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0x1f)
            .unwrap_or(self.0.len());
        let text = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = self.0.get(end + 1..).unwrap_or_default();
        text
    }

    /// A text column that is `NULL` when empty.
    fn optional_text(&mut self) -> Option<String> {
        Some(self.text()).filter(|t| !t.is_empty())
    }

    /// A number column: up to eight bytes, little-endian.
    fn int(&mut self) -> i64 {
        let n = self.0.len().min(8);
        let mut bytes = [0u8; 8];
        bytes[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        i64::from_le_bytes(bytes)
    }

    /// A model version: most often one this build reads, so decoding goes past the check.
    fn version(&mut self) -> i64 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 1;
        };
        self.0 = rest;
        match b % 4 {
            0 | 1 => 1,
            2 => 2,
            _ => i64::from(b) - 200,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Text that looks like what the stores write: JSON punctuation, keys of both step forms,
    /// state names, digits, times; so generated bodies get past the first parse often.
    fn jsonish() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just(",".to_owned()),
            Just(":".to_owned()),
            Just("null".to_owned()),
            Just("\"o\":\"a\"".to_owned()),
            Just("\"o\":\"f\"".to_owned()),
            Just("\"op\":\"atom\"".to_owned()),
            Just("\"f\":\"PENDING\"".to_owned()),
            Just("\"t\":\"RUNNING\"".to_owned()),
            Just("\"i\":\"EXECUTE\"".to_owned()),
            Just("\"e\":0".to_owned()),
            Just("\"r\":{\"n\":\"a\",\"s\":\"RUNNING\",\"a\":1".to_owned()),
            Just("\"st\":1700000000000000000".to_owned()),
            Just("\"ft\":\"2026-12-06T08:00:00.123456789Z\"".to_owned()),
            Just("\"ra\":\"+275760-09-13T00:00:00Z\"".to_owned()),
            Just("\"p\":1e308".to_owned()),
            Just("\"h\":[]".to_owned()),
            Just("\"v\":{\"x\":[1,2]}".to_owned()),
            "-?[0-9]{1,20}",
            "\"[a-zA-Z0-9 _\\-:.\\\\\"é]{0,12}\"",
        ];
        prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
    }

    /// A real step body, as the store writes it, with a few bytes changed.
    fn damaged_step() -> impl Strategy<Value = String> {
        let body = r#"[{"o":"f","f":"PENDING","t":"RUNNING","i":"EXECUTE"},{"o":"a","f":"PENDING","e":0,"r":{"n":"web","s":"RUNNING","a":1,"st":1765000000000000000,"v":{"id":"x"},"h":[]}}]"#;
        prop::collection::vec((0..body.len(), any::<u8>()), 0..4).prop_map(move |edits| {
            let mut bytes = body.as_bytes().to_vec();
            for (at, b) in edits {
                bytes[at] = b;
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }

    proptest! {
        // 256 cases each by default; PROPTEST_CASES=100000 runs more (CONTRIBUTING.md).
        #[test]
        fn arbitrary_bytes_decode_or_are_named_corrupt(data in prop::collection::vec(any::<u8>(), 0..512)) {
            prop_assert_eq!(stored(&data), Ok(()));
        }

        #[test]
        fn jsonish_step_bodies_decode_or_are_named_corrupt(body in jsonish(), version in 0i64..4) {
            prop_assert_eq!(step(&body, version), Ok(()));
            prop_assert_eq!(packed_atoms(&body), Ok(()));
            prop_assert_eq!(packed_steps(&body), Ok(()));
        }

        #[test]
        fn damaged_step_bodies_decode_or_are_named_corrupt(body in damaged_step()) {
            prop_assert_eq!(step(&body, 2), Ok(()));
        }

        #[test]
        fn arbitrary_text_is_a_time_or_none(text in "[0-9T:.Z+\\-]{0,40}|\\PC{0,40}") {
            let _ = time(&text);
        }
    }

    #[test]
    fn a_well_formed_step_decodes() {
        let body = r#"[{"o":"f","f":"PENDING","t":"RUNNING","i":"EXECUTE"}]"#;
        assert_eq!(step(body, 2), Ok(()));
        let row = StepRow {
            seq: 1,
            at: DateTime::<Utc>::UNIX_EPOCH,
            body: body.to_owned(),
            model_version: 2,
        };
        assert_eq!(steplog::decode(flow(), &row).unwrap().len(), 1);
    }
}
