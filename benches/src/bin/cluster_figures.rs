//! The replication figures of docs/PERFORMANCE.md, measured on real
//! processes: a `nats-server` (JetStream on) and three `healthgate serve`
//! replicas on loopback, started from one demo deployment
//! (`scripts/cluster-bench.sh` builds the release binaries and runs this).
//!
//! 1. Authority batch acknowledged by replica A -> in force on B and C:
//!    the time from A's 200 until both report the new colour (each polled
//!    by its own thread over keep-alive HTTP).
//! 2. Fever at A -> deny at B: from A's answer to the scan until B reports
//!    the holder yellow (a metro gate then denies).
//! 3. Cost of a replicated effect on a receiver: A takes a burst of scans
//!    (each one effect: a registration and an anti-passback entry) while B
//!    and C only receive; the CPU time B's process spends from the burst's
//!    start until it has applied all of it, per effect, beside A's CPU time
//!    per scan served (both from /proc/<pid>/stat).
//! 4. Catch-up after a restart: C is SIGKILLed, A takes a burst, C starts
//!    again; effects per second from C's start to its /readyz 200 (ready
//!    means recovered and caught up with both streams).
//!
//! Usage: cluster_figures [--samples N] [--effects N] [--holders N]

use healthgate::clock::{Clock, SystemClock};
use healthgate::feed::{Change, UpdateBatch};
use healthgate::operations::auth::Role;
use healthgate::operations::demo::{DemoOptions, Env};
use healthgate::token::Claims;
use healthgate::{Color, HolderId};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A process stopped by its id when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A keep-alive HTTP/1.1 connection.
struct Conn {
    addr: String,
    r: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn new(addr: &str) -> Conn {
        Conn { addr: addr.to_owned(), r: None }
    }

    fn request(&mut self, method: &str, path: &str, key: &str, body: &str) -> anyhow::Result<(u16, String)> {
        if self.r.is_none() {
            let s = TcpStream::connect(&self.addr)?;
            s.set_nodelay(true)?;
            self.r = Some(BufReader::new(s));
        }
        let r = self.r.as_mut().expect("connected");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let sent = r.get_mut().write_all(req.as_bytes());
        let answer = sent.map_err(anyhow::Error::from).and_then(|()| read_answer(r));
        if answer.is_err() {
            self.r = None;
        }
        answer
    }
}

fn read_answer(r: &mut BufReader<TcpStream>) -> anyhow::Result<(u16, String)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line.get(9..12).ok_or_else(|| anyhow::anyhow!("no status line"))?.parse()?;
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse()?;
        }
        anyhow::ensure!(!lower.starts_with("transfer-encoding"), "chunked answers are not expected here");
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// CPU time (user + system) of a process so far.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).and_then(|u| u.parse().ok()).unwrap_or(0) + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

struct Replica {
    node: String,
    config: PathBuf,
    public: String,
    admin: String,
    proc: Option<Proc>,
}

impl Replica {
    fn start(&mut self, bin: &Path) {
        let log = std::fs::File::create(self.config.with_file_name(format!("{}.log", self.node))).expect("log");
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start healthgate");
        self.proc = Some(Proc(child));
    }

    fn pid(&self) -> u32 {
        self.proc.as_ref().expect("running").0.id()
    }

    fn ready(&self) -> bool {
        Conn::new(&self.admin).request("GET", "/readyz", "", "").is_ok_and(|(s, _)| s == 200)
    }

