//! The open-loop driver: a producer thread and worker threads, each worker
//! owning its share of the virtual turnstiles (HTTP/1.1 keep-alive
//! connections), pacing their sends and recording their answers itself.
//!
//! ```text
//!  producer thread ──planned, split by worker──▶ worker thread 0..W (one event loop each)
//!  (schedule + cases,                            pacer: wakes per tick, releases what is due
//!   signs ahead)                                 lanes: one connection each, FIFO
//!                                                recorder: histograms of its lanes' answers
//! ```
//!
//! - The producer walks the [`Schedule`], asks the [`Generator`] for each
//!   request and signs its token up to [`Settings::ahead`] requests before
//!   it is due, so signing never delays a send (if it falls behind anyway,
//!   the send is late, the lateness is charged to latency and the summary
//!   says so). The clock starts once that many are ready: with `ahead` at
//!   least the run's count, no signing competes with the target at all.
//!   Each request goes to the worker that owns its lane.
//! - Each worker thread runs its own single-threaded event loop: its pacer
//!   sends each of the worker's requests at its intended instant whatever
//!   the answers are doing (open loop). It sleeps on a `timerfd` polled by
//!   that loop (to the microsecond, where tokio's 1 ms timer wheel would
//!   add up to a millisecond of send lag, a fifth of a 5 ms SLO), wakes at
//!   most once a tick ([`Settings::tick`]) and releases every request due
//!   by then in one batch to lanes on the same thread: no thread hands a
//!   send or an answer to another.
//! - A lane speaks HTTP/1.1 itself ([`crate::wire`]): the request's bytes
//!   are formatted into a buffer it reuses and the answer read into
//!   another, so an exchange costs a write, a read and no allocation, and
//!   no second task per connection. It records the answer into its
//!   worker's [`Recorder`]; the workers' recorders are merged at the end.
//! - A request goes to the lane its holder maps to; a busy lane queues it,
//!   and its latency still counts from the intended instant. One lane per
//!   holder keeps each holder's requests in order, which the expectations
//!   depend on (see `cases`): the per-connection queueing of wrk2, with the
//!   rate split by holder instead of evenly.
//! - The backlog (dispatched, not yet answered) is capped: beyond the cap a
//!   request is not sent and counts as an `overflow` error, so an overloaded
//!   target costs bounded memory. A lost state-changing request (overflow, refusal,
//!   timeout, transport error) makes its holder's later answers
//!   unverifiable: they are counted apart instead of as mismatches.

use crate::cases::{Api, Generator, Request as Req, Scan};
use crate::expect::{check, Outcome};
use crate::report::{ClientCost, Completion, Recorder, Summary};
use crate::schedule::Schedule;
use crate::target::Endpoint;
use crate::wire::{Connection, RequestHead};
use hyper::header::HeaderValue;
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Sleep;

/// Default of [`Settings::ahead`]: a few seconds at commuter rates, ~12 MB.
pub const AHEAD: usize = 1 << 15;
/// The producer hands requests over in chunks: one wake-up per chunk, not
/// per request, and short bursts of signing (~1 ms) when it refills.
const CHUNK: usize = 64;
/// The producer's nice value: it works seconds ahead, so it yields the CPU
/// to the workers and, on a shared machine, the target.
const PRODUCER_NICE: libc::c_int = 10;
/// Default of [`Settings::tick`].
pub const TICK: Duration = Duration::from_micros(100);
/// The longest tick allowed: beyond it the send lag would be a visible
/// part of a millisecond-scale latency.
pub const MAX_TICK: Duration = Duration::from_millis(10);
/// A send this much after its instant counts as late: the worker (or the
/// producer feeding it) could not keep up.
const LATE: Duration = Duration::from_millis(1);
/// Signing ahead for longer than this makes tokens noticeably older than
/// their send time.
const PREFILL_WARNING: Duration = Duration::from_secs(20);
/// Answers longer than this are a transport error (a scan answer is ~100 bytes).
const MAX_ANSWER: usize = 64 * 1024;
/// Errors quoted word for word on stderr; the rest are only counted.
const SHOW_ERRORS: usize = 5;

#[derive(Debug, Error)]
pub enum RunError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls { addr: SocketAddr, source: std::io::Error },
    #[error(
        "{connections} connections need {needed} open files, but the limit is {limit} (hard limit {hard}): \
         lower --connections or raise `ulimit -n`"
    )]
    OpenFiles { connections: usize, needed: u64, limit: u64, hard: u64 },
}

/// Descriptors beyond one a connection: the runtime, stdio, the process.
const SPARE_FILES: u64 = 64;

/// Raises the soft open-file limit to the hard one (the default soft limit,
/// often 1024, is below a few thousand connections) and checks that
/// `connections` fit.
fn open_files_for(connections: usize) -> Result<(), RunError> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Ok(()); // unknown: let connecting tell
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let needed = connections as u64 + SPARE_FILES;
    if lim.rlim_cur < needed {
        return Err(RunError::OpenFiles { connections, needed, limit: lim.rlim_cur, hard: lim.rlim_max });
    }
    Ok(())
}

