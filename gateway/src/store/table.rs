//! The holder table: every holder's state in open addressing, 36 bytes a
//! slot.
//!
//! A slot is the 16-byte id with the 20-byte [`HolderState`] inline; an
//! all-zero id marks an empty slot, so there is no control array, and a
//! real all-zero id lives in a side slot of its shard. The table is split
//! into [`SHARDS`] shards chosen by the low bits of a keyed hash (ahash,
//! random per process), each an array of slots under its own lock: reads
//! take the shard's read lock, writers the write lock, so a writer has its
//! holder to itself while scans of holders in other shards go on.
//!
//! Within a shard a holder's home slot is the hash's high bits scaled to the
//! shard's number of homes (range reduction, so a shard has as many slots
//! as it needs, not the next power of two), and collisions probe linearly
//! without wrapping around: a short tail of slots after the last home takes
//! the overflow. The slots are kept in hash order (ordered linear probing:
//! an insert shifts the rest of its cluster by one), so a lookup stops at
//! the first holder whose hash is past its own. A holder is found as many
//! slots from its home as with plain linear probing (about five at 90 %
//! load), and an unknown id is turned away after as few, instead of
//! scanning to the end of its cluster (about fifty). A lookup compares the
//! first `WINDOW` (8) slots from the home at once, without a branch per slot
//! (see `Inner::find`). Holders are never removed, so there are no
//! tombstones.
//!
//! A shard is sized so that the holders meant for it fill [`FILL`] of its
//! slots, and grows by half (or to [`FILL`]) when an insert would take it
//! past [`LIMIT`] or its tail is full; a holder is therefore always
//! accepted. [`Bulk`] fills the table from a known set (the state file)
//! shard by shard on several threads, each shard sized to its exact count
//! and written in hash order in one pass.

use crate::holder::HolderId;
use crate::state::HolderState;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, RwLock, RwLockWriteGuard};

/// Number of shards (a power of two).
pub const SHARDS: usize = 1024;
/// The share of a shard's slots its holders fill when it is sized.
pub const FILL: f64 = 0.92;
/// The share past which an insert grows the shard first.
pub const LIMIT: f64 = 0.96;

const EMPTY_ID: [u8; 16] = [0; 16];

/// Slots from its home that a lookup compares at once.
const WINDOW: usize = 8;

#[derive(Clone, Copy)]
struct Slot {
    id: HolderId,
    state: HolderState,
}

fn empty() -> Slot {
    Slot { id: HolderId(EMPTY_ID), state: HolderState::default() }
}

#[derive(Default)]
struct Inner {
    slots: Box<[Slot]>,
    /// The first `homes` slots are homes; the rest, a tail, only overflow.
    homes: usize,
    /// Occupied slots.
    used: usize,
    /// The all-zero id, which cannot live in a slot.
    zero_present: bool,
    zero: HolderState,
}

/// Where a found holder lives in its shard.
#[derive(Clone, Copy)]
enum At {
    Slot(usize),
    Zero,
}

/// Slots past the last home in a shard of `n` slots. The overflow past the
/// last home is rarely long (past 64 slots about once in 20 000 shards at
/// 92 % load); when it does not fit the shard is laid out again a little
/// longer.
fn tail(n: usize) -> usize {
    (n / 8).min(64)
}

/// A little longer, for holders that overflowed the tail of `n` slots.
fn longer(n: usize) -> usize {
    n + 16 + n / 64
}

/// Slots that hold `holders` at [`FILL`].
fn slots_for(holders: usize) -> usize {
    if holders == 0 {
        return 0;
    }
    ((holders as f64 / FILL).ceil() as usize).max(holders + 2)
}

/// The home slot of `hash` among `homes`: the hash's high bits scaled to
/// `homes` (the shard index uses the low bits). Monotonic in the hash, so
/// slots in hash order are in home order.
#[inline]
fn home(hash: u64, homes: usize) -> usize {
    ((u128::from(hash) * homes as u128) >> 64) as usize
}

#[inline]
fn hash(hasher: &ahash::RandomState, id: &HolderId) -> u64 {
    hasher.hash_one(u128::from_le_bytes(id.0))
}

