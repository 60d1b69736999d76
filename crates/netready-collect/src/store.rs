//! The collector's files: one `<run id>.jsonl` per run in one directory, the records as the
//! nodes sent them, and in memory the key of every record each file holds, so a record sent
//! twice is kept once. The index is rebuilt from the files at start: a restarted collector
//! still knows what it has.
//!
//! A batch is appended with one write per run under one lock, and cut off again if a write
//! fails: a batch is kept whole or not at all. Appends reach the page cache, not the disk
//! (no fsync): the collector survives its own crash, not the machine's. A crash in the
//! middle of a write leaves a partial last line; it is cut off at the next start (its batch
//! was never acknowledged, so its sender sends it again).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::batch::{self, Key, Line};
use crate::error::{Error, Result};

/// The runs and their files.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    runs: Mutex<HashMap<String, Run>>,
}

#[derive(Debug)]
struct Run {
    path: PathBuf,
    file: File,
    /// Bytes of complete batches: what readers may see.
    len: u64,
    records: u64,
    keys: HashSet<Key>,
}

/// What an append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Records written.
    pub records: u64,
    /// Records dropped as already kept (or sent twice in the batch).
    pub duplicates: u64,
}

/// One run, as `GET /v1/runs` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    /// The run id.
    pub run_id: String,
    /// Records kept.
    pub records: u64,
    /// Size of its file.
    pub bytes: u64,
}

/// What [`Store::open`] found in the files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Runs found.
    pub runs: usize,
    /// Records indexed.
    pub records: u64,
    /// Complete lines that are not records (left in place, not indexed).
    pub invalid_lines: u64,
    /// Bytes of partial last lines cut off.
    pub truncated_bytes: u64,
}

// === impl Store ===