/// How to drive the target (validated settings; see `main.rs` for flags).
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint: Endpoint,
    /// Further replicas of the same deployment (`--url a,b,c`): connection
    /// `i` goes to `i mod (1 + replicas.len())`, the first to `endpoint`.
    /// Every holder's requests travel on one connection, so each holder
    /// stays on one replica and every answer is checked as on one gateway.
    pub replicas: Vec<Endpoint>,
    /// `Bearer <key>`.
    pub bearer: HeaderValue,
    pub api: Api,
    pub connections: usize,
    /// Worker threads, each with its own event loop, pacer, share of the
    /// connections and recorder (at most one per connection).
    pub threads: usize,
    /// For one exchange, from the moment it is written.
    pub timeout: Duration,
    /// Compare every answer with its expectation (off for baselines).
    pub check: bool,
    pub max_backlog: usize,
    /// Each worker's pacer sleeps at least this long between wake-ups, then
    /// releases every request of its share that has come due in one batch
    /// (one clock read, one counter update, lanes woken together), so that
    /// at high rates it wakes at most once a tick, not once per request. A send is
    /// then up to a tick late (never early), and the latency counts it.
    pub tick: Duration,
    /// Requests prepared (token signed) before they are due, ~350 bytes each.
    pub ahead: usize,
    pub max_errors: u64,
    pub show_mismatches: usize,
    /// The ramp's p99 target, to report the breaking point.
    pub slo: Option<Duration>,
    pub progress: bool,
}

/// One request on its way, with when it was meant to go.
struct Planned {
    at: Duration,
    phase: Option<usize>,
    scan: Scan,
}

/// How one exchange ended.
struct Exchanged {
    outcome: Outcome,
    mismatch: Option<String>,
    /// What to print about an error, for the first few.
    error: Option<String>,
    /// When the request was written, from the start of the run.
    sent: Option<Duration>,
}

/// What the lanes share. Immutable but for the counters.
struct Shared {
    t0: Instant,
    /// Where each connection goes (by index): address, `Host` and TLS.
    targets: Vec<Endpoint>,
    /// The request line and headers for each target, formatted once.
    heads: Vec<RequestHead>,
    timeout: Duration,
    /// The end of the schedule plus `timeout`: every request is due by the
    /// schedule's end, so one still waiting or unanswered now has waited
    /// `timeout` past its instant. It counts as a timeout and the run ends
    /// (a backlogged lane would otherwise take `timeout` per queued request).
    deadline: Instant,
    check: bool,
    /// Dispatched and not yet answered, over all workers.
    backlog: AtomicUsize,
    /// Dispatched so far, for the progress line.
    dispatched: AtomicU64,
    errors_shown: AtomicUsize,
    /// Lane keys of holders with a lost state-changing request (see
    /// [`crate::cases::Kind::changes_state`]). A std mutex: nothing awaits while holding
    /// it, and it is touched only on errors and mismatches.
    lost: Mutex<HashSet<u64>>,
}

async fn connect(endpoint: &Endpoint) -> Result<Connection, RunError> {
    let addr = endpoint.addr;
    let stream = TcpStream::connect(addr).await.map_err(|source| RunError::Connect { addr, source })?;
    // Requests are small and answers awaited one at a time: Nagle would
    // only add delay.
    stream.set_nodelay(true).map_err(|source| RunError::Connect { addr, source })?;
    match &endpoint.tls {
        None => Ok(Connection::plain(stream)),
        Some(tls) => {
            let stream = tls
                .connector
                .connect(tls.name.clone(), stream)
                .await
                .map_err(|source| RunError::Tls { addr, source })?;
            Ok(Connection::tls(stream))
        }
    }
}

impl Shared {
    fn target(&self, conn: usize) -> &Endpoint {
        &self.targets[conn % self.targets.len()]
    }

    /// One exchange on the lane's connection, (re)connecting if needed;
    /// `request` is the lane's buffer for the request's bytes, `timer` its
    /// timeout. Any failure drops the connection: its state is unknown.
    async fn exchange(
        &self,
        target: usize,
        conn: &mut Option<Connection>,
        request: &mut Vec<u8>,
        mut timer: Pin<&mut Sleep>,
        scan: &Scan,
    ) -> Exchanged {
        let now = Instant::now();
        if now >= self.deadline {
            return Exchanged { outcome: Outcome::Timeout, mismatch: None, error: None, sent: None };
        }
        let sent = Some(now.saturating_duration_since(self.t0));
        let head = &self.heads[target % self.heads.len()];
        match &scan.request {
            Req::Scan(body) => head.scan(body, request),
            Req::Lookup(h) => head.lookup(&h.0, request),
        }
        let attempt = async {
            if !conn.as_mut().is_some_and(Connection::usable) {
                *conn = None;
                *conn = Some(connect(self.target(target)).await.map_err(|e| e.to_string())?);
            }
            let c = conn.as_mut().expect("connected above");
            c.exchange(request, MAX_ANSWER).await.map_err(|e| e.to_string())
        };
        // The lane's one timer, moved later for each exchange: the deadlines
        // only grow, so tokio extends the registered entry in place instead
        // of inserting a timer into its wheel and removing it per request.
        let until = (now + self.timeout).min(self.deadline);
        timer.as_mut().reset(tokio::time::Instant::from_std(until));
        let answer = tokio::select! {
            biased;
            answer = attempt => Ok(answer),
            () = timer => Err(()),
        };
        let (outcome, mismatch, error) = match answer {
            Ok(Ok(status)) => {
                let body = conn.as_ref().expect("the answer came on it").body();
                let (outcome, mismatch) = check(&scan.expect, status, body, self.check);
                let error = outcome
                    .is_error()
                    .then(|| format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])));
                (outcome, mismatch, error)
            }
            Ok(Err(e)) => {
                *conn = None;
                (Outcome::Transport, None, Some(e))
            }
            Err(_) => {
                *conn = None;
                (Outcome::Timeout, None, None)
            }
        };
        Exchanged { outcome, mismatch, error, sent }
    }

    fn lose(&self, scan: &Scan) {
        if scan.kind.changes_state() {
            self.lost.lock().expect("never poisoned").insert(scan.lane_key);
        }
    }

    /// Records how `p` ended into `rec`, its worker's recorder (locked only
    /// by its worker, and once a second for the progress line).
    fn complete(
        &self,
        rec: &Mutex<Recorder>,
        p: &Planned,
        outcome: Outcome,
        mismatch: Option<String>,
        sent: Option<Duration>,
    ) {
        let unverifiable = mismatch.is_some() && self.lost.lock().expect("never poisoned").contains(&p.scan.lane_key);
        let mismatch = if unverifiable { None } else { mismatch };
        let c = Completion {
            kind: p.scan.kind,
            phase: p.phase,
            intended: p.at,
            done: self.t0.elapsed(),
            sent,
            outcome,
            mismatch,
            unverifiable,
        };
        if let Some(line) = rec.lock().expect("never poisoned").record(&c) {
            eprintln!("{line}");
        }
    }
}

