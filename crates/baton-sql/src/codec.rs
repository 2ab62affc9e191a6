//! What both backends share: encoding records for storage (with the size limit), decoding rows
//! back (reporting damage as [`Error::Corrupt`]), and the client-side half of the write checks.

use baton_core::model::{
    AtomKind, AtomRecord, Change, Deadline, FactoryRef, FlowRecord, Transition, MODEL_VERSION,
};
use baton_core::store::{check_write, Error, Result, Write};
use baton_core::{FencingToken, FlowId};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::OnceLock;

/// The states a run never leaves, as stored: what `purge_flows` may delete.
pub(crate) const TERMINAL_FLOW_STATES: [&str; 3] = ["SUCCESS", "FAILURE", "REVERTED"];

pub use baton_core::store::DEFAULT_MAX_VALUE_BYTES;

/// The model version `flows` and `atoms` rows are stamped with: the oldest that reads them
/// (see `MODEL_VERSION`; steps are stamped by their [`StepFormat`]).
pub(crate) const ROW_VERSION: i64 = 1;

/// An atom record ready to be written: its JSON values serialized once and checked against the
/// size limit. A step holds it in the form its store writes (see [`Shaped`]).
#[derive(Debug)]
pub(crate) struct EncodedAtom<'a> {
    pub(crate) name: &'a str,
    pub(crate) kind: &'static str,
    pub(crate) state: &'static str,
    pub(crate) intention: &'static str,
    pub(crate) attempt: u32,
    pub(crate) round: u32,
    pub(crate) result: Option<Cow<'static, RawValue>>,
    pub(crate) failure: Option<Cow<'static, RawValue>>,
    pub(crate) revert_failure: Option<Cow<'static, RawValue>>,
    pub(crate) retry_history: Cow<'static, RawValue>,
    pub(crate) retry_at: Option<DateTime<Utc>>,
    pub(crate) progress: f64,
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) deadline: Option<DateTime<Utc>>,
}

/// An atom record as a step of `format` holds it: the fields at their defaults (kind task,
/// intention EXECUTE, round and progress zero, empty retry history) and those that are none
/// left out, so that none and JSON `null` (a task that returned `null`) differ.
///
/// - [`StepFormat::Long`]: the keys are the `atoms` table's column names, times RFC 3339 text.
/// - [`StepFormat::Short`]: `n` name, `k` kind, `s` state, `i` intention, `a` attempt, `rd`
///   round, `v` result, `x` failure, `rx` revert failure, `h` retry history, `ra` retry at,
///   `p` progress, `st` started at, `ft` finished at, `dl` deadline; times as integer nanoseconds since 1970
///   (as text when they do not fit an `i64`, or fall in a leap second).
pub(crate) struct Shaped<'a> {
    pub(crate) atom: &'a EncodedAtom<'a>,
    pub(crate) format: StepFormat,
}

impl Shaped<'_> {
    /// Appends the record's JSON to `out`: the same text as serde would write through this
    /// type's `Serialize` (the tests' oracle), in a fraction of the instructions. Keys are
    /// static ASCII names and states static ASCII words, written as they are; the name and
    /// chrono's fallback times go through `serde_json`, which escapes them; results, failures
    /// and retry histories are JSON already.
    pub(crate) fn write_to(&self, out: &mut JsonOut) {
        let short = self.format == StepFormat::Short;
        let key = |long, short_key| self.format.key(long, short_key);
        let a = self.atom;
        out.open(b'{');
        out.key(key("name", "n"));
        out.string(a.name);
        if a.kind != AtomKind::Task.as_str() {
            out.key(key("kind", "k"));
            out.word(a.kind);
        }
        out.key(key("state", "s"));
        out.word(a.state);
        if a.intention != baton_core::Intention::Execute.as_str() {
            out.key(key("intention", "i"));
            out.word(a.intention);
        }
        out.key(key("attempt", "a"));
        out.integer(i64::from(a.attempt));
        if a.round != 0 {
            out.key(key("round", "rd"));
            out.integer(i64::from(a.round));
        }
        for (long, short_key, value) in [
            ("result", "v", &a.result),
            ("failure", "x", &a.failure),
            ("revert_failure", "rx", &a.revert_failure),
        ] {
            if let Some(value) = value {
                out.key(key(long, short_key));
                out.raw(value.get());
            }
        }
        if a.retry_history.get() != "[]" {
            out.key(key("retry_history", "h"));
            out.raw(a.retry_history.get());
        }
        // Left out when exactly `0.0`: a `-0.0` is written, so it reads back with its sign.
        if a.progress.to_bits() != 0 {
            out.key(key("progress", "p"));
            out.float(a.progress);
        }
        let times = [
            ("retry_at", "ra", a.retry_at),
            ("started_at", "st", a.started_at),
            ("finished_at", "ft", a.finished_at),
            ("deadline", "dl", a.deadline),
        ];
        for (long, short_key, time) in times {
            if let Some(t) = time {
                out.key(key(long, short_key));
                out.time(t, short);
            }
        }
        out.close(b'}');
    }
}

