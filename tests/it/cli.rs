//! The `healthgate` command, run as a process: keys, codes, QR images read
//! back by a real decoder, offline verification, exit codes, and the demo.

use healthgate_tests::healthgate_bin;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn hg(args: &[&str]) -> Output {
    let bin = healthgate_bin();
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --bins`, as the README's test command does)",
        bin.display()
    );
    Command::new(bin).args(args).output().expect("run healthgate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// A trust list with one issuer key made by `keygen`, plus the key prefix.
fn issuer(dir: &Path, kid: &str) -> (String, String) {
    let prefix = dir.join(kid.to_lowercase());
    let o = hg(&["keygen", "--kid", kid, "--out", prefix.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let trust = dir.join(format!("trust-{kid}.toml"));
    std::fs::write(
        &trust,
        format!(
            "[[issuers]]\nid = \"test\"\n[[issuers.keys]]\nkid = \"{kid}\"\npublic_key_file = \"{}.pub\"\nnot_before = \"2020-01-01T00:00:00Z\"\nnot_after = \"2099-01-01T00:00:00Z\"\n",
            prefix.file_name().unwrap().to_str().unwrap()
        ),
    )
    .unwrap();
    (format!("{}.key", prefix.display()), trust.display().to_string())
}

const HOLDER: &str = "00112233445566778899aabbccddeeff";

#[test]
fn keygen_writes_a_private_secret_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = issuer(dir.path(), "HB01");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let again = hg(&["keygen", "--kid", "HB01", "--out", key.trim_end_matches(".key")]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    assert_eq!(hg(&["keygen", "--kid", "TOOLONG", "--out", "x"]).status.code(), Some(64));
}

#[test]
fn issued_qr_is_read_back_by_zbarimg_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (key, trust) = issuer(dir.path(), "HB01");
    let png = dir.path().join("code.png");
    let o = hg(&["issue", "--key", &key, "--holder", HOLDER, "--qr", png.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    assert!(text.starts_with("HG1:") && text.len() <= 160, "{text}");
    let z = Command::new("zbarimg")
        .args(["--raw", "-q", png.to_str().unwrap()])
        .output()
        .expect("zbarimg is installed by the README's test command (Debian package zbar-tools)");
    assert!(z.status.success(), "zbarimg could not read the code: {z:?}");
    assert_eq!(stdout(&z), text, "decoded text differs from the printed text");
    let v = hg(&["verify", "--trust", &trust, &text]);
    assert!(v.status.success(), "{v:?}");
    let out = stdout(&v);
    assert!(out.starts_with("valid") && out.contains(HOLDER), "{out}");
    // SVG output renders too.
    let svg = dir.path().join("code.svg");
    assert!(hg(&["issue", "--key", &key, "--holder", HOLDER, "--qr", svg.to_str().unwrap()]).status.success());
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
}

#[test]
fn verify_tells_each_failure_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (key, trust) = issuer(dir.path(), "HB01");
    let (other, _) = issuer(dir.path(), "ZZ01");
    let issue = |k: &str, at: &str| stdout(&hg(&["issue", "--key", k, "--holder", HOLDER, "--issued-at", at]));
    let at = "2026-01-01T08:00:00Z";
    let good = issue(&key, at);
    let verify = |code: &str, at: &str| {
        let o = hg(&["verify", "--trust", &trust, "--at", at, code]);
        (o.status.code(), stdout(&o))
    };
    assert_eq!(verify(&good, "2026-01-01T08:00:30Z").0, Some(0));
    // Tampered: swap the signature of another code in.
    let other_code =
        stdout(&hg(&["issue", "--key", &key, "--holder", "ffeeddccbbaa99887766554433221100", "--issued-at", at]));
    let tampered = format!("{}{}", &good[..61], &other_code[61..]);
    let cases = [
        (tampered, "2026-01-01T08:00:30Z", "bad_signature"),
        (good.clone(), "2026-01-01T08:01:31Z", "expired"),
        (good.clone(), "2026-01-01T07:59:29Z", "not_yet_valid"),
        (issue(&other, at), "2026-01-01T08:00:30Z", "unknown_issuer"),
        ("HG1:GARBAGE".to_owned(), "2026-01-01T08:00:30Z", "malformed"),
        (good[..100].to_owned(), "2026-01-01T08:00:30Z", "malformed"),
    ];
    for (code, when, reason) in cases {
        let (status, out) = verify(&code, when);
        assert_eq!(status, Some(1), "{reason}: {out}");
        assert!(out.starts_with(&format!("invalid: {reason}")), "want {reason}, got {out}");
    }
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    assert_eq!(hg(&["issue"]).status.code(), Some(64));
    assert_eq!(hg(&["frobnicate"]).status.code(), Some(64));
    assert_eq!(hg(&["issue", "--key", "/nonexistent.key", "--holder", HOLDER]).status.code(), Some(64));
    assert_eq!(hg(&["issue", "--key", "k", "--holder", "abc"]).status.code(), Some(64));
    for sub in ["keygen", "issue", "verify", "apikey", "seed", "serve", "demo"] {
        let o = hg(&[sub, "--help"]);
        assert_eq!(o.status.code(), Some(0), "{sub} --help");
        assert!(stdout(&o).contains("Usage"), "{sub} --help");
    }
}

#[test]
fn serve_refuses_bad_config_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let (_, trust) = issuer(dir.path(), "HB01");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        format!("trust = \"{trust}\"\n[server]\npublic_addr = \"127.0.0.1:0\"\nadmin_addr = \"127.0.0.1:0\"\n[regions.x]\naccept_issuers = [\"nobody\"]\n"),
    )
    .unwrap();
    let o = hg(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("regions.x.accept_issuers") && err.contains("nobody"), "{err}");
    std::fs::write(&cfg, "trust = 5").unwrap();
    assert_eq!(hg(&["serve", "--config", cfg.to_str().unwrap()]).status.code(), Some(64));
}

#[test]
fn seed_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.hgs"), dir.path().join("b.hgs"));
    for p in [&a, &b] {
        let o = hg(&[
            "seed",
            "--size",
            "5000",
            "--seed",
            "9",
            "--at",
            "2026-01-01T00:00:00Z",
            "--out",
            p.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{o:?}");
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(hg(&["seed", "--size", "5", "--mix", "green=2", "--out", "x"]).status.code(), Some(64));
}

/// A `healthgate demo` process; killed on drop.
pub(crate) struct Demo {
    pub(crate) child: std::process::Child,
    pub(crate) env: healthgate::operations::demo::Env,
    pub(crate) _dir: tempfile::TempDir,
}

impl Demo {
    pub(crate) fn start() -> Demo {
        Demo::start_in(tempfile::tempdir().unwrap(), &[])
    }

    /// A demo with `extra` flags (e.g. `--tls`), ready to serve.
    pub(crate) fn start_with(extra: &[&str]) -> Demo {
        Demo::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// Runs `healthgate demo` on `DIR/demo` with extra arguments, until ready.
    pub(crate) fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Demo {
        let demo = dir.path().join("demo");
        let env_path = demo.join("env.json");
        // A resumed demo rewrites env.json once bound: read only the new one.
        let before = std::fs::metadata(&env_path).and_then(|m| m.modified()).ok();
        let child = Command::new(healthgate_bin())
            .args([
                "demo",
                "--dir",
                demo.to_str().unwrap(),
                "--size",
                "1000",
                "--public",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut env = None;
        for _ in 0..600 {
            let fresh = std::fs::metadata(&env_path).and_then(|m| m.modified()).ok().is_some_and(|t| Some(t) != before);
            if fresh {
                if let Ok(e) = healthgate::operations::demo::Env::load(&env_path) {
                    env = Some(e);
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let d = Demo { child, env: env.expect("demo wrote env.json"), _dir: dir };
        for _ in 0..600 {
            if d.ready() {
                return d;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("demo never became ready");
    }

    /// `GET /readyz` answers 200, over HTTPS with the demo's CA when it
    /// serves TLS.
    fn ready(&self) -> bool {
        let Some(ca) = &self.env.ca_cert else {
            let admin = self.env.admin_url.trim_start_matches("http://");
            return http(admin, "GET", "/readyz", "", "").starts_with("HTTP/1.1 200");
        };
        let client = healthgate::operations::client::ApiClient::new(&self.env.admin_url, "", Some(ca)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(client.request(http::Method::GET, "/readyz", None))
            .is_ok_and(|(status, _)| status == http::StatusCode::OK)
    }

    /// Stops the demo with SIGTERM and hands back its folder.
    pub(crate) fn stop(mut self) -> tempfile::TempDir {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap())
    }

    pub(crate) fn public(&self) -> String {
        self.env.public_url.trim_start_matches("http://").to_owned()
    }

    /// Issues a code with the CLI and scans it; returns the JSON answer.
    fn scan(&self, holder: &str, checkpoint: &str) -> serde_json::Value {
        let code = stdout(&hg(&["issue", "--key", self.env.issuer_key.to_str().unwrap(), "--holder", holder]));
        self.scan_code(&code, checkpoint)
    }

    /// Scans a code already issued; returns the JSON answer.
    fn scan_code(&self, code: &str, checkpoint: &str) -> serde_json::Value {
        let body = serde_json::json!({ "code": code, "checkpoint": checkpoint, "direction": "out" }).to_string();
        let answer = http(
            &self.public(),
            "POST",
            "/v1/scan",
            self.env.api_key(healthgate::operations::auth::Role::Turnstile),
            &body,
        );
        let json = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null)
    }

    fn signal(&self, sig: &str) {
        Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The README's run command: `healthgate demo` serves, writes env.json, and
/// stops cleanly on SIGTERM.
#[test]
fn demo_serves_and_stops_on_sigterm() {
    let mut d = Demo::start();
    for class in ["metro", "rail", "road", "clinic"] {
        assert!(!d.env.checkpoints[class].is_empty(), "{class}");
    }
    for colour in ["green", "yellow", "red", "pending"] {
        assert!(!d.env.holders[colour].is_empty(), "{colour}");
    }
    let green = d.env.holders["green"][0].to_hex();
    assert_eq!(d.scan(&green, "wuhan-metro-hankou-1")["decision"], "pass");
    d.signal("TERM");
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut d.child.stdout.take().unwrap(), &mut printed).unwrap();
    for what in [
        "pass",
        "fever",
        "not_green",
        "pending",
        "no_health_record",
        "anti_passback",
        "expired",
        "bad_signature",
        "unknown_issuer",
        "malformed",
    ] {
        assert!(printed.contains(&format!("# {what}")), "walkthrough lacks {what}");
    }
}

/// The README's run command loses nothing across a restart: a demo started
/// again on its folder reuses its keys, state, log and tracing index; only
/// `--fresh` starts over.
#[test]
fn demo_restarted_on_its_folder_keeps_scans_and_codes() {
    let d = Demo::start();
    let green = d.env.holders["green"][0].to_hex();
    let checkpoint = "wuhan-metro-wuchang-1";
    assert_eq!(d.scan(&green, checkpoint)["decision"], "pass");
    // A code issued before the restart, scanned only after it.
    let other = d.env.holders["green"][1].to_hex();
    let code = stdout(&hg(&["issue", "--key", d.env.issuer_key.to_str().unwrap(), "--holder", &other]));
    let authority = d.env.api_key(healthgate::operations::auth::Role::Authority).to_owned();
    let visits = |d: &Demo| {
        let admin = d.env.admin_url.trim_start_matches("http://").to_owned();
        let answer = http(&admin, "GET", &format!("/v1/admin/holders/{green}/visits"), &authority, "");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        body.lines().filter(|l| l.contains(checkpoint)).count()
    };
    assert_eq!(visits(&d), 1);
    let keys = d.env.api_keys.clone();

    let d = Demo::start_in(d.stop(), &[]);
    assert_eq!(d.env.api_keys, keys, "the same keys");
    assert_eq!(visits(&d), 1, "the scan made before the restart is still traced");
    assert_eq!(d.scan_code(&code, checkpoint)["decision"], "pass", "a code issued before the restart verifies");

    // Options that contradict the folder's demo are refused, and change nothing.
    let dir = d.stop();
    let demo = dir.path().join("demo");
    let o = hg(&["demo", "--dir", demo.to_str().unwrap(), "--size", "500", "--public", "127.0.0.1:0"]);
    assert_eq!(o.status.code(), Some(64), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--fresh"), "{o:?}");

    // --fresh starts over on purpose: new keys, an empty tracing index.
    let d = Demo::start_in(dir, &["--fresh"]);
    assert_ne!(d.env.api_keys, keys);
    let authority = d.env.api_key(healthgate::operations::auth::Role::Authority).to_owned();
    let admin = d.env.admin_url.trim_start_matches("http://").to_owned();
    let answer = http(&admin, "GET", &format!("/v1/admin/holders/{green}/visits"), &authority, "");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.lines().filter(|l| l.contains("\"checkpoint\"")).count(), 0, "{answer}");
}

#[test]
fn push_and_revoke_from_the_command_line() {
    let d = Demo::start();
    let auth = d.env.authority_key.to_str().unwrap().to_owned();
    let key = d.env.api_key(healthgate::operations::auth::Role::Authority).to_owned();
    let admin = d.env.admin_url.clone();
    let green = d.env.holders["green"][0].to_hex();
    let metro = "wuhan-metro-wuchang-1";
    let o = hg(&[
        "push",
        "--key",
        &auth,
        "--admin",
        &admin,
        "--api-key",
        &key,
        "--set",
        &format!("{green}=red,until=2099-01-01T00:00:00Z,then=yellow"),
    ]);
    assert!(o.status.success(), "{o:?}");
    let epoch: u64 = stdout(&o).parse().expect("push prints the new epoch");
    assert!(epoch > 1);
    assert_eq!(d.scan(&green, metro)["reason"], "not_green");
    assert_eq!(d.scan(&green, metro)["color"], "red");

    // Bulk from a JSON-lines file, in several signed batches.
    let file = d._dir.path().join("changes.jsonl");
    let lines: Vec<String> =
        d.env.holders["yellow"].iter().map(|h| format!("{{\"holder\":\"{h}\",\"color\":\"green\"}}")).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let o = hg(&[
        "push",
        "--key",
        &auth,
        "--admin",
        &admin,
        "--api-key",
        &key,
        "--file",
        file.to_str().unwrap(),
        "--batch",
        "2",
    ]);
    assert!(o.status.success(), "{o:?}");
    let yellow0 = d.env.holders["yellow"][0].to_hex();
    assert_eq!(
        d.scan(&yellow0, "wuhan-rail-hankou").get("error").and_then(|e| e.as_str()).map(|e| e.contains("temperature")),
        Some(true)
    );
    assert_eq!(d.scan(&yellow0, metro)["reason"], "ok");

    // Revoke a holder.
    let other = d.env.holders["green"][1].to_hex();
    let o = hg(&["revoke", "--key", &auth, "--admin", &admin, "--api-key", &key, "--holder", &other]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(d.scan(&other, metro)["reason"], "revoked");

    // Refusals exit 1 with the server's reason: a replayed sequence, a
    // key the gateway does not trust.
    let o = hg(&["revoke", "--key", &auth, "--admin", &admin, "--api-key", &key, "--serial", "5", "--seq", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("409"), "{o:?}");
    let issuer = d.env.issuer_key.to_str().unwrap().to_owned();
    let o = hg(&["push", "--key", &issuer, "--admin", &admin, "--api-key", &key, "--set", &format!("{green}=green")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown authority key"), "{o:?}");
    assert_eq!(
        hg(&["push", "--key", &auth, "--admin", &admin, "--api-key", &key, "--set", "nonsense"]).status.code(),
        Some(64)
    );
}

#[test]
fn sighup_reloads_the_configuration() {
    let d = Demo::start();
    let yellow = d.env.holders["yellow"][0].to_hex();
    let metro = "wuhan-metro-wuchang-1";
    assert_eq!(d.scan(&yellow, metro)["reason"], "not_green");
    let text = std::fs::read_to_string(&d.env.config).unwrap();
    std::fs::write(
        &d.env.config,
        text.replace("[classes.metro]\nadmit = [\"green\"]", "[classes.metro]\nadmit = [\"green\", \"yellow\"]"),
    )
    .unwrap();
    d.signal("HUP");
    let mut passed = false;
    for _ in 0..100 {
        if d.scan(&yellow, metro)["decision"] == "pass" {
            passed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(passed, "SIGHUP did not reload the configuration");
}

pub(crate) fn http(addr: &str, method: &str, path: &str, key: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return String::new() };
    let _ = s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A short commuter-peak run of the load generator against the demo, every
/// answer checked: it fails on any wrong decision, never on speed.
#[test]
fn commuter_profile_correctness_run() {
    commuter_run(&Demo::start());
}

/// `healthgate demo --tls` serves HTTPS on both listeners with a CA it
/// names in env.json, and the load generator speaks it from env.json alone
/// (every answer checked); plain HTTP gets no answer there.
#[test]
fn the_demo_serves_https_and_the_load_generator_speaks_it() {
    let d = Demo::start_with(&["--tls"]);
    assert!(d.env.public_url.starts_with("https://") && d.env.admin_url.starts_with("https://"), "{:?}", d.env);
    assert!(d.env.ca_cert.as_ref().is_some_and(|ca| ca.exists()));
    let plain = d.env.public_url.trim_start_matches("https://");
    assert!(!http(plain, "GET", "/healthz", "", "").starts_with("HTTP/1.1"), "plain HTTP answered on the TLS port");
    commuter_run(&d);
}

fn commuter_run(d: &Demo) {
    let loadgen = healthgate_bin().with_file_name("healthgate-loadgen");
    assert!(loadgen.exists(), "{} is missing: build the workspace's binaries first", loadgen.display());
    let env_json = d.env.config.with_file_name("env.json");
    let o = Command::new(loadgen)
        .args([
            "--env",
            env_json.to_str().unwrap(),
            "--profile",
            "morning-peak",
            "--compress",
            "1800",
            "--scale",
            "0.1",
        ])
        .args(["--connections", "8", "--threads", "1", "--sign-ahead", "2000", "--json", "--quiet"])
        .output()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("loadgen printed no JSON summary ({e}): {}", String::from_utf8_lossy(&o.stderr)));
    assert!(o.status.success(), "loadgen failed: {}\n{summary}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(summary["mismatches"], 0, "{summary}");
    assert_eq!(summary["checked"], true, "{summary}");
    assert!(summary["answered"].as_u64().unwrap() >= 200, "too short a run to prove anything: {summary}");
    assert!(summary["deny"].as_u64().unwrap() > 0, "the mix of cases reached no refusal: {summary}");
}
