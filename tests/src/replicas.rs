//! Replicas as real `healthgate serve` processes, for the fault tests that
//! must SIGKILL a replica or put it behind a network partition.
//!
//! - [`Deployment`]: one demo deployment every replica copies (same keys,
//!   trust list, policy and seed state), each copy with its own data
//!   directory, listeners and `[cluster]` section;
//! - [`Replica`]: one process, started (optionally inside a network
//!   namespace), SIGKILLed and restarted by its process id, spoken to over
//!   plain HTTP/1.1;
//! - [`Lab`]: network namespaces joined by veth pairs, with partitions made
//!   by blackhole routes and optional `tc netem` delay; every name is unique
//!   to the run and everything is removed when the lab is dropped.
//!
//! A test reaches a listener inside a namespace from a short-lived thread
//! that has entered it (`setns`): sockets belong to the namespace they were
//! made in, so no address is ever added outside the lab's own namespaces.

use healthgate::clock::{Clock, SystemClock};
use healthgate::operations::auth::Role;
use healthgate::operations::demo::{DemoOptions, Env};
use healthgate::token::Claims;
use healthgate::{Color, HolderId};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Runs `f` on a thread that has entered network namespace `ns` (or in
/// this one when `None`).
pub fn in_netns<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> T {
    let Some(ns) = ns else { return f() };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("netns {ns}: {e}"));
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace descriptor changes only this
            // thread's network namespace; the thread ends with the scope.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns into {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in netns")
    })
}

/// One HTTP/1.1 request on a fresh connection (`connection: close`); the
/// status and the body (de-chunked). `None` on any transport error.
pub fn http(ns: Option<&str>, addr: &str, method: &str, path: &str, key: &str, body: &str) -> Option<(u16, String)> {
    let (addr, method, path, key, body) = (addr.to_owned(), method.to_owned(), path.to_owned(), key.to_owned(), body);
    in_netns(ns, move || {
        let sock: std::net::SocketAddr = addr.parse().ok()?;
        let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(40))).ok()?;
        let auth = if key.is_empty() { String::new() } else { format!("authorization: Bearer {key}\r\n") };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).ok()?;
        let out = String::from_utf8_lossy(&out).into_owned();
        let status = out.get(9..12)?.parse().ok()?;
        let (head, rest) = out.split_once("\r\n\r\n")?;
        let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
        Some((status, if chunked { dechunk(rest)? } else { rest.to_owned() }))
    })
}

fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        s = rest.get(n + 2..)?;
    }
}

/// One demo deployment the replicas copy.
pub struct Deployment {
    base: tempfile::TempDir,
    pub env: Env,
}

/// Copies a deployment's folder, all but its `data` (each replica's own).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let name = e.file_name();
        if name == "data" {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if e.file_type().expect("type").is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

impl Deployment {
    pub fn new(size: u64) -> Deployment {
        let base = tempfile::tempdir().expect("tempdir");
        let opts = DemoOptions { size, seed: 7, ..Default::default() };
        let env =
            healthgate::operations::demo::prepare(base.path(), &opts, "127.0.0.1:0", "127.0.0.1:0", SystemClock.now())
                .expect("demo");
        // The manifest the load generator reads (`healthgate demo` writes it).
        env.write(base.path()).expect("env.json");
        Deployment { base, env }
    }

    /// A replica named `node` on its own copy of the deployment, not
    /// started yet. Inside a namespace it listens on fixed ports of that
    /// namespace's loopback; outside, on free ports of 127.0.0.1. Snapshots
    /// are taken every second, so that a kill finds one to recover from.
    pub fn replica(&self, node: &str, nats_url: &str, ns: Option<&str>) -> Replica {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_tree(self.base.path(), dir.path());
        let rel = self.env.config.strip_prefix(self.base.path()).expect("config inside the demo");
        let mut env = self.env.clone();
        env.config = dir.path().join(rel);
        let (public, admin) = match ns {
            Some(_) => ("127.0.0.1:18080".to_owned(), "127.0.0.1:18081".to_owned()),
            None => (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port())),
        };
        let text = std::fs::read_to_string(&env.config).expect("config");
        let text = text
            .replace("public_addr = \"127.0.0.1:0\"", &format!("public_addr = \"{public}\""))
            .replace("admin_addr = \"127.0.0.1:0\"", &format!("admin_addr = \"{admin}\""));
        let text = format!(
            "{text}\n[log]\nsnapshot_interval_s = 1\n\n[cluster]\nnode = \"{node}\"\nnats_url = \"{nats_url}\"\nconnect_timeout_ms = 3000\n"
        );
        std::fs::write(&env.config, text).expect("config");
        env.public_url = format!("http://{public}");
        env.admin_url = format!("http://{admin}");
        let ep = Endpoint { node: node.to_owned(), ns: ns.map(str::to_owned), public, admin, env };
        Replica { ep, dir, child: None, starts: 0 }
    }
}

