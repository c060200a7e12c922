//! Per-holder state as data: the compact [`HolderState`], timed [`Step`]s,
//! the [`HolderView`] a rule sees, and the effective colour at a time.
//!
//! Steps are applied when the state is read, never by a sweeping job: the
//! effective colour is a pure function of the stored colour, the steps and
//! the clock ([`effective`]). The concurrent store that holds these lives in
//! the server crate (`healthgate::store`).

use crate::clock::UnixSecs;
use crate::color::Color;
use crate::holder::HolderId;

/// A timed transition: at `until` the holder becomes `then`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    #[serde(with = "crate::clock::serde_rfc3339")]
    pub until: UnixSecs,
    pub then: Color,
}

/// Most steps a holder may have queued (red → yellow → green needs two).
pub const MAX_STEPS: usize = 8;

const COLOR_MASK: u8 = 0b0000_0011;
const HAS_STEPS: u8 = 0b0000_0100;
const INSIDE: u8 = 0b0000_1000;

/// Compact per-holder state. Times are 32-bit Unix seconds (until 2106);
/// zero means "never".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HolderState {
    /// Stored colour (bits 0-1), has-steps (bit 2), inside (bit 3).
    flags: u8,
    /// Station group of the last accepted `in` (anti-passback).
    passback_group: u16,
    /// When the stored colour was set.
    since: u32,
    /// Last normal temperature reading or health check-in.
    health_at: u32,
    /// When the last accepted `in` happened (anti-passback).
    passback_at: u32,
    /// Day number (in the region's time zone) of the last daily check-in.
    checkin_day: u16,
}

fn secs32(t: UnixSecs) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

impl HolderState {
    pub fn new(color: Color, since: UnixSecs, health_at: Option<UnixSecs>) -> Self {
        HolderState {
            flags: color as u8,
            since: secs32(since),
            health_at: health_at.map_or(0, secs32),
            ..Default::default()
        }
    }

    pub fn color(&self) -> Color {
        Color::from_u8(self.flags & COLOR_MASK).unwrap_or(Color::Pending)
    }
    pub fn set_color(&mut self, c: Color, since: UnixSecs) {
        self.flags = (self.flags & !COLOR_MASK) | c as u8;
        self.since = secs32(since);
    }
    pub fn since(&self) -> UnixSecs {
        u64::from(self.since)
    }
    pub fn has_steps(&self) -> bool {
        self.flags & HAS_STEPS != 0
    }
    pub fn set_has_steps(&mut self, on: bool) {
        if on {
            self.flags |= HAS_STEPS
        } else {
            self.flags &= !HAS_STEPS
        }
    }
    pub fn health_at(&self) -> Option<UnixSecs> {
        (self.health_at != 0).then_some(u64::from(self.health_at))
    }
    pub fn set_health_at(&mut self, t: UnixSecs) {
        self.health_at = secs32(t);
    }
    /// The station group and time of an `in` not yet matched by an `out`.
    pub fn inside(&self) -> Option<(u16, UnixSecs)> {
        (self.flags & INSIDE != 0).then_some((self.passback_group, u64::from(self.passback_at)))
    }
    pub fn enter(&mut self, group: u16, at: UnixSecs) {
        self.flags |= INSIDE;
        self.passback_group = group;
        self.passback_at = secs32(at);
    }
    pub fn exit(&mut self) {
        self.flags &= !INSIDE;
    }
    /// The anti-passback register as a whole: inside or not, the station
    /// group, and the time it was last written (replicas merge it by that
    /// time, `crate::merge`).
    pub fn passback(&self) -> (bool, u16, UnixSecs) {
        (self.flags & INSIDE != 0, self.passback_group, u64::from(self.passback_at))
    }
    pub fn set_passback(&mut self, inside: bool, group: u16, at: UnixSecs) {
        if inside {
            self.flags |= INSIDE;
        } else {
            self.flags &= !INSIDE;
        }
        self.passback_group = group;
        self.passback_at = secs32(at);
    }
    pub fn checkin_day(&self) -> Option<u16> {
        (self.checkin_day != 0).then_some(self.checkin_day)
    }
    pub fn set_checkin_day(&mut self, day: u16) {
        self.checkin_day = day;
    }

    /// Raw parts for the snapshot file, and back.
    pub fn to_parts(self) -> [u32; 5] {
        [
            u32::from(self.flags) | u32::from(self.passback_group) << 16,
            self.since,
            self.health_at,
            self.passback_at,
            u32::from(self.checkin_day),
        ]
    }
    pub fn from_parts(p: [u32; 5]) -> Option<Self> {
        let flags = (p[0] & 0xff) as u8;
        if flags & !(COLOR_MASK | HAS_STEPS | INSIDE) != 0 || p[0] & 0xff00 != 0 || p[4] > 0xffff {
            return None;
        }
        Some(HolderState {
            flags,
            passback_group: (p[0] >> 16) as u16,
            since: p[1],
            health_at: p[2],
            passback_at: p[3],
            checkin_day: p[4] as u16,
        })
    }
}

/// The colour a holder has at `now`, and since when: the stored colour with
/// every step whose time has come applied in order.
pub fn effective(stored: Color, since: UnixSecs, steps: &[Step], now: UnixSecs) -> (Color, UnixSecs, usize) {
    let mut color = stored;
    let mut since = since;
    let mut applied = 0;
    for s in steps {
        if now < s.until {
            break;
        }
        color = s.then;
        since = s.until;
        applied += 1;
    }
    (color, since, applied)
}

/// An anti-passback move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Passback {
    #[default]
    None,
    Enter(u16),
    Exit,
}

/// How a decision (or a check-in) changes one holder, in absolute terms:
/// the log records it as it is, and replay applies it through the same
/// [`Effect::apply`] as the live path, so a replayed record gives the state
/// that was served whatever the configuration is at replay time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effect {
    /// A normal reading: the health record becomes the event's time (rule 4).
    pub health: bool,
    /// Anti-passback bookkeeping for an accepted passage.
    pub passback: Passback,
    /// A new stored colour and schedule (fever on a green holder: yellow
    /// now, green again after quarantine). The store applies it.
    pub color: Option<(Color, Vec<Step>)>,
}

impl Effect {
    pub fn is_empty(&self) -> bool {
        !self.health && self.passback == Passback::None && self.color.is_none()
    }

    /// Applies everything but the colour (which the store applies, since it
    /// keeps the schedules and the colour counts) to `state`, as at `at`.
    pub fn apply(&self, state: &mut HolderState, at: UnixSecs) {
        if self.health {
            state.set_health_at(at);
        }
        match self.passback {
            Passback::None => {}
            Passback::Enter(group) => state.enter(group, at),
            Passback::Exit => state.exit(),
        }
    }
}

/// What a rule sees of a holder: the effective colour at `now`, the
/// remaining steps, and the rest of the stored state.
#[derive(Debug, Clone, Copy)]
pub struct HolderView<'a> {
    pub color: Color,
    pub since: UnixSecs,
    pub steps: &'a [Step],
    pub state: &'a HolderState,
}

/// A change of colour with its schedule, as the authority sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColorChange {
    pub holder: HolderId,
    pub color: Color,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StepsError {
    #[error("at most {MAX_STEPS} scheduled steps")]
    TooMany,
    #[error("step times must increase")]
    NotIncreasing,
}

pub fn validate_steps(steps: &[Step]) -> Result<(), StepsError> {
    if steps.len() > MAX_STEPS {
        return Err(StepsError::TooMany);
    }
    if steps.windows(2).any(|w| w[0].until >= w[1].until) {
        return Err(StepsError::NotIncreasing);
    }
    Ok(())
}
