//! The state file: every holder's state in one checksummed binary file.
//!
//! `healthgate seed` writes one from a synthetic [`Population`]; `serve`
//! loads one at start. Layout (little-endian):
//!
//! ```text
//! magic "HGSTATE\0" | version u32 = 2 | epoch u64 | holders u64
//! holders × (id [16] | state 5 × u32)            36 bytes each
//! schedules u64
//! schedules × (id [16] | n u8 | n × (until u32 | colour u8))
//! lsn u64 | feed sequence u64                     (replay the log after lsn)
//! revocations u64
//! revocations × (target u8: 1 holder, 2 serial | id [16] | expires u64, 0 = never)
//! crc32 u32 over everything before it
//! ```
//!
//! Written to a temporary file, fsynced, renamed over the old one and the
//! directory fsynced, so a crash leaves either the old file or the new one.

use crate::clock::UnixSecs;
use crate::codec::TARGET_LEN;
use crate::color::Color;
use crate::durability::gentle::GentleFile;
use crate::feed::{Revocation, Target};
use crate::holder::HolderId;
use crate::population::Population;
use crate::state::{HolderState, Step, MAX_STEPS};
use crate::store::Store;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

const MAGIC: &[u8; 8] = b"HGSTATE\0";
const VERSION: u32 = 2;
const RECORD: usize = 36;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a healthgate state file (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("{path}: unsupported state file version {version}")]
    Version { path: PathBuf, version: u32 },
    #[error("{path}: corrupt state file: {what}")]
    Corrupt { path: PathBuf, what: &'static str },
}

/// What a loaded file said besides the holders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub epoch: u64,
    pub holders: u64,
    pub meta: Meta,
}

/// The rest of the state that a snapshot carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// Every log record up to this LSN is reflected in the file.
    pub lsn: u64,
    /// The authority feed's last applied sequence.
    pub feed_seq: u64,
    pub revocations: Vec<Revocation>,
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// Writes a state file atomically. `holders` yields every holder once;
/// `count` must match it (checked).
fn write_atomic<'a>(
    path: &Path,
    epoch: u64,
    count: u64,
    holders: impl Iterator<Item = (HolderId, HolderState)>,
    schedules: impl Iterator<Item = (HolderId, &'a [Step])>,
    meta: &Meta,
    before_rename: impl FnOnce() -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_owned(), source };
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(io)?;
    let file = GentleFile::new(file);
    let mut w = CrcWriter { inner: BufWriter::with_capacity(1 << 20, file), crc: crc32fast::Hasher::new() };
    w.write_all(MAGIC).map_err(io)?;
    w.write_all(&VERSION.to_le_bytes()).map_err(io)?;
    w.write_all(&epoch.to_le_bytes()).map_err(io)?;
    w.write_all(&count.to_le_bytes()).map_err(io)?;
    let mut written = 0u64;
    let mut rec = [0u8; RECORD];
    for (id, st) in holders {
        rec[..16].copy_from_slice(&id.0);
        for (i, p) in st.to_parts().iter().enumerate() {
            rec[16 + 4 * i..20 + 4 * i].copy_from_slice(&p.to_le_bytes());
        }
        w.write_all(&rec).map_err(io)?;
        written += 1;
    }
    if written != count {
        return Err(SnapshotError::Corrupt { path: path.to_owned(), what: "holder count changed while writing" });
    }
    let schedules: Vec<_> = schedules.collect();
    w.write_all(&(schedules.len() as u64).to_le_bytes()).map_err(io)?;
    for (id, steps) in schedules {
        w.write_all(&id.0).map_err(io)?;
        w.write_all(&[steps.len() as u8]).map_err(io)?;
        for s in steps {
            w.write_all(&u32::try_from(s.until).unwrap_or(u32::MAX).to_le_bytes()).map_err(io)?;
            w.write_all(&[s.then as u8]).map_err(io)?;
        }
    }
    w.write_all(&meta.lsn.to_le_bytes()).map_err(io)?;
    w.write_all(&meta.feed_seq.to_le_bytes()).map_err(io)?;
    w.write_all(&(meta.revocations.len() as u64).to_le_bytes()).map_err(io)?;
    for r in &meta.revocations {
        w.write_all(&r.target.to_disk()).map_err(io)?;
        w.write_all(&r.expires.unwrap_or(0).to_le_bytes()).map_err(io)?;
    }
    let crc = w.crc.clone().finalize();
    let mut inner = w.inner;
    inner.write_all(&crc.to_le_bytes()).map_err(io)?;
    let file = inner.into_inner().map_err(|e| io(e.into_error()))?.into_inner().map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    before_rename()?;
    std::fs::rename(&tmp, path).map_err(io)?;
    sync_dir(path).map_err(io)
}

