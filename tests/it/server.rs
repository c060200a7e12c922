//! Serving: metrics, readiness, connection bounds, snapshot swaps, shutdown.

use healthgate::gateway::LiveConfig;
use healthgate::operations::auth::Role;
use healthgate_tests::TestGateway;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn promtool_accepts_a_real_scrape() {
    let t = TestGateway::start().await;
    let metro = t.checkpoint("metro").to_owned();
    t.scan(&t.code(t.holder("green", 0)), &metro, "in", None).await;
    t.scan(&t.code(t.holder("red", 0)), &metro, "in", None).await;
    let text = t.metrics().await;
    for want in [
        "healthgate_scans_total{decision=\"pass\",reason=\"ok\"} 1",
        "healthgate_scans_total{decision=\"deny\",reason=\"not_green\"} 1",
        "healthgate_scan_duration_seconds_bucket{le=\"0.00001\"}",
        "healthgate_holders{color=\"green\"}",
        "healthgate_state_epoch",
        "healthgate_open_connections{listener=\"public\"}",
        "healthgate_build_info{version=",
        "healthgate_ready 1",
    ] {
        assert!(text.contains(want), "metrics lack {want}");
    }
    let path = t.dir.path().join("scrape.txt");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .expect("promtool is installed by the README's test command (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn holders_gauge_follows_color_changes() {
    let t = TestGateway::start().await;
    let gauge = |text: &str, c: &str| -> i64 {
        let prefix = format!("healthgate_holders{{color=\"{c}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap().parse().unwrap()
    };
    let before = t.metrics().await;
    t.scan(&t.code(t.holder("green", 0)), t.checkpoint("rail"), "in", Some(39.0)).await;
    let after = t.metrics().await;
    assert_eq!(gauge(&after, "green"), gauge(&before, "green") - 1);
    assert_eq!(gauge(&after, "yellow"), gauge(&before, "yellow") + 1);
}

/// Snapshot A admits yellow at the checkpoint and accepts the Hubei issuer;
/// snapshot B does neither. A scan of a yellow holder's Hubei code gives
/// pass under A and unknown_issuer under B; a half-applied mix would give
/// deny/not_green. Scans run while the snapshot flips back and forth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_swaps_are_never_half_applied() {
    let t = TestGateway::start_with(Box::new(|c| {
        c.replace("[classes.metro]\nadmit = [\"green\"]", "[classes.metro]\nadmit = [\"green\", \"yellow\"]")
    }))
    .await;
    let a = t.config.clone();
    let b_text = std::fs::read_to_string(&a.path)
        .unwrap()
        .replace("[classes.metro]\nadmit = [\"green\", \"yellow\"]", "[classes.metro]\nadmit = [\"green\"]")
        .replace("accept_issuers = [\"hubei\", \"national\"]", "accept_issuers = [\"national\"]");
    let b_path = a.path.with_file_name("b.toml");
    std::fs::write(&b_path, b_text).unwrap();
    let b = healthgate::operations::config::Config::load(&b_path).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (gw, stop) = (t.gw.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let next = if n.is_multiple_of(2) { &b } else { &a };
                gw.swap_live(LiveConfig::from_config(next, 0));
                n += 1;
            }
            n
        })
    };
    let yellow = t.holder("yellow", 0);
    let metro = "wuhan-metro-wuchang-1";
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let s = t.scan(&t.code(yellow), metro, "out", None).await;
        assert!(
            ["pass/ok/yellow", "deny/unknown_issuer/unknown"].contains(&s.short().as_str()),
            "half-applied snapshot: {s:?}"
        );
        seen.insert(s.short());
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 10, "the snapshot was swapped {swaps} times");
    assert!(!seen.is_empty());
}

/// Reads until the server closes the connection (or 10 s pass, which fails).
async fn read_until_closed(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    match tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut answer)).await {
        Ok(_) => answer,
        Err(_) => panic!("the server kept the connection open"),
    }
}

#[tokio::test]
async fn connection_cap_rejects_fast_and_counts() {
    let t = TestGateway::start_with(Box::new(|c| c.replace("[server]\n", "[server]\nmax_connections = 2\n"))).await;
    let addr = t.env.public_url.trim_start_matches("http://").to_owned();
    // Two idle connections hold both permits.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(&addr).await.unwrap();
    let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    // Closed at once, without an answer.
    assert!(read_until_closed(&mut third).await.is_empty());
    assert!(t.metrics().await.contains("healthgate_rejected_connections_total{listener=\"public\"} 1"));
    // Once a permit is free, connections are served again.
    drop(held);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(t.get(&t.env.public_url.clone(), "/healthz", None).await.0, http::StatusCode::OK);
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let t = TestGateway::start_with(Box::new(|c| c.replace("[server]\n", "[server]\nheader_read_timeout_ms = 200\n")))
        .await;
    let addr = t.env.public_url.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    // Never finish the headers: the server closes the connection (with a
    // 408 or nothing).
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let answer = read_until_closed(&mut s).await;
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));
    // A connection that sends nothing at all is closed too.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    assert!(read_until_closed(&mut idle).await.is_empty());
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let t = TestGateway::start().await;
    let addr = t.env.public_url.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let big = format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-junk: {}\r\n\r\n", "a".repeat(64 * 1024));
    let _ = s.write_all(big.as_bytes()).await;
    let answer = read_until_closed(&mut s).await;
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&answer));
}

#[tokio::test]
async fn shutdown_turns_unready_and_returns() {
    let t = TestGateway::start().await;
    let key = t.key(Role::Inspector).to_owned();
    let url = t.env.public_url.clone();
    assert_eq!(t.get(&url, "/readyz", Some(&key)).await.0, http::StatusCode::OK);
    let gw = t.gw.clone();
    t.shutdown().await.expect("clean shutdown");
    assert!(!gw.is_ready());
    // The listener is gone.
    let addr = url.trim_start_matches("http://");
    assert!(std::net::TcpStream::connect(addr).is_err());
}
