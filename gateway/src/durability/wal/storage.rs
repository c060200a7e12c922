//! Where the log's bytes go: a directory of segment files behind a trait,
//! so that tests can put a disk that loses, tears and flips bytes under the
//! real log code.
//!
//! The contract mirrors a POSIX file system with a page cache: `append`
//! makes bytes readable but not durable, `sync` (fdatasync) makes every
//! appended byte of that file durable, and a crash loses whatever was not
//! synced. [`FaultyStorage`] implements exactly that in memory, plus the
//! faults: a crash that tears the last unsynced write, a flipped bit, and
//! an fsync that fails.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub trait Storage: Send + Sync + 'static {
    /// Names of the files, sorted.
    fn list(&self) -> io::Result<Vec<String>>;
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// The first `max` bytes (or fewer) of a file.
    fn read_head(&self, name: &str, max: usize) -> io::Result<Vec<u8>> {
        let mut b = self.read(name)?;
        b.truncate(max);
        Ok(b)
    }
    /// Appends to the file, creating it if needed. Not durable until `sync`.
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Makes every byte appended to `name` durable (fdatasync).
    fn sync(&mut self, name: &str) -> io::Result<()>;
    /// Cuts the file to `len` bytes, durably.
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()>;
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// Creates an empty file (durably: its directory entry too). Nothing is
    /// written, so a failure here loses nothing and may be retried.
    fn create(&mut self, name: &str) -> io::Result<()>;
    /// The next append to `name` goes at byte `len` (where recovery found
    /// the log's end; a preallocated file's zeros lie beyond).
    fn resume(&mut self, _name: &str, _len: u64) {}
    /// Another handle on the same files, for a reader beside the writer
    /// (it sees what was appended, as another process would).
    fn reader(&self) -> io::Result<Box<dyn Storage>>;
}

/// Segment files in a directory on the real file system.
///
/// With preallocation on, every new segment is a file already zero-filled
/// to its full size and synced, prepared ahead by a background thread, so
/// that appending overwrites allocated blocks and an fdatasync flushes data
/// only, not the file's size and extents through the journal. The log's
/// end is then the first frame header of zeros (see `wal::recover`).
pub struct FsStorage {
    dir: PathBuf,
    /// The file being appended to, kept open, with its logical end (where
    /// the next append goes; the zeros of a preallocated file lie beyond).
    open: Option<(String, File, u64)>,
    /// Where appends to a file recovery found go (its logical end).
    resume: Option<(String, u64)>,
    /// Size of a preallocated segment; 0: segments grow as they are written.
    prealloc: u64,
    /// The next segment being zero-filled in the background.
    preparing: Option<std::thread::JoinHandle<io::Result<()>>>,
}

/// The file a segment is prepared in before it gets its name.
const PREPARED: &str = "next-segment.prep";

impl FsStorage {
    pub fn open(dir: &Path) -> io::Result<FsStorage> {
        std::fs::create_dir_all(dir)?;
        Ok(FsStorage { dir: dir.to_owned(), open: None, resume: None, prealloc: 0, preparing: None })
    }