/// Sorts `(hash, order)` pairs: a counting sort on the hash's top bits
/// (about one bucket a key), then each bucket's few keys compared.
fn sort_by_hash(keys: Vec<(u64, u32)>) -> Vec<(u64, u32)> {
    let buckets = keys.len().max(1);
    let mut start = vec![0u32; buckets + 1];
    for &(h, _) in &keys {
        start[home(h, buckets) + 1] += 1;
    }
    for b in 0..buckets {
        start[b + 1] += start[b];
    }
    let mut sorted = vec![(0u64, 0u32); keys.len()];
    let mut next = start.clone();
    for &(h, i) in &keys {
        let b = home(h, buckets);
        sorted[next[b] as usize] = (h, i);
        next[b] += 1;
    }
    for b in start.windows(2) {
        if b[1] - b[0] > 1 {
            sorted[b[0] as usize..b[1] as usize].sort_unstable();
        }
    }
    sorted
}

/// Lays out holders given in hash order in `n` slots or, where they
/// overflow the tail, a few more: the slots and the number of homes.
fn lay_out_in<I: Iterator<Item = (u64, Slot)>>(mut n: usize, sorted: impl Fn() -> I) -> (Box<[Slot]>, usize) {
    loop {
        if let Some(laid) = lay_out(n, sorted()) {
            return laid;
        }
        n = longer(n);
    }
}

/// Lays out holders given in hash order in `n` slots, each at its home or
/// right after the one before; `None` if they overflow the tail.
fn lay_out(n: usize, sorted: impl Iterator<Item = (u64, Slot)>) -> Option<(Box<[Slot]>, usize)> {
    let homes = n - tail(n);
    let mut slots = vec![empty(); n].into_boxed_slice();
    let mut next = 0;
    for (h, s) in sorted {
        let at = home(h, homes).max(next);
        *slots.get_mut(at)? = s;
        next = at + 1;
    }
    Some((slots, homes))
}

impl Inner {
    /// The holder's slot.
    #[inline]
    fn find(&self, h: u64, id: &HolderId, hasher: &ahash::RandomState) -> Option<usize> {
        if self.used == 0 {
            return None;
        }
        let start = home(h, self.homes);
        // The first WINDOW slots from the home are compared without a
        // branch per slot: most holders are there, and a lookup whose
        // branches the processor predicts lets it start on the next
        // lookup's memory accesses before this one's arrive.
        if let Some(window) = self.slots.get(start..start + WINDOW) {
            let (mut found, mut empty) = (0u32, 0u32);
            for (k, s) in window.iter().enumerate() {
                found |= u32::from(s.id == *id) << k;
                empty |= u32::from(s.id.0 == EMPTY_ID) << k;
            }
            if found != 0 {
                return Some(start + found.trailing_zeros() as usize);
            }
            if empty != 0 {
                return None;
            }
            return self.find_from(start + WINDOW, h, id, hasher);
        }
        self.find_from(start, h, id, hasher)
    }

    /// [`Inner::find`] slot by slot from `i` on: stops at the holder, an
    /// empty slot or a holder with a greater hash.
    fn find_from(&self, mut i: usize, h: u64, id: &HolderId, hasher: &ahash::RandomState) -> Option<usize> {
        while let Some(s) = self.slots.get(i) {
            if s.id == *id {
                return Some(i);
            }
            if s.id.0 == EMPTY_ID || hash(hasher, &s.id) > h {
                return None;
            }
            i += 1;
        }
        None
    }

    /// Where a new holder goes: the first empty slot or holder with a
    /// greater hash from its home on (or the end of the slots).
    fn place(&self, h: u64, hasher: &ahash::RandomState) -> usize {
        if self.homes == 0 {
            return self.slots.len();
        }
        let mut i = home(h, self.homes);
        while let Some(s) = self.slots.get(i) {
            if s.id.0 == EMPTY_ID || hash(hasher, &s.id) > h {
                break;
            }
            i += 1;
        }
        i
    }

