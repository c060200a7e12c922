//! Test harness: starts the real gateway in-process on port 0 with a manual
//! clock, and talks to it over real HTTP/1.1.
//!
//! The gateway is configured by `healthgate::operations::demo::prepare`, the same code
//! that `healthgate demo` runs, so the tests exercise the shipped defaults.

pub mod nats;
pub mod promql;
pub mod replicas;
pub mod tools;

use bytes::Bytes;
use healthgate::clock::{Clock, ManualClock, SystemClock};
use healthgate::durability::wal::storage::FaultyStorage;
use healthgate::gateway::Gateway;
use healthgate::operations::auth::Role;
use healthgate::operations::config::Config;
use healthgate::operations::demo::{DemoOptions, Env};
use healthgate::token::Claims;
use healthgate::{Color, HolderId};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A running gateway. Dropping it shuts the server down.
pub struct TestGateway {
    pub dir: tempfile::TempDir,
    pub env: Env,
    pub clock: ManualClock,
    pub gw: Arc<Gateway>,
    pub config: Config,
    pub http: HttpClient,
    pub disk: Option<FaultyStorage>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), healthgate::serving::server::RunError>>>,
}

/// Edits the demo configuration text before the gateway starts.
pub type ConfigEdit = Box<dyn FnOnce(String) -> String>;

impl TestGateway {
    pub async fn start() -> TestGateway {
        Self::start_with(Box::new(|c| c)).await
    }

    pub async fn start_with(edit: ConfigEdit) -> TestGateway {
        Self::start_full(edit, None).await
    }

    /// Starts with the log on a fake disk that can lose, tear and fail.
    pub async fn start_with_storage(edit: ConfigEdit, disk: FaultyStorage) -> TestGateway {
        Self::start_full(edit, Some(disk)).await
    }