    /// Like [`FsStorage::open`], with segments of `bytes` preallocated, the
    /// next one always prepared ahead.
    pub fn with_preallocation(dir: &Path, bytes: u64) -> io::Result<FsStorage> {
        let mut s = FsStorage::open(dir)?;
        s.prealloc = bytes;
        // A preparation a crash interrupted is worth nothing: start over.
        match std::fs::remove_file(dir.join(PREPARED)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        s.prepare_next();
        Ok(s)
    }

    fn prepare_next(&mut self) {
        if self.prealloc == 0 || self.preparing.is_some() {
            return;
        }
        let (path, len) = (self.dir.join(PREPARED), self.prealloc);
        let spawned = std::thread::Builder::new().name("healthgate-wal-prep".into()).spawn(move || {
            crate::durability::wal::set_thread_nice(10);
            let f = OpenOptions::new().write(true).create(true).truncate(true).open(&path)?;
            write_zeros_gently(f, len)
        });
        // Without the thread, segments simply grow as they are written.
        self.preparing = spawned.ok();
    }
}

/// Fills `f` with `len` zero bytes without making the log wait (see
/// [`gentle`](crate::durability::gentle)), then syncs it.
fn write_zeros_gently(f: File, len: u64) -> io::Result<()> {
    use std::io::Write;
    let zeros = vec![0u8; 1 << 20];
    let mut w = crate::durability::gentle::GentleFile::new(f);
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        w.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    w.into_inner()?.sync_all()
}

impl FsStorage {
    /// Gives `name` the prepared file if it is ready; false otherwise.
    fn take_prepared(&mut self, name: &str) -> io::Result<bool> {
        if !self.preparing.as_ref().is_some_and(|h| h.is_finished()) {
            return Ok(false);
        }
        let ready =
            self.preparing.take().expect("checked").join().unwrap_or_else(|_| Err(io::Error::other("panicked")));
        if let Err(e) = ready {
            tracing::warn!(error = %e, "preparing the next log segment failed; this one grows as it is written");
            let _ = std::fs::remove_file(self.dir.join(PREPARED));
            return Ok(false);
        }
        std::fs::rename(self.dir.join(PREPARED), self.dir.join(name))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(true)
    }

    fn file(&mut self, name: &str) -> io::Result<(&mut File, &mut u64)> {
        if self.open.as_ref().is_none_or(|(n, _, _)| n != name) {
            let existed = self.dir.join(name).exists();
            let f = OpenOptions::new().create(true).write(true).truncate(false).open(self.dir.join(name))?;
            if !existed {
                // A new segment's directory entry must be durable too.
                File::open(&self.dir)?.sync_all()?;
            }
            let end = match self.resume.take() {
                Some((n, end)) if n == name => end,
                _ => f.metadata()?.len(),
            };
            self.open = Some((name.to_owned(), f, end));
        }
        let (_, f, end) = self.open.as_mut().expect("just opened");
        Ok((f, end))
    }
}

impl Storage for FsStorage {
    fn create(&mut self, name: &str) -> io::Result<()> {
        if self.open.as_ref().is_some_and(|(n, _, _)| n == name) {
            return Ok(());
        }
        let prepared = !self.dir.join(name).exists() && self.take_prepared(name)?;
        self.file(name)?;
        if prepared {
            // The prepared file is all zeros: the segment starts empty.
            if let Some((_, _, end)) = self.open.as_mut() {
                *end = 0;
            }
        }
        self.prepare_next();
        Ok(())
    }
    fn resume(&mut self, name: &str, len: u64) {
        self.open = None;
        self.resume = Some((name.to_owned(), len));
    }
    fn reader(&self) -> io::Result<Box<dyn Storage>> {
        Ok(Box::new(FsStorage::open(&self.dir)?))
    }
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            if let Some(n) = e?.file_name().to_str() {
                names.push(n.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.dir.join(name))
    }
    fn read_head(&self, name: &str, max: usize) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut b = Vec::with_capacity(max.min(1 << 20));
        File::open(self.dir.join(name))?.take(max as u64).read_to_end(&mut b)?;
        Ok(b)
    }
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let (f, end) = self.file(name)?;
        f.write_all_at(bytes, *end)?;
        *end += bytes.len() as u64;
        Ok(())
    }
    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.file(name)?.0.sync_data()
    }
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.open = None;
        let f = OpenOptions::new().write(true).open(self.dir.join(name))?;
        f.set_len(len)?;
        f.sync_all()
    }
    fn remove(&mut self, name: &str) -> io::Result<()> {
        if self.open.as_ref().is_some_and(|(n, _, _)| n == name) {
            self.open = None;
        }
        std::fs::remove_file(self.dir.join(name))?;
        File::open(&self.dir)?.sync_all()
    }
}

#[derive(Default, Clone)]
struct FakeFile {
    durable: Vec<u8>,
    pending: Vec<u8>,
}

