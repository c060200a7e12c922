//! The tracing index: every passage registration (rule 13) on disk, found by
//! checkpoint or by holder.
//!
//! Contact tracing asks two questions: "who passed checkpoint C between t0
//! and t1?" and "where was holder H over the last 28 days?". [`VisitIndex`]
//! answers both with one range scan each, from an embedded [redb] file. The
//! gateway's write-ahead log (`wal`) is the source of truth for visits; this
//! index is derived from it, fed in batches by the log's applier, and can be
//! rebuilt from the log at any time. Retention calls
//! [`VisitIndex::purge_before`].
//!
//! # Tables
//!
//! | table                  | key                              | value              |
//! |------------------------|----------------------------------|--------------------|
//! | `visits_by_checkpoint` | (checkpoint bytes, at, lsn)      | the record (below) |
//! | `visits_by_holder`     | (at / 86 400, holder, at, lsn)   | checkpoint bytes   |
//! | `visits_meta`          | name                             | u64                |
//!
//! The record lives in `visits_by_checkpoint`, so the checkpoint question,
//! which returns the most rows, reads them in key order with no further
//! look-up. A holder question scans `visits_by_holder` and looks each row up
//! by its full key in `visits_by_checkpoint`; a holder has few visits a day,
//! so those look-ups stay few.
//!
//! `visits_by_holder` leads with the day because holder ids are random: keyed
//! by holder first, every insert would land on a random leaf of the whole
//! 28-day tree (a page copied and written per visit, and a cache miss once
//! the tree outgrows memory), and the daily purge would rewrite every leaf
//! too. Day first, inserts touch only today's part of the tree and the purge
//! drops whole old days from its front, at the price of one range scan per
//! day in a holder question (28 for the usual retention). The same order
//! drives the purge: the visits before a horizon are the front of
//! `visits_by_holder` (whole days, then the horizon's own day filtered by
//! time), and each one found there names its `visits_by_checkpoint` key, so
//! no third table is needed. The lsn, unique
//! per visit, ends every key
//! so two visits in the same second never collide, and orders them as the
//! log did. Checkpoints are stored as bytes, not `&str`, so that invalid
//! UTF-8 on disk becomes [`VisitError::Corrupt`] in this module rather than a
//! panic inside redb's decoder. `visits_meta` holds `schema` (the layout of
//! these tables, [`SCHEMA`]) and `indexed_lsn` (the high-water mark).
//!
//! Schema 1 had a third table, `visits_by_time` ((at, lsn) → checkpoint
//! bytes), written for every visit only to drive the purge. Schema 2 drops
//! it: a third of the B-tree inserts per visit. The other tables are laid
//! out exactly as in schema 1, so [`VisitIndex::open`] migrates a schema-1
//! file in place by deleting `visits_by_time` and writing schema 2; the
//! visits and the high-water mark are kept, so nothing has to be replayed
//! (which matters, since the log may already have discarded them). Any
//! other schema is [`VisitError::Schema`].
//!
//! # Record, version 1
//!
//! | bytes  | field                                                       |
//! |--------|-------------------------------------------------------------|
//! | 0      | version = 1                                                 |
//! | 1      | flags: bit 0 out, bit 1 pass, bit 2 temperature present     |
//! | 2      | reason, its code in `healthgate_core::codec`               |
//! | 3..19  | holder id                                                   |
//! | 19..23 | temperature in °C, f32 little-endian, only when bit 2 is set |
//!
//! 19 or 23 bytes. Unknown versions, unknown flag bits, unknown reasons and
//! wrong lengths are typed errors.
//!
//! # Durability
//!
//! The write-ahead log is fsynced before a scan is acknowledged; this index
//! is not, because it need not be: after a crash, recovery replays the log
//! from [`VisitIndex::indexed_lsn`] on, and [`VisitIndex::insert`] skips what
//! it already holds. So routine inserts commit with redb's
//! `Durability::None`: the pages are still written to the file, but nothing
//! waits for the disk. In redb 2 such a commit becomes durable only with the
//! next durable commit, and a crash rolls the file back to the last durable
//! one, high-water mark included, which is exactly the state recovery
//! expects. A durable commit (two fsyncs, with "quick repair") is made
//! at most every [`DURABLE_EVERY`], or after [`DURABLE_EVERY_COMMITS`]
//! commits or [`DURABLE_EVERY_VISITS`] visits, whichever comes first. Two
//! costs of `None` are bounded that way: redb frees the pages that a
//! copy-on-write commit replaced only at a durable commit, so the file would
//! otherwise grow without bound; and the replay after a crash is at most that
//! long. The time bound is what keeps the index off the log's acknowledgement
//! path: this file lives on the log's disk, and every fsync of it flushes the
//! device's cache under the log's own fdatasync. Counted in commits alone (one
//! every 64, as before), a commit per log batch meant a durable commit every
//! 32 ms at 2 000 scans/s, and the log's fsync p99 rose from 0.4 to 2 ms
//! (`scripts/bench-durability.sh`, docs/PERFORMANCE.md). The indexer also
//! paces its commits (see the indexer), so that the commit
//! bound is a backstop. Measured on the development machine, 1 M visits in
//! batches of 1 000: a durable commit for every batch indexed 32 k visits/s
//! into a 321 MB file; one every 32 batches 77 k/s into 516 MB;
//! redb grows the file in doubling steps, so sizes move in jumps.
//! Durable commits also save redb's allocator state ("quick repair"),
//! so reopening after a crash does not walk the whole file. The purge commits
//! every chunk durably, since reclaiming space is its whole point, and a
//! clean shutdown (dropping the index) makes a durable commit too. The only
//! promise to the log is [`VisitIndex::durable_lsn`]: the log may discard
//! records up to it, never beyond; [`VisitIndex::sync`] moves it forward on
//! demand. redb's `Durability::Eventual` is no help here: on Linux it fsyncs
//! exactly like `Immediate`.
//!
//! redb 2, not 4 (it needs a newer Rust than our MSRV; 3 is a move of its own). Files are
//! created in redb's v3 file format, which redb 3 and later open without an
//! upgrade step.

