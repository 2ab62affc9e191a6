//! The step log: how both SQL stores record a batch with one row.
//!
//! A batch (one engine step) is stored as one row of the table `steps`, numbered from 1 per
//! flow: the batch's writes as JSON, in order. The `atoms` table keeps each atom's record as it
//! was when the flow was created (or, in a database written by an older baton, as it was
//! before the log began); an atom's current record is its last record in the log, or that row
//! when the log has none. A flow's history is the old `history` rows, then one transition per
//! change in the log, numbered on from them. The flow's row stays current: a step's final flow
//! state is copied onto it in the statement that appends the step (SQLite: by a trigger;
//! PostgreSQL: by the statement itself), so listings by state need no replay.
//!
//! A step's JSON comes in two forms, long and short ([`StepFormat`]; the keys are listed at
//! `EntryOut` and [`codec::Shaped`]), and the reader takes both, as well as the long form with
//! every field that versions before defaults were left out wrote.
//!
//! # Why one row
//!
//! A step used to update the flow's row and each atom's row and insert a history row per
//! change: five rows and their indexes on the linear path, which made a commit several times
//! dearer than the single-row insert it has to be. An append costs what that insert costs.
//!
//! # The compare-and-set, made by the primary key
//!
//! Every write of a batch is a compare-and-set on the flow or an atom. The store keeps what it
//! knows of each flow it writes to (a [`Known`]: the log's last step, the flow's state, each
//! atom's state and attempt) and checks the batch against that in memory. The knowledge may be
//! stale (another process may have written since); what makes the check sound is the insert:
//! it appends the step with the number after the last one known, and the primary key
//! `(flow_id, seq)` refuses it if any step was appended since. An insert that succeeds
//! therefore proves the knowledge was current, and so that every expectation held. A refused
//! insert, a fence that does not hold, or a flow the store knows nothing of goes the careful
//! way: a transaction that reads the flow's current state, checks write by write (reporting
//! exactly what is wrong) and appends.
//!
//! # Checkpoints
//!
//! A load used to read the run's atoms as created and replay its whole log, so a run with
//! 100 000 steps (progress reports and retries add up) took as long to load as its history
//! was long. Now, every so many steps ([`Checkpoints`]), the step that is due also rewrites
//! the `atoms` rows of the atoms changed since the last checkpoint to their records as of that
//! step, and stamps the run's row with the step's number (`flows.checkpoint_seq`) and the
//! latest time of the steps up to it (`checkpoint_at`), all in the step's transaction: a
//! checkpoint exists exactly when its step does. A load reads the atoms and only the steps
//! from the checkpoint's on (the checkpoint's own step is read to check it is there, not
//! replayed): its cost is the run's size plus at most one interval of steps.
//!
//! The log stays the truth and keeps every step: the history is read from all of them, and a
//! run replayed from its whole log (a baton of an earlier release does that, and the stores'
//! `replaying_whole_log` handle, for benchmarks and tests,) comes out the same, because a step holds
//! each atom's whole record, so replaying a step over a row it has already been applied to
//! changes nothing. A run written before checkpoints (`checkpoint_seq` 0) loads from its whole
//! log. Purging a run deletes its rows, checkpoint included.
//!
//! The records a checkpoint writes come from the store's [`Known`]: the one-statement append
//! proves it current, and so does the careful way's transaction, which read the run.

use std::collections::HashMap;

use baton_core::model::{AtomRecord, Batch, FlowRecord, FlowSnapshot, Transition, Write};
use baton_core::store::{transition_of, Error, Result};
use baton_core::{AtomState, Fence, FlowId, FlowState};
use chrono::{DateTime, Utc};
#[cfg(test)]
use serde::Serialize;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::codec::{self, EncodedAtom, RawAtom, StepFormat};

/// One write as a step's body stores it (see [`StepFormat`]): `op` (short: `o`) is `flow` (`f`)
/// or `atom` (`a`); then `from` (`f`), `to` (`t`) and `intention` (`i`) for the flow, or
/// `from` (`f`), `expected_attempt` (`e`) and `record` (`r`, see [`codec::Shaped`]) for an
/// atom.
struct EntryOut<'a> {
    write: WriteOut<'a>,
    format: StepFormat,
}

enum WriteOut<'a> {
    /// The flow's move: from, to, intention.
    Flow(&'static str, &'static str, &'static str),
    /// An atom's: the state and attempt expected, and its new record.
    Atom(&'static str, u32, &'a EncodedAtom<'a>),
}

impl EntryOut<'_> {
    /// Appends the entry's JSON to `out`: the same text as serde writes through this type's
    /// `Serialize` (the tests' oracle); see [`codec::Shaped::write_to`].
    fn write_to(&self, out: &mut codec::JsonOut) {
        let key = |long, short_key| self.format.key(long, short_key);
        out.open(b'{');
        match self.write {
            WriteOut::Flow(from, to, intention) => {
                out.key(key("op", "o"));
                out.word(key("flow", "f"));
                out.key(key("from", "f"));
                out.word(from);
                out.key(key("to", "t"));
                out.word(to);
                out.key(key("intention", "i"));
                out.word(intention);
            }
            WriteOut::Atom(from, attempt, atom) => {
                out.key(key("op", "o"));
                out.word(key("atom", "a"));
                out.key(key("from", "f"));
                out.word(from);
                out.key(key("expected_attempt", "e"));
                out.integer(i64::from(attempt));
                out.key(key("record", "r"));
                codec::Shaped {
                    atom,
                    format: self.format,
                }
                .write_to(out);
            }
        }
        out.close(b'}');
    }
}

#[cfg(test)]
impl Serialize for EntryOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let key = |long, short_key| self.format.key(long, short_key);
        let mut m = s.serialize_map(None)?;
        match self.write {
            WriteOut::Flow(from, to, intention) => {
                m.serialize_entry(key("op", "o"), key("flow", "f"))?;
                m.serialize_entry(key("from", "f"), from)?;
                m.serialize_entry(key("to", "t"), to)?;
                m.serialize_entry(key("intention", "i"), intention)?;
            }
            WriteOut::Atom(from, attempt, atom) => {
                m.serialize_entry(key("op", "o"), key("atom", "a"))?;
                m.serialize_entry(key("from", "f"), from)?;
                m.serialize_entry(key("expected_attempt", "e"), &attempt)?;
                let shaped = codec::Shaped {
                    atom,
                    format: self.format,
                };
                m.serialize_entry(key("record", "r"), &shaped)?;
            }
        }
        m.end()
    }
}

/// A step ready to be appended: its body and the flow state it leaves, if it moves the flow.
#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) body: String,
    /// What the step's row is stamped with: see [`StepFormat::model_version`].
    pub(crate) model_version: i64,
    pub(crate) flow_state: Option<&'static str>,
    pub(crate) flow_intention: Option<&'static str>,
}

/// How a new run's row in `flows` is written: as its first batch (if it is stored with one)
/// leaves it, so that the first step need not move the flow (writing the row a second time).
pub(crate) struct NewRow {
    pub(crate) state: &'static str,
    pub(crate) intention: &'static str,
    pub(crate) updated_at: DateTime<Utc>,
}

