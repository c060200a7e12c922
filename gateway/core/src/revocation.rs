//! Revocations: an exact set behind a Bloom filter.
//!
//! The scan path asks the filter first (a few SipHash rounds, no lock: the
//! whole [`Revocations`] value is immutable and swapped whole when the
//! authority sends a batch) and consults the exact sets only on a filter
//! hit, so a false positive costs one hash-map probe and never denies a
//! valid code. The same filter is exported to offline checkpoint apps in
//! the format of docs/FEED.md.

use crate::clock::UnixSecs;
use crate::feed::{Revocation, Target};
use crate::holder::HolderId;
use bloomfilter::Bloom;
use bytes::Bytes;
use std::collections::HashMap;

/// The filter's item for a target: one tag byte and the id, 17 bytes.
fn item(t: Target) -> [u8; 17] {
    let mut b = [0u8; 17];
    match t {
        Target::Holder(h) => {
            b[0] = b'h';
            b[1..].copy_from_slice(&h.0);
        }
        Target::Serial(s) => {
            b[0] = b's';
            b[1..9].copy_from_slice(&s.to_be_bytes());
        }
    }
    b
}

/// Filter sizing, from configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterSettings {
    /// The filter is sized for at least this many entries.
    pub capacity: usize,
    /// Target false-positive rate at capacity.
    pub fp_rate: f64,
}

impl Default for FilterSettings {
    fn default() -> Self {
        FilterSettings { capacity: 100_000, fp_rate: 0.001 }
    }
}

/// What the filter says about a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Neither the holder nor the serial is in the filter (the usual case).
    Clear,
    /// The filter said maybe and the exact sets said no.
    FalsePositive,
    Revoked,
}

pub struct Revocations {
    /// Moves on every applied batch; the export's ETag.
    version: u64,
    /// Expiry by target (`None`: never).
    entries: HashMap<Target, Option<UnixSecs>>,
    filter: Bloom<[u8; 17]>,
    /// The filter's hash seed, chosen by the caller once (this crate draws
    /// no randomness) and kept across versions.
    seed: [u8; 32],
    /// The export body, built once per version.
    export: Bytes,
}

impl Revocations {
    /// An empty set whose filter hashes with `seed` (random in the gateway,
    /// so that nobody can aim codes at the filter's false positives).
    pub fn empty(settings: FilterSettings, seed: [u8; 32]) -> Self {
        Self::build(0, HashMap::new(), settings, seed)
    }

    fn build(
        version: u64,
        entries: HashMap<Target, Option<UnixSecs>>,
        settings: FilterSettings,
        seed: [u8; 32],
    ) -> Self {
        let items = entries.len().max(settings.capacity).max(1);
        let mut filter =
            Bloom::new_for_fp_rate_with_seed(items, settings.fp_rate, &seed).expect("positive size and rate in (0, 1)");
        for t in entries.keys() {
            filter.set(&item(*t));
        }
        let export = export(version, &filter);
        Revocations { version, entries, filter, seed, export }
    }

    /// A new set with `batch` added and entries expired at `now` dropped.
    pub fn with(&self, batch: &[Revocation], now: UnixSecs, version: u64, settings: FilterSettings) -> Self {
        let mut entries: HashMap<_, _> =
            self.entries.iter().filter(|(_, e)| e.is_none_or(|e| e > now)).map(|(t, e)| (*t, *e)).collect();
        for r in batch {
            entries.insert(r.target, r.expires);
        }
        Self::build(version, entries, settings, self.seed)
    }

    /// Rebuilt with the same entries (after a filter-settings change).
    pub fn resized(&self, settings: FilterSettings) -> Self {
        Self::build(self.version, self.entries.clone(), settings, self.seed)
    }

    fn exact(&self, t: Target, now: UnixSecs) -> bool {
        self.entries.get(&t).is_some_and(|e| e.is_none_or(|e| now < e))
    }