mod record;

use crate::clock::{self, UnixSecs};
use crate::policy::{Direction, Reason};
use crate::HolderId;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The layout of the tables. A build that changes a key or value type adds
/// a new number and a migration (or a rebuild from the log).
pub const SCHEMA: u64 = 2;

/// A durable commit at least this often (see the module doc): it bounds the
/// replay after a crash in time, and keeps the index's fsyncs rare beside
/// the log's.
pub const DURABLE_EVERY: Duration = Duration::from_secs(5);

/// A durable commit at least this often, counted in inserting commits: each
/// commit rewrites at least the root-to-leaf paths it touches (about 32 KiB),
/// so this bounds the space that waits to be freed when batches are small.
/// The indexer commits at most every `indexer::COMMIT_INTERVAL` (25 ms),
/// so at full pace this and [`DURABLE_EVERY`] come out the same.
pub const DURABLE_EVERY_COMMITS: u32 = 200;

/// A durable commit at least this often, counted in visits: it bounds the
/// replay after a crash, and the pages waiting to be freed when batches are
/// large (at most about one 4 KiB page per visit).
pub const DURABLE_EVERY_VISITS: u64 = 32_768;

/// Visits removed per purge transaction. A write transaction holds redb's
/// single writer lock; chunking keeps the log applier waiting for at most one
/// chunk, not for a whole day of visits.
pub const PURGE_CHUNK: usize = 10_000;

/// redb's page cache. Its default, 1 GiB, is sized for a database that is the
/// application; this one is a secondary index inside a gateway whose memory
/// belongs to the holder store. Queries touch recent pages, which this holds.
const CACHE_BYTES: usize = 256 << 20;

/// The longest checkpoint id, in bytes (checkpoint ids in config are short;
/// the bound keeps keys small and is checked before anything is written).
pub const MAX_CHECKPOINT_LEN: usize = 64;

/// The width of a `visits_by_holder` bucket. Part of [`SCHEMA`].
const DAY_SECS: u64 = 86_400;

type CheckpointKey<'a> = (&'a [u8], u64, u64);
type HolderKey<'a> = (u64, &'a [u8; 16], u64, u64);

