//! kill -9 never loses an acknowledged registration, check-in or update:
//! the real binary is killed at random moments while clients scan, check in
//! and push at once, then restarted, twenty times over
//! (`HEALTHGATE_KILL_ROUNDS` sets another count: `scripts/kill-loop.sh`
//! runs 100); afterwards everything acknowledged is there exactly once.

use healthgate::clock::{Clock, SystemClock};
use healthgate::feed::{Change, UpdateBatch};
use healthgate::operations::auth::Role;
use healthgate::operations::demo::{DemoOptions, Env};
use healthgate::token::Claims;
use healthgate::{Color, HolderId};
use healthgate_tests::healthgate_bin;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Rounds in the test suite; `HEALTHGATE_KILL_ROUNDS` overrides it.
const ROUNDS: usize = 20;

fn rounds() -> usize {
    match std::env::var("HEALTHGATE_KILL_ROUNDS") {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("HEALTHGATE_KILL_ROUNDS={v:?} is not a count")),
        Err(_) => ROUNDS,
    }
}

/// One HTTP/1.1 request on a fresh connection; `None` on any transport error
/// (the server was killed).
fn http(addr: &str, method: &str, path: &str, key: &str, body: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// Visits in a JSON-lines answer (the body is chunked: count the records).
fn visits(body: &str) -> usize {
    body.lines().filter(|l| l.starts_with('{')).count()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A small deterministic generator: the seed is printed, so a failure can
/// be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[derive(Default)]
struct Acked {
    scans: Vec<HolderId>,
    checkins: Vec<HolderId>,
    /// (sequence, holder) of acknowledged colour updates.
    updates: Vec<(u64, HolderId)>,
}

fn wait_ready(admin: &str, child: &mut std::process::Child) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("gateway exited while starting: {status}");
        }
        if http(admin, "GET", "/readyz", "", "").is_some_and(|(s, _)| s == 200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("gateway not ready within 60 s");
}

#[test]
fn kill_nine_never_loses_an_acknowledgement() {
    let _heavy = healthgate_tests::tools::heavy();
    let dir = tempfile::tempdir().unwrap();
    let (public, admin) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let now = SystemClock.now();
    let opts = DemoOptions { size: 20_000, seed: 3, ..Default::default() };
    let env: Env = healthgate::operations::demo::prepare(dir.path(), &opts, &public, &admin, now).unwrap();
    let (kid, issuer) = healthgate::operations::keyfiles::read_secret(&env.issuer_key).unwrap();
    let (akid, authority) = healthgate::operations::keyfiles::read_secret(&env.authority_key).unwrap();
    let turnstile = env.api_key(Role::Turnstile).to_owned();
    let auth_key = env.api_key(Role::Authority).to_owned();
    let pop = env.population;
    // Every scan is of a different green holder and every update of a
    // different new holder: "distinct ids".
    let greens: Vec<HolderId> =
        (0..pop.size).filter(|&i| pop.color(i) == Color::Green).map(|i| pop.holder(i)).collect();
    let seed = now;
    eprintln!("kill loop seed {seed}");
    let mut rng = Lcg(seed);
    let acked = Arc::new(Mutex::new(Acked::default()));
    let next_scan = Arc::new(AtomicUsize::new(0));
    let next_seq = Arc::new(AtomicU64::new(1));
    let next_checkin = Arc::new(AtomicUsize::new(0));
    let mut kills = 0;
    let rounds = rounds();

    for round in 0..rounds {
        let log = std::fs::File::create(dir.path().join(format!("gateway-{round}.log"))).unwrap();
        let mut child = Command::new(healthgate_bin())
            .args(["serve", "--config", env.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_ready(&admin, &mut child);
        let stop = Arc::new(AtomicBool::new(false));
        // Three clients at once: scans, check-ins, authority pushes.
        let clients: Vec<_> = (0..3).map(|role| {
            let (stop, acked, next_scan, next_seq) = (stop.clone(), acked.clone(), next_scan.clone(), next_seq.clone());
            let next_checkin = next_checkin.clone();
            let (public, admin, turnstile, auth_key, greens) =
                (public.clone(), admin.clone(), turnstile.clone(), auth_key.clone(), greens.clone());
            let (issuer, authority) = (issuer.clone(), authority.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if role == 2 {
                        // A check-in of a holder no scan touches (from the
                        // other end of the greens).
                        let k = next_checkin.fetch_add(1, Ordering::Relaxed);
                        let holder = greens[greens.len() - 1 - k];
                        let t = SystemClock.now();
                        let code = Claims {
                            kid,
                            holder,
                            issued_at: t,
                            expires_at: t + 60,
                            color: Color::Green,
                            serial: 1_000_000 + k as u64,
                        }
                        .sign(&issuer)
                        .unwrap();
                        let body = serde_json::json!({ "code": code, "temperature_c": 36.5 }).to_string();
                        match http(&public, "POST", "/v1/checkins", "", &body) {
                            Some((200, _)) => acked.lock().unwrap().checkins.push(holder),
                            Some((409, _)) => {} // durable but never acknowledged before a kill
                            Some((s, body)) if s != 503 => panic!("check-in answered {s}: {body}"),
                            _ => {}
                        }
                        // Check-ins are rarer than scans.
                        std::thread::sleep(Duration::from_millis(5));
                    } else if role == 1 {
                        let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                        let holder = pop.stranger(seq);
                        let b = UpdateBatch {
                            seq,
                            kid: String::new(),
                            changes: vec![Change { holder, color: Color::Red, steps: vec![] }],
                            signature: String::new(),
                        }
                        .sign(akid, &authority)
                        .unwrap();
                        match http(&admin, "POST", "/v1/admin/updates", &auth_key, &serde_json::to_string(&b).unwrap())
                        {
                            Some((200, _)) => acked.lock().unwrap().updates.push((seq, holder)),
                            Some((409, _)) => {} // a number used by a batch that was durable but never acknowledged
                            Some((s, body)) if s != 503 => panic!("update answered {s}: {body}"),
                            _ => {}
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    } else {
                        let i = next_scan.fetch_add(1, Ordering::Relaxed);
                        let holder = greens[i];
                        let t = SystemClock.now();
                        let code = Claims {
                            kid,
                            holder,
                            issued_at: t,
                            expires_at: t + 60,
                            color: Color::Green,
                            serial: i as u64,
                        }
                        .sign(&issuer)
                        .unwrap();
                        let body = serde_json::json!({ "code": code, "checkpoint": "wuhan-metro-wuchang-1", "direction": "in" }).to_string();
                        match http(&public, "POST", "/v1/scan", &turnstile, &body) {
                            Some((200, answer)) => {
                                assert!(answer.contains("\"pass\""), "{answer}");
                                acked.lock().unwrap().scans.push(holder);
                            }
                            Some((s, body)) if s != 503 => panic!("scan answered {s}: {body}"),
                            _ => {}
                        }
                    }
                }
            })
        }).collect();
        // Kill at a random moment, but only once this round has carried
        // some traffic (a loaded machine may take a while to answer the
        // first requests), so that every round proves something.
        let before = acked.lock().unwrap().scans.len();
        std::thread::sleep(Duration::from_millis(100 + rng.next(300)));
        let waiting = Instant::now();
        while acked.lock().unwrap().scans.len() < before + 8 && waiting.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10 + rng.next(20)));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
    }
    assert_eq!(kills, rounds);

    let mut child = Command::new(healthgate_bin())
        .args(["serve", "--config", env.config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(&admin, &mut child);
    let acked = acked.lock().unwrap();
    assert!(
        acked.scans.len() > 100 && !acked.updates.is_empty() && !acked.checkins.is_empty(),
        "too little traffic to prove anything: {} scans, {} check-ins, {} updates",
        acked.scans.len(),
        acked.checkins.len(),
        acked.updates.len()
    );
    for h in &acked.scans {
        let (s, body) = http(&admin, "GET", &format!("/v1/admin/holders/{h}/visits"), &auth_key, "").expect("query");
        assert_eq!(s, 200);
        assert_eq!(visits(&body), 1, "acknowledged scan of {h}: {body}");
        // The scan's effect on the state (the holder is inside the station) survived too.
        let (_, status) =
            http(&public, "GET", &format!("/v1/holders/{h}"), env.api_key(Role::Inspector), "").expect("status");
        assert!(status.contains("\"inside\":true"), "{status}");
    }
    for (seq, h) in &acked.updates {
        let (s, status) =
            http(&public, "GET", &format!("/v1/holders/{h}"), env.api_key(Role::Inspector), "").expect("status");
        assert_eq!(s, 200, "acknowledged update {seq} for {h} lost");
        assert!(status.contains("\"color\":\"red\""), "{status}");
    }
    // An acknowledged check-in is remembered: a second one today is refused.
    let scanned = next_scan.load(Ordering::Relaxed);
    let checked = next_checkin.load(Ordering::Relaxed);
    assert!(scanned + checked < greens.len(), "scans and check-ins met in the middle of the greens");
    for h in &acked.checkins {
        let t = SystemClock.now();
        let code = Claims { kid, holder: *h, issued_at: t, expires_at: t + 60, color: Color::Green, serial: 7 }
            .sign(&issuer)
            .unwrap();
        let body = serde_json::json!({ "code": code, "temperature_c": 36.5 }).to_string();
        let (s, answer) = http(&public, "POST", "/v1/checkins", "", &body).expect("check-in");
        assert_eq!(s, 409, "acknowledged check-in of {h} lost: {answer}");
    }
    let (_, feed) = http(&admin, "GET", "/v1/admin/feed", &auth_key, "").expect("feed");
    let last: serde_json::Value = serde_json::from_str(&feed).unwrap();
    let max_acked = acked.updates.iter().map(|(s, _)| *s).max().unwrap();
    assert!(last["last_seq"].as_u64().unwrap() >= max_acked, "{feed}");
    // No scan was registered twice, acknowledged or not.
    for h in &greens[..scanned] {
        let (_, body) = http(&admin, "GET", &format!("/v1/admin/holders/{h}/visits"), &auth_key, "").expect("query");
        assert!(visits(&body) <= 1, "{h} registered twice: {body}");
    }
    eprintln!(
        "kill loop: {rounds} kills, {} acknowledged scans of {scanned} sent, {} acknowledged check-ins of {checked}, {} acknowledged updates",
        acked.scans.len(),
        acked.checkins.len(),
        acked.updates.len()
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
