//! Replicas that share state through NATS JetStream (docs/CLUSTER.md).
//!
//! The layer above the gateway: it imports `gateway` and the gateway knows
//! it only as a [`Replica`]. Started by `serving::server` after recovery
//! when the configuration has a `[cluster]` section; a single gateway never
//! builds any of it.
//!
//! # Layout
//!
//! - this file: [`Cluster`]: the connection, the streams, the positions, the
//!   [`Replica`] the gateway calls (authority posts, readiness, snapshots);
//! - [`streams`]: connecting, creating or checking the two streams, the
//!   durable consumers, message headers;
//! - [`order`]: the order stream's reader: authority batches (checked by
//!   this replica) and colour changes, applied in stream order;
//! - [`records`]: the records stream's reader: the other replicas' effects
//!   (merged) and registrations (indexed per node);
//! - [`shipper`]: follows this replica's durable log and publishes it;
//! - [`positions`]: `data/cluster.json`, saved with each snapshot;
//! - [`probe`]: asks JetStream every half second; a replica that has not
//!   heard from it for a while says it is stale;
//! - [`digest`]: the state digest and dump the convergence checks compare;
//! - [`tracing`]: tracing answers merged over this replica's index and the
//!   others'.

pub mod digest;
pub mod order;
pub mod positions;
pub mod probe;
pub mod records;
pub mod shipper;
pub mod streams;
pub mod tracing;

use crate::durability::visits::VisitIndex;
use crate::feed::FeedError;
use crate::gateway::replica::{AuthorityBatch, BoxFuture, Positions, Replica};
use crate::gateway::Gateway;
use crate::operations::cluster_settings::ClusterSettings;
use async_nats::jetstream;
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("cannot reach NATS at {urls}: {why}")]
    Connect { urls: String, why: String },
    #[error("credentials file {path}: {source}")]
    Credentials { path: PathBuf, source: std::io::Error },
    #[error("JetStream stream {stream}: {why}")]
    Stream { stream: String, why: String },
    #[error("cluster state {path}: {why}")]
    Positions { path: PathBuf, why: String },
    #[error("tracing index of node {node}: {why}")]
    Index { node: String, why: String },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// How many recent authority outcomes are kept for the posts waiting on
/// them (a post waits for its own message only; this bounds the map).
const OUTCOMES_KEPT: usize = 4096;

/// How long a post waits for its batch to come back through the stream.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The replication metrics (no holder or checkpoint labels).
pub struct ClusterMetrics {
    pub applied: IntGaugeVec,
    pub lag_messages: IntGaugeVec,
    pub lag_seconds: GaugeVec,
    pub publish_failures: IntCounter,
    pub shipper_backlog: IntGauge,
    pub refused: IntCounterVec,
    pub connected: IntGauge,
    pub apply_seconds: Gauge,
    pub contact_age: Gauge,
    pub stale: IntGauge,
    pub duplicates: IntCounter,
}

