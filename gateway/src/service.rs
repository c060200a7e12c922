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
use crate::state::Update;
use crate::state::{snapshot as state_file, Step, Store};
use crate::token::{KeyId, RawToken, VerifyError};
use crate::trust::TrustList;
use crate::wal::record::{Body, ScanRecord, StateEffect};
use crate::wal::{Mode, Ticket, Wal, WalError};
use arc_swap::ArcSwap;
use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("unknown checkpoint")]
    UnknownCheckpoint,
    #[error("this checkpoint measures temperature: temperature_c is required")]
    TemperatureRequired,
    #[error("temperature_c must be a reading between 30 and 45")]
    TemperatureOutOfRange,
    #[error("not ready")]
    NotReady,
    #[error("{0}")]
    Unavailable(WalError),
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
    pub(crate) config_path: PathBuf,
    /// The write-ahead log, once recovery has started it. Unset when
    /// logging is off (benchmarks) or before the state is loaded.
    pub(crate) wal: OnceLock<Arc<Wal>>,
    /// Orders colour changes against the log. Authority batches take it for
    /// writing while they log and apply; a scan or check-in that changes a
    /// colour takes it for reading; scans that change no colour (nearly all)
    /// never touch it. So a colour change is never half-way through a batch
    /// in memory while sitting on the other side of it in the log, and
    /// replay gives back the state that was served. A std lock: nothing
    /// awaits while holding it.
    pub(crate) colour_order: RwLock<()>,
    /// Snapshot, index and retention state once recovery has run.
    pub(crate) durability: OnceLock<crate::persist::Durability>,
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
    #[error("{0}")]
    Unavailable(WalError),
}