    /// Is this holder, or this code, revoked at `now`?
    /// Costs nothing while the set is empty, else two filter probes (the
    /// holder's item and the serial's: a Bloom filter answers for one key
    /// at a time) and an exact look-up only on a hit.
    pub fn check(&self, holder: HolderId, serial: u64, now: UnixSecs) -> Check {
        if self.entries.is_empty() {
            return Check::Clear;
        }
        let (h, s) = (Target::Holder(holder), Target::Serial(serial));
        let maybe_h = self.filter.check(&item(h));
        let maybe_s = self.filter.check(&item(s));
        if !maybe_h && !maybe_s {
            return Check::Clear;
        }
        if (maybe_h && self.exact(h, now)) || (maybe_s && self.exact(s, now)) {
            Check::Revoked
        } else {
            Check::FalsePositive
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn export(&self) -> Bytes {
        self.export.clone()
    }
    pub fn entries(&self) -> impl Iterator<Item = Revocation> + '_ {
        self.entries.iter().map(|(t, e)| Revocation { target: *t, expires: *e })
    }
}

/// Export layout (docs/FEED.md): big-endian header, then the bitmap.
///
/// ```text
/// "HGRF" | format u8 = 1 | version u64 | k u32 | bits u64 | seed [32] | bitmap [bits / 8]
/// ```
fn export(version: u64, filter: &Bloom<[u8; 17]>) -> Bytes {
    // The crate's own serialisation is its header (45 bytes: format, byte
    // length, k, seed) followed by the bitmap; we lay out our documented
    // header and append the bitmap part.
    let raw = filter.as_slice();
    let bitmap = &raw[raw.len() - (filter.len() / 8) as usize..];
    let mut out = Vec::with_capacity(57 + bitmap.len());
    out.extend_from_slice(b"HGRF");
    out.push(1);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&filter.number_of_hash_functions().to_be_bytes());
    out.extend_from_slice(&filter.len().to_be_bytes());
    out.extend_from_slice(&filter.seed());
    out.extend_from_slice(bitmap);
    Bytes::from(out)
}

/// A reader of the export format written from docs/FEED.md alone (SipHash-
/// 1-3 over the item with its length prefix, double hashing): the test that
/// the document is enough to implement a client.
pub mod reader {
    use std::hash::Hasher;

    /// The most hash functions a filter may declare. An optimal filter has
    /// about -log2(false-positive rate) of them (30 at one in a billion);
    /// a declared count in the millions would make every lookup a hang
    /// (found by fuzzing: `revocation_filter`).
    pub const MAX_HASH_FUNCTIONS: u32 = 1024;

    pub struct ExportedFilter {
        pub version: u64,
        k: u32,
        bits: u64,
        seed: [u8; 32],
        bitmap: Vec<u8>,
    }

    impl ExportedFilter {
        pub fn parse(b: &[u8]) -> Option<Self> {
            if b.len() < 57 || &b[..4] != b"HGRF" || b[4] != 1 {
                return None;
            }
            let version = u64::from_be_bytes(b[5..13].try_into().ok()?);
            let k = u32::from_be_bytes(b[13..17].try_into().ok()?);
            let bits = u64::from_be_bytes(b[17..25].try_into().ok()?);
            let seed: [u8; 32] = b[25..57].try_into().ok()?;
            let bitmap = b[57..].to_vec();
            (bits > 0 && bitmap.len() as u64 * 8 == bits && k > 0 && k <= MAX_HASH_FUNCTIONS)
                .then_some(ExportedFilter { version, k, bits, seed, bitmap })
        }

        fn sip(&self, key: &[u8], item: &[u8]) -> u64 {
            let mut h = siphasher::sip::SipHasher13::new_with_key(key.try_into().expect("16 bytes"));
            h.write(&(item.len() as u64).to_le_bytes());
            h.write(item);
            h.finish()
        }

        pub fn may_contain(&self, item: &[u8]) -> bool {
            let h0 = self.sip(&self.seed[..16], item);
            let h1 = self.sip(&self.seed[16..], item);
            (0..self.k).all(|i| {
                let h = match i {
                    0 => h0,
                    1 => h1,
                    _ => h0.wrapping_add(u64::from(i).wrapping_mul(h1)) % 0xFFFF_FFFF_FFFF_FFC5,
                };
                let bit = h % self.bits;
                self.bitmap[(bit / 8) as usize] & (1 << (bit % 8)) != 0
            })
        }
    }

    /// The 17-byte item for a holder id.
    pub fn holder_item(h: &[u8; 16]) -> [u8; 17] {
        let mut b = [b'h'; 17];
        b[1..].copy_from_slice(h);
        b
    }