/// A new run's first batch, ready to be stored with the run: the batch, its step (which
/// leaves the flow's state to the row), and the job it consumes with the outcome, if any.
pub(crate) type FirstStep<'a> = (&'a Batch, Step, Option<(Fence, String)>);

/// Prepares the creation of `flow` with `first` as its first batch: the run's inputs are
/// checked against `limit`, and the batch against the run as created, and encoded, before
/// anything is sent to the database.
pub(crate) fn first_step<'a>(
    flow: &FlowRecord,
    atoms: &[AtomRecord],
    first: Option<&'a Batch>,
    limit: usize,
    format: StepFormat,
) -> Result<(NewRow, Option<FirstStep<'a>>)> {
    baton_core::store::check_inputs(flow, limit)?;
    let mut row = NewRow {
        state: flow.state.as_str(),
        intention: flow.intention.as_str(),
        updated_at: flow.updated_at,
    };
    let Some(batch) = first else {
        return Ok((row, None));
    };
    codec::check_writes(flow.id, flow, atoms, &batch.writes)?;
    let mut step = encode_batch(batch, limit, format)?;
    row.state = step.flow_state.take().unwrap_or(row.state);
    row.intention = step.flow_intention.take().unwrap_or(row.intention);
    row.updated_at = row.updated_at.max(batch.at);
    let consume = codec::consumed_job(batch)?;
    Ok((row, Some((batch, step, consume))))
}

/// Encodes a batch as a step of `format`, refusing any value over `limit` bytes with
/// `TooLarge`.
pub(crate) fn encode_batch(
    batch: &baton_core::model::Batch,
    limit: usize,
    format: StepFormat,
) -> Result<Step> {
    let encoded = batch
        .writes
        .iter()
        .map(|write| match write {
            Write::Atom { record, .. } => codec::encode_atom(batch.flow, record, limit).map(Some),
            Write::Flow { .. } => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    encode(batch.flow, &batch.writes, &encoded, format)
}

/// Encodes a batch's writes (with their atoms already encoded, in the same order) as a step
/// of `format`.
pub(crate) fn encode(
    flow: FlowId,
    writes: &[Write],
    encoded: &[Option<EncodedAtom<'_>>],
    format: StepFormat,
) -> Result<Step> {
    let mut entries = Vec::with_capacity(writes.len());
    let mut flow_state = None;
    let mut flow_intention = None;
    for (write, enc) in writes.iter().zip(encoded) {
        entries.push(match (write, enc) {
            (
                Write::Flow {
                    from,
                    to,
                    intention,
                },
                _,
            ) => {
                flow_state = Some(to.as_str());
                flow_intention = Some(intention.as_str());
                EntryOut {
                    write: WriteOut::Flow(from.as_str(), to.as_str(), intention.as_str()),
                    format,
                }
            }
            (
                Write::Atom {
                    expected_state,
                    expected_attempt,
                    record,
                },
                Some(enc),
            ) => {
                if !enc.progress.is_finite() {
                    // JSON has no such number; it would come back unreadable.
                    return Err(crate::error::backend(format!(
                        "progress of atom {:?} in flow {flow} is {}, not a finite number",
                        record.name, enc.progress
                    )));
                }
                EntryOut {
                    write: WriteOut::Atom(expected_state.as_str(), *expected_attempt, enc),
                    format,
                }
            }
            (Write::Atom { .. }, None) => {
                return Err(crate::error::backend("atom write without its encoding"));
            }
        });
    }
    // Sized for a linear step (two entries) so that writing it does not grow the buffer.
    let mut out = codec::JsonOut::with_capacity(256 * entries.len().max(1));
    out.open(b'[');
    for entry in &entries {
        entry.write_to(&mut out);
    }
    out.close(b']');
    let body = out.into_string()?;
    #[cfg(test)]
    assert_eq!(
        Some(&body),
        serde_json::to_string(&entries).ok().as_ref(),
        "the hand-written step differs from serde's"
    );
    Ok(Step {
        body,
        model_version: format.model_version(),
        flow_state,
        flow_intention,
    })
}

/// A JSON value that is present, `null` included (a missing field is `None`).
fn present<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// A time as a step holds it: integer nanoseconds since 1970, or RFC 3339 text (written by
/// earlier versions, and for times an `i64` of nanoseconds cannot hold); `null` is none.
fn time<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<DateTime<Utc>>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<DateTime<Utc>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a time: integer nanoseconds since 1970, RFC 3339 text, or null")
        }

        fn visit_i64<E: serde::de::Error>(self, ns: i64) -> std::result::Result<Self::Value, E> {
            Ok(Some(DateTime::from_timestamp_nanos(ns)))
        }

        fn visit_u64<E: serde::de::Error>(self, ns: u64) -> std::result::Result<Self::Value, E> {
            i64::try_from(ns)
                .map(|ns| Some(DateTime::from_timestamp_nanos(ns)))
                .map_err(|_| E::custom(format!("time {ns} ns is out of range")))
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> std::result::Result<Self::Value, E> {
            if let Some(t) = crate::rfc3339::read_fast(text) {
                return Ok(Some(t));
            }
            // Any other form chrono's own serde reads (what earlier versions wrote).
            text.parse::<DateTime<chrono::FixedOffset>>()
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(E::custom)
        }

        fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(
            self,
            d: D2,
        ) -> std::result::Result<Self::Value, D2::Error> {
            d.deserialize_any(Visitor)
        }
    }
    d.deserialize_option(Visitor)
}

/// An atom record as a step holds it, in either form (see [`StepFormat`]): short keys or the
/// long ones, fields at their defaults left out or not (steps of versions before the one that
/// began leaving them out wrote every field), times as integer nanoseconds or text.
#[derive(Deserialize)]
struct AtomIn {
    #[serde(alias = "n")]
    name: String,
    #[serde(alias = "k", default = "default_kind")]
    kind: String,
    #[serde(alias = "s")]
    state: String,
    #[serde(alias = "i", default = "default_intention")]
    intention: String,
    #[serde(alias = "a")]
    attempt: i64,
    #[serde(alias = "rd", default)]
    round: i64,
    #[serde(alias = "v", default, deserialize_with = "present")]
    result: Option<Box<RawValue>>,
    #[serde(alias = "x", default, deserialize_with = "present")]
    failure: Option<Box<RawValue>>,
    #[serde(alias = "rx", default, deserialize_with = "present")]
    revert_failure: Option<Box<RawValue>>,
    #[serde(alias = "h", default = "empty_history")]
    retry_history: Box<RawValue>,
    #[serde(alias = "ra", default, deserialize_with = "time")]
    retry_at: Option<DateTime<Utc>>,
    #[serde(alias = "p", default)]
    progress: f64,
    #[serde(alias = "st", default, deserialize_with = "time")]
    started_at: Option<DateTime<Utc>>,
    #[serde(alias = "ft", default, deserialize_with = "time")]
    finished_at: Option<DateTime<Utc>>,
    #[serde(alias = "dl", default, deserialize_with = "time")]
    deadline: Option<DateTime<Utc>>,
}

fn default_kind() -> String {
    baton_core::model::AtomKind::Task.as_str().to_owned()
}

fn default_intention() -> String {
    baton_core::Intention::Execute.as_str().to_owned()
}

fn empty_history() -> Box<RawValue> {
    // `[]` is JSON: the fallback (JSON null, which the history's check refuses) never happens.
    RawValue::from_string("[]".to_owned()).unwrap_or_default()
}

/// One write as a step holds it: short keys (`o` with `f` for the flow or `a` for an atom,
/// `f` from, `t` to, `i` intention, `e` the attempt expected, `r` the record), or the long
/// ones of earlier versions (`op` with `flow` or `atom`, `from`, ...).
#[derive(Deserialize)]
struct EntryIn {
    #[serde(alias = "o")]
    op: String,
    #[serde(alias = "f", default)]
    from: Option<String>,
    #[serde(alias = "t", default)]
    to: Option<String>,
    #[serde(alias = "i", default)]
    intention: Option<String>,
    #[serde(alias = "e", default)]
    expected_attempt: Option<u32>,
    #[serde(alias = "r", default)]
    record: Option<AtomIn>,
}

/// A row of `steps` as read.
#[derive(Debug)]
pub(crate) struct StepRow {
    pub(crate) seq: i64,
    pub(crate) at: DateTime<Utc>,
    pub(crate) body: String,
    pub(crate) model_version: i64,
}

fn parse<T: std::str::FromStr>(what: &str, text: Option<&str>) -> std::result::Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let text = text.ok_or_else(|| format!("{what} is missing"))?;
    text.parse().map_err(|e| format!("{what}: {e}"))
}

