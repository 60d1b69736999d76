//! Reading `/metrics` as Prometheus does: a plain HTTP/1.1 GET, sample values by prefix, and
//! every sample parsed into its family, name and labels (to count series).

use std::collections::BTreeMap;
use std::io::{Read, Write};

/// GETs `url` (`http://host:port/path`) with an optional `Accept`; returns head and body.
pub fn get(url: &str, accept: Option<&str>) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut s = std::net::TcpStream::connect(host).expect("the metrics server answers");
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\n{accept}Connection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response read");
    let (head, body) = out.split_once("\r\n\r\n").expect("head and body");
    (head.to_owned(), body.to_owned())
}

/// The value of the first sample whose line starts with `prefix`.
pub fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

/// One sample line of the Prometheus text format: one series in Prometheus' head.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The family its `# TYPE` line names (`netready_network_ready_seconds` for its
    /// `_bucket`, `_sum` and `_count` lines).
    pub family: String,
    /// The family's type: `counter`, `gauge`, `histogram`...
    pub kind: String,
    /// The sample's own name (`netready_network_ready_seconds_bucket`).
    pub name: String,
    /// Its labels, `le` included.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Every sample of a Prometheus text (format 0.0.4) exposition, each assigned to the family
/// of the `# TYPE` line before it (the format keeps a family's lines together). Panics on a
/// line it cannot read, or a sample whose name does not start with its family's.
pub fn samples(text: &str) -> Vec<Sample> {
    let mut family = (String::new(), String::new());
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').expect("# TYPE <name> <type>");
            family = (name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("<series> <value>");
        let (name, labels) = parse_series(series);
        assert!(
            name.starts_with(&family.0),
            "sample {name} outside its family {}",
            family.0
        );
        out.push(Sample {
            family: family.0.clone(),
            kind: family.1.clone(),
            name: name.to_owned(),
            labels,
            value: value.parse().expect("a float value"),
        });
    }
    out
}

/// A series as the text format and PromQL selectors write it, `name{a="x",b="y"}`: its name
/// and labels.
pub fn parse_series(series: &str) -> (&str, BTreeMap<String, String>) {
    match series.split_once('{') {
        Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}').expect("labels end"))),
        None => (series, BTreeMap::new()),
    }
}

/// `a="x",b="y\"z"` → {a: x, b: y"z}.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, tail) = rest.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = tail.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (_, '\\') => match chars.next().expect("escaped char").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        out.insert(name.trim_start_matches(',').to_owned(), value);
        rest = tail[end + 1..].trim_start_matches(',');
    }
    out
}

/// Series per family: every sample line counts once (a histogram: each `_bucket` line, its
/// `_sum` and its `_count`), as Prometheus stores them.
pub fn series_per_family(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in samples(text) {
        *out.entry(s.family).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_belong_to_their_family() {
        let text = "# HELP x_seconds A histogram.\n# TYPE x_seconds histogram\n\
            x_seconds_sum{check=\"a\"} 1.5\nx_seconds_count{check=\"a\"} 2\n\
            x_seconds_bucket{le=\"0.5\",check=\"a\"} 1\nx_seconds_bucket{le=\"+Inf\",check=\"a\"} 2\n\
            # TYPE y_total counter\ny_total{reason=\"q\\\"uote\",k=\"v\"} 3\n# TYPE z gauge\nz 4\n";
        let s = samples(text);
        assert_eq!(s.len(), 6);
        assert_eq!(s[2].labels["le"], "0.5");
        assert_eq!(s[4].labels["reason"], "q\"uote");
        assert_eq!(s[4].labels["k"], "v");
        assert_eq!(s[5].value, 4.0);
        let per = series_per_family(text);
        assert_eq!(per["x_seconds"], 4);
        assert_eq!(per["y_total"], 1);
        assert_eq!(per["z"], 1);
    }
}