/// A JSON text being written by hand for the fixed shapes of a step (see
/// [`Shaped::write_to`]): it tracks only whether a comma is due.
pub(crate) struct JsonOut {
    buf: Vec<u8>,
    /// Whether the next key or element opens its object or array (no comma before it).
    first: bool,
    /// The first value `serde_json` could not write, if any.
    failed: Option<serde_json::Error>,
}

impl JsonOut {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
            first: true,
            failed: None,
        }
    }

    /// Opens an object or array, as an element of the enclosing array if one is open.
    pub(crate) fn open(&mut self, bracket: u8) {
        self.comma();
        self.buf.push(bracket);
        self.first = true;
    }

    pub(crate) fn close(&mut self, bracket: u8) {
        self.buf.push(bracket);
        self.first = false;
    }

    fn comma(&mut self) {
        if !self.first {
            self.buf.push(b',');
        }
    }

    /// A key: a static ASCII name that needs no escaping.
    pub(crate) fn key(&mut self, key: &'static str) {
        self.comma();
        self.word(key);
        self.buf.push(b':');
        // The value follows the colon without a comma.
        self.first = true;
    }

    /// A static ASCII word (a key, a state): quoted, needing no escaping.
    pub(crate) fn word(&mut self, word: &'static str) {
        debug_assert!(word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        self.buf.push(b'"');
        self.buf.extend_from_slice(word.as_bytes());
        self.buf.push(b'"');
        self.first = false;
    }

    /// Any string, escaped as JSON requires.
    pub(crate) fn string(&mut self, text: &str) {
        self.value(text);
    }

    pub(crate) fn integer(&mut self, n: i64) {
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.first = false;
    }

    /// A finite float, written as `serde_json` writes it (so it reads back bit for bit).
    pub(crate) fn float(&mut self, x: f64) {
        self.value(&x);
    }

    /// JSON text, written as it is.
    pub(crate) fn raw(&mut self, json: &str) {
        self.buf.extend_from_slice(json.as_bytes());
        self.first = false;
    }

    /// A time as a step of the form holds it (see [`Shaped`]).
    fn time(&mut self, t: DateTime<Utc>, short: bool) {
        // A leap second's nanoseconds (1e9 and up) would come back as the next second's.
        let nanos = (short && t.timestamp_subsec_nanos() < 1_000_000_000)
            .then(|| t.timestamp_nanos_opt())
            .flatten();
        if let Some(ns) = nanos {
            return self.integer(ns);
        }
        // chrono's own form, which the long steps have always used.
        match crate::rfc3339::write_fast(t, crate::rfc3339::Fraction::Auto) {
            Some(text) => {
                self.buf.push(b'"');
                self.buf.extend_from_slice(text.as_str().as_bytes());
                self.buf.push(b'"');
                self.first = false;
            }
            None => self.value(&t),
        }
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) {
        // Strings, floats and times do not fail to serialize; should one, the text is
        // refused as a whole by `into_string`.
        if let Err(e) = serde_json::to_writer(&mut self.buf, value) {
            self.failed.get_or_insert(e);
        }
        self.first = false;
    }

    /// The text written, or the first error met writing it.
    pub(crate) fn into_string(self) -> Result<String> {
        if let Some(e) = self.failed {
            return Err(Error::Backend(Box::new(e)));
        }
        String::from_utf8(self.buf).map_err(|e| Error::Backend(Box::new(e)))
    }
}