    fn locate(&self, h: u64, id: &HolderId, hasher: &ahash::RandomState) -> Option<At> {
        if id.0 == EMPTY_ID {
            return self.zero_present.then_some(At::Zero);
        }
        self.find(h, id, hasher).map(At::Slot)
    }

    fn state(&self, at: At) -> &HolderState {
        match at {
            At::Slot(i) => &self.slots[i].state,
            At::Zero => &self.zero,
        }
    }

    fn state_mut(&mut self, at: At) -> &mut HolderState {
        match at {
            At::Slot(i) => &mut self.slots[i].state,
            At::Zero => &mut self.zero,
        }
    }

    /// Whether `more` holders fit within [`LIMIT`].
    fn fits(&self, more: usize) -> bool {
        let need = self.used + more;
        need < self.slots.len() && need as f64 <= LIMIT * self.slots.len() as f64
    }

    /// Regrows to `n` slots (more if the holders overflow the tail).
    fn resize(&mut self, n: usize, hasher: &ahash::RandomState) {
        let old = std::mem::take(&mut self.slots);
        (self.slots, self.homes) =
            lay_out_in(n, || old.iter().filter(|s| s.id.0 != EMPTY_ID).map(|s| (hash(hasher, &s.id), *s)));
    }

    /// Grows by half at least, or to [`FILL`] for `more` holders.
    fn grow(&mut self, more: usize, hasher: &ahash::RandomState) {
        let n = (self.slots.len() * 3 / 2).max(slots_for(self.used + more)).max(16);
        self.resize(n, hasher);
    }

    /// Inserts or replaces; returns the previous state and where the holder is.
    fn insert(
        &mut self,
        h: u64,
        id: HolderId,
        state: HolderState,
        hasher: &ahash::RandomState,
    ) -> (Option<HolderState>, At) {
        if id.0 == EMPTY_ID {
            let old = self.zero_present.then_some(self.zero);
            self.zero_present = true;
            self.zero = state;
            return (old, At::Zero);
        }
        if let Some(i) = self.find(h, &id, hasher) {
            return (Some(std::mem::replace(&mut self.slots[i].state, state)), At::Slot(i));
        }
        loop {
            if !self.fits(1) {
                self.grow(1, hasher);
                continue;
            }
            // Shift the rest of the cluster up to its end by one.
            let at = self.place(h, hasher);
            match self.slots[at..].iter().position(|s| s.id.0 == EMPTY_ID) {
                Some(end) => {
                    self.slots.copy_within(at..at + end, at + 1);
                    self.slots[at] = Slot { id, state };
                    self.used += 1;
                    return (None, At::Slot(at));
                }
                None => self.resize(longer(self.slots.len()), hasher),
            }
        }
    }
}

#[repr(align(64))]
#[derive(Default)]
struct Shard(RwLock<Inner>);

impl Shard {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The table. See the module documentation.
pub struct HolderTable {
    hasher: ahash::RandomState,
    shards: Box<[Shard]>,
    len: AtomicUsize,
}

impl Default for HolderTable {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

/// Exclusive access to one holder's state; the shard stays write-locked
/// while this lives.
pub struct RefMut<'a> {
    guard: RwLockWriteGuard<'a, Inner>,
    at: At,
}

impl std::ops::Deref for RefMut<'_> {
    type Target = HolderState;
    fn deref(&self) -> &HolderState {
        self.guard.state(self.at)
    }
}

impl std::ops::DerefMut for RefMut<'_> {
    fn deref_mut(&mut self) -> &mut HolderState {
        let at = self.at;
        self.guard.state_mut(at)
    }
}

impl HolderTable {
    /// A table that holds `n` holders without growing: each shard is sized
    /// for its share plus two standard deviations of the spread of a
    /// uniform hash, and grows only past [`LIMIT`] (more than five standard
    /// deviations above its share from ten million holders up).
    pub fn with_capacity(n: usize) -> Self {
        Self::with_shards(SHARDS, n)
    }

