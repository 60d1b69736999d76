//! The forwarder: tails the local results file and POSTs its complete lines to the collector.
//!
//! Records are written locally first, exactly as without a collector; the forwarder only
//! reads the file, so it never blocks or slows a pod. Its position (bytes of the file the
//! collector has accepted, and the file's inode) is kept in a small file beside the state and
//! advanced only after a 2xx: after a collector outage or a netready restart it sends again
//! from there, and the collector drops what it already has. Memory holds one batch.
//!
//! - A batch is sent when 256 complete lines wait, or 1 s after the oldest of them was seen:
//!   with thousands of nodes each at a pod a second, that is one POST a second per node, not
//!   one per record.
//! - Unreachable, 5xx, 408 and 429: the same batch again after a jittered backoff doubling
//!   from 1 s to 60 s, so thousands of nodes do not retry in step after a collector restart.
//! - 404 and 405: the URL is not a collector's records endpoint (a wrong URL must not throw
//!   records away): logged as an error and retried with the same backoff.
//! - Any other 4xx refuses the batch: it is split in halves until the refused record is
//!   alone; that record is skipped (logged as an error with the collector's answer, counted)
//!   and the rest go through. A line is never retried forever.
//! - A file that shrank or was replaced (another inode) is forwarded again from its start.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use netready_metrics::Metrics;

use crate::metrics::{ForwardErrorLabels, ForwardMetrics};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// How a forwarder runs.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// The collector, `http://host[:port][/prefix]`; records go to `<prefix>/v1/records`.
    pub url: String,
    /// The results file to tail.
    pub results: PathBuf,
    /// Where the forwarded position is kept.
    pub position_file: PathBuf,
    /// Most records in one POST.
    pub max_records: usize,
    /// Most bytes in one POST (a longer line is skipped and counted as refused).
    pub max_bytes: usize,
    /// How long a batch smaller than `max_records` waits for more.
    pub linger: Duration,
    /// How often the results file is looked at.
    pub poll: Duration,
    /// First wait after a failed POST.
    pub min_backoff: Duration,
    /// Longest wait.
    pub max_backoff: Duration,
    /// Longest one POST may take, connecting included.
    pub timeout: Duration,
}

// === impl ForwardConfig ===

