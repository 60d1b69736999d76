//! A batch as `POST /v1/records` carries it: newline-delimited JSON, one record a line, each
//! naming its run (`run_id`), its node (`node`) and its sandbox (`sandbox_id`), and a
//! command's record its container too (`container_id`). Those name a record: the same names
//! twice are one record sent twice.
//!
//! A run's records go to a file named after the run id, so a run id must be a safe file name
//! (no `/`, no `..`, no leading `.`, no control characters, at most 128 bytes); bytes other
//! than `[A-Za-z0-9._-]` are %-encoded in the file name.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use sha2::{Digest as _, Sha256};

/// The longest run id, in bytes.
pub const MAX_RUN_ID: usize = 128;

/// Suffix of a run's file.
pub const FILE_SUFFIX: &str = ".jsonl";

/// One record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// Its run.
    pub run_id: Cow<'a, str>,
    /// The node that wrote it.
    pub node: Cow<'a, str>,
    /// Its sandbox.
    pub sandbox_id: Cow<'a, str>,
    /// Its container, in a command's record (empty in a pod's).
    pub container_id: Cow<'a, str>,
    /// The line as sent, without its line end.
    pub bytes: &'a [u8],
}

impl Line<'_> {
    /// The key that makes two records the same within a run.
    pub fn key(&self) -> Key {
        Key::of(&self.node, &self.sandbox_id, &self.container_id)
    }
}

/// What makes two records of one run the same: a 128-bit hash of node, sandbox id and
/// container id (16
/// bytes a record in memory, however long the names; a collision is a 2⁻⁶⁴ matter at 2³²
/// records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(u128);

// === impl Key ===

impl Key {
    /// The key of the record of `sandbox_id` on `node`, or of its container `container_id`'s
    /// command (empty: the pod's record).
    pub fn of(node: &str, sandbox_id: &str, container_id: &str) -> Self {
        let mut h = Sha256::new();
        h.update(node.as_bytes());
        h.update([0]);
        h.update(sandbox_id.as_bytes());
        if !container_id.is_empty() {
            h.update([0]);
            h.update(container_id.as_bytes());
        }
        let d = h.finalize();
        let mut k = [0u8; 16];
        k.copy_from_slice(&d[..16]);
        Key(u128::from_le_bytes(k))
    }
}

/// Why a line is not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// It does not parse.
    NotJson(String),
    /// It parses, but is not an object.
    NotObject,
    /// A required field is absent.
    Missing(&'static str),
    /// A required field is not a string.
    NotString(&'static str),
    /// A required field is the empty string.
    Empty(&'static str),
    /// The run id cannot name a file.
    BadRunId(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotJson(e) => write!(f, "not JSON: {e}"),
            Problem::NotObject => f.write_str("not a JSON object"),
            Problem::Missing(k) => write!(f, "field `{k}`: missing"),
            Problem::NotString(k) => write!(f, "field `{k}`: not a string"),
            Problem::Empty(k) => write!(f, "field `{k}`: empty"),
            Problem::BadRunId(why) => write!(f, "field `run_id`: {why}"),
        }
    }
}

/// A batch that is refused, with the first line that is not a record (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct Invalid {
    /// The line number, counting from 1.
    pub line: usize,
    /// What is wrong with it.
    pub problem: Problem,
}

/// Splits and checks a batch: every line (blank ones are skipped) must be a record.
pub fn parse(body: &[u8]) -> Result<Vec<Line<'_>>, Invalid> {
    let mut out = Vec::new();
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let bytes = raw.strip_suffix(b"\r").unwrap_or(raw);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = parse_line(bytes).map_err(|problem| Invalid {
            line: i + 1,
            problem,
        })?;
        out.push(line);
    }
    Ok(out)
}

/// Checks one line (without its line end).
pub fn parse_line(bytes: &[u8]) -> Result<Line<'_>, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let fields = de
        .deserialize_map(FieldsVisitor)
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Data => Problem::NotObject,
            _ => Problem::NotJson(e.to_string()),
        })?;
    de.end().map_err(|e| Problem::NotJson(e.to_string()))?;
    let run_id = take(fields.run_id, "run_id")?;
    let node = take(fields.node, "node")?;
    let sandbox_id = take(fields.sandbox_id, "sandbox_id")?;
    let container_id = match fields.container_id {
        None => Cow::Borrowed(""),
        some => take(some, "container_id")?,
    };
    check_run_id(&run_id).map_err(Problem::BadRunId)?;
    Ok(Line {
        run_id,
        node,
        sandbox_id,
        container_id,
        bytes,
    })
}

/// Whether `id` can name a run's file; the reason when not.
pub fn check_run_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty".into());
    }
    if id.contains('/') {
        return Err(format!("{id:?} contains `/`"));
    }
    if id.contains("..") {
        return Err(format!("{id:?} contains `..`"));
    }
    if id.starts_with('.') {
        return Err(format!("{id:?} starts with `.`"));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("{id:?} contains a control character"));
    }
    if id.len() > MAX_RUN_ID {
        return Err(format!("longer than {MAX_RUN_ID} bytes"));
    }
    Ok(())
}

/// The file name of a run's records: the run id, bytes other than `[A-Za-z0-9._-]`
/// %-encoded, then `.jsonl`. The id must have passed [`check_run_id`].
pub fn file_name(run_id: &str) -> String {
    let mut out = String::with_capacity(run_id.len() + FILE_SUFFIX.len());
    for b in run_id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str(FILE_SUFFIX);
    out
}

/// The run id a file name holds, if it is one [`file_name`] made.
pub fn run_id_of(file_name: &str) -> Option<String> {
    let enc = file_name.strip_suffix(FILE_SUFFIX)?;
    let mut bytes = Vec::with_capacity(enc.len());
    let mut it = enc.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hex = [it.next()?, it.next()?];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    let id = String::from_utf8(bytes).ok()?;
    check_run_id(&id).ok()?;
    (self::file_name(&id) == file_name).then_some(id)
}