    async fn start_full(edit: ConfigEdit, disk: Option<FaultyStorage>) -> TestGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = SystemClock.now();
        let opts = DemoOptions { size: 2_000, seed: 7, ..Default::default() };
        let env =
            healthgate::operations::demo::prepare(dir.path(), &opts, "127.0.0.1:0", "127.0.0.1:0", now).expect("demo");
        let text = std::fs::read_to_string(&env.config).expect("config");
        std::fs::write(&env.config, edit(text)).expect("config");
        Self::launch(dir, env, ManualClock::new(now), disk).await
    }

    /// Starts a gateway on a prepared deployment folder (replicas: copies of
    /// one demo, each with its own data directory and `[cluster]`).
    pub async fn start_in(dir: tempfile::TempDir, env: Env, clock: ManualClock) -> TestGateway {
        Self::launch(dir, env, clock, None).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        mut env: Env,
        clock: ManualClock,
        disk: Option<FaultyStorage>,
    ) -> TestGateway {
        let config = Config::load(&env.config).expect("valid config");
        let gw = healthgate::serving::server::build(&config, Arc::new(clock.clone())).expect("gateway");
        let listeners = healthgate::serving::server::Listeners::bind(&config.server).await.expect("bind");
        let (public, admin) = listeners.addrs();
        env.public_url = format!("http://{public}");
        env.admin_url = format!("http://{admin}");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = {
            let (gw, config) = (gw.clone(), config.clone());
            let storage = disk.clone().map(|d| Box::new(d) as Box<dyn healthgate::durability::wal::storage::Storage>);
            tokio::spawn(async move {
                healthgate::serving::server::run_with(
                    gw,
                    &config,
                    listeners,
                    async {
                        let _ = stopped.await;
                    },
                    storage,
                )
                .await
            })
        };
        let mut t =
            TestGateway { dir, env, clock, gw, config, http: client(), disk, stop: Some(stop), task: Some(task) };
        for _ in 0..1000 {
            if t.task.as_ref().is_some_and(|h| h.is_finished()) {
                let r = t.task.take().expect("task").await;
                panic!("the gateway stopped while starting: {r:?}");
            }
            if t.gw.is_ready() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        t.wait_ready().await;
        t
    }

    /// Stops the gateway (gracefully: a last snapshot is written) and starts
    /// a new one on the same data directory, clock and disk.
    pub async fn restart(mut self) -> TestGateway {
        let (dir, env, clock, disk) = self.take_parts().await;
        drop(self);
        Self::launch(dir, env, clock, disk).await
    }

    /// Like [`TestGateway::restart`], with `between` done to the gateway's
    /// folder while it is down (e.g. to damage a file).
    pub async fn restart_after(mut self, between: impl FnOnce(&std::path::Path)) -> TestGateway {
        let (dir, env, clock, disk) = self.take_parts().await;
        drop(self);
        between(dir.path());
        Self::launch(dir, env, clock, disk).await
    }

    /// Like [`TestGateway::restart`], but the snapshot is removed first, so
    /// the new gateway rebuilds everything from the population and the log.
    pub async fn restart_from_log(mut self) -> TestGateway {
        let (dir, env, clock, disk) = self.take_parts().await;
        drop(self);
        std::fs::remove_file(dir.path().join("data/state.hgs")).expect("snapshot exists");
        Self::launch(dir, env, clock, disk).await
    }

    /// Stops without the final snapshot being trusted: the fake disk then
    /// loses everything unsynced, and a new gateway recovers from it.
    pub async fn crash_and_restart(mut self) -> TestGateway {
        let (dir, env, clock, disk) = self.take_parts().await;
        drop(self);
        let disk = disk.expect("crash needs the fake disk");
        disk.crash();
        let _ = std::fs::remove_file(dir.path().join("data/state.hgs"));
        Self::launch(dir, env, clock, Some(disk)).await
    }

    async fn take_parts(&mut self) -> (tempfile::TempDir, Env, ManualClock, Option<FaultyStorage>) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        let placeholder = tempfile::tempdir().expect("tempdir");
        let dir = std::mem::replace(&mut self.dir, placeholder);
        (dir, self.env.clone(), self.clock.clone(), self.disk.clone())
    }

    /// Stops the gateway gracefully (the closing snapshot is written) and
    /// hands back its folder, manifest and clock for [`TestGateway::start_in`].
    pub async fn stop_keeping_data(mut self) -> (tempfile::TempDir, Env, ManualClock) {
        let (dir, env, clock, _) = self.take_parts().await;
        (dir, env, clock)
    }

    pub async fn wait_ready(&self) {
        for _ in 0..500 {
            if self.get(&self.env.admin_url, "/readyz", None).await.0 == StatusCode::OK {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("gateway never became ready");
    }

    /// Lines of a JSON-lines answer from the admin listener (authority key).
    pub async fn admin_lines(&self, path: &str) -> (StatusCode, Vec<Value>) {
        let key = self.key(Role::Authority).to_owned();
        let (s, v) = self.get(&self.env.admin_url.clone(), path, Some(&key)).await;
        let lines = match v {
            Value::String(text) => text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect(),
            Value::Object(_) if s != StatusCode::OK => vec![v],
            other => vec![other],
        };
        (s, lines)
    }

    /// Stops the server and waits for `run` to return.
    pub async fn shutdown(mut self) -> Result<(), healthgate::serving::server::RunError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.take().expect("running").await.expect("join")
    }

    pub fn key(&self, role: Role) -> &str {
        self.env.api_key(role)
    }

    pub fn holder(&self, color: &str, i: usize) -> HolderId {
        self.env.holders[color][i]
    }

    /// The first `n` green holders of the population.
    pub fn greens(&self, n: usize) -> Vec<HolderId> {
        let p = &self.env.population;
        (0..p.size).filter(|&i| p.color(i) == Color::Green).take(n).map(|i| p.holder(i)).collect()
    }

    pub fn checkpoint(&self, class: &str) -> &str {
        &self.env.checkpoints[class][0]
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// A fresh code for `holder`, signed by the key in `key_file`.
    pub fn code_with(&self, key_file: &Path, holder: HolderId, issued_at: u64, ttl: u64) -> String {
        let (kid, key) = healthgate::operations::keyfiles::read_secret(key_file).expect("key");
        Claims { kid, holder, issued_at, expires_at: issued_at + ttl, color: Color::Green, serial: rand_serial() }
            .sign(&key)
            .expect("sign")
    }

    pub fn code(&self, holder: HolderId) -> String {
        self.code_with(&self.env.issuer_key.clone(), holder, self.now(), 60)
    }

    /// A fresh code with a chosen serial.
    pub fn code_serial(&self, holder: HolderId, serial: u64) -> String {
        let (kid, key) = healthgate::operations::keyfiles::read_secret(&self.env.issuer_key).expect("key");
        let now = self.now();
        Claims { kid, holder, issued_at: now, expires_at: now + 60, color: Color::Green, serial }
            .sign(&key)
            .expect("sign")
    }

    pub async fn request(
        &self,
        method: Method,
        url: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(format!("{url}{path}"));
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).expect("request");
        let resp = self.http.request(req).await.expect("http");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    pub async fn get(&self, url: &str, path: &str, key: Option<&str>) -> (StatusCode, Value) {
        self.request(Method::GET, url, path, key, None).await
    }

    /// POSTs a scan with the turnstile key; returns status and JSON.
    pub async fn scan_json(&self, body: Value) -> (StatusCode, Value) {
        let key = self.key(Role::Turnstile).to_owned();
        self.request(Method::POST, &self.env.public_url, "/v1/scan", Some(&key), Some(body.to_string().into_bytes()))
            .await
    }

    /// Scans a code at a checkpoint; asserts 200 and returns (decision, reason, color).
    pub async fn scan(&self, code: &str, checkpoint: &str, direction: &str, temperature: Option<f64>) -> Scan {
        let mut body = serde_json::json!({ "code": code, "checkpoint": checkpoint, "direction": direction });
        if let Some(t) = temperature {
            body["temperature_c"] = t.into();
        }
        let (status, v) = self.scan_json(body).await;
        assert_eq!(status, StatusCode::OK, "scan answered {status}: {v}");
        Scan {
            decision: v["decision"].as_str().unwrap_or_default().to_owned(),
            reason: v["reason"].as_str().unwrap_or_default().to_owned(),
            color: v["color"].as_str().unwrap_or_default().to_owned(),
            epoch: v["epoch"].as_u64().unwrap_or_default(),
        }
    }

    /// Signs and posts a colour-update batch with the demo authority key.
    pub async fn push(&self, seq: u64, changes: Vec<healthgate::feed::Change>) -> (StatusCode, Value) {
        let (kid, key) = healthgate::operations::keyfiles::read_secret(&self.env.authority_key).expect("authority key");
        let b = healthgate::feed::UpdateBatch { seq, kid: String::new(), changes, signature: String::new() }
            .sign(kid, &key)
            .expect("sign");
        self.admin_post("/v1/admin/updates", serde_json::to_vec(&b).unwrap()).await
    }

    /// Signs and posts a revocation batch with the demo authority key.
    pub async fn revoke(&self, seq: u64, revocations: Vec<healthgate::feed::Revocation>) -> (StatusCode, Value) {
        let (kid, key) = healthgate::operations::keyfiles::read_secret(&self.env.authority_key).expect("authority key");
        let b = healthgate::feed::RevocationBatch { seq, kid: String::new(), revocations, signature: String::new() }
            .sign(kid, &key)
            .expect("sign");
        self.admin_post("/v1/admin/revocations", serde_json::to_vec(&b).unwrap()).await
    }

    /// POSTs to the admin listener with the authority key.
    pub async fn admin_post(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let key = self.key(Role::Authority).to_owned();
        self.request(Method::POST, &self.env.admin_url.clone(), path, Some(&key), Some(body)).await
    }

    /// The holder's effective colour as the status API reports it.
    pub async fn color_of(&self, h: HolderId) -> String {
        let key = self.key(Role::Authority).to_owned();
        let (s, v) = self.get(&self.env.public_url.clone(), &format!("/v1/holders/{h}"), Some(&key)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["color"].as_str().unwrap_or_default().to_owned()
    }

    pub async fn metrics(&self) -> String {
        match self.get(&self.env.admin_url, "/metrics", None).await {
            (StatusCode::OK, Value::String(s)) => s,
            other => panic!("metrics answered {other:?}"),
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub decision: String,
    pub reason: String,
    pub color: String,
    pub epoch: u64,
}

impl Scan {
    /// `"pass/ok/green"`: compact to assert on.
    pub fn short(&self) -> String {
        format!("{}/{}/{}", self.decision, self.reason, self.color)
    }
}

fn rand_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The `healthgate` binary built for these tests.
pub fn healthgate_bin() -> PathBuf {
    // tests/ is a workspace member: its target dir is the workspace's.
    let mut p = std::env::current_exe().expect("test exe");
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("healthgate")
}
