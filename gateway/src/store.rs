//! The colour store: per-holder mutable state in a concurrent table.
//!
//! One entry per holder in a [`HolderTable`] keyed by the 16-byte
//! pseudonymous id: open addressing with the 20-byte [`HolderState`] inline,
//! 36 bytes a slot at about 92 % load, in 1024 shards each under its own
//! lock (see the [`table`] module), because a province has tens of millions
//! of holders and they all live in memory. Scheduled steps ("red until T1,
//! then yellow until T2, then green") are rare, so they live in a side map
//! (a `DashMap`) and a flag bit says when to look there.
//!
//! Steps are applied when the state is read, never by a sweeping job: the
//! effective colour is a pure function of the stored colour, the steps and
//! the clock ([`effective`]). A writer that holds the entry anyway settles
//! elapsed steps into the stored colour so that the side map stays small.
//!
//! Lock order: the holder's shard of the table, then the steps map's entry, never the
//! other way round; no guard is ever held across an `.await` (nothing here
//! is async).

use crate::clock::UnixSecs;
use crate::color::Color;
use crate::holder::HolderId;
use dashmap::DashMap;
use healthgate_core::state::{effective, ColorChange, HolderState, HolderView, Step};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

pub mod table;

pub use table::HolderTable;

type Map<V> = DashMap<HolderId, V, ahash::RandomState>;

/// What a [`Store::update`] closure decides.
pub enum Update<R> {
    Commit(R, Option<(Color, Vec<Step>)>),
    Abort(R),
}

/// The store. `epoch` is the version of the colour state: it moves on every
/// change of a stored colour or schedule (authority updates, fever, bulk
/// loads), not on anti-passback or health-record bookkeeping, so a decision's
/// epoch says how fresh the colour it was based on is.
pub struct Store {
    holders: HolderTable,
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
        // The holders' table has its own 1024 shards; the rare steps map
        // needs few.
        Store {
            holders: HolderTable::with_capacity(n),
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
        let Some(state) = self.holders.get(id) else { return f(None) };
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
            let mut entry = self.holders.get_or_insert_with(c.holder, || {
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
        self.holders.for_each(|id, st| {
            let steps = if st.has_steps() { self.steps.get(id) } else { None };
            f(id, st, steps.as_deref().map_or(&[], |s| s));
        });
    }

    /// Starts loading about `expected` holders without steps (the state
    /// file's holder records); see [`Loading`].
    pub fn loading(&self, expected: usize) -> Loading<'_> {
        Loading { store: self, bulk: self.holders.bulk(expected) }
    }

    /// Slots the holders' table has allocated (36 bytes each).
    pub fn table_slots(&self) -> usize {
        self.holders.slots()
    }
}

/// A bulk load into a store: the same as [`Store::insert`] with no steps
/// for every holder in order, but the table is filled shard by shard on
/// several threads once [`Loading::finish`] runs. Dropped unfinished, it
/// inserts nothing.
pub struct Loading<'a> {
    store: &'a Store,
    bulk: table::Bulk<'a>,
}

impl Loading<'_> {
    pub fn insert(&mut self, id: HolderId, mut state: HolderState) {
        state.set_has_steps(false);
        self.bulk.push(id, state);
    }

    pub fn finish(self) {
        let store = self.store;
        let clear_steps = !store.steps.is_empty();
        let counts = self.bulk.finish(|by_color: &mut [i64; 4], id, old, new| {
            if let Some(o) = old {
                by_color[o.color().index()] -= 1;
            }
            by_color[new.color().index()] += 1;
            if clear_steps {
                store.steps.remove(id);
            }
        });
        for c in counts {
            for (i, n) in c.iter().enumerate() {
                store.by_color[i].fetch_add(*n, Ordering::Relaxed);
            }
        }
        // The holders sorted into shards took as much memory again as the
        // table; the allocator keeps freed blocks of under 32 MiB for
        // reuse, so hand their pages back (tens of bytes a holder).
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory of the allocator.
        unsafe {
            libc::malloc_trim(0);
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
    fn loading_is_inserting_in_order() {
        let s = Store::default();
        s.insert(H, HolderState::new(Color::Red, 0, None), vec![Step { until: 100, then: Color::Green }]);
        let mut l = s.loading(3);
        let mut with_flag = HolderState::new(Color::Green, 0, Some(1));
        with_flag.set_has_steps(true);
        l.insert(H, with_flag);
        l.insert(HolderId([0; 16]), HolderState::new(Color::Yellow, 0, None));
        l.insert(HolderId([3; 16]), HolderState::new(Color::Red, 0, None));
        l.insert(HolderId([3; 16]), HolderState::new(Color::Pending, 0, None));
        // Nothing is visible before the end.
        assert_eq!(s.len(), 1);
        l.finish();
        assert_eq!(s.len(), 3);
        assert_eq!(s.count_by_color(), [1, 1, 0, 1]);
        assert!(s.steps.is_empty());
        s.read(&H, 200, |v| {
            let v = v.unwrap();
            assert_eq!(v.color, Color::Green);
            assert!(!v.state.has_steps());
        });
        s.read(&HolderId([3; 16]), 0, |v| assert_eq!(v.unwrap().color, Color::Pending));
        s.read(&HolderId([0; 16]), 0, |v| assert_eq!(v.unwrap().color, Color::Yellow));
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
