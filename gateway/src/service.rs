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
use crate::holder::HolderId;
use crate::metrics::Metrics;
use crate::policy::{self, Decision, Direction, Passback, Policy, Reason, ScanInput, Shown};
use crate::state::{snapshot as state_file, Step, Store};
use crate::token::{RawToken, VerifyError};
use crate::trust::TrustList;
use arc_swap::ArcSwap;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Everything read-mostly, swapped as one.
pub struct Snapshot {
    pub policy: Policy,
    pub trust: TrustList,
    pub keys: ApiKeys,
    pub clock_skew_s: u64,
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
