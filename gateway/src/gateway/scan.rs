//! The request side of the gateway: scans, daily check-ins and holder
//! status. Each request loads the live configuration once (the caller
//! passes it in), verifies the code through the one verification path
//! ([`crate::verify::verify`], or [`crate::verify::verify_many`] for the
//! scans the verifier stage batches), then decides and applies under the
//! holder's entry lock.
//!
//! A scan is three steps: [`Gateway::admit`] (checks before verification,
//! decoding), verification (alone, in-process batched, or by the verifier
//! stage), and [`Gateway::conclude`] (refuse, or decide, log and apply under
//! the entry lock). The three entries, `scan`, `scan_nowait` and
//! `scan_many_nowait`, differ only in the middle step.

use super::effect::settle;
use super::shadow::shadow;
use super::verifier::{Answer, Job, Verifier};
use super::{Gateway, LiveConfig};
use crate::clock::UnixSecs;
use crate::color::Color;
use crate::durability::wal::record::{Event, ScanRecord};
use crate::durability::wal::{Mode, Ticket, WalError};
use crate::holder::HolderId;
use crate::policy::Place;
use crate::policy::{self, Decision, Direction, Reason, ScanInput, Shown};
use crate::state::{Effect, Passback, Step};
use crate::store::Update;
use crate::token::RawToken;
use crate::verify::{self, verify};
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::oneshot;

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

/// The log record of a scan's decision.
fn scan_record(req: &ScanRequest<'_>, holder: Option<HolderId>, serial: u64, d: &Decision, effect: Effect) -> Event {
    Event::Scan(ScanRecord {
        holder,
        serial,
        checkpoint: req.checkpoint.to_owned(),
        direction: req.direction,
        temperature_c: req.temperature_c.map(|t| t as f32),
        pass: d.pass,
        reason: d.reason,
        effect,
    })
}

/// What the scan path's critical section ends with.
enum Locked {
    Done(Decision, Option<Ticket>),
    /// The decision changes a colour: redo it holding the feed order.
    NeedColorLock,
    Failed(WalError),
}

/// A scan past its checks with its code decoded: what verification and
/// the decision need.
struct Admitted<'l> {
    place: Place<'l>,
    now: UnixSecs,
    raw: RawToken,
}

/// What the checks before verification end with.
enum Admission<'l> {
    Verify(Admitted<'l>),
    /// Refused before verification (the code does not decode) and logged.
    Refused(ScanOutcome, Option<Ticket>),
}

impl Gateway {
    /// Decides one scan, applies its effect and answers once the decision
    /// is durable (strict mode) or at once (async mode). `live` is the
    /// configuration the caller loaded for this request (and checked the
    /// caller's key against). The signature is checked by the verifier
    /// stage, in a batch with the scans that arrived at the same time.
    pub async fn scan(&self, live: &Arc<LiveConfig>, req: &ScanRequest<'_>) -> Result<ScanOutcome, ScanError> {
        let (outcome, ticket) = match self.admit(live, req)? {
            Admission::Refused(outcome, ticket) => (outcome, ticket),
            Admission::Verify(a) => {
                let verified = self.verify_staged(live, &a).await;
                self.conclude(live, req, &a, verified)?
            }
        };
        if self.wal.get().is_some_and(|w| w.mode() == Mode::Strict) {
            Self::wait_durable(ticket).await.map_err(ScanError::Unavailable)?;
        }
        Ok(outcome)
    }

    /// The synchronous scan, verified on the caller's thread, alone: decide,
    /// apply, log. The ticket resolves when the registration is durable.
    pub fn scan_nowait(
        &self,
        live: &LiveConfig,
        req: &ScanRequest<'_>,
    ) -> Result<(ScanOutcome, Option<Ticket>), ScanError> {
        match self.admit(live, req)? {
            Admission::Refused(outcome, ticket) => Ok((outcome, ticket)),
            Admission::Verify(a) => {
                let verified = self.verify_alone(live, &a);
                self.conclude(live, req, &a, verified)
            }
        }
    }

