//! The case mix and the model of holder state that keeps expectations right.
//!
//! A [`Generator`] turns each schedule slot into one request: it draws a
//! [`Case`] from the [`CaseMix`], picks a holder, signs a fresh token (a
//! dynamic code: issued at the intended send time, valid for 60 s) and says
//! what the answer must be. The rules are stateful, so the generator keeps
//! the state they imply:
//!
//! - green holders sit in a pool and cycle through visits: an `in` takes a
//!   holder from `outside` to `inside`, an `out` (at the same checkpoint, so
//!   it clears anti-passback whatever the station grouping) brings it back.
//!   A normal `in` therefore never meets anti-passback.
//! - fever cases use a reserve of green holders that visits never touch: a
//!   fever turns them yellow for the quarantine (days). Fever is decided
//!   before colour, so a reserve holder that an earlier run already turned
//!   yellow still expects `fever`; this run's fevered holders are rescanned
//!   later and must then be `not_green`.
//! - the anti-passback case is an `in` (pass) followed by a second `in` of
//!   the same holder at the same checkpoint (deny `anti_passback`); the
//!   holder is then inside and leaves with a later `out`.
//! - at the end, [`Generator::cleanup`] sends an `out` for every holder still
//!   inside, so that the next run within the 300 s window starts clean.
//!
//! These expectations hold only if the gateway sees each holder's requests
//! in the order generated: the driver sends all requests for one holder
//! over one connection ([`Scan::lane_key`]).

use crate::expect::{Expect, Reason, Shown};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use healthgate_core::population::{mix64, Population};
use healthgate_core::token::{Claims, KeyId, DEFAULT_TTL_SECS};
use healthgate_core::{Color, HolderId};
use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CaseError {
    #[error("bad case mix {0:?}: {1}")]
    Mix(String, &'static str),
    #[error("case {0} has weight but the population has no {1} holders")]
    Empty(&'static str, &'static str),
    #[error("no checkpoints to scan at")]
    NoCheckpoints,
}

/// What the mix draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Green,
    Yellow,
    Red,
    Pending,
    UnknownHolder,
    Expired,
    NotYetValid,
    Forged,
    UnknownIssuer,
    Malformed,
    Fever,
    AntiPassback,
}

impl Case {
    pub const ALL: [Case; 12] = [
        Case::Green,
        Case::Yellow,
        Case::Red,
        Case::Pending,
        Case::UnknownHolder,
        Case::Expired,
        Case::NotYetValid,
        Case::Forged,
        Case::UnknownIssuer,
        Case::Malformed,
        Case::Fever,
        Case::AntiPassback,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Case::Green => "green",
            Case::Yellow => "yellow",
            Case::Red => "red",
            Case::Pending => "pending",
            Case::UnknownHolder => "unknown_holder",
            Case::Expired => "expired",
            Case::NotYetValid => "not_yet_valid",
            Case::Forged => "forged",
            Case::UnknownIssuer => "unknown_issuer",
            Case::Malformed => "malformed",
            Case::Fever => "fever",
            Case::AntiPassback => "anti_passback",
        }
    }
}

/// What a single request is, for the report: finer than [`Case`] (a green
/// case is an `in` or an `out`; a yellow case may rescan a fevered holder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    GreenIn,
    GreenOut,
    Yellow,
    AfterFever,
    Red,
    Pending,
    UnknownHolder,
    Expired,
    NotYetValid,
    Forged,
    UnknownIssuer,
    Malformed,
    Fever,
    AntiPassback,
    Lookup,
}

