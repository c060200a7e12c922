//! The authority's side of the gateway: signed batches of colour updates
//! and revocations, applied all or nothing in sequence order, and the
//! reload of the configuration files.
//!
//! A batch is checked (signature over its canonical encoding by a
//! configured authority key, sequence after the last applied one), logged,
//! applied in memory through the same function replay uses
//! ([`Gateway::apply_feed_event`]), and answered once durable.

use super::{Gateway, LiveConfig};
use crate::durability::wal::record::Event;
use crate::durability::wal::Ticket;
use crate::feed::{FeedError, Revocation, RevocationBatch, UpdateBatch};
use crate::holder::HolderId;
use crate::operations::config::{Config, ConfigError};
use crate::revocation::{FilterSettings, Revocations};
use crate::UnixSecs;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};

/// Orders authority batches against each other and colour changes against
/// the log.
///
/// A colour change of a scan or check-in and an authority batch that sets
/// the same holder's colour must reach memory in the order they reach the
/// log, or replay would give back a state other than the one served.
/// Changes of different holders commute, so only the batch's own holders
/// are ordered against it:
///
/// * a batch publishes the set of holders it changes, then waits for the
///   colour changes already under way (counted in two slots by generation,
///   as in read-copy-update) to finish, then logs and applies itself and
///   withdraws the set;
/// * a colour change registers itself in the current slot and looks at the
///   published set: a holder in it waits for the batch to be applied, then
///   tries again; any other holder goes on at once, never waiting for the
///   batch (test: `a_fever_of_a_holder_outside_an_authority_batch_never_waits_for_it`).
///
/// Scans that change no colour (nearly all) never touch any of this.
/// Batches also hold `order` for writing, and a snapshot holds it for
/// reading while it reads the log position, so that it never sees a batch
/// half-applied. Std locks: nothing awaits while holding them.
#[derive(Default)]
pub struct FeedOrder {
    order: RwLock<()>,
    /// The last applied feed sequence; serialises authority batches, never
    /// scans.
    last_seq: Mutex<u64>,
    /// Bumped by every batch that changes colours; its low bit picks the
    /// slot of `active` a colour change registers in.
    generation: AtomicU64,
    /// Colour changes under way, by the generation they registered in.
    active: [AtomicUsize; 2],
    /// The batch being logged and applied, while it changes colours.
    applying: Mutex<Option<Arc<Applying>>>,
}

/// The holders of the batch being applied, and its end.
struct Applying {
    holders: HashSet<HolderId>,
    done: Mutex<bool>,
    ended: Condvar,
}

impl Applying {
    fn wait(&self) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            done = self.ended.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A colour change under way: batches wait for it to end (drop).
pub struct ColourChange<'a> {
    order: &'a FeedOrder,
    slot: usize,
}

impl Drop for ColourChange<'_> {
    fn drop(&mut self) {
        self.order.active[self.slot].fetch_sub(1, SeqCst);
    }
}

/// A batch being logged and applied; dropping it lets its holders' colour
/// changes go on.
struct BatchInProgress<'a> {
    order: &'a FeedOrder,
    applying: Arc<Applying>,
}

impl Drop for BatchInProgress<'_> {
    fn drop(&mut self) {
        *self.order.applying.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.applying.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.applying.ended.notify_all();
    }
}

impl FeedOrder {
    /// Held by snapshots while they read the log position.
    pub fn read_order(&self) -> RwLockReadGuard<'_, ()> {
        self.order.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a colour change of `holder`, to be held while it is
    /// decided, logged and applied. Blocks only while a batch that changes
    /// this very holder is being applied.
    pub fn colour_change(&self, holder: &HolderId) -> ColourChange<'_> {
        loop {
            let generation = self.generation.load(SeqCst);
            let slot = (generation & 1) as usize;
            self.active[slot].fetch_add(1, SeqCst);
            let change = ColourChange { order: self, slot };
            if self.generation.load(SeqCst) != generation {
                continue; // a batch moved on meanwhile: register again
            }
            let applying = self.applying.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match applying {
                Some(batch) if batch.holders.contains(holder) => {
                    drop(change);
                    batch.wait();
                }
                _ => return change,
            }
        }
    }

    /// Publishes the holders a batch changes and waits for the colour
    /// changes already under way to end. Call holding `order` for writing.
    fn begin_batch(&self, holders: HashSet<HolderId>) -> BatchInProgress<'_> {
        let applying = Arc::new(Applying { holders, done: Mutex::new(false), ended: Condvar::new() });
        *self.applying.lock().unwrap_or_else(|e| e.into_inner()) = Some(applying.clone());
        let slot = (self.generation.fetch_add(1, SeqCst) & 1) as usize;
        // They are a log append and a store update each: microseconds.
        let mut spins = 0u32;
        while self.active[slot].load(SeqCst) != 0 {
            spins += 1;
            if spins < 100 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        }
        BatchInProgress { order: self, applying }
    }
}