/// A virtual turnstile: one connection, one request in flight, FIFO.
async fn lane(
    shared: Arc<Shared>,
    rec: Arc<Mutex<Recorder>>,
    target: usize,
    mut conn: Option<Connection>,
    mut jobs: mpsc::UnboundedReceiver<Planned>,
) {
    // The request's bytes, formatted into the same buffer every time.
    let mut request = Vec::with_capacity(1024);
    let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(shared.deadline));
    tokio::pin!(timer);
    while let Some(p) = jobs.recv().await {
        let Exchanged { outcome, mismatch, error, sent } =
            shared.exchange(target, &mut conn, &mut request, timer.as_mut(), &p.scan).await;
        if let Some(e) = error {
            if shared.errors_shown.fetch_add(1, Ordering::Relaxed) < SHOW_ERRORS {
                eprintln!("error: {} request ({}): {e}", p.scan.kind.name(), outcome_name(outcome));
            }
        }
        // A request that got no decision (no answer, or a refusal such as
        // 503 under overload) did not happen for its holder.
        if !matches!(outcome, Outcome::Pass | Outcome::Deny | Outcome::Ok) {
            shared.lose(&p.scan);
        }
        shared.backlog.fetch_sub(1, Ordering::Relaxed);
        shared.complete(&rec, &p, outcome, mismatch, sent);
    }
}

fn outcome_name(o: Outcome) -> &'static str {
    Outcome::NAMES[o.index()]
}