impl ClusterMetrics {
    fn new(r: &prometheus::Registry) -> prometheus::Result<Self> {
        let m = ClusterMetrics {
            applied: IntGaugeVec::new(
                Opts::new("healthgate_cluster_applied", "Last stream sequence applied, by stream"),
                &["stream"],
            )?,
            lag_messages: IntGaugeVec::new(
                Opts::new("healthgate_cluster_lag_messages", "Messages in the stream not yet applied, by stream"),
                &["stream"],
            )?,
            lag_seconds: GaugeVec::new(
                Opts::new(
                    "healthgate_cluster_lag_seconds",
                    "Time the last applied message waited in the stream, by stream",
                ),
                &["stream"],
            )?,
            publish_failures: IntCounter::new(
                "healthgate_cluster_publish_failures_total",
                "Publishes to JetStream that failed (retried from the local log)",
            )?,
            shipper_backlog: IntGauge::new(
                "healthgate_cluster_shipper_backlog",
                "Durable log records not yet shipped to the streams",
            )?,
            refused: IntCounterVec::new(
                Opts::new("healthgate_cluster_refused_total", "Stream messages refused, by reason"),
                &["reason"],
            )?,
            connected: IntGauge::new("healthgate_cluster_connected", "1 while connected to NATS")?,
            apply_seconds: Gauge::new(
                "healthgate_cluster_last_apply_seconds",
                "CPU time of the last records-stream message applied",
            )?,
            contact_age: Gauge::new(
                "healthgate_cluster_contact_age_seconds",
                "Seconds since JetStream last answered this replica's probe",
            )?,
            stale: IntGauge::new(
                "healthgate_cluster_stale",
                "1 while this replica has not heard from JetStream recently (serving from what it holds)",
            )?,
            duplicates: IntCounter::new(
                "healthgate_cluster_duplicate_batches_total",
                "Authority batches read from the order stream that this replica had applied already \
                 (byte-identical; published again after the stream lost messages): skipped",
            )?,
        };
        r.register(Box::new(m.applied.clone()))?;
        r.register(Box::new(m.lag_messages.clone()))?;
        r.register(Box::new(m.lag_seconds.clone()))?;
        r.register(Box::new(m.publish_failures.clone()))?;
        r.register(Box::new(m.shipper_backlog.clone()))?;
        r.register(Box::new(m.refused.clone()))?;
        r.register(Box::new(m.connected.clone()))?;
        r.register(Box::new(m.apply_seconds.clone()))?;
        r.register(Box::new(m.contact_age.clone()))?;
        r.register(Box::new(m.stale.clone()))?;
        r.register(Box::new(m.duplicates.clone()))?;
        Ok(m)
    }
}

/// What the order reader did with an authority batch: the epoch and the
/// LSN of its log record, or why it refused it.
type Outcome = Result<(u64, u64), FeedError>;

/// A stream's reader position and freshness.
#[derive(Debug, Default, Clone, Copy)]
struct Freshness {
    lag_messages: u64,
    lag_seconds: f64,
}

