//! Configuration: the raw TOML file, then validated settings.
//!
//! Two stages, as in ripgrep: [`RawConfig`] is what serde reads (every field
//! named as in the file, unknown fields refused), [`Config::from_raw`] turns
//! it into [`Config`], whose types carry the preconditions (indices instead
//! of names, hashes instead of keys, bit masks instead of issuer lists). A
//! bad file is refused as a whole with a message that names the field; the
//! binary then exits with code 64 before anything binds.

use crate::operations::auth::{ApiKeys, Role};
use crate::policy::{Checkpoint, Class, Policy, Region};
use crate::revocation::FilterSettings;
use crate::token::KeyId;
use crate::trust::TrustList;
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{path}: {field}: {why}")]
    Invalid { path: PathBuf, field: String, why: String },
    #[error("{path}: {source}")]
    Trust { path: PathBuf, source: crate::trust::TrustError },
}

/// Defaults, named once.
pub mod defaults {
    pub const PUBLIC_ADDR: &str = "0.0.0.0:8080";
    pub const ADMIN_ADDR: &str = "127.0.0.1:9090";
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// The admin listener's own cap: the authority, operators and
    /// Prometheus, a handful of clients.
    pub const ADMIN_MAX_CONNECTIONS: usize = 256;
    /// Admitted requests doing their work at once. About what two cores
    /// finish within the queueing budget, with room for the log's group
    /// commit (scans waiting for their fsync hold a slot).
    pub const MAX_IN_FLIGHT: usize = 64;
    /// How long a scan may wait to start before it is refused (503
    /// `overloaded`): a fast "busy" beats a slow answer at a turnstile.
    /// A debug build (tests, development; `healthgate_build_info` says
    /// which) is tens of times slower and shares its machine with the test
    /// threads: its default budget is a second, so that slowness is not
    /// taken for overload. Gates run release builds.
    pub const SCAN_QUEUE_BUDGET_MS: u64 = if cfg!(debug_assertions) { 1_000 } else { 5 };
    /// The highest `server.max_scan_rate` accepted: far beyond what one
    /// gateway verifies, so a typo is caught, not a real setting.
    pub const MAX_SCAN_RATE: u64 = 10_000_000;
    /// hyper's header-read timeout: slowloris protection.
    pub const HEADER_READ_TIMEOUT_MS: u64 = 5_000;
    /// How long a scan or check-in body may take to arrive once the
    /// headers are in (slow bodies); authority batches have their own.
    pub const BODY_READ_TIMEOUT_MS: u64 = 5_000;
    /// How long an authority batch (up to `max_admin_body_bytes`) may take.
    pub const ADMIN_BODY_READ_TIMEOUT_MS: u64 = 60_000;
    pub const MAX_HEADER_BYTES: usize = 16 * 1024;
    pub const MAX_BODY_BYTES: usize = 4 * 1024;
    pub const MAX_ADMIN_BODY_BYTES: usize = 32 * 1024 * 1024;
    pub const SHUTDOWN_GRACE_MS: u64 = 10_000;
    pub const CLOCK_SKEW_S: u64 = crate::token::DEFAULT_SKEW_SECS;
    pub const FEVER_THRESHOLD_C: f64 = 37.3;
    /// Wuhan checked temperature twice a day.
    pub const HEALTH_RECORD_VALIDITY_S: u64 = 12 * 3600;
    pub const FEVER_QUARANTINE_S: u64 = 14 * 24 * 3600;
    /// Contact tracing needs 14 to 28 days of registrations.
    pub const RETENTION_DAYS: u64 = 28;
    pub const SNAPSHOT_INTERVAL_S: u64 = 300;
    /// Most codes the verifier stage checks in one batch: past a few dozen
    /// the batch equation saves little more per code, and a batch with a
    /// forged code costs more to bisect the larger it is.
    pub const VERIFY_MAX_BATCH: usize = 64;
    pub const PURGE_INTERVAL_S: u64 = 600;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    /// Trust list file, relative to the configuration file.
    pub trust: PathBuf,
    /// State file loaded at start, relative to the configuration file.
    pub state: Option<PathBuf>,
    pub clock_skew_s: Option<u64>,
    #[serde(default)]
    pub api_keys: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub regions: BTreeMap<String, RawRegion>,
    #[serde(default)]
    pub classes: BTreeMap<String, RawClass>,
    #[serde(default)]
    pub checkpoints: Vec<RawCheckpoint>,
    /// Region of a daily check-in that names none.
    pub default_region: Option<String>,
    /// HTTPS on the listeners (rustls).
    pub tls: Option<RawTls>,
    /// A candidate policy file (shadow rules): every scan is also decided
    /// under it, without effect, and disagreements are counted.
    pub candidate_policy: Option<PathBuf>,
    #[serde(default)]
    pub authority: RawAuthority,
    #[serde(default)]
    pub revocations: RawRevocations,
    #[serde(default)]
    pub log: RawLog,
    /// Replicas sharing state through NATS JetStream (docs/CLUSTER.md).
    pub cluster: Option<crate::operations::cluster_settings::RawCluster>,
    /// The verifier stage (batch signature verification).
    #[serde(default)]
    pub verify: RawVerify,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first, relative to the configuration file.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// Which listeners speak HTTPS: `public`, `admin` (default both).
    pub listeners: Option<Vec<String>>,
}