/// An in-memory disk with a page cache and faults. Clones share the disk.
#[derive(Clone, Default)]
pub struct FaultyStorage {
    files: std::sync::Arc<Mutex<BTreeMap<String, FakeFile>>>,
    fail_sync: std::sync::Arc<AtomicBool>,
    fail_create: std::sync::Arc<AtomicBool>,
    /// Calls of `create`, failed ones included.
    creates: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FaultyStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Power loss: unsynced bytes are gone.
    pub fn crash(&self) {
        for f in self.files.lock().expect("fake disk").values_mut() {
            f.pending.clear();
        }
    }

    /// Power loss in the middle of a write: the first `keep` unsynced bytes
    /// of `name` reached the disk, the rest did not.
    pub fn crash_torn(&self, name: &str, keep: usize) {
        let mut files = self.files.lock().expect("fake disk");
        if let Some(f) = files.get_mut(name) {
            let keep = keep.min(f.pending.len());
            let kept: Vec<u8> = f.pending[..keep].to_vec();
            f.durable.extend_from_slice(&kept);
        }
        drop(files);
        self.crash();
    }

    /// Bit rot in durable bytes.
    pub fn flip_bit(&self, name: &str, offset: usize, bit: u8) {
        let mut files = self.files.lock().expect("fake disk");
        let f = files.get_mut(name).expect("file exists");
        f.durable[offset] ^= 1 << bit;
    }

    pub fn fail_syncs(&self, on: bool) {
        self.fail_sync.store(on, Ordering::SeqCst);
    }

    /// Creating a file fails (a full disk, no inodes, too many open files).
    pub fn fail_creates(&self, on: bool) {
        self.fail_create.store(on, Ordering::SeqCst);
    }

    /// How many times a file was asked to be created.
    pub fn create_attempts(&self) -> u64 {
        self.creates.load(Ordering::SeqCst)
    }

    pub fn list_names(&self) -> Vec<String> {
        self.files.lock().expect("fake disk").keys().cloned().collect()
    }

    /// Appends bytes as a writer would (unsynced), from outside the log.
    pub fn append_raw(&self, name: &str, bytes: &[u8]) {
        self.files.lock().expect("fake disk").entry(name.to_owned()).or_default().pending.extend_from_slice(bytes);
    }

    pub fn durable_len(&self, name: &str) -> usize {
        self.files.lock().expect("fake disk").get(name).map_or(0, |f| f.durable.len())
    }
}

impl Storage for FaultyStorage {
    fn create(&mut self, name: &str) -> io::Result<()> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        if self.fail_create.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected failure to create a file"));
        }
        self.files.lock().expect("fake disk").entry(name.to_owned()).or_default();
        Ok(())
    }
    fn reader(&self) -> io::Result<Box<dyn Storage>> {
        Ok(Box::new(self.clone()))
    }
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.files.lock().expect("fake disk").keys().cloned().collect())
    }
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let files = self.files.lock().expect("fake disk");
        let f = files.get(name).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok([f.durable.as_slice(), f.pending.as_slice()].concat())
    }
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.files.lock().expect("fake disk").entry(name.to_owned()).or_default().pending.extend_from_slice(bytes);
        Ok(())
    }
    fn sync(&mut self, name: &str) -> io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            // Like Linux after a writeback error: the dirty pages may be
            // dropped, and the error is reported.
            if let Some(f) = self.files.lock().expect("fake disk").get_mut(name) {
                f.pending.clear();
            }
            return Err(io::Error::other("injected fsync failure"));
        }
        let mut files = self.files.lock().expect("fake disk");
        let f = files.entry(name.to_owned()).or_default();
        let p = std::mem::take(&mut f.pending);
        f.durable.extend_from_slice(&p);
        Ok(())
    }
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let mut files = self.files.lock().expect("fake disk");
        let f = files.get_mut(name).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let mut all = [f.durable.as_slice(), f.pending.as_slice()].concat();
        all.truncate(len as usize);
        *f = FakeFile { durable: all, pending: Vec::new() };
        Ok(())
    }
    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.files.lock().expect("fake disk").remove(name);
        Ok(())
    }
}