    /// [`HolderTable::with_capacity`] with `shards` shards (a power of two).
    fn with_shards(shards: usize, n: usize) -> Self {
        assert!(shards.is_power_of_two());
        let per = n.div_ceil(shards);
        let slots = if n == 0 { 0 } else { slots_for(per + 2 * (per as f64).sqrt().ceil() as usize + 2) };
        let shards: Box<[Shard]> = (0..shards)
            .map(|_| {
                let homes = slots - tail(slots);
                Shard(RwLock::new(Inner {
                    slots: vec![empty(); slots].into_boxed_slice(),
                    homes,
                    ..Default::default()
                }))
            })
            .collect();
        HolderTable { hasher: ahash::RandomState::new(), shards, len: AtomicUsize::new(0) }
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[hash as usize & (self.shards.len() - 1)]
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots allocated over all shards (the table's memory is 36 bytes
    /// times this).
    pub fn slots(&self) -> usize {
        self.shards.iter().map(|s| s.read().slots.len()).sum()
    }

    /// A copy of the holder's state.
    #[inline]
    pub fn get(&self, id: &HolderId) -> Option<HolderState> {
        let h = hash(&self.hasher, id);
        let inner = self.shard(h).read();
        inner.locate(h, id, &self.hasher).map(|at| *inner.state(at))
    }

    /// The holder's state under its shard's write lock.
    pub fn get_mut(&self, id: &HolderId) -> Option<RefMut<'_>> {
        let h = hash(&self.hasher, id);
        let guard = self.shard(h).write();
        let at = guard.locate(h, id, &self.hasher)?;
        Some(RefMut { guard, at })
    }

    /// The holder's state under its shard's write lock, inserting
    /// `make()` first if the holder is new.
    pub fn get_or_insert_with(&self, id: HolderId, make: impl FnOnce() -> HolderState) -> RefMut<'_> {
        let h = hash(&self.hasher, &id);
        let mut guard = self.shard(h).write();
        let at = match guard.locate(h, &id, &self.hasher) {
            Some(at) => at,
            None => {
                self.len.fetch_add(1, Ordering::Relaxed);
                guard.insert(h, id, make(), &self.hasher).1
            }
        };
        RefMut { guard, at }
    }

    /// Inserts or replaces; returns the previous state.
    pub fn insert(&self, id: HolderId, state: HolderState) -> Option<HolderState> {
        let h = hash(&self.hasher, &id);
        let old = self.shard(h).write().insert(h, id, state, &self.hasher).0;
        if old.is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        old
    }

    /// Visits every holder, one shard at a time under its read lock.
    pub fn for_each(&self, mut f: impl FnMut(&HolderId, &HolderState)) {
        for shard in self.shards.iter() {
            let inner = shard.read();
            if inner.zero_present {
                f(&HolderId(EMPTY_ID), &inner.zero);
            }
            for s in inner.slots.iter().filter(|s| s.id.0 != EMPTY_ID) {
                f(&s.id, &s.state);
            }
        }
    }

