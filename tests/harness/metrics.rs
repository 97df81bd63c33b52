//! A parser for the Prometheus text format, enough to look up samples by name
//! and labels.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// All samples of one `/metrics` response.
#[derive(Debug)]
pub struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the Prometheus text exposition format. Panics on a malformed line,
    /// since the daemon must never produce one.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_sample(line).unwrap_or_else(|| panic!("malformed line: {line}")))
            .collect();
        Self { samples }
    }

    /// Samples named `name` whose labels include all of `labels`.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|sample| sample.name == name)
            .filter(|sample| {
                labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(value))
            })
            .collect()
    }

    /// Returns the value of the one sample named `name` whose labels include `labels`, or
    /// `None` when there is none. Panics when several samples match, because the
    /// caller then gave too few labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching = self.matching(name, labels);
        assert!(
            matching.len() <= 1,
            "{name} {labels:?} matches several samples: {matching:?}"
        );
        matching.first().map(|sample| sample.value)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample {
            name: series.to_owned(),
            labels: BTreeMap::new(),
            value,
        });
    };
    let labels = parse_labels(rest.strip_suffix('}')?)?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y"`, undoing the `\\`, `\"` and `\n` escapes.
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after_key) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after_key.char_indices();
        let end = loop {
            match chars.next()? {
                (index, '"') => break index,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    escaped => value.push(escaped),
                },
                (_, other) => value.push(other),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = &after_key[end + 1..];
    }
    Some(labels)
}

#[test]
fn parse_reads_labels_and_values() {
    let text = "# HELP x y\nplain 3\nwith{a=\"1\",b=\"q\\\"uote\"} 0.5\nbucket{le=\"+Inf\"} 2\n";
    let metrics = Metrics::parse(text);
    assert_eq!(metrics.value("plain", &[]), Some(3.0));
    assert_eq!(metrics.value("with", &[("a", "1")]), Some(0.5));
    assert_eq!(metrics.value("with", &[("b", "q\"uote")]), Some(0.5));
    assert_eq!(metrics.value("bucket", &[("le", "+Inf")]), Some(2.0));
    assert_eq!(metrics.value("with", &[("a", "2")]), None);
}