    /// The 17-byte item for a serial.
    pub fn serial_item(s: u64) -> [u8; 17] {
        let mut b = [0u8; 17];
        b[0] = b's';
        b[1..9].copy_from_slice(&s.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzzing (`revocation_filter`) found a filter declaring 66 million
    /// hash functions over an all-ones bitmap: every lookup spun through
    /// all of them. Such a filter is refused when read.
    #[test]
    fn fuzz_revocation_filter_huge_hash_count_is_refused_not_a_hang() {
        let found: &[u8] = &[
            72, 71, 82, 70, 1, 0, 0, 0, 0, 0, 0, 0, 3, 246, 255, 39, 3, 0, 0, 0, 0, 0, 0, 0, 64, 0, 1, 0, 3, 4, 5, 6,
            7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 39, 22, 23, 24, 25, 26, 9, 10, 11, 12, 0, 0, 255, 255,
            255, 255, 255, 255, 90,
        ];
        assert!(reader::ExportedFilter::parse(found).is_none());
        // The same filter with the largest count allowed is read; with every
        // bit set, an item "may be in it" after all 1 024 probes.
        let mut ok = found.to_vec();
        ok[13..17].copy_from_slice(&reader::MAX_HASH_FUNCTIONS.to_be_bytes());
        ok[57..].fill(0xff);
        let f = reader::ExportedFilter::parse(&ok).expect("a filter");
        assert!(f.may_contain(&reader::holder_item(&[1; 16])));
    }

    fn rev(t: Target, expires: Option<UnixSecs>) -> Revocation {
        Revocation { target: t, expires }
    }

    #[test]
    fn revoke_by_holder_and_serial_with_expiry() {
        let s = FilterSettings::default();
        let h = HolderId([3; 16]);
        let r = Revocations::empty(s, [7; 32]).with(
            &[rev(Target::Holder(h), Some(100)), rev(Target::Serial(9), None)],
            0,
            1,
            s,
        );
        assert_eq!(r.check(h, 1, 99), Check::Revoked);
        assert_ne!(r.check(h, 1, 100), Check::Revoked, "expired entries no longer revoke");
        assert_eq!(r.check(HolderId([4; 16]), 9, 0), Check::Revoked);
        assert_eq!(r.check(HolderId([4; 16]), 10, 0), Check::Clear);
        // Rebuilding after expiry drops the entry.
        let r2 = r.with(&[], 100, 2, s);
        assert_eq!(r2.len(), 1);
    }

    #[test]
    fn a_saturated_filter_gives_false_positives_never_denials() {
        let tiny = FilterSettings { capacity: 1, fp_rate: 0.5 };
        let batch: Vec<_> = (0..20u8).map(|i| rev(Target::Holder(HolderId([i; 16])), None)).collect();
        let r = Revocations::empty(tiny, [7; 32]).with(&batch, 0, 1, tiny);
        let mut fps = 0;
        for i in 100..400u64 {
            match r.check(HolderId([(i % 200) as u8 + 50; 16]), i, 0) {
                Check::Revoked => panic!("a valid code was denied"),
                Check::FalsePositive => fps += 1,
                Check::Clear => {}
            }
        }
        assert!(fps > 0, "the tiny filter should produce false positives");
    }

    #[test]
    fn the_documented_reader_agrees_with_the_filter() {
        let s = FilterSettings { capacity: 1000, fp_rate: 0.01 };
        let batch: Vec<_> = (0..50u64)
            .map(|i| rev(if i % 2 == 0 { Target::Serial(i) } else { Target::Holder(HolderId([i as u8; 16])) }, None))
            .collect();
        let r = Revocations::empty(s, [7; 32]).with(&batch, 0, 5, s);
        let exported = reader::ExportedFilter::parse(&r.export()).unwrap();
        assert_eq!(exported.version, 5);
        for i in 0..200u64 {
            let hid = HolderId([i as u8; 16]);
            assert_eq!(exported.may_contain(&reader::holder_item(&hid.0)), r.filter.check(&item(Target::Holder(hid))));
            assert_eq!(exported.may_contain(&reader::serial_item(i)), r.filter.check(&item(Target::Serial(i))));
        }
        for e in &batch {
            let it = item(e.target);
            assert!(exported.may_contain(&it));
        }
    }
}
