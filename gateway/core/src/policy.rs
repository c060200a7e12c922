//! The rules: what a scan decides, as a pure function.
//!
//! [`decide`] takes a [`VerifiedToken`], the checkpoint (with its class and
//! region from the snapshot), what the store knows of the holder, the scan's
//! inputs and the clock reading, and returns a [`Decision`] plus the
//! [`Effect`] on the holder's state. It does no I/O, takes no locks and reads
//! no clock, so every rule of DOMAIN.md is unit-tested here at its
//! boundaries. Token failures (malformed, unknown issuer, bad signature,
//! expired, revoked) are decided before the holder is looked at, by
//! [`crate::verify::verify`].

use crate::clock::UnixSecs;
use crate::color::Color;
pub use crate::state::{Effect, Passback};
use crate::state::{HolderView, Step};
use crate::token::VerifiedToken;
use std::collections::HashMap;

/// Why a scan was decided as it was. The wire names are a public contract
/// with turnstile vendors: never rename one. The discriminants are what the
/// log and the tracing index store: never renumber one (see `codec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reason {
    Ok = 0,
    Fever = 1,
    NotGreen = 2,
    Pending = 3,
    UnknownHolder = 4,
    Revoked = 5,
    Expired = 6,
    NotYetValid = 7,
    BadSignature = 8,
    UnknownIssuer = 9,
    Malformed = 10,
    NoHealthRecord = 11,
    AntiPassback = 12,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::Ok,
        Reason::Fever,
        Reason::NotGreen,
        Reason::Pending,
        Reason::UnknownHolder,
        Reason::Revoked,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::BadSignature,
        Reason::UnknownIssuer,
        Reason::Malformed,
        Reason::NoHealthRecord,
        Reason::AntiPassback,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::Fever => "fever",
            Reason::NotGreen => "not_green",
            Reason::Pending => "pending",
            Reason::UnknownHolder => "unknown_holder",
            Reason::Revoked => "revoked",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::Malformed => "malformed",
            Reason::NoHealthRecord => "no_health_record",
            Reason::AntiPassback => "anti_passback",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The colour a decision shows: a holder's, or unknown when the token did
/// not get as far as the holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    Color(Color),
    Unknown,
}

impl Shown {
    pub const fn as_str(self) -> &'static str {
        match self {
            Shown::Color(c) => c.as_str(),
            Shown::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub pass: bool,
    pub color: Shown,
    pub reason: Reason,
}

impl Decision {
    pub const fn deny(color: Shown, reason: Reason) -> Self {
        Decision { pass: false, color, reason }
    }
    pub const fn pass(color: Color, reason: Reason) -> Self {
        Decision { pass: true, color: Shown::Color(color), reason }
    }
    pub fn decision_str(&self) -> &'static str {
        if self.pass {
            "pass"
        } else {
            "deny"
        }
    }
}

/// Which way a passage goes. The discriminants are stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Direction {
    #[default]
    In = 0,
    Out = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::In, Direction::Out];

    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Region {
    pub name: String,
    pub utc_offset_s: i32,
    pub fever_threshold_c: f64,
    /// A green holder needs a health record at most this old (rule 4).
    pub health_record_validity_s: u64,
    /// How long a fever turns a green holder yellow (rule 3).
    pub fever_quarantine_s: u64,
    /// Bit i set: issuer i of the trust list is accepted (rule 11).
    pub accepted_issuers: u64,
}

impl Region {
    /// The calendar day number of `t` in the region's civil time.
    pub fn day_of(&self, t: UnixSecs) -> u16 {
        let local = t as i64 + i64::from(self.utc_offset_s);
        u16::try_from(local.div_euclid(86_400)).unwrap_or(u16::MAX)
    }
    pub fn accepts_issuer(&self, issuer: usize) -> bool {
        issuer < 64 && self.accepted_issuers & (1 << issuer) != 0
    }
}

#[derive(Debug, Clone)]
pub struct Class {
    pub name: String,
    /// Which colours pass, by [`Color::index`]; pending never does.
    pub admit: [bool; 4],
    /// The checkpoint measures temperature: a scan without one is refused.
    pub requires_temperature: bool,
    /// A fever clinic admits fever readings instead of denying them.
    pub admit_fever: bool,
    /// Anti-passback window; zero turns it off.
    pub anti_passback_s: u64,
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub id: String,
    pub class: usize,
    pub region: usize,
    pub group: u16,
}

/// Regions, classes and checkpoints, validated and cross-referenced.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    regions: Vec<Region>,
    classes: Vec<Class>,
    checkpoints: Vec<Checkpoint>,
    by_id: HashMap<Box<str>, usize, ahash::RandomState>,
}

