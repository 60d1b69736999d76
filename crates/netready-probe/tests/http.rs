//! An HTTP probe leaves nothing behind: its connection ends with a reset once the answer is
//! in, so neither side keeps a TIME_WAIT socket per probe (hundreds of pods probing at once
//! would otherwise leave thousands in their namespaces and in conntrack).

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A probe's GET of `addr`, its socket made "in a pod's netns": here, this process's own.
async fn get(addr: std::net::SocketAddr) -> netready_probe::http::HttpTiming {
    netready_probe::http::get(
        std::path::Path::new("/proc/self/ns/net"),
        addr,
        "probe.test",
        "/",
        Duration::from_secs(5),
        || {},
    )
    .await
    .unwrap()
}

/// Sockets in TIME_WAIT (state 06) with `port` at either end, from `/proc/net/tcp`.
fn time_wait(port: u16) -> usize {
    let hex = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "06" && (f[1].ends_with(&hex) || f[2].ends_with(&hex))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_ends_with_a_reset_and_leaves_no_time_wait() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        // Keep-alive, as a real server: the client ends the connection.
        s.read(&mut buf).await
    });
    let t = get(addr).await;
    assert_eq!(t.status, 200);
    let end = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "the server saw an orderly close, not a reset"
    );
    assert_eq!(time_wait(addr.port()), 0, "a TIME_WAIT socket was left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_after_its_answer_still_answers() {
    // Python's http.server answers HTTP/1.0 and closes at once: the connection ends before
    // the probe has read the answer out of it. A server nobody here wrote.
    use tokio::io::AsyncBufReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mut server = tokio::process::Command::new("python3")
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    // "Serving HTTP on 127.0.0.1 port 41231 (http://127.0.0.1:41231/) ..."
    let mut first = String::new();
    tokio::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first)
        .await
        .unwrap();
    let port: u16 = first
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {first:?}"));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..20 {
        assert_eq!(get(addr).await.status, 200);
    }
    server.kill().await.unwrap();
}
