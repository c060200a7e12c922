//! What a run measured: HDR histograms of latency from the *intended* send
//! time, counters per outcome, case and phase, the progress line and the
//! final summary (human text or JSON).
//!
//! Each of the driver's worker threads feeds its own [`Recorder`] the
//! [`Completion`]s of its connections, with no channel and no contention;
//! the run's recorders are merged at the end ([`Recorder::merge`]). HDR
//! histograms of the same bounds add up exactly, so the merged percentiles
//! are those of one histogram fed every answer.
//!
//! Latency is `done - intended`: a request that waited in a queue because
//! every connection was busy, or because the target stalled, is charged for
//! the wait (no coordinated omission). Only answered requests (any status)
//! enter the latency histograms; timeouts, transport errors and overflow
//! drops are counted as errors instead, so an error never flatters the
//! percentiles by being fast.

use crate::cases::Kind;
use crate::expect::Outcome;
use crate::schedule::{fmt_rate, Schedule};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Histograms cover 1 µs to 10 min at three significant digits; longer
/// waits are clamped to the top (and the run is broken anyway).
const MAX_US: u64 = 600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static bounds are valid")
}

/// How one request ended, as the driver reports it.
#[derive(Debug, Clone)]
pub struct Completion {
    pub kind: Kind,
    /// The schedule phase, or `None` for the cleanup after the schedule.
    pub phase: Option<usize>,
    /// Intended send time and the time the answer (or failure) arrived,
    /// both from the start of the run.
    pub intended: Duration,
    pub done: Duration,
    /// When the request was written, from the start of the run; `None` if
    /// it never was (an overflow, or the run's deadline came first). Later
    /// than `intended` when the load generator fell behind its schedule, or
    /// when the request queued behind its lane's previous one.
    pub sent: Option<Duration>,
    pub outcome: Outcome,
    pub mismatch: Option<String>,
    /// The answer did not match, but an earlier state-changing request for
    /// this holder was dropped or failed, so no expectation can be trusted:
    /// counted apart, not as a mismatch.
    pub unverifiable: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Errors {
    pub http_status: u64,
    pub transport: u64,
    pub timeout: u64,
    pub overflow: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseSummary {
    pub count: u64,
    pub errors: u64,
    pub mismatches: u64,
    pub latency_us: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseSummary {
    pub name: String,
    pub secs: f64,
    /// Requests the schedule put in this phase, per second of it.
    pub asked_rate: f64,
    /// Successful answers that arrived during the phase, per second.
    pub achieved_rate: f64,
    pub errors: u64,
    pub latency_us: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct Slo {
    pub p99_us: u64,
    /// The highest asked rate of a ramp step that kept the SLO (p99 below
    /// it and no error); `None` if none did. The highest, not the last
    /// before the first break: on a shared machine one noisy step would
    /// otherwise hide the real limit (beyond it no step recovers, because
    /// the backlog carries over).
    pub max_rate: Option<f64>,
    /// Latency at that step.
    pub latency_at_max: Option<Latency>,
    /// The first step that broke the SLO.
    pub broke_at: Option<String>,
    /// The most successful answers per second any step got back.
    pub peak_achieved_rate: f64,
}

/// The load generator's own cost, to tell its limits from the target's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientCost {
    /// CPU of the whole process (user + system), token signing included.
    pub cpu_s: f64,
    /// CPU of the thread that signs tokens ahead of the schedule.
    pub producer_cpu_s: f64,
    /// Answers per CPU-second of the whole process, and without signing.
    pub answers_per_cpu_s: f64,
    pub answers_per_cpu_s_excl_signing: f64,
    /// Sends that left more than 1 ms after their intended time because the
    /// producer or a worker's pacer lagged (their latency still counts from
    /// the intended time).
    pub late_dispatches: u64,
    pub max_dispatch_lag_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub api: &'static str,
    pub schedule: String,
    pub connections: usize,
    pub checked: bool,
    pub duration_s: f64,
    pub scheduled: u64,
    pub answered: u64,
    pub asked_rate: f64,
    /// Successful answers that arrived within the schedule, per second.
    pub achieved_rate: f64,
    /// How long after the schedule's end the last answer arrived.
    pub drain_s: f64,
    pub pass: u64,
    pub deny: u64,
    /// Answers of the schedule's requests by HTTP status (a 503 is an
    /// answer, not a timeout); they add up to `answered`.
    pub statuses: BTreeMap<u16, u64>,
    /// Their latency by status: under overload the admitted answers (200)
    /// and the refusals (503) are two different stories.
    pub status_latency_us: BTreeMap<u16, Latency>,
    /// The same answers timed from the moment each request was written
    /// rather than from its intended instant. Where the two differ the load
    /// generator sent late (see `client.late_dispatches`) or the request
    /// queued behind its lane's previous one: this one is the server's
    /// share (with the network and the reading of the answer), the other
    /// what a turnstile on that schedule saw.
    pub status_latency_from_send_us: BTreeMap<u16, Latency>,
    /// Errors of the schedule's requests; `total` includes the cleanup's.
    pub errors: Errors,
    pub max_errors: u64,
    /// Mismatches, cleanup included.
    pub mismatches: u64,
    pub first_mismatches: Vec<String>,
    /// Answers that differed from the model for holders whose earlier
    /// request was lost (overflow, timeout, transport error): the errors
    /// already fail the run; these only explain the knock-on effects.
    pub unverifiable: u64,
    /// Answered requests of the schedule (cleanup excluded).
    pub latency_us: Latency,
    pub outcomes: BTreeMap<&'static str, Latency>,
    pub cases: BTreeMap<&'static str, CaseSummary>,
    pub phases: Vec<PhaseSummary>,
    pub slo: Option<Slo>,
    /// The `out`s sent after the schedule to leave nobody inside.
    pub cleanup: CaseSummary,
    pub client: ClientCost,
    /// No mismatch and no more errors than `max_errors`.
    pub ok: bool,
}

#[derive(Default)]
struct Tally {
    count: u64,
    errors: u64,
    mismatches: u64,
}

impl Tally {
    fn merge(&mut self, o: &Tally) {
        self.count += o.count;
        self.errors += o.errors;
        self.mismatches += o.mismatches;
    }

    fn add(&mut self, c: &Completion) {
        self.count += 1;
        self.errors += u64::from(c.outcome.is_error());
        self.mismatches += u64::from(c.mismatch.is_some());
    }
}

struct PhaseRec {
    tally: Tally,
    hist: Histogram<u64>,
    /// Successful answers that arrived while this phase was running.
    arrived: u64,
}

/// Each answer is recorded once per view it appears in, no more: by
/// outcome, by case, by phase, in the progress line's interval, and timed
/// from its actual send by status (five histograms for an answer of status
/// 200). What the other views hold is the sum of these, built once in
/// [`Recorder::finish`]: all answers are the phases' answers, and the
/// answers of status 200 are the passes, denials and plain `ok`s. Only the
/// other statuses (503 and the like) keep a histogram of their own from the
/// intended send.
pub struct Recorder {
    schedule: Schedule,
    outcomes: Vec<(Tally, Histogram<u64>)>,
    kinds: Vec<(Tally, Histogram<u64>)>,
    phases: Vec<PhaseRec>,
    cleanup: (Tally, Histogram<u64>),
    mismatches: u64,
    unverifiable: u64,
    /// Answers by status, but for 200 (see the type's comment).
    statuses: BTreeMap<u16, Histogram<u64>>,
    /// Answers by status (200 included), timed from their actual send.
    from_send: BTreeMap<u16, Histogram<u64>>,
    /// The first `show` mismatches of the run, by their number.
    shown: Vec<(u64, String)>,
    show: usize,
    /// Mismatches of the run so far, shared by the recorders of one run
    /// ([`Recorder::sibling`]): it numbers them across recorders.
    numbered: Arc<AtomicU64>,
    last_done: Duration,
    /// Since the last progress line.
    interval: Histogram<u64>,
    interval_ok: u64,
    interval_errors: u64,
}

impl Recorder {
    /// `show`: how many mismatches to keep word for word.
    pub fn new(schedule: &Schedule, show: usize) -> Recorder {
        Recorder {
            schedule: schedule.clone(),
            outcomes: Outcome::NAMES.iter().map(|_| (Tally::default(), histogram())).collect(),
            kinds: Kind::ALL.iter().map(|_| (Tally::default(), histogram())).collect(),
            phases: schedule
                .phases()
                .iter()
                .map(|_| PhaseRec { tally: Tally::default(), hist: histogram(), arrived: 0 })
                .collect(),
            cleanup: (Tally::default(), histogram()),
            mismatches: 0,
            unverifiable: 0,
            statuses: BTreeMap::new(),
            from_send: BTreeMap::new(),
            shown: vec![],
            show,
            numbered: Arc::new(AtomicU64::new(0)),
            last_done: Duration::ZERO,
            interval: histogram(),
            interval_ok: 0,
            interval_errors: 0,
        }
    }

    /// An empty recorder for the same run, numbering mismatches with this
    /// one: one per worker thread, merged at the end.
    pub fn sibling(&self) -> Recorder {
        let mut r = Recorder::new(&self.schedule, self.show);
        r.numbered = self.numbered.clone();
        r
    }

    /// Adds what `other`, a [`Recorder::sibling`], recorded.
    pub fn merge(&mut self, other: Recorder) {
        fn add(to: &mut Histogram<u64>, from: &Histogram<u64>) {
            to.add(from).expect("histograms of the same bounds");
        }
        for ((t, h), (ot, oh)) in
            self.outcomes.iter_mut().chain(&mut self.kinds).zip(other.outcomes.iter().chain(&other.kinds))
        {
            t.merge(ot);
            add(h, oh);
        }
        for (p, o) in self.phases.iter_mut().zip(&other.phases) {
            p.tally.merge(&o.tally);
            add(&mut p.hist, &o.hist);
            p.arrived += o.arrived;
        }
        self.cleanup.0.merge(&other.cleanup.0);
        add(&mut self.cleanup.1, &other.cleanup.1);
        self.mismatches += other.mismatches;
        self.unverifiable += other.unverifiable;
        for (s, h) in &other.statuses {
            add(self.statuses.entry(*s).or_insert_with(histogram), h);
        }
        for (s, h) in &other.from_send {
            add(self.from_send.entry(*s).or_insert_with(histogram), h);
        }
        self.shown.extend(other.shown);
        self.shown.sort_by_key(|(n, _)| *n);
        self.last_done = self.last_done.max(other.last_done);
        add(&mut self.interval, &other.interval);
        self.interval_ok += other.interval_ok;
        self.interval_errors += other.interval_errors;
    }

    /// Moves what `other` recorded since its last progress line into this
    /// recorder's interval (for one progress line over several recorders).
    pub fn take_interval(&mut self, other: &mut Recorder) {
        self.interval.add(&other.interval).expect("histograms of the same bounds");
        other.interval.reset();
        self.interval_ok += std::mem::take(&mut other.interval_ok);
        self.interval_errors += std::mem::take(&mut other.interval_errors);
    }

    /// Records one request; returns the mismatch line when it is one of the
    /// first `show`, for the caller to print at once.
    pub fn record(&mut self, c: &Completion) -> Option<&str> {
        let us = u64::try_from(c.done.saturating_sub(c.intended).as_micros()).unwrap_or(u64::MAX).max(1);
        let answered = c.outcome.answered();
        let success = answered && !c.outcome.is_error();
        self.last_done = self.last_done.max(c.done);
        match c.phase {
            None => {
                self.cleanup.0.add(c);
                if answered {
                    self.cleanup.1.saturating_record(us);
                }
            }
            Some(p) => {
                let (tally, hist) = &mut self.outcomes[c.outcome.index()];
                tally.add(c);
                if c.outcome != Outcome::Overflow {
                    hist.saturating_record(us);
                }
                let (tally, hist) = &mut self.kinds[c.kind.index()];
                tally.add(c);
                self.phases[p].tally.add(c);
                if answered {
                    if let Outcome::Status(s) = c.outcome {
                        self.statuses.entry(s).or_insert_with(histogram).saturating_record(us);
                    }
                    if let (Some(status), Some(sent)) = (c.outcome.status(), c.sent) {
                        let from_send = u64::try_from(c.done.saturating_sub(sent).as_micros()).unwrap_or(u64::MAX);
                        self.from_send.entry(status).or_insert_with(histogram).saturating_record(from_send.max(1));
                    }
                    hist.saturating_record(us);
                    self.phases[p].hist.saturating_record(us);
                    self.interval.saturating_record(us);
                }
            }
        }
        if success {
            self.interval_ok += 1;
            if let Some(p) = self.schedule.phase_at(c.done) {
                self.phases[p].arrived += 1;
            }
        }
        self.interval_errors += u64::from(c.outcome.is_error());
        self.unverifiable += u64::from(c.unverifiable);
        let m = c.mismatch.as_ref()?;
        self.mismatches += 1;
        let number = self.numbered.fetch_add(1, Ordering::Relaxed) + 1;
        if number > self.show as u64 {
            return None;
        }
        let phase = match c.phase {
            Some(p) => &self.schedule.phases()[p].name,
            None => "cleanup",
        };
        let line = format!(
            "mismatch #{number} case {} ({phase}, intended at {:.3} s): {m}",
            c.kind.name(),
            c.intended.as_secs_f64()
        );
        self.shown.push((number, line));
        self.shown.last().map(|(_, l)| l.as_str())
    }

    /// The progress line for the second ending at `now`, then a new interval.
    pub fn progress(&mut self, now: Duration, asked: u64, backlog: usize) -> String {
        let h = &self.interval;
        let ms = |q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 };
        let line = format!(
            "[{:>5.0}s] asked {:>6}/s  done {:>6}/s  p50 {:>7.2}ms  p99 {:>8.2}ms  max {:>8.2}ms  backlog {:>6}  \
             errors {}  mismatches {}",
            now.as_secs_f64(),
            asked,
            self.interval_ok,
            ms(0.5),
            ms(0.99),
            if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
            backlog,
            self.interval_errors,
            self.numbered.load(Ordering::Relaxed),
        );
        self.interval.reset();
        self.interval_ok = 0;
        self.interval_errors = 0;
        line
    }

    /// The summary; `slo` is the ramp's p99 target, when the run is a ramp.
    pub fn finish(
        self,
        api: &'static str,
        connections: usize,
        checked: bool,
        max_errors: u64,
        slo: Option<Duration>,
        client: ClientCost,
    ) -> Summary {
        let duration = self.schedule.duration().as_secs_f64();
        let secs = self.schedule.phase_secs();
        let phases: Vec<PhaseSummary> = self
            .phases
            .iter()
            .zip(self.schedule.phases())
            .zip(secs)
            .map(|((r, p), secs)| PhaseSummary {
                name: p.name.clone(),
                secs,
                asked_rate: r.tally.count as f64 / secs,
                achieved_rate: r.arrived as f64 / secs,
                errors: r.tally.errors,
                latency_us: Latency::of(&r.hist),
            })
            .collect();
        let slo = slo.map(|slo| {
            let p99_us = u64::try_from(slo.as_micros()).unwrap_or(u64::MAX);
            let kept = |p: &&PhaseSummary| p.latency_us.p99_us < p99_us && p.errors == 0;
            let best = phases.iter().filter(kept).max_by(|a, b| a.asked_rate.total_cmp(&b.asked_rate));
            let broke = phases.iter().position(|p| !kept(&p));
            Slo {
                p99_us,
                max_rate: best.map(|p| p.asked_rate.round()),
                latency_at_max: best.map(|p| p.latency_us),
                broke_at: broke.map(|i| phases[i].name.clone()),
                peak_achieved_rate: phases.iter().map(|p| p.achieved_rate.round()).fold(0.0, f64::max),
            }
        });
        let count = |o: Outcome| self.outcomes[o.index()].0.count;
        let errors = Errors {
            http_status: count(Outcome::Status(0)),
            transport: count(Outcome::Transport),
            timeout: count(Outcome::Timeout),
            overflow: count(Outcome::Overflow),
            total: self.outcomes.iter().map(|(t, _)| t.errors).sum::<u64>() + self.cleanup.0.errors,
        };
        let scheduled: u64 = self.phases.iter().map(|p| p.tally.count).sum();
        let mut overall = histogram();
        for p in &self.phases {
            overall.add(&p.hist).expect("histograms of the same bounds");
        }
        let answered = overall.len();
        let mut statuses = self.statuses;
        let mut ok200 = histogram();
        for o in [Outcome::Pass, Outcome::Deny, Outcome::Ok] {
            ok200.add(&self.outcomes[o.index()].1).expect("histograms of the same bounds");
        }
        if !ok200.is_empty() {
            statuses.insert(200, ok200);
        }
        let arrived: u64 = self.phases.iter().map(|p| p.arrived).sum();
        let case = |(t, h): &(Tally, Histogram<u64>)| CaseSummary {
            count: t.count,
            errors: t.errors,
            mismatches: t.mismatches,
            latency_us: Latency::of(h),
        };
        let ok = self.mismatches == 0 && errors.total <= max_errors;
        Summary {
            api,
            schedule: self.schedule.label().to_owned(),
            connections,
            checked,
            duration_s: duration,
            scheduled,
            answered,
            asked_rate: scheduled as f64 / duration,
            achieved_rate: arrived as f64 / duration,
            drain_s: (self.last_done.as_secs_f64() - duration).max(0.0),
            pass: count(Outcome::Pass),
            deny: count(Outcome::Deny),
            statuses: statuses.iter().map(|(s, h)| (*s, h.len())).collect(),
            status_latency_us: statuses.iter().map(|(s, h)| (*s, Latency::of(h))).collect(),
            status_latency_from_send_us: self.from_send.iter().map(|(s, h)| (*s, Latency::of(h))).collect(),
            errors,
            max_errors,
            mismatches: self.mismatches,
            first_mismatches: self.shown.into_iter().map(|(_, l)| l).collect(),
            unverifiable: self.unverifiable,
            latency_us: Latency::of(&overall),
            outcomes: Outcome::NAMES
                .iter()
                .zip(&self.outcomes)
                .filter(|(_, (t, _))| t.count > 0)
                .map(|(n, o)| (*n, Latency { count: o.0.count, ..Latency::of(&o.1) }))
                .collect(),
            cases: Kind::ALL
                .iter()
                .zip(&self.kinds)
                .filter(|(_, (t, _))| t.count > 0)
                .map(|(k, o)| (k.name(), case(o)))
                .collect(),
            phases,
            slo,
            cleanup: case(&self.cleanup),
            client,
            ok,
        }
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}ms", us as f64 / 1000.0)
}

fn lat_row(f: &mut fmt::Formatter<'_>, name: &str, extra: &str, l: &Latency) -> fmt::Result {
    writeln!(
        f,
        "  {name:<16} {extra:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        l.count,
        ms(l.p50_us),
        ms(l.p90_us),
        ms(l.p99_us),
        ms(l.p999_us),
        ms(l.max_us)
    )
}

fn lat_header(f: &mut fmt::Formatter<'_>, what: &str, extra: &str) -> fmt::Result {
    writeln!(
        f,
        "  {what:<16} {extra:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "count", "p50", "p90", "p99", "p99.9", "max"
    )
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.errors;
        writeln!(f, "healthgate-loadgen: {} API, {}", self.api, self.schedule)?;
        writeln!(
            f,
            "  {} scheduled over {:.1} s on {} connections: asked {}/s, achieved {}/s (last answer {:.2} s after the end)",
            self.scheduled,
            self.duration_s,
            self.connections,
            fmt_rate(self.asked_rate.round()),
            fmt_rate(self.achieved_rate.round()),
            self.drain_s
        )?;
        writeln!(
            f,
            "  answered {}: pass {}, deny {}; errors {} (http {}, transport {}, timeout {}, overflow {}; tolerated {})",
            self.answered,
            self.pass,
            self.deny,
            e.total,
            e.http_status,
            e.transport,
            e.timeout,
            e.overflow,
            self.max_errors
        )?;
        if !self.statuses.is_empty() {
            let by: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{s} {n}")).collect();
            writeln!(f, "  answers by status: {}", by.join(", "))?;
        }
        match self.checked {
            true if self.unverifiable > 0 => writeln!(
                f,
                "  checked every answer: {} mismatches ({} more unverifiable: their holder's earlier request was lost)",
                self.mismatches, self.unverifiable
            )?,
            true => writeln!(f, "  checked every answer: {} mismatches", self.mismatches)?,
            false => writeln!(f, "  answers not checked (--no-check): only the status counts")?,
        }
        for m in &self.first_mismatches {
            writeln!(f, "    {m}")?;
        }
        writeln!(f, "latency from the intended send time:")?;
        lat_header(f, "", "")?;
        lat_row(f, "all", "", &self.latency_us)?;
        for (name, l) in &self.outcomes {
            lat_row(f, name, "", l)?;
        }
        if self.status_latency_us.len() > 1 {
            writeln!(f, "by status:")?;
            lat_header(f, "status", "")?;
            for (s, l) in &self.status_latency_us {
                lat_row(f, &s.to_string(), "", l)?;
            }
        }
        if !self.status_latency_from_send_us.is_empty() {
            writeln!(f, "by status, from the actual send (the server's share when the client fell behind):")?;
            lat_header(f, "status", "")?;
            for (s, l) in &self.status_latency_from_send_us {
                lat_row(f, &s.to_string(), "", l)?;
            }
        }
        if self.phases.len() > 1 {
            writeln!(f, "by phase:")?;
            lat_header(f, "phase", "asked/s -> achieved/s")?;
            for p in &self.phases {
                let extra = format!("{} -> {}", fmt_rate(p.asked_rate.round()), fmt_rate(p.achieved_rate.round()));
                lat_row(f, &p.name, &extra, &p.latency_us)?;
            }
        }
        if self.cases.len() > 1 {
            writeln!(f, "by case:")?;
            lat_header(f, "case", "errors / mismatches")?;
            for (name, c) in &self.cases {
                lat_row(f, name, &format!("{} / {}", c.errors, c.mismatches), &c.latency_us)?;
            }
        }
        if self.cleanup.count > 0 {
            writeln!(
                f,
                "cleanup: {} outs, {} errors, {} mismatches",
                self.cleanup.count, self.cleanup.errors, self.cleanup.mismatches
            )?;
        }
        if let Some(s) = &self.slo {
            match (s.max_rate, &s.broke_at) {
                (Some(r), Some(at)) => {
                    writeln!(f, "SLO p99 < {}: held up to {}/s, first broken at {at}", ms(s.p99_us), fmt_rate(r))?
                }
                (Some(r), None) => {
                    writeln!(f, "SLO p99 < {}: held at every step, up to {}/s", ms(s.p99_us), fmt_rate(r))?
                }
                (None, _) => writeln!(f, "SLO p99 < {}: broken from the first step", ms(s.p99_us))?,
            }
            writeln!(f, "peak achieved: {}/s", fmt_rate(s.peak_achieved_rate))?;
        }
        let c = &self.client;
        writeln!(
            f,
            "client: {:.2} CPU-s ({:.2} signing), {:.0} answers/CPU-s ({:.0} without signing), {} late sends (max lag {})",
            c.cpu_s,
            c.producer_cpu_s,
            c.answers_per_cpu_s,
            c.answers_per_cpu_s_excl_signing,
            c.late_dispatches,
            ms(c.max_dispatch_lag_us)
        )?;
        write!(f, "result: {}", if self.ok { "OK" } else { "FAILED" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Step;

    fn done(kind: Kind, phase: usize, intended_ms: u64, done_ms: u64, outcome: Outcome) -> Completion {
        Completion {
            kind,
            phase: Some(phase),
            intended: Duration::from_millis(intended_ms),
            done: Duration::from_millis(done_ms),
            sent: Some(Duration::from_millis(intended_ms)),
            outcome,
            mismatch: None,
            unverifiable: false,
        }
    }

    /// A client that fell behind: every tenth request was written 10 ms
    /// after its instant and answered 1 ms after that. From the intended
    /// time its p99 is the client's lag; from the send, the server's 1 ms.
    /// A 503 gets its own row in both views, and a request never sent
    /// (an overflow) is in neither.
    #[test]
    fn latency_from_the_send_leaves_the_clients_own_lag_out() {
        let s = Schedule::constant(100.0, Duration::from_secs(10)).unwrap();
        let mut r = Recorder::new(&s, 5);
        for (n, slot) in s.instants().enumerate() {
            let at = slot.at.as_millis() as u64;
            let lag = if n % 10 == 0 { 10 } else { 0 };
            let mut c = done(Kind::GreenIn, 0, at, at + lag + 1, Outcome::Pass);
            c.sent = Some(Duration::from_millis(at + lag));
            if n == 1 {
                c.outcome = Outcome::Status(503);
            }
            if n == 2 {
                c.outcome = Outcome::Overflow;
                c.sent = None;
            }
            r.record(&c);
        }
        let sum = r.finish("scan", 1, true, u64::MAX, None, ClientCost::default());
        let intended = sum.status_latency_us[&200];
        let sent = sum.status_latency_from_send_us[&200];
        assert_eq!(intended.count, 998);
        assert_eq!(sent.count, 998);
        assert!((10_500..12_000).contains(&intended.p99_us), "{intended:?}");
        assert!(sent.max_us < 1_100, "{sent:?}");
        assert_eq!(sum.status_latency_from_send_us[&503].count, 1);
        assert_eq!(sum.status_latency_from_send_us.len(), 2);
    }

    /// The canonical coordinated-omission example: 100/s for 10 s, and the
    /// target stalls for the first second. A closed-loop client would record
    /// one slow request and 99 % fast ones; charged from the intended time,
    /// the 100 requests queued behind the stall wait 1 s down to 10 ms.
    #[test]
    fn latency_counts_from_the_intended_time() {
        let s = Schedule::constant(100.0, Duration::from_secs(10)).unwrap();
        let mut r = Recorder::new(&s, 5);
        for (n, slot) in s.instants().enumerate() {
            let intended = slot.at.as_millis() as u64;
            // The first 100 are all answered when the stall ends at 1.01 s;
            // later ones take 1 ms.
            let done_ms = if n < 100 { 1010 } else { intended + 1 };
            r.record(&done(Kind::GreenIn, 0, intended, done_ms, Outcome::Pass));
        }
        let sum = r.finish("scan", 1, true, 0, None, ClientCost::default());
        assert_eq!(sum.latency_us.count, 1000);
        assert!((1_000_000..1_001_000).contains(&sum.latency_us.max_us), "{:?}", sum.latency_us);
        // 10 % of requests waited for the stall: p90 is about the 1 ms tail,
        // p99 is inside the stall (~900 ms), not 1 ms.
        assert!(sum.latency_us.p99_us > 850_000, "{:?}", sum.latency_us);
        assert!(sum.latency_us.p50_us < 2_000);
        assert!((sum.achieved_rate - 100.0).abs() < 0.5);
        assert!(sum.ok);
    }

    #[test]
    fn outcomes_errors_and_mismatches() {
        let s = Schedule::constant(10.0, Duration::from_secs(1)).unwrap();
        let mut r = Recorder::new(&s, 1);
        r.record(&done(Kind::GreenIn, 0, 100, 101, Outcome::Pass));
        r.record(&done(Kind::Red, 0, 200, 202, Outcome::Deny));
        r.record(&done(Kind::Red, 0, 300, 900, Outcome::Status(503)));
        r.record(&done(Kind::Red, 0, 400, 5400, Outcome::Timeout));
        r.record(&done(Kind::Red, 0, 500, 500, Outcome::Overflow));
        let mut bad = done(Kind::Fever, 0, 600, 601, Outcome::Deny);
        bad.mismatch = Some("expected x, got y".into());
        assert!(r.record(&bad).unwrap().contains("case fever"));
        // Only the first is kept word for word; all are counted.
        assert!(r.record(&bad).is_none());
        let sum = r.finish("scan", 1, true, 3, None, ClientCost::default());
        assert_eq!((sum.pass, sum.deny, sum.mismatches), (1, 3, 2));
        assert_eq!((sum.errors.http_status, sum.errors.timeout, sum.errors.overflow, sum.errors.total), (1, 1, 1, 3));
        // The 503 was answered and counts for latency; timeout and overflow do not.
        assert_eq!(sum.latency_us.count, 5);
        assert_eq!(sum.cases["red"].errors, 3);
        assert!(!sum.ok, "mismatches always fail the run");
        assert_eq!(sum.first_mismatches.len(), 1);
    }

    /// The views built at the end (all answers, answers of status 200) hold
    /// exactly what recording every answer into them would have, across
    /// phases and across the workers' recorders.
    #[test]
    fn the_views_built_at_the_end_match_recording_into_each() {
        let s = Schedule::ramp(100.0, 200.0, Step::Add(100.0), Duration::from_secs(1)).unwrap();
        let mut a = Recorder::new(&s, 0);
        let mut b = a.sibling();
        let (mut all, mut ok200, mut refused) = (histogram(), histogram(), histogram());
        let outcomes = [Outcome::Pass, Outcome::Deny, Outcome::Ok, Outcome::Status(503), Outcome::Timeout];
        for (n, slot) in s.instants().enumerate() {
            let at = slot.at.as_micros() as u64;
            let lat = 100 + (n as u64 * 7919) % 20_000;
            let outcome = outcomes[n % outcomes.len()];
            let c = Completion {
                kind: if n % 3 == 0 { Kind::GreenIn } else { Kind::Red },
                phase: Some(slot.phase),
                intended: Duration::from_micros(at),
                done: Duration::from_micros(at + lat),
                sent: Some(Duration::from_micros(at)),
                outcome,
                mismatch: None,
                unverifiable: false,
            };
            if n % 2 == 0 { &mut a } else { &mut b }.record(&c);
            match outcome {
                Outcome::Timeout => {}
                Outcome::Status(_) => {
                    all.record(lat).unwrap();
                    refused.record(lat).unwrap();
                }
                _ => {
                    all.record(lat).unwrap();
                    ok200.record(lat).unwrap();
                }
            }
        }
        a.merge(b);
        let sum = a.finish("scan", 2, false, u64::MAX, None, ClientCost::default());
        assert_eq!(sum.latency_us, Latency::of(&all));
        assert_eq!(sum.status_latency_us[&200], Latency::of(&ok200));
        assert_eq!(sum.status_latency_us[&503], Latency::of(&refused));
        assert_eq!(sum.statuses[&200] + sum.statuses[&503], sum.answered);
        assert_eq!(sum.answered, all.len());
    }

    #[test]
    fn ramp_finds_the_highest_step_within_the_slo() {
        let s = Schedule::ramp(1000.0, 4000.0, Step::Add(1000.0), Duration::from_secs(1)).unwrap();
        let mut r = Recorder::new(&s, 0);
        for slot in s.instants() {
            let t = slot.at.as_micros() as u64;
            // Step 1 has a noisy 8 ms, steps 0 and 2 answer in 1 ms, step 3
            // in 50 ms.
            let lat = [1_000, 8_000, 1_000, 50_000][slot.phase];
            r.record(&Completion {
                kind: Kind::GreenIn,
                phase: Some(slot.phase),
                intended: Duration::from_micros(t),
                done: Duration::from_micros(t + lat),
                sent: Some(Duration::from_micros(t)),
                outcome: Outcome::Pass,
                mismatch: None,
                unverifiable: false,
            });
        }
        let sum = r.finish("scan", 8, true, 0, Some(Duration::from_millis(5)), ClientCost::default());
        let slo = sum.slo.clone().unwrap();
        assert_eq!(slo.max_rate, Some(3000.0));
        assert_eq!(slo.latency_at_max.unwrap().p99_us, 1_000);
        assert_eq!(slo.broke_at.as_deref(), Some("2000/s"));
        assert_eq!(sum.phases[1].asked_rate, 2000.0);
        // Achieved counts answers by arrival: the last 8 ms of step 1 arrive
        // during step 2.
        assert!((sum.phases[1].achieved_rate - 1984.0).abs() < 3.0, "{}", sum.phases[1].achieved_rate);
        // The human summary renders every section.
        let text = sum.to_string();
        assert!(text.contains("by phase:") && text.contains("held up to 3000/s, first broken at 2000/s"), "{text}");
    }
}