impl Kind {
    pub const COUNT: usize = 15;
    pub const ALL: [Kind; Kind::COUNT] = [
        Kind::GreenIn,
        Kind::GreenOut,
        Kind::Yellow,
        Kind::AfterFever,
        Kind::Red,
        Kind::Pending,
        Kind::UnknownHolder,
        Kind::Expired,
        Kind::NotYetValid,
        Kind::Forged,
        Kind::UnknownIssuer,
        Kind::Malformed,
        Kind::Fever,
        Kind::AntiPassback,
        Kind::Lookup,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Requests that change the holder's state at the gateway: if one is
    /// lost, the model no longer knows what that holder's next answer is.
    pub fn changes_state(self) -> bool {
        matches!(self, Kind::GreenIn | Kind::GreenOut | Kind::Fever | Kind::AntiPassback)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Kind::GreenIn => "green_in",
            Kind::GreenOut => "green_out",
            Kind::Yellow => "yellow",
            Kind::AfterFever => "after_fever",
            Kind::Red => "red",
            Kind::Pending => "pending",
            Kind::UnknownHolder => "unknown_holder",
            Kind::Expired => "expired",
            Kind::NotYetValid => "not_yet_valid",
            Kind::Forged => "forged",
            Kind::UnknownIssuer => "unknown_issuer",
            Kind::Malformed => "malformed",
            Kind::Fever => "fever",
            Kind::AntiPassback => "anti_passback",
            Kind::Lookup => "lookup",
        }
    }
}

/// Relative weights of the cases, in [`Case::ALL`] order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaseMix([f64; 12]);

impl Default for CaseMix {
    /// Mostly green commuters, with every failure present so that each
    /// reason is exercised in every run.
    fn default() -> Self {
        CaseMix([0.88, 0.03, 0.01, 0.01, 0.01, 0.01, 0.005, 0.01, 0.01, 0.01, 0.01, 0.005])
    }
}

impl FromStr for CaseMix {
    type Err = CaseError;
    /// `green=0.9,yellow=0.02,...`: weights, normalised; unnamed cases are 0.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| CaseError::Mix(s.to_owned(), why);
        let mut w = [0.0; 12];
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, value) = part.split_once('=').ok_or(err("expected case=weight"))?;
            let i = Case::ALL.iter().position(|c| c.name() == name.trim()).ok_or(err("unknown case"))?;
            let v: f64 = value.trim().parse().map_err(|_| err("weight is not a number"))?;
            if !(v >= 0.0 && v.is_finite()) {
                return Err(err("weights are non-negative"));
            }
            w[i] = v;
        }
        let sum: f64 = w.iter().sum();
        if sum <= 0.0 {
            return Err(err("at least one weight must be positive"));
        }
        Ok(CaseMix(w.map(|x| x / sum)))
    }
}

impl fmt::Display for CaseMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Case::ALL
            .iter()
            .zip(self.0)
            .filter(|(_, w)| *w > 0.0)
            .map(|(c, w)| format!("{}={}", c.name(), (w * 1e4).round() / 1e4))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl CaseMix {
    pub fn weight(&self, case: Case) -> f64 {
        self.0[case as usize]
    }

    /// The case for a uniform draw `u` in [0, 1).
    pub fn draw(&self, u: f64) -> Case {
        let mut acc = 0.0;
        for (case, w) in Case::ALL.iter().zip(self.0) {
            acc += w;
            if u < acc {
                return *case;
            }
        }
        // Rounding left `u` just above the sum: the last case with weight.
        *Case::ALL.iter().rev().find(|c| self.weight(**c) > 0.0).expect("a positive weight")
    }
}

/// SplitMix64: tiny, seedable and fast; the runs are test traffic, not secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix64(seed))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, n), n > 0.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// What to send.
#[derive(Debug, Clone)]
pub enum Request {
    /// `POST /v1/scan` with this JSON body.
    Scan(Bytes),
    /// `GET /v1/holders/{hex}`.
    Lookup(HolderId),
}

/// One request with its expectation.
#[derive(Debug, Clone)]
pub struct Scan {
    pub kind: Kind,
    /// Requests with equal keys go over one connection, in order.
    pub lane_key: u64,
    pub request: Request,
    pub expect: Expect,
}

/// Which API the run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Scan,
    Lookup,
}

/// Everything the generator knows about the target.
pub struct World {
    pub population: Population,
    /// The trusted issuer whose key signs the codes.
    pub issuer: (KeyId, SigningKey),
    /// A key whose kid the target does not trust.
    pub untrusted: (KeyId, SigningKey),
    /// Checkpoint ids, each its own station group (see the module doc).
    pub checkpoints: Vec<String>,
}

