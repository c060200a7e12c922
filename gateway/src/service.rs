//! The gateway itself: snapshot, store, clock and metrics, and the
//! operations the HTTP layer calls. Nothing here knows about hyper.
//!
//! Read-mostly data (trust list, policy, API keys, skew) is one immutable
//! [`Snapshot`] behind one [`ArcSwap`]: a scan loads it once and uses that
//! one version throughout, and a reload swaps it whole, so no scan ever sees
//! half of a new configuration. Per-holder mutable state is the [`Store`].

use crate::auth::{ApiKeys, Role};
use crate::clock::{Clock, UnixSecs};
use crate::color::Color;
use crate::config::Config;
use crate::feed::{FeedError, RevocationBatch, UpdateBatch};
use crate::holder::HolderId;
use crate::metrics::Metrics;
use crate::policy::{self, Decision, Direction, Passback, Policy, Reason, ScanInput, Shown};
use crate::revocation::{Check, FilterSettings, Revocations};
use crate::state::{snapshot as state_file, Step, Store};
use crate::token::{KeyId, RawToken, VerifyError};
use crate::trust::TrustList;
use arc_swap::ArcSwap;
use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Everything read-mostly, swapped as one.
pub struct Snapshot {
    pub policy: Policy,
    pub trust: TrustList,
    pub keys: ApiKeys,
    pub clock_skew_s: u64,
    pub authority_keys: Vec<(KeyId, VerifyingKey)>,
    pub revocation_filter: FilterSettings,
    pub default_region: Option<usize>,
    /// Bumped on every swap; shown in logs and tests.
    pub generation: u64,
}

impl Snapshot {
    pub fn from_config(c: &Config, generation: u64) -> Snapshot {
        Snapshot {
            policy: c.policy.clone(),
            trust: c.trust.clone(),
            keys: c.keys.clone(),
            clock_skew_s: c.clock_skew_s,
            authority_keys: c.authority_keys.clone(),
            revocation_filter: c.revocation_filter,
            default_region: c.default_region,
            generation,
        }
    }
}

/// A scan request as the HTTP layer parsed it.
#[derive(Debug, Clone, Copy)]
pub struct ScanRequest<'a> {
    pub code: &'a str,
    pub checkpoint: &'a str,
    pub direction: Direction,
    pub temperature_c: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScanOutcome {
    pub decision: Decision,
    /// The holder the code names, once it decoded (verified or not).
    pub holder: Option<HolderId>,
    pub epoch: u64,
}

/// A request the gateway refuses to decide: the device is misconfigured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("unknown checkpoint")]
    UnknownCheckpoint,
    #[error("this checkpoint measures temperature: temperature_c is required")]
    TemperatureRequired,
    #[error("temperature_c must be a reading between 30 and 45")]
    TemperatureOutOfRange,
    #[error("not ready")]
    NotReady,
}

/// A holder's status for inspectors and the authority.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HolderStatus {
    pub holder: HolderId,
    pub stored_color: Color,
    #[serde(with = "crate::clock::serde_rfc3339")]
    pub stored_since: UnixSecs,
    /// The colour after scheduled steps that have come due.
    pub color: Color,
    #[serde(with = "crate::clock::serde_rfc3339")]
    pub since: UnixSecs,
    pub reason: &'static str,
    pub steps: Vec<Step>,
    pub last_health_record: Option<String>,
    /// Regions whose validity window the last health record is inside of.
    pub health_record_fresh_in: Vec<String>,
    pub inside: bool,
    pub epoch: u64,
}

pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    store: Store,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    /// Where `metrics` is registered; passed in, never global.
    registry: prometheus::Registry,
    /// False until the state file is loaded.
    loaded: AtomicBool,
    /// True once shutdown began: readiness goes 503 so balancers move away.
    draining: AtomicBool,
    generation: AtomicU64,
    /// Revocations, immutable and swapped whole per authority batch (apart
    /// from the snapshot: they change with the feed, not the config).
    revocations: ArcSwap<Revocations>,
    /// The last applied feed sequence. A std mutex, not a tokio one: it is
    /// held only while a batch is checked and applied, and nothing awaits
    /// under it. It serialises authority batches, never scans.
    feed_seq: Mutex<u64>,
    /// Where the configuration is re-read from on reload.
    config_path: PathBuf,
}

