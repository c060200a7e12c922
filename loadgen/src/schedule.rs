//! Schedules: when the load generator sends, as a piecewise-linear rate.
//!
//! One [`Schedule`] type drives every kind of run: a constant rate, a step
//! ramp that looks for the breaking point, and the commuter profiles of
//! DOMAIN.md. A schedule is a list of segments, each with a length and a rate
//! that moves linearly from `from` to `to`; [`Schedule::instants`] turns it
//! into the intended send instants. The driver asks for those instants and
//! never looks at responses to decide when to send (open loop).
//!
//! Instants are evenly spaced by the rate (the `n`-th request goes out when
//! the integral of the rate reaches `n`), not Poisson: runs are repeatable
//! and a latency spike is the target's doing, not the dice's.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScheduleError {
    #[error("bad duration {0:?} (e.g. 10s, 500ms, 2m, 1h)")]
    Duration(String),
    #[error("bad ramp {0:?} (expected FROM..TO, e.g. 1000..20000)")]
    Ramp(String),
    #[error("bad step {0:?} (expected an increment like 500 or a factor like x1.5)")]
    Step(String),
    #[error("unknown profile {0:?} (known: morning-peak)")]
    Profile(String),
    #[error("{0}")]
    Invalid(&'static str),
}

/// A stretch of time with a linearly changing rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    /// Seconds.
    pub len: f64,
    /// Requests per second at the start and at the end.
    pub from: f64,
    pub to: f64,
    /// Index into [`Schedule::phases`]: what the report groups this under.
    pub phase: usize,
}

impl Segment {
    /// Requests in the whole segment (the integral of the rate).
    fn count(&self) -> f64 {
        (self.from + self.to) / 2.0 * self.len
    }

    /// Seconds into the segment at which `n` requests are due: solves
    /// `from t + (to - from) t^2 / (2 len) = n` in a form that stays exact
    /// when `from` is zero and stable when the rate falls.
    fn time_for(&self, n: f64) -> f64 {
        let slope = (self.to - self.from) / self.len;
        let t = if slope.abs() < 1e-12 {
            n / self.from
        } else {
            let disc = (self.from * self.from + 2.0 * slope * n).max(0.0);
            2.0 * n / (self.from + disc.sqrt())
        };
        t.clamp(0.0, self.len)
    }
}

/// A named group of segments: a ramp step, or a part of a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub name: String,
}

/// One intended send: when, and in which phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    pub at: Duration,
    pub phase: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    segments: Vec<Segment>,
    /// When each segment ends, in seconds from the start.
    ends: Vec<f64>,
    phases: Vec<Phase>,
    /// Human description for the report, e.g. `ramp 1000..5000/s`.
    label: String,
}

/// How the rate grows between ramp steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    Add(f64),
    Times(f64),
}

impl FromStr for Step {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ScheduleError::Step(s.to_owned());
        let (factor, num) = match s.strip_prefix('x') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let v: f64 = num.parse().map_err(|_| err())?;
        match factor {
            true if v > 1.0 && v.is_finite() => Ok(Step::Times(v)),
            false if v > 0.0 && v.is_finite() => Ok(Step::Add(v)),
            _ => Err(err()),
        }
    }
}

/// `FROM..TO` in requests per second.
pub fn parse_ramp(s: &str) -> Result<(f64, f64), ScheduleError> {
    let err = || ScheduleError::Ramp(s.to_owned());
    let (a, b) = s.split_once("..").ok_or_else(err)?;
    let a: f64 = a.trim().parse().map_err(|_| err())?;
    let b: f64 = b.trim().parse().map_err(|_| err())?;
    if !(a > 0.0 && b >= a && b.is_finite()) {
        return Err(err());
    }
    Ok((a, b))
}

/// `10s`, `500ms`, `2m`, `1h`, or bare seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, ScheduleError> {
    let err = || ScheduleError::Duration(s.to_owned());
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| err())?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(v * scale).map_err(|_| err())
}

/// Built-in commuter profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    MorningPeak,
}

