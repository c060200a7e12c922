//! Priority admission: which requests the gateway takes on when it cannot
//! take them all.
//!
//! A turnstile that waits 15 s is broken; one told "busy, retry" at once
//! falls back to its own rule. So under overload the gateway answers fast
//! and keeps its work for gate scans:
//!
//! * Requests of the public side (and tracing queries on the admin side)
//!   take a slot for their work; there are `max_in_flight` slots.
//! * Gate **scans** come first. A scan takes a free slot, or waits for one
//!   up to the queueing budget (`scan_queue_budget_ms`); past it it is
//!   refused at once with `overloaded` rather than answered slowly. A
//!   burst may queue for the whole budget, but within [`OVERLOADED_FOR`]
//!   of a scan refused `overloaded` the gateway is overloaded, not in a
//!   burst, and a scan waits at most a fifth of the budget: in a queue
//!   that stays full every admitted scan would otherwise have waited
//!   nearly the whole budget (the controlled delay of CoDel, as large
//!   services use it for their request queues).
//! * The **lower classes** (check-ins, holder status, the inspector's page,
//!   tracing, the filter export) never wait: they are refused (`shed`)
//!   while half the slots are taken, while any scan waits for a slot, or
//!   while the runtime runs later than half the budget. So they are the
//!   first to go, and they leave the room to the gates.
//! * An operator may also cap the **rate** of admitted scans
//!   (`max_scan_rate`, off by default): past it a scan is refused
//!   `overloaded` at once, with bursts of up to [`RATE_BURST`] worth of
//!   scans let through (the generic cell rate algorithm, as ATM switches
//!   and many API gateways police a rate: one atomic word, no lock). The
//!   slots bound the work in flight; the cap bounds the work a second,
//!   for a gateway whose capacity its operator has measured.
//! * The admin listener's health, metrics and authority feed take no slot
//!   at all: they stay responsive whatever the public side does (and the
//!   listener has its own connection cap).
//!
//! How late the runtime runs is measured by a probe ([`Admission::probe`]):
//! a task that asks to wake every millisecond and records how late it was
//! woken, the least of eight wakes in a row. Work queued on the runtime
//! delays every task alike (timers and new connections' readiness are
//! both seen only between tasks), so sustained lateness is the queueing a
//! request arriving now would see before its turn. It counts only while
//! admitted work is in flight: an idle gateway on a busy machine is late
//! for reasons refusing cannot fix.
//!
//! Lateness sheds the lower classes but never refuses a scan. Under a
//! flood of scans it is the refusals' own work (reading, parsing and
//! answering each request) that makes the runtime late, so refusing scans
//! for it refuses the very work the gateway can still do: with scans
//! refused on lateness a fourfold flood left a quarter of the capacity
//! answered. The slots bound the scans' own work; the budget bounds their
//! wait for one.
//!
//! Every refusal is counted by class and reason (the metric tells a scan
//! over the rate cap, `over_rate`, from one past the budget).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The probe asks to wake this often.
const PROBE_TICK: Duration = Duration::from_millis(1);
/// Lateness is the least of this many ticks in a row (8 ms or more).
const PROBE_WINDOW: usize = 8;
/// For this long after a scan was refused `overloaded` the gateway counts as
/// overloaded rather than in a burst...
pub const OVERLOADED_FOR: Duration = Duration::from_millis(100);
/// ...and a scan waits at most the budget divided by this.
const OVERLOADED_DIVISOR: u32 = 5;
/// Under a rate cap, a burst of up to this long's worth of scans (at least
/// one) is admitted at once.
pub const RATE_BURST: Duration = Duration::from_millis(10);

/// What a request is, in the order it is served under overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Scan = 0,
    Checkin = 1,
    Status = 2,
    Inspector = 3,
    Tracing = 4,
    Export = 5,
}

impl Class {
    pub const ALL: [Class; 6] =
        [Class::Scan, Class::Checkin, Class::Status, Class::Inspector, Class::Tracing, Class::Export];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Scan => "scan",
            Class::Checkin => "checkin",
            Class::Status => "status",
            Class::Inspector => "inspector",
            Class::Tracing => "tracing",
            Class::Export => "export",
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A scan that could not start within the queueing budget.
    Overloaded,
    /// A scan over the configured rate cap (`max_scan_rate`). Its reason
    /// is `overloaded` too: to a turnstile it is the same "busy, retry".
    OverRate,
    /// A lower class, refused to keep the room for scans.
    Shed,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Overloaded | Refusal::OverRate => "overloaded",
            Refusal::Shed => "shed",
        }
    }

    /// The message of the 503.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Overloaded => "overloaded: the scan could not start within the queueing budget; retry",
            Refusal::OverRate => {
                "overloaded: the gateway admits no more scans a second than its configured rate; retry"
            }
            Refusal::Shed => "shed: scans come first while the gateway is busy; retry later",
        }
    }
}