    /// Many synchronous scans on the caller's thread, their signatures
    /// checked in one batch (`verify::verify_many`), then decided one after
    /// the other in order: the in-process form of what the verifier stage
    /// does, for benchmarks and instruction counts. Element `i` answers
    /// `reqs[i]` as [`Gateway::scan_nowait`] would.
    pub fn scan_many_nowait(
        &self,
        live: &LiveConfig,
        reqs: &[ScanRequest<'_>],
    ) -> Vec<Result<(ScanOutcome, Option<Ticket>), ScanError>> {
        let admitted: Vec<_> = reqs.iter().map(|r| self.admit(live, r)).collect();
        let revocations = self.revocations.load();
        let requests: Vec<verify::Request<'_>> = admitted
            .iter()
            .filter_map(|a| match a {
                Ok(Admission::Verify(a)) => Some(verify::Request {
                    raw: &a.raw,
                    trust: live.trust(),
                    region: Some(a.place.region),
                    revocations: Some(&revocations),
                    now: a.now,
                }),
                _ => None,
            })
            .collect();
        let verified: Vec<Answer> = verify::verify_many(&requests, &self.batch_seed)
            .into_iter()
            .map(|v| v.map(|v| (v.token, v.filter_false_positive)))
            .collect();
        drop(requests);
        let mut verified = verified.into_iter();
        reqs.iter()
            .zip(admitted)
            .map(|(req, a)| match a? {
                Admission::Refused(outcome, ticket) => Ok((outcome, ticket)),
                Admission::Verify(a) => {
                    let v = verified.next().expect("one answer per admitted scan");
                    self.conclude(live, req, &a, v)
                }
            })
            .collect()
    }

    /// The checks before verification: ready, log healthy, checkpoint and
    /// temperature valid, the code decodes (a code that does not is
    /// refused and logged here).
    fn admit<'l>(&self, live: &'l LiveConfig, req: &ScanRequest<'_>) -> Result<Admission<'l>, ScanError> {
        if !self.loaded.load(std::sync::atomic::Ordering::Acquire) {
            return Err(ScanError::NotReady);
        }
        if self.wal.get().is_some_and(|w| w.is_failed()) {
            return Err(ScanError::Unavailable(WalError::Failed));
        }
        let place = live.policy.place(req.checkpoint).ok_or(ScanError::UnknownCheckpoint)?;
        match req.temperature_c {
            Some(t) if !(30.0..=45.0).contains(&t) => return Err(ScanError::TemperatureOutOfRange),
            None if place.class.requires_temperature => return Err(ScanError::TemperatureRequired),
            _ => {}
        }
        let now = self.clock.now();
        match RawToken::decode(req.code) {
            Ok(raw) => Ok(Admission::Verify(Admitted { place, now, raw })),
            Err(_) => {
                let (outcome, ticket) = self.refuse(req, now, None, 0, Reason::Malformed)?;
                Ok(Admission::Refused(outcome, ticket))
            }
        }
    }

    /// Verifies one admitted scan on this thread.
    fn verify_alone(&self, live: &LiveConfig, a: &Admitted<'_>) -> Answer {
        let revocations = self.revocations.load();
        verify(&a.raw, live.trust(), Some(a.place.region), Some(&revocations), a.now)
            .map(|v| (v.token, v.filter_false_positive))
    }

    /// Verifies one admitted scan through the verifier stage, or on this
    /// thread when the stage is off or closed.
    async fn verify_staged(&self, live: &Arc<LiveConfig>, a: &Admitted<'_>) -> Answer {
        let Some(stage) = self.verifier() else { return self.verify_alone(live, a) };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            raw: a.raw,
            live: live.clone(),
            region: a.place.checkpoint.region,
            revocations: self.revocations.load_full(),
            now: a.now,
            reply,
        };
        if !stage.submit(job) {
            return self.verify_alone(live, a);
        }
        match answer.await {
            Ok(answer) => answer,
            // The stage stopped under us (shutdown): verify here.
            Err(_) => self.verify_alone(live, a),
        }
    }