impl Store {
    /// Opens (creating it if needed) `dir` and indexes every run file in it.
    pub fn open(dir: &Path) -> Result<(Self, Loaded)> {
        let dir_err = |source| Error::Dir {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let mut runs = HashMap::new();
        let mut loaded = Loaded::default();
        for entry in std::fs::read_dir(dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let name = entry.file_name();
            let Some(run_id) = name.to_str().and_then(batch::run_id_of) else {
                continue;
            };
            let run = Run::load(&entry.path(), &mut loaded)?;
            loaded.runs += 1;
            loaded.records += run.records;
            runs.insert(run_id, run);
        }
        Ok((
            Store {
                dir: dir.to_owned(),
                runs: Mutex::new(runs),
            },
            loaded,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Run>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends the records of `lines` not kept yet, each to its run's file; all or nothing.
    pub fn append(&self, lines: &[Line<'_>]) -> Result<Appended> {
        let mut runs = self.lock();
        let mut out = Appended::default();
        // Per run touched: its bytes to write, the keys added, whether the run is new.
        let mut pending: Vec<(&str, Vec<u8>, Vec<Key>, bool)> = Vec::new();
        let mut failed = None;
        for line in lines {
            let run_id = line.run_id.as_ref();
            let i = match pending.iter().position(|p| p.0 == run_id) {
                Some(i) => i,
                None => {
                    let new = !runs.contains_key(run_id);
                    if new {
                        match Run::create(self.dir.join(batch::file_name(run_id))) {
                            Ok(run) => {
                                runs.insert(run_id.to_owned(), run);
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    pending.push((run_id, Vec::new(), Vec::new(), new));
                    pending.len() - 1
                }
            };
            let run = runs.get_mut(run_id).expect("inserted above");
            let key = line.key();
            if !run.keys.insert(key) {
                out.duplicates += 1;
                continue;
            }
            let (_, buf, keys, _) = &mut pending[i];
            buf.extend_from_slice(line.bytes);
            buf.push(b'\n');
            keys.push(key);
        }
        if failed.is_none() {
            for (run_id, buf, _, _) in &pending {
                let run = runs.get_mut(*run_id).expect("present");
                if let Err(source) = run.file.write_all(buf) {
                    failed = Some(Error::Append {
                        path: run.path.clone(),
                        source,
                        rollback: None,
                    });
                    break;
                }
            }
        }
        if let Some(mut error) = failed {
            // Undo the whole batch: every file back to its length, every key forgotten.
            for (run_id, _, keys, new) in pending {
                let run = runs.get_mut(run_id).expect("present");
                if let Err(e) = run.file.set_len(run.len) {
                    if let Error::Append { rollback, .. } = &mut error {
                        rollback.get_or_insert(e);
                    }
                }
                for k in keys {
                    run.keys.remove(&k);
                }
                if new {
                    let run = runs.remove(run_id).expect("present");
                    let _ = std::fs::remove_file(&run.path);
                }
            }
            return Err(error);
        }
        for (run_id, buf, keys, _) in pending {
            let run = runs.get_mut(run_id).expect("present");
            run.len += buf.len() as u64;
            run.records += keys.len() as u64;
            out.records += keys.len() as u64;
        }
        Ok(out)
    }

    /// Every run with its record count, by run id.
    pub fn runs(&self) -> Vec<RunSummary> {
        let mut out: Vec<RunSummary> = self
            .lock()
            .iter()
            .map(|(id, r)| RunSummary {
                run_id: id.clone(),
                records: r.records,
                bytes: r.len,
            })
            .collect();
        out.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        out
    }

    /// A run's file and the length of its complete batches (bytes past it may be a batch
    /// being written), or `None` for an unknown run.
    pub fn snapshot(&self, run_id: &str) -> Option<(PathBuf, u64)> {
        self.lock().get(run_id).map(|r| (r.path.clone(), r.len))
    }

    /// Records kept, all runs together.
    pub fn records(&self) -> u64 {
        self.lock().values().map(|r| r.records).sum()
    }
}

// === impl Run ===

impl Run {
    fn create(path: PathBuf) -> Result<Self> {
        let file = open_append(&path)?;
        Ok(Run {
            path,
            file,
            len: 0,
            records: 0,
            keys: HashSet::new(),
        })
    }

    /// Indexes an existing file, cutting off a partial last line.
    fn load(path: &Path, loaded: &mut Loaded) -> Result<Self> {
        let err = |source| Error::RunFile {
            path: path.to_owned(),
            source,
        };
        let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(err)?);
        let mut keys = HashSet::new();
        let (mut pos, mut complete, mut records) = (0u64, 0u64, 0u64);
        let mut buf = Vec::with_capacity(8192);
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            pos += n as u64;
            let Some(line) = buf.strip_suffix(b"\n") else {
                break;
            };
            complete = pos;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match batch::parse_line(line) {
                Ok(l) => {
                    if keys.insert(l.key()) {
                        records += 1;
                    }
                }
                Err(problem) => {
                    loaded.invalid_lines += 1;
                    tracing::warn!(file = %path.display(), offset = complete - n as u64, %problem, "a line of a run file is not a record; left in place, not indexed");
                }
            }
        }
        if pos > complete {
            tracing::warn!(file = %path.display(), bytes = pos - complete, "cutting off a partial last line (a batch cut short by a crash; its sender sends it again)");
            loaded.truncated_bytes += pos - complete;
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(complete))
                .map_err(err)?;
        }
        Ok(Run {
            path: path.to_owned(),
            file: open_append(path)?,
            len: complete,
            records,
            keys,
        })
    }
}

fn open_append(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| Error::RunFile {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(run: &str, node: &str, sb: &str) -> String {
        format!(r#"{{"run_id":"{run}","node":"{node}","sandbox_id":"{sb}","x":1}}"#)
    }

    fn append(s: &Store, body: &str) -> Appended {
        s.append(&batch::parse(body.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn duplicates_are_dropped_across_batches_runs_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path()).unwrap();
        let a = rec("r1", "n1", "s1");
        let b = rec("r1", "n2", "s1");
        let c = rec("r2", "n1", "s1");
        assert_eq!(
            append(&s, &format!("{a}\n{b}\n{a}\n{c}\n")),
            Appended {
                records: 3,
                duplicates: 1
            }
        );
        assert_eq!(
            append(&s, &format!("{b}\n{c}\n")),
            Appended {
                records: 0,
                duplicates: 2
            }
        );
        let text = std::fs::read_to_string(dir.path().join("r1.jsonl")).unwrap();
        assert_eq!(text, format!("{a}\n{b}\n"));
        assert_eq!(
            s.runs(),
            [
                RunSummary {
                    run_id: "r1".into(),
                    records: 2,
                    bytes: text.len() as u64
                },
                RunSummary {
                    run_id: "r2".into(),
                    records: 1,
                    bytes: c.len() as u64 + 1
                }
            ]
        );
        drop(s);

        // A crash mid-write left half a line: cut off at start, the rest still indexed.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("r1.jsonl"))
            .unwrap();
        f.write_all(&rec("r1", "n3", "s9").as_bytes()[..20])
            .unwrap();
        let (s, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(
            loaded,
            Loaded {
                runs: 2,
                records: 3,
                invalid_lines: 0,
                truncated_bytes: 20
            }
        );
        let d = rec("r1", "n3", "s9");
        assert_eq!(
            append(&s, &format!("{a}\n{d}\n")),
            Appended {
                records: 1,
                duplicates: 1
            }
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("r1.jsonl")).unwrap(),
            format!("{a}\n{b}\n{d}\n")
        );
        assert_eq!(s.records(), 4);
    }

    #[test]
    fn odd_run_ids_get_encoded_file_names() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path()).unwrap();
        append(&s, &rec("cni v1:2", "n", "s"));
        assert!(dir.path().join("cni%20v1%3A2.jsonl").exists());
        drop(s);
        let (s, _) = Store::open(dir.path()).unwrap();
        assert_eq!(s.runs()[0].run_id, "cni v1:2");
        assert!(s.snapshot("cni v1:2").is_some());
        assert!(s.snapshot("other").is_none());
    }
}
