//! The gateway: the live state and the operations the HTTP layer calls.
//! Nothing here knows about hyper.
//!
//! [`Gateway`] is split by what its parts do, one file each:
//!
//! - this file: the live, read-mostly state ([`LiveConfig`] behind one
//!   `ArcSwap`, revocations behind another), the store, readiness, logging
//!   a record and waiting for it to be durable;
//! - [`scan`]: scans, check-ins and holder status (the request side);
//! - [`verifier`]: the verifier stage, which checks the signatures of scans
//!   that arrive together in one batch;
//! - [`authority`]: the authority's signed batches and configuration reload;
//! - [`effect`]: how a logged effect changes a holder, one function for the
//!   live path and for replay;
//! - [`lifecycle`]: recovery at start, snapshots, retention, shutdown;
//! - [`shadow`]: a candidate policy decided beside the live one, counted;
//! - [`admission`]: which requests are taken on under overload (scans
//!   first, fast refusals past the queueing budget).
//!
//! Read-mostly data (trust list, policy, API keys, skew) is one immutable
//! [`LiveConfig`]: a request loads it once and uses that one version
//! throughout, and a reload swaps it whole, so no request ever sees half of
//! a new configuration. Per-holder mutable state is the [`Store`].

pub mod admission;
pub mod authority;
pub mod effect;
pub mod lifecycle;
pub mod replica;
pub mod scan;
pub mod shadow;
pub mod verifier;

pub use authority::FeedOrder;
pub use lifecycle::{PersistError, RecoveryReport};
pub use scan::{CheckinError, CheckinOutcome, CheckinRequest, HolderStatus, ScanError, ScanOutcome, ScanRequest};

use crate::clock::{Clock, UnixSecs};
use crate::durability::indexer::Indexer;
use crate::durability::wal::record::Event;
use crate::durability::wal::{Ticket, Wal, WalError};
use crate::operations::auth::ApiKeys;
use crate::operations::config::{Config, LogSettings, VerifySettings};
use crate::operations::metrics::Metrics;
use crate::operations::tls::Certificates;
use crate::policy::Policy;
use crate::revocation::{FilterSettings, Revocations};
use crate::store::Store;
use crate::token::KeyId;
use crate::trust::TrustList;
use crate::verify::Trust;
use crate::Color;
use arc_swap::ArcSwap;
use ed25519_dalek::VerifyingKey;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Everything read-mostly that comes from the configuration files, swapped
/// as one on reload. (The state file, the snapshot of the store on disk, is
/// another thing: see `durability::state_file`.)
pub struct LiveConfig {
    pub policy: Policy,
    /// Shadow rules: decided beside `policy`, never applied.
    pub candidate: Option<Policy>,
    pub trust: TrustList,
    pub keys: ApiKeys,
    pub clock_skew_s: u64,
    pub authority_keys: Vec<(KeyId, VerifyingKey)>,
    pub revocation_filter: FilterSettings,
    pub default_region: Option<usize>,
    /// Bumped on every swap; shown in logs and tests.
    pub generation: u64,
}

impl LiveConfig {
    pub fn from_config(c: &Config, generation: u64) -> LiveConfig {
        LiveConfig {
            policy: c.policy.clone(),
            candidate: c.candidate_policy.clone(),
            trust: c.trust.clone(),
            keys: c.keys.clone(),
            clock_skew_s: c.clock_skew_s,
            authority_keys: c.authority_keys.clone(),
            revocation_filter: c.revocation_filter,
            default_region: c.default_region,
            generation,
        }
    }

    /// What token verification needs of it.
    pub fn trust(&self) -> Trust<'_> {
        Trust { list: &self.trust, skew_s: self.clock_skew_s }
    }
}

/// Runs `f`, which may take milliseconds of CPU, hold a std lock for that
/// long or read files, without holding up an async worker: on the
/// multi-threaded runtime the worker first hands its other tasks to another
/// thread (`block_in_place`), so requests queued behind it keep being
/// answered. On a current-thread runtime (some tests) or outside any
/// runtime it runs in place.
pub(crate) fn off_workers<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The durability pieces a gateway with logging on holds, set once by
/// recovery.
pub struct Durable {
    pub settings: LogSettings,
    pub indexer: Indexer,
    /// LSN named by the last snapshot written (segments up to it are no
    /// longer needed for recovery).
    pub snapshot_lsn: AtomicU64,
    /// One snapshot writer at a time: the periodic one and the closing one
    /// would otherwise write the same temporary file.
    pub snapshot_writer: std::sync::Mutex<()>,
}