/// Holders kept per colour: enough for any run, bounded for a real
/// deployment with tens of millions of holders.
const GREEN_CAP: usize = 1 << 20;
const OTHER_CAP: usize = 1 << 16;
/// One green holder in this many goes to the fever reserve.
const RESERVE_SHARE: u64 = 32;
const RESERVE_SALT: u64 = 0x5eed_fe5e_0000_0001;
/// Visits in progress; beyond this every green scan is an `out`.
const INSIDE_MAX: usize = 4096;
/// This run's fevered holders remembered for rescans.
const FEVERED_MAX: usize = 4096;
/// A fever reading and a normal one, in tenths of a degree.
const FEVER_TENTHS: [u32; 4] = [373, 378, 385, 392];
const NORMAL_TENTHS: [u32; 6] = [361, 363, 365, 366, 368, 371];
/// How often a green `in` carries a (normal) temperature reading.
const GREEN_READING_SHARE: f64 = 0.25;
/// Tokens for the time-failure cases are this far outside the window, far
/// beyond any clock-skew budget.
const TIME_OFFSET_SECS: u64 = 3600;

pub struct Generator {
    api: Api,
    population: Population,
    issuer: (KeyId, SigningKey),
    untrusted: (KeyId, SigningKey),
    /// Signs under the issuer's kid with the wrong key: `bad_signature`.
    forger: SigningKey,
    /// Checkpoint ids already escaped as JSON strings.
    checkpoints: Vec<String>,
    mix: CaseMix,
    rng: Rng,
    serial: u64,
    outside: VecDeque<u64>,
    /// (holder index, checkpoint index) of visits in progress.
    inside: VecDeque<(u64, usize)>,
    reserve: Vec<u64>,
    fevered: VecDeque<u64>,
    yellow: Vec<u64>,
    red: Vec<u64>,
    pending: Vec<u64>,
    /// The second `in` of an anti-passback pair, sent next.
    repeat: Option<(u64, usize)>,
}

