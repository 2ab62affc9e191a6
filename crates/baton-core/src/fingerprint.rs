//! Fingerprints of compiled flows: what a run remembers of the definition it was made from.
//!
//! A run may be resumed by another process, built from another release of the service, long
//! after it started. Atom names alone do not say whether the definition is still the one the
//! run was made from: a release may keep every name and change how data flows between the
//! atoms, which atoms a retry controller governs, or the order they run in. Resuming a run
//! with such a definition would hand its atoms inputs they were never meant to get.
//!
//! So every run records a [`Fingerprint`]: a hash of the compiled flow's structure, computed
//! when the run is created and compared when it is resumed
//! ([`Error::FlowMismatch`](crate::engine::Error::FlowMismatch) on a difference). What it
//! covers:
//!
//! - the flow's name, and each atom in definition order: its name, its kind, the retry
//!   controller governing it;
//! - each input of each atom: the name the task reads it by, where it comes from (another
//!   atom's symbol, naming that atom; a flow input; an injected value) and whether it has a
//!   default;
//! - the symbols each atom provides, and how (one, or several);
//! - the edges of the DAG, and which edges carry a decider.
//!
//! What it leaves out: injected values and defaults (a factory often injects a job's
//! parameters, and those are the job's, not the definition's), the code of tasks, deciders
//! and retry controllers (which no hash can see: that is what a factory's version is for).
//!
//! The hash is SHA-256 over a canonical text of the above, cut to 128 bits: stable across
//! processes, platforms and Rust releases, as a stored value must be.

use std::fmt;
use std::fmt::Write as _;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::compile::{CompiledFlow, Source};
use crate::flow::Provides;

/// The fingerprint of a compiled flow's structure (see the [module documentation](self)).
///
/// Shown and stored as 32 lowercase hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// The fingerprint's bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Text that is not a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a fingerprint: expected 32 hexadecimal digits")]
pub struct ParseFingerprintError {
    input: String,
}

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseFingerprintError {
            input: s.chars().take(64).collect(),
        };
        // The canonical form only: 32 lowercase hexadecimal digits.
        if s.len() != 32 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(err());
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = s.get(2 * i..2 * i + 2).ok_or_else(err)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(Fingerprint(out))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The canonical text the fingerprint hashes: one line per fact, in a fixed order. Names are
/// written as JSON strings, so no name can forge a line break or a separator.
pub(crate) fn canonical(flow: &CompiledFlow) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let mut out = String::with_capacity(64 * flow.atoms.len() + 32);
    let _ = writeln!(out, "baton-definition 1");
    let _ = writeln!(out, "flow {}", q(&flow.name));
    for (i, atom) in flow.atoms.iter().enumerate() {
        let retry = flow.retry_of[i].map_or_else(|| "-".to_owned(), |r| q(&flow.atoms[r].name));
        let _ = writeln!(
            out,
            "atom {} {} retry {retry}",
            q(&atom.name),
            atom.kind().as_str()
        );
        for b in &atom.inputs {
            let source = match &b.source {
                Source::Inject(_) => "inject".to_owned(),
                Source::Atom { index, symbol } => {
                    format!("atom {} {}", q(&flow.atoms[*index].name), q(symbol))
                }
                Source::Input { symbol } => format!("input {}", q(symbol)),
            };
            let default = if b.default.is_some() { " default" } else { "" };
            let _ = writeln!(out, "  in {} <- {source}{default}", q(&b.arg));
        }
        match &atom.provides {
            Provides::Nothing => {}
            Provides::One(s) => {
                let _ = writeln!(out, "  provides {}", q(s));
            }
            Provides::Many(names) => {
                let names: Vec<String> = names.iter().map(|n| q(n)).collect();
                let _ = writeln!(out, "  provides-many {}", names.join(" "));
            }
        }
    }
    let mut edges: Vec<(&str, &str)> = flow.edges().collect();
    edges.sort_unstable();
    for (from, to) in edges {
        let _ = writeln!(out, "edge {} {}", q(from), q(to));
    }
    let mut deciders: Vec<(String, Vec<String>)> = flow
        .deciders
        .iter()
        .enumerate()
        .flat_map(|(target, edges)| {
            edges.iter().map(move |e| {
                let mut sources: Vec<String> =
                    e.sources.iter().map(|&s| q(&flow.atoms[s].name)).collect();
                sources.sort_unstable();
                (q(&flow.atoms[target].name), sources)
            })
        })
        .collect();
    deciders.sort_unstable();
    for (target, sources) in deciders {
        let _ = writeln!(out, "decider {target} <- {}", sources.join(" "));
    }
    out
}