/// The verifier stage (`gateway::verifier`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    /// Verifier threads; default one per CPU; 0 verifies each scan on its
    /// own request worker, one at a time.
    pub threads: Option<usize>,
    pub max_batch: Option<usize>,
}

/// Validated verifier-stage settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifySettings {
    pub threads: usize,
    pub max_batch: usize,
}

impl Default for VerifySettings {
    fn default() -> Self {
        VerifySettings {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_batch: defaults::VERIFY_MAX_BATCH,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// Data directory (log segments, snapshots, tracing index), relative to
    /// the configuration file.
    pub dir: Option<PathBuf>,
    /// `strict` (default), `async` or `off`.
    pub mode: Option<String>,
    pub batch_max_records: Option<usize>,
    pub batch_max_wait_us: Option<u64>,
    pub segment_bytes: Option<u64>,
    pub queue_capacity: Option<usize>,
    pub snapshot_interval_s: Option<u64>,
    pub retention_days: Option<u64>,
    pub purge_interval_s: Option<u64>,
}

/// Durability settings; `None` in [`Config::log`] when logging is off.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub dir: PathBuf,
    pub wal: crate::durability::wal::WalSettings,
    pub snapshot_interval: Duration,
    pub retention: Duration,
    pub purge_interval: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthority {
    /// Keys that sign the authority's update and revocation batches.
    #[serde(default)]
    pub keys: Vec<RawAuthorityKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthorityKey {
    pub kid: String,
    pub public_key: Option<String>,
    pub public_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRevocations {
    pub filter_capacity: Option<usize>,
    pub filter_fp_rate: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub public_addr: Option<String>,
    pub admin_addr: Option<String>,
    pub max_connections: Option<usize>,
    pub admin_max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub scan_queue_budget_ms: Option<u64>,
    pub max_scan_rate: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
    pub body_read_timeout_ms: Option<u64>,
    pub admin_body_read_timeout_ms: Option<u64>,
    pub max_header_bytes: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub max_admin_body_bytes: Option<usize>,
    pub shutdown_grace_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    /// Fixed offset of the region's civil time, e.g. "+08:00" (for "one
    /// check-in per calendar day").
    pub utc_offset: Option<String>,
    pub fever_threshold_c: Option<f64>,
    pub health_record_validity_s: Option<u64>,
    pub fever_quarantine_s: Option<u64>,
    pub accept_issuers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClass {
    #[serde(default = "only_green")]
    pub admit: Vec<String>,
    #[serde(default)]
    pub requires_temperature: bool,
    #[serde(default)]
    pub admit_fever: bool,
    #[serde(default)]
    pub anti_passback_s: u64,
}

fn only_green() -> Vec<String> {
    vec!["green".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheckpoint {
    pub id: String,
    pub class: String,
    pub region: String,
    /// Anti-passback station group; defaults to the checkpoint id.
    pub group: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The public listener's connection cap.
    pub max_connections: usize,
    /// The admin listener's own cap, so that a flood on the public side
    /// never takes its room.
    pub admin_max_connections: usize,
    /// The public listener's cap per client address; 0: none (turnstiles
    /// behind one NAT address share it, so it is off unless configured).
    pub max_connections_per_client: usize,
    /// Priority admission (see `gateway::admission`).
    pub admission: AdmissionSettings,
    pub header_read_timeout: Duration,
    /// Public request bodies (scans, check-ins) must arrive within this.
    pub body_read_timeout: Duration,
    /// Authority batches must arrive within this.
    pub admin_body_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    /// Authority batches are larger than scans.
    pub max_admin_body_bytes: usize,
    pub shutdown_grace: Duration,
}

/// Priority admission's settings (`[server]`; see `gateway::admission`).
#[derive(Debug, Clone, Copy)]
pub struct AdmissionSettings {
    /// Requests doing their work at once.
    pub max_in_flight: usize,
    /// How long a scan may wait to start before it is refused.
    pub scan_queue_budget: Duration,
    /// At most this many scans admitted a second (0: no cap).
    pub max_scan_rate: u64,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerSettings,
    pub trust_path: PathBuf,
    pub state_path: Option<PathBuf>,
    pub clock_skew_s: u64,
    pub keys: ApiKeys,
    pub policy: Policy,
    /// Shadow rules: decided beside `policy` on every scan, never applied.
    pub candidate_policy: Option<Policy>,
    /// HTTPS: the certificate is re-read on reload; which listeners speak
    /// it takes effect at the next start.
    pub tls: Option<crate::operations::tls::TlsSettings>,
    pub trust: TrustList,
    pub authority_keys: Vec<(KeyId, VerifyingKey)>,
    pub revocation_filter: FilterSettings,
    /// Index into the policy's regions.
    pub default_region: Option<usize>,
    pub log: Option<LogSettings>,
    /// `None`: a single gateway.
    pub cluster: Option<crate::operations::cluster_settings::ClusterSettings>,
    pub verify: VerifySettings,
}

impl Config {
    /// Reads, parses and validates the file and the trust list it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
        let raw: RawConfig = toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })?;
        Config::from_raw(raw, path)
    }

    pub fn from_raw(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid =
            |field: &str, why: String| ConfigError::Invalid { path: path.to_owned(), field: field.into(), why };
        let addr = |field: &str, v: Option<String>, d: &str| -> Result<SocketAddr, ConfigError> {
            let s = v.unwrap_or_else(|| d.to_owned());
            s.parse().map_err(|_| invalid(field, format!("{s:?} is not an ip:port address")))
        };
        let s = raw.server;
        let server = ServerSettings {
            public_addr: addr("server.public_addr", s.public_addr, defaults::PUBLIC_ADDR)?,
            admin_addr: addr("server.admin_addr", s.admin_addr, defaults::ADMIN_ADDR)?,
            max_connections: s.max_connections.unwrap_or(defaults::MAX_CONNECTIONS),
            admin_max_connections: s.admin_max_connections.unwrap_or(defaults::ADMIN_MAX_CONNECTIONS),
            max_connections_per_client: s.max_connections_per_client.unwrap_or(0),
            admission: AdmissionSettings {
                max_in_flight: s.max_in_flight.unwrap_or(defaults::MAX_IN_FLIGHT),
                scan_queue_budget: Duration::from_millis(
                    s.scan_queue_budget_ms.unwrap_or(defaults::SCAN_QUEUE_BUDGET_MS),
                ),
                max_scan_rate: s.max_scan_rate.unwrap_or(0),
            },
            header_read_timeout: Duration::from_millis(
                s.header_read_timeout_ms.unwrap_or(defaults::HEADER_READ_TIMEOUT_MS),
            ),
            body_read_timeout: Duration::from_millis(s.body_read_timeout_ms.unwrap_or(defaults::BODY_READ_TIMEOUT_MS)),
            admin_body_read_timeout: Duration::from_millis(
                s.admin_body_read_timeout_ms.unwrap_or(defaults::ADMIN_BODY_READ_TIMEOUT_MS),
            ),
            max_header_bytes: s.max_header_bytes.unwrap_or(defaults::MAX_HEADER_BYTES),
            max_body_bytes: s.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES),
            max_admin_body_bytes: s.max_admin_body_bytes.unwrap_or(defaults::MAX_ADMIN_BODY_BYTES),
            shutdown_grace: Duration::from_millis(s.shutdown_grace_ms.unwrap_or(defaults::SHUTDOWN_GRACE_MS)),
        };
        if server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1".into()));
        }
        if server.admin_max_connections == 0 {
            return Err(invalid("server.admin_max_connections", "must be at least 1".into()));
        }
        if server.admission.max_in_flight == 0 {
            return Err(invalid("server.max_in_flight", "must be at least 1".into()));
        }
        if server.admission.scan_queue_budget > Duration::from_secs(1) {
            return Err(invalid("server.scan_queue_budget_ms", "must be between 0 and 1000".into()));
        }
        if server.admission.max_scan_rate > defaults::MAX_SCAN_RATE {
            let max = defaults::MAX_SCAN_RATE;
            return Err(invalid("server.max_scan_rate", format!("must be between 0 (no cap) and {max}")));
        }
        if server.header_read_timeout.is_zero() || server.header_read_timeout > Duration::from_secs(5) {
            return Err(invalid("server.header_read_timeout_ms", "must be between 1 and 5000".into()));
        }
        // hyper refuses read buffers under 8 KiB.
        if server.body_read_timeout.is_zero() || server.body_read_timeout > Duration::from_secs(60) {
            return Err(invalid("server.body_read_timeout_ms", "must be between 1 and 60000".into()));
        }
        if server.admin_body_read_timeout.is_zero() || server.admin_body_read_timeout > Duration::from_secs(600) {
            return Err(invalid("server.admin_body_read_timeout_ms", "must be between 1 and 600000".into()));
        }
        if !(8192..=1 << 20).contains(&server.max_header_bytes) {
            return Err(invalid("server.max_header_bytes", "must be between 8192 and 1048576".into()));
        }
        if !(256..=1 << 20).contains(&server.max_body_bytes) {
            return Err(invalid("server.max_body_bytes", "must be between 256 and 1048576".into()));
        }

        let trust_path = base.join(&raw.trust);
        let trust = load_trust(&trust_path)?;

        let mut keys = ApiKeys::default();
        for (role, hashes) in &raw.api_keys {
            let field = format!("api_keys.{role}");
            let role: Role = role.parse().map_err(|e: String| invalid(&field, e))?;
            for h in hashes {
                keys.add_hash(role, h).map_err(|e| invalid(&field, e))?;
            }
        }

        let policy = build_policy(raw.regions, raw.classes, raw.checkpoints, &trust, &invalid)?;
        let candidate_policy = match &raw.candidate_policy {
            None => None,
            Some(file) => Some(load_candidate(&base.join(file), &trust, &policy)?),
        };
        let tls = match raw.tls {
            None => None,
            Some(t) => {
                let (cert, key) = (base.join(&t.cert), base.join(&t.key));
                let material = crate::operations::tls::load(&cert, &key).map_err(|e| invalid("tls", e.to_string()))?;
                let listeners = t.listeners.unwrap_or_else(|| vec!["public".into(), "admin".into()]);
                if let Some(bad) = listeners.iter().find(|l| *l != "public" && *l != "admin") {
                    return Err(invalid("tls.listeners", format!("{bad:?} is neither \"public\" nor \"admin\"")));
                }
                let on = |l: &str| listeners.iter().any(|x| x == l);
                Some(crate::operations::tls::TlsSettings {
                    cert,
                    key,
                    public: on("public"),
                    admin: on("admin"),
                    material: std::sync::Arc::new(material),
                })
            }
        };
        let region_names: Vec<&str> = policy.regions().iter().map(|r| r.name.as_str()).collect();
        let default_region = match raw.default_region {
            None => None,
            Some(name) => Some(
                region_names
                    .iter()
                    .position(|r| *r == name)
                    .ok_or_else(|| invalid("default_region", format!("no region {name:?}")))?,
            ),
        };

        let mut authority_keys: Vec<(KeyId, VerifyingKey)> = Vec::new();
        for (i, k) in raw.authority.keys.into_iter().enumerate() {
            let field = format!("authority.keys[{i}]");
            let kid: KeyId =
                k.kid.parse().map_err(|e: crate::token::ParseKeyIdError| invalid(&field, e.to_string()))?;
            if authority_keys.iter().any(|(x, _)| *x == kid) {
                return Err(invalid(&field, format!("key id {kid} appears twice")));
            }
            let key = crate::operations::keyfiles::resolve_public(
                kid,
                k.public_key.as_deref(),
                k.public_key_file.as_deref(),
                base,
            )
            .map_err(|e| invalid(&field, e))?;
            authority_keys.push((kid, key));
        }

        let d = FilterSettings::default();
        let revocation_filter = FilterSettings {
            capacity: raw.revocations.filter_capacity.unwrap_or(d.capacity),
            fp_rate: raw.revocations.filter_fp_rate.unwrap_or(d.fp_rate),
        };
        if revocation_filter.capacity == 0 || revocation_filter.capacity > 100_000_000 {
            return Err(invalid("revocations.filter_capacity", "must be between 1 and 100000000".into()));
        }
        if !(revocation_filter.fp_rate > 0.0 && revocation_filter.fp_rate < 1.0) {
            return Err(invalid("revocations.filter_fp_rate", "must be strictly between 0 and 1".into()));
        }

        let l = raw.log;
        let d = crate::durability::wal::WalSettings::default();
        let mode = match l.mode.as_deref().unwrap_or("strict") {
            "strict" => Some(crate::durability::wal::Mode::Strict),
            "async" => Some(crate::durability::wal::Mode::Async),
            "off" => None,
            other => return Err(invalid("log.mode", format!("{other:?} is not strict, async or off"))),
        };
        let batch_max_records = l.batch_max_records.unwrap_or(d.batch_max_records);
        if !(1..=65_536).contains(&batch_max_records) {
            return Err(invalid("log.batch_max_records", "must be between 1 and 65536".into()));
        }
        let batch_max_wait_us = l.batch_max_wait_us.unwrap_or(d.batch_max_wait.as_micros() as u64);
        if batch_max_wait_us > 100_000 {
            return Err(invalid("log.batch_max_wait_us", "must be at most 100000".into()));
        }
        let segment_bytes = l.segment_bytes.unwrap_or(d.segment_bytes);
        if !(4096..=1 << 32).contains(&segment_bytes) {
            return Err(invalid("log.segment_bytes", "must be between 4096 and 4294967296".into()));
        }
        let queue_capacity = l.queue_capacity.unwrap_or(d.queue_capacity);
        if queue_capacity == 0 {
            return Err(invalid("log.queue_capacity", "must be positive".into()));
        }
        let retention_days = l.retention_days.unwrap_or(defaults::RETENTION_DAYS);
        if retention_days == 0 {
            return Err(invalid("log.retention_days", "must be positive".into()));
        }
        let log = mode.map(|mode| LogSettings {
            dir: base.join(l.dir.unwrap_or_else(|| PathBuf::from("data"))),
            wal: crate::durability::wal::WalSettings {
                mode,
                batch_max_records,
                batch_max_wait: Duration::from_micros(batch_max_wait_us),
                segment_bytes,
                queue_capacity,
            },
            snapshot_interval: Duration::from_secs(
                l.snapshot_interval_s.unwrap_or(defaults::SNAPSHOT_INTERVAL_S).max(1),
            ),
            retention: Duration::from_secs(retention_days * 86_400),
            purge_interval: Duration::from_secs(l.purge_interval_s.unwrap_or(defaults::PURGE_INTERVAL_S).max(1)),
        });

        let cluster = match raw.cluster {
            None => None,
            // A replica ships from its own log: without one it would have
            // nothing durable to ship and nothing to recover from.
            Some(_) if log.is_none() => {
                return Err(invalid("cluster", "needs the log: log.mode strict or async".into()))
            }
            Some(c) => Some(
                crate::operations::cluster_settings::ClusterSettings::from_raw(c, base)
                    .map_err(|(field, why)| invalid(field, why))?,
            ),
        };
        let v = raw.verify;
        let verify = VerifySettings {
            threads: v.threads.unwrap_or(VerifySettings::default().threads),
            max_batch: v.max_batch.unwrap_or(defaults::VERIFY_MAX_BATCH),
        };
        if verify.threads > 256 {
            return Err(invalid("verify.threads", "must be at most 256".into()));
        }
        if !(1..=4096).contains(&verify.max_batch) {
            return Err(invalid("verify.max_batch", "must be between 1 and 4096".into()));
        }

        Ok(Config {
            cluster,
            log,
            verify,
            path: path.to_owned(),
            server,
            trust_path,
            state_path: raw.state.map(|p| base.join(p)),
            clock_skew_s: raw.clock_skew_s.unwrap_or(defaults::CLOCK_SKEW_S),
            keys,
            policy,
            candidate_policy,
            tls,
            trust,
            authority_keys,
            revocation_filter,
            default_region,
        })
    }
}

/// `+08:00` → 28800.
fn parse_offset(s: &str) -> Option<i32> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

/// Regions, classes and checkpoints, validated and cross-referenced (the
/// live configuration's and a candidate policy's alike).
fn build_policy(
    raw_regions: BTreeMap<String, RawRegion>,
    raw_classes: BTreeMap<String, RawClass>,
    raw_checkpoints: Vec<RawCheckpoint>,
    trust: &TrustList,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Policy, ConfigError> {
    let mut regions = Vec::new();
    let mut region_names = Vec::new();
    for (name, r) in raw_regions {
        let field = |f: &str| format!("regions.{name}.{f}");
        let offset = r.utc_offset.as_deref().unwrap_or("+08:00");
        let utc_offset_s =
            parse_offset(offset).ok_or_else(|| invalid(&field("utc_offset"), format!("{offset:?} is not ±HH:MM")))?;
        let fever = r.fever_threshold_c.unwrap_or(defaults::FEVER_THRESHOLD_C);
        if !(35.0..=42.0).contains(&fever) {
            return Err(invalid(&field("fever_threshold_c"), "must be between 35 and 42".into()));
        }
        let mut accepted = 0u64;
        for issuer in &r.accept_issuers {
            let idx = trust.issuer_index(issuer).ok_or_else(|| {
                invalid(&field("accept_issuers"), format!("issuer {issuer:?} is not in the trust list"))
            })?;
            accepted |= 1 << idx;
        }
        if accepted == 0 {
            return Err(invalid(&field("accept_issuers"), "accepts no issuer".into()));
        }
        let quarantine = r.fever_quarantine_s.unwrap_or(defaults::FEVER_QUARANTINE_S);
        if quarantine == 0 {
            return Err(invalid(&field("fever_quarantine_s"), "must be positive".into()));
        }
        regions.push(Region {
            name: name.clone(),
            utc_offset_s,
            fever_threshold_c: fever,
            health_record_validity_s: r.health_record_validity_s.unwrap_or(defaults::HEALTH_RECORD_VALIDITY_S),
            fever_quarantine_s: quarantine,
            accepted_issuers: accepted,
        });
        region_names.push(name);
    }

    let mut classes = Vec::new();
    let mut class_names = Vec::new();
    for (name, c) in raw_classes {
        let field = format!("classes.{name}.admit");
        let mut admit = [false; 4];
        for colour in &c.admit {
            let col: crate::Color =
                colour.parse().map_err(|e: crate::color::ParseColorError| invalid(&field, e.to_string()))?;
            if col == crate::Color::Pending {
                return Err(invalid(&field, "pending codes never pass (rule 7)".into()));
            }
            admit[col.index()] = true;
        }
        classes.push(Class {
            name: name.clone(),
            admit,
            requires_temperature: c.requires_temperature,
            admit_fever: c.admit_fever,
            anti_passback_s: c.anti_passback_s,
        });
        class_names.push(name);
    }

    let mut checkpoints = Vec::new();
    let mut groups: Vec<String> = Vec::new();
    for (i, cp) in raw_checkpoints.into_iter().enumerate() {
        let field = |f: &str| format!("checkpoints[{i}].{f}");
        if cp.id.is_empty() || cp.id.len() > 64 {
            return Err(invalid(&field("id"), "must be 1 to 64 characters".into()));
        }
        let class = class_names
            .iter()
            .position(|c| *c == cp.class)
            .ok_or_else(|| invalid(&field("class"), format!("no class {:?}", cp.class)))?;
        let region = region_names
            .iter()
            .position(|r| *r == cp.region)
            .ok_or_else(|| invalid(&field("region"), format!("no region {:?}", cp.region)))?;
        let group_name = cp.group.unwrap_or_else(|| cp.id.clone());
        let group = match groups.iter().position(|g| *g == group_name) {
            Some(g) => g,
            None => {
                groups.push(group_name);
                groups.len() - 1
            }
        };
        let group = u16::try_from(group).map_err(|_| invalid(&field("group"), "more than 65535 groups".into()))?;
        checkpoints.push(Checkpoint { id: cp.id, class, region, group });
    }
    Policy::new(regions, classes, checkpoints).map_err(|e| invalid("checkpoints", e))
}

/// The raw form of a candidate policy file: the live configuration's
/// `[regions]`, `[classes]` and `[[checkpoints]]`, nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCandidate {
    #[serde(default)]
    regions: BTreeMap<String, RawRegion>,
    #[serde(default)]
    classes: BTreeMap<String, RawClass>,
    #[serde(default)]
    checkpoints: Vec<RawCheckpoint>,
}

/// Reads a candidate policy (shadow rules): validated like the live one,
/// against the same trust list, and it must decide at every live
/// checkpoint.
fn load_candidate(path: &Path, trust: &TrustList, live: &Policy) -> Result<Policy, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
    let raw: RawCandidate =
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), source: Box::new(e) })?;
    let invalid = |field: &str, why: String| ConfigError::Invalid { path: path.to_owned(), field: field.into(), why };
    let candidate = build_policy(raw.regions, raw.classes, raw.checkpoints, trust, &invalid)?;
    if let Some(missing) = live.checkpoints().iter().find(|c| candidate.place(&c.id).is_none()) {
        return Err(invalid(
            "checkpoints",
            format!("the candidate has no checkpoint {:?} of the live policy", missing.id),
        ));
    }
    Ok(candidate)
}

/// Reads a trust list file, and the `.pub` files it names (relative to
/// its folder); the parsing and checking are the core's.
pub fn load_trust(path: &Path) -> Result<TrustList, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
    let base = path.parent().unwrap_or(Path::new("."));
    TrustList::parse(&text, |kid, file| crate::operations::keyfiles::resolve_public(kid, None, Some(file), base))
        .map_err(|source| ConfigError::Trust { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/healthgate.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.policy.checkpoints().len(), 6);
        assert_eq!(c.trust.keys().len(), 3);
        let ningbo = c.policy.place("ningbo-metro-east-1").unwrap().region;
        assert!(!ningbo.accepts_issuer(c.trust.issuer_index("hubei").unwrap()));
    }

    #[test]
    fn offsets() {
        assert_eq!(parse_offset("+08:00"), Some(28_800));
        assert_eq!(parse_offset("-05:30"), Some(-19_800));
        assert_eq!(parse_offset("08:00"), None);
        assert_eq!(parse_offset("+8:00"), None);
    }
}