impl Gateway {
    /// Applies a signed batch of colour changes, all or nothing, and
    /// answers once it is durable. Returns the new epoch.
    pub async fn apply_updates(&self, batch: &UpdateBatch) -> Result<u64, FeedError> {
        self.taking_batches("updates")?;
        if let Some(r) = self.replica.get() {
            return r.submit(super::replica::AuthorityBatch::Updates(batch.clone())).await;
        }
        // Verifying, cloning and applying up to 100 000 changes takes
        // milliseconds of CPU under the feed order's lock: not on a worker.
        let logged = super::off_workers(|| {
            batch.verify(&self.live().authority_keys).and_then(|changes| {
                let event = Event::Updates { seq: batch.seq, changes, signed: None };
                self.in_feed_order(batch.seq, event, None)
            })
        });
        self.settle_batch("updates", logged).await
    }

    /// Applies a signed batch of revocations, all or nothing, and answers
    /// once it is durable. Returns the new epoch.
    pub async fn apply_revocations(&self, batch: &RevocationBatch) -> Result<u64, FeedError> {
        self.taking_batches("revocations")?;
        if let Some(r) = self.replica.get() {
            return r.submit(super::replica::AuthorityBatch::Revocations(batch.clone())).await;
        }
        // The revocation filter is rebuilt whole: not on a worker.
        let logged = super::off_workers(|| {
            batch.verify(&self.live().authority_keys).and_then(|()| {
                let event = Event::Revocations { seq: batch.seq, entries: batch.revocations.clone(), signed: None };
                self.in_feed_order(batch.seq, event, None)
            })
        });
        self.settle_batch("revocations", logged).await
    }

    /// A posted batch is taken only once the state is recovered (and, on a
    /// replica, the replication layer attached; both come before `loaded`).
    /// Before that the admin listener is already up, but a batch would be
    /// applied outside the log (nothing durable: lost at the next start, or
    /// overwritten by the snapshot being loaded) or, on a replica, outside
    /// the order stream: in force on this replica only, with its sequence
    /// raised past the stream's batches it has yet to read, which it would
    /// then refuse as replays while every other replica applies them.
    fn taking_batches(&self, kind: &str) -> Result<(), FeedError> {
        let joined = !self.clustered || self.replica.get().is_some();
        if self.loaded.load(std::sync::atomic::Ordering::Acquire) && joined {
            return Ok(());
        }
        self.metrics().feed_batches.with_label_values(&[kind, "unavailable"]).inc();
        Err(FeedError::Unavailable(if self.clustered {
            "not ready: recovering state and joining the cluster; nothing was applied".into()
        } else {
            "not ready: recovering state; nothing was applied".into()
        }))
    }

    /// Logs and applies the batch `event` with sequence `seq` if it comes
    /// after the last applied one, holding the feed order for writing: the
    /// batch is logged and applied with no colour change of one of its
    /// holders between (see [`FeedOrder`]), and a snapshot (which reads the
    /// log position under the read lock) never sees it half-applied.
    fn in_feed_order(&self, seq: u64, event: Event, at: Option<UnixSecs>) -> Result<(u64, Option<Ticket>), FeedError> {
        let _order = self.feed.order.write().unwrap_or_else(|e| e.into_inner());
        let last = *self.feed.last_seq.lock().unwrap_or_else(|e| e.into_inner());
        if seq <= last {
            return Err(FeedError::Replay { got: seq, last });
        }
        let now = at.unwrap_or_else(|| self.now());
        // Colour changes of this batch's holders wait until it is applied;
        // those of anyone else go on meanwhile.
        let _batch = match &event {
            Event::Updates { changes, .. } => Some(self.feed.begin_batch(changes.iter().map(|c| c.holder).collect())),
            _ => None,
        };
        // Log first: if the log refuses, nothing changes. The log keeps its
        // own copy (it outlives this call in the writer's queue).
        let ticket = self.log(now, || event.clone()).map_err(|e| FeedError::Unavailable(e.to_string()))?;
        let epoch = self.apply_feed_event(&event, now);
        Ok((epoch, ticket))
    }