/// Makes a rename durable: fsync the directory that holds `path`.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Writes a synthetic population: every holder with its drawn colour and a
/// health record at `at` (so that greens pass until the region's window ends).
pub fn write_population(path: &Path, pop: &Population, at: UnixSecs) -> Result<(), SnapshotError> {
    let holders = pop.iter().map(|(id, c)| (id, HolderState::new(c, at, Some(at))));
    write_atomic(path, 1, pop.size, holders, std::iter::empty(), &Meta::default(), || Ok(()))
}

/// Writes the whole store. Concurrent writers may change entries while it
/// runs; each holder is written as one consistent entry. `before_rename`
/// runs once the data is in the temporary file and fsynced: the gateway
/// waits there until everything the file may contain is durable in the log.
pub fn write_store(
    path: &Path,
    store: &Store,
    meta: &Meta,
    before_rename: impl FnOnce() -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let mut holders = Vec::with_capacity(store.len());
    let mut schedules = Vec::new();
    store.for_each(|id, st, steps| {
        holders.push((*id, *st));
        if !steps.is_empty() {
            schedules.push((*id, steps.to_vec()));
        }
    });
    write_atomic(
        path,
        store.epoch(),
        holders.len() as u64,
        holders.into_iter(),
        schedules.iter().map(|(id, s)| (*id, s.as_slice())),
        meta,
        before_rename,
    )
}

/// Holder records read (and checksummed) at a time.
const CHUNK: usize = 1 << 16;

/// Loads a state file into `store` (which should be empty). The checksum is
/// verified before the function returns success; on error the store may
/// hold part of the file and must be discarded.
///
/// The holder records are read in large chunks, sorted into the table's
/// shards as they come, and inserted shard by shard on every core once
/// they are all read (the store's [`crate::store::Loading`]): each shard is
/// sized once for its exact count and filled while it is in the cache.
pub fn load(path: &Path, store: &Store) -> Result<Loaded, SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_owned(), source };
    let file = File::open(path).map_err(io)?;
    // The file's length bounds how many records it can hold, so a damaged
    // count cannot make the load reserve memory for records that are not
    // there.
    let len = file.metadata().map_err(io)?.len();
    load_sized(BufReader::with_capacity(1 << 20, file), path, store, len / RECORD as u64)
}

/// [`load`] from any reader; `path` names the file in errors.
pub fn load_from(reader: impl Read, path: &Path, store: &Store) -> Result<Loaded, SnapshotError> {
    load_sized(reader, path, store, CHUNK as u64)
}

