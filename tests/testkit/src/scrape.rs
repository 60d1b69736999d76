//! Reading `/metrics` as Prometheus does: a plain HTTP/1.1 GET, and sample values by prefix.

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
