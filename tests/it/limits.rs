//! Limits that match the machine: the real binary under a low open-file
//! limit (set on the child, as `ulimit -n` would). A configuration whose
//! connection caps cannot fit is refused at start; one that fits survives
//! a flood of idle connections with the admin listener answering and the
//! log taking scans. An address over the per-client cap is turned away
//! while others still get in.

use healthgate::operations::auth::Role;
use healthgate_tests::healthgate_bin;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The open-file limit (soft and hard) the child runs under.
const FILES: u64 = 256;

/// A demo deployment on free ports, its `[server]` section edited.
fn deployment(server: &str) -> (tempfile::TempDir, healthgate::operations::demo::Env) {
    let dir = tempfile::tempdir().unwrap();
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (public, admin) = (free(), free());
    let opts = healthgate::operations::demo::DemoOptions { size: 1_000, seed: 3, ..Default::default() };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut env = healthgate::operations::demo::prepare(dir.path(), &opts, &public, &admin, now).unwrap();
    env.public_url = format!("http://{public}");
    env.admin_url = format!("http://{admin}");
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, text.replace("[server]\n", &format!("[server]\n{server}\n"))).unwrap();
    (dir, env)
}

/// `healthgate serve` under an open-file limit of `files`.
fn serve_limited(env: &healthgate::operations::demo::Env, files: u64) -> Command {
    let mut cmd = Command::new(healthgate_bin());
    cmd.args(["serve", "--config", env.config.to_str().unwrap()]);
    // SAFETY: setrlimit is async-signal-safe and touches only the struct.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: files, rlim_max: files };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// One request with `Connection: close`; the whole answer ("" when the
/// connection could not be made or nothing came within 10 s).
fn http(addr: &str, method: &str, path: &str, key: &str, body: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn connection_caps_over_the_open_file_limit_are_refused_with_exit_64() {
    // The default public cap (10 000) under a limit of 256.
    let (_dir, env) = deployment("");
    let out = serve_limited(&env, FILES).stdout(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for n in ["server.max_connections (10000)", "server.admin_max_connections (256)", "limit is 256"] {
        assert!(err.contains(n), "the refusal should name {n:?}: {err}");
    }
    // Nothing was bound: the ports are still free.
    let public = env.public_url.trim_start_matches("http://");
    assert!(std::net::TcpListener::bind(public).is_ok(), "the public port was taken");
}

#[test]
fn an_idle_connection_flood_under_a_low_file_limit_leaves_admin_and_the_log_alive() {
    // 100 + 8 + the reserve fit in 256; a flood of 3x the public cap does not.
    let (_dir, env) = deployment("max_connections = 100\nadmin_max_connections = 8\nheader_read_timeout_ms = 5000");
    let child = serve_limited(&env, FILES).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let _running = Running(child);
    let (public, admin) = (
        env.public_url.trim_start_matches("http://").to_owned(),
        env.admin_url.trim_start_matches("http://").to_owned(),
    );
    let ready = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        http(&admin, "GET", "/readyz", "", "").starts_with("HTTP/1.1 200")
    });
    assert!(ready, "the gateway never became ready");

    // The flood: idle connections, three times the public cap.
    let mut flood: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(&public).ok()).collect();
    assert!(flood.len() >= 100, "only {} connections were made", flood.len());
    std::thread::sleep(Duration::from_millis(300));

    // The admin listener answers whatever the public side does.
    assert!(http(&admin, "GET", "/healthz", "", "").starts_with("HTTP/1.1 200"));
    let metrics = http(&admin, "GET", "/metrics", "", "");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics:.200}");
    assert!(metrics.contains("healthgate_log_failed 0"), "the log failed");
    let rejected = metrics
        .lines()
        .find(|l| l.starts_with("healthgate_rejected_connections_total{listener=\"public\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(rejected > 0, "nothing was refused at the cap:\n{metrics}");

    // Room is made by closing some of the flood; scans that get in are
    // decided and logged (strict logging answers only once durable).
    // (The first ones made are the ones the server kept.)
    flood.drain(..20);
    std::thread::sleep(Duration::from_millis(300));
    let key = env.api_key(Role::Turnstile).to_owned();
    let checkpoint = env.checkpoints["metro"][0].clone();
    let holder = env.holders["green"][0];
    let (kid, secret) = healthgate::operations::keyfiles::read_secret(&env.issuer_key).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let code = healthgate::token::Claims {
        kid,
        holder,
        issued_at: now,
        expires_at: now + 60,
        color: healthgate::Color::Green,
        serial: 77,
    }
    .sign(&secret)
    .unwrap();
    let body = serde_json::json!({ "code": code, "checkpoint": checkpoint }).to_string();
    let answer = http(&public, "POST", "/v1/scan", &key, &body);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"decision\":\"pass\""), "{answer}");
    // In the log, hence in the tracing index that follows it.
    let authority = env.api_key(Role::Authority).to_owned();
    let visits = (0..100)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            http(&admin, "GET", &format!("/v1/admin/holders/{holder}/visits"), &authority, "")
        })
        .find(|v| v.contains(&checkpoint))
        .unwrap_or_default();
    assert!(visits.starts_with("HTTP/1.1 200"), "the scan is not in the tracing index: {visits}");
    let metrics = http(&admin, "GET", "/metrics", "", "");
    assert!(metrics.contains("healthgate_log_failed 0") && metrics.contains("healthgate_ready 1"), "{metrics}");
    drop(flood);
}

/// Sends `GET /healthz` on `s` and reads the status line; `None` when the
/// server closed the connection instead of answering.
async fn healthz_status(s: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8_lossy(&buf).lines().next().map(str::to_owned)
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("an answer or a close")
}

#[tokio::test]
async fn an_address_over_the_per_client_cap_is_turned_away_and_let_in_once_it_closes_one() {
    use healthgate_tests::TestGateway;
    use tokio::net::{TcpSocket, TcpStream};
    let t =
        TestGateway::start_with(Box::new(|c| c.replace("[server]\n", "[server]\nmax_connections_per_client = 2\n")))
            .await;
    let public: std::net::SocketAddr = t.env.public_url.trim_start_matches("http://").parse().unwrap();
    let metrics = || async {
        t.metrics()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix("healthgate_rejected_connections_per_client_total ")?.trim().parse::<u64>().ok()
            })
            .expect("the per-client refusal counter is exported")
    };
    // From 127.0.0.1: two connections are served, a third is closed at once.
    let mut a = TcpStream::connect(public).await.unwrap();
    let mut b = TcpStream::connect(public).await.unwrap();
    assert!(healthz_status(&mut a).await.expect("first").contains("200"));
    assert!(healthz_status(&mut b).await.expect("second").contains("200"));
    let mut c = TcpStream::connect(public).await.unwrap();
    assert_eq!(healthz_status(&mut c).await, None, "a third connection from one address is closed");
    assert_eq!(metrics().await, 1);
    // Another address (127.0.0.2, also loopback) still gets in.
    let other = TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut d = other.connect(public).await.unwrap();
    assert!(healthz_status(&mut d).await.expect("another address").contains("200"));
    // Once one of the two closes, the address gets a place again (as soon
    // as the server has seen the close).
    drop(a);
    let mut served = false;
    for _ in 0..300 {
        let mut e = TcpStream::connect(public).await.unwrap();
        if healthz_status(&mut e).await.is_some_and(|l| l.contains("200")) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a place freed by a closed connection is given again");
    assert!(healthz_status(&mut b).await.expect("the second stays served").contains("200"));
}