/// A checkpoint with its class and region resolved.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub checkpoint: &'a Checkpoint,
    pub class: &'a Class,
    pub region: &'a Region,
}

impl Policy {
    pub fn new(regions: Vec<Region>, classes: Vec<Class>, checkpoints: Vec<Checkpoint>) -> Result<Self, String> {
        let mut by_id = HashMap::with_hasher(ahash::RandomState::new());
        for (i, c) in checkpoints.iter().enumerate() {
            if c.class >= classes.len() || c.region >= regions.len() {
                return Err(format!("checkpoint {:?} refers to a missing class or region", c.id));
            }
            if by_id.insert(c.id.clone().into_boxed_str(), i).is_some() {
                return Err(format!("checkpoint id {:?} appears twice", c.id));
            }
        }
        Ok(Policy { regions, classes, checkpoints, by_id })
    }

    pub fn place(&self, checkpoint_id: &str) -> Option<Place<'_>> {
        let cp = &self.checkpoints[*self.by_id.get(checkpoint_id)?];
        Some(Place { checkpoint: cp, class: &self.classes[cp.class], region: &self.regions[cp.region] })
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }
    pub fn classes(&self) -> &[Class] {
        &self.classes
    }
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }
}

/// What a scan brings besides the token.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanInput {
    pub direction: Direction,
    pub temperature_c: Option<f64>,
}

/// What a colour means on its own, before the checkpoint's class is
/// considered: pending is `pending`, red and yellow `not_green`, green with
/// a fresh health record `ok` and without one `no_health_record` (rule 4:
/// it counts as yellow). Scans, check-ins and holder status all say it so.
pub fn standing(color: Color, health_record_fresh: bool) -> Reason {
    match color {
        Color::Pending => Reason::Pending,
        Color::Green if health_record_fresh => Reason::Ok,
        Color::Green => Reason::NoHealthRecord,
        Color::Yellow | Color::Red => Reason::NotGreen,
    }
}

/// Is the holder's health record fresh at `now`? (rule 4: at most
/// `health_record_validity_s` old, inclusive).
pub fn health_record_fresh(health_at: Option<UnixSecs>, region: &Region, now: UnixSecs) -> bool {
    health_at.is_some_and(|t| now.saturating_sub(t) <= region.health_record_validity_s)
}