pub use crate::operations::config::AdmissionSettings;

/// Holding one is doing the work of one admitted request.
#[must_use = "the slot is free again when dropped"]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    in_flight: IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

/// A scan waiting for a slot, counted until dropped: also when the request
/// is dropped while it waits (its client went away).
struct Waiting<'a>(&'a Admission);

impl<'a> Waiting<'a> {
    fn new(a: &'a Admission) -> Self {
        a.waiting_scans.fetch_add(1, Ordering::Relaxed);
        Waiting(a)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting_scans.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Admission {
    slots: Arc<Semaphore>,
    settings: AdmissionSettings,
    /// Lower classes are admitted only while fewer slots than this are
    /// taken.
    lower_limit: usize,
    /// Scans waiting for a slot right now.
    waiting_scans: AtomicUsize,
    /// When a scan was last refused `overloaded`, in microseconds since
    /// `started` (`u64::MAX`: never).
    refused_us: AtomicU64,
    /// tokio's clock, so that tests can pause it.
    started: tokio::time::Instant,
    /// How late the runtime ran lately, in microseconds (see the module).
    lag_us: AtomicU64,
    /// The rate cap, when one is set.
    rate: Option<RateCap>,
    metrics: AdmissionMetrics,
}

/// A cap on admissions a second: the generic cell rate algorithm. Each
/// admission moves a theoretical arrival time one `interval` on from
/// itself or from now, whichever is later; an admission that would move it
/// more than `burst` past now is refused and moves nothing.
struct RateCap {
    /// Nanoseconds between two admissions at the capped rate.
    interval: u64,
    /// How far ahead of now the theoretical arrival time may run.
    burst: u64,
    /// The theoretical arrival time, in nanoseconds since `started`.
    tat: AtomicU64,
}

impl RateCap {
    fn new(per_second: u64) -> Option<RateCap> {
        if per_second == 0 {
            return None;
        }
        let interval = (1_000_000_000 / per_second).max(1);
        let burst = (RATE_BURST.as_nanos() as u64).max(interval);
        Some(RateCap { interval, burst, tat: AtomicU64::new(0) })
    }

    /// Takes one admission at `now` (nanoseconds since `started`), or
    /// says there is none left.
    fn take(&self, now: u64) -> bool {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now) + self.interval;
            if next - now > self.burst {
                return false;
            }
            match self.tat.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }
}

struct AdmissionMetrics {
    /// By class: scans are refused `overloaded`, the rest `shed`.
    refused: [IntCounter; 6],
    /// Scans over the rate cap (`over_rate`: what the turnstile is told is
    /// `overloaded`, but the operator wants to tell a cap that bites from a
    /// gateway that is full).
    over_rate: IntCounter,
    in_flight: IntGauge,
    lag: prometheus::Gauge,
}

impl Admission {
    pub fn new(settings: AdmissionSettings, registry: &Registry) -> prometheus::Result<Admission> {
        let refused = IntCounterVec::new(
            Opts::new(
                "healthgate_refused_requests_total",
                "Requests refused by priority admission, by class and reason (overloaded: a scan past the queueing \
                 budget; over_rate: a scan over server.max_scan_rate; shed: a lower class kept out for scans).",
            ),
            &["class", "reason"],
        )?;
        let in_flight = IntGauge::new("healthgate_in_flight_requests", "Admitted requests doing their work now.")?;
        let lag = prometheus::Gauge::new(
            "healthgate_scheduling_lag_seconds",
            "How late the runtime ran lately: the queueing a request arriving now would see.",
        )?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        let slots = settings.max_in_flight.max(1);
        Ok(Admission {
            slots: Arc::new(Semaphore::new(slots)),
            settings,
            lower_limit: slots.div_ceil(2),
            waiting_scans: AtomicUsize::new(0),
            refused_us: AtomicU64::new(u64::MAX),
            started: tokio::time::Instant::now(),
            lag_us: AtomicU64::new(0),
            rate: RateCap::new(settings.max_scan_rate),
            metrics: AdmissionMetrics {
                refused: Class::ALL.map(|c| {
                    let reason = if c == Class::Scan { Refusal::Overloaded } else { Refusal::Shed };
                    refused.with_label_values(&[c.as_str(), reason.as_str()])
                }),
                over_rate: refused.with_label_values(&[Class::Scan.as_str(), "over_rate"]),
                in_flight,
                lag,
            },
        })
    }

    pub fn settings(&self) -> AdmissionSettings {
        self.settings
    }

    fn taken(&self) -> usize {
        self.settings.max_in_flight.max(1) - self.slots.available_permits()
    }

