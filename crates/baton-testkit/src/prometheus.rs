//! A strict reader of the Prometheus text format (version 0.0.4), for tests of what
//! `/metrics` serves: every line must parse, every sample belong to a family declared by a
//! `# TYPE` line before it, a family's lines must not be split by another's, and a
//! histogram's buckets must be cumulative and end with `+Inf` equal to its count.

use std::collections::{BTreeMap, HashSet};

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (a histogram's are `<family>_bucket`, `_sum` and `_count`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A metric family: its type, help and samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Family {
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub kind: String,
    /// Its `# HELP` text, if any.
    pub help: Option<String>,
    /// Its samples, in order.
    pub samples: Vec<Sample>,
}

/// A parsed scrape: the families by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// The families, by name.
    pub families: BTreeMap<String, Family>,
}

impl Scrape {
    /// The value of the sample `name` whose labels include `labels`, if exactly one matches.
    #[must_use]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples(name).filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        });
        let first = found.next()?;
        found.next().is_none().then_some(first.value)
    }

    /// The sum of every sample named `name`, whatever its labels (0 for none).
    #[must_use]
    pub fn sum(&self, name: &str) -> f64 {
        self.samples(name).map(|s| s.value).sum()
    }

    /// Every sample named `name`.
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.families
            .values()
            .flat_map(|f| f.samples.iter())
            .filter(move |s| s.name == name)
    }
}

/// Parses `text`, checking it as described in the [module documentation](self).
///
/// # Errors
/// The first line that breaks a rule, with its number and why.
pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    // Families whose lines have ended (another family's came after them).
    let mut closed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line:?}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        let family_name = if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), help) => {
                    check_name(name).map_err(&at)?;
                    let family = scrape.families.entry(name.to_owned()).or_default();
                    if family.help.is_some() {
                        return Err(at("a second HELP".into()));
                    }
                    family.help = Some(help.unwrap_or_default().to_owned());
                    name.to_owned()
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    check_name(name).map_err(&at)?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    let family = scrape.families.entry(name.to_owned()).or_default();
                    if !family.kind.is_empty() {
                        return Err(at("a second TYPE".into()));
                    }
                    if !family.samples.is_empty() {
                        return Err(at("TYPE after the family's samples".into()));
                    }
                    family.kind = kind.to_owned();
                    name.to_owned()
                }
                // Any other comment.
                _ => continue,
            }
        } else {
            let sample = parse_sample(line).map_err(&at)?;
            let family = family_of(&scrape, &sample.name)
                .ok_or_else(|| at(format!("no TYPE declared for {}", sample.name)))?;
            scrape
                .families
                .get_mut(&family)
                .ok_or_else(|| at("lost family".into()))?
                .samples
                .push(sample);
            family
        };
        if current.as_deref() != Some(family_name.as_str()) {
            if closed.contains(&family_name) {
                return Err(at(format!(
                    "{family_name}'s lines are split by another family's"
                )));
            }
            if let Some(previous) = current.replace(family_name) {
                closed.insert(previous);
            }
        }
    }
    for (name, family) in &scrape.families {
        if family.kind == "histogram" {
            check_histogram(name, family)?;
        }
    }
    Ok(scrape)
}

/// The family a sample named `name` belongs to: its own, or for a histogram's or summary's
/// parts, the one its suffix is added to.
fn family_of(scrape: &Scrape, name: &str) -> Option<String> {
    if scrape
        .families
        .get(name)
        .is_some_and(|f| !f.kind.is_empty())
    {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        let family = scrape.families.get(base)?;
        let fits = match *suffix {
            "_bucket" => family.kind == "histogram",
            _ => family.kind == "histogram" || family.kind == "summary",
        };
        fits.then(|| base.to_owned())
    })
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(format!("bad label name {name:?}"))
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|_| format!("bad value {text:?}")),
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample without a value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut end = None;
        loop {
            // A label name, `=`, a quoted value; then `,` or `}`.
            let start = match chars.peek() {
                Some(&(_, '}')) => {
                    end = chars.next().map(|(i, _)| i);
                    break;
                }
                Some(&(i, _)) => i,
                None => break,
            };
            let eq = inner[start..].find('=').ok_or("a label without =")? + start;
            let key = &inner[start..eq];
            check_label_name(key)?;
            while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key}'s value is not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in label {key}")),
                    },
                    Some(c) => value.push(c),
                    None => return Err(format!("label {key}'s value is not closed")),
                }
            }
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            match chars.peek() {
                Some(&(_, ',')) => {
                    chars.next();
                }
                Some(&(_, '}')) => {}
                _ => return Err("labels not separated by ,".into()),
            }
        }
        let end = end.ok_or("labels not closed by }")?;
        rest = &inner[end + 1..];
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("a sample without a value")?)?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A histogram's series (by labels other than `le`): buckets cumulative, the last `+Inf`,
/// equal to `_count`; a `_sum` for each.
fn check_histogram(name: &str, family: &Family) -> Result<(), String> {
    // By labels: the buckets (bound, count), the count, whether a sum came.
    type Series = (Vec<(f64, f64)>, Option<f64>, bool);
    let mut series: BTreeMap<Vec<(String, String)>, Series> = BTreeMap::new();
    for s in &family.samples {
        let key: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| *k != "le")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let entry = series.entry(key).or_default();
        if s.name.ends_with("_bucket") {
            let le = s
                .labels
                .get("le")
                .ok_or_else(|| format!("{name}: a bucket without le"))?;
            entry.0.push((parse_value(le)?, s.value));
        } else if s.name.ends_with("_count") {
            entry.1 = Some(s.value);
        } else if s.name.ends_with("_sum") {
            entry.2 = true;
        }
    }
    for (labels, (buckets, count, sum)) in series {
        let what = format!("{name}{labels:?}");
        let count = count.ok_or_else(|| format!("{what}: no _count"))?;
        if !sum {
            return Err(format!("{what}: no _sum"));
        }
        if !buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        {
            return Err(format!("{what}: buckets not cumulative: {buckets:?}"));
        }
        match buckets.last() {
            Some(&(le, n)) if le == f64::INFINITY && n == count => {}
            _ => return Err(format!("{what}: the +Inf bucket is not the count {count}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_families_labels_and_histograms() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{store=\"x\\\"y\"} 3\n\
                    # TYPE h_seconds histogram\nh_seconds_bucket{le=\"0.1\"} 1\n\
                    h_seconds_bucket{le=\"+Inf\"} 2\nh_seconds_sum 0.3\nh_seconds_count 2\n\
                    # TYPE g gauge\ng NaN\n";
        let scrape = parse(text).unwrap();
        assert_eq!(scrape.value("a_total", &[("store", "x\"y")]), Some(3.0));
        assert_eq!(scrape.value("h_seconds_count", &[]), Some(2.0));
        assert!(scrape.value("g", &[]).unwrap().is_nan());
        assert_eq!(scrape.families["h_seconds"].samples.len(), 4);
    }

    #[test]
    fn refuses_what_prometheus_would() {
        for (text, why) in [
            ("a 1\n", "no TYPE"),
            ("# TYPE a gauge\na{b=c} 1\n", "not quoted"),
            ("# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na 2\n", "split"),
            ("# TYPE 1a gauge\n", "bad metric name"),
            (
                "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
                "+Inf bucket",
            ),
            ("# TYPE a gauge\na one\n", "bad value"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