#[cfg(test)]
impl Serialize for Shaped<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let short = self.format == StepFormat::Short;
        let key = |long, short_key| self.format.key(long, short_key);
        let a = self.atom;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry(key("name", "n"), a.name)?;
        if a.kind != AtomKind::Task.as_str() {
            m.serialize_entry(key("kind", "k"), a.kind)?;
        }
        m.serialize_entry(key("state", "s"), a.state)?;
        if a.intention != baton_core::Intention::Execute.as_str() {
            m.serialize_entry(key("intention", "i"), a.intention)?;
        }
        m.serialize_entry(key("attempt", "a"), &a.attempt)?;
        if a.round != 0 {
            m.serialize_entry(key("round", "rd"), &a.round)?;
        }
        for (long, short_key, value) in [
            ("result", "v", &a.result),
            ("failure", "x", &a.failure),
            ("revert_failure", "rx", &a.revert_failure),
        ] {
            if let Some(value) = value {
                m.serialize_entry(key(long, short_key), value)?;
            }
        }
        if a.retry_history.get() != "[]" {
            m.serialize_entry(key("retry_history", "h"), &a.retry_history)?;
        }
        // Left out when exactly `0.0`: a `-0.0` is written, so it reads back with its sign.
        if a.progress.to_bits() != 0 {
            m.serialize_entry(key("progress", "p"), &a.progress)?;
        }
        let times = [
            ("retry_at", "ra", a.retry_at),
            ("started_at", "st", a.started_at),
            ("finished_at", "ft", a.finished_at),
            ("deadline", "dl", a.deadline),
        ];
        for (long, short_key, time) in times {
            if let Some(t) = time {
                m.serialize_entry(key(long, short_key), &Time { t, short })?;
            }
        }
        m.end()
    }
}

/// A time as a step holds it (see [`Shaped`]).
#[cfg(test)]
struct Time {
    t: DateTime<Utc>,
    short: bool,
}

#[cfg(test)]
impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // A leap second's nanoseconds (1e9 and up) would come back as the next second's.
        let nanos = (self.short && self.t.timestamp_subsec_nanos() < 1_000_000_000)
            .then(|| self.t.timestamp_nanos_opt())
            .flatten();
        match nanos {
            Some(ns) => s.serialize_i64(ns),
            // chrono's own form, which the long steps have always used: the oracle of
            // `JsonOut::time`, so chrono itself.
            None => self.t.serialize(s),
        }
    }
}

/// How a SQL store writes the steps of its log (`SqliteOptions::step_format`,
/// `PostgresOptions::step_format`). Either way, every field of a record reads back exactly,
/// and this version reads both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StepFormat {
    /// Keys named like the `atoms` table's columns, times as RFC 3339 text, fields at their
    /// defaults left out: about 380 bytes for a linear step. Read by every version from 0.1.0
    /// builds of commit `74e6cff` on (which began reading steps that leave defaults out); the
    /// default of 0.2.0. Choose it while engines of 0.1.0 may still resume the store's runs.
    Long,
    /// Short keys and times as integer nanoseconds: about 220 bytes for a linear step, so
    /// about 5 % more SQLite steps a second (see `docs/performance.md`) and a log less than half as
    /// big. Read from 0.2.0 on; the default from 0.3.0 on. A 0.1.0 build refuses such steps
    /// as written by a newer version, and a conductor of it gives up the job (ending it
    /// failed) while its run stays unfinished: upgrade a 0.1.0 fleet to 0.2.0 first, or
    /// choose [`StepFormat::Long`] until no 0.1.0 engine is left.
    #[default]
    Short,
}

impl StepFormat {
    /// A field's key in this format: `long`, or `short` in the short form.
    pub(crate) fn key(self, long: &'static str, short: &'static str) -> &'static str {
        match self {
            StepFormat::Long => long,
            StepFormat::Short => short,
        }
    }

    /// The oldest model version that reads steps of this format: what their rows are stamped
    /// with (see `MODEL_VERSION`).
    pub(crate) fn model_version(self) -> i64 {
        match self {
            StepFormat::Long => 1,
            StepFormat::Short => 2,
        }
    }
}

fn encode_value<T: Serialize + ?Sized>(
    flow: FlowId,
    atom: &str,
    what: &'static str,
    value: &T,
    limit: usize,
) -> Result<Box<RawValue>> {
    let raw = serde_json::value::to_raw_value(value).map_err(|e| Error::Backend(Box::new(e)))?;
    let size = raw.get().len();
    if size > limit {
        return Err(Error::TooLarge {
            flow,
            atom: Some(atom.to_owned()),
            what,
            size,
            limit,
        });
    }
    Ok(raw)
}