/// [`load`] reserving room for at most `room` holders before they are read.
fn load_sized(reader: impl Read, path: &Path, store: &Store, room: u64) -> Result<Loaded, SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_owned(), source };
    let corrupt = |what| SnapshotError::Corrupt { path: path.to_owned(), what };
    let mut r = CrcReader { inner: reader, crc: crc32fast::Hasher::new() };
    let mut header = [0u8; 28];
    r.read_exact(&mut header).map_err(|_| corrupt("truncated header"))?;
    if &header[..8] != MAGIC {
        return Err(SnapshotError::BadMagic { path: path.to_owned() });
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(SnapshotError::Version { path: path.to_owned(), version });
    }
    let epoch = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let count = u64::from_le_bytes(header[20..28].try_into().expect("8 bytes"));
    let mut loading = store.loading(count.min(room) as usize);
    let mut buf = vec![0u8; RECORD * (count.min(CHUNK as u64) as usize)];
    let mut left = count;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        let chunk = &mut buf[..n * RECORD];
        r.read_exact(chunk).map_err(|_| corrupt("truncated holder records"))?;
        for rec in chunk.chunks_exact(RECORD) {
            let id = HolderId(rec[..16].try_into().expect("16 bytes"));
            let parts: [u32; 5] =
                std::array::from_fn(|i| u32::from_le_bytes(rec[16 + 4 * i..20 + 4 * i].try_into().expect("4 bytes")));
            let st = HolderState::from_parts(parts).ok_or_else(|| corrupt("invalid holder state"))?;
            loading.insert(id, st);
        }
        left -= n as u64;
    }
    drop(buf);
    loading.finish();
    let mut n = [0u8; 8];
    r.read_exact(&mut n).map_err(|_| corrupt("truncated schedule count"))?;
    for _ in 0..u64::from_le_bytes(n) {
        let mut head = [0u8; 17];
        r.read_exact(&mut head).map_err(|_| corrupt("truncated schedule"))?;
        let id = HolderId(head[..16].try_into().expect("16 bytes"));
        let len = usize::from(head[16]);
        if len == 0 || len > MAX_STEPS {
            return Err(corrupt("bad schedule length"));
        }
        let mut steps = Vec::with_capacity(len);
        for _ in 0..len {
            let mut s = [0u8; 5];
            r.read_exact(&mut s).map_err(|_| corrupt("truncated step"))?;
            let until = u64::from(u32::from_le_bytes(s[..4].try_into().expect("4 bytes")));
            steps.push(Step { until, then: Color::try_from(s[4]).map_err(|_| corrupt("bad step colour"))? });
        }
        if crate::state::validate_steps(&steps).is_err() {
            return Err(corrupt("steps out of order"));
        }
        let mut st = None;
        store.read(&id, 0, |v| st = v.map(|v| *v.state));
        let st = st.ok_or_else(|| corrupt("schedule for a holder not in the file"))?;
        store.insert(id, st, steps);
    }
    let mut meta = Meta::default();
    let mut n = [0u8; 24];
    r.read_exact(&mut n).map_err(|_| corrupt("truncated log position"))?;
    meta.lsn = u64::from_le_bytes(n[..8].try_into().expect("8 bytes"));
    meta.feed_seq = u64::from_le_bytes(n[8..16].try_into().expect("8 bytes"));
    for _ in 0..u64::from_le_bytes(n[16..24].try_into().expect("8 bytes")) {
        let mut e = [0u8; 25];
        r.read_exact(&mut e).map_err(|_| corrupt("truncated revocation"))?;
        let target: [u8; TARGET_LEN] = e[..TARGET_LEN].try_into().expect("17 bytes");
        let target = Target::from_disk(&target).map_err(|_| corrupt("bad revocation target"))?;
        let expires = u64::from_le_bytes(e[17..25].try_into().expect("8 bytes"));
        meta.revocations.push(Revocation { target, expires: (expires != 0).then_some(expires) });
    }
    let computed = r.crc.clone().finalize();
    let mut crc = [0u8; 4];
    r.inner.read_exact(&mut crc).map_err(|_| corrupt("missing checksum"))?;
    if u32::from_le_bytes(crc) != computed {
        return Err(corrupt("checksum mismatch"));
    }
    if r.inner.read(&mut [0u8; 1]).map_err(io)? != 0 {
        return Err(corrupt("trailing bytes"));
    }
    store.set_epoch(epoch.max(1));
    Ok(Loaded { epoch, holders: count, meta })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::population::Mix;

    #[test]
    fn population_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pop.hgs");
        let pop = Population { seed: 3, size: 1000, mix: Mix::default() };
        write_population(&path, &pop, 1_000).unwrap();
        let store = Store::default();
        assert_eq!(load(&path, &store).unwrap().holders, 1000);
        for i in [0, 1, 999] {
            store.read(&pop.holder(i), 1_000, |v| {
                let v = v.unwrap();
                assert_eq!(v.color, pop.color(i));
                assert_eq!(v.state.health_at(), Some(1_000));
            });
        }
    }

    #[test]
    fn store_round_trip_with_schedules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.hgs");
        let s = Store::default();
        let h = HolderId([9; 16]);
        s.insert(h, HolderState::new(Color::Red, 5, None), vec![Step { until: 50, then: Color::Yellow }]);
        s.insert(HolderId([8; 16]), HolderState::new(Color::Green, 5, Some(6)), vec![]);
        s.bump_epoch();
        let meta = Meta {
            lsn: 42,
            feed_seq: 7,
            revocations: vec![Revocation { target: Target::Serial(5), expires: Some(9) }],
        };
        write_store(&path, &s, &meta, || Ok(())).unwrap();
        let back = Store::default();
        let loaded = load(&path, &back).unwrap();
        assert_eq!(loaded.epoch, s.epoch());
        assert_eq!(loaded.meta, meta);
        back.read(&h, 49, |v| assert_eq!(v.unwrap().steps, &[Step { until: 50, then: Color::Yellow }]));
        back.read(&h, 50, |v| assert_eq!(v.unwrap().color, Color::Yellow));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pop.hgs");
        write_population(&path, &Population { seed: 1, size: 20, mix: Mix::default() }, 1).unwrap();
        let good = std::fs::read(&path).unwrap();
        for at in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            assert!(load(&path, &Store::default()).is_err(), "flip at {at} went unnoticed");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(load(&path, &Store::default()).is_err());
    }
}
