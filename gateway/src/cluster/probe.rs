//! The contact probe: how a replica knows it is stale.
//!
//! A replica cut off by a partition may not notice for a long time: its TCP
//! connection to NATS stays open while packets vanish, and its readers just
//! see no messages, which looks the same as a quiet cluster. So every
//! [`INTERVAL`] the probe asks JetStream for the order stream's end, with a
//! short deadline. The time since the last answer is the replica's contact
//! age; past [`STALE_AFTER`] (or while disconnected) the replica says it is
//! stale in `/readyz` and in `healthgate_cluster_stale`, and keeps serving
//! from what it holds. The answer also measures the order lag while the
//! reader has nothing to read (it only sees lag in the messages it gets),
//! and tells a reader whose pull died with a connection that it is behind
//! ([`IDLE`]).

use super::{streams, Cluster};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the probe asks.
pub const INTERVAL: Duration = Duration::from_millis(500);
/// How long it waits for an answer.
const DEADLINE: Duration = Duration::from_millis(1500);
/// Contact older than this is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(3);
/// A reader that got nothing for this long while the probe saw its stream
/// hold more than it applied reads again from its position.
pub const IDLE: Duration = Duration::from_secs(2);

pub async fn run(c: Arc<Cluster>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let asked = Instant::now();
        let ends = tokio::time::timeout(DEADLINE, async {
            let order = streams::last_sequence(&c.js, &c.settings.order_stream).await?;
            let records = streams::last_sequence(&c.js, &c.settings.records_stream).await?;
            Ok::<_, String>((order, records))
        })
        .await;
        if let Ok(Ok(ends)) = ends {
            c.contacted(asked);
            c.set_stream_ends(ends);
        }
        c.update_staleness();
    }
}
