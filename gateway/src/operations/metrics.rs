//! Prometheus metrics.
//!
//! One struct, registered into a [`Registry`] that `main` creates and passes
//! down (never a global). Hot-path handles (one counter per decision and
//! reason, the latency histogram) are resolved once here, so a scan never
//! looks up a label. No label carries a holder or a checkpoint: privacy, and
//! bounded cardinality.

use crate::policy::{Decision, Reason};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Public => "public",
            Listener::Admin => "admin",
        }
    }
}

pub struct Metrics {
    /// `[pass, deny][reason]`.
    scans: [[IntCounter; 13]; 2],
    pub scan_seconds: Histogram,
    pub holders: IntGaugeVec,
    pub epoch: IntGauge,
    open_connections: [IntGauge; 2],
    rejected_connections: [IntCounter; 2],
    /// Public connections refused at the per-client-address cap.
    pub rejected_connections_per_client: IntCounter,
    accept_errors: [IntCounter; 2],
    pub rejected_requests: IntCounterVec,
    pub ready: IntGauge,
    /// Authority batches by kind (updates, revocations) and result.
    pub feed_batches: IntCounterVec,
    pub feed_changes: IntCounter,
    pub feed_last_seq: IntGauge,
    /// Filter hits that the exact set cleared; revoked codes seen.
    pub revocation_false_positives: IntCounter,
    pub revocations: IntGauge,
    pub checkins: IntCounterVec,
    pub reloads: IntCounterVec,
    /// Records per fsync of the log (group commit at work).
    pub log_batch_records: Histogram,
    pub log_fsync_seconds: Histogram,
    pub log_commit_wait_seconds: Histogram,
    pub snapshots: IntCounterVec,
    pub retention_purged_visits: IntCounter,
    pub retention_purged_segments: IntCounter,
    pub recovery_seconds: prometheus::Gauge,
    pub recovery_replayed: IntGauge,
    /// The connection cap of each listener, so that saturation is a ratio
    /// a rule can compare without knowing the configuration.
    connection_limit: [IntGauge; 2],
    /// Unix time of the last authority batch applied (or replayed at
    /// start); 0 until there is one. Staleness is `time() -` this.
    pub feed_last_batch_time: IntGauge,
    /// 1 once the log failed to write or fsync: acknowledgements stopped.
    pub log_failed: IntGauge,
    /// Durable log records not yet in the tracing index, and whether the
    /// indexer stopped on an error. Read at scrape time.
    pub index_lag_records: IntGauge,
    pub index_failed: IntGauge,
    pub index_rebuilds: IntCounter,
    /// 1 when the last reload was applied, 0 when it was refused.
    pub reload_ok: IntGauge,
    /// Codes per signature batch of the verifier stage (1: a scan that
    /// found the verifier idle and went alone).
    pub verify_batch_size: Histogram,
}

/// 10 µs to 100 ms in 1-2-5 steps: a scan is microseconds when healthy and
/// the interesting failures are in milliseconds. Classic buckets, with a
/// boundary on the 5 ms latency objective (`le="0.005"`), which the
/// recording rules in config/prometheus read; native histograms would need
/// a newer Prometheus than Debian ships.
pub const SCAN_BUCKETS: &[f64] =
    &[10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3];

/// Write plus fsync of one log batch: a healthy disk takes tens of µs to a
/// few ms, a struggling one up to a second, which strict-mode scans wait for.
pub const FSYNC_BUCKETS: &[f64] =
    &[10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3, 200e-3, 500e-3, 1.0];