impl FromStr for Profile {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "morning-peak" => Ok(Profile::MorningPeak),
            _ => Err(ScheduleError::Profile(s.to_owned())),
        }
    }
}

/// The morning peak of a Beijing-sized metro network (DOMAIN.md, "Traffic
/// figures"), in real time. ~560 scans/s over the peak hour, ~850/s in the
/// busiest five minutes, bursts near 2 000/s as trains arrive: rounded up so
/// that the profile is a little harder than the press figures.
pub mod morning_peak {
    /// 06:30 to 07:30: the network fills up.
    pub const RAMP_UP_SECS: f64 = 3600.0;
    pub const EARLY_RATE: f64 = 60.0;
    /// 07:30 to 08:30: the peak hour, cut into train cycles.
    pub const PEAK_RATE: f64 = 600.0;
    pub const CYCLE_SECS: f64 = 150.0;
    pub const CYCLES: usize = 24;
    /// The last seconds of each cycle: a train empties onto the gates.
    pub const BURST_SECS: f64 = 10.0;
    pub const BURST_RATE: f64 = 2000.0;
    /// 08:00 to 08:05 (cycles 12 and 13): the busiest five minutes.
    pub const PLATEAU_CYCLES: std::ops::Range<usize> = 12..14;
    pub const PLATEAU_RATE: f64 = 900.0;
    /// 08:30 to 09:00: the peak drains away.
    pub const RAMP_DOWN_SECS: f64 = 1800.0;
    pub const LATE_RATE: f64 = 100.0;
}

impl Schedule {
    /// Builds a schedule, dropping empty segments.
    fn new(label: String, phases: Vec<Phase>, segments: Vec<Segment>) -> Result<Schedule, ScheduleError> {
        let segments: Vec<Segment> = segments.into_iter().filter(|s| s.len > 0.0).collect();
        if segments.iter().any(|s| !(s.from >= 0.0 && s.to >= 0.0 && s.len.is_finite())) {
            return Err(ScheduleError::Invalid("rates must be non-negative and durations finite"));
        }
        if segments.iter().all(|s| s.count() < 1.0) {
            return Err(ScheduleError::Invalid("the schedule sends nothing"));
        }
        let ends = segments
            .iter()
            .scan(0.0, |end, s| {
                *end += s.len;
                Some(*end)
            })
            .collect();
        Ok(Schedule { segments, ends, phases, label })
    }

    /// `rate` requests per second for `duration`.
    pub fn constant(rate: f64, duration: Duration) -> Result<Schedule, ScheduleError> {
        let name = format!("{}/s", fmt_rate(rate));
        let seg = Segment { len: duration.as_secs_f64(), from: rate, to: rate, phase: 0 };
        Schedule::new(format!("constant {name} for {:?}", duration), vec![Phase { name }], vec![seg])
    }

    /// Steps from `from` to `to` (inclusive when a step lands on it), each
    /// held for `hold`: one phase per step, so the report shows where the
    /// latency breaks.
    pub fn ramp(from: f64, to: f64, step: Step, hold: Duration) -> Result<Schedule, ScheduleError> {
        const MAX_STEPS: usize = 1000;
        let mut rates = vec![];
        let mut r = from;
        // 0.1 % of tolerance so that a factor typed with a few decimals
        // (x1.4595 for 1000..64000 in 12 steps) still reaches `to`.
        while r <= to * 1.001 && rates.len() < MAX_STEPS {
            rates.push(r);
            r = match step {
                Step::Add(d) => r + d,
                Step::Times(f) => r * f,
            };
        }
        let phases = rates.iter().map(|r| Phase { name: format!("{}/s", fmt_rate(*r)) }).collect();
        let segs = rates
            .iter()
            .enumerate()
            .map(|(i, &r)| Segment { len: hold.as_secs_f64(), from: r, to: r, phase: i })
            .collect();
        let label = format!("ramp {}..{}/s, {} steps of {:?}", fmt_rate(from), fmt_rate(to), rates.len(), hold);
        Schedule::new(label, phases, segs)
    }