/// The fingerprint of `flow`.
pub(crate) fn of(flow: &CompiledFlow) -> Fingerprint {
    let digest = Sha256::digest(canonical(flow).as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    Fingerprint(out)
}

/// How the edges of a run's recorded shape (its metadata's
/// [`GRAPH_META_KEY`](crate::engine::GRAPH_META_KEY)) differ from `flow`'s, as text naming
/// up to a few edges; `None` if the metadata holds no shape or the edges are the same.
pub(crate) fn edge_difference(meta: &serde_json::Value, flow: &CompiledFlow) -> Option<String> {
    let shape: crate::compile::Shape =
        serde_json::from_value(meta.get(crate::engine::GRAPH_META_KEY)?.clone()).ok()?;
    let stored: std::collections::BTreeSet<(&str, &str)> = shape.named_edges().collect();
    let defined: std::collections::BTreeSet<(&str, &str)> = flow.edges().collect();
    let list = |edges: Vec<&(&str, &str)>| {
        let shown: Vec<String> = edges
            .iter()
            .take(3)
            .map(|(f, t)| format!("{f} -> {t}"))
            .collect();
        let more = edges.len().saturating_sub(3);
        if more > 0 {
            format!("{} and {more} more", shown.join(", "))
        } else {
            shown.join(", ")
        }
    };
    let gone: Vec<_> = stored.difference(&defined).collect();
    let new: Vec<_> = defined.difference(&stored).collect();
    let mut parts = Vec::new();
    if !gone.is_empty() {
        parts.push(format!("edges no longer defined: {}", list(gone)));
    }
    if !new.is_empty() {
        parts.push(format!("edges new in the definition: {}", list(new)));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Times;
    use crate::{Atom, Flow};
    use serde_json::json;

    fn noop(name: &str) -> Atom {
        Atom::from_fn(name, |_| async { Ok(json!(null)) })
    }

    fn fp(flow: Flow) -> Fingerprint {
        match flow.compile() {
            Ok(c) => c.fingerprint(),
            Err(e) => panic!("does not compile: {e}"),
        }
    }

    fn stack() -> Flow {
        Flow::linear("stack")
            .add(noop("network").provides("net"))
            .add(noop("server").requires(["net"]).provides("srv"))
    }

    #[test]
    fn the_same_definition_gives_the_same_fingerprint() {
        assert_eq!(fp(stack()), fp(stack()));
    }

    #[test]
    fn injected_values_and_defaults_are_not_part_of_it() {
        let a = Flow::linear("f").add(noop("t").requires(["x"]).inject("x", 1).optional("y", 2));
        let b = Flow::linear("f").add(noop("t").requires(["x"]).inject("x", 7).optional("y", 9));
        assert_eq!(fp(a), fp(b));
    }

    #[test]
    fn a_changed_wiring_under_the_same_names_changes_it() {
        let base = fp(stack());
        // The server reads its network from the flow's inputs instead of the network atom.
        let rewired = Flow::linear("stack")
            .add(noop("network").provides("net"))
            .add(
                noop("server")
                    .requires(["net"])
                    .rebind("net", "given_net")
                    .provides("srv"),
            );
        assert_ne!(base, fp(rewired));
        // The same atoms, in parallel instead of in order.
        let reordered = Flow::unordered("stack")
            .add(noop("network").provides("net"))
            .add(noop("server").provides("srv"));
        assert_ne!(base, fp(reordered));
        // A retry controller now governs the server.
        let governed = Flow::linear("stack")
            .add(noop("network").provides("net"))
            .add(
                Flow::linear("servers")
                    .retry(Atom::retry("again", Times::new(2)))
                    .add(noop("server").requires(["net"]).provides("srv")),
            );
        assert_ne!(base, fp(governed));
        // The server provides another symbol.
        let provides = Flow::linear("stack")
            .add(noop("network").provides("net"))
            .add(noop("server").requires(["net"]).provides("server"));
        assert_ne!(base, fp(provides));
        // Another flow name.
        let renamed = Flow::linear("stack2")
            .add(noop("network").provides("net"))
            .add(noop("server").requires(["net"]).provides("srv"));
        assert_ne!(base, fp(renamed));
    }

    #[test]
    fn a_decider_on_a_link_changes_it() {
        let plain = Flow::graph("g")
            .add(noop("a"))
            .add(noop("b"))
            .link("a", "b");
        let decided = Flow::graph("g")
            .add(noop("a"))
            .add(noop("b"))
            .link_if("a", "b", |_| true);
        assert_ne!(fp(plain), fp(decided));
    }

    #[test]
    fn names_cannot_forge_the_canonical_text() {
        // One atom whose name holds what two atoms would print.
        let one = Flow::linear("f").add(noop("a\" task retry -\natom \"b"));
        let two = Flow::linear("f").add(noop("a")).add(noop("b"));
        assert_ne!(fp(one), fp(two));
    }

    #[test]
    fn fingerprints_round_trip_through_text_and_json() {
        let f = fp(stack());
        let text = f.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<Fingerprint>(), Ok(f));
        let json = serde_json::to_string(&f).unwrap_or_default();
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).ok(), Some(f));
        let upper = text.to_uppercase();
        let signed = format!("+{}", &text[1..]);
        for bad in [
            "",
            "xyz",
            &"0".repeat(31),
            &"g".repeat(32),
            &"é".repeat(16),
            &upper,
            &signed,
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_fingerprint_is_stable_across_releases() {
        // A stored fingerprint must mean the same thing to every later build: this value
        // may only change together with the canonical text's version line.
        let text = canonical(&stack().compile().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(
            text,
            "baton-definition 1\nflow \"stack\"\n\
             atom \"network\" task retry -\n  provides \"net\"\n\
             atom \"server\" task retry -\n  in \"net\" <- atom \"network\" \"net\"\n  provides \"srv\"\n\
             edge \"network\" \"server\"\n"
        );
        assert_eq!(fp(stack()).to_string(), "64205b32338bd1f022a80628d93fb41d");
    }
}
