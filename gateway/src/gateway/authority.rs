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
use crate::operations::config::{Config, ConfigError};
use crate::revocation::{FilterSettings, Revocations};
use crate::UnixSecs;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

/// Orders authority batches against each other and colour changes against
/// the log.
///
/// Authority batches take `order` for writing while they log and apply; a
/// scan or check-in that changes a colour takes it for reading; scans that
/// change no colour (nearly all) never touch it. So a colour change is never
/// half-way through a batch in memory while sitting on the other side of it
/// in the log, and replay gives back the state that was served. Std locks:
/// nothing awaits while holding them.
#[derive(Default)]
pub struct FeedOrder {
    order: RwLock<()>,
    /// The last applied feed sequence; serialises authority batches, never
    /// scans.
    last_seq: Mutex<u64>,
}

impl FeedOrder {
    /// Held by colour changes of scans and check-ins, and by snapshots
    /// while they read the log position.
    pub fn read_order(&self) -> RwLockReadGuard<'_, ()> {
        self.order.read().unwrap_or_else(|e| e.into_inner())
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
    /// batch is logged and applied with no colour change of a scan between,
    /// and a snapshot (which reads the log position under the read lock)
    /// never sees it half-applied.
    fn in_feed_order(&self, seq: u64, event: Event, at: Option<UnixSecs>) -> Result<(u64, Option<Ticket>), FeedError> {
        let _order = self.feed.order.write().unwrap_or_else(|e| e.into_inner());
        let last = *self.feed.last_seq.lock().unwrap_or_else(|e| e.into_inner());
        if seq <= last {
            return Err(FeedError::Replay { got: seq, last });
        }
        let now = at.unwrap_or_else(|| self.now());
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