/// `json`, a constant JSON text, as a value borrowed for good (parsed once).
fn constant(
    json: &'static str,
    cell: &'static OnceLock<Option<&'static RawValue>>,
) -> Option<&'static RawValue> {
    *cell.get_or_init(|| serde_json::from_str(json).ok())
}

/// Serializes `rec`'s JSON values, refusing any over `limit` bytes with [`Error::TooLarge`].
/// The commonest values (a `null` result, an empty retry history) are shared constants
/// rather than serialized anew for every step.
pub(crate) fn encode_atom(flow: FlowId, rec: &AtomRecord, limit: usize) -> Result<EncodedAtom<'_>> {
    static EMPTY_ARRAY: OnceLock<Option<&'static RawValue>> = OnceLock::new();
    let name = rec.name.as_str();
    let value = |what, v: &serde_json::Value| -> Result<Cow<'static, RawValue>> {
        if v.is_null() && RawValue::NULL.get().len() <= limit {
            return Ok(Cow::Borrowed(RawValue::NULL));
        }
        encode_value(flow, name, what, v, limit).map(Cow::Owned)
    };
    let retry_history = match constant("[]", &EMPTY_ARRAY) {
        Some(empty) if rec.retry_history.is_empty() && empty.get().len() <= limit => {
            Cow::Borrowed(empty)
        }
        _ => Cow::Owned(encode_value(
            flow,
            name,
            "retry_history",
            &rec.retry_history,
            limit,
        )?),
    };
    Ok(EncodedAtom {
        name,
        kind: rec.kind.as_str(),
        state: rec.state.as_str(),
        intention: rec.intention.as_str(),
        attempt: rec.attempt,
        round: rec.round,
        result: rec
            .result
            .as_ref()
            .map(|v| value("result", v))
            .transpose()?,
        failure: rec
            .failure
            .as_ref()
            .map(|v| encode_value(flow, name, "failure", v, limit).map(Cow::Owned))
            .transpose()?,
        revert_failure: rec
            .revert_failure
            .as_ref()
            .map(|v| encode_value(flow, name, "revert_failure", v, limit).map(Cow::Owned))
            .transpose()?,
        retry_history,
        retry_at: rec.retry_at,
        progress: rec.progress,
        started_at: rec.started_at,
        finished_at: rec.finished_at,
        deadline: rec.deadline,
    })
}

/// Whether a store's read of a flow parses its `meta`: an engine's load
/// ([`Store::load_run`](baton_core::store::Store::load_run)) and the careful commit skip it.
#[derive(Clone, Copy)]
pub(crate) enum Meta {
    Read,
    Skip,
}

/// Ends a transaction explicitly: commits it if `result` is `Ok`, rolls it back otherwise.
/// Dropping a transaction only queues its rollback until the connection is next used, which
/// would leave its locks (SQLite's write lock, PostgreSQL's table locks) held meanwhile.
pub(crate) async fn finish<DB: sqlx::Database, T>(
    tx: sqlx::Transaction<'_, DB>,
    result: Result<T>,
) -> Result<T> {
    match result {
        Ok(value) => {
            tx.commit().await.map_err(crate::error::classify)?;
            Ok(value)
        }
        Err(e) => {
            // The refusal is the news; a failed rollback ends with the connection anyway.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// The text form of a timestamp in SQLite: RFC 3339 in UTC with nanoseconds, fixed width, so
/// that text order is time order.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn time_text(t: DateTime<Utc>) -> String {
    match crate::rfc3339::write_fast(t, crate::rfc3339::Fraction::Nanos) {
        Some(text) => text.as_str().to_owned(),
        None => t.to_rfc3339_opts(SecondsFormat::Nanos, true),
    }
}

/// `t`, or the last instant of year 9999 if it is later: [`time_text`] writes later years with
/// a sign (`+10000-...`), which sorts before every year of four digits, so a cutoff compared
/// as text must not go past it.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn sortable_time(t: DateTime<Utc>) -> DateTime<Utc> {
    let last = chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 999_999_999))
        .map(|t| t.and_utc());
    match last {
        Some(last) if t > last => last,
        _ => t,
    }
}

/// Parses [`time_text`]'s form (or any RFC 3339 timestamp).
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn parse_time(text: &str) -> std::result::Result<DateTime<Utc>, String> {
    if let Some(t) = crate::rfc3339::read_fast(text) {
        return Ok(t);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("unreadable timestamp {text:?}: {e}"))
}