/// Decodes a step's writes. Damage is [`Error::Corrupt`], naming the atom when it can.
pub(crate) fn decode(flow: FlowId, row: &StepRow) -> Result<Vec<Write>> {
    let at_step = |detail: String| format!("step {}: {detail}", row.seq);
    codec::check_version(flow, None, row.model_version).map_err(|e| match e {
        Error::Corrupt { flow, atom, detail } => Error::Corrupt {
            flow,
            atom,
            detail: at_step(detail),
        },
        other => other,
    })?;
    let entries: Vec<EntryIn> = serde_json::from_str(&row.body)
        .map_err(|e| codec::corrupt(flow, None, at_step(format!("unreadable body: {e}"))))?;
    let mut writes = Vec::with_capacity(entries.len());
    for entry in entries {
        let write = match (entry.op.as_str(), entry.record) {
            ("f" | "flow", _) => {
                let go = || -> std::result::Result<Write, String> {
                    Ok(Write::Flow {
                        from: parse("flow write's from", entry.from.as_deref())?,
                        to: parse("flow write's to", entry.to.as_deref())?,
                        intention: parse("flow write's intention", entry.intention.as_deref())?,
                    })
                };
                go().map_err(|d| codec::corrupt(flow, None, at_step(d)))?
            }
            ("a" | "atom", Some(rec)) => {
                let name = rec.name;
                let expected_state: AtomState = parse("expected state", entry.from.as_deref())
                    .map_err(|d| codec::corrupt(flow, Some(&name), at_step(d)))?;
                let expected_attempt = entry.expected_attempt.ok_or_else(|| {
                    codec::corrupt(
                        flow,
                        Some(&name),
                        at_step("expected attempt is missing".into()),
                    )
                })?;
                let text = |v: Option<Box<RawValue>>| v.map(|v| v.get().to_owned());
                let raw = RawAtom {
                    kind: rec.kind,
                    state: rec.state,
                    intention: rec.intention,
                    attempt: rec.attempt,
                    round: rec.round,
                    result: text(rec.result),
                    failure: text(rec.failure),
                    revert_failure: text(rec.revert_failure),
                    retry_history: rec.retry_history.get().to_owned(),
                    retry_at: rec.retry_at,
                    progress: rec.progress,
                    started_at: rec.started_at,
                    finished_at: rec.finished_at,
                    deadline: rec.deadline,
                    model_version: row.model_version,
                };
                Write::Atom {
                    expected_state,
                    expected_attempt,
                    record: codec::decode_atom(flow, name, raw)?,
                }
            }
            (op, _) => {
                return Err(codec::corrupt(
                    flow,
                    None,
                    at_step(format!("unknown write {op:?}")),
                ))
            }
        };
        writes.push(write);
    }
    Ok(writes)
}

/// What [`replay`] found: the atoms the steps after the checkpoint changed (their indexes)
/// and the latest time of a step it read.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    touched: Vec<usize>,
    latest: Option<DateTime<Utc>>,
}

/// Brings the atoms as the `atoms` table holds them (as of step `checkpoint`) up to date with
/// the log's `steps`, which may begin at or before the checkpoint (replaying a step already
/// applied to the rows changes nothing). Also takes the flow's `updated_at` to the last step's
/// time.
pub(crate) fn replay(
    flow: &mut FlowRecord,
    atoms: &mut [AtomRecord],
    checkpoint: i64,
    steps: &[StepRow],
) -> Result<Replayed> {
    let index: HashMap<String, usize> = atoms
        .iter()
        .enumerate()
        .map(|(i, a)| (a.name.clone(), i))
        .collect();
    let mut replayed = Replayed::default();
    for row in steps {
        for write in decode(flow.id, row)? {
            if let Write::Atom { record, .. } = write {
                let Some(&i) = index.get(&record.name) else {
                    return Err(codec::corrupt(
                        flow.id,
                        Some(&record.name),
                        format!("step {} writes an atom the flow does not have", row.seq),
                    ));
                };
                atoms[i] = record;
                if row.seq > checkpoint {
                    replayed.touched.push(i);
                }
            }
        }
        flow.updated_at = flow.updated_at.max(row.at);
        replayed.latest = Some(replayed.latest.map_or(row.at, |t| t.max(row.at)));
    }
    Ok(replayed)
}

/// A run's checkpoint as its row holds it: the number of the step it was taken at (0: none)
/// and the latest time of the steps up to it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stamp {
    pub(crate) seq: i64,
    pub(crate) at: Option<DateTime<Utc>>,
}

/// From which step a load reads the log: the checkpoint's (see [`read_from`]), or the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadFrom {
    Checkpoint,
    WholeLog,
}

/// The first step a load reads: the checkpoint's own (read to check that it is there, not
/// replayed) or, for the whole log, 1.
pub(crate) fn read_from(stamp: Stamp, from: LoadFrom) -> i64 {
    match from {
        LoadFrom::Checkpoint => stamp.seq.max(1),
        LoadFrom::WholeLog => 1,
    }
}