impl ForwardConfig {
    /// The defaults: batches of ≤ 256 records, ≤ 4 MiB, lingering ≤ 1 s; backoff 1 s to
    /// 60 s; 30 s a POST.
    pub fn new(url: &str, results: PathBuf, position_file: PathBuf) -> Self {
        ForwardConfig {
            url: url.to_owned(),
            results,
            position_file,
            max_records: 256,
            max_bytes: 4 << 20,
            linger: Duration::from_secs(1),
            poll: Duration::from_millis(200),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A running forwarder.
#[derive(Debug)]
pub struct Forwarder {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

// === impl Forwarder ===

impl Forwarder {
    /// Checks the URL and starts tailing (needs a tokio runtime).
    pub fn start(cfg: ForwardConfig, metrics: Option<Arc<Metrics>>) -> Result<Self> {
        let client = Client::new(&cfg.url, cfg.timeout)?;
        let (stop, stopped) = watch::channel(false);
        let metrics = metrics.map(|m| ForwardMetrics::register(&m));
        let task = tokio::spawn(run(cfg, client, metrics, stopped));
        Ok(Forwarder {
            stop,
            task: Some(task),
        })
    }

    /// Sends what is left (no lingering, one attempt a batch) for up to `within`, then stops.
    pub async fn stop(mut self, within: Duration) {
        let _ = self.stop.send(true);
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(within, &mut task).await.is_err() {
                task.abort();
                tracing::warn!(
                    ?within,
                    "results forwarder: stopped before the collector had everything; the rest is sent when netready starts again"
                );
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// How far the collector has the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Position {
    /// Bytes of the file accepted.
    offset: u64,
    /// The file's inode (0: not seen yet).
    inode: u64,
}

impl Position {
    fn load(path: &Path) -> Position {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "results forwarder: unreadable position; forwarding from the start (the collector drops what it has)");
                Position::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Position::default(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "results forwarder: unreadable position; forwarding from the start (the collector drops what it has)");
                Position::default()
            }
        }
    }

    fn save(&self, path: &Path) {
        let tmp = path.with_extension("forwarded.tmp");
        let written = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            // The collector drops what a stale position makes us send again.
            tracing::warn!(file = %path.display(), error = %e, "results forwarder: cannot keep the position");
        }
    }
}

/// What the next batch is.
#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    /// No complete line past the position.
    Empty,
    /// Complete lines.
    Lines { bytes: Vec<u8>, records: usize },
    /// A complete line longer than a batch may be, `skip` bytes with its newline.
    TooLong { skip: u64 },
}

/// Reads up to `max_records` complete lines (at most `max_bytes`) of `path` from `offset`,
/// not past `end`.
fn read_chunk(
    path: &Path,
    offset: u64,
    end: u64,
    max_records: usize,
    max_bytes: usize,
) -> std::io::Result<Chunk> {
    const STEP: usize = 64 << 10;
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let want = usize::try_from(end.saturating_sub(offset))
        .unwrap_or(usize::MAX)
        .min(max_bytes);
    let mut buf: Vec<u8> = Vec::with_capacity(want.min(STEP));
    let (mut records, mut cut) = (0usize, 0usize);
    'read: while buf.len() < want {
        let start = buf.len();
        let n = (&mut f)
            .take((want - start).min(STEP) as u64)
            .read_to_end(&mut buf)?;
        if n == 0 {
            break;
        }
        for (i, b) in buf[start..].iter().enumerate() {
            if *b == b'\n' {
                records += 1;
                cut = start + i + 1;
                if records == max_records {
                    break 'read;
                }
            }
        }
    }
    if records > 0 {
        buf.truncate(cut);
        return Ok(Chunk::Lines {
            bytes: buf,
            records,
        });
    }
    if buf.len() < max_bytes {
        return Ok(Chunk::Empty);
    }
    // A line longer than a batch: find its end.
    let mut skip = buf.len() as u64;
    let mut step = vec![0u8; STEP];
    while offset + skip < end {
        let n = f.read(&mut step)?;
        if n == 0 {
            break;
        }
        if let Some(i) = step[..n].iter().position(|b| *b == b'\n') {
            return Ok(Chunk::TooLong {
                skip: skip + i as u64 + 1,
            });
        }
        skip += n as u64;
    }
    Ok(Chunk::Empty)
}

/// The answer to one POST.
#[derive(Debug)]
enum Outcome {
    /// 2xx.
    Accepted,
    /// A 4xx about the batch.
    Refused { status: StatusCode, body: String },
    /// Worth trying again later; `reason` is the metric label.
    Retry {
        reason: &'static str,
        detail: String,
    },
}