    fn verifier(&self) -> Option<&Verifier> {
        self.verifier
            .get_or_init(|| {
                let s = self.verify_settings;
                if s.threads == 0 {
                    return None;
                }
                Verifier::start(s.threads, s.max_batch, self.metrics.verify_batch_size.clone())
                    .inspect_err(|e| tracing::warn!(error = %e, "verifier threads did not start; verifying inline"))
                    .ok()
            })
            .as_ref()
    }

    /// Logs a code refused before the holder is read (it changes no state).
    fn refuse(
        &self,
        req: &ScanRequest<'_>,
        now: UnixSecs,
        holder: Option<HolderId>,
        serial: u64,
        reason: Reason,
    ) -> Result<(ScanOutcome, Option<Ticket>), ScanError> {
        let d = Decision::deny(Shown::Unknown, reason);
        let ticket = self
            .log(now, || scan_record(req, holder, serial, &d, Effect::default()))
            .map_err(ScanError::Unavailable)?;
        Ok((ScanOutcome { decision: d, holder, epoch: self.store.epoch() }, ticket))
    }

    /// After verification: refuse a code that failed it, or decide under
    /// the holder's entry lock, log, and apply.
    fn conclude(
        &self,
        live: &LiveConfig,
        req: &ScanRequest<'_>,
        a: &Admitted<'_>,
        verified: Answer,
    ) -> Result<(ScanOutcome, Option<Ticket>), ScanError> {
        let (place, now) = (a.place, a.now);
        let (holder, serial) = (a.raw.claims.holder, a.raw.claims.serial);
        let token = match verified {
            Ok((token, filter_false_positive)) => {
                if filter_false_positive {
                    self.metrics.revocation_false_positives.inc();
                }
                token
            }
            Err(e) => return self.refuse(req, now, Some(holder), serial, e.reason()),
        };
        let record = |d: &Decision, effect: Effect| scan_record(req, Some(holder), serial, d, effect);
        let input = ScanInput { direction: req.direction, temperature_c: req.temperature_c };
        let mut color_guard = None;
        loop {
            let have_color_lock = color_guard.is_some();
            let locked = self.store.update(&holder, now, |entry| {
                let Some((view, state)) = entry else {
                    let d = policy::decide(&token, place, None, input, now).0;
                    if let Some(candidate) = &live.candidate {
                        shadow(&self.shadow, candidate, &token, req.checkpoint, None, input, now, &d);
                    }
                    return match self.log(now, || record(&d, Effect::default())) {
                        Ok(t) => Update::Commit(Locked::Done(d, t), None),
                        Err(e) => Update::Abort(Locked::Failed(e)),
                    };
                };
                let (d, effect) = policy::decide(&token, place, Some(view), input, now);
                if effect.color.is_some() && !have_color_lock {
                    return Update::Abort(Locked::NeedColorLock);
                }
                if let Some(candidate) = &live.candidate {
                    shadow(&self.shadow, candidate, &token, req.checkpoint, Some(view), input, now, &d);
                }
                // Log first, under the holder's lock: if the log refuses,
                // nothing changes.
                let ticket = match self.log(now, || record(&d, effect.clone())) {
                    Ok(t) => t,
                    Err(e) => return Update::Abort(Locked::Failed(e)),
                };
                Update::Commit(Locked::Done(d, ticket), settle(state, &effect, now, None, self.clustered))
            });
            match locked {
                Locked::Done(decision, ticket) => {
                    let outcome = ScanOutcome { decision, holder: Some(holder), epoch: self.store.epoch() };
                    return Ok((outcome, ticket));
                }
                Locked::Failed(e) => return Err(ScanError::Unavailable(e)),
                Locked::NeedColorLock => color_guard = Some(self.feed.colour_change(&holder)),
            }
        }
    }

