//! The constant-rate HTTP load against a server that stalls: the corrected histogram sees
//! every request the stall held back; the uncorrected one only those in flight (issue 17).

use std::sync::Arc;
use std::time::Duration;

use netready_probe::load::{self, LoadSpec};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

/// An HTTP/1.1 server on loopback that answers every request at once, except that nothing is
/// answered from `stall_at` until `stall_at + stall` (what arrives then waits for its end).
async fn stalling_server(stall_at: Instant, stall: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let window = Arc::new((stall_at, stall_at + stall));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let window = window.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..i + 4);
                        let now = Instant::now();
                        if now >= window.0 && now < window.1 {
                            tokio::time::sleep_until(window.1).await;
                        }
                        let body = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(body).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// Samples of `h` at or above `at`.
fn at_least(h: &hdrhistogram::Histogram<u64>, at: u64) -> u64 {
    h.iter_recorded()
        .filter(|v| v.value_iterated_to() >= at)
        .map(|v| v.count_at_value())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_counts_from_the_intended_send_so_a_stall_shows_in_every_request_it_held() {
    // R = 200/s for D = 3 s over C = 4 connections; the server stalls S = 1 s, from 1 s in.
    let (rate, secs, conns, stall) = (200.0, 3.0, 4usize, Duration::from_secs(1));
    let stall_at = Instant::now() + Duration::from_secs(1);
    let addr = stalling_server(stall_at, stall).await;
    let spec = LoadSpec {
        target: addr,
        host: "stall".into(),
        path: "/".into(),
        rate,
        duration: Duration::from_secs_f64(secs),
        connections: conns,
        timeout: Duration::from_secs(5),
    };
    let r = load::run(None, &spec).await;
    assert_eq!(r.ok, 600, "{:?}", r.errors);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let half = stall.as_micros() as u64 / 2;
    let (corrected, uncorrected) = (at_least(&r.corrected, half), at_least(&r.uncorrected, half));
    // Corrected: every request intended in the first half of the stall waited at least S/2,
    // S·R/2 = 100 of them, plus those in flight as it began (at most C). Without the
    // correction only those in flight (at most C) look slow: the other ~100 were sent late,
    // after the stall, and answered at once.
    let expected = stall.as_secs_f64() * rate / 2.0;
    println!(
        ">= S/2: corrected {corrected} (expected ~{expected}), uncorrected {uncorrected} (at most C = {conns})"
    );
    assert!(
        (corrected as f64) >= 0.8 * expected && (corrected as f64) <= 1.2 * expected + conns as f64,
        "corrected >= S/2: {corrected}, expected about {expected}"
    );
    assert!(
        (1..=conns as u64).contains(&uncorrected),
        "uncorrected >= S/2: {uncorrected}, expected 1..={conns}"
    );
    let s = r.summary(&spec);
    assert!(s.latency_ms.max >= 900.0, "{s:?}");
    assert!(s.latency_ms.p50 < 50.0, "{s:?}");
    assert!(s.latency_ms.p99 > s.uncorrected_latency_ms.p99, "{s:?}");
}