impl Generator {
    pub fn new(world: World, api: Api, mix: CaseMix, seed: u64) -> Result<Generator, CaseError> {
        if world.checkpoints.is_empty() && api == Api::Scan {
            return Err(CaseError::NoCheckpoints);
        }
        let pop = world.population;
        let (mut green, mut reserve, mut yellow, mut red, mut pending) = (vec![], vec![], vec![], vec![], vec![]);
        for i in 0..pop.size {
            let (list, cap) = match pop.color(i) {
                Color::Green if mix64(i ^ RESERVE_SALT).is_multiple_of(RESERVE_SHARE) => (&mut reserve, OTHER_CAP),
                Color::Green => (&mut green, GREEN_CAP),
                Color::Yellow => (&mut yellow, OTHER_CAP),
                Color::Red => (&mut red, OTHER_CAP),
                Color::Pending => (&mut pending, OTHER_CAP),
            };
            if list.len() < cap {
                list.push(i);
            }
            if green.len() >= GREEN_CAP && [&reserve, &yellow, &red, &pending].iter().all(|l| l.len() >= OTHER_CAP) {
                break;
            }
        }
        if api == Api::Scan {
            let needs: [(Case, &Vec<u64>, &'static str); 6] = [
                (Case::Green, &green, "green"),
                (Case::AntiPassback, &green, "green"),
                (Case::Fever, &reserve, "green (fever reserve)"),
                (Case::Yellow, &yellow, "yellow"),
                (Case::Red, &red, "red"),
                (Case::Pending, &pending, "pending"),
            ];
            for (case, list, what) in needs {
                if mix.weight(case) > 0.0 && list.is_empty() {
                    return Err(CaseError::Empty(case.name(), what));
                }
            }
        }
        let mut rng = Rng::new(seed);
        // Runs with different seeds start at different holders, spreading
        // the gateway state they leave behind.
        let mut outside = VecDeque::from(green);
        let turn = if outside.is_empty() { 0 } else { rng.below(outside.len()) };
        outside.rotate_left(turn);
        let forger = SigningKey::from_bytes(&mix64(seed ^ 0xf0f0).to_le_bytes().repeat(4).try_into().expect("32"));
        let checkpoints =
            world.checkpoints.iter().map(|c| serde_json::to_string(c).expect("a string serialises")).collect();
        Ok(Generator {
            api,
            population: pop,
            issuer: world.issuer,
            untrusted: world.untrusted,
            forger,
            checkpoints,
            mix,
            rng,
            serial: 0,
            outside,
            inside: VecDeque::new(),
            reserve,
            fevered: VecDeque::new(),
            yellow,
            red,
            pending,
            repeat: None,
        })
    }

    /// The request for the next slot; `now` is its intended send time in
    /// Unix seconds, the issue time of its token.
    pub fn next(&mut self, now: u64) -> Scan {
        if self.api == Api::Lookup {
            let i = self.rng.below(self.population.size.max(1) as usize) as u64;
            return Scan {
                kind: Kind::Lookup,
                lane_key: mix64(i),
                request: Request::Lookup(self.population.holder(i)),
                expect: Expect::Status200,
            };
        }
        if let Some((i, cp)) = self.repeat.take() {
            let h = self.population.holder(i);
            let expect = Expect::deny(Reason::AntiPassback, Shown::Is(Color::Green), Some(h));
            return self.member_scan(Kind::AntiPassback, i, cp, "in", None, now, expect);
        }
        let case = self.mix.draw(self.rng.f64());
        let cp = self.rng.below(self.checkpoints.len());
        match case {
            Case::Green => self.green(cp, now),
            Case::AntiPassback => match self.outside.pop_front() {
                Some(i) => {
                    self.inside.push_back((i, cp));
                    self.repeat = Some((i, cp));
                    let expect = Expect::pass(self.population.holder(i));
                    self.member_scan(Kind::GreenIn, i, cp, "in", None, now, expect)
                }
                None => self.green(cp, now),
            },
            Case::Fever => {
                let i = self.reserve[self.rng.below(self.reserve.len())];
                if self.fevered.len() == FEVERED_MAX {
                    self.fevered.pop_front();
                }
                self.fevered.push_back(i);
                let t = FEVER_TENTHS[self.rng.below(FEVER_TENTHS.len())];
                let expect = Expect::deny(Reason::Fever, Shown::GreenOrYellow, Some(self.population.holder(i)));
                self.member_scan(Kind::Fever, i, cp, "in", Some(t), now, expect)
            }
            Case::Yellow => {
                // Half the yellow scans, when there are any, check that a
                // fever earlier in this run really turned its holder yellow.
                let (kind, i) = if !self.fevered.is_empty() && self.rng.below(2) == 0 {
                    (Kind::AfterFever, self.fevered[self.rng.below(self.fevered.len())])
                } else {
                    (Kind::Yellow, self.yellow[self.rng.below(self.yellow.len())])
                };
                let expect = Expect::deny(Reason::NotGreen, Shown::Is(Color::Yellow), Some(self.population.holder(i)));
                self.member_scan(kind, i, cp, "in", None, now, expect)
            }
            Case::Red => {
                let i = self.red[self.rng.below(self.red.len())];
                let expect = Expect::deny(Reason::NotGreen, Shown::Is(Color::Red), Some(self.population.holder(i)));
                self.member_scan(Kind::Red, i, cp, "in", None, now, expect)
            }
            Case::Pending => {
                let i = self.pending[self.rng.below(self.pending.len())];
                let expect = Expect::deny(Reason::Pending, Shown::Is(Color::Pending), Some(self.population.holder(i)));
                self.member_scan(Kind::Pending, i, cp, "in", None, now, expect)
            }
            Case::UnknownHolder => {
                let n = self.rng.next_u64();
                let h = self.population.stranger(n);
                let code = self.sign(h, Color::Green, now, now + DEFAULT_TTL_SECS, Signer::Issuer);
                let expect = Expect::deny(Reason::UnknownHolder, Shown::Unknown, Some(h));
                self.scan(Kind::UnknownHolder, mix64(n), &code, cp, "in", None, expect)
            }
            Case::Expired | Case::NotYetValid | Case::Forged | Case::UnknownIssuer => {
                // Token checks come before the holder's state, so any
                // member will do and no state changes.
                let i = self.rng.below(self.population.size.max(1) as usize) as u64;
                let h = self.population.holder(i);
                let color = self.population.color(i);
                let (kind, reason, issued, signer) = match case {
                    Case::Expired => (Kind::Expired, Reason::Expired, now - TIME_OFFSET_SECS, Signer::Issuer),
                    Case::NotYetValid => {
                        (Kind::NotYetValid, Reason::NotYetValid, now + TIME_OFFSET_SECS, Signer::Issuer)
                    }
                    Case::Forged => (Kind::Forged, Reason::BadSignature, now, Signer::Forger),
                    _ => (Kind::UnknownIssuer, Reason::UnknownIssuer, now, Signer::Untrusted),
                };
                let code = self.sign(h, color, issued, issued + DEFAULT_TTL_SECS, signer);
                let expect = Expect::deny(reason, Shown::Unknown, None);
                self.scan(kind, mix64(i), &code, cp, "in", None, expect)
            }
            Case::Malformed => {
                let n = self.rng.next_u64();
                let i = n % self.population.size.max(1);
                let good =
                    self.sign(self.population.holder(i), Color::Green, now, now + DEFAULT_TTL_SECS, Signer::Issuer);
                // Each variant fails a different decoding step; all stay
                // short and free of JSON specials.
                let code = match n % 3 {
                    0 => good[..good.len() - 3].to_owned(),
                    1 => good.replacen("HG1:", "HG9:", 1),
                    _ => format!("{}a{}", &good[..40], &good[41..]),
                };
                let expect = Expect::deny(Reason::Malformed, Shown::Unknown, None);
                self.scan(Kind::Malformed, n, &code, cp, "in", None, expect)
            }
        }
    }

    /// A green commuter: enters, or leaves where it entered.
    fn green(&mut self, cp: usize, now: u64) -> Scan {
        let leave = match (self.outside.is_empty(), self.inside.len()) {
            (_, 0) => false,
            (true, _) => true,
            (false, n) => n >= INSIDE_MAX || self.rng.below(2) == 0,
        };
        if leave {
            let (i, cp) = self.inside.pop_front().expect("someone is inside");
            self.outside.push_back(i);
            let expect = Expect::pass(self.population.holder(i));
            return self.member_scan(Kind::GreenOut, i, cp, "out", None, now, expect);
        }
        let i = self.outside.pop_front().expect("the green pool is not empty");
        self.inside.push_back((i, cp));
        let reading =
            (self.rng.f64() < GREEN_READING_SHARE).then(|| NORMAL_TENTHS[self.rng.below(NORMAL_TENTHS.len())]);
        let expect = Expect::pass(self.population.holder(i));
        self.member_scan(Kind::GreenIn, i, cp, "in", reading, now, expect)
    }

    /// An `out` for every visit still in progress, so that the target is
    /// left with nobody inside.
    pub fn cleanup(&mut self, now: u64) -> Vec<Scan> {
        let mut scans = vec![];
        while let Some((i, cp)) = self.inside.pop_front() {
            self.outside.push_back(i);
            let expect = Expect::pass(self.population.holder(i));
            scans.push(self.member_scan(Kind::GreenOut, i, cp, "out", None, now, expect));
        }
        scans
    }

    /// Visits in progress (for tests and the report).
    pub fn inside(&self) -> usize {
        self.inside.len()
    }

    #[allow(clippy::too_many_arguments)]
    fn member_scan(
        &mut self,
        kind: Kind,
        i: u64,
        cp: usize,
        direction: &str,
        tenths: Option<u32>,
        now: u64,
        expect: Expect,
    ) -> Scan {
        let code =
            self.sign(self.population.holder(i), self.population.color(i), now, now + DEFAULT_TTL_SECS, Signer::Issuer);
        self.scan(kind, mix64(i), &code, cp, direction, tenths, expect)
    }

    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        kind: Kind,
        lane_key: u64,
        code: &str,
        cp: usize,
        direction: &str,
        tenths: Option<u32>,
        expect: Expect,
    ) -> Scan {
        // Codes are base45 (no quotes or backslashes) and checkpoints are
        // pre-escaped, so plain formatting makes valid JSON.
        let cp = &self.checkpoints[cp];
        let body = match tenths {
            Some(t) => format!(
                r#"{{"code":"{code}","checkpoint":{cp},"direction":"{direction}","temperature_c":{}.{}}}"#,
                t / 10,
                t % 10
            ),
            None => format!(r#"{{"code":"{code}","checkpoint":{cp},"direction":"{direction}"}}"#),
        };
        Scan { kind, lane_key, request: Request::Scan(Bytes::from(body)), expect }
    }

    fn sign(&mut self, holder: HolderId, color: Color, issued_at: u64, expires_at: u64, signer: Signer) -> String {
        self.serial += 1;
        let (kid, key) = match signer {
            Signer::Issuer => (self.issuer.0, &self.issuer.1),
            Signer::Forger => (self.issuer.0, &self.forger),
            Signer::Untrusted => (self.untrusted.0, &self.untrusted.1),
        };
        let claims = Claims { kid, holder, issued_at, expires_at, color, serial: self.serial };
        claims.sign(key).expect("times fit until 2106")
    }
}

#[derive(Clone, Copy)]
enum Signer {
    Issuer,
    Forger,
    Untrusted,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::Expect;
    use healthgate_core::population::Mix;
    use healthgate_core::token::RawToken;
    use healthgate_core::trust::TrustList;
    use std::collections::hash_map::Entry;
    use std::collections::HashMap;