/// The rules for a holder whose token verified (see the module doc). The
/// token is taken only as proof: there is no other way to reach the rules
/// than through verification, and `holder` is what the store holds for the
/// holder the token names.
pub fn decide(
    _proof: &VerifiedToken,
    place: Place<'_>,
    holder: Option<HolderView<'_>>,
    input: ScanInput,
    now: UnixSecs,
) -> (Decision, Effect) {
    let mut effect = Effect::default();
    let Some(h) = holder else {
        return (Decision::deny(Shown::Unknown, Reason::UnknownHolder), effect);
    };
    let Place { checkpoint, class, region } = place;
    let mut color = h.color;

    // Rule 3: a fever reading is recorded whatever the colour; a green
    // holder turns yellow for the region's quarantine, then green again.
    if let Some(t) = input.temperature_c {
        if t >= region.fever_threshold_c {
            if color == Color::Green {
                let until = now + region.fever_quarantine_s;
                effect.color = Some((Color::Yellow, vec![Step { until, then: Color::Green }]));
                color = Color::Yellow;
            }
            if !class.admit_fever {
                return (Decision::deny(Shown::Color(color), Reason::Fever), effect);
            }
        } else {
            effect.health = true;
        }
    }

    // Rules 2 and 7: pending never passes; yellow and red only where the
    // class admits them. Rule 4: green without a recent record counts as
    // yellow.
    let fresh = effect.health || health_record_fresh(h.state.health_at(), region, now);
    let (shown, reason) = match standing(color, fresh) {
        Reason::Pending => return (Decision::deny(Shown::Color(Color::Pending), Reason::Pending), effect),
        Reason::NoHealthRecord => (Color::Yellow, Reason::NoHealthRecord),
        reason => (color, reason),
    };
    if !class.admit[shown.index()] {
        return (Decision::deny(Shown::Color(shown), reason), effect);
    }

    // Anti-passback: a second `in` in the same station group within the
    // window, with no `out` between, is somebody else on the same code.
    if class.anti_passback_s > 0 {
        match input.direction {
            Direction::In => {
                if let Some((group, at)) = h.state.inside() {
                    if group == checkpoint.group && now < at.saturating_add(class.anti_passback_s) {
                        return (Decision::deny(Shown::Color(shown), Reason::AntiPassback), effect);
                    }
                }
                effect.passback = Passback::Enter(checkpoint.group);
            }
            Direction::Out => effect.passback = Passback::Exit,
        }
    }
    // A yellow holder admitted where yellow is allowed passes with reason
    // ok; a stale green admitted as yellow keeps its reason.
    let reason = if reason == Reason::NotGreen { Reason::Ok } else { reason };
    (Decision::pass(shown, reason), effect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::HolderState;

    const NOW: UnixSecs = 1_700_000_000;
    const HOUR: u64 = 3600;

    /// The rules ignore the token's claims; tests stand in for verification.
    fn proof() -> VerifiedToken {
        VerifiedToken::checked(crate::token::Claims {
            kid: "HB01".parse().unwrap(),
            holder: crate::holder::HolderId([1; 16]),
            issued_at: NOW,
            expires_at: NOW + 60,
            color: Color::Green,
            serial: 1,
        })
    }

    fn region() -> Region {
        Region {
            name: "wuhan".into(),
            utc_offset_s: 8 * 3600,
            fever_threshold_c: 37.3,
            health_record_validity_s: 12 * HOUR,
            fever_quarantine_s: 14 * 24 * HOUR,
            accepted_issuers: 1,
        }
    }
    fn metro() -> Class {
        Class {
            name: "metro".into(),
            admit: [true, false, false, false],
            requires_temperature: false,
            admit_fever: false,
            anti_passback_s: 300,
        }
    }
    fn clinic() -> Class {
        Class { name: "clinic".into(), admit: [true, true, false, false], anti_passback_s: 0, ..metro() }
    }
    fn cp(group: u16) -> Checkpoint {
        Checkpoint { id: "gate".into(), class: 0, region: 0, group }
    }

    struct Case {
        state: HolderState,
        steps: Vec<Step>,
    }
    impl Case {
        fn new(color: Color) -> Self {
            Case { state: HolderState::new(color, NOW - HOUR, Some(NOW - HOUR)), steps: vec![] }
        }
        fn run(&self, class: &Class, group: u16, input: ScanInput, now: UnixSecs) -> (Decision, Effect) {
            let (color, since, applied) =
                crate::state::effective(self.state.color(), self.state.since(), &self.steps, now);
            let view = HolderView { color, since, steps: &self.steps[applied..], state: &self.state };
            let (r, c) = (region(), cp(group));
            decide(&proof(), Place { checkpoint: &c, class, region: &r }, Some(view), input, now)
        }
    }

    fn scan(t: Option<f64>) -> ScanInput {
        ScanInput { direction: Direction::In, temperature_c: t }
    }

    #[test]
    fn rule1_green_passes() {
        let (d, e) = Case::new(Color::Green).run(&metro(), 0, scan(None), NOW);
        assert_eq!(d, Decision::pass(Color::Green, Reason::Ok));
        assert_eq!(e.passback, Passback::Enter(0));
    }

    #[test]
    fn rule2_yellow_and_red_denied_unless_class_admits() {
        for c in [Color::Yellow, Color::Red] {
            let (d, _) = Case::new(c).run(&metro(), 0, scan(None), NOW);
            assert_eq!(d, Decision::deny(Shown::Color(c), Reason::NotGreen));
        }
        assert_eq!(
            Case::new(Color::Yellow).run(&clinic(), 0, scan(None), NOW).0,
            Decision::pass(Color::Yellow, Reason::Ok)
        );
        assert!(!Case::new(Color::Red).run(&clinic(), 0, scan(None), NOW).0.pass);
    }

    #[test]
    fn rule3_fever_at_exactly_the_threshold() {
        let (d, e) = Case::new(Color::Green).run(&metro(), 0, scan(Some(37.3)), NOW);
        assert_eq!(d, Decision::deny(Shown::Color(Color::Yellow), Reason::Fever));
        let until = NOW + 14 * 24 * HOUR;
        assert_eq!(e.color, Some((Color::Yellow, vec![Step { until, then: Color::Green }])));
        assert!(!e.health);
        // Just below: a normal reading that refreshes the record.
        let (d, e) = Case::new(Color::Green).run(&metro(), 0, scan(Some(37.2)), NOW);
        assert!(d.pass);
        assert!(e.health && e.color.is_none());
        // Fever on a red holder: denied as fever, colour unchanged.
        let (d, e) = Case::new(Color::Red).run(&metro(), 0, scan(Some(39.0)), NOW);
        assert_eq!(d, Decision::deny(Shown::Color(Color::Red), Reason::Fever));
        assert!(e.color.is_none());
    }

    #[test]
    fn rule3_fever_clinic_admits_the_fever_it_records() {
        let class = Class { admit_fever: true, ..clinic() };
        let (d, e) = Case::new(Color::Green).run(&class, 0, scan(Some(38.5)), NOW);
        assert_eq!(d, Decision::pass(Color::Yellow, Reason::Ok));
        assert!(e.color.is_some());
    }

    #[test]
    fn rule4_health_record_window_edge() {
        let mut c = Case::new(Color::Green);
        c.state.set_health_at(NOW - 12 * HOUR);
        assert!(c.run(&metro(), 0, scan(None), NOW).0.pass, "exactly at the window edge still counts");
        c.state.set_health_at(NOW - 12 * HOUR - 1);
        assert_eq!(
            c.run(&metro(), 0, scan(None), NOW).0,
            Decision::deny(Shown::Color(Color::Yellow), Reason::NoHealthRecord)
        );
        // A normal reading at the checkpoint is a new record: passes now.
        let (d, e) = c.run(&metro(), 0, scan(Some(36.6)), NOW);
        assert_eq!(d, Decision::pass(Color::Green, Reason::Ok));
        assert!(e.health);
        // Where yellow is admitted, a stale green passes as yellow.
        assert_eq!(c.run(&clinic(), 0, scan(None), NOW).0, Decision::pass(Color::Yellow, Reason::NoHealthRecord));
        // Never had a record.
        let never = Case { state: HolderState::new(Color::Green, NOW, None), steps: vec![] };
        assert_eq!(never.run(&metro(), 0, scan(None), NOW).0.reason, Reason::NoHealthRecord);
    }

    #[test]
    fn rules5_6_steps_end_exactly_at_their_time() {
        let mut c = Case::new(Color::Red);
        c.steps =
            vec![Step { until: NOW, then: Color::Yellow }, Step { until: NOW + 7 * 24 * HOUR, then: Color::Green }];
        assert_eq!(c.run(&metro(), 0, scan(None), NOW - 1).0.color, Shown::Color(Color::Red));
        assert_eq!(c.run(&metro(), 0, scan(None), NOW).0.color, Shown::Color(Color::Yellow));
        let week = NOW + 7 * 24 * HOUR;
        assert!(!c.run(&metro(), 0, scan(Some(36.5)), week - 1).0.pass);
        assert_eq!(c.run(&metro(), 0, scan(Some(36.5)), week).0, Decision::pass(Color::Green, Reason::Ok));
    }

    #[test]
    fn rule7_pending_never_passes() {
        let class = Class { admit: [true, true, true, false], ..clinic() };
        assert_eq!(
            Case::new(Color::Pending).run(&class, 0, scan(None), NOW).0,
            Decision::deny(Shown::Color(Color::Pending), Reason::Pending)
        );
    }

    #[test]
    fn unknown_holder() {
        let (r, c) = (region(), cp(0));
        let (d, e) = decide(&proof(), Place { checkpoint: &c, class: &metro(), region: &r }, None, scan(None), NOW);
        assert_eq!(d, Decision::deny(Shown::Unknown, Reason::UnknownHolder));
        assert_eq!(e, Effect::default());
    }

    #[test]
    fn anti_passback_window_and_groups() {
        let mut c = Case::new(Color::Green);
        c.state.enter(3, NOW - 300);
        // At exactly the window's end the entry has lapsed.
        assert!(c.run(&metro(), 3, scan(None), NOW).0.pass);
        c.state.enter(3, NOW - 299);
        assert_eq!(
            c.run(&metro(), 3, scan(None), NOW).0,
            Decision::deny(Shown::Color(Color::Green), Reason::AntiPassback)
        );
        // Another station group is another place.
        assert!(c.run(&metro(), 4, scan(None), NOW).0.pass);
        // An `out` always passes and clears it.
        let out = ScanInput { direction: Direction::Out, temperature_c: None };
        let (d, e) = c.run(&metro(), 3, out, NOW);
        assert!(d.pass);
        assert_eq!(e.passback, Passback::Exit);
        // Classes without anti-passback keep no bookkeeping.
        assert_eq!(c.run(&clinic(), 3, scan(None), NOW).1.passback, Passback::None);
    }

    #[test]
    fn day_numbers_follow_the_region_clock() {
        let r = region();
        // 2020-04-25T15:59:59Z is 23:59:59 in UTC+8; one second later is the next day.
        let t = crate::clock::parse_rfc3339("2020-04-25T15:59:59Z").unwrap();
        assert_eq!(r.day_of(t) + 1, r.day_of(t + 1));
    }
}