/// A daily health check-in (rule 8), authenticated by the holder's code.
#[derive(Debug, Clone)]
pub struct CheckinRequest<'a> {
    pub code: &'a str,
    pub temperature_c: f64,
    pub symptoms: &'a [String],
    pub region: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckinOutcome {
    pub color: Color,
    pub reason: &'static str,
    pub health_record: Option<String>,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckinError {
    #[error("code not accepted: {0}")]
    BadCode(&'static str),
    #[error("unknown holder")]
    UnknownHolder,
    #[error("already checked in today")]
    AlreadyToday,
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("not ready")]
    NotReady,
}

impl Gateway {
    pub fn new(config: &Config, clock: Arc<dyn Clock>, registry: prometheus::Registry) -> prometheus::Result<Gateway> {
        let metrics = Metrics::new(&registry)?;
        Ok(Gateway {
            snapshot: ArcSwap::from_pointee(Snapshot::from_config(config, 1)),
            store: Store::default(),
            clock,
            metrics,
            registry,
            loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            revocations: ArcSwap::from_pointee(Revocations::empty(config.revocation_filter)),
            feed_seq: Mutex::new(0),
            config_path: config.path.clone(),
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

    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    pub fn now(&self) -> UnixSecs {
        self.clock.now()
    }
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Replaces the whole snapshot. Scans in flight finish on the old one.
    pub fn swap_snapshot(&self, mut next: Snapshot) -> u64 {
        next.generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let g = next.generation;
        self.snapshot.store(Arc::new(next));
        self.store.bump_epoch();
        g
    }

    /// Loads the state file (at start, before ready). Blocking.
    pub fn load_state(&self, path: &Path) -> Result<state_file::Loaded, state_file::SnapshotError> {
        state_file::load(path, &self.store)
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
        self.loaded.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    /// The role of a presented API key under the current snapshot.
    pub fn role_of(&self, key: &[u8]) -> Option<Role> {
        self.snapshot.load().keys.role_of(key)
    }

    /// Decides one scan and applies its effect on the holder.
    pub fn scan(&self, req: &ScanRequest<'_>) -> Result<ScanOutcome, ScanError> {
        if !self.loaded.load(Ordering::Acquire) {
            return Err(ScanError::NotReady);
        }
        let snap = self.snapshot.load();
        let place = snap.policy.place(req.checkpoint).ok_or(ScanError::UnknownCheckpoint)?;
        match req.temperature_c {
            Some(t) if !(30.0..=45.0).contains(&t) => return Err(ScanError::TemperatureOutOfRange),
            None if place.class.requires_temperature => return Err(ScanError::TemperatureRequired),
            _ => {}
        }
        let now = self.clock.now();
        let token_failure = |reason| Decision::deny(Shown::Unknown, reason);
        let raw = match RawToken::decode(req.code) {
            Ok(raw) => raw,
            Err(_) => {
                return Ok(ScanOutcome {
                    decision: token_failure(Reason::Malformed),
                    holder: None,
                    epoch: self.store.epoch(),
                })
            }
        };
        let holder = raw.claims.holder;
        let outcome = |decision| ScanOutcome { decision, holder: Some(holder), epoch: self.store.epoch() };
        // Rule 11: the key must be trusted and its issuer accepted here.
        let key = match snap.trust.key_at(raw.claims.kid, now) {
            Some(k) if place.region.accepts_issuer(k.issuer) => k,
            _ => return Ok(outcome(token_failure(Reason::UnknownIssuer))),
        };
        if let Err(e) = raw.check_signature(&key.key).and_then(|()| raw.check_time(now, snap.clock_skew_s)) {
            let reason = match e {
                VerifyError::Expired { .. } => Reason::Expired,
                VerifyError::NotYetValid { .. } => Reason::NotYetValid,
                _ => Reason::BadSignature,
            };
            return Ok(outcome(token_failure(reason)));
        }
        match self.revocations.load().check(holder, raw.claims.serial, now) {
            Check::Clear => {}
            Check::FalsePositive => self.metrics.revocation_false_positives.inc(),
            Check::Revoked => return Ok(outcome(token_failure(Reason::Revoked))),
        }
        let input = ScanInput { direction: req.direction, temperature_c: req.temperature_c };
        let decision = self.store.update(&holder, now, |entry| match entry {
            None => (policy::decide(place, None, input, now).0, None),
            Some((view, state)) => {
                let (decision, effect) = policy::decide(place, Some(view), input, now);
                if effect.health_record {
                    state.set_health_at(now);
                }
                match effect.passback {
                    Passback::None => {}
                    Passback::Enter(group) => state.enter(group, now),
                    Passback::Exit => state.exit(),
                }
                (decision, effect.quarantine)
            }
        });
        Ok(outcome(decision))
    }

    /// Applies a signed batch of colour changes, all or nothing. Returns the
    /// new epoch.
    pub fn apply_updates(&self, batch: &UpdateBatch) -> Result<u64, FeedError> {
        let snap = self.snapshot.load();
        let result = (|| {
            let changes = batch.verify(&snap.authority_keys)?;
            let mut last = self.feed_seq.lock().unwrap_or_else(|e| e.into_inner());
            if batch.seq <= *last {
                return Err(FeedError::Replay { got: batch.seq, last: *last });
            }
            let epoch = self.store.apply_changes(&changes, self.clock.now());
            *last = batch.seq;
            self.metrics.feed_changes.inc_by(changes.len() as u64);
            self.metrics.feed_last_seq.set(i64::try_from(batch.seq).unwrap_or(i64::MAX));
            Ok(epoch)
        })();
        self.count_batch("updates", &result);
        result
    }

    /// Applies a signed batch of revocations, all or nothing. Returns the
    /// new epoch.
    pub fn apply_revocations(&self, batch: &RevocationBatch) -> Result<u64, FeedError> {
        let snap = self.snapshot.load();
        let result = (|| {
            batch.verify(&snap.authority_keys)?;
            let mut last = self.feed_seq.lock().unwrap_or_else(|e| e.into_inner());
            if batch.seq <= *last {
                return Err(FeedError::Replay { got: batch.seq, last: *last });
            }
            let current = self.revocations.load();
            let next =
                current.with(&batch.revocations, self.clock.now(), current.version() + 1, snap.revocation_filter);
            self.metrics.revocations.set(next.len() as i64);
            self.revocations.store(Arc::new(next));
            *last = batch.seq;
            self.metrics.feed_last_seq.set(i64::try_from(batch.seq).unwrap_or(i64::MAX));
            Ok(self.store.bump_epoch())
        })();
        self.count_batch("revocations", &result);
        result
    }

    fn count_batch(&self, kind: &str, result: &Result<u64, FeedError>) {
        let r = match result {
            Ok(_) => "applied",
            Err(FeedError::Malformed(_)) => "malformed",
            Err(FeedError::Unauthenticated(_)) => "unauthenticated",
            Err(FeedError::Replay { .. }) => "replay",
            Err(FeedError::Unavailable(_)) => "unavailable",
        };
        self.metrics.feed_batches.with_label_values(&[kind, r]).inc();
    }

    pub fn last_feed_seq(&self) -> u64 {
        *self.feed_seq.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current revocation filter export and its version.
    pub fn revocation_export(&self) -> (u64, bytes::Bytes) {
        let r = self.revocations.load();
        (r.version(), r.export())
    }

    /// A daily health check-in: once per holder per calendar day of the
    /// region; a fever or any symptom turns a green holder yellow for the
    /// region's quarantine time, a normal one refreshes the health record.
    pub fn checkin(&self, req: &CheckinRequest<'_>) -> Result<CheckinOutcome, CheckinError> {
        if !self.loaded.load(Ordering::Acquire) {
            return Err(CheckinError::NotReady);
        }
        if !(30.0..=45.0).contains(&req.temperature_c) {
            return Err(CheckinError::BadRequest("temperature_c must be a reading between 30 and 45"));
        }
        if req.symptoms.len() > 16 || req.symptoms.iter().any(|s| s.is_empty() || s.len() > 64) {
            return Err(CheckinError::BadRequest("symptoms: at most 16 names of 1 to 64 characters"));
        }
        let snap = self.snapshot.load();
        let regions = snap.policy.regions();
        let region = match req.region {
            Some(name) => regions.iter().find(|r| r.name == name).ok_or(CheckinError::BadRequest("unknown region"))?,
            None => snap.default_region.map(|i| &regions[i]).ok_or(CheckinError::BadRequest("region is required"))?,
        };
        let now = self.clock.now();
        let raw = RawToken::decode(req.code).map_err(|_| CheckinError::BadCode("malformed"))?;
        let key = match snap.trust.key_at(raw.claims.kid, now) {
            Some(k) if region.accepts_issuer(k.issuer) => k,
            _ => return Err(CheckinError::BadCode("unknown_issuer")),
        };
        raw.check_signature(&key.key).map_err(|_| CheckinError::BadCode("bad_signature"))?;
        raw.check_time(now, snap.clock_skew_s).map_err(|e| {
            CheckinError::BadCode(if matches!(e, VerifyError::NotYetValid { .. }) {
                "not_yet_valid"
            } else {
                "expired"
            })
        })?;
        if self.revocations.load().check(raw.claims.holder, raw.claims.serial, now) == Check::Revoked {
            return Err(CheckinError::BadCode("revoked"));
        }
        let today = region.day_of(now);
        let unwell = req.temperature_c >= region.fever_threshold_c || !req.symptoms.is_empty();
        let result = self.store.update(&raw.claims.holder, now, |entry| {
            let Some((view, state)) = entry else { return (Err(CheckinError::UnknownHolder), None) };
            if state.checkin_day() == Some(today) {
                return (Err(CheckinError::AlreadyToday), None);
            }
            state.set_checkin_day(today);
            let mut change = None;
            let mut color = view.color;
            if unwell {
                if color == Color::Green {
                    let until = now + region.fever_quarantine_s;
                    change = Some((Color::Yellow, vec![Step { until, then: Color::Green }]));
                    color = Color::Yellow;
                }
            } else {
                state.set_health_at(now);
            }
            let reason = match color {
                Color::Green if !unwell && policy::health_record_fresh(state.health_at(), region, now) => Reason::Ok,
                Color::Green => Reason::NoHealthRecord,
                Color::Pending => Reason::Pending,
                _ => Reason::NotGreen,
            };
            let health_record = state.health_at().map(crate::clock::format_rfc3339);
            (Ok((color, reason, health_record)), change)
        });
        let label = match &result {
            Ok(_) if unwell => "unwell",
            Ok(_) => "normal",
            Err(CheckinError::AlreadyToday) => "duplicate",
            Err(_) => "refused",
        };
        self.metrics.checkins.with_label_values(&[label]).inc();
        let (color, reason, health_record) = result?;
        Ok(CheckinOutcome { color, reason: reason.as_str(), health_record, epoch: self.store.epoch() })
    }

    /// Re-reads the configuration and trust list and swaps the snapshot
    /// whole; on any error the running snapshot stays. Listener settings
    /// (addresses, limits) take effect only at the next start.
    pub fn reload(&self) -> Result<u64, crate::config::ConfigError> {
        let result = Config::load(&self.config_path).map(|c| {
            let filter_changed = c.revocation_filter != self.snapshot.load().revocation_filter;
            let g = self.swap_snapshot(Snapshot::from_config(&c, 0));
            if filter_changed {
                self.revocations.store(Arc::new(self.revocations.load().resized(c.revocation_filter)));
            }
            g
        });
        self.metrics.reloads.with_label_values(&[if result.is_ok() { "ok" } else { "refused" }]).inc();
        match &result {
            Ok(g) => tracing::info!(generation = g, "configuration reloaded"),
            Err(e) => tracing::warn!(error = %e, "configuration reload refused; keeping the running one"),
        }
        result
    }

    pub fn holder_status(&self, id: &HolderId) -> Option<HolderStatus> {
        let now = self.clock.now();
        let snap = self.snapshot.load();
        let epoch = self.store.epoch();
        self.store.read(id, now, |v| {
            let v = v?;
            let health = v.state.health_at();
            let fresh: Vec<String> = snap
                .policy
                .regions()
                .iter()
                .filter(|r| policy::health_record_fresh(health, r, now))
                .map(|r| r.name.clone())
                .collect();
            let reason = match v.color {
                Color::Green if fresh.is_empty() => Reason::NoHealthRecord,
                Color::Green => Reason::Ok,
                Color::Pending => Reason::Pending,
                _ => Reason::NotGreen,
            };
            Some(HolderStatus {
                holder: *id,
                stored_color: v.state.color(),
                stored_since: v.state.since(),
                color: v.color,
                since: v.since,
                reason: reason.as_str(),
                steps: v.steps.to_vec(),
                last_health_record: health.map(crate::clock::format_rfc3339),
                health_record_fresh_in: fresh,
                inside: v.state.inside().is_some(),
                epoch,
            })
        })
    }

    /// Brings gauges that are kept elsewhere up to date before a scrape.
    pub fn refresh_gauges(&self) {
        for (c, n) in Color::ALL.iter().zip(self.store.count_by_color()) {
            self.metrics.holders.with_label_values(&[c.as_str()]).set(n);
        }
        self.metrics.epoch.set(i64::try_from(self.store.epoch()).unwrap_or(i64::MAX));
    }
}