    const NOW: u64 = 1_700_000_000;

    fn world() -> World {
        World {
            population: Population { seed: 1, size: 20_000, mix: Mix::default() },
            issuer: ("HB01".parse().unwrap(), SigningKey::from_bytes(&[1; 32])),
            untrusted: ("XX01".parse().unwrap(), SigningKey::from_bytes(&[2; 32])),
            checkpoints: vec!["metro-a".into(), "metro-b".into()],
        }
    }

    fn body(s: &Scan) -> serde_json::Value {
        match &s.request {
            Request::Scan(b) => serde_json::from_slice(b).unwrap(),
            Request::Lookup(_) => panic!("not a scan"),
        }
    }

    fn holder_of(s: &Scan) -> Option<HolderId> {
        let code = body(s)["code"].as_str().unwrap().to_owned();
        RawToken::decode(&code).ok().map(|t| t.claims.holder)
    }

    #[test]
    fn mix_parses_normalises_and_draws() {
        let m: CaseMix = "green=3,fever=1".parse().unwrap();
        assert_eq!(m.weight(Case::Green), 0.75);
        assert_eq!(m.draw(0.7), Case::Green);
        assert_eq!(m.draw(0.8), Case::Fever);
        assert_eq!(m.draw(0.999_999_999_9), Case::Fever);
        assert!("purple=1".parse::<CaseMix>().is_err());
        assert!("green=0".parse::<CaseMix>().is_err());
        let d = CaseMix::default();
        assert!((Case::ALL.iter().map(|c| d.weight(*c)).sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(d.to_string().parse::<CaseMix>().unwrap(), d);
    }

    #[test]
    fn expectations_follow_the_rules() {
        let w = world();
        let trust = TrustList::single("t", w.issuer.0, (&w.issuer.1).into(), 0, u64::from(u32::MAX));
        let pop = w.population;
        // Every case equally often, so that a few hundred scans cover them
        // all: verification in a debug build takes milliseconds.
        let all = Case::ALL.iter().map(|c| format!("{}=1", c.name())).collect::<Vec<_>>().join(",");
        let mut g = Generator::new(w, Api::Scan, all.parse().unwrap(), 7).unwrap();
        let mut seen: HashMap<Kind, usize> = HashMap::new();
        for n in 0..600 {
            let now = NOW + n / 100;
            let s = g.next(now);
            *seen.entry(s.kind).or_default() += 1;
            let b = body(&s);
            let code = b["code"].as_str().unwrap();
            let raw = RawToken::decode(code);
            let Expect::Decision { pass, reason, holder, .. } = s.expect else { panic!("scan without decision") };
            // The token outcome the expectation claims is what verifying it gives.
            let trusted = healthgate_core::verify::Trust { list: &trust, skew_s: 30 };
            let verdict = raw
                .map_err(healthgate_core::token::VerifyError::from)
                .and_then(|r| healthgate_core::verify::verify(&r, trusted, None, None, now).map(|_| r.claims))
                .map_err(|e| e.reason());
            match verdict {
                Err(r) => assert_eq!(r, reason, "{:?}", s.kind),
                Ok(claims) => {
                    assert_eq!(holder, Some(claims.holder));
                    assert_eq!(claims.issued_at, now);
                    assert_eq!(claims.expires_at, now + 60);
                    match s.kind {
                        Kind::UnknownHolder => assert!((0..pop.size).all(|i| pop.holder(i) != claims.holder)),
                        Kind::GreenIn | Kind::GreenOut => assert!(pass && reason == Reason::Ok),
                        Kind::Fever => assert!(b["temperature_c"].as_f64().unwrap() >= 37.3),
                        _ => {}
                    }
                }
            }
            if let Some(t) = b["temperature_c"].as_f64() {
                assert_eq!(t >= 37.3, s.kind == Kind::Fever);
            }
        }
        for k in Kind::ALL.iter().filter(|k| **k != Kind::Lookup) {
            assert!(seen.get(k).copied().unwrap_or(0) > 0, "{k:?} never generated: {seen:?}");
        }
    }

    /// Replays the generated stream through the metro rules and checks that
    /// every expectation is what the rules give, including the state they
    /// carry: visits, anti-passback, fever turning holders yellow.
    #[test]
    fn holder_state_model_is_consistent() {
        let w = world();
        let pop = w.population;
        let mut g =
            Generator::new(w, Api::Scan, "green=0.6,fever=0.1,yellow=0.1,anti_passback=0.2".parse().unwrap(), 3)
                .unwrap();
        let mut color: HashMap<HolderId, Color> = (0..pop.size).map(|i| (pop.holder(i), pop.color(i))).collect();
        // Where each holder inside entered. Anti-passback across all
        // checkpoints: stricter than the gateway's station groups, so the
        // model must never need the difference.
        let mut inside: HashMap<HolderId, String> = HashMap::new();
        let mut fevered = 0;
        let mut check = |s: &Scan| {
            let b = body(s);
            let h = holder_of(s).unwrap();
            let cp = b["checkpoint"].as_str().unwrap().to_owned();
            let c = color[&h];
            let fever = b["temperature_c"].as_f64().is_some_and(|t| t >= 37.3);
            let got = if fever {
                if c == Color::Green {
                    color.insert(h, Color::Yellow);
                }
                fevered += 1;
                (false, Reason::Fever)
            } else if c != Color::Green {
                (false, Reason::NotGreen)
            } else if b["direction"] == "out" {
                // An out leaves where its in entered, so it clears
                // anti-passback whatever the station grouping.
                assert_eq!(inside.remove(&h), Some(cp), "{:?}", s.kind);
                (true, Reason::Ok)
            } else {
                match inside.entry(h) {
                    Entry::Occupied(_) => (false, Reason::AntiPassback),
                    Entry::Vacant(v) => {
                        v.insert(cp);
                        (true, Reason::Ok)
                    }
                }
            };
            let Expect::Decision { pass, reason, .. } = s.expect else { panic!() };
            assert_eq!((pass, reason), got, "{:?}", s.kind);
        };
        for n in 0..5_000 {
            check(&g.next(NOW + n / 1000));
        }
        assert!(g.inside() > 0);
        for s in g.cleanup(NOW + 40) {
            assert_eq!(s.kind, Kind::GreenOut);
            check(&s);
        }
        assert_eq!(g.inside(), 0);
        assert!(inside.is_empty(), "cleanup left {} inside", inside.len());
        assert!(fevered > 200);
    }

    #[test]
    fn one_holder_one_lane_and_lookups() {
        let mut g = Generator::new(world(), Api::Scan, "green=1".parse().unwrap(), 1).unwrap();
        let mut lanes: HashMap<HolderId, u64> = HashMap::new();
        for n in 0..3_000 {
            let s = g.next(NOW + n / 1000);
            let h = holder_of(&s).unwrap();
            assert_eq!(*lanes.entry(h).or_insert(s.lane_key), s.lane_key);
        }
        let mut l = Generator::new(world(), Api::Lookup, CaseMix::default(), 1).unwrap();
        let s = l.next(NOW);
        assert!(matches!((s.kind, s.request, s.expect), (Kind::Lookup, Request::Lookup(_), Expect::Status200)));
    }

    #[test]
    fn missing_colors_are_refused() {
        let mut w = world();
        w.population.mix = Mix { green: 1.0, yellow: 0.0, red: 0.0, pending: 0.0 };
        assert!(matches!(Generator::new(w, Api::Scan, CaseMix::default(), 1), Err(CaseError::Empty("yellow", _))));
        let mut w = world();
        w.checkpoints.clear();
        assert!(matches!(Generator::new(w, Api::Scan, CaseMix::default(), 1), Err(CaseError::NoCheckpoints)));
    }
}