pub struct Cluster {
    settings: ClusterSettings,
    gw: Arc<Gateway>,
    js: jetstream::Context,
    metrics: ClusterMetrics,
    /// Where the cluster keeps `cluster.json` and the remote indexes.
    data_dir: PathBuf,
    /// The order reader's position and the authority sequence after it,
    /// moved together (a std Mutex: held for two stores, never awaited).
    order_pos: Mutex<(u64, u64)>,
    /// Moves with the order position: posts wait on it for their batch.
    order_applied: watch::Sender<u64>,
    outcomes: Mutex<BTreeMap<u64, Outcome>>,
    /// The authority batches applied: a byte-identical copy is skipped, and
    /// those the stream lost are published again.
    ledger: Mutex<order::Ledger>,
    /// The message ids of the last messages applied, order stream then
    /// records stream. Each is locked before its stream's position whenever
    /// both are touched, so that the ids saved with a position are those of
    /// the messages up to it.
    recent: [Mutex<streams::Recent>; 2],
    /// Set while the order reader has batches the stream lost still to
    /// publish again: posts wait (503) rather than land before them.
    republishing: AtomicBool,
    records_pos: AtomicU64,
    /// Stream ends at start: caught up once both are applied.
    start_targets: (u64, u64),
    caught_up: AtomicBool,
    freshness: Mutex<[Freshness; 2]>,
    /// The last LSN the shipper has in both streams.
    shipped: AtomicU64,
    connected: Arc<AtomicBool>,
    /// Counts reconnections: the shipper asks the streams where it stands
    /// again after each (the server may have restarted without its tail).
    connections: Arc<AtomicU64>,
    /// When the cluster started, and the last time (milliseconds after
    /// it) a probe sent then was answered.
    started: Instant,
    last_contact_ms: AtomicU64,
    /// The streams' ends as the probe last saw them.
    order_end: AtomicU64,
    records_end: AtomicU64,
    /// Other replicas' tracing indexes, opened as their records arrive.
    remote: Mutex<HashMap<String, Arc<VisitIndex>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Cluster {
    /// Connects, creates or checks the streams, loads the positions saved
    /// with the last snapshot, and starts the readers and the shipper. The
    /// gateway's state must be recovered already.
    pub async fn start(
        gw: Arc<Gateway>,
        settings: &ClusterSettings,
        data_dir: &Path,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let connected = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let client = streams::connect(settings, connected.clone(), connections.clone()).await?;
        let js = jetstream::new(client);
        let (order_end, records_end) = streams::ensure(&js, settings).await?;
        let saved = positions::load(data_dir)?;
        // Recovery set the authority sequence from the snapshot, which may
        // hold batches after the saved order position: go back, the stream
        // re-applies them in their place.
        gw.set_feed_seq(saved.feed_seq);
        let (remote, damaged) = records::open_remote_indexes(data_dir, &settings.node)?;
        let (records_from, records_ids) = match damaged {
            0 => (saved.records, saved.records_ids),
            // Reading the records stream again from its start rebuilds them.
            n => {
                gw.metrics().index_rebuilds.inc_by(n);
                (0, Vec::new())
            }
        };
        // A replica that reads the order stream from its start sees every
        // batch: its ledger is whole.
        let ledger = order::Ledger::from_saved(saved.batches, saved.batches_from_start || saved.order == 0);
        let metrics = ClusterMetrics::new(gw.registry())?;
        let cluster = Arc::new(Cluster {
            settings: settings.clone(),
            js,
            metrics,
            data_dir: data_dir.to_owned(),
            order_pos: Mutex::new((saved.order, saved.feed_seq)),
            order_applied: watch::Sender::new(saved.order),
            outcomes: Mutex::new(BTreeMap::new()),
            ledger: Mutex::new(ledger),
            recent: [
                Mutex::new(streams::Recent::from_saved(saved.order_ids)),
                Mutex::new(streams::Recent::from_saved(records_ids)),
            ],
            republishing: AtomicBool::new(false),
            records_pos: AtomicU64::new(records_from),
            start_targets: (order_end, records_end),
            caught_up: AtomicBool::new(false),
            freshness: Mutex::new([Freshness::default(); 2]),
            shipped: AtomicU64::new(0),
            connected,
            connections,
            started: Instant::now(),
            last_contact_ms: AtomicU64::new(0),
            order_end: AtomicU64::new(order_end),
            records_end: AtomicU64::new(records_end),
            remote: Mutex::new(remote),
            tasks: Mutex::new(Vec::new()),
            gw: gw.clone(),
        });
        cluster.check_caught_up();
        let tasks = vec![
            tokio::spawn(order::run(cluster.clone())),
            tokio::spawn(records::run(cluster.clone())),
            tokio::spawn(shipper::run(cluster.clone())),
            tokio::spawn(probe::run(cluster.clone())),
        ];
        *cluster.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        gw.attach_replica(cluster.clone());
        ::tracing::info!(node = %settings.node, order_from = saved.order, records_from = saved.records,
            order_end, records_end, "cluster started");
        Ok(cluster)
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }
    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// A probe asked at `asked` was answered.
    fn contacted(&self, asked: Instant) {
        let ms = asked.saturating_duration_since(self.started).as_millis() as u64;
        self.last_contact_ms.fetch_max(ms, Ordering::AcqRel);
    }

    fn set_stream_ends(&self, (order, records): (u64, u64)) {
        self.order_end.store(order, Ordering::Release);
        self.records_end.store(records, Ordering::Release);
    }

    /// The client reconnected since `generation` (a count of connections).
    fn reconnected_since(&self, generation: u64) -> bool {
        self.connections.load(Ordering::Acquire) != generation
    }

    /// The id of the server the client is connected to. A nats-server picks
    /// a new one at each start, and the client learns it from the server's
    /// first words on a new connection, before any message on it: a reader
    /// that sees it change knows the server restarted (and may have lost
    /// messages) before it applies anything the new one delivers. The
    /// connection count alone comes too late for that: the client reports
    /// a reconnection on a channel of its own, which may lag the messages.
    fn server_id(&self) -> String {
        self.js.client().server_info().server_id
    }

    /// The ids a reader of stream 0 (order) or 1 (records) checks against
    /// the stream, and whether that is the quick check: every id once per
    /// server (`checked` names the server last checked in full; one that
    /// did not restart lost nothing), the last one otherwise.
    fn ids_to_check(&self, stream: usize, checked: Option<&str>, server: &str) -> (Vec<(u64, String)>, bool) {
        let mut ids = self.recent_ids(stream);
        let quick = checked == Some(server);
        if quick {
            ids = ids.split_off(ids.len().saturating_sub(1));
        }
        (ids, quick)
    }

    /// The ids of the messages applied up to the position of stream 0
    /// (order) or 1 (records).
    fn recent_ids(&self, stream: usize) -> Vec<(u64, String)> {
        let recent = self.recent[stream].lock().unwrap_or_else(|e| e.into_inner());
        let pos = match stream {
            0 => self.order_position().0,
            _ => self.records_pos.load(Ordering::Acquire),
        };
        recent.upto(pos)
    }

    /// The probe saw stream 0 (order) or 1 (records) end after what this
    /// replica applied.
    fn reader_behind(&self, stream: usize) -> bool {
        match stream {
            0 => self.order_end.load(Ordering::Acquire) > self.order_position().0,
            _ => self.records_end.load(Ordering::Acquire) > self.records_pos.load(Ordering::Acquire),
        }
    }

    /// Time since JetStream last answered a probe.
    pub fn contact_age(&self) -> Duration {
        let at = self.started + Duration::from_millis(self.last_contact_ms.load(Ordering::Acquire));
        Instant::now().saturating_duration_since(at)
    }

    /// Disconnected, or not heard from JetStream for [`probe::STALE_AFTER`]:
    /// answers come from what this replica holds, which may be behind.
    pub fn is_stale(&self) -> bool {
        !self.is_connected() || self.contact_age() > probe::STALE_AFTER
    }

    /// Messages of the order stream not applied yet: what the reader last
    /// saw pending, or the stream's end as the probe saw it, whichever says
    /// more (an idle or cut-off reader sees nothing pending).
    fn order_lag(&self) -> u64 {
        let seen = self.freshness.lock().unwrap_or_else(|e| e.into_inner())[0].lag_messages;
        seen.max(self.order_end.load(Ordering::Acquire).saturating_sub(self.order_position().0))
    }

    fn update_staleness(&self) {
        self.metrics.contact_age.set(self.contact_age().as_secs_f64());
        self.metrics.stale.set(i64::from(self.is_stale()));
        self.metrics.lag_messages.with_label_values(&["order"]).set(self.order_lag() as i64);
    }

    fn order_position(&self) -> (u64, u64) {
        *self.order_pos.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the order position past message `seq` (id `id`), and records
    /// an authority outcome.
    fn order_applied(&self, seq: u64, id: String, outcome: Option<Outcome>) {
        if let Some(o) = outcome {
            let mut m = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
            m.insert(seq, o);
            while m.len() > OUTCOMES_KEPT {
                m.pop_first();
            }
        }
        {
            let mut recent = self.recent[0].lock().unwrap_or_else(|e| e.into_inner());
            recent.push(seq, id);
            *self.order_pos.lock().unwrap_or_else(|e| e.into_inner()) = (seq, self.gw.last_feed_seq());
        }
        self.metrics.applied.with_label_values(&["order"]).set(seq as i64);
        self.order_applied.send_replace(seq);
        self.check_caught_up();
    }

    /// Sets the order position back after the stream lost messages (the
    /// authority sequence stays: the state holds those batches).
    fn order_rewound(&self, seq: u64) {
        let mut recent = self.recent[0].lock().unwrap_or_else(|e| e.into_inner());
        let mut p = self.order_pos.lock().unwrap_or_else(|e| e.into_inner());
        p.0 = seq;
        recent.forget_after(seq);
        self.order_applied.send_replace(seq);
    }

    /// Sets the records position back after the stream lost messages.
    fn records_rewound(&self, seq: u64) {
        let mut recent = self.recent[1].lock().unwrap_or_else(|e| e.into_inner());
        self.records_pos.store(seq, Ordering::Release);
        recent.forget_after(seq);
        self.metrics.applied.with_label_values(&["records"]).set(seq as i64);
    }

    fn records_applied(&self, seq: u64, id: String) {
        {
            let mut recent = self.recent[1].lock().unwrap_or_else(|e| e.into_inner());
            recent.push(seq, id);
            self.records_pos.store(seq, Ordering::Release);
        }
        self.metrics.applied.with_label_values(&["records"]).set(seq as i64);
        self.check_caught_up();
    }

    fn set_freshness(&self, stream: usize, lag_messages: u64, lag_seconds: f64) {
        let name = if stream == 0 { "order" } else { "records" };
        self.metrics.lag_messages.with_label_values(&[name]).set(lag_messages as i64);
        self.metrics.lag_seconds.with_label_values(&[name]).set(lag_seconds);
        self.freshness.lock().unwrap_or_else(|e| e.into_inner())[stream] = Freshness { lag_messages, lag_seconds };
    }

    fn check_caught_up(&self) {
        if self.caught_up.load(Ordering::Acquire) {
            return;
        }
        let order = self.order_position().0;
        let records = self.records_pos.load(Ordering::Acquire);
        if order >= self.start_targets.0 && records >= self.start_targets.1 {
            self.caught_up.store(true, Ordering::Release);
            ::tracing::info!(order, records, "caught up with the cluster's streams");
        }
    }

    /// The tracing index of `node`'s registrations, opened on first use.
    fn remote_index(&self, node: &str) -> Result<Arc<VisitIndex>, ClusterError> {
        let mut m = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = m.get(node) {
            return Ok(i.clone());
        }
        let i = Arc::new(records::open_remote_index(&self.data_dir, node)?);
        m.insert(node.to_owned(), i.clone());
        Ok(i)
    }

    async fn submit_batch(&self, batch: AuthorityBatch) -> Result<u64, FeedError> {
        // Check what can be checked here before publishing: a batch this
        // replica would refuse is refused by every replica.
        let keys = self.gw.live().authority_keys.clone();
        let (seq, kind, body) = match &batch {
            AuthorityBatch::Updates(b) => (b.seq, "updates", b.verify(&keys).map(|_| serde_json::to_vec(b))),
            AuthorityBatch::Revocations(b) => (b.seq, "revocations", b.verify(&keys).map(|()| serde_json::to_vec(b))),
        };
        let count = |r: &str| self.gw.metrics().feed_batches.with_label_values(&[kind, r]).inc();
        let body = match body {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(FeedError::Malformed(e.to_string())),
            Err(e) => {
                count(if matches!(e, FeedError::Malformed(_)) { "malformed" } else { "unauthenticated" });
                return Err(e);
            }
        };
        let last = self.gw.last_feed_seq();
        if seq <= last {
            count("replay");
            return Err(FeedError::Replay { got: seq, last });
        }
        let unavailable = |why: String| FeedError::Unavailable(format!("cluster unavailable: {why}"));
        if !self.is_connected() {
            // Not even handed to the client: it would send it on reconnection,
            // after this answer said 503.
            count("unavailable");
            return Err(unavailable("not connected to NATS; nothing was published".into()));
        }
        // A stream that lost what this replica applied (nats-server killed
        // before its own fsync) first gets those batches back, in their
        // order: a new batch published before them would come first, and
        // replicas that had not applied them would then refuse them.
        if !self.stream_holds_what_was_applied().await {
            count("unavailable");
            return Err(unavailable(
                "the order stream lost messages this replica applied and they are being published again; \
                 nothing was published, retry shortly"
                    .into(),
            ));
        }
        let at = self.gw.now();
        let stream_seq = streams::publish_authority(self, kind, at, body).await.map_err(|e| {
            self.metrics.publish_failures.inc();
            unavailable(format!("{e}; the batch may still reach the stream: GET /v1/admin/feed tells"))
        })?;
        // Wait for this replica's reader to reach the batch in stream order.
        let mut w = self.order_applied.subscribe();
        let reached =
            tokio::time::timeout(SUBMIT_TIMEOUT, async { w.wait_for(|p| *p >= stream_seq).await.map(|_| ()) }).await;
        if !matches!(reached, Ok(Ok(_))) {
            return Err(unavailable("the batch is in the stream but this replica has not applied it yet".into()));
        }
        let outcome = self.outcomes.lock().unwrap_or_else(|e| e.into_inner()).get(&stream_seq).cloned();
        let (epoch, lsn) = outcome.ok_or_else(|| unavailable("the batch's outcome is no longer known".into()))??;
        self.gw.wait_durable_lsn(lsn).await.map_err(|e| FeedError::Unavailable(e.to_string()))?;
        Ok(epoch)
    }
}

impl Cluster {
    /// The order stream still holds, at this replica's position, the last
    /// message it applied, and no batch is waiting to be published again.
    async fn stream_holds_what_was_applied(&self) -> bool {
        if self.republishing.load(Ordering::Acquire) {
            return false;
        }
        let Some((seq, id)) = self.recent_ids(0).pop() else { return true };
        let Ok(st) = self.js.get_stream(&self.settings.order_stream).await else { return false };
        match st.get_raw_message(seq).await {
            Ok(m) => streams::message_id(Some(&m.headers)) == id,
            Err(_) => false,
        }
    }
}

impl Replica for Cluster {
    fn submit(&self, batch: AuthorityBatch) -> BoxFuture<'_, Result<u64, FeedError>> {
        Box::pin(self.submit_batch(batch))
    }

    fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    fn status(&self) -> serde_json::Value {
        let (order, _) = self.order_position();
        let records = self.records_pos.load(Ordering::Acquire);
        let f = *self.freshness.lock().unwrap_or_else(|e| e.into_inner());
        let durable = *self.gw.durable_watch().borrow();
        let shipped = self.shipped.load(Ordering::Acquire);
        let order_lag = self.order_lag();
        let stale = self.is_stale();
        serde_json::json!({
            "node": self.settings.node,
            "connected": self.is_connected(),
            "stale": stale,
            "contact_age_seconds": (self.contact_age().as_secs_f64() * 1000.0).round() / 1000.0,
            "caught_up": self.caught_up() && !stale && order_lag == 0,
            "order": {"applied": order, "lag_messages": order_lag, "lag_seconds": f[0].lag_seconds},
            "records": {"applied": records, "lag_messages": f[1].lag_messages, "lag_seconds": f[1].lag_seconds},
            "shipper": {"shipped_lsn": shipped, "backlog": durable.saturating_sub(shipped)},
            "publish_failures": self.metrics.publish_failures.get(),
        })
    }

    /// Stops the readers and the shipper (shutdown; the log stays the
    /// record of truth, and the shipper resumes from the stream at the next
    /// start).
    fn stop(&self) {
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
        // Close the other replicas' indexes now (dropping one commits it
        // durably), not when the last reference goes.
        for (node, index) in self.remote.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            if let Err(e) = index.sync() {
                ::tracing::warn!(node = %node, error = %e, "remote tracing index sync failed at shutdown");
            }
        }
    }