/// A minimal HTTP/1.1 client for one collector: one kept-alive connection, made again after
/// any error (and the name resolved again, so a collector that moved is found).
struct Client {
    host: String,
    port: u16,
    authority: String,
    path: String,
    timeout: Duration,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    fn new(url: &str, timeout: Duration) -> Result<Self> {
        let bad = |why: &str| Error::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let uri: http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is supported"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if uri.query().is_some() {
            return Err(bad("a query has no meaning here"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Client {
            host,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            path: format!("{}/v1/records", uri.path().trim_end_matches('/')),
            timeout,
            sender: None,
        })
    }

    async fn post(&mut self, body: Bytes) -> Outcome {
        let timeout = self.timeout;
        let attempt = async {
            // A kept-alive connection the collector closed meanwhile (it closes idle ones
            // after 30 s, and a restarted one has none) fails at once: send again on a new
            // one before calling it a failure. Sending twice is harmless: the collector drops
            // what it has.
            let reused = self.sender.as_ref().is_some_and(|s| !s.is_closed());
            match self.try_post(body.clone()).await {
                Err(_) if reused => {
                    self.sender = None;
                    self.try_post(body).await
                }
                other => other,
            }
        };
        let answer = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        match answer {
            Err(detail) => {
                self.sender = None;
                Outcome::Retry {
                    reason: "unreachable",
                    detail,
                }
            }
            Ok((status, _)) if status.is_success() => Outcome::Accepted,
            Ok((status, body)) => match status.as_u16() {
                408 | 429 | 500..=599 => Outcome::Retry {
                    reason: "server_error",
                    detail: format!("{status}: {}", body.trim()),
                },
                404 | 405 => Outcome::Retry {
                    reason: "wrong_endpoint",
                    detail: format!(
                        "{status} from {}{}: not a collector's records endpoint ({})",
                        self.authority,
                        self.path,
                        body.trim()
                    ),
                },
                400..=499 => Outcome::Refused { status, body },
                _ => Outcome::Retry {
                    reason: "server_error",
                    detail: format!("unexpected {status}: {}", body.trim()),
                },
            },
        }
    }

    async fn try_post(&mut self, body: Bytes) -> Result<(StatusCode, String), String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("connecting to {}: {e}", self.authority))?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("{}: {e}", self.authority))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender
            .ready()
            .await
            .map_err(|e| format!("{}: {e}", self.authority))?;
        let req = Request::post(&self.path)
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("{}: {e}", self.authority))?;
        let status = resp.status();
        let close = resp
            .headers()
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{}: {e}", self.authority))?
            .to_bytes();
        if close {
            self.sender = None;
        }
        let mut text = String::from_utf8_lossy(&body).into_owned();
        text.truncate(text.floor_char_boundary_compat(1000));
        Ok((status, text))
    }
}

/// `str::floor_char_boundary` is unstable: the same for this use.
trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for String {
    fn floor_char_boundary_compat(&self, i: usize) -> usize {
        if i >= self.len() {
            return self.len();
        }
        (0..=i)
            .rev()
            .find(|j| self.is_char_boundary(*j))
            .unwrap_or(0)
    }
}

/// 50% to 100% of `d`, different in every process.
fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ d.as_nanos());
    d / 2 + d.mul_f64((h.finish() % 1000) as f64 / 2000.0)
}

/// Waits `d`, or less if a stop is asked for.
async fn wait(stop: &mut watch::Receiver<bool>, d: Duration) {
    if *stop.borrow() {
        return;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        r = stop.changed() => if r.is_err() {
            tokio::time::sleep(d).await;
        },
    }
}

fn stat(path: &Path) -> (u64, u64) {
    std::fs::metadata(path)
        .map(|m| (m.len(), m.ino()))
        .unwrap_or((0, 0))
}