fn take<'a>(v: Option<Field<'a>>, name: &'static str) -> Result<Cow<'a, str>, Problem> {
    match v {
        None => Err(Problem::Missing(name)),
        Some(Field::Other) => Err(Problem::NotString(name)),
        Some(Field::Str(s)) if s.is_empty() => Err(Problem::Empty(name)),
        Some(Field::Str(s)) => Ok(s),
    }
}

enum Field<'a> {
    Str(Cow<'a, str>),
    Other,
}

#[derive(Default)]
struct Fields<'a> {
    run_id: Option<Field<'a>>,
    node: Option<Field<'a>>,
    sandbox_id: Option<Field<'a>>,
    container_id: Option<Field<'a>>,
}

/// Reads an object's naming fields and skips (but still checks) everything else; only
/// an object is accepted.
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Fields::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "run_id" => &mut out.run_id,
                "node" => &mut out.node,
                "sandbox_id" => &mut out.sandbox_id,
                "container_id" => &mut out.container_id,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(match map.next_value::<MaybeStr<'de>>()?.0 {
                Some(s) => Field::Str(s),
                None => Field::Other,
            });
        }
        Ok(out)
    }
}

/// A string (borrowed when it has no escapes), or `None` for any other JSON value.
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl<'de> serde::Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(body: &str) -> String {
        parse(body.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn records_keep_their_bytes_and_blank_lines_are_skipped() {
        let body = "{\"run_id\":\"r1\",\"node\":\"n\",\"sandbox_id\":\"s1\",\"x\":[1,{\"y\":null}]}\r\n\n  \n{\"sandbox_id\":\"s\\u0032\",\"node\":\"n\",\"run_id\":\"r1\"}";
        let lines = parse(body.as_bytes()).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0].bytes,
            br#"{"run_id":"r1","node":"n","sandbox_id":"s1","x":[1,{"y":null}]}"#
        );
        assert_eq!(lines[1].sandbox_id, "s2");
        assert_ne!(lines[0].key(), lines[1].key());
        assert_eq!(lines[1].key(), Key::of("n", "s2", ""));
    }

    #[test]
    fn a_commands_record_is_its_own_beside_its_pods() {
        let pod = r#"{"run_id":"r","node":"n","sandbox_id":"s","kind":null}"#;
        let cmd =
            r#"{"run_id":"r","node":"n","sandbox_id":"s","kind":"command","container_id":"c"}"#;
        let other =
            r#"{"run_id":"r","node":"n","sandbox_id":"s","kind":"command","container_id":"d"}"#;
        let body = format!("{pod}\n{cmd}\n{other}\n{cmd}");
        let lines = parse(body.as_bytes()).unwrap();
        assert_ne!(lines[0].key(), lines[1].key(), "a pod and its command");
        assert_ne!(lines[1].key(), lines[2].key(), "two containers of one pod");
        assert_eq!(lines[1].key(), lines[3].key(), "one command sent twice");
        assert_eq!(
            problem(r#"{"run_id":"r","node":"n","sandbox_id":"s","container_id":""}"#),
            "line 1: field `container_id`: empty"
        );
    }

    #[test]
    fn every_problem_names_its_line_and_field() {
        let ok = r#"{"run_id":"r","node":"n","sandbox_id":"s"}"#;
        assert_eq!(
            problem(&format!("{ok}\n{}", r#"{"run_id":"r","sandbox_id":"s"}"#)),
            "line 2: field `node`: missing"
        );
        assert!(problem(&format!("{ok}\n\n{{\"run_id\":")).starts_with("line 3: not JSON: "));
        assert_eq!(problem("[1,2]"), "line 1: not a JSON object");
        assert_eq!(problem("\"text\""), "line 1: not a JSON object");
        assert!(problem(&format!("{ok} {ok}")).starts_with("line 1: not JSON: trailing"));
        assert_eq!(
            problem(r#"{"run_id":"r","node":7,"sandbox_id":"s"}"#),
            "line 1: field `node`: not a string"
        );
        assert_eq!(
            problem(r#"{"run_id":"r","node":"n","sandbox_id":""}"#),
            "line 1: field `sandbox_id`: empty"
        );
        assert_eq!(
            problem(r#"{"run_id":"../etc","node":"n","sandbox_id":"s"}"#),
            "line 1: field `run_id`: \"../etc\" contains `/`"
        );
        assert_eq!(
            problem(r#"{"run_id":"a..b","node":"n","sandbox_id":"s"}"#),
            "line 1: field `run_id`: \"a..b\" contains `..`"
        );
        assert!(problem("\u{ff}").starts_with("line 1: not JSON"));
    }

    #[test]
    fn run_ids_round_trip_through_file_names() {
        for id in ["run-abc123", "cni v1.2.3 run:1", "100%", "ünï", "a.b_c-d"] {
            let name = file_name(id);
            assert!(!name.contains('/') && !name.contains(' '), "{name}");
            assert_eq!(run_id_of(&name).as_deref(), Some(id), "{name}");
        }
        assert_eq!(file_name("run-1"), "run-1.jsonl");
        for not_ours in [
            "x.json",
            "%zz.jsonl",
            ".hidden.jsonl",
            "a%2fb.jsonl",
            "a%2Fb.jsonl",
        ] {
            assert_eq!(run_id_of(not_ours), None, "{not_ours}");
        }
        assert!(check_run_id(".").is_err());
        assert!(check_run_id("a\0b").is_err());
        assert!(check_run_id(&"x".repeat(129)).is_err());
    }
}
