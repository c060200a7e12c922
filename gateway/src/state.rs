//! Per-holder mutable state: the colour store.
//!
//! One entry per holder in a [`DashMap`] keyed by the 16-byte pseudonymous
//! id. The entry is deliberately tiny ([`HolderState`], 20 bytes: with the
//! key and the table's control byte about 37 bytes a slot), because a
//! province has tens of millions of holders and they all live in memory.
//! Scheduled steps ("red until T1, then yellow until T2, then green") are
//! rare, so they live in a side map and a flag bit says when to look there.
//!
//! Steps are applied when the state is read, never by a sweeping job: the
//! effective colour is a pure function of the stored colour, the steps and
//! the clock ([`effective`]). A writer that holds the entry anyway settles
//! elapsed steps into the stored colour so that the side map stays small.
//!
//! Lock order: the main map's entry, then the steps map's entry, never the
//! other way round; no guard is ever held across an `.await` (nothing here
//! is async).

pub mod snapshot;

use crate::clock::UnixSecs;
use crate::color::Color;
use crate::holder::HolderId;
use dashmap::DashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

type Map<V> = DashMap<HolderId, V, ahash::RandomState>;

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
    fn set_color(&mut self, c: Color, since: UnixSecs) {
        self.flags = (self.flags & !COLOR_MASK) | c as u8;
        self.since = secs32(since);
    }
    pub fn since(&self) -> UnixSecs {
        u64::from(self.since)
    }
    pub fn has_steps(&self) -> bool {
        self.flags & HAS_STEPS != 0
    }
    fn set_has_steps(&mut self, on: bool) {
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
    pub fn checkin_day(&self) -> Option<u16> {
        (self.checkin_day != 0).then_some(self.checkin_day)
    }
    pub fn set_checkin_day(&mut self, day: u16) {
        self.checkin_day = day;
    }

    /// Raw parts for the snapshot file, and back.
    pub(crate) fn to_parts(self) -> [u32; 5] {
        [
            u32::from(self.flags) | u32::from(self.passback_group) << 16,
            self.since,
            self.health_at,
            self.passback_at,
            u32::from(self.checkin_day),
        ]
    }
    pub(crate) fn from_parts(p: [u32; 5]) -> Option<Self> {
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

/// What a rule sees of a holder: the effective colour at `now`, the
/// remaining steps, and the rest of the stored state.
#[derive(Debug, Clone, Copy)]
pub struct HolderView<'a> {
    pub color: Color,
    pub since: UnixSecs,
    pub steps: &'a [Step],
    pub state: &'a HolderState,
}

/// What a [`Store::update`] closure decides.
pub enum Update<R> {
    Commit(R, Option<(Color, Vec<Step>)>),
    Abort(R),
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

/// The store. `epoch` is the version of the colour state: it moves on every
/// change of a stored colour or schedule (authority updates, fever, bulk
/// loads), not on anti-passback or health-record bookkeeping, so a decision's
/// epoch says how fresh the colour it was based on is.
pub struct Store {
    holders: Map<HolderState>,
    steps: Map<Box<[Step]>>,
    epoch: AtomicU64,
    /// Holders by stored colour, kept on every write so that a scrape never
    /// walks ten million entries.
    by_color: [AtomicI64; 4],
}

impl Default for Store {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl Store {
    pub fn with_capacity(n: usize) -> Self {
        // Fewer, larger shards than DashMap's default (4 × cores) would do
        // on two cores; 64 keeps write contention negligible at any size.
        Store {
            holders: Map::with_capacity_and_hasher_and_shard_amount(n, ahash::RandomState::new(), 64),
            steps: Map::with_hasher_and_shard_amount(ahash::RandomState::new(), 64),
            epoch: AtomicU64::new(1),
            by_color: Default::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.holders.len()
    }
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
    pub fn bump_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }
    pub fn set_epoch(&self, e: u64) {
        self.epoch.store(e, Ordering::Release)
    }
    pub fn count_by_color(&self) -> [i64; 4] {
        std::array::from_fn(|i| self.by_color[i].load(Ordering::Relaxed))
    }
    fn recount(&self, old: Option<Color>, new: Color) {
        if old == Some(new) {
            return;
        }
        if let Some(o) = old {
            self.by_color[o.index()].fetch_sub(1, Ordering::Relaxed);
        }
        self.by_color[new.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Inserts or replaces a holder's whole state (bulk load, snapshot).
    pub fn insert(&self, id: HolderId, mut state: HolderState, steps: Vec<Step>) {
        state.set_has_steps(!steps.is_empty());
        let old = self.holders.insert(id, state).map(|s| s.color());
        self.recount(old, state.color());
        if steps.is_empty() {
            self.steps.remove(&id);
        } else {
            self.steps.insert(id, steps.into_boxed_slice());
        }
    }

    /// Reads a holder without changing anything (status lookups).
    pub fn read<R>(&self, id: &HolderId, now: UnixSecs, f: impl FnOnce(Option<HolderView<'_>>) -> R) -> R {
        let Some(entry) = self.holders.get(id) else { return f(None) };
        let state = *entry;
        drop(entry);
        if state.has_steps() {
            let steps = self.steps.get(id);
            let steps: &[Step] = steps.as_deref().map_or(&[], |s| s);
            let (color, since, applied) = effective(state.color(), state.since(), steps, now);
            f(Some(HolderView { color, since, steps: &steps[applied..], state: &state }))
        } else {
            f(Some(HolderView { color: state.color(), since: state.since(), steps: &[], state: &state }))
        }
    }

    /// Runs `f` with exclusive access to one holder's state: the scan path.
    /// `f` sees the effective colour and may edit the rest of the state; it
    /// returns [`Update::Commit`] with its result and, when it changes the
    /// colour, the new colour and schedule, or [`Update::Abort`] to leave the
    /// holder as it was. Everything happens under the entry's lock, so two
    /// concurrent scans of one holder are decided one after the other
    /// (anti-passback depends on it), and whatever `f` does before it
    /// returns (logging the change) happens before anyone can see the change.
    pub fn update<R>(
        &self,
        id: &HolderId,
        now: UnixSecs,
        f: impl FnOnce(Option<(HolderView<'_>, &mut HolderState)>) -> Update<R>,
    ) -> R {
        let Some(mut entry) = self.holders.get_mut(id) else {
            return match f(None) {
                Update::Commit(r, _) | Update::Abort(r) => r,
            };
        };
        let mut state = *entry;
        let before = state.color();
        if state.has_steps() {
            self.settle(id, &mut state, now);
        }
        let steps_guard = if state.has_steps() { self.steps.get(id) } else { None };
        let steps: Vec<Step> = steps_guard.as_deref().map_or(Vec::new(), |s| s.to_vec());
        drop(steps_guard);
        let mut edited = state;
        let view = HolderView { color: state.color(), since: state.since(), steps: &steps, state: &state };
        let result = match f(Some((view, &mut edited))) {
            Update::Abort(r) => {
                // Settling folded due steps into the stored colour and the
                // steps map already; keep that (it changes no effective
                // colour), drop everything `f` did.
                edited = state;
                r
            }
            Update::Commit(r, change) => {
                if let Some((color, new_steps)) = change {
                    edited.set_color(color, now);
                    edited.set_has_steps(!new_steps.is_empty());
                    if new_steps.is_empty() {
                        self.steps.remove(id);
                    } else {
                        self.steps.insert(*id, new_steps.into_boxed_slice());
                    }
                    self.bump_epoch();
                }
                r
            }
        };
        *entry = edited;
        drop(entry);
        self.recount(Some(before), edited.color());
        result
    }

    /// Folds elapsed steps into the stored colour. Caller holds the entry.
    fn settle(&self, id: &HolderId, state: &mut HolderState, now: UnixSecs) {
        let Some(mut steps) = self.steps.get_mut(id) else {
            state.set_has_steps(false);
            return;
        };
        let (color, since, applied) = effective(state.color(), state.since(), &steps, now);
        if applied == 0 {
            return;
        }
        state.set_color(color, since);
        if applied == steps.len() {
            drop(steps);
            self.steps.remove(id);
            state.set_has_steps(false);
        } else {
            *steps = steps[applied..].into();
        }
    }

    /// Applies authority colour changes. Unknown holders are created (a new
    /// holder registered with the authority). Returns the new epoch.
    pub fn apply_changes(&self, changes: &[ColorChange], now: UnixSecs) -> u64 {
        for c in changes {
            let mut entry = self.holders.entry(c.holder).or_insert_with(|| {
                self.by_color[Color::Pending.index()].fetch_add(1, Ordering::Relaxed);
                HolderState::new(Color::Pending, now, None)
            });
            let before = entry.color();
            entry.set_color(c.color, now);
            entry.set_has_steps(!c.steps.is_empty());
            let after = entry.color();
            if c.steps.is_empty() {
                self.steps.remove(&c.holder);
            } else {
                self.steps.insert(c.holder, c.steps.clone().into_boxed_slice());
            }
            drop(entry);
            self.recount(Some(before), after);
        }
        self.bump_epoch()
    }

    /// Visits every holder (snapshots). Takes each shard's read lock in turn.
    pub fn for_each(&self, mut f: impl FnMut(&HolderId, &HolderState, &[Step])) {
        for e in self.holders.iter() {
            let steps = if e.has_steps() { self.steps.get(e.key()) } else { None };
            f(e.key(), e.value(), steps.as_deref().map_or(&[], |s| s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: HolderId = HolderId([1; 16]);

    #[test]
    fn state_is_compact() {
        assert_eq!(std::mem::size_of::<HolderState>(), 20);
        assert_eq!(std::mem::size_of::<(HolderId, HolderState)>(), 36);
    }

    #[test]
    fn steps_turn_over_at_their_time() {
        let steps = [Step { until: 100, then: Color::Yellow }, Step { until: 200, then: Color::Green }];
        assert_eq!(effective(Color::Red, 0, &steps, 99).0, Color::Red);
        assert_eq!(effective(Color::Red, 0, &steps, 100), (Color::Yellow, 100, 1));
        assert_eq!(effective(Color::Red, 0, &steps, 199).0, Color::Yellow);
        assert_eq!(effective(Color::Red, 0, &steps, 200), (Color::Green, 200, 2));
    }

    #[test]
    fn update_settles_steps_and_counts_colors() {
        let s = Store::default();
        s.insert(H, HolderState::new(Color::Red, 0, None), vec![Step { until: 100, then: Color::Green }]);
        assert_eq!(s.count_by_color(), [0, 0, 1, 0]);
        s.read(&H, 150, |v| assert_eq!(v.unwrap().color, Color::Green));
        // Reading changes nothing stored.
        s.read(&H, 50, |v| assert_eq!(v.unwrap().color, Color::Red));
        s.update(&H, 150, |v| {
            let (v, _) = v.unwrap();
            assert_eq!(v.color, Color::Green);
            assert!(v.steps.is_empty());
            Update::Commit((), None)
        });
        assert_eq!(s.count_by_color(), [1, 0, 0, 0]);
        assert!(s.steps.is_empty());
        // A change made in update moves the epoch and the counts.
        let e = s.epoch();
        s.update(&H, 160, |_| Update::Commit((), Some((Color::Yellow, vec![Step { until: 500, then: Color::Green }]))));
        assert_eq!(s.epoch(), e + 1);
        // An aborted update changes nothing.
        s.update(&H, 170, |v| {
            v.unwrap().1.set_health_at(170);
            Update::Abort(())
        });
        s.read(&H, 170, |v| assert_ne!(v.unwrap().state.health_at(), Some(170)));
        assert_eq!(s.count_by_color(), [0, 1, 0, 0]);
        s.read(&H, 499, |v| assert_eq!(v.unwrap().steps.len(), 1));
    }

    #[test]
    fn apply_changes_creates_and_replaces() {
        let s = Store::default();
        let h2 = HolderId([2; 16]);
        s.insert(H, HolderState::new(Color::Green, 0, Some(1)), vec![]);
        let e = s.apply_changes(
            &[
                ColorChange { holder: H, color: Color::Red, steps: vec![Step { until: 10, then: Color::Yellow }] },
                ColorChange { holder: h2, color: Color::Green, steps: vec![] },
            ],
            5,
        );
        assert_eq!(e, s.epoch());
        assert_eq!(s.count_by_color(), [1, 0, 1, 0]);
        s.read(&H, 10, |v| assert_eq!(v.unwrap().color, Color::Yellow));
        // The health record survives a colour change.
        s.read(&H, 10, |v| assert_eq!(v.unwrap().state.health_at(), Some(1)));
    }

    #[test]
    fn parts_round_trip_and_reject_garbage() {
        let mut st = HolderState::new(Color::Yellow, 10, Some(20));
        st.enter(7, 30);
        st.set_checkin_day(19_000);
        assert_eq!(HolderState::from_parts(st.to_parts()), Some(st));
        assert_eq!(HolderState::from_parts([0xff, 0, 0, 0, 0]), None);
    }
}