    /// Starts a bulk fill expecting about `expected` holders.
    pub fn bulk(&self, expected: usize) -> Bulk<'_> {
        let per = expected.div_ceil(self.shards.len());
        let reserve = if expected == 0 { 0 } else { per + per / 8 + 16 };
        Bulk { table: self, buckets: (0..self.shards.len()).map(|_| Vec::with_capacity(reserve)).collect() }
    }

    /// Fills one shard from its bucket (holders in the order given).
    fn fill<A>(
        &self,
        shard: usize,
        bucket: &[Slot],
        acc: &mut A,
        fold: &impl Fn(&mut A, &HolderId, Option<HolderState>, &HolderState),
    ) {
        let mut inner = self.shards[shard].write();
        let before = inner.used + usize::from(inner.zero_present);
        if inner.used > 0 {
            // Not an empty shard: one by one, growing at most once.
            if !inner.fits(bucket.len()) {
                inner.grow(bucket.len(), &self.hasher);
            }
            for s in bucket {
                let old = inner.insert(hash(&self.hasher, &s.id), s.id, s.state, &self.hasher).0;
                fold(acc, &s.id, old, &s.state);
            }
        } else {
            // Sort by hash (then by order, so that a later duplicate
            // replaces an earlier one) and lay the shard out in one pass.
            let mut keys: Vec<(u64, u32)> = Vec::with_capacity(bucket.len());
            for (i, s) in bucket.iter().enumerate() {
                if s.id.0 == EMPTY_ID {
                    let old = inner.insert(0, s.id, s.state, &self.hasher).0;
                    fold(acc, &s.id, old, &s.state);
                } else {
                    keys.push((hash(&self.hasher, &s.id), i as u32));
                }
            }
            let keys = sort_by_hash(keys);
            let mut kept: Vec<(u64, u32)> = Vec::with_capacity(keys.len());
            let mut run = 0; // where the kept holders with the current hash start
            for &(h, i) in &keys {
                let s = &bucket[i as usize];
                if kept.last().is_none_or(|&(last, _)| last != h) {
                    run = kept.len();
                }
                let dup = kept[run..].iter_mut().find(|(_, k)| bucket[*k as usize].id == s.id);
                match dup {
                    Some((_, k)) => {
                        fold(acc, &s.id, Some(bucket[*k as usize].state), &s.state);
                        *k = i;
                    }
                    None => {
                        fold(acc, &s.id, None, &s.state);
                        kept.push((h, i));
                    }
                }
            }
            drop(keys);
            (inner.slots, inner.homes) =
                lay_out_in(slots_for(kept.len()), || kept.iter().map(|&(h, i)| (h, bucket[i as usize])));
            inner.used = kept.len();
        }
        let after = inner.used + usize::from(inner.zero_present);
        self.len.fetch_add(after - before, Ordering::Relaxed);
    }
}

/// A bulk fill: holders are first sorted into their shards, then each
/// shard is sized once for all of its holders and filled while it is in
/// the cache, on several threads. The result is the same as inserting the
/// holders one by one in order (a later duplicate replaces an earlier one).
pub struct Bulk<'a> {
    table: &'a HolderTable,
    buckets: Vec<Vec<Slot>>,
}

impl Bulk<'_> {
    pub fn push(&mut self, id: HolderId, state: HolderState) {
        let h = hash(&self.table.hasher, &id);
        let shard = h as usize & (self.buckets.len() - 1);
        self.buckets[shard].push(Slot { id, state });
    }

    /// Inserts everything pushed. `fold` runs for every holder, in order
    /// within its shard, under the shard's write lock with the state it
    /// replaced, each thread folding into its own accumulator; the
    /// accumulators are returned.
    pub fn finish<A: Default + Send>(
        self,
        fold: impl Fn(&mut A, &HolderId, Option<HolderState>, &HolderState) + Sync,
    ) -> Vec<A> {
        let total: usize = self.buckets.iter().map(Vec::len).sum();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(1 + total / 65_536).min(16);
        let table = self.table;
        let work = Mutex::new(self.buckets.into_iter().enumerate());
        let run = || {
            let mut acc = A::default();
            loop {
                let next = work.lock().unwrap_or_else(PoisonError::into_inner).next();
                let Some((shard, bucket)) = next else { break };
                if !bucket.is_empty() {
                    table.fill(shard, &bucket, &mut acc, &fold);
                }
            }
            acc
        };
        if threads <= 1 {
            return vec![run()];
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads).map(|_| scope.spawn(run)).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        })
    }
}

#[cfg(test)]
impl HolderTable {
    /// Every holder in hash order, at or after its home with no empty slot
    /// in between; the counts right.
    fn check(&self) {
        let mut total = 0;
        for shard in self.shards.iter() {
            let inner = shard.read();
            let mut last = 0;
            let mut used = 0;
            for (i, s) in inner.slots.iter().enumerate().filter(|(_, s)| s.id.0 != EMPTY_ID) {
                let h = hash(&self.hasher, &s.id);
                assert!(h >= last, "out of hash order");
                last = h;
                let home = home(h, inner.homes);
                assert!(home <= i, "before its home");
                assert!(inner.slots[home..i].iter().all(|s| s.id.0 != EMPTY_ID), "a gap after its home");
                used += 1;
            }
            assert_eq!(used, inner.used);
            total += used + usize::from(inner.zero_present);
        }
        assert_eq!(total, self.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::color::Color;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn id(i: u64) -> HolderId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&i.to_le_bytes());
        b[8..].copy_from_slice(&(i ^ 0x5555).to_be_bytes());
        HolderId(b)
    }