/// A replica process.
pub struct Replica {
    ep: Endpoint,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    starts: usize,
}

/// Where a replica answers, and what a client needs to speak to it: clone
/// it into client threads while the test kills and restarts the process.
#[derive(Clone)]
pub struct Endpoint {
    pub node: String,
    pub ns: Option<String>,
    pub public: String,
    pub admin: String,
    pub env: Env,
}

impl std::ops::Deref for Replica {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.ep
    }
}

static SERIAL: AtomicU64 = AtomicU64::new(1);

impl Replica {
    /// Starts the process (stderr to `gateway-<n>.log` in its folder).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.node);
        self.starts += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("gateway-{}.log", self.starts))).expect("log");
        let bin = crate::healthgate_bin();
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["serve", "--config"]).arg(&self.env.config).stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().expect("start healthgate"));
    }

    /// Starts it and waits until `/readyz` says 200.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_ready(Duration::from_secs(60));
    }

    pub fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("replica {} exited while starting: {status}\n{}", self.node, self.log_tail());
            }
            if self.get("/readyz", "").is_some_and(|(s, _)| s == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "replica {} not ready in {limit:?}\n{}", self.node, self.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, by process id; waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL"); // std sends SIGKILL
            c.wait().expect("wait");
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The last lines of the newest log.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join(format!("gateway-{}.log", self.starts))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Every log this replica wrote, oldest first.
    pub fn logs(&self) -> Vec<String> {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.dir.path().join(format!("gateway-{n}.log"))).unwrap_or_default())
            .collect()
    }

    pub fn endpoint(&self) -> Endpoint {
        self.ep.clone()
    }
}

impl Endpoint {
    pub fn key(&self, role: Role) -> String {
        self.env.api_key(role).to_owned()
    }

    pub fn get(&self, path: &str, key: &str) -> Option<(u16, String)> {
        let url = if path.starts_with("/v1/admin") || ["/readyz", "/metrics"].contains(&path) {
            &self.admin
        } else {
            &self.public
        };
        http(self.ns.as_deref(), url, "GET", path, key, "")
    }

    pub fn post(&self, admin: bool, path: &str, key: &str, body: &str) -> Option<(u16, String)> {
        http(self.ns.as_deref(), if admin { &self.admin } else { &self.public }, "POST", path, key, body)
    }

    /// `/readyz` as JSON (`Null` when unreachable).
    pub fn readyz(&self) -> serde_json::Value {
        self.get("/readyz", "").and_then(|(_, b)| serde_json::from_str(&b).ok()).unwrap_or(serde_json::Value::Null)
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics", "").map(|(_, b)| b).unwrap_or_default()
    }

    /// A fresh code for `holder`, valid for a minute from now.
    pub fn code(&self, holder: HolderId) -> String {
        let (kid, key) = healthgate::operations::keyfiles::read_secret(&self.env.issuer_key).expect("key");
        let now = SystemClock.now();
        Claims {
            kid,
            holder,
            issued_at: now,
            expires_at: now + 60,
            color: Color::Green,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
        }
        .sign(&key)
        .expect("sign")
    }

    /// Scans `holder` at `checkpoint`; the answer, or `None` if there was
    /// none (not acknowledged).
    pub fn scan(&self, holder: HolderId, checkpoint: &str, direction: &str, temp: Option<f64>) -> Option<Answer> {
        let mut body = serde_json::json!({"code": self.code(holder), "checkpoint": checkpoint, "direction": direction});
        if let Some(t) = temp {
            body["temperature_c"] = t.into();
        }
        let (s, b) = self.post(false, "/v1/scan", &self.key(Role::Turnstile), &body.to_string())?;
        Some(Answer { status: s, body: serde_json::from_str(&b).unwrap_or(serde_json::Value::String(b)) })
    }