    /// A commuter profile in real time; see [`Schedule::compressed`] and
    /// [`Schedule::scaled`] to make it shorter or heavier.
    pub fn profile(profile: Profile) -> Schedule {
        use morning_peak::*;
        match profile {
            Profile::MorningPeak => {
                let names = ["ramp-up", "peak", "plateau", "burst", "ramp-down"];
                let phases = names.iter().map(|n| Phase { name: (*n).into() }).collect();
                let mut segs = vec![Segment { len: RAMP_UP_SECS, from: EARLY_RATE, to: PEAK_RATE, phase: 0 }];
                for cycle in 0..CYCLES {
                    let (rate, phase) =
                        if PLATEAU_CYCLES.contains(&cycle) { (PLATEAU_RATE, 2) } else { (PEAK_RATE, 1) };
                    segs.push(Segment { len: CYCLE_SECS - BURST_SECS, from: rate, to: rate, phase });
                    segs.push(Segment { len: BURST_SECS, from: BURST_RATE, to: BURST_RATE, phase: 3 });
                }
                segs.push(Segment { len: RAMP_DOWN_SECS, from: PEAK_RATE, to: LATE_RATE, phase: 4 });
                Schedule::new("morning-peak".into(), phases, segs).expect("the built-in profile is valid")
            }
        }
    }

    /// Makes the schedule `factor` times shorter at the same rates: one hour
    /// of a profile lasts a minute at 60, bursts included (a 10 s burst
    /// lasts 1/6 s). Rates stay what the target must sustain; the request
    /// count shrinks by `factor`.
    pub fn compressed(mut self, factor: f64) -> Result<Schedule, ScheduleError> {
        if !(factor > 0.0 && factor.is_finite()) {
            return Err(ScheduleError::Invalid("--compress must be a positive number"));
        }
        self.segments.iter_mut().for_each(|s| s.len /= factor);
        if factor != 1.0 {
            self.label = format!("{}, compressed x{factor}", self.label);
        }
        Schedule::new(self.label, self.phases, self.segments)
    }

    /// Multiplies every rate by `factor` (a network `factor` times larger).
    pub fn scaled(mut self, factor: f64) -> Result<Schedule, ScheduleError> {
        if !(factor > 0.0 && factor.is_finite()) {
            return Err(ScheduleError::Invalid("--scale must be a positive number"));
        }
        self.segments.iter_mut().for_each(|s| {
            s.from *= factor;
            s.to *= factor;
        });
        if factor != 1.0 {
            self.label = format!("{}, scaled x{factor}", self.label);
        }
        Schedule::new(self.label, self.phases, self.segments)
    }

    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.segments.iter().map(|s| s.len).sum())
    }

    /// How many requests the schedule sends (what `instants` yields).
    pub fn total(&self) -> u64 {
        // The same float sums as the iterator, so the two agree.
        (self.segments.iter().map(Segment::count).sum::<f64>() + 1e-9).floor() as u64
    }

    /// Seconds each phase lasts in total (phases may be scattered, like bursts).
    pub fn phase_secs(&self) -> Vec<f64> {
        let mut secs = vec![0.0; self.phases.len()];
        self.segments.iter().for_each(|s| secs[s.phase] += s.len);
        secs
    }

    /// The phase running at `t`, or `None` after the end.
    pub fn phase_at(&self, t: Duration) -> Option<usize> {
        // Called once per answer: a binary search, not a walk, so that a
        // ramp with many steps costs the same.
        let i = self.ends.partition_point(|&end| end <= t.as_secs_f64());
        self.segments.get(i).map(|s| s.phase)
    }

    /// The intended send instants, in order, measured from the start.
    pub fn instants(&self) -> Instants<'_> {
        Instants { segments: &self.segments, i: 0, start: 0.0, before: 0.0, next: 1 }
    }
}

pub struct Instants<'a> {
    segments: &'a [Segment],
    /// Current segment, its start (s) and the requests due before it.
    i: usize,
    start: f64,
    before: f64,
    /// One-based number of the next request.
    next: u64,
}