    /// Applies an authority batch read from the cluster's order stream, with
    /// the same checks as a posted one (signature by this replica's own
    /// keys, sequence after the last applied), logged and applied as at
    /// `at`, the time the replica that received it accepted it, so that
    /// every replica stores the same `since`. The log keeps `signed`, the
    /// batch as published, so that it can be published again if the stream
    /// loses it. Returns the epoch and the LSN of its log record; counted
    /// like a posted batch.
    pub fn apply_replicated(
        &self,
        batch: &super::replica::AuthorityBatch,
        signed: bytes::Bytes,
        at: UnixSecs,
    ) -> Result<(u64, u64), FeedError> {
        use super::replica::AuthorityBatch;
        let keys = &self.live().authority_keys;
        let signed = Some(signed);
        let (kind, logged) = match batch {
            AuthorityBatch::Updates(b) => (
                "updates",
                b.verify(keys).and_then(|changes| {
                    self.in_feed_order(b.seq, Event::Updates { seq: b.seq, changes, signed }, Some(at))
                }),
            ),
            AuthorityBatch::Revocations(b) => (
                "revocations",
                b.verify(keys).and_then(|()| {
                    let event = Event::Revocations { seq: b.seq, entries: b.revocations.clone(), signed };
                    self.in_feed_order(b.seq, event, Some(at))
                }),
            ),
        };
        let r = match &logged {
            Ok(_) => "applied",
            Err(FeedError::Malformed(_)) => "malformed",
            Err(FeedError::Unauthenticated(_)) => "unauthenticated",
            Err(FeedError::Replay { .. }) => "replay",
            Err(FeedError::Unavailable(_)) => "unavailable",
        };
        self.metrics().feed_batches.with_label_values(&[kind, r]).inc();
        logged.map(|(epoch, ticket)| (epoch, ticket.map_or(0, |t| t.lsn)))
    }

    /// Sets the feed position, back as well as forward: a replica restarts
    /// its order stream where its last snapshot's positions say.
    pub fn set_feed_seq(&self, seq: u64) {
        let mut last = self.feed.last_seq.lock().unwrap_or_else(|e| e.into_inner());
        *last = seq;
        self.metrics().feed_last_seq.set(i64::try_from(seq).unwrap_or(i64::MAX));
    }

    /// Waits for a logged batch to be durable, and counts it.
    async fn settle_batch(
        &self,
        kind: &str,
        logged: Result<(u64, Option<Ticket>), FeedError>,
    ) -> Result<u64, FeedError> {
        let result = match logged {
            Ok((epoch, ticket)) => {
                Self::wait_durable(ticket).await.map(|()| epoch).map_err(|e| FeedError::Unavailable(e.to_string()))
            }
            Err(e) => Err(e),
        };
        let r = match &result {
            Ok(_) => "applied",
            Err(FeedError::Malformed(_)) => "malformed",
            Err(FeedError::Unauthenticated(_)) => "unauthenticated",
            Err(FeedError::Replay { .. }) => "replay",
            Err(FeedError::Unavailable(_)) => "unavailable",
        };
        self.metrics().feed_batches.with_label_values(&[kind, r]).inc();
        result
    }

    /// A new revocation set with `entries` added (rebuilt whole: scans in
    /// flight keep the old one).
    pub(crate) fn add_revocations(&self, entries: &[Revocation], now: UnixSecs, settings: FilterSettings) {
        let current = self.revocations.load();
        let next = current.with(entries, now, current.version() + 1, settings);
        self.metrics().revocations.set(next.len() as i64);
        self.revocations.store(Arc::new(next));
    }

    pub(crate) fn revocations(&self) -> arc_swap::Guard<Arc<Revocations>> {
        self.revocations.load()
    }

