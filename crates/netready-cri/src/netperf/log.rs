//! The container log in kubelet's CRI format (`<RFC 3339 ns> stdout F <line>`), so `kubectl
//! logs` shows what happened to a netperf pod.

use std::io::Write as _;
use std::path::Path;

use netready_cni::Stamp;

/// RFC 3339 with nanoseconds, UTC, as CRI log lines and records use.
pub fn rfc3339(wall_ns: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(wall_ns);
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Appends netready's own lines (stdout, full) to a CRI log file.
pub fn append(path: &str, lines: &[String]) {
    let entries: Vec<(bool, Vec<u8>)> = lines
        .iter()
        .flat_map(|l| l.lines())
        .map(|l| (false, l.as_bytes().to_vec()))
        .collect();
    append_stream(path, "stdout", &entries);
}

/// Appends entries of `stream` (`stdout`, `stderr`) to a CRI log file, creating its directory:
/// `<time> <stream> <F|P> <bytes>`, P for a piece of a longer line. The file is opened for each
/// batch, so a log kubelet rotated (rename, then ReopenContainerLog) is written anew at its
/// path. Errors are logged, never fatal (a missing log must not fail the pod).
pub fn append_stream(path: &str, stream: &str, entries: &[(bool, Vec<u8>)]) {
    if path.is_empty() || entries.is_empty() {
        return;
    }
    let path = Path::new(path);
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let mut buf = Vec::new();
        let stamp = rfc3339(Stamp::now().wall_ns);
        for (partial, line) in entries {
            let tag = if *partial { "P" } else { "F" };
            buf.extend_from_slice(format!("{stamp} {stream} {tag} ").as_bytes());
            buf.extend_from_slice(line);
            buf.push(b'\n');
        }
        f.write_all(&buf)
    };
    if let Err(e) = write() {
        tracing::warn!(log = %path.display(), error = %e, "writing container log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc_with_nanoseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2026-11-22T06:32:56.316Z, the wall time in the kubelet traces' header.
        assert_eq!(
            rfc3339(1_795_329_176_316_000_000),
            "2026-11-22T06:32:56.316000000Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
    }
}