    /// A daily health check-in: once per holder per calendar day of the
    /// region; a fever or any symptom turns a green holder yellow for the
    /// region's quarantine time, a normal one refreshes the health record.
    pub async fn checkin(&self, live: &LiveConfig, req: &CheckinRequest<'_>) -> Result<CheckinOutcome, CheckinError> {
        let (outcome, ticket) = self.checkin_nowait(live, req)?;
        Self::wait_durable(ticket).await.map_err(CheckinError::Unavailable)?;
        Ok(outcome)
    }

    fn checkin_nowait(
        &self,
        live: &LiveConfig,
        req: &CheckinRequest<'_>,
    ) -> Result<(CheckinOutcome, Option<Ticket>), CheckinError> {
        if !self.loaded.load(std::sync::atomic::Ordering::Acquire) {
            return Err(CheckinError::NotReady);
        }
        if !(30.0..=45.0).contains(&req.temperature_c) {
            return Err(CheckinError::BadRequest("temperature_c must be a reading between 30 and 45"));
        }
        if req.symptoms.len() > 16 || req.symptoms.iter().any(|s| s.is_empty() || s.len() > 64) {
            return Err(CheckinError::BadRequest("symptoms: at most 16 names of 1 to 64 characters"));
        }
        let regions = live.policy.regions();
        let region = match req.region {
            Some(name) => regions.iter().find(|r| r.name == name).ok_or(CheckinError::BadRequest("unknown region"))?,
            None => live.default_region.map(|i| &regions[i]).ok_or(CheckinError::BadRequest("region is required"))?,
        };
        let now = self.clock.now();
        let raw = RawToken::decode(req.code).map_err(|_| CheckinError::BadCode(Reason::Malformed.as_str()))?;
        verify(&raw, live.trust(), Some(region), Some(&self.revocations.load()), now)
            .map_err(|e| CheckinError::BadCode(e.reason().as_str()))?;
        let today = region.day_of(now);
        let unwell = req.temperature_c >= region.fever_threshold_c || !req.symptoms.is_empty();
        // A check-in may change a colour: it always orders itself against
        // authority batches (check-ins are rare next to scans).
        let holder = raw.claims.holder;
        let _order = self.feed.colour_change(&holder);
        let result = self.store.update(&holder, now, |entry| {
            let Some((view, state)) = entry else { return Update::Abort(Err(CheckinError::UnknownHolder)) };
            if state.checkin_day() == Some(today) {
                return Update::Abort(Err(CheckinError::AlreadyToday));
            }
            let mut effect = Effect { health: !unwell, passback: Passback::None, color: None };
            let mut color = view.color;
            if unwell && color == Color::Green {
                let until = now + region.fever_quarantine_s;
                effect.color = Some((Color::Yellow, vec![Step { until, then: Color::Green }]));
                color = Color::Yellow;
            }
            let health_at = if effect.health { Some(now) } else { state.health_at() };
            let reason = policy::standing(color, !unwell && policy::health_record_fresh(health_at, region, now));
            let logged = self.log(now, || Event::Checkin {
                holder,
                day: today,
                temperature_c: req.temperature_c as f32,
                symptoms: req.symptoms.len() as u8,
                effect: effect.clone(),
            });
            let ticket = match logged {
                Ok(t) => t,
                Err(e) => return Update::Abort(Err(CheckinError::Unavailable(e))),
            };
            let change = settle(state, &effect, now, Some(today), self.clustered);
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

    pub fn holder_status(&self, live: &LiveConfig, id: &HolderId) -> Option<HolderStatus> {
        let now = self.clock.now();
        let epoch = self.store.epoch();
        self.store.read(id, now, |v| {
            let v = v?;
            let health = v.state.health_at();
            let fresh: Vec<String> = live
                .policy
                .regions()
                .iter()
                .filter(|r| policy::health_record_fresh(health, r, now))
                .map(|r| r.name.clone())
                .collect();
            let reason = policy::standing(v.color, !fresh.is_empty());
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
}