    /// A daily check-in by `holder` with a temperature.
    pub fn checkin(&self, holder: HolderId, temp: f64) -> Option<Answer> {
        let body = serde_json::json!({"code": self.code(holder), "temperature_c": temp, "symptoms": []});
        let (s, b) = self.post(false, "/v1/checkins", "", &body.to_string())?;
        Some(Answer { status: s, body: serde_json::from_str(&b).unwrap_or(serde_json::Value::String(b)) })
    }

    /// Signs and posts an update batch (`revocation: false`) or a
    /// revocation batch with the demo authority key.
    pub fn post_batch(&self, body: &serde_json::Value, revocation: bool) -> Option<(u16, String)> {
        let path = if revocation { "/v1/admin/revocations" } else { "/v1/admin/updates" };
        self.post(true, path, &self.key(Role::Authority), &body.to_string())
    }

    /// The holder's effective colour (status API).
    pub fn color_of(&self, h: HolderId) -> Option<String> {
        let (s, b) = self.get(&format!("/v1/holders/{h}"), &self.key(Role::Authority))?;
        let v: serde_json::Value = serde_json::from_str(&b).ok()?;
        (s == 200).then(|| v["color"].as_str().unwrap_or_default().to_owned())
    }

    /// JSON lines of an admin answer (authority key).
    pub fn admin_lines(&self, path: &str) -> Option<Vec<serde_json::Value>> {
        let (s, b) = self.get(path, &self.key(Role::Authority))?;
        if s != 200 {
            return None;
        }
        b.lines().map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The state digest line: (digest, revocations digest, authority seq).
    pub fn digest(&self) -> Option<(String, String, u64)> {
        let l = self.admin_lines("/v1/admin/cluster/state")?.into_iter().next()?;
        Some((l["digest"].to_string(), l["revocations_digest"].to_string(), l["feed_seq"].as_u64()?))
    }

    /// Every holder's state, sorted by holder.
    pub fn dump(&self) -> Option<Vec<serde_json::Value>> {
        let mut lines = self.admin_lines("/v1/admin/cluster/state?holders=1")?;
        lines.remove(0);
        lines.sort_by(|a, b| a["holder"].as_str().cmp(&b["holder"].as_str()));
        Some(lines)
    }

    /// `(node, checkpoint, at)` of every registration of `h` in this
    /// replica's cluster-wide tracing answer, sorted.
    /// A holder's cluster-wide tracing answer. A 503 (the index still
    /// behind what is durable, or the query shed under load) is an answer
    /// to ask again, as a client would; `None` if none came within 30 s.
    pub fn visits_of(&self, h: HolderId) -> Option<Vec<(String, String, u64)>> {
        let path = format!("/v1/admin/holders/{h}/visits");
        let deadline = Instant::now() + Duration::from_secs(30);
        let lines = loop {
            match self.admin_lines(&path) {
                Some(lines) => break lines,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                None => return None,
            }
        };
        let mut v: Vec<_> = lines
            .into_iter()
            .map(|l| {
                (
                    l["node"].as_str().unwrap_or_default().to_owned(),
                    l["checkpoint"].as_str().unwrap_or_default().to_owned(),
                    l["at"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        v.sort();
        Some(v)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // Keep the logs, data and last state dump for whoever reads the failure.
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
            eprintln!("replica {}: files kept in {}", self.node, dir.display());
        }
    }
}

/// An answer to a scan or check-in.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Answer {
    pub fn decision(&self) -> &str {
        self.body["decision"].as_str().unwrap_or_default()
    }
}

/// Waits (bounded) until `f` holds.
pub fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "never happened within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every running replica reports the same digest, then
/// compares them holder by holder.
pub fn converge(replicas: &[&Replica], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let ds: Vec<_> = replicas.iter().map(|r| r.digest()).collect();
        if ds.iter().all(Option::is_some) && ds.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        if Instant::now() > deadline {
            for r in replicas {
                if let Some(d) = r.dump() {
                    let lines: Vec<String> = d.iter().map(|l| l.to_string()).collect();
                    let _ = std::fs::write(r.dir.path().join("state-dump.jsonl"), lines.join("\n"));
                }
            }
            let status: Vec<_> = replicas.iter().map(|r| r.readyz()).collect();
            let summaries: Vec<_> =
                replicas.iter().map(|r| r.admin_lines("/v1/admin/cluster/state").map(|mut l| l.remove(0))).collect();
            panic!(
                "replicas never converged within {limit:?}: {summaries:#?}\nreadyz {status:#?}\nholders that differ: {}",
                holder_differences(replicas)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = replicas[0].dump().expect("dump");
    for r in &replicas[1..] {
        let d = r.dump().expect("dump");
        assert_eq!(d.len(), first.len(), "{} and {} hold different holders", replicas[0].node, r.node);
        for (x, y) in first.iter().zip(&d) {
            assert_eq!(x, y, "holder by holder: {} vs {}", replicas[0].node, r.node);
        }
    }
}

/// The first holders whose lines differ between the first replica and
/// each other one (for a failure's message).
fn holder_differences(replicas: &[&Replica]) -> String {
    let Some(first) = replicas[0].dump() else { return "no dump".into() };
    let mut out = String::new();
    for r in &replicas[1..] {
        let Some(d) = r.dump() else { continue };
        for (x, y) in first.iter().zip(&d).filter(|(x, y)| x != y).take(5) {
            out.push_str(&format!("\n{}: {x}\n{}: {y}", replicas[0].node, r.node));
        }
    }
    out
}

/// Network namespaces and veth links made by one test run.
pub struct Lab {
    id: String,
    namespaces: Vec<String>,
    links: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip (Debian iproute2): {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()))
    }
}

impl Lab {
    /// A new lab; panics with the reason when network namespaces cannot be
    /// made here (the tests need root and iproute2: they never pass
    /// without doing what they say).
    pub fn new() -> Lab {
        static N: AtomicU64 = AtomicU64::new(0);
        let tag = (std::process::id() as u64) << 8 | N.fetch_add(1, Ordering::Relaxed);
        let lab = Lab { id: format!("hg{:06x}", tag & 0xff_ffff), namespaces: Vec::new(), links: 0 };
        if let Err(e) = ip(&["netns", "list"]) {
            panic!("network namespaces are not available: {e}. These partition tests need root and iproute2 (scripts/test.sh installs it)");
        }
        lab
    }

    /// A namespace of the lab, its loopback up; returns its name.
    pub fn namespace(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.id);
        if let Err(e) = ip(&["netns", "add", &name]) {
            panic!(
                "cannot make a network namespace ({e}). These partition tests need root (CAP_SYS_ADMIN) and iproute2; they do not pass without one"
            );
        }
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]).expect("loopback up");
        name
    }

