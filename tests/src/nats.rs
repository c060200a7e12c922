//! A real `nats-server` for the replica tests: started on a free port of
//! 127.0.0.1 with JetStream on and its own store directory, stopped by its
//! process id (never by name). `scripts/test.sh` installs the Debian package
//! when it is missing.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    pub port: u16,
    /// The network namespace it runs in (the lab's), if any, and the
    /// address replicas reach it at.
    ns: Option<String>,
    host: String,
    store: PathBuf,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn spawn(ns: Option<&str>, port: u16, store: &Path) -> Child {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nats-server"]);
            c
        }
        None => Command::new("nats-server"),
    };
    // Inside a lab namespace it listens on every address of that namespace
    // (its loopback and its links); outside, on 127.0.0.1 only.
    let listen = if ns.is_some() { "0.0.0.0" } else { "127.0.0.1" };
    cmd.args(["-a", listen, "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server (Debian package nats-server; scripts/test.sh installs it)")
}

fn wait_listening(ns: Option<&str>, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::replicas::in_netns(ns, || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()) {
        assert!(Instant::now() < deadline, "nats-server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("js");
        let port = free_port();
        let child = spawn(None, port, &store);
        wait_listening(None, port);
        NatsServer { port, ns: None, host: "127.0.0.1".into(), store, child: Some(child), _dir: Some(dir) }
    }

    /// Starts one inside a lab namespace, reached by the replicas at
    /// `host` (the namespace's own port space: any port is free there).
    pub fn start_in(ns: &str, host: &str) -> NatsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("js");
        let port = 4222;
        let child = spawn(Some(ns), port, &store);
        wait_listening(Some(ns), port);
        NatsServer { port, ns: Some(ns.to_owned()), host: host.to_owned(), store, child: Some(child), _dir: Some(dir) }
    }

    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// The URL for a replica that reaches the server at `host`.
    pub fn url_at(&self, host: &str) -> String {
        format!("nats://{host}:{}", self.port)
    }

    /// Its store directory (`-sd`): what it keeps on disk.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// While it is stopped: removes every stream's messages from its store
    /// (keeping the streams' configuration), which is what a power cut can
    /// take from a nats-server 2.9 whose streams are younger than its
    /// two-minute fsync interval. Returns how many files it removed. A
    /// SIGKILL alone takes nothing the server had written: the kernel keeps
    /// it.
    pub fn lose_stream_messages(&self) -> usize {
        assert!(self.child.is_none(), "lose_stream_messages needs the server stopped");
        let streams = self.store.join("jetstream/$G/streams");
        let mut removed = 0;
        for s in std::fs::read_dir(&streams).unwrap_or_else(|e| panic!("{}: {e}", streams.display())).flatten() {
            let Ok(msgs) = std::fs::read_dir(s.path().join("msgs")) else { continue };
            for f in msgs.flatten() {
                std::fs::remove_file(f.path()).expect("remove a message file");
                removed += 1;
            }
        }
        removed
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the server: SIGTERM (a clean stop that flushes its store), or
    /// SIGKILL.
    pub fn stop(&mut self, kill: bool) {
        if let Some(mut c) = self.child.take() {
            let sig = if kill { "-KILL" } else { "-TERM" };
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop(false);
        self.child = Some(spawn(self.ns.as_deref(), self.port, &self.store));
        wait_listening(self.ns.as_deref(), self.port);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop(true);
    }
}