    /// How late the runtime runs, counted only while admitted work is in
    /// flight: with nothing in flight the lateness is not this gateway's
    /// own queue (another process, a paused machine) and refusing would
    /// not shorten it.
    fn lag(&self) -> Duration {
        if self.taken() == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.lag_us.load(Ordering::Relaxed))
    }

    /// Admits a request of `class` (a scan may wait up to the budget), or
    /// says why not. The refusal is counted here.
    pub async fn admit(&self, class: Class) -> Result<Slot, Refusal> {
        if let (Class::Scan, Some(rate)) = (class, &self.rate) {
            let now = self.since_start_ns();
            if !rate.take(now) {
                self.refused_us.store(now / 1_000, Ordering::Relaxed);
                self.metrics.over_rate.inc();
                return Err(Refusal::OverRate);
            }
        }
        let admitted = match class {
            Class::Scan => self.admit_scan().await,
            _ => self.admit_lower(),
        };
        match admitted {
            Some(permit) => {
                self.metrics.in_flight.inc();
                Ok(Slot { _permit: permit, in_flight: self.metrics.in_flight.clone() })
            }
            None => {
                self.metrics.refused[class as usize].inc();
                Err(if class == Class::Scan { Refusal::Overloaded } else { Refusal::Shed })
            }
        }
    }