/// CPU time of the process or of the calling thread (user + system).
fn cpu_time(thread: bool) -> Duration {
    let who = if thread { libc::RUSAGE_THREAD } else { libc::RUSAGE_SELF };
    // SAFETY: getrusage only writes the struct we pass, which is plain data
    // and fully initialised by zeroing.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A pacer's alarm: a `timerfd` watched by the worker's event loop. The
/// kernel fires it to the microsecond (no timer slack, unlike a sleeping
/// `epoll_wait`), and waiting on it lets the same loop serve the lanes'
/// sockets in the meantime: one thread, at most one wake-up per tick. (A
/// timer firing every tick on its own, with no system call to set it, woke
/// the loop four times as often: the pacer mostly sleeps longer than a
/// tick, while answers keep the loop busy.)
struct Alarm {
    fd: AsyncFd<OwnedFd>,
}

impl Alarm {
    fn new() -> std::io::Result<Alarm> {
        // SAFETY: timerfd_create takes integer flags and returns a new
        // descriptor (or -1), owned from here on.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it; the
        // `OwnedFd` keeps it open for as long as the `AsyncFd` holds it.
        let fd = unsafe { AsyncFd::register_with_interest(OwnedFd::from_raw_fd(fd), Interest::READABLE)? };
        Ok(Alarm { fd })
    }

    /// Fires once, after `after` (not zero).
    fn set(&self, after: Duration) -> std::io::Result<()> {
        let ts = |d: Duration| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec { it_interval: ts(Duration::ZERO), it_value: ts(after) };
        // SAFETY: the descriptor is a timerfd we own; `spec` is only read.
        match unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// Returns after `d` (at once if zero).
    async fn sleep(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        if self.set(d).is_err() {
            return tokio::time::sleep(d).await;
        }
        loop {
            let Ok(mut ready) = self.fd.readable().await else { return tokio::time::sleep(d).await };
            let mut expirations = 0u64;
            let read = ready.try_io(|fd| {
                // SAFETY: reads at most 8 bytes into a u64 we own.
                let n = unsafe { libc::read(fd.as_raw_fd(), &mut expirations as *mut u64 as *mut libc::c_void, 8) };
                if n == 8 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
            match read {
                Ok(read) => {
                    if read.is_ok() {
                        // The read emptied the timer: it is readable again
                        // only when it fires again, so skip the read that
                        // would say so.
                        ready.clear_ready();
                    }
                    return;
                }
                Err(_would_block) => continue,
            }
        }
    }
}

/// One worker's part of the run, handed to it once the clock starts.
struct Part {
    shared: Arc<Shared>,
    rec: Arc<Mutex<Recorder>>,
    max_backlog: usize,
    tick: Duration,
}

/// A worker's pacer: sends each planned request of the worker's share at
/// its instant (open loop) to the lane it belongs to, on the same thread.
/// It sleeps on its [`Alarm`] until the next request is due, wakes at most
/// once a tick, releases every request due by then in one batch, and never
/// waits for anything else. Returns (late sends, max lag).
async fn pace(
    part: &Part,
    planned: Receiver<Vec<Planned>>,
    lanes: &[(usize, mpsc::UnboundedSender<Planned>)],
    connections: u64,
    workers: u64,
) -> (u64, Duration) {
    let shared = &part.shared;
    let alarm = Alarm::new().expect("creating a timerfd");
    let (mut late, mut max_lag) = (0u64, Duration::ZERO);
    // The chunks received, in schedule order; no allocation per wake-up.
    let mut queue: VecDeque<Planned> = VecDeque::with_capacity(4 * CHUNK);
    loop {
        if queue.is_empty() {
            match planned.try_recv() {
                Ok(chunk) => queue.extend(chunk),
                // The producer is behind (or the run is that short): look
                // again a tick later.
                Err(TryRecvError::Empty) => {
                    alarm.sleep(part.tick).await;
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
            }
        }
        let next = queue.front().expect("refilled above");
        let now = Instant::now();
        let due = shared.t0 + next.at;
        if due > now {
            alarm.sleep((due - now).max(part.tick)).await;
            continue;
        }
        // Everything due by `now` goes in this batch, across chunks.
        let mut batch = 0;
        loop {
            if batch == queue.len() {
                match planned.try_recv() {
                    Ok(chunk) => queue.extend(chunk),
                    Err(_) => break,
                }
            }
            if shared.t0 + queue[batch].at > now {
                break;
            }
            batch += 1;
        }
        // Counted into the backlog before any lane can answer (and count
        // it out); the cap is checked against what this batch adds.
        let mut backlog = shared.backlog.fetch_add(batch, Ordering::Relaxed);
        shared.dispatched.fetch_add(batch as u64, Ordering::Relaxed);
        for p in queue.drain(..batch) {
            let lag = now.saturating_duration_since(shared.t0 + p.at);
            if lag > LATE {
                late += 1;
                max_lag = max_lag.max(lag);
            }
            // The cleanup is exempt: it is bounded, and a dropped `out`
            // would leave its holder inside for the next run.
            if p.phase.is_some() && backlog >= part.max_backlog {
                shared.backlog.fetch_sub(1, Ordering::Relaxed);
                shared.lose(&p.scan);
                shared.complete(&part.rec, &p, Outcome::Overflow, None, None);
                continue;
            }
            backlog += 1;
            // Lane `l` belongs to worker `l mod workers`, at `l / workers`
            // in its list.
            let l = p.scan.lane_key % connections;
            let (_, lane) = &lanes[(l / workers) as usize];
            lane.send(p).expect("lanes run until their sender is dropped");
        }
    }
    (late, max_lag)
}

/// How far the producer has got, for the prefill wait before the clock
/// starts.
#[derive(Default)]
struct Prefill {
    /// Requests handed to the workers' channels.
    produced: AtomicUsize,
    /// A channel was full (the producer is as far ahead as it may get) or
    /// the producer is done: either way nothing more comes before the run
    /// starts, so the prefill wait ends.
    done: AtomicBool,
}

impl Prefill {
    fn ready(&self, ahead: usize) -> bool {
        self.done.load(Ordering::Acquire) || self.produced.load(Ordering::Acquire) >= ahead
    }
}

/// The producer's side of the workers' channels: a chunk filling for
/// each worker.
struct Feed<'a> {
    txs: Vec<SyncSender<Vec<Planned>>>,
    chunks: Vec<Vec<Planned>>,
    connections: u64,
    prefill: &'a Prefill,
}

impl Feed<'_> {
    /// Adds `p` to its worker's chunk, sent when full; false once the
    /// workers are gone.
    fn push(&mut self, p: Planned) -> bool {
        let w = ((p.scan.lane_key % self.connections) % self.txs.len() as u64) as usize;
        self.chunks[w].push(p);
        self.chunks[w].len() < CHUNK || self.send(w, true)
    }

    /// Sends worker `w`'s chunk. When its channel is full the prefill is
    /// over (whatever `ahead` asked: the channels' size and the run's
    /// length both cap it), so the wait before the clock is told before
    /// the producer blocks (otherwise the wait could never end), and the
    /// other workers get their partial chunks first, so that none waits
    /// for requests held here while this one catches up. `block`: wait
    /// for room; otherwise a full channel keeps the chunk for later.
    fn send(&mut self, w: usize, block: bool) -> bool {
        let chunk = std::mem::replace(&mut self.chunks[w], Vec::with_capacity(CHUNK));
        let n = chunk.len();
        let sent = match self.txs[w].try_send(chunk) {
            Ok(()) => true,
            Err(TrySendError::Full(chunk)) if !block => {
                self.chunks[w] = chunk;
                return true;
            }
            Err(TrySendError::Full(chunk)) => {
                self.prefill.done.store(true, Ordering::Release);
                for other in 0..self.txs.len() {
                    if other != w && !self.chunks[other].is_empty() && !self.send(other, false) {
                        return false;
                    }
                }
                self.txs[w].send(chunk).is_ok()
            }
            Err(TrySendError::Disconnected(_)) => false,
        };
        if sent {
            self.prefill.produced.fetch_add(n, Ordering::Release);
        }
        sent
    }

    /// Sends every partial chunk.
    fn flush(&mut self) -> bool {
        (0..self.txs.len()).all(|w| self.chunks[w].is_empty() || self.send(w, true))
    }
}

/// A worker thread: connects its lanes (connection `i` for each `i` that is
/// `w mod workers`) on its own single-threaded event loop, says how that
/// went, waits for the clock to start, then paces and serves them until
/// its share of the run is done. Returns its recorder, late sends and max
/// lag (its recorder is the run's), or `None` when the run was called off
/// before the start.
fn worker(
    w: usize,
    workers: usize,
    targets: Arc<Vec<Endpoint>>,
    connections: usize,
    connected: tokio::sync::oneshot::Sender<Result<(), RunError>>,
    start: Receiver<Part>,
    planned: Receiver<Vec<Planned>>,
) -> Option<(u64, Duration)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building an event loop");
    let conns = rt.block_on(async {
        let mut connecting = tokio::task::JoinSet::new();
        for i in (w..connections).step_by(workers) {
            let endpoint = targets[i % targets.len()].clone();
            connecting.spawn(async move { (i, connect(&endpoint).await) });
        }
        let mut conns = Vec::with_capacity(connecting.len());
        while let Some(c) = connecting.join_next().await {
            let (i, c) = c.expect("connect does not panic");
            conns.push((i, c?));
        }
        conns.sort_by_key(|(i, _)| *i);
        Ok::<_, RunError>(conns)
    });
    let conns = match conns {
        Ok(c) => {
            let _ = connected.send(Ok(()));
            c
        }
        Err(e) => {
            let _ = connected.send(Err(e));
            return None;
        }
    };
    let part = start.recv().ok()?;
    let (late, max_lag) = rt.block_on(async {
        let mut lanes = Vec::with_capacity(conns.len());
        let mut tasks = tokio::task::JoinSet::new();
        for (i, conn) in conns {
            let (tx, rx) = mpsc::unbounded_channel();
            lanes.push((i, tx));
            tasks.spawn(lane(part.shared.clone(), part.rec.clone(), i, Some(conn), rx));
        }
        let paced = pace(&part, planned, &lanes, connections as u64, workers as u64).await;
        // Without their senders the lanes drain and stop.
        drop(lanes);
        while tasks.join_next().await.is_some() {}
        paced
    });
    Some((late, max_lag))
}

/// Runs `schedule` against the target and returns the summary.
pub async fn run(settings: Settings, schedule: Schedule, generator: Generator) -> Result<Summary, RunError> {
    let cpu_start = cpu_time(false);
    let n = settings.connections.max(1);
    let workers = settings.threads.clamp(1, n);
    let targets: Vec<Endpoint> = std::iter::once(&settings.endpoint).chain(&settings.replicas).cloned().collect();
    open_files_for(n)?;

    // Each worker's channel holds its share of `ahead` requests, rounded
    // up to whole chunks.
    let ahead = settings.ahead.max(CHUNK);
    let per_worker = ahead.div_ceil(CHUNK).div_ceil(workers).max(1);
    let mut txs = Vec::with_capacity(workers);
    let mut starts = Vec::with_capacity(workers);
    let mut connected = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    let shared_targets = Arc::new(targets.clone());
    for w in 0..workers {
        let (tx, planned) = std::sync::mpsc::sync_channel::<Vec<Planned>>(per_worker);
        let (start_tx, start) = std::sync::mpsc::channel::<Part>();
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let targets = shared_targets.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("loadgen-worker-{w}"))
                .spawn(move || worker(w, workers, targets, n, connected_tx, start, planned))
                .expect("spawning a thread"),
        );
        txs.push(tx);
        starts.push(start_tx);
        connected.push(connected_rx);
    }
    for c in connected {
        // Dropping `starts` on an error calls the run off: the workers end.
        c.await.expect("a worker reports its connections")?;
    }

    // The producer signs ahead; tokens carry Unix times derived from the
    // schedule, so the clock is read once here. The few hundred ms of
    // prefill before the first send are far inside the 30 s skew budget.
    let start_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let prefill = Arc::new(Prefill::default());
    let producer = {
        let (schedule, prefill) = (schedule.clone(), prefill.clone());
        std::thread::Builder::new()
            .name("loadgen-producer".into())
            .spawn(move || {
                // SAFETY: plain integer arguments; on Linux the nice value
                // is per thread, so this touches only the producer.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, PRODUCER_NICE) };
                let mut generator = generator;
                let unix = |at: Duration| (start_unix + at.as_secs_f64()) as u64;
                let end = schedule.duration();
                let mut feed = Feed {
                    chunks: txs.iter().map(|_| Vec::with_capacity(CHUNK)).collect(),
                    txs,
                    connections: n as u64,
                    prefill: &prefill,
                };
                let sent = schedule
                    .instants()
                    .map(|slot| Planned { at: slot.at, phase: Some(slot.phase), scan: generator.next(unix(slot.at)) })
                    .all(|p| feed.push(p));
                if sent && feed.flush() {
                    let mut cleanup =
                        generator.cleanup(unix(end)).into_iter().map(|scan| Planned { at: end, phase: None, scan });
                    if cleanup.all(|p| feed.push(p)) {
                        feed.flush();
                    }
                }
                drop(feed);
                // Let the prefill wait below see the end of a short run.
                prefill.done.store(true, Ordering::Release);
                cpu_time(true)
            })
            .expect("spawning a thread")
    };
    // Let the producer get ahead before the clock starts (it always makes
    // progress, and says when it is done).
    let prefill_started = Instant::now();
    while !prefill.ready(ahead) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Tokens carry times as if the clock had started before the prefill.
    if prefill_started.elapsed() > PREFILL_WARNING {
        eprintln!(
            "warning: signing ahead took {:.0} s: tokens are that much older when sent (ttl 60 s, skew budget 30 s \
             on the demo); lower --sign-ahead",
            prefill_started.elapsed().as_secs_f64()
        );
    }

    let t0 = Instant::now();
    let shared = Arc::new(Shared {
        t0,
        deadline: t0 + schedule.duration() + settings.timeout,
        heads: targets.iter().map(|t| RequestHead::new(t, settings.bearer.as_bytes())).collect(),
        targets,
        timeout: settings.timeout,
        check: settings.check,
        backlog: AtomicUsize::new(0),
        dispatched: AtomicU64::new(0),
        errors_shown: AtomicUsize::new(0),
        lost: Mutex::new(HashSet::new()),
    });
    let mut rec = Recorder::new(&schedule, settings.show_mismatches);
    let recs: Vec<Arc<Mutex<Recorder>>> = (0..workers).map(|_| Arc::new(Mutex::new(rec.sibling()))).collect();
    for (start, r) in starts.into_iter().zip(&recs) {
        let part =
            Part { shared: shared.clone(), rec: r.clone(), max_backlog: settings.max_backlog, tick: settings.tick };
        start.send(part).expect("a connected worker waits for the start");
    }
    let mut joined = tokio::task::spawn_blocking(move || {
        threads.into_iter().map(|t| t.join().expect("a worker does not panic")).collect::<Vec<_>>()
    });

    // The progress line, once a second, over every worker's recorder.
    let first = tokio::time::Instant::from_std(t0 + Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(first, Duration::from_secs(1));
    let mut last_dispatched = 0;
    let parts = loop {
        tokio::select! {
            parts = &mut joined => break parts.expect("joining does not panic"),
            _ = tick.tick(), if settings.progress => {
                for r in &recs {
                    rec.take_interval(&mut r.lock().expect("never poisoned"));
                }
                let d = shared.dispatched.load(Ordering::Relaxed);
                let backlog = shared.backlog.load(Ordering::Relaxed);
                eprintln!("{}", rec.progress(t0.elapsed(), d - last_dispatched, backlog));
                last_dispatched = d;
            }
        }
    };
    let (mut late, mut max_lag) = (0, Duration::ZERO);
    for (l, m) in parts.into_iter().map(|p| p.expect("every worker started")) {
        late += l;
        max_lag = max_lag.max(m);
    }
    for r in recs {
        rec.merge(Arc::into_inner(r).expect("the workers are done").into_inner().expect("never poisoned"));
    }
    let producer_cpu = producer.join().expect("the producer does not panic");

    let cpu = cpu_time(false).saturating_sub(cpu_start).as_secs_f64();
    let producer_cpu = producer_cpu.as_secs_f64();
    let api = match settings.api {
        Api::Scan => "scan",
        Api::Lookup => "lookup",
    };
    let mut summary = rec.finish(api, n, settings.check, settings.max_errors, settings.slo, ClientCost::default());
    let answered = summary.answered as f64;
    summary.client = ClientCost {
        cpu_s: cpu,
        producer_cpu_s: producer_cpu,
        answers_per_cpu_s: answered / cpu.max(1e-9),
        answers_per_cpu_s_excl_signing: answered / (cpu - producer_cpu).max(1e-9),
        late_dispatches: late,
        max_dispatch_lag_us: u64::try_from(max_lag.as_micros()).unwrap_or(u64::MAX),
    };
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::{CaseMix, World};
    use bytes::Bytes;
    use healthgate_core::population::{Mix, Population};
    use http_body_util::{BodyExt, Full};
    use hyper::server::conn::http1 as server;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;

    fn generator() -> Generator {
        let world = World {
            population: Population { seed: 1, size: 5_000, mix: Mix::default() },
            issuer: ("HB01".parse().unwrap(), ed25519_dalek::SigningKey::from_bytes(&[1; 32])),
            untrusted: ("XX01".parse().unwrap(), ed25519_dalek::SigningKey::from_bytes(&[2; 32])),
            checkpoints: vec!["m1".into()],
        };
        Generator::new(world, Api::Scan, "green=1".parse::<CaseMix>().unwrap(), 1).unwrap()
    }

    /// A server that answers `pass` and stalls once, for `stall`, on the
    /// first request after `stall_after`.
    async fn server(stall_after: Duration, stall: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let stalled = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let stalled = stalled.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let stalled = stalled.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            if started.elapsed() >= stall_after && !stalled.swap(true, Ordering::SeqCst) {
                                tokio::time::sleep(stall).await;
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                br#"{"decision":"pass","color":"green","reason":"ok","epoch":1}"#,
                            ))))
                        }
                    });
                    let _ = server::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        addr
    }

    fn settings(addr: SocketAddr, connections: usize) -> Settings {
        Settings {
            endpoint: Endpoint::parse(&format!("http://{addr}"), None).unwrap(),
            replicas: vec![],
            bearer: HeaderValue::from_static("Bearer test"),
            api: Api::Scan,
            connections,
            threads: 2,
            timeout: Duration::from_secs(5),
            check: false,
            max_backlog: 100_000,
            tick: TICK,
            ahead: AHEAD,
            max_errors: 0,
            show_mismatches: 0,
            slo: None,
            progress: false,
        }
    }

    /// End to end through real sockets: with one connection and a 300 ms
    /// stall, every request scheduled during the stall is still sent and is
    /// charged its wait from the intended instant.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_coordinated_omission_through_a_stall() {
        let addr = server(Duration::from_millis(200), Duration::from_millis(300)).await;
        let schedule = Schedule::constant(200.0, Duration::from_secs(1)).unwrap();
        let sum = run(settings(addr, 1), schedule, generator()).await.unwrap();
        assert_eq!(sum.scheduled, 200);
        assert_eq!(sum.answered, 200, "{sum}");
        assert_eq!(sum.errors.total, 0);
        // ~60 requests fall in the stall: the worst waits ~300 ms, and more
        // than 10 % of all requests wait over 100 ms. A closed-loop count
        // would show a single slow request (p90 ~ 1 ms).
        assert!(sum.latency_us.max_us >= 290_000, "{:?}", sum.latency_us);
        assert!(sum.latency_us.p90_us >= 100_000, "{:?}", sum.latency_us);
        assert!(sum.latency_us.p50_us < 50_000, "{:?}", sum.latency_us);
    }

    /// A server that answers every `nth` request with 503 and the others
    /// with a pass; `never`: it reads requests and never answers.
    async fn answering(nth: u64, never: bool) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let count = count.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            if never {
                                std::future::pending::<()>().await;
                            }
                            let i = count.fetch_add(1, Ordering::Relaxed) + 1;
                            let mut r = Response::new(Full::new(Bytes::from_static(
                                br#"{"decision":"pass","color":"green","reason":"ok","epoch":1}"#,
                            )));
                            if i.is_multiple_of(nth) {
                                *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = server::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        addr
    }

    /// Guards a run that once hung: the run must return at all.
    async fn returns(s: Settings, schedule: Schedule) -> Summary {
        tokio::time::timeout(Duration::from_secs(60), run(s, schedule, generator()))
            .await
            .expect("the run hung")
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sign_ahead_not_a_multiple_of_64_does_not_hang() {
        let addr = answering(u64::MAX, false).await;
        for ahead in [1, 65, 100, 1000] {
            let mut s = settings(addr, 2);
            s.ahead = ahead;
            let sum = returns(s, Schedule::constant(1000.0, Duration::from_millis(300)).unwrap()).await;
            assert_eq!((sum.scheduled, sum.answered), (300, 300), "--sign-ahead {ahead}");
        }
    }

    /// 12 032 for a 12 000-request run, in small: the run's chunks and the
    /// cleanup's fill the channel before `ahead` requests are produced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sign_ahead_a_little_above_the_request_count_does_not_hang() {
        let addr = answering(u64::MAX, false).await;
        // Each run's chunks (the last one partial) fill the channel exactly.
        for (rate, ahead) in [(200.0, 256), (1000.0, 1024), (3000.0, 3008)] {
            let mut s = settings(addr, 4);
            s.ahead = ahead;
            let sum = returns(s, Schedule::constant(rate, Duration::from_secs(1)).unwrap()).await;
            assert_eq!(sum.scheduled as f64, rate, "--sign-ahead {ahead}");
            assert!(sum.cleanup.count > 0, "the cleanup is what overfilled the channel");
            // Every request accounted for (a loaded machine may time some out).
            assert_eq!(sum.answered + sum.errors.timeout + sum.errors.transport, sum.scheduled, "{sum}");
        }
    }

    /// A target that never answers: the run ends at the schedule's end plus
    /// the timeout, not a timeout per queued request (one connection, 100
    /// queued requests, 300 ms each would be 30 s).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_target_ends_the_run_at_schedule_plus_timeout() {
        let addr = answering(u64::MAX, true).await;
        let mut s = settings(addr, 1);
        s.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let sum = returns(s, Schedule::constant(200.0, Duration::from_millis(500)).unwrap()).await;
        assert_eq!(sum.errors.timeout, 100, "{sum}");
        assert_eq!(sum.answered, 0);
        // Not a speed claim: a bound of the driver's own making, far from
        // the 30 s the queue would take one timeout at a time.
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    }

    /// 2 000 connections open, carry the run and report every answer by
    /// status, 503s included as answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_thousand_connections_and_answers_by_status() {
        let addr = answering(4, false).await;
        let sum = returns(settings(addr, 2000), Schedule::constant(2000.0, Duration::from_secs(1)).unwrap()).await;
        assert_eq!(sum.connections, 2000);
        assert_eq!(sum.scheduled, 2000);
        assert!(sum.answered > 1000, "{sum}");
        // Every request accounted for (a loaded machine may time some out).
        assert_eq!(sum.answered + sum.errors.timeout + sum.errors.transport, 2000, "{sum}");
        assert_eq!(sum.statuses.values().sum::<u64>(), sum.answered);
        let unavailable = sum.statuses.get(&503).copied().unwrap_or(0);
        // Every fourth answer the stub sends (cleanup's included) is a 503.
        assert!(unavailable > 0 && sum.statuses[&200] > unavailable, "{:?}", sum.statuses);
        assert_eq!(sum.errors.http_status, unavailable);
        assert_eq!(sum.status_latency_us[&503].count, unavailable);
        assert_eq!(sum.status_latency_us[&200].count, sum.statuses[&200]);
        // Timed from their actual send too, and never longer that way.
        for (status, l) in &sum.status_latency_from_send_us {
            assert_eq!(l.count, sum.statuses[status], "{status}");
            assert!(l.max_us <= sum.status_latency_us[status].max_us, "{status}");
        }
        assert!(sum.to_string().contains(&format!("answers by status: 200 {}, 503 {unavailable}", sum.statuses[&200])));
        assert!(sum.to_string().contains("from the actual send"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_and_errors_are_counted() {
        let addr = server(Duration::from_secs(3600), Duration::ZERO).await;
        let schedule = Schedule::constant(500.0, Duration::from_millis(400)).unwrap();
        let mut s = settings(addr, 4);
        s.check = true;
        // The stub names no holder, so every checked pass is a mismatch.
        let sum = run(s, schedule, generator()).await.unwrap();
        assert_eq!(sum.scheduled, 200);
        assert_eq!(sum.mismatches, sum.answered + sum.cleanup.count);
        assert!(!sum.ok);
        // Nobody listening: connecting fails up front.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let schedule = Schedule::constant(10.0, Duration::from_millis(100)).unwrap();
        assert!(matches!(run(settings(closed, 1), schedule, generator()).await, Err(RunError::Connect { .. })));
    }

    /// A server that answers `pass` and counts the requests it got.
    async fn counting_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let counted = counted.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            counted.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                br#"{"decision":"pass","color":"green","reason":"ok","epoch":1}"#,
                            ))))
                        }
                    });
                    let _ = server::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        (addr, count)
    }

    /// A server that answers `pass` and notes when each request arrived.
    async fn noting_server() -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let noted = arrivals.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let noted = noted.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        noted.lock().unwrap().push(Instant::now());
                        async move {
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                br#"{"decision":"pass","color":"green","reason":"ok","epoch":1}"#,
                            ))))
                        }
                    });
                    let _ = server::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        (addr, arrivals)
    }

    /// With a 10 ms tick, 2 000 requests a second leave in batches, one a
    /// tick, not one every 0.5 ms: the arrivals come in ~50 bursts
    /// separated by quiet gaps. All of them are still sent and answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_dispatcher_releases_what_is_due_once_a_tick() {
        let (addr, arrivals) = noting_server().await;
        let mut s = settings(addr, 16);
        s.tick = Duration::from_millis(10);
        let sum = returns(s, Schedule::constant(2000.0, Duration::from_millis(500)).unwrap()).await;
        assert_eq!((sum.scheduled, sum.answered), (1000, 1000), "{sum}");
        let mut at = arrivals.lock().unwrap().clone();
        at.sort();
        // Unbatched, consecutive arrivals are ~0.5 ms apart; batched, the
        // gaps between bursts are ~10 ms. A loaded machine only adds gaps,
        // so the bound is on the quiet gaps seen, not on their length.
        let quiet = at.windows(2).filter(|w| w[1] - w[0] >= Duration::from_millis(4)).count();
        assert!(quiet >= 25, "{quiet} quiet gaps in {} arrivals", at.len());
    }

    /// Several replica URLs: the connections are spread over all of them,
    /// and every request is answered by one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_schedule_spread_over_replicas() {
        let servers = [counting_server().await, counting_server().await, counting_server().await];
        let mut s = settings(servers[0].0, 6);
        s.replicas = servers[1..].iter().map(|(a, _)| Endpoint::parse(&format!("http://{a}"), None).unwrap()).collect();
        let schedule = Schedule::constant(600.0, Duration::from_millis(500)).unwrap();
        let sum = run(s, schedule, generator()).await.unwrap();
        assert_eq!(sum.answered, 300, "{sum}");
        let counts: Vec<usize> = servers.iter().map(|(_, c)| c.load(Ordering::SeqCst)).collect();
        assert_eq!(counts.iter().sum::<usize>() as u64, sum.answered + sum.cleanup.count, "{counts:?}");
        assert!(counts.iter().all(|&c| c > 0), "every replica gets a share: {counts:?}");
    }
}