    fn node(&self) -> &str {
        &self.settings.node
    }

    fn remote_visits(&self) -> Vec<(String, Arc<VisitIndex>)> {
        let m = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, i)| (k.clone(), i.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn capture(&self) -> Positions {
        let ((order, feed_seq), order_ids) = {
            let recent = self.recent[0].lock().unwrap_or_else(|e| e.into_inner());
            let p = self.order_position();
            (p, recent.upto(p.0))
        };
        let (records, records_ids) = {
            let recent = self.recent[1].lock().unwrap_or_else(|e| e.into_inner());
            let p = self.records_pos.load(Ordering::Acquire);
            (p, recent.upto(p))
        };
        // Every batch in the ledger now is in the store the snapshot reads.
        let (batches, batches_from_start) = self.ledger.lock().unwrap_or_else(|e| e.into_inner()).to_save();
        Positions { order, feed_seq, records, order_ids, records_ids, batches, batches_from_start }
    }

    fn snapshot_written(&self, at: Positions) {
        // The remote indexes must hold everything up to `at.records` on disk
        // before the position says so.
        for (node, index) in self.remote_visits() {
            if let Err(e) = index.sync() {
                ::tracing::warn!(node = %node, error = %e, "remote tracing index sync failed; positions not saved");
                return;
            }
        }
        if let Err(e) = positions::save(&self.data_dir, &at) {
            ::tracing::warn!(error = %e, "cluster positions not saved; the next start re-reads more of the streams");
        }
    }
}