    fn st(i: u32) -> HolderState {
        HolderState::new(Color::Green, u64::from(i), Some(u64::from(i) + 1))
    }

    #[test]
    fn sort_by_hash_sorts() {
        let keys: Vec<(u64, u32)> =
            (0..10_000u32).map(|i| (crate::population::mix64(u64::from(i % 7000)), i)).collect();
        let mut want = keys.clone();
        want.sort_unstable();
        assert_eq!(sort_by_hash(keys), want);
        assert!(sort_by_hash(Vec::new()).is_empty());
        assert_eq!(sort_by_hash(vec![(u64::MAX, 1), (0, 2)]), vec![(0, 2), (u64::MAX, 1)]);
    }

    #[test]
    fn slot_is_36_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 36);
    }

    #[test]
    fn insert_get_update() {
        let t = HolderTable::default();
        assert!(t.get(&id(1)).is_none());
        assert!(t.get_mut(&id(1)).is_none());
        assert_eq!(t.insert(id(1), st(1)), None);
        assert_eq!(t.insert(id(1), st(2)), Some(st(1)));
        assert_eq!(t.get(&id(1)), Some(st(2)));
        t.get_mut(&id(1)).unwrap().set_health_at(77);
        assert_eq!(t.get(&id(1)).unwrap().health_at(), Some(77));
        let r = t.get_or_insert_with(id(2), || st(9));
        assert_eq!(*r, st(9));
        drop(r);
        assert_eq!(*t.get_or_insert_with(id(2), || st(10)), st(9));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn grows_past_its_limit_and_keeps_everything() {
        let t = HolderTable::with_capacity(10_000);
        let before = t.slots();
        for i in 0..200_000 {
            t.insert(id(i), st(i as u32));
        }
        assert!(t.slots() > before);
        assert_eq!(t.len(), 200_000);
        for i in 0..200_000 {
            assert_eq!(t.get(&id(i)), Some(st(i as u32)), "holder {i}");
        }
        // Sized for FILL, never past LIMIT.
        assert!(t.len() as f64 <= LIMIT * t.slots() as f64);
        t.check();
        let mut seen = 0;
        t.for_each(|_, _| seen += 1);
        assert_eq!(seen, 200_000);
    }

    #[test]
    fn with_capacity_does_not_grow() {
        let t = HolderTable::with_capacity(1_000_000);
        let before = t.slots();
        for i in 0..1_000_000 {
            t.insert(id(i), st(1));
        }
        // At a million (490 a shard) one shard in a thousand may pass its
        // limit and grow.
        assert!(t.slots() as f64 <= before as f64 * 1.002, "{} slots after, {before} before", t.slots());
        let load = t.len() as f64 / t.slots() as f64;
        assert!(load > 0.8, "{load}");
    }

    #[test]
    fn the_all_zero_id_is_a_holder() {
        let t = HolderTable::default();
        let zero = HolderId([0; 16]);
        assert!(t.get(&zero).is_none());
        assert_eq!(t.insert(zero, st(3)), None);
        assert_eq!(t.get(&zero), Some(st(3)));
        assert_eq!(t.insert(zero, st(4)), Some(st(3)));
        t.get_mut(&zero).unwrap().set_health_at(5);
        assert_eq!(t.get(&zero).unwrap().health_at(), Some(5));
        for i in 1..1000 {
            t.insert(id(i), st(1));
        }
        assert_eq!(t.len(), 1000);
        let mut zeros = 0;
        t.for_each(|h, s| {
            if *h == zero {
                zeros += 1;
                assert_eq!(s.health_at(), Some(5));
            }
        });
        assert_eq!(zeros, 1);
        let b = HolderTable::default();
        let mut bulk = b.bulk(2);
        bulk.push(zero, st(8));
        bulk.push(id(1), st(9));
        bulk.finish(|_: &mut (), _, _, _| {});
        assert_eq!(b.get(&zero), Some(st(8)));
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn writers_of_one_holder_are_serialised() {
        let t = Arc::new(HolderTable::default());
        t.insert(id(7), HolderState::new(Color::Green, 0, None));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let mut r = t.get_mut(&id(7)).unwrap();
                        let n = r.passback().2;
                        r.enter(1, n + 1);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(t.get(&id(7)).unwrap().passback().2, 80_000);
    }

    #[test]
    fn readers_see_every_holder_while_shards_grow() {
        let t = Arc::new(HolderTable::default());
        for i in 0..1000 {
            t.insert(id(i), st(i as u32));
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (t, stop) = (t.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut rounds = 0;
                    while !stop.load(Ordering::Relaxed) || rounds == 0 {
                        for i in 0..1000 {
                            assert_eq!(t.get(&id(i)), Some(st(i as u32)));
                        }
                        rounds += 1;
                    }
                })
            })
            .collect();
        for i in 1000..300_000 {
            t.insert(id(i), st(i as u32));
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(t.len(), 300_000);
    }

    #[test]
    fn bulk_fill_sizes_shards_to_their_count() {
        let t = HolderTable::default();
        t.insert(id(5), st(1));
        let mut b = t.bulk(200_000);
        for i in 0..200_000 {
            b.push(id(i), st(i as u32 + 1));
        }
        // A later duplicate wins, as with one-by-one inserts.
        b.push(id(3), st(999));
        let replaced: usize = b
            .finish(|n: &mut usize, _, old, _| {
                *n += usize::from(old.is_some());
            })
            .into_iter()
            .sum();
        assert_eq!(replaced, 2);
        assert_eq!(t.len(), 200_000);
        assert_eq!(t.get(&id(3)), Some(st(999)));
        assert_eq!(t.get(&id(5)), Some(st(6)));
        assert_eq!(t.get(&id(199_999)), Some(st(200_000)));
        let load = t.len() as f64 / t.slots() as f64;
        assert!(load > 0.88 && load <= FILL, "{load}");
        t.check();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Update(u8, u32),
        Upsert(u8, u32),
        Get(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Update(k, v)),
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Upsert(k, v)),
            any::<u8>().prop_map(Op::Get),
        ]
    }

    /// Key 0 is the all-zero id; the others differ in their last byte.
    fn key(k: u8) -> HolderId {
        let mut b = [0u8; 16];
        b[15] = k;
        HolderId(b)
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(shards in 0..3u32, ops in proptest::collection::vec(op(), 0..400), bulk in proptest::collection::vec((any::<u8>(), any::<u32>()), 0..300)) {
            // One to four shards, so that clusters, shifts and growth happen.
            let t = HolderTable::with_shards(1 << shards, 0);
            let mut model: HashMap<HolderId, HolderState> = HashMap::new();
            let mut b = t.bulk(bulk.len());
            for &(k, v) in &bulk {
                b.push(key(k), st(v));
                model.insert(key(k), st(v));
            }
            let replaced: usize = b.finish(|n: &mut usize, _, old, _| *n += usize::from(old.is_some())).into_iter().sum();
            prop_assert_eq!(replaced, bulk.len() - model.len());
            for o in ops {
                match o {
                    Op::Insert(k, v) => prop_assert_eq!(t.insert(key(k), st(v)), model.insert(key(k), st(v))),
                    Op::Update(k, v) => {
                        let got = t.get_mut(&key(k)).map(|mut r| { r.set_health_at(u64::from(v)); *r });
                        let want = model.get_mut(&key(k)).map(|s| { s.set_health_at(u64::from(v)); *s });
                        prop_assert_eq!(got, want);
                    }
                    Op::Upsert(k, v) => {
                        let got = *t.get_or_insert_with(key(k), || st(v));
                        prop_assert_eq!(got, *model.entry(key(k)).or_insert_with(|| st(v)));
                    }
                    Op::Get(k) => prop_assert_eq!(t.get(&key(k)), model.get(&key(k)).copied()),
                }
                prop_assert_eq!(t.len(), model.len());
            }
            t.check();
            let mut all = HashMap::new();
            t.for_each(|h, s| { all.insert(*h, *s); });
            prop_assert_eq!(all, model);
        }
    }
}