    /// Joins namespaces `a` and `b` with a veth pair on a /30 of
    /// 10.77.0.0/16; returns (address in a, address in b, device in a,
    /// device in b).
    pub fn link(&mut self, a: &str, b: &str) -> (String, String, String, String) {
        self.links += 1;
        let n = self.links;
        assert!(n < 64, "too many links");
        let (da, db) = (format!("{}{n}a", self.id), format!("{}{n}b", self.id));
        ip(&["link", "add", &da, "netns", a, "type", "veth", "peer", "name", &db, "netns", b]).expect("veth pair");
        let (ia, ib) = (format!("10.77.{n}.1"), format!("10.77.{n}.2"));
        ip(&["-n", a, "addr", "add", &format!("{ia}/30"), "dev", &da]).expect("address");
        ip(&["-n", b, "addr", "add", &format!("{ib}/30"), "dev", &db]).expect("address");
        ip(&["-n", a, "link", "set", &da, "up"]).expect("up");
        ip(&["-n", b, "link", "set", &db, "up"]).expect("up");
        (ia, ib, da, db)
    }

    /// Adds `tc netem` delay and loss on a device; `Err` when the kernel
    /// has no netem (the partition itself needs none).
    pub fn netem(&self, ns: &str, dev: &str, args: &str) -> Result<(), String> {
        let mut a = vec!["netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem"];
        a.extend(args.split_whitespace());
        let o = Command::new("ip").args(&a).output().map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_owned())
        }
    }

    /// Cuts traffic from namespace `ns` to `dest` silently (a blackhole
    /// route: packets vanish, nothing answers, as in a real partition).
    pub fn cut(&self, ns: &str, dest: &str) {
        ip(&["-n", ns, "route", "add", "blackhole", &format!("{dest}/32")]).expect("blackhole");
    }

    pub fn heal(&self, ns: &str, dest: &str) {
        ip(&["-n", ns, "route", "del", "blackhole", &format!("{dest}/32")]).expect("heal");
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and with them
        // their peers.
        for ns in self.namespaces.drain(..).rev() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

/// A replica's data directory (log, snapshot, `cluster.json`).
pub fn data_dir(r: &Replica) -> PathBuf {
    r.dir.path().join("data")
}