    fn wait_ready(&self) {
        let t = Instant::now();
        while !self.ready() {
            assert!(t.elapsed() < Duration::from_secs(600), "replica {} not ready", self.node);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The `/readyz` cluster detail.
    fn status(&self) -> serde_json::Value {
        let (_, body) = Conn::new(&self.admin).request("GET", "/readyz", "", "").unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["cluster"].clone()
    }

    fn applied(&self, stream: &str) -> u64 {
        self.status()[stream]["applied"].as_u64().unwrap_or(0)
    }

    /// Stops it with SIGTERM (a clean stop: a last snapshot and the stream
    /// positions are written).
    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            // SAFETY: kill with a pid we started and have not reaped yet.
            unsafe { libc::kill(p.0.id() as libc::pid_t, libc::SIGTERM) };
            let _ = p.0.wait();
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_name() == "data" {
            continue;
        }
        if e.file_type().expect("type").is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Polls `replica`'s status of `h` until its colour is `want`; returns when.
fn wait_color(admin_key: &str, public: &str, h: HolderId, want: &str) -> Instant {
    let mut c = Conn::new(public);
    let path = format!("/v1/holders/{h}");
    let needle = format!("\"color\":\"{want}\"");
    let t = Instant::now();
    loop {
        if c.request("GET", &path, admin_key, "").is_ok_and(|(_, b)| b.contains(&needle)) {
            return Instant::now();
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{h} never became {want} at {public}");
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut samples, mut effects, mut holders) = (200usize, 40_000usize, 200_000u64);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| anyhow::anyhow!("{a} needs a value"));
        match a.as_str() {
            "--samples" => samples = val()?.parse()?,
            "--effects" => effects = val()?.parse()?,
            "--holders" => holders = val()?.parse()?,
            _ => anyhow::bail!("usage: cluster_figures [--samples N] [--effects N] [--holders N]"),
        }
    }
    let bin = std::env::current_exe()?.with_file_name("healthgate");
    anyhow::ensure!(bin.exists(), "{} is missing: cargo build --release -p healthgate", bin.display());
    let dir = tempfile::tempdir()?;
    let nats_port = free_port();
    let _nats = Proc(
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &nats_port.to_string(), "-js", "-sd"])
            .arg(dir.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("nats-server (Debian package nats-server): {e}"))?,
    );
    while TcpStream::connect(("127.0.0.1", nats_port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let base = dir.path().join("demo");
    let opts = DemoOptions { size: holders, seed: 11, ..Default::default() };
    let env: Env =
        healthgate::operations::demo::prepare(&base, &opts, "127.0.0.1:0", "127.0.0.1:0", SystemClock.now())?;
    let mut reps: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|node| {
            let home = dir.path().join(node);
            copy_tree(&base, &home);
            let config = home.join(env.config.file_name().expect("name"));
            let (public, admin) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
            let text = std::fs::read_to_string(&config)
                .expect("config")
                .replace("public_addr = \"127.0.0.1:0\"", &format!("public_addr = \"{public}\""))
                .replace("admin_addr = \"127.0.0.1:0\"", &format!("admin_addr = \"{admin}\""));
            let text = format!("{text}\n[cluster]\nnode = \"{node}\"\nnats_url = \"nats://127.0.0.1:{nats_port}\"\n");
            std::fs::write(&config, text).expect("config");
            Replica { node: (*node).to_owned(), config, public, admin, proc: None }
        })
        .collect();
    for r in &mut reps {
        r.start(&bin);
    }
    for r in &reps {
        r.wait_ready();
    }
    let pop = env.population;
    let greens: Vec<HolderId> =
        (0..pop.size).filter(|&i| pop.color(i) == Color::Green).map(|i| pop.holder(i)).collect();
    anyhow::ensure!(greens.len() > 2 * samples + 2 * effects + 10, "too few holders: raise --holders");
    let (akid, authority) = healthgate::operations::keyfiles::read_secret(&env.authority_key)?;
    let (ikid, issuer) = healthgate::operations::keyfiles::read_secret(&env.issuer_key)?;
    let auth_key = env.api_key(Role::Authority).to_owned();
    let turnstile = env.api_key(Role::Turnstile).to_owned();
    let metro = env.checkpoints["metro"][0].clone();
    let rail = env.checkpoints["rail"][0].clone();
    let code = |h: HolderId, serial: u64| {
        let now = SystemClock.now();
        Claims { kid: ikid, holder: h, issued_at: now, expires_at: now + 120, color: Color::Green, serial }
            .sign(&issuer)
            .expect("sign")
    };
    let mut next = 0usize;
    let mut take = || {
        next += 1;
        greens[next - 1]
    };
    println!(
        "machine: {} cores, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    // 1. Authority batch: A's acknowledgement -> in force on B and C.
    let mut a_admin = Conn::new(&reps[0].admin);
    let mut batch_lat = Vec::with_capacity(samples);
    for seq in 1..=samples as u64 {
        let h = take();
        let b = UpdateBatch {
            seq,
            kid: String::new(),
            changes: vec![Change { holder: h, color: Color::Red, steps: vec![] }],
            signature: String::new(),
        }
        .sign(akid, &authority)?;
        let body = serde_json::to_string(&b)?;
        let (ak, (pb, pc)) = (auth_key.clone(), (reps[1].public.clone(), reps[2].public.clone()));
        let acked = std::thread::scope(|s| {
            let tb = s.spawn(|| wait_color(&ak, &pb, h, "red"));
            let tc = s.spawn(|| wait_color(&ak, &pc, h, "red"));
            let (st, answer) = a_admin.request("POST", "/v1/admin/updates", &auth_key, &body).expect("post");
            assert_eq!(st, 200, "{answer}");
            let acked = Instant::now();
            let done = tb.join().expect("b").max(tc.join().expect("c"));
            done.saturating_duration_since(acked)
        });
        batch_lat.push(acked);
    }
    println!(
        "authority batch acknowledged by A -> in force on B and C: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({samples} batches)",
        ms(percentile(&mut batch_lat, 0.5)),
        ms(percentile(&mut batch_lat, 0.99)),
        ms(percentile(&mut batch_lat, 1.0))
    );

    // 2. Fever at A -> B denies.
    let mut a_public = Conn::new(&reps[0].public);
    let mut fever_lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let h = take();
        let body = serde_json::json!({"code": code(h, i as u64 + 1), "checkpoint": rail, "direction": "in", "temperature_c": 38.6}).to_string();
        let (ak, pb) = (auth_key.clone(), reps[1].public.clone());
        let lat = std::thread::scope(|s| {
            let tb = s.spawn(|| wait_color(&ak, &pb, h, "yellow"));
            let (st, answer) = a_public.request("POST", "/v1/scan", &turnstile, &body).expect("scan");
            assert!(st == 200 && answer.contains("\"deny\""), "{answer}");
            let answered = Instant::now();
            tb.join().expect("b").saturating_duration_since(answered)
        });
        fever_lat.push(lat);
    }
    println!(
        "fever at A -> yellow (denied) at B: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({samples} fevers)",
        ms(percentile(&mut fever_lat, 0.5)),
        ms(percentile(&mut fever_lat, 0.99)),
        ms(percentile(&mut fever_lat, 1.0))
    );

    // A burst of `effects` scans at A over 8 connections (codes signed
    // before the clock starts).
    let a_public_addr = reps[0].public.clone();
    let burst = |holders: &[HolderId], serial0: u64| {
        let bodies: Vec<String> = holders
            .iter()
            .enumerate()
            .map(|(i, h)| {
                serde_json::json!({"code": code(*h, serial0 + i as u64), "checkpoint": metro, "direction": "in"})
                    .to_string()
            })
            .collect();
        let t = Instant::now();
        std::thread::scope(|s| {
            for part in bodies.chunks(bodies.len().div_ceil(8)) {
                let (addr, key) = (a_public_addr.clone(), turnstile.clone());
                s.spawn(move || {
                    let mut c = Conn::new(&addr);
                    for b in part {
                        let (st, answer) = c.request("POST", "/v1/scan", &key, b).expect("scan");
                        assert!(st == 200 && answer.contains("\"pass\""), "{answer}");
                    }
                });
            }
        });
        t.elapsed()
    };

    // 3. Cost of a replicated effect on a receiver.
    let hs: Vec<HolderId> = (0..effects).map(|_| take()).collect();
    let records_before = reps[1].applied("records");
    let (a0, b0) = (cpu_of(reps[0].pid()), cpu_of(reps[1].pid()));
    let took = burst(&hs, 1_000_000);
    let a1 = cpu_of(reps[0].pid());
    let end = {
        // Wait for A to have shipped the burst and read its own messages
        // back (its position is then the stream's end), then for B. Polled
        // every 50 ms, so that the polling costs B little.
        let t = Instant::now();
        let target = loop {
            let a = reps[0].status();
            if a["shipper"]["backlog"] == 0
                && a["records"]["lag_messages"] == 0
                && reps[0].applied("records") > records_before
            {
                break a["records"]["applied"].as_u64().unwrap_or(0);
            }
            assert!(t.elapsed() < Duration::from_secs(300), "A never shipped the burst");
            std::thread::sleep(Duration::from_millis(50));
        };
        while reps[1].applied("records") < target {
            assert!(t.elapsed() < Duration::from_secs(300), "B never applied the burst");
            std::thread::sleep(Duration::from_millis(50));
        }
        cpu_of(reps[1].pid())
    };
    let per_scan_a = (a1 - a0).as_secs_f64() * 1e6 / effects as f64;
    let per_effect_b = (end - b0).as_secs_f64() * 1e6 / effects as f64;
    println!(
        "burst of {effects} scans at A in {:.2} s ({:.0}/s); CPU at A {per_scan_a:.1} us a scan served; CPU at B {per_effect_b:.1} us an effect applied (ratio {:.2})",
        took.as_secs_f64(),
        effects as f64 / took.as_secs_f64(),
        per_effect_b / per_scan_a
    );

    // 4. Catch-up after a restart: C stopped (cleanly, so that what it
    // missed is exactly the burst), A takes the burst, C starts again.
    reps[2].stop();
    let hs: Vec<HolderId> = (0..effects).map(|_| take()).collect();
    burst(&hs, 2_000_000);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    reps[2].start(&bin);
    reps[2].wait_ready();
    let catch_up = t.elapsed();
    println!(
        "catch-up: C restarted after {effects} effects it missed; from its start to ready (recovered and caught up) {:.2} s: {:.0} effects/s",
        catch_up.as_secs_f64(),
        effects as f64 / catch_up.as_secs_f64()
    );
    Ok(())
}