/// A load's result, shared by both SQL stores: the run's row, its atoms as the `atoms` table
/// holds them (as of the checkpoint `stamp`), and the steps read from [`read_from`] on, made
/// into the run as it is now and what the store then knows of it.
pub(crate) fn assemble(
    mut flow: FlowRecord,
    mut atoms: Vec<AtomRecord>,
    stamp: Stamp,
    steps: &[StepRow],
    confirmed: DateTime<Utc>,
) -> Result<(FlowSnapshot, Known)> {
    if !(0..1 << 32).contains(&stamp.seq) {
        return Err(codec::corrupt(
            flow.id,
            None,
            format!("checkpoint at step {} is out of range", stamp.seq),
        ));
    }
    // The checkpoint's step must be in the log: a checkpoint is written with it.
    if stamp.seq > 0 && !steps.iter().any(|s| s.seq == stamp.seq) {
        return Err(codec::corrupt(
            flow.id,
            None,
            format!(
                "the log has no step {}, at which its checkpoint was taken",
                stamp.seq
            ),
        ));
    }
    let replayed = replay(&mut flow, &mut atoms, stamp.seq, steps)?;
    if let Some(at) = stamp.at {
        flow.updated_at = flow.updated_at.max(at);
    }
    let seq = steps.last().map_or(stamp.seq, |s| s.seq.max(stamp.seq));
    let mut known = Known::of(seq, &flow, &atoms, confirmed);
    known.checkpoint = stamp.seq;
    known.latest = match (stamp.at, replayed.latest) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    for i in replayed.touched {
        let atom = &atoms[i];
        known.dirty.insert(atom.name.clone(), atom.clone());
    }
    Ok((FlowSnapshot { flow, atoms }, known))
}

/// A flow's whole history: the transitions recorded in `history` rows (by a baton from before
/// the step log), then the log's, numbered on from them.
pub(crate) fn history(
    flow: FlowId,
    mut recorded: Vec<Transition>,
    steps: &[StepRow],
) -> Result<Vec<Transition>> {
    let last = recorded.last().map_or(0, |t| t.seq);
    recorded.extend(transitions(flow, last, steps)?);
    Ok(recorded)
}

/// The transitions the log adds to a history whose last entry is number `last_seq`.
pub(crate) fn transitions(
    flow: FlowId,
    mut last_seq: u64,
    steps: &[StepRow],
) -> Result<Vec<Transition>> {
    let mut out = Vec::new();
    for row in steps {
        for write in decode(flow, row)? {
            if let Some(change) = transition_of(&write) {
                last_seq += 1;
                out.push(Transition {
                    flow,
                    seq: last_seq,
                    at: row.at,
                    change,
                });
            }
        }
    }
    Ok(out)
}

/// How long a store trusts what it knows of a run (a [`Known`]) for the one-statement
/// append, counted from when the database last confirmed it (a load, the run's creation, or
/// an append of this store); past it, the next commit takes the careful way, which reads the
/// run again.
///
/// The append's primary key catches every writer that went stale while the run's steps are
/// in the log, but a purge deletes them: a writer that last saw a run before it ended would
/// find no later step to collide with. Purges keep every run that ended less than
/// [`PURGE_MIN_AGE`](baton_core::store::PURGE_MIN_AGE) (10 minutes) ago, so such a writer's
/// knowledge is always older than this, and it goes the careful way and is told the run is
/// gone; the append need not look the run up.
pub(crate) const VIEW_TRUST: chrono::Duration = chrono::Duration::seconds(60);

/// When a step also writes a checkpoint of its run (see the module's documentation,
/// "Checkpoints"): once the steps since the last checkpoint number at least `min_steps`, and at
/// least `steps_per_atom` times the run's atoms.
///
/// A load then replays at most that many steps after the run's atoms, so its cost is
/// proportional to the run's size (its atoms), not to its history. The second term keeps a
/// checkpoint's cost, which is a row rewritten for each atom changed since the last one (at
/// most every atom), below `1 / steps_per_atom` of a row per step, however big the run; the
/// first keeps the cost of a checkpoint's transaction small beside the steps between two.
/// The default, [`Checkpoints::DEFAULT`], was chosen from measurements (`docs/performance.md`,
/// "Loading long runs").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoints {
    every: Option<(u32, u32)>,
}

impl Checkpoints {
    /// [`Checkpoints::DEFAULT`]'s least number of steps between two checkpoints.
    pub const DEFAULT_MIN_STEPS: u32 = 1000;

    /// [`Checkpoints::DEFAULT`]'s least number of steps per atom of the run between two
    /// checkpoints.
    pub const DEFAULT_STEPS_PER_ATOM: u32 = 4;

    /// A checkpoint once at least [`DEFAULT_MIN_STEPS`](Self::DEFAULT_MIN_STEPS) steps, and at
    /// least [`DEFAULT_STEPS_PER_ATOM`](Self::DEFAULT_STEPS_PER_ATOM) steps per atom of the
    /// run, were appended since the last one.
    pub const DEFAULT: Self = Self::every(Self::DEFAULT_MIN_STEPS, Self::DEFAULT_STEPS_PER_ATOM);

    /// A checkpoint once at least `min_steps` steps (at least 1), and at least
    /// `steps_per_atom` steps per atom of the run, were appended since the last one.
    #[must_use]
    pub const fn every(min_steps: u32, steps_per_atom: u32) -> Self {
        let min_steps = if min_steps == 0 { 1 } else { min_steps };
        Self {
            every: Some((min_steps, steps_per_atom)),
        }
    }

    /// No checkpoints: every load replays the run's whole log (as before checkpoints). For
    /// comparisons; runs written with checkpoints still load from theirs.
    #[must_use]
    pub const fn never() -> Self {
        Self { every: None }
    }

    /// Whether a step that leaves `since` steps after the last checkpoint, in a run of `atoms`
    /// atoms, takes one.
    pub(crate) fn due(self, since: i64, atoms: usize) -> bool {
        let Some((min_steps, per_atom)) = self.every else {
            return false;
        };
        let atoms = i64::try_from(atoms).unwrap_or(i64::MAX);
        since >= i64::from(min_steps) && since >= atoms.saturating_mul(i64::from(per_atom))
    }
}

impl Default for Checkpoints {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A checkpoint to write with a step: the step's number, the latest time of the steps up to
/// it, and the records of the atoms changed since the last checkpoint as the step leaves them
/// (by name, so that two writers would lock rows in the same order).
#[derive(Debug)]
pub(crate) struct Checkpoint<'a> {
    pub(crate) seq: i64,
    pub(crate) at: DateTime<Utc>,
    pub(crate) atoms: Vec<&'a AtomRecord>,
}

/// What a store knows of a flow as of one step of its log (see the module's documentation).
#[derive(Debug, Clone)]
pub(crate) struct Known {
    /// The number of the log's last step (0: none yet).
    pub(crate) seq: i64,
    /// Where the flow's steps start in the backend's key space (SQLite: see its migration;
    /// PostgreSQL: 0, unused).
    pub(crate) base: i64,
    flow: FlowState,
    atoms: HashMap<String, (AtomState, u32)>,
    /// When the database last confirmed this knowledge (see [`VIEW_TRUST`]).
    confirmed: DateTime<Utc>,
    /// The step of the run's last checkpoint (0: none): the `atoms` rows hold the run as of it.
    checkpoint: i64,
    /// The latest time of a step of the run, if it has any.
    latest: Option<DateTime<Utc>>,
    /// The records, as they are now, of the atoms changed since the last checkpoint: what the
    /// next one writes.
    dirty: HashMap<String, AtomRecord>,
}