async fn run(
    cfg: ForwardConfig,
    mut client: Client,
    metrics: Option<Arc<ForwardMetrics>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pos = Position::load(&cfg.position_file);
    tracing::info!(collector = %cfg.url, results = %cfg.results.display(), offset = pos.offset, "forwarding results to the collector");
    let mut pending_since: Option<Instant> = None;
    let mut limit = cfg.max_records;
    // While splitting a refused batch: the end of that batch.
    let mut narrow_until = 0u64;
    let mut backoff = cfg.min_backoff;
    let mut failing: Option<(Instant, u32)> = None;
    let mut read_failing = false;
    let count_error = |reason: &'static str| {
        if let Some(m) = &metrics {
            m.errors.get_or_create(&ForwardErrorLabels { reason }).inc();
        }
    };
    loop {
        let stopping = *stop.borrow();
        let (len, inode) = stat(&cfg.results);
        if inode != 0 && pos.inode != inode {
            if pos.inode != 0 {
                tracing::warn!(results = %cfg.results.display(), "results forwarder: the results file was replaced; forwarding it from the start");
                pos.offset = 0;
            }
            pos.inode = inode;
            pos.save(&cfg.position_file);
        }
        if len < pos.offset {
            tracing::warn!(results = %cfg.results.display(), len, offset = pos.offset, "results forwarder: the results file shrank; forwarding it from the start");
            pos.offset = 0;
            pos.save(&cfg.position_file);
        }
        if let Some(m) = &metrics {
            m.backlog
                .set(i64::try_from(len - pos.offset).unwrap_or(i64::MAX));
        }
        let chunk = if len > pos.offset {
            let (path, offset, max_bytes) = (cfg.results.clone(), pos.offset, cfg.max_bytes);
            tokio::task::spawn_blocking(move || read_chunk(&path, offset, len, limit, max_bytes))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        } else {
            Ok(Chunk::Empty)
        };
        let chunk = match chunk {
            Ok(c) => {
                read_failing = false;
                c
            }
            Err(e) => {
                // Once per spell of failures: this is tried again every poll.
                if !std::mem::replace(&mut read_failing, true) {
                    tracing::warn!(results = %cfg.results.display(), error = %e, "results forwarder: cannot read the results file; trying again");
                }
                Chunk::Empty
            }
        };
        let (bytes, records) = match chunk {
            Chunk::Empty => {
                pending_since = None;
                if stopping {
                    return;
                }
                wait(&mut stop, cfg.poll).await;
                continue;
            }
            Chunk::TooLong { skip } => {
                tracing::error!(results = %cfg.results.display(), offset = pos.offset, bytes = skip, max = cfg.max_bytes, "results forwarder: a line longer than a batch may be; skipped (it stays in the local file)");
                count_error("rejected");
                if let Some(m) = &metrics {
                    m.rejected_records.inc();
                }
                pos.offset += skip;
                pos.save(&cfg.position_file);
                continue;
            }
            Chunk::Lines { bytes, records } => (bytes, records),
        };
        if !stopping && records < limit {
            let since = *pending_since.get_or_insert_with(Instant::now);
            let left = cfg.linger.saturating_sub(since.elapsed());
            if !left.is_zero() {
                wait(&mut stop, left.min(cfg.poll)).await;
                continue;
            }
        }
        let n = bytes.len() as u64;
        match client.post(Bytes::from(bytes)).await {
            Outcome::Accepted => {
                pos.offset += n;
                pos.save(&cfg.position_file);
                if let Some(m) = &metrics {
                    m.records.inc_by(records as u64);
                    m.backlog
                        .set(i64::try_from(len.saturating_sub(pos.offset)).unwrap_or(i64::MAX));
                }
                pending_since = None;
                backoff = cfg.min_backoff;
                if pos.offset >= narrow_until {
                    limit = cfg.max_records;
                }
                if let Some((since, attempts)) = failing.take() {
                    tracing::info!(collector = %cfg.url, failed_attempts = attempts, after = ?since.elapsed(), "results forwarder: the collector takes records again");
                }
            }
            Outcome::Refused { status, body } if records > 1 => {
                count_error("rejected");
                tracing::warn!(collector = %cfg.url, %status, answer = %body.trim(), records, offset = pos.offset, "results forwarder: the collector refused a batch; splitting it to find the refused record");
                limit = (records / 2).max(1);
                narrow_until = narrow_until.max(pos.offset + n);
            }
            Outcome::Refused { status, body } => {
                count_error("rejected");
                if let Some(m) = &metrics {
                    m.rejected_records.inc();
                }
                tracing::error!(collector = %cfg.url, %status, answer = %body.trim(), results = %cfg.results.display(), offset = pos.offset, bytes = n, "results forwarder: THE COLLECTOR REFUSED A RECORD; skipped (it stays in the local results file, not in the collector's)");
                pos.offset += n;
                pos.save(&cfg.position_file);
            }
            Outcome::Retry { reason, detail } => {
                count_error(reason);
                let (since, attempts) = failing.get_or_insert((Instant::now(), 0));
                *attempts += 1;
                if stopping {
                    tracing::warn!(collector = %cfg.url, error = %detail, backlog_bytes = len - pos.offset, "results forwarder: stopping before the collector had everything; the rest is sent when netready starts again");
                    return;
                }
                let delay = jittered(backoff);
                if *attempts == 1 || reason == "wrong_endpoint" {
                    let level_error = reason == "wrong_endpoint";
                    if level_error {
                        tracing::error!(collector = %cfg.url, error = %detail, retry_in = ?delay, "results forwarder: wrong collector URL? records are kept and sent again");
                    } else {
                        tracing::warn!(collector = %cfg.url, error = %detail, retry_in = ?delay, "results forwarder: collector unavailable; records are kept and sent again");
                    }
                } else {
                    tracing::debug!(collector = %cfg.url, error = %detail, attempts = *attempts, down_for = ?since.elapsed(), retry_in = ?delay, "results forwarder: collector still unavailable");
                }
                backoff = (backoff * 2).min(cfg.max_backoff);
                wait(&mut stop, delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(text: &str, offset: u64, max_records: usize, max_bytes: usize) -> Chunk {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        std::fs::write(&p, text).unwrap();
        read_chunk(&p, offset, text.len() as u64, max_records, max_bytes).unwrap()
    }

    fn lines(bytes: &str, records: usize) -> Chunk {
        Chunk::Lines {
            bytes: bytes.as_bytes().to_vec(),
            records,
        }
    }

    #[test]
    fn batches_are_complete_lines_within_the_limits() {
        assert_eq!(chunk("a\nb\nc", 0, 10, 100), lines("a\nb\n", 2));
        assert_eq!(chunk("a\nb\nc", 2, 1, 100), lines("b\n", 1));
        assert_eq!(chunk("a\nb\nc", 4, 10, 100), Chunk::Empty);
        assert_eq!(chunk("aaaa\nbbbb\n", 0, 10, 7), lines("aaaa\n", 1));
        // A line longer than a batch is skipped whole, once complete.
        assert_eq!(
            chunk("aaaaaaaaaa\nb\n", 0, 10, 4),
            Chunk::TooLong { skip: 11 }
        );
        assert_eq!(chunk("aaaaaaaaaa", 0, 10, 4), Chunk::Empty);
        let big = format!("{}\n", "x".repeat(200_000));
        assert_eq!(
            chunk(&format!("{big}y\n"), 0, 10, 100_000),
            Chunk::TooLong { skip: 200_001 }
        );
        let many: String = (0..1000).map(|i| format!("{i}\n")).collect();
        let Chunk::Lines { records, bytes } = chunk(&many, 0, 256, 1 << 20) else {
            panic!()
        };
        assert_eq!(records, 256);
        assert!(bytes.ends_with(b"255\n"));
    }

    #[test]
    fn urls_name_host_port_and_path() {
        let c = Client::new("http://collector.kubemark.svc:8080", Duration::from_secs(1)).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("collector.kubemark.svc", 8080));
        assert_eq!(c.path, "/v1/records");
        let c = Client::new("http://[::1]/prefix/", Duration::from_secs(1)).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.path.as_str()),
            ("::1", 80, "/prefix/v1/records")
        );
        for bad in ["https://x", "x:80", "http://x/?a=1", "not a url"] {
            assert!(Client::new(bad, Duration::from_secs(1)).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_is_jittered_within_half_to_whole() {
        let d = Duration::from_secs(8);
        let samples: Vec<_> = (0..50).map(|_| jittered(d)).collect();
        assert!(samples.iter().all(|s| *s >= d / 2 && *s <= d));
        assert!(samples.iter().any(|s| *s != samples[0]), "{samples:?}");
    }
}