    async fn admit_scan(&self) -> Option<OwnedSemaphorePermit> {
        let budget = self.settings.scan_queue_budget;
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        if budget.is_zero() {
            return None;
        }
        let _waiting = Waiting::new(self);
        let wait = if self.overloaded() { budget / OVERLOADED_DIVISOR } else { budget };
        match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(p) => p.ok(),
            Err(_) => {
                self.refused_us.store(self.since_start_us(), Ordering::Relaxed);
                None
            }
        }
    }

    fn since_start_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX - 1)
    }

    fn since_start_ns(&self) -> u64 {
        // 584 years of uptime before this saturates.
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX / 2)
    }

    /// Whether a scan was refused `overloaded` within [`OVERLOADED_FOR`].
    fn overloaded(&self) -> bool {
        let refused = self.refused_us.load(Ordering::Relaxed);
        refused != u64::MAX && self.since_start_us().saturating_sub(refused) < OVERLOADED_FOR.as_micros() as u64
    }

    fn admit_lower(&self) -> Option<OwnedSemaphorePermit> {
        if self.waiting_scans.load(Ordering::Relaxed) > 0
            || self.taken() >= self.lower_limit
            || self.lag() > self.settings.scan_queue_budget / 2
        {
            return None;
        }
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Measures how late the runtime runs, until dropped (the server runs it
    /// as a task). The figure kept is the least lateness of the last
    /// [`PROBE_WINDOW`] ticks: overload makes every tick late, while one
    /// stall (a burst of work, a pause of the machine) makes one tick late
    /// and must not shed anything after it has passed.
    pub async fn probe(&self) {
        let mut window = [0u64; PROBE_WINDOW];
        for i in (0..PROBE_WINDOW).cycle() {
            let due = Instant::now() + PROBE_TICK;
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            // tokio's timer has millisecond resolution: up to a tick late
            // is the timer, not queueing.
            let late = Instant::now().saturating_duration_since(due).saturating_sub(PROBE_TICK);
            window[i] = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
            let lag = window.iter().copied().min().unwrap_or(0);
            self.lag_us.store(lag, Ordering::Relaxed);
            self.metrics.lag.set(lag as f64 / 1e6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_in_flight: usize, budget_ms: u64) -> Admission {
        let settings =
            AdmissionSettings { max_in_flight, scan_queue_budget: Duration::from_millis(budget_ms), max_scan_rate: 0 };
        Admission::new(settings, &Registry::new()).unwrap()
    }

    #[tokio::test]
    async fn lower_classes_go_first_and_scans_wait_only_the_budget() {
        let a = admission(2, 200);
        // One slot taken: scans still come in, lower classes are shed.
        let held = a.admit(Class::Scan).await.unwrap();
        for c in &Class::ALL[1..] {
            assert_eq!(a.admit(*c).await.err(), Some(Refusal::Shed), "{c:?}");
        }
        let second = a.admit(Class::Scan).await.unwrap();
        // Full: a scan waits the budget, then is refused overloaded.
        assert_eq!(a.admit(Class::Scan).await.err(), Some(Refusal::Overloaded));
        // A slot freed while a scan waits goes to it, and lower classes
        // are shed while it waits, though a slot is about to be free.
        let (waited, shed) = tokio::join!(a.admit(Class::Scan), async {
            let shed = a.admit(Class::Checkin).await.err();
            drop(second);
            shed
        });
        assert!(waited.is_ok());
        assert_eq!(shed, Some(Refusal::Shed));
        drop(waited);
        drop(held);
        // Idle again: every class is admitted.
        for c in Class::ALL {
            assert!(a.admit(c).await.is_ok(), "{c:?}");
        }
        assert_eq!(a.metrics.refused[Class::Scan as usize].get(), 1);
        assert_eq!(a.metrics.refused[Class::Checkin as usize].get(), 2);
        assert_eq!(a.metrics.in_flight.get(), 0);
    }

    #[tokio::test]
    async fn a_late_runtime_sheds_lower_classes_but_still_takes_scans() {
        let a = admission(8, 2);
        a.lag_us.store(3_000, Ordering::Relaxed);
        // Nothing in flight: the lateness is not ours.
        let first = a.admit(Class::Status).await.unwrap();
        // Work in flight and the runtime late: the lower classes go, scans
        // still come in (refusing them would not make the runtime earlier).
        assert_eq!(a.admit(Class::Status).await.err(), Some(Refusal::Shed));
        let scan = a.admit(Class::Scan).await.unwrap();
        // Between half the budget and the budget: lower classes still go.
        a.lag_us.store(1_500, Ordering::Relaxed);
        assert_eq!(a.admit(Class::Export).await.err(), Some(Refusal::Shed));
        a.lag_us.store(500, Ordering::Relaxed);
        assert!(a.admit(Class::Export).await.is_ok());
        drop((first, scan));
    }

    #[tokio::test(start_paused = true)]
    async fn once_a_scan_was_refused_a_scan_waits_a_fifth_of_the_budget() {
        let a = std::sync::Arc::new(admission(1, 50));
        let held = a.admit(Class::Scan).await.unwrap();
        // A burst: the first waiter waits the whole budget.
        let started = tokio::time::Instant::now();
        assert_eq!(a.admit(Class::Scan).await.err(), Some(Refusal::Overloaded));
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        // It was refused: from then on a waiter waits a fifth of it.
        let started = tokio::time::Instant::now();
        assert_eq!(a.admit(Class::Scan).await.err(), Some(Refusal::Overloaded));
        assert_eq!(started.elapsed(), Duration::from_millis(10));
        // A scan dropped while it waits (its client went away) is no longer
        // counted as waiting.
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.admit(Class::Scan).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(a.waiting_scans.load(Ordering::Relaxed), 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(a.waiting_scans.load(Ordering::Relaxed), 0);
        // No refusal for OVERLOADED_FOR: a burst waits the whole budget
        // again.
        tokio::time::sleep(OVERLOADED_FOR).await;
        let started = tokio::time::Instant::now();
        assert_eq!(a.admit(Class::Scan).await.err(), Some(Refusal::Overloaded));
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_cap_admits_its_rate_and_a_short_burst_and_refuses_the_rest_at_once() {
        // 1 000 scans a second: a burst of 10 ms is 10 scans.
        let settings =
            AdmissionSettings { max_in_flight: 64, scan_queue_budget: Duration::from_millis(5), max_scan_rate: 1_000 };
        let a = Admission::new(settings, &Registry::new()).unwrap();
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(a.admit(Class::Scan).await.unwrap());
        }
        // Slots are free, but the rate is spent: refused at once, without
        // waiting, and counted.
        let started = tokio::time::Instant::now();
        assert_eq!(a.admit(Class::Scan).await.err(), Some(Refusal::OverRate));
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(Refusal::OverRate.as_str(), "overloaded");
        assert_eq!(a.metrics.over_rate.get(), 1);
        assert_eq!(a.metrics.refused[Class::Scan as usize].get(), 0);
        // The cap is on scans: the lower classes still follow the slots.
        drop(held);
        assert!(a.admit(Class::Status).await.is_ok());
        // A millisecond later, one more scan.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(a.admit(Class::Scan).await.is_ok());
        assert_eq!(a.admit(Class::Scan).await.err(), Some(Refusal::OverRate));
        // Over a second at the capped rate, every scan comes in.
        for _ in 0..1_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(a.admit(Class::Scan).await.is_ok());
        }
        // Idle for a while: the burst is back, and no more than the burst.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let burst = admit_at_once(&a, 20).await;
        assert_eq!(burst, 10);
    }

    #[test]
    fn a_rate_cap_counts_exactly_under_contention() {
        // 100 scans a second, so a burst of one: eight threads racing for
        // it at one instant take it exactly once.
        let cap = RateCap::new(100).unwrap();
        let taken = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    if cap.take(5_000_000_000) {
                        taken.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(taken.load(Ordering::Relaxed), 1);
        assert!(!cap.take(5_005_000_000));
        assert!(cap.take(5_010_000_000));
        assert!(RateCap::new(0).is_none());
    }

    /// How many of `n` scans asked at one instant are admitted.
    async fn admit_at_once(a: &Admission, n: usize) -> usize {
        let mut admitted = Vec::new();
        for _ in 0..n {
            if let Ok(slot) = a.admit(Class::Scan).await {
                admitted.push(slot);
            }
        }
        admitted.len()
    }
}