impl Known {
    /// What a snapshot of the flow says as of step `seq`, read (or written) by a statement
    /// sent at `confirmed` or later: callers pass the time from before they began, so that a
    /// pause during the round trip makes the knowledge look older, never newer. (A load's
    /// knowledge comes from [`assemble`], which adds what the checkpoints need.)
    pub(crate) fn of(
        seq: i64,
        flow: &FlowRecord,
        atoms: &[AtomRecord],
        confirmed: DateTime<Utc>,
    ) -> Self {
        Self {
            seq,
            base: 0,
            flow: flow.state,
            atoms: atoms
                .iter()
                .map(|a| (a.name.clone(), (a.state, a.attempt)))
                .collect(),
            confirmed,
            checkpoint: 0,
            latest: None,
            dirty: HashMap::new(),
        }
    }

    /// Whether this knowledge may still be used for the one-statement append at `now` (see
    /// [`VIEW_TRUST`]). A clock that went back makes it untrusted too.
    pub(crate) fn trusted(&self, now: DateTime<Utc>) -> bool {
        let age = now.signed_duration_since(self.confirmed);
        age >= chrono::Duration::zero() && age < VIEW_TRUST
    }

    /// The same knowledge, of a flow whose steps start at `base`.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn based(mut self, base: i64) -> Self {
        self.base = base;
        self
    }

    /// Whether every write is legal and expects what this knowledge, updated write by write,
    /// holds.
    pub(crate) fn admits(&self, writes: &[Write]) -> bool {
        let mut state = self.flow;
        // A batch touches an atom or two: a list beats a map.
        let mut touched: Vec<(&str, (AtomState, u32))> = Vec::with_capacity(writes.len());
        for write in writes {
            if !write.is_legal() {
                return false;
            }
            match write {
                Write::Flow { from, to, .. } => {
                    if *from != state {
                        return false;
                    }
                    state = *to;
                }
                Write::Atom {
                    expected_state,
                    expected_attempt,
                    record,
                } => {
                    let name = record.name.as_str();
                    let slot = touched.iter().position(|(n, _)| *n == name);
                    let current = match slot {
                        Some(i) => Some(touched[i].1),
                        None => self.atoms.get(name).copied(),
                    };
                    if current != Some((*expected_state, *expected_attempt)) {
                        return false;
                    }
                    let now = (record.state, record.attempt);
                    match slot {
                        Some(i) => touched[i].1 = now,
                        None => touched.push((name, now)),
                    }
                }
            }
        }
        true
    }

    /// The checkpoint that `batch`, appended as the step after the last one known, must
    /// write with it under `policy`, if one is due.
    pub(crate) fn checkpoint_with<'a>(
        &'a self,
        batch: &'a Batch,
        policy: Checkpoints,
    ) -> Option<Checkpoint<'a>> {
        let seq = self.seq + 1;
        if !policy.due(seq - self.checkpoint, self.atoms.len()) {
            return None;
        }
        let mut atoms: HashMap<&str, &AtomRecord> =
            self.dirty.iter().map(|(n, r)| (n.as_str(), r)).collect();
        for write in &batch.writes {
            if let Write::Atom { record, .. } = write {
                atoms.insert(record.name.as_str(), record);
            }
        }
        let mut atoms: Vec<&AtomRecord> = atoms.into_values().collect();
        atoms.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Some(Checkpoint {
            seq,
            at: self.latest.map_or(batch.at, |t| t.max(batch.at)),
            atoms,
        })
    }

    /// Takes in the step just appended with `writes` at time `at`. `confirmed` renews the
    /// knowledge's stamp (the time from before the append was sent) when the append proves the
    /// run is still there (a careful commit, or SQLite's append, which looks the run up);
    /// PostgreSQL's one-statement append does not look the run up, so it leaves the stamp as it
    /// was, and a flow written that way is read again once a minute. `checkpointed`: the step
    /// wrote a checkpoint too.
    pub(crate) fn apply(
        &mut self,
        writes: &[Write],
        at: DateTime<Utc>,
        confirmed: Option<DateTime<Utc>>,
        checkpointed: bool,
    ) {
        self.seq += 1;
        self.latest = Some(self.latest.map_or(at, |t| t.max(at)));
        if let Some(at) = confirmed {
            self.confirmed = at;
        }
        if checkpointed {
            self.checkpoint = self.seq;
            self.dirty.clear();
        }
        for write in writes {
            match write {
                Write::Flow { to, .. } => self.flow = *to,
                Write::Atom { record, .. } => {
                    if let Some(slot) = self.atoms.get_mut(record.name.as_str()) {
                        *slot = (record.state, record.attempt);
                        if checkpointed {
                            continue;
                        }
                        match self.dirty.get_mut(record.name.as_str()) {
                            Some(kept) => kept.clone_from(record),
                            None => {
                                self.dirty.insert(record.name.clone(), record.clone());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The most flows a store keeps knowledge of; past it, it forgets them all (which costs each
/// a careful commit, nothing more).
const KNOWN_FLOWS: usize = 4096;

/// A store's knowledge of the flows it writes to. Knowledge is taken out for a commit and put
/// back after it, so two commits to one flow at once cannot both use it.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    flows: std::sync::Mutex<HashMap<FlowId, Known>>,
}

impl Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlowId, Known>> {
        // A map left half-updated by a panic is still a map of valid entries.
        self.flows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn take(&self, flow: FlowId) -> Option<Known> {
        self.lock().remove(&flow)
    }

    /// Makes everything known look `by` older (for tests of [`VIEW_TRUST`]).
    pub(crate) fn backdate(&self, by: chrono::Duration) {
        for known in self.lock().values_mut() {
            known.confirmed -= by;
        }
    }

    /// Keeps what is known of `flow`; a flow that has ended is forgotten, as it is unlikely
    /// to be written again.
    pub(crate) fn put(&self, flow: FlowId, known: Known) {
        if known.flow.is_terminal() {
            return;
        }
        let mut flows = self.lock();
        if flows.len() >= KNOWN_FLOWS && !flows.contains_key(&flow) {
            flows.clear();
        }
        flows.insert(flow, known);
    }
}

/// The history entries of a flow's `Change`s, for the tests.
#[cfg(test)]
fn changes(transitions: &[Transition]) -> Vec<baton_core::model::Change> {
    transitions.iter().map(|t| t.change.clone()).collect()
}

#[cfg(test)]
mod tests {
    use baton_core::model::AtomKind;
    use baton_core::{FlowState, Intention};
    use serde_json::json;

    use super::*;

    fn moved(rec: &AtomRecord, state: AtomState, attempt: u32) -> (Write, AtomRecord) {
        let mut next = rec.clone();
        next.state = state;
        next.attempt = attempt;
        let write = Write::Atom {
            expected_state: rec.state,
            expected_attempt: rec.attempt,
            record: next.clone(),
        };
        (write, next)
    }

    fn row(seq: i64, writes: &[Write], flow: FlowId) -> StepRow {
        row_in(StepFormat::Long, seq, writes, flow)
    }

    fn row_in(format: StepFormat, seq: i64, writes: &[Write], flow: FlowId) -> StepRow {
        let encoded: Vec<_> = writes
            .iter()
            .map(|w| match w {
                Write::Atom { record, .. } => {
                    Some(codec::encode_atom(flow, record, 1 << 20).unwrap())
                }
                Write::Flow { .. } => None,
            })
            .collect();
        let step = encode(flow, writes, &encoded, format).unwrap();
        StepRow {
            seq,
            at: Utc::now(),
            body: step.body,
            model_version: step.model_version,
        }
    }

    /// A record with every field away from its default.
    fn busy_record() -> AtomRecord {
        let at = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
        let failure = |message: &str| baton_core::Failure {
            message: message.into(),
            causes: vec!["deeper".into()],
            atom: "retry".into(),
            attempt: 3,
            retryable: true,
            retry_after: None,
            kind: baton_core::FailureKind::Execute,
        };
        AtomRecord {
            name: "retry \"x\"".into(),
            kind: AtomKind::Retry,
            state: AtomState::Reverting,
            intention: baton_core::Intention::Revert,
            attempt: 3,
            round: 2,
            result: Some(json!({"n": [1, 2.5, null]})),
            failure: Some(failure("boom")),
            revert_failure: Some(failure("undo")),
            retry_history: vec![baton_core::model::RetryAttempt::new(json!(1), vec![])],
            retry_at: at("2026-11-26T03:04:05.123456789Z"),
            progress: -0.0,
            started_at: at("1969-12-31T23:59:59.999999999Z"),
            // Outside what nanoseconds in an `i64` hold: written as text in either form.
            finished_at: at("2300-01-01T00:00:00.000000001Z"),
            deadline: at("2026-11-26T03:05:05.5Z"),
        }
    }

    fn busy_write() -> Write {
        Write::Atom {
            expected_state: AtomState::Failure,
            expected_attempt: 3,
            record: busy_record(),
        }
    }

    /// The long form names fields like the `atoms` table's columns and leaves
    /// the defaults out; the short form uses short keys and integer times. Rows are stamped
    /// with the oldest model version that reads them.
    #[test]
    fn steps_are_written_long_or_short() {
        let flow = FlowId::new();
        let mut pending = AtomRecord::pending("a", AtomKind::Task);
        pending.started_at = Some(DateTime::from_timestamp_nanos(1_795_659_645_407_374_990));
        let (write, _) = moved(&pending, AtomState::Running, 1);
        let long = row(1, std::slice::from_ref(&write), flow);
        assert_eq!(
            long.body,
            r#"[{"op":"atom","from":"PENDING","expected_attempt":0,"record":{"name":"a","state":"RUNNING","attempt":1,"started_at":"2026-11-26T02:20:45.407374990Z"}}]"#
        );
        assert_eq!(long.model_version, 1);
        let short = row_in(StepFormat::Short, 1, &[write], flow);
        assert_eq!(
            short.body,
            r#"[{"o":"a","f":"PENDING","e":0,"r":{"n":"a","s":"RUNNING","a":1,"st":1795659645407374990}}]"#
        );
        assert_eq!(short.model_version, 2);
    }

    /// Every field of a record comes back from a step exactly, in either form: `-0.0` keeps
    /// its sign, times keep their nanoseconds, before 1970 and past 2262 too.
    #[test]
    fn steps_keep_every_field_exactly() {
        let flow = FlowId::new();
        for format in [StepFormat::Long, StepFormat::Short] {
            let step = row_in(format, 4, &[busy_write()], flow);
            assert!(
                step.body.contains(r#""2300-01-01T00:00:00.000000001Z""#),
                "{}",
                step.body
            );
            let decoded = decode(flow, &step).unwrap();
            assert_eq!(decoded, [busy_write()], "{format:?}");
            let Write::Atom { record, .. } = &decoded[0] else {
                panic!("not an atom write");
            };
            assert!(record.progress.is_sign_negative());
        }
    }

    /// Steps are written by hand (`EntryOut::write_to`); `encode` checks the text against
    /// serde's through the `Serialize` impls kept as the oracle in test builds. These batches
    /// take every branch: a flow write, every field set, times as text in either form (leap
    /// seconds, years past 9999), names that need escaping.
    #[test]
    fn hand_written_steps_are_what_serde_writes() {
        let flow = FlowId::new();
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .unwrap()
            .and_utc();
        let far = "+10000-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let mut odd = busy_record();
        odd.name = "tab\t \"quoted\" \u{1} é ✓".into();
        odd.started_at = Some(leap);
        odd.finished_at = Some(far);
        odd.retry_at = Some(DateTime::from_timestamp_nanos(0));
        odd.progress = 0.1;
        let flow_write = Write::Flow {
            from: FlowState::Running,
            to: FlowState::Reverting,
            intention: Intention::Revert,
        };
        let odd_write = Write::Atom {
            expected_state: AtomState::Failure,
            expected_attempt: 3,
            record: odd,
        };
        let pending = AtomRecord::pending("a", AtomKind::Task);
        let (start, _) = moved(&pending, AtomState::Running, 1);
        for format in [StepFormat::Long, StepFormat::Short] {
            for writes in [
                vec![flow_write.clone()],
                vec![busy_write(), flow_write.clone(), odd_write.clone()],
                vec![start.clone()],
            ] {
                // `row_in` encodes, and `encode` asserts the two texts are the same.
                let step = row_in(format, 1, &writes, flow);
                assert_eq!(decode(flow, &step).unwrap(), writes, "{format:?}");
            }
        }
    }

    /// Floating-point results and progress come back bit for bit, in either form.
    #[test]
    fn floats_come_back_exactly() {
        let flow = FlowId::new();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut floats = Vec::new();
        while floats.len() < 2000 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let x = f64::from_bits(seed);
            if x.is_finite() {
                floats.push(x);
            }
        }
        let pending = AtomRecord::pending("a", AtomKind::Task);
        for format in [StepFormat::Long, StepFormat::Short] {
            for chunk in floats.chunks(100) {
                let (write, mut done) = moved(&pending, AtomState::Running, 1);
                done.result = Some(json!(chunk));
                done.progress = chunk[0];
                let finish = Write::Atom {
                    expected_state: AtomState::Running,
                    expected_attempt: 1,
                    record: done.clone(),
                };
                let step = row_in(format, 1, &[write, finish], flow);
                let decoded = decode(flow, &step).unwrap();
                let Write::Atom { record, .. } = &decoded[1] else {
                    panic!("not an atom write");
                };
                let back: Vec<f64> =
                    serde_json::from_value(record.result.clone().unwrap()).unwrap();
                for (x, y) in chunk.iter().zip(&back) {
                    assert_eq!(x.to_bits(), y.to_bits(), "{x:e} came back as {y:e}");
                }
                assert_eq!(record.progress.to_bits(), chunk[0].to_bits());
            }
        }
    }

    /// A time inside a leap second is written as text in the short form too, so it comes
    /// back a leap second rather than the second after.
    #[test]
    fn leap_seconds_survive_the_short_form() {
        let flow = FlowId::new();
        let mut rec = AtomRecord::pending("a", AtomKind::Task);
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .unwrap()
            .and_utc();
        rec.started_at = Some(leap);
        let (write, _) = moved(&rec, AtomState::Running, 1);
        let step = row_in(StepFormat::Short, 1, std::slice::from_ref(&write), flow);
        assert_eq!(decode(flow, &step).unwrap(), [write]);
    }

    /// A step exactly as versions before defaults were left out wrote it (every field, long
    /// keys, chrono's text times) reads as the same writes, so their flows resume here.
    #[test]
    fn steps_of_earlier_versions_read_the_same() {
        let flow = FlowId::new();
        let old = StepRow {
            body: concat!(
                r#"[{"op":"atom","from":"FAILURE","expected_attempt":3,"record":{"#,
                r#""name":"retry \"x\"","kind":"retry","state":"REVERTING","intention":"REVERT","#,
                r#""attempt":3,"round":2,"result":{"n":[1,2.5,null]},"#,
                r#""failure":{"message":"boom","causes":["deeper"],"atom":"retry","attempt":3,"retryable":true,"kind":"execute"},"#,
                r#""revert_failure":{"message":"undo","causes":["deeper"],"atom":"retry","attempt":3,"retryable":true,"kind":"execute"},"#,
                r#""retry_history":[{"value":1,"failures":[]}],"retry_at":"2026-11-26T03:04:05.123456789Z","#,
                r#""progress":-0.0,"started_at":"1969-12-31T23:59:59.999999999Z","#,
                r#""finished_at":"2300-01-01T00:00:00.000000001Z"}},"#,
                r#"{"op":"flow","from":"RUNNING","to":"REVERTING","intention":"REVERT"}]"#
            )
            .to_owned(),
            model_version: 1,
            ..row(4, &[], flow)
        };
        let flow_write = Write::Flow {
            from: FlowState::Running,
            to: FlowState::Reverting,
            intention: Intention::Revert,
        };
        // Earlier versions had no attempt deadlines.
        let mut busy = busy_write();
        if let Write::Atom { record, .. } = &mut busy {
            record.deadline = None;
        }
        assert_eq!(decode(flow, &old).unwrap(), [busy, flow_write]);
    }

    /// What identifies a record stays required, in either form, and values of the wrong type
    /// are refused rather than misread.
    #[test]
    fn damaged_records_are_corrupt() {
        let flow = FlowId::new();
        for body in [
            r#"[{"op":"atom","from":"PENDING","expected_attempt":0,"record":{"state":"RUNNING","attempt":1}}]"#,
            r#"[{"o":"a","f":"PENDING","e":0,"r":{"s":"RUNNING","a":1}}]"#,
            // A key in both forms.
            r#"[{"o":"a","f":"PENDING","e":0,"r":{"n":"a","name":"a","s":"RUNNING","a":1}}]"#,
            // Times that are neither text nor nanoseconds in an `i64`.
            r#"[{"o":"a","f":"PENDING","e":0,"r":{"n":"a","s":"RUNNING","a":1,"st":1.5}}]"#,
            r#"[{"o":"a","f":"PENDING","e":0,"r":{"n":"a","s":"RUNNING","a":1,"st":9223372036854775808}}]"#,
            r#"[{"o":"a","f":"PENDING","e":0,"r":{"n":"a","s":"RUNNING","a":1,"st":"yesterday"}}]"#,
        ] {
            let step = StepRow {
                body: body.to_owned(),
                ..row(1, &[], flow)
            };
            assert!(
                matches!(decode(flow, &step), Err(Error::Corrupt { .. })),
                "{body}"
            );
        }
        // A `null` time is none.
        let pending = AtomRecord::pending("a", AtomKind::Task);
        let (write, _) = moved(&pending, AtomState::Running, 1);
        let step = StepRow {
            body: r#"[{"o":"a","f":"PENDING","e":0,"r":{"n":"a","s":"RUNNING","a":1,"st":null}}]"#
                .to_owned(),
            ..row(1, &[], flow)
        };
        assert_eq!(decode(flow, &step).unwrap(), [write]);
    }

    #[test]
    fn steps_round_trip_and_keep_none_apart_from_null() {
        let flow = FlowId::new();
        let a = AtomRecord::pending("a", AtomKind::Task);
        let (start, mut running) = moved(&a, AtomState::Running, 1);
        running.result = Some(serde_json::Value::Null);
        let (finish, _) = moved(&running, AtomState::Success, 1);
        let writes = vec![
            Write::Flow {
                from: FlowState::Pending,
                to: FlowState::Running,
                intention: Intention::Execute,
            },
            start,
            finish,
        ];
        let decoded = decode(flow, &row(1, &writes, flow)).unwrap();
        assert_eq!(decoded, writes);
        let Write::Atom { record, .. } = &decoded[1] else {
            panic!("not an atom write");
        };
        assert_eq!(record.result, None);
        let Write::Atom { record, .. } = &decoded[2] else {
            panic!("not an atom write");
        };
        assert_eq!(record.result, Some(serde_json::Value::Null));
    }

    fn running_flow(id: FlowId) -> FlowRecord {
        FlowRecord {
            id,
            name: "f".into(),
            state: FlowState::Running,
            intention: Intention::Execute,
            inputs: Default::default(),
            meta: json!(null),
            factory: None,
            fingerprint: None,
            deadline: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn knowledge_is_trusted_for_a_minute() {
        let known = Known::of(0, &running_flow(FlowId::new()), &[], Utc::now());
        let now = known.confirmed;
        assert!(known.trusted(now));
        assert!(known.trusted(now + VIEW_TRUST - chrono::Duration::milliseconds(1)));
        assert!(!known.trusted(now + VIEW_TRUST));
        assert!(
            !known.trusted(now - chrono::Duration::seconds(1)),
            "the clock went back"
        );
        // An append that does not look the run up keeps the stamp; one that does renews it.
        let mut known = known;
        known.apply(&[], now, None, false);
        assert!(!known.trusted(now + VIEW_TRUST));
        known.apply(&[], now, Some(now + VIEW_TRUST), false);
        assert!(known.trusted(now + VIEW_TRUST));
        assert!(
            VIEW_TRUST * 5 <= chrono::Duration::from_std(baton_core::store::PURGE_MIN_AGE).unwrap(),
            "purges must keep runs well past the trust, whatever the clocks' skew"
        );
    }

    #[test]
    fn checkpoints_are_due_by_steps_and_atoms() {
        let policy = Checkpoints::every(1000, 4);
        assert!(!policy.due(999, 8));
        assert!(policy.due(1000, 8));
        // A big run: four steps per atom.
        assert!(!policy.due(39_999, 10_000));
        assert!(policy.due(40_000, 10_000));
        assert!(!Checkpoints::never().due(i64::MAX, 0));
        // At least one step apart.
        assert!(!Checkpoints::every(0, 0).due(0, 0));
        assert!(Checkpoints::every(0, 0).due(1, 0));
        assert_eq!(Checkpoints::default(), Checkpoints::DEFAULT);
    }

    /// A checkpoint holds the atoms changed since the last one as the step leaves them, and
    /// only those; once written, the next starts afresh.
    #[test]
    fn a_checkpoint_holds_what_changed_since_the_last() {
        let flow = FlowId::new();
        let a = AtomRecord::pending("a", AtomKind::Task);
        let b = AtomRecord::pending("b", AtomKind::Task);
        let c = AtomRecord::pending("c", AtomKind::Task);
        let rec = running_flow(flow);
        let mut known = Known::of(0, &rec, &[a.clone(), b.clone(), c], Utc::now());
        let policy = Checkpoints::every(3, 0);
        let (start_a, running_a) = moved(&a, AtomState::Running, 1);
        let batch = |writes: Vec<Write>| Batch {
            writes,
            ..Batch::new(flow, None)
        };
        let first = batch(vec![start_a]);
        assert!(known.checkpoint_with(&first, policy).is_none());
        known.apply(&first.writes, first.at, None, false);
        let (finish_a, _) = moved(&running_a, AtomState::Success, 1);
        let (start_b, running_b) = moved(&b, AtomState::Running, 1);
        let second = batch(vec![finish_a, start_b]);
        known.apply(&second.writes, second.at, None, false);
        let (progress_b, _) = moved(&running_b, AtomState::Running, 1);
        let third = batch(vec![progress_b]);
        let due = known.checkpoint_with(&third, policy).unwrap();
        assert_eq!(due.seq, 3);
        assert_eq!(due.at, third.at.max(second.at));
        let held: Vec<(&str, AtomState)> = due
            .atoms
            .iter()
            .map(|r| (r.name.as_str(), r.state))
            .collect();
        assert_eq!(held, [("a", AtomState::Success), ("b", AtomState::Running)]);
        known.apply(&third.writes, third.at, None, true);
        assert_eq!(known.checkpoint, 3);
        assert!(known.dirty.is_empty());
        let (finish_b, _) = moved(&running_b, AtomState::Success, 1);
        let fourth = batch(vec![finish_b]);
        assert!(known.checkpoint_with(&fourth, policy).is_none());
    }

    /// A load from a checkpoint replays only the steps after it, and refuses a checkpoint whose
    /// step is missing from the log.
    #[test]
    fn loads_start_at_the_checkpoint_step() {
        let flow = FlowId::new();
        let a = AtomRecord::pending("a", AtomKind::Task);
        let (start, running) = moved(&a, AtomState::Running, 1);
        let (finish, done) = moved(&running, AtomState::Success, 1);
        let stamp = Stamp {
            seq: 1,
            at: Some(Utc::now()),
        };
        assert_eq!(read_from(stamp, LoadFrom::Checkpoint), 1);
        assert_eq!(read_from(Stamp::default(), LoadFrom::Checkpoint), 1);
        assert_eq!(
            read_from(Stamp { seq: 7, at: None }, LoadFrom::Checkpoint),
            7
        );
        assert_eq!(read_from(Stamp { seq: 7, at: None }, LoadFrom::WholeLog), 1);
        // The rows hold the run as of step 1 (`a` running); step 2 ends it.
        let steps = [row(1, &[start], flow), row(2, &[finish], flow)];
        let (snapshot, known) = assemble(
            running_flow(flow),
            vec![running.clone()],
            stamp,
            &steps,
            Utc::now(),
        )
        .unwrap();
        assert_eq!(snapshot.atoms, std::slice::from_ref(&done));
        assert_eq!(known.seq, 2);
        assert_eq!(known.checkpoint, 1);
        assert_eq!(known.dirty.get("a"), Some(&done));
        // No step after the checkpoint: the log's last is the checkpoint's.
        let (snapshot, known) = assemble(
            running_flow(flow),
            vec![running.clone()],
            stamp,
            &steps[..1],
            Utc::now(),
        )
        .unwrap();
        assert_eq!(snapshot.atoms, [running]);
        assert_eq!(known.seq, 1);
        assert!(known.dirty.is_empty());
        // The checkpoint's step is gone: damage.
        let err = assemble(
            running_flow(flow),
            vec![done],
            stamp,
            &steps[1..],
            Utc::now(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn knowledge_admits_only_what_it_expects() {
        let flow = FlowId::new();
        let a = AtomRecord::pending("a", AtomKind::Task);
        let rec = running_flow(flow);
        let mut known = Known::of(0, &rec, std::slice::from_ref(&a), Utc::now());
        let (start, running) = moved(&a, AtomState::Running, 1);
        let (finish, _) = moved(&running, AtomState::Success, 1);
        assert!(known.admits(&[start.clone(), finish.clone()]));
        // The second write must expect what the first left.
        assert!(!known.admits(&[start.clone(), start.clone()]));
        // Illegal transitions are never admitted.
        let (skip, _) = moved(&a, AtomState::Success, 1);
        assert!(!known.admits(&[skip]));
        // Unknown atoms neither.
        let (ghost, _) = moved(
            &AtomRecord::pending("ghost", AtomKind::Task),
            AtomState::Running,
            1,
        );
        assert!(!known.admits(&[ghost]));
        known.apply(std::slice::from_ref(&start), Utc::now(), None, false);
        assert_eq!(known.seq, 1);
        assert!(!known.admits(std::slice::from_ref(&start)));
        assert!(known.admits(&[finish]));
    }

    #[test]
    fn history_continues_the_old_numbering() {
        let flow = FlowId::new();
        let a = AtomRecord::pending("a", AtomKind::Task);
        let (start, running) = moved(&a, AtomState::Running, 1);
        let (finish, _) = moved(&running, AtomState::Success, 1);
        let steps = [row(1, &[start], flow), row(2, &[finish], flow)];
        let t = transitions(flow, 3, &steps).unwrap();
        assert_eq!(t.iter().map(|t| t.seq).collect::<Vec<_>>(), [4, 5]);
        assert!(matches!(
            &changes(&t)[1],
            baton_core::model::Change::Atom {
                to: AtomState::Success,
                ..
            }
        ));
    }

    #[test]
    fn damaged_steps_are_corrupt_and_named() {
        let flow = FlowId::new();
        let bad = StepRow {
            seq: 7,
            at: Utc::now(),
            body: "[{\"op\":\"atom\",\"from\":\"PENDING\"".into(),
            model_version: 1,
        };
        let err = decode(flow, &bad).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { .. }) && err.to_string().contains("step 7"),
            "{err}"
        );
        let newer = StepRow {
            model_version: i64::from(baton_core::model::MODEL_VERSION) + 1,
            ..bad
        };
        assert!(matches!(
            decode(flow, &newer),
            Err(Error::TooNew { flow: f, .. }) if f == flow
        ));
    }
}
