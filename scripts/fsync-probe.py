#!/usr/bin/env python3
"""How a disk answers the log's pattern: small appends, each made durable.

Each of FILES threads appends RECORD bytes to a file of its own and
fdatasyncs it, over and over, for SECONDS, in DIR (put it on the disk the
gateway's data directory is on). The files are written with zeros first, so
the appends overwrite allocated blocks, as the log's prepared segments do.

Prints per file the write + fdatasync latency (p50, p99, p99.9, max), the
stalls (those over STALL ms), and how many of the first file's stalls
overlapped a stall of another file: stalls that happen together are the
device's (a flush of the whole disk), which no spreading of the log over
files escapes. Also the median time between two stalls of the first file.

    scripts/fsync-probe.py --dir /var/lib/healthgate --seconds 6 --files 2

Run it beside a loaded gateway to see what the log sees; alone, to see the
disk. Removes its files when done.
"""

import argparse
import os
import statistics
import tempfile
import threading
import time


def probe(path, seconds, record, gap, out, i):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size = 64 << 20
        os.pwrite(fd, b"\0" * size, 0)
        os.fsync(fd)
        data, off, lat, marks = b"x" * record, 0, [], []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.monotonic()
            os.pwrite(fd, data, off)
            os.fdatasync(fd)
            d = time.monotonic() - t
            lat.append(d)
            marks.append((t, d))
            off = (off + record) % (size - record)
            if gap:
                time.sleep(gap)
        out[i] = (lat, marks)
    finally:
        os.close(fd)
        os.unlink(path)


def pct(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=tempfile.gettempdir(), help="a folder on the disk to probe")
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--files", type=int, default=2, help="threads, each with a file of its own")
    p.add_argument("--record", type=int, default=150, help="bytes appended before each fdatasync")
    p.add_argument("--gap-us", type=float, default=200, help="pause between two appends of one thread")
    p.add_argument("--stall-ms", type=float, default=3, help="a write + fdatasync longer than this is a stall")
    a = p.parse_args()
    if a.files < 1 or a.seconds <= 0 or a.record < 1:
        p.error("--files, --seconds and --record must be positive")
    out = {}
    threads = [
        threading.Thread(
            target=probe,
            args=(os.path.join(a.dir, f".fsync-probe-{os.getpid()}-{i}"), a.seconds, a.record, a.gap_us / 1e6, out, i),
        )
        for i in range(a.files)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(out) != a.files:
        raise SystemExit("a probe thread failed (see above)")
    limit = a.stall_ms / 1e3
    stalls = {}
    print(f"{a.dir}: {a.files} files, {a.record}-byte appends, each fdatasynced, {a.seconds:g} s")
    for i in range(a.files):
        lat, marks = out[i]
        s = sorted(lat)
        stalls[i] = [(t, d) for t, d in marks if d > limit]
        print(
            f"  file {i}: {len(s)} write+fdatasync ({len(s) / a.seconds:.0f}/s), "
            f"p50 {pct(s, 0.5) * 1e3:.3f} p99 {pct(s, 0.99) * 1e3:.3f} p99.9 {pct(s, 0.999) * 1e3:.3f} "
            f"max {s[-1] * 1e3:.1f} ms; {len(stalls[i])} stalls over {a.stall_ms:g} ms"
        )
    first = stalls[0]
    if a.files > 1 and first:
        others = [x for i in range(1, a.files) for x in stalls[i]]
        together = sum(1 for t, d in first if any(t2 < t + d and t < t2 + d2 for t2, d2 in others))
        print(f"  stalls of file 0 that overlapped a stall of another file: {together} of {len(first)}")
    if len(first) > 1:
        gaps = [b[0] - a_[0] for a_, b in zip(first, first[1:])]
        print(f"  median time between two stalls of file 0: {statistics.median(gaps):.2f} s")


if __name__ == "__main__":
    main()