/// The database form of a fencing token, if it has one: tokens above `i64::MAX` cannot be
/// stored, so they are never current.
pub(crate) fn token_to_db(token: FencingToken) -> Option<i64> {
    i64::try_from(token.0).ok()
}

/// A batch's (or a creation's) fence as the databases store it: the job and its token. A
/// fence for another flow than its job's is refused at once as [`Error::Refused`] (see
/// [`check_fence_flow`](baton_core::store::check_fence_flow)), and a token no claim can have
/// (too large to store) as [`Error::Fenced`].
pub(crate) fn fence_to_db(
    flow: FlowId,
    fence: Option<baton_core::Fence>,
) -> Result<Option<(baton_core::JobId, i64)>> {
    baton_core::store::check_fence_flow(flow, fence)?;
    fence
        .map(|f| match token_to_db(f.token) {
            Some(token) => Ok((f.job, token)),
            None => Err(Error::Fenced {
                flow,
                job: f.job,
                token: f.token,
            }),
        })
        .transpose()
}

/// Checks a batch write by write against the flow as it is (each write against what the
/// writes before it left), reporting exactly what is wrong.
pub(crate) fn check_writes(
    flow: FlowId,
    record: &FlowRecord,
    atoms: &[AtomRecord],
    writes: &[Write],
) -> Result<()> {
    let mut state = record.state.as_str().to_owned();
    let mut atoms: std::collections::HashMap<&str, (String, u32)> = atoms
        .iter()
        .map(|a| (a.name.as_str(), (a.state.as_str().to_owned(), a.attempt)))
        .collect();
    for write in writes {
        match write {
            Write::Flow { to, .. } => {
                check_write(flow, write, (state, 0))?;
                state = to.as_str().to_owned();
            }
            Write::Atom { record, .. } => {
                let current = atoms.get(record.name.as_str()).cloned().ok_or_else(|| {
                    Error::AtomNotFound {
                        flow,
                        atom: record.name.clone(),
                    }
                })?;
                check_write(flow, write, current)?;
                atoms.insert(
                    record.name.as_str(),
                    (record.state.as_str().to_owned(), record.attempt),
                );
            }
        }
    }
    Ok(())
}

/// A flow row as read, before it is checked.
#[derive(Debug)]
pub(crate) struct RawFlow {
    pub(crate) id: FlowId,
    pub(crate) name: String,
    pub(crate) state: String,
    pub(crate) intention: String,
    pub(crate) inputs: String,
    pub(crate) meta: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) model_version: i64,
    pub(crate) factory: Option<String>,
    pub(crate) factory_version: Option<i64>,
    pub(crate) fingerprint: Option<String>,
    pub(crate) deadline: Option<DateTime<Utc>>,
    pub(crate) deadline_then: Option<String>,
}

/// An atom row as read, before it is checked.
#[derive(Debug)]
pub(crate) struct RawAtom {
    pub(crate) kind: String,
    pub(crate) state: String,
    pub(crate) intention: String,
    pub(crate) attempt: i64,
    pub(crate) round: i64,
    pub(crate) result: Option<String>,
    pub(crate) failure: Option<String>,
    pub(crate) revert_failure: Option<String>,
    pub(crate) retry_history: String,
    pub(crate) retry_at: Option<DateTime<Utc>>,
    pub(crate) progress: f64,
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) deadline: Option<DateTime<Utc>>,
    pub(crate) model_version: i64,
}

/// A history row as read, before it is checked.
#[derive(Debug)]
pub(crate) struct RawTransition {
    pub(crate) seq: i64,
    pub(crate) at: DateTime<Utc>,
    pub(crate) subject: String,
    pub(crate) atom: Option<String>,
    pub(crate) from_state: String,
    pub(crate) to_state: String,
    pub(crate) attempt: Option<i64>,
}

/// A run's [`Head`](baton_core::store::Head) from its row's state and its step log's last
/// step number.
pub(crate) fn head(flow: FlowId, state: &str, seq: i64) -> Result<baton_core::store::Head> {
    let state = state
        .parse::<baton_core::FlowState>()
        .map_err(|e| corrupt(flow, None, format!("state: {e}")))?;
    let seq = u64::try_from(seq).map_err(|_| corrupt(flow, None, format!("step {seq}")))?;
    Ok(baton_core::store::Head::new(state, seq))
}