/// What the scan path's critical section ends with.
enum Locked {
    Done(Decision, Option<Ticket>),
    /// The decision changes a colour: redo it holding `colour_order`.
    NeedColourLock,
    Failed(WalError),
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
            wal: OnceLock::new(),
            colour_order: RwLock::new(()),
            durability: OnceLock::new(),
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
        self.loaded.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && !self.wal.get().is_some_and(|w| w.is_failed())
    }

    /// Logs a record if logging is on. Called under the lock that orders
    /// the change it records.
    fn log(&self, at: UnixSecs, body: impl FnOnce() -> Body) -> Result<Option<Ticket>, WalError> {
        match self.wal.get() {
            None => Ok(None),
            Some(w) => w.append(at, body()).map(Some),
        }
    }

    /// Waits until a logged change is durable (no-op when logging is off).
    pub async fn durable(ticket: Option<Ticket>) -> Result<(), WalError> {
        match ticket {
            None => Ok(()),
            Some(t) => t.wait().await.map(|_| ()),
        }
    }

    /// The role of a presented API key under the current snapshot.
    pub fn role_of(&self, key: &[u8]) -> Option<Role> {
        self.snapshot.load().keys.role_of(key)
    }

    /// Decides one scan, applies its effect and answers once the decision
    /// is durable (strict mode) or at once (async mode).
    pub async fn scan(&self, req: &ScanRequest<'_>) -> Result<ScanOutcome, ScanError> {
        let (outcome, ticket) = self.scan_nowait(req)?;
        if self.wal.get().is_some_and(|w| w.mode() == Mode::Strict) {
            Self::durable(ticket).await.map_err(ScanError::Unavailable)?;
        }
        Ok(outcome)
    }

    /// The synchronous part of [`Gateway::scan`]: decide, apply, log. The
    /// ticket resolves when the registration is durable.
    pub fn scan_nowait(&self, req: &ScanRequest<'_>) -> Result<(ScanOutcome, Option<Ticket>), ScanError> {
        if !self.loaded.load(Ordering::Acquire) {
            return Err(ScanError::NotReady);
        }
        if self.wal.get().is_some_and(|w| w.is_failed()) {
            return Err(ScanError::Unavailable(WalError::Failed));
        }
        let snap = self.snapshot.load();
        let place = snap.policy.place(req.checkpoint).ok_or(ScanError::UnknownCheckpoint)?;
        match req.temperature_c {
            Some(t) if !(30.0..=45.0).contains(&t) => return Err(ScanError::TemperatureOutOfRange),
            None if place.class.requires_temperature => return Err(ScanError::TemperatureRequired),
            _ => {}
        }
        let now = self.clock.now();
        let record = |holder: Option<HolderId>, serial: u64, d: &Decision, effect: StateEffect| {
            Body::Scan(ScanRecord {
                holder,
                serial,
                checkpoint: req.checkpoint.to_owned(),
                direction: req.direction,
                temperature_c: req.temperature_c.map(|t| t as f32),
                pass: d.pass,
                reason: d.reason,
                effect,
            })
        };
        // A refusal before the holder is read changes no state: log it and go.
        let refuse = |holder: Option<HolderId>, serial: u64, reason: Reason| {
            let d = Decision::deny(Shown::Unknown, reason);
            let ticket =
                self.log(now, || record(holder, serial, &d, StateEffect::default())).map_err(ScanError::Unavailable)?;
            Ok((ScanOutcome { decision: d, holder, epoch: self.store.epoch() }, ticket))
        };
        let Ok(raw) = RawToken::decode(req.code) else { return refuse(None, 0, Reason::Malformed) };
        let (holder, serial) = (raw.claims.holder, raw.claims.serial);
        // Rule 11: the key must be trusted and its issuer accepted here.
        let key = match snap.trust.key_at(raw.claims.kid, now) {
            Some(k) if place.region.accepts_issuer(k.issuer) => k,
            _ => return refuse(Some(holder), serial, Reason::UnknownIssuer),
        };
        if let Err(e) = raw.check_signature(&key.key).and_then(|()| raw.check_time(now, snap.clock_skew_s)) {
            let reason = match e {
                VerifyError::Expired { .. } => Reason::Expired,
                VerifyError::NotYetValid { .. } => Reason::NotYetValid,
                _ => Reason::BadSignature,
            };
            return refuse(Some(holder), serial, reason);
        }
        match self.revocations.load().check(holder, serial, now) {
            Check::Clear => {}
            Check::FalsePositive => self.metrics.revocation_false_positives.inc(),
            Check::Revoked => return refuse(Some(holder), serial, Reason::Revoked),
        }
        let input = ScanInput { direction: req.direction, temperature_c: req.temperature_c };
        let mut colour_guard = None;
        loop {
            let have_colour_lock = colour_guard.is_some();
            let locked = self.store.update(&holder, now, |entry| {
                let Some((view, state)) = entry else {
                    let d = policy::decide(place, None, input, now).0;
                    return match self.log(now, || record(Some(holder), serial, &d, StateEffect::default())) {
                        Ok(t) => Update::Commit(Locked::Done(d, t), None),
                        Err(e) => Update::Abort(Locked::Failed(e)),
                    };
                };
                let (d, effect) = policy::decide(place, Some(view), input, now);
                if effect.quarantine.is_some() && !have_colour_lock {
                    return Update::Abort(Locked::NeedColourLock);
                }
                let logged = StateEffect {
                    health: effect.health_record,
                    passback: effect.passback,
                    color: effect.quarantine.clone(),
                };
                // Log first, under the holder's lock: if the log refuses,
                // nothing changes.
                let ticket = match self.log(now, || record(Some(holder), serial, &d, logged)) {
                    Ok(t) => t,
                    Err(e) => return Update::Abort(Locked::Failed(e)),
                };
                if effect.health_record {
                    state.set_health_at(now);
                }
                match effect.passback {
                    Passback::None => {}
                    Passback::Enter(group) => state.enter(group, now),
                    Passback::Exit => state.exit(),
                }
                Update::Commit(Locked::Done(d, ticket), effect.quarantine)
            });
            match locked {
                Locked::Done(decision, ticket) => {
                    let outcome = ScanOutcome { decision, holder: Some(holder), epoch: self.store.epoch() };
                    return Ok((outcome, ticket));
                }
                Locked::Failed(e) => return Err(ScanError::Unavailable(e)),
                Locked::NeedColourLock => {
                    colour_guard = Some(self.colour_order.read().unwrap_or_else(|e| e.into_inner()));
                }
            }
        }
    }

    /// Applies a signed batch of colour changes, all or nothing, and
    /// answers once it is durable. Returns the new epoch.
    pub async fn apply_updates(&self, batch: &UpdateBatch) -> Result<u64, FeedError> {
        let logged = batch.verify(&self.snapshot.load().authority_keys).and_then(|changes| {
            self.in_feed_order(batch.seq, |now| {
                let ticket = self.log_batch(now, || Body::Updates { seq: batch.seq, changes: changes.clone() })?;
                let epoch = self.store.apply_changes(&changes, now);
                self.metrics.feed_changes.inc_by(changes.len() as u64);
                Ok((epoch, ticket))
            })
        });
        self.settle_batch("updates", logged).await
    }

    /// Applies a signed batch of revocations, all or nothing, and answers
    /// once it is durable. Returns the new epoch.
    pub async fn apply_revocations(&self, batch: &RevocationBatch) -> Result<u64, FeedError> {
        let snap = self.snapshot.load();
        let logged = batch.verify(&snap.authority_keys).and_then(|()| {
            self.in_feed_order(batch.seq, |now| {
                let ticket =
                    self.log_batch(now, || Body::Revocations { seq: batch.seq, entries: batch.revocations.clone() })?;
                self.add_revocations(&batch.revocations, now, snap.revocation_filter);
                Ok((self.store.bump_epoch(), ticket))
            })
        });
        self.settle_batch("revocations", logged).await
    }

    /// Runs `apply` for the batch with sequence `seq` if it comes after the
    /// last applied one, holding `colour_order` for writing and the feed
    /// mutex: the batch is logged and applied with no colour change of a
    /// scan between, and a snapshot (which reads the log position under the
    /// read lock) never sees it half-applied.
    fn in_feed_order<T>(&self, seq: u64, apply: impl FnOnce(UnixSecs) -> Result<T, FeedError>) -> Result<T, FeedError> {
        let _order = self.colour_order.write().unwrap_or_else(|e| e.into_inner());
        let mut last = self.feed_seq.lock().unwrap_or_else(|e| e.into_inner());
        if seq <= *last {
            return Err(FeedError::Replay { got: seq, last: *last });
        }
        let now = self.clock.now();
        let result = apply(now)?;
        *last = seq;
        self.metrics.feed_last_seq.set(i64::try_from(seq).unwrap_or(i64::MAX));
        self.metrics.feed_last_batch_time.set(i64::try_from(now).unwrap_or(i64::MAX));
        Ok(result)
    }

    fn log_batch(&self, now: UnixSecs, body: impl FnOnce() -> Body) -> Result<Option<Ticket>, FeedError> {
        self.log(now, body).map_err(|e| FeedError::Unavailable(e.to_string()))
    }

    /// Waits for a logged batch to be durable, and counts it.
    async fn settle_batch(
        &self,
        kind: &str,
        logged: Result<(u64, Option<Ticket>), FeedError>,
    ) -> Result<u64, FeedError> {
        let result = match logged {
            Ok((epoch, ticket)) => {
                Self::durable(ticket).await.map(|()| epoch).map_err(|e| FeedError::Unavailable(e.to_string()))
            }
            Err(e) => Err(e),
        };
        self.count_batch(kind, &result);
        result
    }

    pub(crate) fn add_revocations(&self, entries: &[crate::feed::Revocation], now: UnixSecs, settings: FilterSettings) {
        let current = self.revocations.load();
        let next = current.with(entries, now, current.version() + 1, settings);
        self.metrics.revocations.set(next.len() as i64);
        self.revocations.store(Arc::new(next));
    }

    pub(crate) fn revocations(&self) -> arc_swap::Guard<Arc<Revocations>> {
        self.revocations.load()
    }

    pub(crate) fn set_feed_seq_at_least(&self, seq: u64) {
        let mut last = self.feed_seq.lock().unwrap_or_else(|e| e.into_inner());
        *last = (*last).max(seq);
        self.metrics.feed_last_seq.set(i64::try_from(*last).unwrap_or(i64::MAX));
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
    pub async fn checkin(&self, req: &CheckinRequest<'_>) -> Result<CheckinOutcome, CheckinError> {
        let (outcome, ticket) = self.checkin_nowait(req)?;
        Self::durable(ticket).await.map_err(CheckinError::Unavailable)?;
        Ok(outcome)
    }

    fn checkin_nowait(&self, req: &CheckinRequest<'_>) -> Result<(CheckinOutcome, Option<Ticket>), CheckinError> {
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
        // A check-in may change a colour: it always orders itself against
        // authority batches (check-ins are rare next to scans).
        let _order = self.colour_order.read().unwrap_or_else(|e| e.into_inner());
        let holder = raw.claims.holder;
        let result = self.store.update(&holder, now, |entry| {
            let Some((view, state)) = entry else { return Update::Abort(Err(CheckinError::UnknownHolder)) };
            if state.checkin_day() == Some(today) {
                return Update::Abort(Err(CheckinError::AlreadyToday));
            }
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
            let effect = StateEffect { health: !unwell, passback: Passback::None, color: change.clone() };
            let logged = self.log(now, || Body::Checkin {
                holder,
                day: today,
                temperature_c: req.temperature_c as f32,
                symptoms: req.symptoms.len() as u8,
                effect,
            });
            let ticket = match logged {
                Ok(t) => t,
                Err(e) => return Update::Abort(Err(CheckinError::Unavailable(e))),
            };
            state.set_checkin_day(today);
            let health_record = state.health_at().map(crate::clock::format_rfc3339);
            Update::Commit(Ok((color, reason, health_record, ticket)), change)
        });
        let label = match &result {
            Ok(_) if unwell => "unwell",
            Ok(_) => "normal",
            Err(CheckinError::AlreadyToday) => "duplicate",
            Err(_) => "refused",
        };
        self.metrics.checkins.with_label_values(&[label]).inc();
        let (color, reason, health_record, ticket) = result?;
        Ok((CheckinOutcome { color, reason: reason.as_str(), health_record, epoch: self.store.epoch() }, ticket))
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
        self.metrics.reload_ok.set(i64::from(result.is_ok()));
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
        self.metrics.ready.set(i64::from(self.is_ready()));
        self.refresh_durability_gauges();
    }
}
