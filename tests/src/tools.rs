//! External tools the operator-facing tests drive (schemathesis, promtool,
//! prometheus, cargo-deb, systemd-analyze): where they are, and running
//! them with a deadline so that a hung tool fails the test instead of
//! hanging the suite.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (this crate is `tests/` in it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_owned()
}

/// A program in the virtualenv that `scripts/test.sh` makes in the target
/// directory (`target/venv`), found next to the binaries under test so that
/// `CARGO_TARGET_DIR` is respected.
pub fn venv_tool(name: &str) -> PathBuf {
    let bin = crate::healthgate_bin();
    let target = bin.parent().and_then(Path::parent).expect("target/<profile>/healthgate");
    let tool = target.join("venv").join("bin").join(name);
    assert!(
        tool.exists(),
        "{} is missing: scripts/test.sh (the README's test command) installs it from scripts/requirements-test.txt",
        tool.display()
    );
    tool
}

/// A system program the README's test command installs (`package` names
/// the Debian package).
pub fn system_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is missing: scripts/test.sh installs it (Debian package {package})"))
}

/// Runs `cmd` to completion with its output captured, killing it (by its
/// process id) if it is still running after `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = child.unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Drain both pipes on threads: a chatty tool must not block on a full
    // pipe while we wait for it to exit.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let status = wait_until(&mut child, Instant::now() + limit);
    let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    match status {
        Some(status) => Output { status, stdout, stderr },
        None => panic!(
            "{what} did not finish within {limit:?}; killed.\nstdout:\n{}\nstderr:\n{}",
            tail(&stdout),
            tail(&stderr)
        ),
    }
}

/// Waits for `child` until `deadline`; kills it and returns `None` then.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Taken by the tests that load the whole machine (external fuzzers, a
/// live Prometheus with a load generator, the kill loop), so that they run
/// one after another instead of starving each other; the rest of the suite
/// still runs beside them.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A failed test poisons the lock; the next one may still run.
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process that is killed (by its process id) and reaped when
/// dropped, so that a failing test leaves nothing running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The last few kilobytes of a tool's output, for a failure message.
pub fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let start = text.len().saturating_sub(6000);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    text[start..].to_owned()
}

/// A TCP port that was free a moment ago, for tools that cannot bind port 0
/// and report it (Prometheus). The caller retries if it was taken since.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}
