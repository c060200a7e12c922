//! What the gateway offers a replication layer above it, and what it asks
//! of one (docs/CLUSTER.md). The layer itself (the `cluster` module: NATS,
//! streams, shipper, appliers) imports the gateway; the gateway knows it
//! only through the [`Replica`] trait, so that neither imports the other in
//! a cycle and a single gateway carries none of it.
//!
//! Here: how a remote replica's effects are applied (colour in stream
//! order, everything else through the commutative merge), the watch on the
//! log's durable position that the shipper follows, and the hooks a
//! snapshot calls so that the stream positions saved with it never claim
//! more than the snapshot holds.

use super::Gateway;
use crate::durability::visits::VisitIndex;
use crate::durability::wal::record::Record;
use crate::durability::wal::Observer;
use crate::feed::{FeedError, RevocationBatch, UpdateBatch};
use crate::state::{Effect, Step};
use crate::store::Update;
use crate::{Color, HolderId, UnixSecs};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// An authority batch posted to this replica, to be published to all.
pub enum AuthorityBatch {
    Updates(UpdateBatch),
    Revocations(RevocationBatch),
}

/// Where a replica stands in the shared streams, captured before a
/// snapshot reads the store and saved once it is in place.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Positions {
    /// Last order-stream message applied.
    pub order: u64,
    /// The authority sequence after applying it.
    pub feed_seq: u64,
    /// Last records-stream message applied.
    pub records: u64,
    /// The message ids of the last order-stream messages applied, by stream
    /// sequence, up to `order`: at start the replica checks that the stream
    /// still holds them there (a restarted nats-server may have lost them and
    /// given their sequences to other messages).
    #[serde(default)]
    pub order_ids: Vec<(u64, String)>,
    /// The same for the records stream, up to `records`.
    #[serde(default)]
    pub records_ids: Vec<(u64, String)>,
    /// The last authority batches applied (all in the store the snapshot
    /// reads), oldest first: a duplicate of one is skipped, not refused, and
    /// one the stream lost is published again from the log.
    #[serde(default)]
    pub batches: Vec<AppliedBatch>,
    /// True when `batches` holds every authority batch this replica applied
    /// since it first read the order stream from its start.
    #[serde(default)]
    pub batches_from_start: bool,
}

/// An authority batch a replica applied: enough to know a byte-identical
/// copy and to find the batch in the replica's own log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppliedBatch {
    /// The authority's sequence.
    pub seq: u64,
    /// The order-stream sequence it was last read at.
    pub stream: u64,
    /// The LSN of its record in this replica's log (0: not logged).
    pub lsn: u64,
    /// SHA-256 of the batch as signed and published, in hex.
    pub sha256: String,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The replication layer, as the gateway sees it.
pub trait Replica: Send + Sync + 'static {
    /// Publishes a posted authority batch to every replica and answers once
    /// this one has applied it (in stream order) and logged it durably.
    fn submit(&self, batch: AuthorityBatch) -> BoxFuture<'_, Result<u64, FeedError>>;
    /// True once the replica has read the streams up to where they ended
    /// when it started.
    fn caught_up(&self) -> bool;
    /// The `cluster` part of `/readyz`.
    fn status(&self) -> serde_json::Value;
    /// This replica's node id.
    fn node(&self) -> &str;
    /// The other replicas' tracing indexes, by node.
    fn remote_visits(&self) -> Vec<(String, Arc<VisitIndex>)>;
    /// Called before a snapshot reads anything.
    fn capture(&self) -> Positions;
    /// Called once that snapshot is in place (blocking is fine: snapshots
    /// run on the blocking pool).
    fn snapshot_written(&self, at: Positions);
    /// Stops reading and shipping (shutdown).
    fn stop(&self);
}

/// Passes durable batches to the indexer and moves the durable watch.
pub(crate) struct Tee<O: Observer> {
    pub inner: O,
    pub durable: tokio::sync::watch::Sender<u64>,
}

impl<O: Observer> Observer for Tee<O> {
    fn durable(&mut self, records: &[Record]) {
        self.inner.durable(records);
        if let Some(last) = records.last() {
            self.durable.send_replace(last.lsn);
        }
    }
    fn batch(&mut self, records: usize, fsync: Duration) {
        self.inner.batch(records, fsync);
    }
    fn committed(&mut self, waited: Duration) {
        self.inner.committed(waited);
    }
}

impl Gateway {
    /// Attaches the replication layer (once, before the gateway turns ready).
    pub fn attach_replica(&self, r: Arc<dyn Replica>) {
        let _ = self.replica.set(r);
    }
    pub fn replica(&self) -> Option<&Arc<dyn Replica>> {
        self.replica.get()
    }
    /// True when the configuration has a `[cluster]` section: effects merge
    /// (`healthgate_core::merge`) instead of overwriting, and recovery leaves
    /// authority batches to the order stream.
    pub fn clustered(&self) -> bool {
        self.clustered
    }
    /// The last LSN known durable, as a watch (the shipper follows it).
    pub fn durable_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable_tx.subscribe()
    }
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// Applies a colour change another replica decided (or this one, coming
    /// back in the order stream), as at `at`. Unknown holders are skipped,
    /// as at replay.
    pub fn apply_replicated_color(&self, holder: &HolderId, color: Color, steps: Vec<Step>, at: UnixSecs) {
        self.store.update(holder, at, |entry| match entry {
            Some(_) => Update::Commit((), Some((color, steps))),
            None => Update::Abort(()),
        });
    }

    /// Merges another replica's effect on a holder (everything but colour).
    pub fn merge_replicated(&self, holder: &HolderId, effect: &Effect, at: UnixSecs, checkin_day: Option<u16>) {
        let effect = Effect { color: None, ..effect.clone() };
        self.store.update(holder, at, |entry| match entry {
            Some((_, state)) => {
                healthgate_core::merge::merge(state, &effect, at, checkin_day);
                Update::Commit((), None)
            }
            None => Update::Abort(()),
        });
    }

    /// Every revocation entry in force (the state digest).
    pub fn revocation_entries(&self) -> Vec<crate::feed::Revocation> {
        self.revocations().entries().collect()
    }

    /// Waits until the log is durable up to `lsn` (or has failed).
    pub async fn wait_durable_lsn(&self, lsn: u64) -> Result<(), crate::durability::wal::WalError> {
        let mut w = self.durable_tx.subscribe();
        loop {
            if self.wal.get().is_some_and(|w| w.is_failed()) {
                return Err(crate::durability::wal::WalError::Failed);
            }
            if *w.borrow_and_update() >= lsn {
                return Ok(());
            }
            if w.changed().await.is_err() {
                return Err(crate::durability::wal::WalError::Closed);
            }
        }
    }
}