/// The error for a damaged row.
pub(crate) fn corrupt(flow: FlowId, atom: Option<&str>, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        flow,
        atom: atom.map(str::to_owned),
        detail: detail.into(),
    }
}

/// Whether a row of `flow` stamped with model `version` can be read by this build:
/// [`Error::TooNew`] if a newer one wrote it, `Corrupt` if the stamp is no version at all.
pub(crate) fn check_version(flow: FlowId, atom: Option<&str>, version: i64) -> Result<()> {
    match u32::try_from(version) {
        Ok(v) if (1..=MODEL_VERSION).contains(&v) => Ok(()),
        Ok(v) if v > MODEL_VERSION => Err(Error::TooNew {
            flow,
            version: v,
            supported: MODEL_VERSION,
        }),
        _ => Err(corrupt(
            flow,
            atom,
            format!("invalid model version {version}"),
        )),
    }
}

fn parse<T: std::str::FromStr>(column: &str, text: &str) -> std::result::Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e| format!("column {column}: {e}"))
}

fn json<T: DeserializeOwned>(column: &str, text: &str) -> std::result::Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("column {column}: unreadable JSON: {e}"))
}

fn count(column: &str, n: i64) -> std::result::Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("column {column}: {n} is out of range"))
}

/// Checks and converts a flow row.
pub(crate) fn decode_flow(raw: RawFlow) -> Result<FlowRecord> {
    let id = raw.id;
    check_version(id, None, raw.model_version)?;
    let go =
        || -> std::result::Result<FlowRecord, String> {
            Ok(FlowRecord {
                id,
                name: raw.name,
                state: parse("state", &raw.state)?,
                intention: parse("intention", &raw.intention)?,
                inputs: json("inputs", &raw.inputs)?,
                meta: json("meta", &raw.meta)?,
                factory: match (raw.factory, raw.factory_version) {
                    (Some(name), Some(version)) => Some(FactoryRef {
                        name,
                        version: u32::try_from(version).ok().filter(|v| *v > 0).ok_or_else(
                            || format!("column factory_version: {version} is out of range"),
                        )?,
                    }),
                    (None, None) => None,
                    _ => return Err("columns factory and factory_version: one is missing".into()),
                },
                fingerprint: raw
                    .fingerprint
                    .as_deref()
                    .map(|f| parse("fingerprint", f))
                    .transpose()?,
                deadline: match (raw.deadline, raw.deadline_then) {
                    (Some(at), Some(then)) => Some(Deadline {
                        at,
                        then: parse("deadline_then", &then)?,
                    }),
                    (None, None) => None,
                    _ => return Err("columns deadline and deadline_then: one is missing".into()),
                },
                created_at: raw.created_at,
                updated_at: raw.updated_at,
            })
        };
    go().map_err(|detail| corrupt(id, None, detail))
}

/// Checks and converts an atom row of flow `flow`.
pub(crate) fn decode_atom(flow: FlowId, name: String, raw: RawAtom) -> Result<AtomRecord> {
    check_version(flow, Some(&name), raw.model_version)?;
    let go = |name: String| -> std::result::Result<AtomRecord, String> {
        Ok(AtomRecord {
            kind: parse::<AtomKind>("kind", &raw.kind)?,
            state: parse("state", &raw.state)?,
            intention: parse("intention", &raw.intention)?,
            attempt: count("attempt", raw.attempt)?,
            round: count("round", raw.round)?,
            result: raw
                .result
                .as_deref()
                .map(|t| json("result", t))
                .transpose()?,
            failure: raw
                .failure
                .as_deref()
                .map(|t| json("failure", t))
                .transpose()?,
            revert_failure: raw
                .revert_failure
                .as_deref()
                .map(|t| json("revert_failure", t))
                .transpose()?,
            retry_history: json("retry_history", &raw.retry_history)?,
            retry_at: raw.retry_at,
            progress: raw.progress,
            started_at: raw.started_at,
            finished_at: raw.finished_at,
            deadline: raw.deadline,
            name,
        })
    };
    go(name.clone()).map_err(|detail| corrupt(flow, Some(&name), detail))
}

/// Checks and converts an atom row that is as its creation left it (pending, never started:
/// see the SQLite store's packed read), of which only these columns were read.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn decode_pristine_atom(
    flow: FlowId,
    name: String,
    kind: &str,
    model_version: i64,
) -> Result<AtomRecord> {
    check_version(flow, Some(&name), model_version)?;
    match parse::<AtomKind>("kind", kind) {
        Ok(kind) => Ok(AtomRecord::pending(name, kind)),
        Err(detail) => Err(corrupt(flow, Some(&name), detail)),
    }
}