/// Every status the HTTP layer answers errors with, exported from the
/// start at 0 so that rates and ratios over them are never empty.
pub const ERROR_STATUSES: &[&str] = &["400", "401", "403", "404", "405", "408", "413", "503"];

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Metrics> {
        let scans_vec = IntCounterVec::new(
            Opts::new("healthgate_scans_total", "Scan decisions by decision and reason."),
            &["decision", "reason"],
        )?;
        let scans = [true, false].map(|pass| {
            Reason::ALL.map(|r| scans_vec.with_label_values(&[if pass { "pass" } else { "deny" }, r.as_str()]))
        });
        let scan_seconds = Histogram::with_opts(
            HistogramOpts::new("healthgate_scan_duration_seconds", "Time to answer a scan, from request to response.")
                .buckets(SCAN_BUCKETS.to_vec()),
        )?;
        let holders = IntGaugeVec::new(
            Opts::new("healthgate_holders", "Holders in memory by stored colour (timed steps apply at the next read)."),
            &["color"],
        )?;
        let epoch = IntGauge::new("healthgate_state_epoch", "Version of the colour state; every decision carries it.")?;
        let conns = IntGaugeVec::new(
            Opts::new("healthgate_open_connections", "Open client connections by listener."),
            &["listener"],
        )?;
        let rejected_conns = IntCounterVec::new(
            Opts::new("healthgate_rejected_connections_total", "Connections refused at the connection cap."),
            &["listener"],
        )?;
        let rejected_connections_per_client = IntCounter::new(
            "healthgate_rejected_connections_per_client_total",
            "Public connections refused at the per-client-address cap (server.max_connections_per_client).",
        )?;
        let accept_errors = IntCounterVec::new(
            Opts::new(
                "healthgate_accept_errors_total",
                "Failed accepts by listener (out of descriptors and the like); each is backed off.",
            ),
            &["listener"],
        )?;
        let rejected_requests = IntCounterVec::new(
            Opts::new("healthgate_rejected_requests_total", "Requests answered with an error status, by status."),
            &["status"],
        )?;
        let build = IntGaugeVec::new(
            Opts::new("healthgate_build_info", "Build information; always 1."),
            &["version", "profile", "target"],
        )?;
        let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
        let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
        build.with_label_values(&[env!("CARGO_PKG_VERSION"), profile, &target]).set(1);
        let ready = IntGauge::new("healthgate_ready", "1 when the gateway serves scans, 0 while loading or draining.")?;
        let feed_batches = IntCounterVec::new(
            Opts::new("healthgate_feed_batches_total", "Authority batches by kind and result."),
            &["kind", "result"],
        )?;
        let feed_changes =
            IntCounter::new("healthgate_feed_changes_total", "Colour changes applied from authority batches.")?;
        let feed_last_seq =
            IntGauge::new("healthgate_feed_last_sequence", "Sequence number of the last applied authority batch.")?;
        let revocation_false_positives = IntCounter::new(
            "healthgate_revocation_filter_false_positives_total",
            "Scans whose revocation filter probe hit but whose code was not revoked.",
        )?;
        let revocations = IntGauge::new("healthgate_revocations", "Revocation entries in force.")?;
        let checkins = IntCounterVec::new(
            Opts::new("healthgate_checkins_total", "Daily health check-ins by result."),
            &["result"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new("healthgate_config_reloads_total", "Configuration reloads by result."),
            &["result"],
        )?;
        let log_batch_records = Histogram::with_opts(
            HistogramOpts::new("healthgate_log_batch_records", "Records made durable by one fsync of the log.")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
        )?;
        let log_fsync_seconds = Histogram::with_opts(
            HistogramOpts::new("healthgate_log_fsync_duration_seconds", "Time to write and fdatasync one log batch.")
                .buckets(FSYNC_BUCKETS.to_vec()),
        )?;
        let log_commit_wait_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "healthgate_log_commit_wait_seconds",
                "Time from a record's append to its acknowledgement as durable (queueing, batching, write and fdatasync).",
            )
            .buckets(FSYNC_BUCKETS.to_vec()),
        )?;
        let snapshots =
            IntCounterVec::new(Opts::new("healthgate_snapshots_total", "State snapshots by result."), &["result"])?;
        let retention_purged_visits = IntCounter::new(
            "healthgate_retention_purged_visits_total",
            "Registrations purged past the retention horizon.",
        )?;
        let retention_purged_segments = IntCounter::new(
            "healthgate_retention_purged_segments_total",
            "Log segments removed past the retention horizon.",
        )?;
        let recovery_seconds = prometheus::Gauge::new(
            "healthgate_recovery_seconds",
            "How long the last start took to load and replay state.",
        )?;
        let recovery_replayed =
            IntGauge::new("healthgate_recovery_replayed_records", "Log records replayed at the last start.")?;
        let connection_limit = IntGaugeVec::new(
            Opts::new(
                "healthgate_connection_limit",
                "Most connections a listener keeps open (server.max_connections, server.admin_max_connections).",
            ),
            &["listener"],
        )?;
        let feed_last_batch_time = IntGauge::new(
            "healthgate_feed_last_batch_timestamp_seconds",
            "Unix time of the last authority batch applied or replayed; 0 until there is one.",
        )?;
        let log_failed = IntGauge::new(
            "healthgate_log_failed",
            "1 after a log write or fsync failed: nothing more is acknowledged until a restart.",
        )?;
        let index_lag_records =
            IntGauge::new("healthgate_index_lag_records", "Durable log records not yet in the tracing index.")?;
        let index_failed = IntGauge::new(
            "healthgate_index_failed",
            "1 after the tracing index failed: indexing stops until a restart re-indexes from the log.",
        )?;
        let index_rebuilds = IntCounter::new(
            "healthgate_index_rebuilds_total",
            "Tracing indexes found damaged at start, set aside and rebuilt from the log.",
        )?;
        let reload_ok = IntGauge::new(
            "healthgate_config_last_reload_successful",
            "1 when the last configuration reload was applied (or none was asked), 0 when it was refused.",
        )?;
        reload_ok.set(1);
        // Label values known in advance are exported from the start, so a
        // dashboard or rule reading them shows 0, not nothing.
        for status in ERROR_STATUSES {
            rejected_requests.with_label_values(&[status]);
        }
        for kind in ["updates", "revocations"] {
            for result in ["applied", "malformed", "unauthenticated", "replay", "unavailable"] {
                feed_batches.with_label_values(&[kind, result]);
            }
        }
        for result in ["normal", "unwell", "duplicate", "refused"] {
            checkins.with_label_values(&[result]);
        }
        for result in ["ok", "refused"] {
            reloads.with_label_values(&[result]);
        }
        for result in ["ok", "failed"] {
            snapshots.with_label_values(&[result]);
        }
        let verify_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "healthgate_verify_batch_size",
                "Codes whose signatures the verifier stage checked together in one batch.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        for c in [
            Box::new(verify_batch_size.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(scans_vec),
            Box::new(scan_seconds.clone()),
            Box::new(holders.clone()),
            Box::new(epoch.clone()),
            Box::new(conns.clone()),
            Box::new(rejected_conns.clone()),
            Box::new(rejected_connections_per_client.clone()),
            Box::new(accept_errors.clone()),
            Box::new(rejected_requests.clone()),
            Box::new(build),
            Box::new(ready.clone()),
            Box::new(feed_batches.clone()),
            Box::new(feed_changes.clone()),
            Box::new(feed_last_seq.clone()),
            Box::new(revocation_false_positives.clone()),
            Box::new(revocations.clone()),
            Box::new(checkins.clone()),
            Box::new(reloads.clone()),
            Box::new(log_batch_records.clone()),
            Box::new(log_fsync_seconds.clone()),
            Box::new(log_commit_wait_seconds.clone()),
            Box::new(snapshots.clone()),
            Box::new(retention_purged_visits.clone()),
            Box::new(retention_purged_segments.clone()),
            Box::new(recovery_seconds.clone()),
            Box::new(recovery_replayed.clone()),
            Box::new(connection_limit.clone()),
            Box::new(feed_last_batch_time.clone()),
            Box::new(log_failed.clone()),
            Box::new(index_lag_records.clone()),
            Box::new(index_failed.clone()),
            Box::new(index_rebuilds.clone()),
            Box::new(reload_ok.clone()),
        ] {
            registry.register(c)?;
        }
        let listeners = [crate::operations::metrics::Listener::Public, crate::operations::metrics::Listener::Admin];
        Ok(Metrics {
            scans,
            scan_seconds,
            holders,
            epoch,
            open_connections: listeners.map(|l| conns.with_label_values(&[l.as_str()])),
            rejected_connections: listeners.map(|l| rejected_conns.with_label_values(&[l.as_str()])),
            rejected_connections_per_client,
            accept_errors: listeners.map(|l| accept_errors.with_label_values(&[l.as_str()])),
            rejected_requests,
            ready,
            feed_batches,
            feed_changes,
            feed_last_seq,
            revocation_false_positives,
            revocations,
            checkins,
            reloads,
            log_batch_records,
            log_fsync_seconds,
            log_commit_wait_seconds,
            snapshots,
            retention_purged_visits,
            retention_purged_segments,
            recovery_seconds,
            recovery_replayed,
            connection_limit: listeners.map(|l| connection_limit.with_label_values(&[l.as_str()])),
            feed_last_batch_time,
            log_failed,
            index_lag_records,
            index_failed,
            index_rebuilds,
            reload_ok,
            verify_batch_size,
        })
    }

    pub fn record_scan(&self, d: &Decision, seconds: f64) {
        self.scans[usize::from(!d.pass)][d.reason.index()].inc();
        self.scan_seconds.observe(seconds);
    }

    pub fn open_connections(&self, l: Listener) -> &IntGauge {
        &self.open_connections[l as usize]
    }
    pub fn rejected_connections(&self, l: Listener) -> &IntCounter {
        &self.rejected_connections[l as usize]
    }
    pub fn accept_errors(&self, l: Listener) -> &IntCounter {
        &self.accept_errors[l as usize]
    }
    pub fn connection_limit(&self, l: Listener) -> &IntGauge {
        &self.connection_limit[l as usize]
    }
}