const BY_CHECKPOINT: TableDefinition<CheckpointKey, &[u8]> = TableDefinition::new("visits_by_checkpoint");
const BY_HOLDER: TableDefinition<HolderKey, &[u8]> = TableDefinition::new("visits_by_holder");
/// Schema 1's purge table, named only to delete it (see the module doc).
const LEGACY_BY_TIME: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("visits_by_time");
const META: TableDefinition<&str, u64> = TableDefinition::new("visits_meta");

const META_SCHEMA: &str = "schema";
const META_INDEXED_LSN: &str = "indexed_lsn";

/// One passage registration (rule 13): who, where, when, direction,
/// temperature, decision.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Visit {
    /// Sequence number of the record in the write-ahead log: unique and
    /// increasing, so it also orders visits within one second.
    pub lsn: u64,
    #[serde(serialize_with = "clock::serde_rfc3339::serialize")]
    pub at: UnixSecs,
    pub holder: HolderId,
    /// Checkpoint id, 1 to [`MAX_CHECKPOINT_LEN`] bytes.
    pub checkpoint: String,
    #[serde(serialize_with = "serialize_direction")]
    pub direction: Direction,
    pub temperature_c: Option<f32>,
    #[serde(rename = "decision", serialize_with = "serialize_decision")]
    pub pass: bool,
    #[serde(serialize_with = "serialize_reason")]
    pub reason: Reason,
}

// policy::Direction is Deserialize only (it is read from scan requests);
// the index is the one place that writes it out, so the names live here.
fn serialize_direction<S: serde::Serializer>(d: &Direction, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.as_str())
}

fn serialize_decision<S: serde::Serializer>(pass: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *pass { "pass" } else { "deny" })
}

