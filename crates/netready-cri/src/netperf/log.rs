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

/// Appends lines to a CRI log file, creating its directory; errors are logged, never fatal
/// (a missing log must not fail the pod).
pub fn append(path: &str, lines: &[String]) {
    if path.is_empty() {
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
        let mut buf = String::new();
        for line in lines {
            let stamp = rfc3339(Stamp::now().wall_ns);
            for l in line.lines() {
                buf.push_str(&format!("{stamp} stdout F {l}\n"));
            }
        }
        f.write_all(buf.as_bytes())
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