/// Checks and converts a history row of flow `flow`.
pub(crate) fn decode_transition(flow: FlowId, raw: RawTransition) -> Result<Transition> {
    let atom = raw.atom.clone();
    let go = || -> std::result::Result<Transition, String> {
        let seq =
            u64::try_from(raw.seq).map_err(|_| format!("history seq {} is negative", raw.seq))?;
        let change = match (raw.subject.as_str(), raw.atom) {
            ("flow", _) => Change::Flow {
                from: parse("from_state", &raw.from_state)?,
                to: parse("to_state", &raw.to_state)?,
            },
            ("atom", Some(atom)) => Change::Atom {
                from: parse("from_state", &raw.from_state)?,
                to: parse("to_state", &raw.to_state)?,
                attempt: count("attempt", raw.attempt.unwrap_or(0))?,
                atom,
            },
            (other, _) => return Err(format!("history entry {seq}: unknown subject {other:?}")),
        };
        Ok(Transition {
            flow,
            seq,
            at: raw.at,
            change,
        })
    };
    go().map_err(|detail| corrupt(flow, atom.as_deref(), detail))
}

/// The job a batch consumes, with the outcome to record, if it asks to: a batch that consumes
/// a job must be fenced by that job's claim.
pub(crate) fn consumed_job(
    batch: &baton_core::store::Batch,
) -> Result<Option<(baton_core::Fence, String)>> {
    match (&batch.consume, batch.fence) {
        (None, _) => Ok(None),
        (Some(_), None) => Err(Error::Refused {
            flow: batch.flow,
            reason: "a batch that consumes a job must be fenced by the job's claim",
        }),
        (Some(outcome), Some(fence)) => Ok(Some((fence, outcome.to_string()))),
    }
}

/// What a careful commit reads when it is about to refuse a batch that ends a job, to tell
/// whether an earlier attempt of the same batch was stored (its answer lost on the way back,
/// and the batch tried again): the body of the flow's last step, and the job's row.
#[derive(Debug, Default)]
pub(crate) struct Ended {
    /// The body of the flow's last step, if it has one.
    pub(crate) last_step: Option<String>,
    /// The job's state, token and outcome (JSON text), if there is such a job.
    pub(crate) job: Option<(String, i64, Option<String>)>,
}

impl Ended {
    /// Whether the batch whose step has `body`, ending the job under `fence` with `outcome`
    /// (JSON text), is stored already: it is the flow's last step, and the job ended with it,
    /// under that claim, with that outcome. Then the batch is applied, and the refusal the
    /// retry met is its own earlier success. (The step and the job's end are one transaction,
    /// and the step's body holds the records the engine made, times included, so no other
    /// batch has the same.)
    pub(crate) fn holds(&self, body: &str, fence: baton_core::Fence, outcome: &str) -> bool {
        let Some((state, token, stored)) = &self.job else {
            return false;
        };
        let same_outcome = || {
            let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
            stored
                .as_deref()
                .and_then(parse)
                .is_some_and(|s| Some(s) == parse(outcome))
        };
        self.last_step.as_deref() == Some(body)
            && state == baton_core::JobState::Complete.as_str()
            && Some(*token) == token_to_db(fence.token)
            && same_outcome()
    }
}

