//! The order stream's reader: authority batches and colour changes, applied
//! one after the other in stream order, on every replica (the one that
//! published them too).
//!
//! An authority batch is checked here as if it had been posted to this
//! replica: the Ed25519 signature by one of *this* replica's authority keys
//! and a sequence after the last one *it* applied. NATS is not trusted: a
//! forged or replayed batch in the stream is refused and counted, and
//! changes nothing. Batches are applied on the blocking pool (up to 100 000
//! changes); the reader waits for each before the next, which is the order.

use super::{streams, Cluster};
use crate::durability::wal::record::{Event, Record};
use crate::durability::wal::{self, SEGMENT_MAGIC};
use crate::feed::{FeedError, RevocationBatch, UpdateBatch};
use crate::gateway::replica::AuthorityBatch;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// Pause before reading again after the connection or the consumer failed.
const RETRY: Duration = Duration::from_millis(250);

/// How many applied authority messages a replica keeps to publish again.
pub const KEPT: usize = 4096;

/// An applied authority message, kept in case the stream loses it.
pub struct Kept {
    seq: u64,
    kind: String,
    at: String,
    body: bytes::Bytes,
}

/// Publishes again the authority messages this replica applied past the
/// stream's end (the stream lost them): with the same message id, so that
/// of all the replicas doing so only one copy lands, and every replica that
/// has not applied a batch yet does, in the sequence check's order.
async fn republish_lost(c: &Cluster, last: u64) {
    let lost: Vec<(String, String, bytes::Bytes)> = c
        .recent_batches
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|k| k.seq > last)
        .map(|k| (k.kind.clone(), k.at.clone(), k.body.clone()))
        .collect();
    for (kind, at, body) in lost {
        use sha2::Digest;
        let id = format!("auth-{}", hex::encode(sha2::Sha256::digest(&body)));
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        h.insert(streams::H_KIND, kind.as_str());
        h.insert(streams::H_AT, at.as_str());
        h.insert(streams::H_NODE, c.settings.node.as_str());
        let sent = match c.js.publish_with_headers(c.settings.authority_subject(), h, body).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if !sent {
            c.metrics.publish_failures.inc();
        }
    }
}