impl Iterator for Instants<'_> {
    type Item = Slot;

    fn next(&mut self) -> Option<Slot> {
        loop {
            let seg = self.segments.get(self.i)?;
            let want = self.next as f64 - self.before;
            // The tolerance keeps a request that lands exactly on a segment
            // end (10/s for 1 s is ten requests, not nine) despite rounding.
            if want <= seg.count() + 1e-9 {
                self.next += 1;
                let at = self.start + seg.time_for(want);
                return Some(Slot { at: Duration::from_secs_f64(at), phase: seg.phase });
            }
            self.before += seg.count();
            self.start += seg.len;
            self.i += 1;
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} requests over {:.1} s)", self.label, self.total(), self.duration().as_secs_f64())
    }
}

/// `1500`, `1.5` or `2000`: rates without trailing zeros.
pub fn fmt_rate(r: f64) -> String {
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use morning_peak::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn constant_is_exact_and_even() {
        let s = Schedule::constant(100.0, secs(10.0)).unwrap();
        let at: Vec<f64> = s.instants().map(|x| x.at.as_secs_f64()).collect();
        assert_eq!(at.len(), 1000);
        assert_eq!(s.total(), 1000);
        assert!((at[0] - 0.01).abs() < 1e-9);
        assert!((at[999] - 10.0).abs() < 1e-9);
        assert!(at.windows(2).all(|w| (w[1] - w[0] - 0.01).abs() < 1e-9));
    }

    #[test]
    fn ramp_steps_and_phases() {
        let s = Schedule::ramp(1000.0, 3000.0, Step::Add(1000.0), secs(1.0)).unwrap();
        assert_eq!(s.phases().len(), 3);
        let mut per_phase = [0; 3];
        s.instants().for_each(|x| per_phase[x.phase] += 1);
        assert_eq!(per_phase, [1000, 2000, 3000]);
        let g = Schedule::ramp(1000.0, 8000.0, "x2".parse().unwrap(), secs(0.5)).unwrap();
        let names: Vec<_> = g.phases().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["1000/s", "2000/s", "4000/s", "8000/s"]);
        let rounded = Schedule::ramp(1000.0, 64000.0, Step::Times(1.4595), secs(1.0)).unwrap();
        assert_eq!(rounded.phases().len(), 12);
        assert_eq!(g.phase_at(secs(0.0)), Some(0));
        assert_eq!(g.phase_at(secs(0.5)), Some(1));
        assert_eq!(g.phase_at(secs(1.2)), Some(2));
        assert_eq!(g.phase_at(secs(1.99)), Some(3));
        assert_eq!(g.phase_at(secs(2.0)), None);
    }

    #[test]
    fn linear_ramp_follows_the_integral() {
        // 0 -> 100/s over 10 s: 500 requests, a quarter of them in the first half.
        let s = Schedule::new(
            "t".into(),
            vec![Phase { name: "r".into() }],
            vec![Segment { len: 10.0, from: 0.0, to: 100.0, phase: 0 }],
        )
        .unwrap();
        let at: Vec<f64> = s.instants().map(|x| x.at.as_secs_f64()).collect();
        assert_eq!(at.len(), 500);
        assert_eq!(at.iter().filter(|&&t| t <= 5.0).count(), 125);
        assert!(at.windows(2).all(|w| w[1] > w[0]));
        // A falling rate works too.
        let d = Schedule::new(
            "t".into(),
            vec![Phase { name: "r".into() }],
            vec![Segment { len: 10.0, from: 100.0, to: 0.0, phase: 0 }],
        )
        .unwrap();
        assert_eq!(d.instants().filter(|x| x.at.as_secs_f64() <= 5.0).count(), 375);
    }

    fn real_total() -> f64 {
        let ramp_up = (EARLY_RATE + PEAK_RATE) / 2.0 * RAMP_UP_SECS;
        let burst = BURST_RATE * BURST_SECS;
        let hold = CYCLE_SECS - BURST_SECS;
        let plateau = PLATEAU_CYCLES.len() as f64;
        let peak = (CYCLES as f64 - plateau) * (PEAK_RATE * hold + burst) + plateau * (PLATEAU_RATE * hold + burst);
        let ramp_down = (PEAK_RATE + LATE_RATE) / 2.0 * RAMP_DOWN_SECS;
        ramp_up + peak + ramp_down
    }

    #[test]
    fn morning_peak_counts_when_compressed_and_scaled() {
        let full = Schedule::profile(Profile::MorningPeak);
        assert_eq!(full.duration(), secs(9000.0));
        assert_eq!(full.total() as f64, real_total().floor());
        // One hour lasts one minute; the rates stay, the count shrinks.
        let c = Schedule::profile(Profile::MorningPeak).compressed(60.0).unwrap();
        assert_eq!(c.duration(), secs(150.0));
        assert!((c.total() as f64 - real_total() / 60.0).abs() <= 1.0);
        assert_eq!(c.instants().count() as u64, c.total());
        let cs = c.scaled(10.0).unwrap();
        assert!((cs.total() as f64 - real_total() / 6.0).abs() <= 1.0);
        assert_eq!(cs.instants().count() as u64, cs.total());
        // The peak hour averages about 717/s: 600 held, 900 on the plateau,
        // 2000 in bursts.
        let peak_secs = CYCLES as f64 * CYCLE_SECS;
        let peak = full.instants().filter(|x| (1..=3).contains(&x.phase)).count() as f64;
        assert!((peak / peak_secs - 716.7).abs() < 0.1, "{}", peak / peak_secs);
    }

    #[test]
    fn burst_shape() {
        let c = Schedule::profile(Profile::MorningPeak).compressed(60.0).unwrap().scaled(10.0).unwrap();
        let peak_start = RAMP_UP_SECS / 60.0;
        let cycle = CYCLE_SECS / 60.0;
        let burst = BURST_SECS / 60.0;
        let at: Vec<Slot> = c.instants().collect();
        let count = |a: f64, b: f64| at.iter().filter(|x| (a..b).contains(&x.at.as_secs_f64())).count() as f64;
        for k in 0..CYCLES {
            let burst_start = peak_start + (k as f64 + 1.0) * cycle - burst;
            // 2000/s x10 for 1/6 s: 3333 requests, all in phase "burst".
            let n = count(burst_start, burst_start + burst);
            assert!((n - BURST_RATE * 10.0 * burst).abs() <= 1.0, "cycle {k}: {n}");
            // The seconds before the burst run at the held rate.
            let held = if PLATEAU_CYCLES.contains(&k) { PLATEAU_RATE } else { PEAK_RATE } * 10.0;
            let m = count(burst_start - 1.0, burst_start);
            assert!((m - held).abs() <= 1.0, "cycle {k}: {m}");
        }
        let bursts = at.iter().filter(|x| x.phase == 3).count() as f64;
        assert!((bursts - CYCLES as f64 * BURST_RATE * 10.0 * burst).abs() <= CYCLES as f64);
        assert!((c.phase_secs()[3] - CYCLES as f64 * burst).abs() < 1e-9);
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_duration("10s").unwrap(), secs(10.0));
        assert_eq!(parse_duration("250ms").unwrap(), secs(0.25));
        assert_eq!(parse_duration("2m").unwrap(), secs(120.0));
        assert_eq!(parse_duration("1.5").unwrap(), secs(1.5));
        assert!(parse_duration("ten").is_err());
        assert_eq!(parse_ramp("1000..20000").unwrap(), (1000.0, 20000.0));
        assert!(parse_ramp("2000..1000").is_err());
        assert_eq!("x1.5".parse::<Step>().unwrap(), Step::Times(1.5));
        assert_eq!("500".parse::<Step>().unwrap(), Step::Add(500.0));
        assert!("x0.5".parse::<Step>().is_err());
        assert!(Schedule::constant(0.0, secs(1.0)).is_err());
    }
}