pub struct Gateway {
    live: ArcSwap<LiveConfig>,
    store: Store,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    shadow: shadow::ShadowMetrics,
    /// Which requests are taken on under overload (scans first).
    admission: admission::Admission,
    /// The certificate served over TLS, when `[tls]` is configured.
    certificates: Option<Arc<Certificates>>,
    /// Where `metrics` is registered; passed in, never global.
    registry: prometheus::Registry,
    /// False until the state is recovered (and a replica has joined its
    /// cluster): scans, check-ins and authority batches are refused (503).
    loaded: AtomicBool,
    /// True once shutdown began: readiness goes 503 so balancers move away.
    draining: AtomicBool,
    generation: AtomicU64,
    /// Revocations, immutable and swapped whole per authority batch (apart
    /// from the live configuration: they change with the feed, not the
    /// configuration files).
    revocations: ArcSwap<Revocations>,
    /// Orders authority batches against each other and colour changes
    /// against the log (see [`FeedOrder`]).
    feed: FeedOrder,
    /// Where the configuration is re-read from on reload.
    config_path: PathBuf,
    /// The write-ahead log, once recovery has started it. Unset when
    /// logging is off (benchmarks) or before the state is loaded.
    wal: OnceLock<Arc<Wal>>,
    /// Snapshot, index and retention state once recovery has run.
    durable: OnceLock<Durable>,
    /// A `[cluster]` is configured: effects merge (see [`replica`]).
    clustered: bool,
    /// The replication layer, once started (the `cluster` module).
    replica: OnceLock<Arc<dyn replica::Replica>>,
    /// The last durable LSN, moved by the log writer after each batch.
    durable_tx: tokio::sync::watch::Sender<u64>,
    /// The verifier stage's settings (read at start; a reload keeps them).
    verify_settings: VerifySettings,
    /// The verifier stage, started by the first scan that needs it (a
    /// gateway built only to recover or inspect state starts no threads);
    /// `None` inside when verification is inline (`verify.threads = 0`).
    verifier: OnceLock<Option<verifier::Verifier>>,
    /// Seed of the batch equation's coefficients for in-process batches
    /// (`scan_many_nowait`); secret and random, like the filter's.
    batch_seed: [u8; 32],
}

impl Gateway {
    pub fn new(config: &Config, clock: Arc<dyn Clock>, registry: prometheus::Registry) -> prometheus::Result<Gateway> {
        let metrics = Metrics::new(&registry)?;
        let shadow = shadow::ShadowMetrics::new(&registry)?;
        shadow.active.set(i64::from(config.candidate_policy.is_some()));
        let certificates = config.tls.as_ref().map(|t| Certificates::new(&t.material, &registry)).transpose()?;
        // The filter's hash seed: random, so that nobody can aim codes at
        // its false positives.
        let seed: [u8; 32] = rand::random();
        Ok(Gateway {
            live: ArcSwap::from_pointee(LiveConfig::from_config(config, 1)),
            store: Store::default(),
            clock,
            metrics,
            shadow,
            admission: admission::Admission::new(config.server.admission, &registry)?,
            certificates,
            registry,
            loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            revocations: ArcSwap::from_pointee(Revocations::empty(config.revocation_filter, seed)),
            feed: FeedOrder::default(),
            config_path: config.path.clone(),
            wal: OnceLock::new(),
            durable: OnceLock::new(),
            clustered: config.cluster.is_some(),
            replica: OnceLock::new(),
            durable_tx: tokio::sync::watch::Sender::new(0),
            verify_settings: config.verify,
            verifier: OnceLock::new(),
            batch_seed: rand::random(),
        })
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn metrics_text(&self) -> String {
        self.refresh_gauges();
        let mut out = String::new();
        // Encoding into a String fails only on invalid metric names, which
        // the registry refused at registration.
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }

    /// The certificate store both TLS listeners resolve from.
    pub fn certificates(&self) -> Option<&Arc<Certificates>> {
        self.certificates.as_ref()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    pub fn admission(&self) -> &admission::Admission {
        &self.admission
    }
    pub fn now(&self) -> UnixSecs {
        self.clock.now()
    }
    /// The live configuration: load it once per request and pass it on.
    pub fn live(&self) -> arc_swap::Guard<Arc<LiveConfig>> {
        self.live.load()
    }

    /// Replaces the whole live configuration. Requests in flight finish on
    /// the old one.
    pub fn swap_live(&self, mut next: LiveConfig) -> u64 {
        next.generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let g = next.generation;
        self.shadow.active.set(i64::from(next.candidate.is_some()));
        self.live.store(Arc::new(next));
        self.store.bump_epoch();
        g
    }

    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
        self.metrics.ready.set(i64::from(self.is_ready()));
    }
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.metrics.ready.set(0);
    }
    pub fn is_ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && !self.wal.get().is_some_and(|w| w.is_failed())
            && self.replica.get().is_none_or(|r| r.caught_up())
    }

    /// Logs a record if logging is on. Called under the lock that orders
    /// the change it records.
    fn log(&self, at: UnixSecs, event: impl FnOnce() -> Event) -> Result<Option<Ticket>, WalError> {
        match self.wal.get() {
            None => Ok(None),
            Some(w) => w.append(at, event()).map(Some),
        }
    }

    /// Waits until a logged change is durable (no-op when logging is off).
    pub async fn wait_durable(ticket: Option<Ticket>) -> Result<(), WalError> {
        match ticket {
            None => Ok(()),
            Some(t) => t.wait().await.map(|_| ()),
        }
    }

    /// Brings gauges that are kept elsewhere up to date before a scrape.
    pub fn refresh_gauges(&self) {
        for (c, n) in Color::ALL.iter().zip(self.store.count_by_color()) {
            self.metrics.holders.with_label_values(&[c.as_str()]).set(n);
        }
        self.metrics.epoch.set(i64::try_from(self.store.epoch()).unwrap_or(i64::MAX));
        self.metrics.ready.set(i64::from(self.is_ready()));
        self.refresh_durability_gauges();
    }
}