/// Adds `query`'s filters to a listing of flows (`... WHERE <something>` so far), then its
/// position, order and limit: the same SQL for both databases. `after` is the `seq` of
/// `query.after` (looked up by the caller, who refuses a cursor it does not find).
///
/// Every filter has an index that leads with it and ends with `seq` (or a partial index over
/// `seq`), so a page is one range of one index, read from its end, whatever the table's size.
///
/// `time` turns a creation-time bound into what the database compares `created_at` with.
pub(crate) fn push_flow_query<'a, DB: sqlx::Database, T>(
    q: &mut sqlx::QueryBuilder<'a, DB>,
    query: &baton_core::store::FlowQuery,
    after: Option<i64>,
    time: impl Fn(DateTime<Utc>) -> T,
) where
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    T: sqlx::Encode<'a, DB> + sqlx::Type<DB> + 'a,
{
    if let Some(since) = query.created_since {
        q.push(" AND created_at >= ").push_bind(time(since));
    }
    if let Some(until) = query.created_until {
        q.push(" AND created_at < ").push_bind(time(until));
    }
    if let Some(state) = query.state {
        q.push(" AND state = ").push_bind(state.as_str().to_owned());
    }
    if let Some(name) = &query.name {
        q.push(" AND name = ").push_bind(name.clone());
    }
    if let Some(factory) = &query.factory {
        q.push(" AND factory = ").push_bind(factory.clone());
    }
    if let Some(version) = query.version {
        q.push(" AND factory_version = ")
            .push_bind(i64::from(version));
    }
    if query.unfinished {
        q.push(" AND state NOT IN ")
            .push(crate::board_common::RUN_ENDED);
    }
    if let Some(seq) = after {
        q.push(" AND seq < ").push_bind(seq);
    }
    q.push(" ORDER BY seq DESC");
    if let Some(limit) = query.limit {
        q.push(" LIMIT ")
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use baton_core::model::AtomKind;
    use serde_json::json;

    use super::*;

    #[test]
    fn terminal_states_are_the_core_ones() {
        let terminal: Vec<&str> = baton_core::FlowState::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(terminal, TERMINAL_FLOW_STATES);
    }

    /// The shared constants for a `null` result and an empty retry history are held to the
    /// size limit like any value.
    #[test]
    fn constant_values_keep_to_the_size_limit() {
        let flow = FlowId::new();
        let mut rec = AtomRecord::pending("a", AtomKind::Task);
        rec.result = Some(serde_json::Value::Null);
        let atom = encode_atom(flow, &rec, 4).unwrap();
        assert_eq!(atom.result.as_deref().map(RawValue::get), Some("null"));
        assert_eq!(atom.retry_history.get(), "[]");
        let err = encode_atom(flow, &rec, 3).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooLarge {
                    what: "result",
                    size: 4,
                    limit: 3,
                    ..
                }
            ),
            "{err}"
        );
        rec.result = None;
        let err = encode_atom(flow, &rec, 1).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooLarge {
                    what: "retry_history",
                    size: 2,
                    limit: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn none_and_null_results_stay_apart() {
        let flow = FlowId::new();
        let mut rec = AtomRecord::pending("a", AtomKind::Task);
        for (format, key) in [(StepFormat::Long, "result"), (StepFormat::Short, "v")] {
            rec.result = None;
            let atom = encode_atom(flow, &rec, 100).unwrap();
            let none = serde_json::to_value(Shaped {
                atom: &atom,
                format,
            })
            .unwrap();
            assert!(none.get(key).is_none());
            rec.result = Some(serde_json::Value::Null);
            let atom = encode_atom(flow, &rec, 100).unwrap();
            let null = serde_json::to_value(Shaped {
                atom: &atom,
                format,
            })
            .unwrap();
            assert_eq!(null.get(key), Some(&serde_json::Value::Null));
        }
    }

    #[test]
    fn oversized_values_are_refused_naming_what() {
        let flow = FlowId::new();
        let mut rec = AtomRecord::pending("big", AtomKind::Task);
        rec.result = Some(json!("x".repeat(200)));
        let err = encode_atom(flow, &rec, 100).unwrap_err();
        assert!(
            matches!(&err, Error::TooLarge { atom: Some(atom), what: "result", size: 202, limit: 100, .. } if atom == "big"),
            "{err}"
        );
    }

    #[test]
    fn newer_model_versions_are_too_new() {
        let flow = FlowId::new();
        let err = check_version(flow, None, i64::from(MODEL_VERSION) + 1).unwrap_err();
        assert!(
            matches!(err, Error::TooNew { flow: f, version, supported: MODEL_VERSION } if f == flow && version == MODEL_VERSION + 1),
            "{err}"
        );
        assert!(err.to_string().contains("newer version of baton"), "{err}");
        for invalid in [0, -1, i64::MAX] {
            assert!(matches!(
                check_version(flow, None, invalid),
                Err(Error::Corrupt { .. })
            ));
        }
        assert!(check_version(flow, None, i64::from(MODEL_VERSION)).is_ok());
        assert!(check_version(flow, None, 1).is_ok());
    }

    #[test]
    fn timestamps_round_trip_through_text() {
        let now = Utc::now();
        assert_eq!(parse_time(&time_text(now)).unwrap(), now);
        assert!(parse_time("yesterday").is_err());
    }
}
