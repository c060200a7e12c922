//! Writing large files beside the log without making it wait.
//!
//! The log's acknowledgements wait for its fdatasync, which flushes the
//! device's cache; whatever other writes sit in the device queue at that
//! moment are flushed first. A snapshot or a new log segment written in
//! one go and synced at the end puts megabytes (gigabytes at province
//! scale) in that queue at once, and the log's syncs took hundreds of
//! milliseconds meanwhile. [`GentleFile`] pushes what it has written to
//! the device in small chunks as it goes (`sync_file_range`, which waits
//! for the writes but flushes no cache), with a short pause between, so at
//! most one chunk is ever ahead of the log. The caller still makes the
//! file durable with `sync_all` at the end.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Bytes pushed to the device at a time.
pub const CHUNK: u64 = 256 << 10;

/// Pause after each chunk, leaving the device to the log.
pub const PAUSE: Duration = Duration::from_millis(1);

/// A file written through this pushes every [`CHUNK`] to the device before
/// taking more.
pub struct GentleFile {
    file: File,
    /// Where the bytes not yet pushed start, and how far they go.
    pushed: u64,
    written: u64,
}

impl GentleFile {
    pub fn new(file: File) -> GentleFile {
        GentleFile { file, pushed: 0, written: 0 }
    }

    /// The file, everything written pushed to the device (not yet durable:
    /// call `sync_all`).
    pub fn into_inner(mut self) -> io::Result<File> {
        self.push()?;
        Ok(self.file)
    }

    fn push(&mut self) -> io::Result<()> {
        if self.written == self.pushed {
            return Ok(());
        }
        // SAFETY: a valid open descriptor and a range this writer wrote;
        // sync_file_range reads no memory of ours.
        let rc = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                self.pushed as libc::off64_t,
                (self.written - self.pushed) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        self.pushed = self.written;
        Ok(())
    }
}

impl Write for GentleFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = (self.pushed + CHUNK - self.written) as usize;
        let n = self.file.write(&buf[..buf.len().min(room)])?;
        self.written += n as u64;
        if self.written - self.pushed >= CHUNK {
            self.push()?;
            std::thread::sleep(PAUSE);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn writes_every_byte_in_order_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(CHUNK * 2 + 12_345)).map(|i| (i % 251) as u8).collect();
        let mut w = io::BufWriter::with_capacity(100_000, GentleFile::new(File::create(&path).unwrap()));
        for piece in data.chunks(77_777) {
            w.write_all(piece).unwrap();
        }
        let f = w.into_inner().map_err(|e| e.into_error()).unwrap().into_inner().unwrap();
        f.sync_all().unwrap();
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }
}