pub async fn run(c: Arc<Cluster>) {
    let durable = format!("hg-{}-order", c.settings.node);
    let mut recent = streams::Recent::default();
    loop {
        let generation = c.connections.load(std::sync::atomic::Ordering::Acquire);
        let (pos, _) = c.order_position();
        // The stream may have lost its tail (nats-server killed before its
        // own fsync): what this replica applied past the end is applied; the
        // senders' shippers publish it again and the sequence checks drop
        // what is already in force.
        match streams::last_sequence(&c.js, &c.settings.order_stream).await {
            Ok(last) if last < pos => {
                ::tracing::warn!(
                    applied = pos,
                    stream_last = last,
                    "the order stream ends before what this replica applied: it lost messages"
                );
                c.metrics.refused.with_label_values(&["stream_rewound"]).inc();
                republish_lost(&c, last).await;
                c.recent_batches.lock().unwrap_or_else(|e| e.into_inner()).retain(|k| k.seq <= last);
                recent.forget_after(last);
                c.order_rewound(last);
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                ::tracing::debug!(error = %e, "order stream unavailable");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        // It may also have lost its tail and given the same sequences to
        // newer messages since: what it holds where this replica applied
        // its last messages must be those messages.
        match recent.diverged(&c.js, &c.settings.order_stream, pos).await {
            Ok(None) => {}
            Ok(Some(at)) => {
                ::tracing::warn!(
                    applied = pos,
                    agrees_up_to = at,
                    "the order stream holds other messages where this replica applied its own: it lost messages"
                );
                c.metrics.refused.with_label_values(&["stream_rewound"]).inc();
                republish_lost(&c, at).await;
                c.recent_batches.lock().unwrap_or_else(|e| e.into_inner()).retain(|k| k.seq <= at);
                recent.forget_after(at);
                c.order_rewound(at);
                continue;
            }
            Err(e) => {
                ::tracing::debug!(error = %e, "order stream unavailable");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        let consumer = match streams::consumer(&c.js, &c.settings.order_stream, &durable, pos + 1).await {
            Ok(x) => x,
            Err(e) => {
                ::tracing::debug!(error = %e, "order consumer unavailable");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                ::tracing::debug!(error = %e, "order messages unavailable");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            // A pull that died with its connection (a partition) may never
            // end: when nothing comes while the stream holds more than this
            // replica applied, read again from the position.
            let next = match tokio::time::timeout(super::probe::IDLE, messages.next()).await {
                Ok(next) => next,
                Err(_) if c.reader_behind(0) || c.reconnected_since(generation) => {
                    ::tracing::info!("order reader idle while the stream holds more: reading again");
                    break;
                }
                Err(_) => continue,
            };
            let Some(Ok(m)) = next else { break };
            if c.reconnected_since(generation) {
                // The server may have restarted without its tail: check
                // what it holds before applying anything more.
                break;
            }
            let Ok(info) = m.info() else { continue };
            let (seq, pending, published) = (info.stream_sequence, info.pending, info.published);
            if seq <= c.order_position().0 {
                // Delivered again (an acknowledgement was lost), or the
                // stream reused sequences: look again from the top.
                break;
            }
            let outcome = apply(&c, &m.subject, m.headers.as_ref(), &m.payload).await;
            if matches!(outcome, Some(Ok(_))) {
                let header = |n| streams::header(m.headers.as_ref(), n).unwrap_or_default().to_owned();
                let mut kept = c.recent_batches.lock().unwrap_or_else(|e| e.into_inner());
                kept.push_back(Kept {
                    seq,
                    kind: header(streams::H_KIND),
                    at: header(streams::H_AT),
                    body: m.payload.clone(),
                });
                while kept.len() > KEPT {
                    kept.pop_front();
                }
            }
            recent.push(seq, m.headers.as_ref());
            c.order_applied(seq, outcome);
            let waited = (time::OffsetDateTime::now_utc() - published).as_seconds_f64().max(0.0);
            // Nothing pending: caught up, whatever the last message waited.
            c.set_freshness(0, pending, if pending == 0 { 0.0 } else { waited });
            let _ = m.ack().await;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Applies one order-stream message; the outcome of an authority batch is
/// kept for the post that may be waiting on it.
async fn apply(
    c: &Arc<Cluster>,
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Option<Result<(u64, u64), FeedError>> {
    let refuse = |why: &str| {
        c.metrics.refused.with_label_values(&[why]).inc();
    };
    if subject == c.settings.authority_subject() {
        let at = streams::header(headers, streams::H_AT).and_then(|a| a.parse::<u64>().ok());
        let batch = match streams::header(headers, streams::H_KIND) {
            Some("updates") => serde_json::from_slice::<UpdateBatch>(payload).map(AuthorityBatch::Updates),
            Some("revocations") => serde_json::from_slice::<RevocationBatch>(payload).map(AuthorityBatch::Revocations),
            _ => {
                refuse("malformed");
                return Some(Err(FeedError::Malformed("unknown batch kind".into())));
            }
        };
        let (Ok(batch), Some(at)) = (batch, at) else {
            refuse("malformed");
            return Some(Err(FeedError::Malformed("undecodable batch".into())));
        };
        let gw = c.gw.clone();
        let outcome = tokio::task::spawn_blocking(move || gw.apply_replicated(&batch, at))
            .await
            .unwrap_or_else(|e| Err(FeedError::Unavailable(e.to_string())));
        match &outcome {
            Ok(_) => {}
            Err(FeedError::Unauthenticated(_)) => refuse("unauthenticated"),
            Err(FeedError::Replay { .. }) => refuse("replay"),
            Err(FeedError::Malformed(_)) => refuse("malformed"),
            Err(FeedError::Unavailable(_)) => refuse("unavailable"),
        }
        if let Err(e) = &outcome {
            ::tracing::info!(error = %e, "authority batch from the order stream refused");
        }
        return Some(outcome);
    }
    let color_prefix = format!("{}.order.color.", c.settings.subject_prefix);
    if subject.starts_with(&color_prefix) {
        match one_record(payload).map(|r| (r.at, color_of(&r.event))) {
            Some((at, Some((holder, color, steps)))) => c.gw.apply_replicated_color(&holder, color, steps, at),
            _ => refuse("malformed"),
        }
        return None;
    }
    refuse("unknown_subject");
    None
}

/// The single log record a colour message carries.
fn one_record(payload: &[u8]) -> Option<Record> {
    let mut out = None;
    let mut n = 0;
    wal::follow_frames(&SEGMENT_MAGIC, SEGMENT_MAGIC.len(), payload, |r, _| {
        n += 1;
        out = Some(r);
    });
    (n == 1).then_some(out).flatten()
}

/// The colour change a log record carries, if any.
pub fn color_of(e: &Event) -> Option<(crate::HolderId, crate::Color, Vec<crate::state::Step>)> {
    match e {
        Event::Scan(s) => {
            let (c, steps) = s.effect.color.clone()?;
            Some((s.holder?, c, steps))
        }
        Event::Checkin { holder, effect, .. } => {
            let (c, steps) = effect.color.clone()?;
            Some((*holder, c, steps))
        }
        _ => None,
    }
}