fn serialize_reason<S: serde::Serializer>(r: &Reason, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

#[derive(Debug, thiserror::Error)]
pub enum VisitError {
    /// Boxed: redb's error is some 160 bytes and would make every `Result`
    /// of this module (and of its callers) that large. None of this is on the
    /// request path, so the allocation on failure costs nothing that matters.
    #[error("visit index storage: {0}")]
    Storage(Box<redb::Error>),
    #[error("checkpoint id must be 1 to 64 bytes, got {0}")]
    Checkpoint(usize),
    #[error("visits in a batch must have increasing lsns, got {lsn} after {after}")]
    LsnOrder { lsn: u64, after: u64 },
    #[error("corrupt visit index: {0}")]
    Corrupt(&'static str),
    #[error("visit record version {0} is not supported by this build")]
    RecordVersion(u8),
    #[error("visit index schema {0} is not supported by this build (it knows {SCHEMA})")]
    Schema(u64),
}

// redb has one error type per operation; all of them convert into
// redb::Error, which is what the module's error keeps.
macro_rules! from_redb {
    ($($t:ty),+) => {$(
        impl From<$t> for VisitError {
            fn from(e: $t) -> Self {
                VisitError::Storage(Box::new(e.into()))
            }
        }
    )+};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What has been committed since the last durable commit.
#[derive(Debug)]
struct SyncState {
    commits: u32,
    visits: u64,
    /// The high-water mark as of the last durable commit.
    durable_lsn: u64,
    /// When the last durable commit was made (or the index opened).
    since: Instant,
}

impl SyncState {
    fn durable_at(durable_lsn: u64) -> SyncState {
        SyncState { commits: 0, visits: 0, durable_lsn, since: Instant::now() }
    }
}

/// The on-disk tracing index. Cheap to share behind an `Arc`: queries run
/// concurrently with each other and with one writer.
pub struct VisitIndex {
    db: Database,
    /// The same file, to start the writeback of what each routine commit
    /// wrote (see [`VisitIndex::insert`]).
    file: std::fs::File,
    /// A std Mutex: it is held only for a few loads and stores, never across
    /// I/O. Writers are already serialised by redb's writer lock, which is
    /// always taken first.
    sync: Mutex<SyncState>,
    /// [`DURABLE_EVERY`]; tests set it to take the clock out of the rule.
    durable_every: Duration,
}

impl VisitIndex {
    /// Opens the index at `path`, creating the file and its tables if missing.
    pub fn open(path: &Path) -> Result<Self, VisitError> {
        let mut db = Database::builder().set_cache_size(CACHE_BYTES).create_with_file_format_v3(true).create(path)?;
        // Every page's checksum, before anything is read through them: a
        // damaged file is an error here (and rebuilt from the log by the
        // caller), never a wrong answer or a panic later.
        db.check_integrity()?;
        let txn = db.begin_write()?;
        let indexed = {
            // Opening a table in a write transaction creates it; redb also
            // checks that an existing table has these key and value types.
            txn.open_table(BY_CHECKPOINT)?;
            txn.open_table(BY_HOLDER)?;
            let mut meta = txn.open_table(META)?;
            let schema = meta.get(META_SCHEMA)?.map(|g| g.value());
            match schema {
                None => {
                    meta.insert(META_SCHEMA, SCHEMA)?;
                }
                Some(SCHEMA) => {}
                Some(1) => {
                    // Schema 1 is schema 2 plus `visits_by_time`.
                    txn.delete_table(LEGACY_BY_TIME)?;
                    meta.insert(META_SCHEMA, SCHEMA)?;
                }
                Some(other) => return Err(VisitError::Schema(other)),
            }
            let indexed = meta.get(META_INDEXED_LSN)?.map_or(0, |g| g.value());
            indexed
        };
        txn.commit()?;
        // Whatever a previous process committed is durable now: either it
        // shut down cleanly (redb commits durably on drop) or it crashed and
        // redb rolled back to its last durable commit.
        let file = std::fs::File::open(path).map_err(|e| VisitError::Storage(Box::new(redb::Error::Io(e))))?;
        Ok(VisitIndex { db, file, sync: Mutex::new(SyncState::durable_at(indexed)), durable_every: DURABLE_EVERY })
    }

    /// Inserts many visits in one write transaction and records the lsn of
    /// the last one as the high-water mark. Visits whose lsn is at or below
    /// the high-water mark are skipped, so replaying the log's tail after a
    /// crash is harmless. The batch must be in increasing lsn order (as the
    /// log is) and every checkpoint id valid; otherwise nothing is written.
    pub fn insert(&self, visits: &[Visit]) -> Result<(), VisitError> {
        let mut after = 0;
        for (i, v) in visits.iter().enumerate() {
            check_checkpoint(&v.checkpoint)?;
            if i > 0 && v.lsn <= after {
                return Err(VisitError::LsnOrder { lsn: v.lsn, after });
            }
            after = v.lsn;
        }
        let mut txn = self.db.begin_write()?;
        let (added, last_lsn) = {
            let mut meta = txn.open_table(META)?;
            let indexed = meta.get(META_INDEXED_LSN)?.map_or(0, |g| g.value());
            let fresh = visits.iter().position(|v| v.lsn > indexed).map_or(&[][..], |i| &visits[i..]);
            let Some(last) = fresh.last() else {
                drop(meta);
                txn.abort()?;
                return Ok(());
            };
            let mut by_checkpoint = txn.open_table(BY_CHECKPOINT)?;
            let mut by_holder = txn.open_table(BY_HOLDER)?;
            for v in fresh {
                let cp = v.checkpoint.as_bytes();
                by_checkpoint.insert((cp, v.at, v.lsn), record::encode(v).as_bytes())?;
                by_holder.insert((day(v.at), &v.holder.0, v.at, v.lsn), cp)?;
            }
            meta.insert(META_INDEXED_LSN, last.lsn)?;
            (fresh.len() as u64, last.lsn)
        };
        let durable = {
            let s = self.lock();
            s.commits + 1 >= DURABLE_EVERY_COMMITS
                || s.visits + added >= DURABLE_EVERY_VISITS
                || s.since.elapsed() >= self.durable_every
        };
        if durable {
            make_durable(&mut txn);
        } else {
            txn.set_durability(Durability::None);
        }
        txn.commit()?;
        if !durable {
            // Start writing back now what this commit left dirty in the
            // page cache, a little at a time, rather than all of it at the
            // next durable commit, whose fsync would then put megabytes in
            // the device queue ahead of the log's. Asynchronous: nothing
            // waits here. A failure only loses that head start.
            // SAFETY: a valid open descriptor; the call reads no memory.
            unsafe {
                libc::sync_file_range(std::os::fd::AsRawFd::as_raw_fd(&self.file), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        let mut s = self.lock();
        if durable {
            *s = SyncState::durable_at(last_lsn);
        } else {
            s.commits += 1;
            s.visits += added;
        }
        Ok(())
    }

    /// The high-water mark: the lsn of the last visit inserted, 0 when none
    /// was. After a restart, feed the index the log's records after it.
    pub fn indexed_lsn(&self) -> Result<u64, VisitError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let lsn = meta.get(META_INDEXED_LSN)?.map_or(0, |g| g.value());
        Ok(lsn)
    }

    /// The high-water mark as of the last durable commit: what survives a
    /// crash. The log may discard records up to this lsn, never beyond.
    pub fn durable_lsn(&self) -> u64 {
        self.lock().durable_lsn
    }

    /// Makes everything inserted so far durable (one fsync) and returns the
    /// new [`durable_lsn`](Self::durable_lsn). For the log, before it
    /// discards a segment.
    pub fn sync(&self) -> Result<u64, VisitError> {
        let mut txn = self.db.begin_write()?;
        let lsn = txn.open_table(META)?.get(META_INDEXED_LSN)?.map_or(0, |g| g.value());
        make_durable(&mut txn);
        txn.commit()?;
        *self.lock() = SyncState::durable_at(lsn);
        Ok(lsn)
    }

    /// Visits at `checkpoint` with `from <= at < to`, in (at, lsn) order,
    /// passed to `f` one by one; `f` returns false to stop early. A read
    /// snapshot is held meanwhile: a slow `f` delays the freeing of pages
    /// that later commits replace, not the commits themselves.
    pub fn by_checkpoint(
        &self,
        checkpoint: &str,
        from: UnixSecs,
        to: UnixSecs,
        mut f: impl FnMut(Visit) -> bool,
    ) -> Result<(), VisitError> {
        if from >= to {
            return Ok(());
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BY_CHECKPOINT)?;
        let cp = checkpoint.as_bytes();
        // lsn 0 as the low end of both bounds makes the range exactly
        // [from, to) in time, whatever the lsns.
        for entry in table.range((cp, from, 0)..(cp, to, 0))? {
            let (key, value) = entry?;
            let (_, at, lsn) = key.value();
            let visit = record::decode(value.value())?.into_visit(lsn, at, checkpoint.to_owned());
            if !f(visit) {
                break;
            }
        }
        Ok(())
    }

    /// Visits of `holder` with `from <= at < to`, in (at, lsn) order, as
    /// [`by_checkpoint`](Self::by_checkpoint).
    pub fn by_holder(
        &self,
        holder: &HolderId,
        from: UnixSecs,
        to: UnixSecs,
        mut f: impl FnMut(Visit) -> bool,
    ) -> Result<(), VisitError> {
        if from >= to {
            return Ok(());
        }
        let txn = self.db.begin_read()?;
        let by_holder = txn.open_table(BY_HOLDER)?;
        let by_checkpoint = txn.open_table(BY_CHECKPOINT)?;
        // One range per day bucket, so clip the days to those the index
        // holds: an open-ended question must not walk every day since 1970.
        let (Some(first), Some(last)) = (by_holder.first()?, by_holder.last()?) else {
            return Ok(());
        };
        let (first, last) = (first.0.value().0, last.0.value().0);
        let days = day(from).max(first)..=day(to - 1).min(last);
        for d in days {
            // `from` and `to` bound every bucket's range as they are: a day
            // holds only its own seconds, so the edge days are cut right.
            for entry in by_holder.range((d, &holder.0, from, 0)..(d, &holder.0, to, 0))? {
                let (key, value) = entry?;
                let (_, _, at, lsn) = key.value();
                let cp = value.value();
                let checkpoint =
                    std::str::from_utf8(cp).map_err(|_| VisitError::Corrupt("checkpoint id is not utf-8"))?;
                let rec = by_checkpoint
                    .get((cp, at, lsn))?
                    .ok_or(VisitError::Corrupt("holder entry without a visit"))
                    .and_then(|g| record::decode(g.value()))?;
                if rec.holder != *holder {
                    return Err(VisitError::Corrupt("holder entry points at another holder's visit"));
                }
                if !f(rec.into_visit(lsn, at, checkpoint.to_owned())) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Deletes every visit with `at < horizon` from all tables, at most
    /// [`PURGE_CHUNK`] per write transaction, and returns how many it
    /// removed, oldest days first (within a day, in holder order). Each
    /// chunk commits durably, so the space it frees is reusable
    /// at once; a crash mid-purge leaves older visits that the next purge
    /// removes.
    pub fn purge_before(&self, horizon: UnixSecs) -> Result<u64, VisitError> {
        let mut removed = 0;
        loop {
            let mut txn = self.db.begin_write()?;
            let n = purge_chunk(&txn, horizon)?;
            if n == 0 {
                txn.abort()?;
                return Ok(removed);
            }
            let lsn = txn.open_table(META)?.get(META_INDEXED_LSN)?.map_or(0, |g| g.value());
            make_durable(&mut txn);
            txn.commit()?;
            *self.lock() = SyncState::durable_at(lsn);
            removed += n as u64;
            if n < PURGE_CHUNK {
                return Ok(removed);
            }
        }
    }

    /// How many visits the index holds.
    pub fn len(&self) -> Result<u64, VisitError> {
        let txn = self.db.begin_read()?;
        let n = txn.open_table(BY_CHECKPOINT)?.len()?;
        Ok(n)
    }

    pub fn is_empty(&self) -> Result<bool, VisitError> {
        Ok(self.len()? == 0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        // The state is a few counters updated after redb has committed; a
        // panic elsewhere cannot leave them half-written.
        self.sync.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes a raw value under a visit's keys, bypassing the encoder: the
    /// only way to get a corrupt record in front of the decoder in a test.
    #[cfg(test)]
    fn put_raw(&self, checkpoint: &[u8], holder: &HolderId, at: UnixSecs, lsn: u64, value: &[u8]) {
        let txn = self.db.begin_write().unwrap();
        txn.open_table(BY_CHECKPOINT).unwrap().insert((checkpoint, at, lsn), value).unwrap();
        txn.open_table(BY_HOLDER).unwrap().insert((day(at), &holder.0, at, lsn), checkpoint).unwrap();
        txn.commit().unwrap();
    }
}

/// The `visits_by_holder` bucket of a time: days since the epoch (UTC).
fn day(at: UnixSecs) -> u64 {
    at / DAY_SECS
}

fn check_checkpoint(checkpoint: &str) -> Result<(), VisitError> {
    match checkpoint.len() {
        1..=MAX_CHECKPOINT_LEN => Ok(()),
        n => Err(VisitError::Checkpoint(n)),
    }
}

fn make_durable(txn: &mut WriteTransaction) {
    txn.set_durability(Durability::Immediate);
    // Saves the allocator state with the commit (and turns on two-phase
    // commit), so that reopening after a crash needs no full-file repair.
    txn.set_quick_repair(true);
}

/// Removes up to [`PURGE_CHUNK`] of the visits before `horizon`, oldest
/// days first, driven by `visits_by_holder` (see the module doc).
fn purge_chunk(txn: &WriteTransaction, horizon: UnixSecs) -> Result<usize, VisitError> {
    let mut by_checkpoint = txn.open_table(BY_CHECKPOINT)?;
    let mut by_holder = txn.open_table(BY_HOLDER)?;
    let mut n = 0;
    // Every day before the horizon's goes whole; in the horizon's own day the
    // filter keeps the visits at or after it (the filter only reads the key,
    // so those cost a key comparison each per chunk, at most one day's).
    // extract_from_if removes exactly the entries the iterator yields, so
    // take() bounds the chunk.
    let end = (day(horizon) + 1, &[0u8; 16], 0, 0);
    for entry in by_holder.extract_from_if(..end, |k, _| k.2 < horizon)?.take(PURGE_CHUNK) {
        let (key, value) = entry?;
        let (_, holder, at, lsn) = key.value();
        let cp = value.value();
        let stored = by_checkpoint
            .remove((cp, at, lsn))?
            .ok_or(VisitError::Corrupt("holder entry without a visit"))
            .and_then(|g| record::holder(g.value()))?;
        if stored.0 != *holder {
            return Err(VisitError::Corrupt("holder entry points at another holder's visit"));
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