    /// Moves the feed position forward to `seq` (never back).
    pub(crate) fn set_feed_seq_at_least(&self, seq: u64) {
        let mut last = self.feed.last_seq.lock().unwrap_or_else(|e| e.into_inner());
        *last = (*last).max(seq);
        self.metrics().feed_last_seq.set(i64::try_from(*last).unwrap_or(i64::MAX));
    }

    pub fn last_feed_seq(&self) -> u64 {
        *self.feed.last_seq.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current revocation filter export and its version.
    pub fn revocation_export(&self) -> (u64, bytes::Bytes) {
        let r = self.revocations.load();
        (r.version(), r.export())
    }

    /// Re-reads the configuration and trust list (and the TLS certificate)
    /// and swaps the live configuration whole; on any error the running one
    /// stays. Listener settings (addresses, limits, which listeners speak
    /// TLS) take effect only at the next start.
    /// Reads files (and may rebuild the revocation filter): callers on the
    /// runtime run it off the workers.
    pub fn reload(&self) -> Result<u64, ConfigError> {
        super::off_workers(|| self.reload_now())
    }

    fn reload_now(&self) -> Result<u64, ConfigError> {
        let result = Config::load(&self.config_path).map(|c| {
            let filter_changed = c.revocation_filter != self.live().revocation_filter;
            let g = self.swap_live(LiveConfig::from_config(&c, 0));
            // A renewed certificate is served from the next handshake.
            if let (Some(certs), Some(tls)) = (&self.certificates, &c.tls) {
                certs.replace(&tls.material);
            }
            if filter_changed {
                self.revocations.store(Arc::new(self.revocations.load().resized(c.revocation_filter)));
            }
            g
        });
        self.metrics().reloads.with_label_values(&[if result.is_ok() { "ok" } else { "refused" }]).inc();
        self.metrics().reload_ok.set(i64::from(result.is_ok()));
        match &result {
            Ok(g) => tracing::info!(generation = g, "configuration reloaded"),
            Err(e) => tracing::warn!(error = %e, "configuration reload refused; keeping the running one"),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Long enough for a blocked thread to be certainly blocked on any
    /// machine is unknowable; these only ever check "not yet" with it (a
    /// slow machine can make such a check pass, never fail) and otherwise
    /// wait generously for progress.
    const NOT_YET: Duration = Duration::from_millis(100);
    const PROGRESS: Duration = Duration::from_secs(30);

    fn holder(b: u8) -> HolderId {
        HolderId([b; 16])
    }

    #[test]
    fn a_fever_of_a_holder_outside_an_authority_batch_never_waits_for_it() {
        let order = Arc::new(FeedOrder::default());
        let batch = order.begin_batch([holder(1), holder(2)].into_iter().collect());
        // Another holder's colour change goes on while the batch is applied.
        let (tx, rx) = mpsc::channel();
        let o = order.clone();
        std::thread::spawn(move || {
            let change = o.colour_change(&holder(3));
            tx.send(()).unwrap();
            drop(change);
        });
        rx.recv_timeout(PROGRESS).expect("a holder outside the batch does not wait for it");
        // One of the batch's holders waits until the batch is applied.
        let (tx, rx) = mpsc::channel();
        let o = order.clone();
        std::thread::spawn(move || {
            let _change = o.colour_change(&holder(2));
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(NOT_YET).is_err(), "a holder of the batch went on before it was applied");
        drop(batch);
        rx.recv_timeout(PROGRESS).expect("the holder goes on once the batch is applied");
    }

    #[test]
    fn a_batch_waits_for_the_colour_changes_under_way() {
        let order = Arc::new(FeedOrder::default());
        let change = order.colour_change(&holder(9));
        let (tx, rx) = mpsc::channel();
        let o = order.clone();
        std::thread::spawn(move || {
            let batch = o.begin_batch([holder(9)].into_iter().collect());
            tx.send(()).unwrap();
            drop(batch);
        });
        assert!(rx.recv_timeout(NOT_YET).is_err(), "the batch began while a colour change was under way");
        drop(change);
        rx.recv_timeout(PROGRESS).expect("the batch begins once the change has ended");
        // Both slots drain: later changes and batches go on.
        drop(order.colour_change(&holder(9)));
        drop(order.begin_batch(HashSet::new()));
        drop(order.colour_change(&holder(9)));
    }
}
