//! The records stream's reader: the other replicas' durable log records.
//!
//! Each message is a run of one replica's log records (scans of known
//! holders and check-ins), in that replica's log format. Their effects on
//! holders, less colour (the order stream carries colour), are merged by
//! the commutative rule (`healthgate_core::merge`), so the order across
//! replicas does not matter and a record applied twice changes nothing.
//! Their registrations go into that replica's own tracing index here,
//! `data/cluster/visits-<node>.redb`, keyed by its LSNs: the index skips
//! what it holds already, which is the at-least-once delivery's
//! deduplication.

use super::{streams, Cluster, ClusterError};
use crate::durability::indexer::visit_of;
use crate::durability::visits::{Visit, VisitIndex};
use crate::durability::wal::record::{Event, Record};
use crate::durability::wal::{self, SEGMENT_MAGIC};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RETRY: Duration = Duration::from_millis(250);

fn index_path(data_dir: &Path, node: &str) -> std::path::PathBuf {
    data_dir.join("cluster").join(format!("visits-{node}.redb"))
}

pub fn open_remote_index(data_dir: &Path, node: &str) -> Result<VisitIndex, ClusterError> {
    let dir = data_dir.join("cluster");
    std::fs::create_dir_all(&dir).map_err(|e| ClusterError::Index { node: node.into(), why: e.to_string() })?;
    VisitIndex::open(&index_path(data_dir, node))
        .map_err(|e| ClusterError::Index { node: node.into(), why: e.to_string() })
}

/// Opens the remote indexes found on disk (other nodes' only), and says
/// how many were damaged. A damaged one (it fails to open or to be read,
/// as after a SIGKILL in the middle of creating it) must not stop the
/// replica: it is set aside as `visits-<node>.redb.damaged-<unix time>`
/// with a warning and opened anew, and the caller reads the records stream
/// again from its start, which fills it again (merging is idempotent and
/// an index skips what it holds).
pub fn open_remote_indexes(data_dir: &Path, me: &str) -> Result<(HashMap<String, Arc<VisitIndex>>, u64), ClusterError> {
    let mut out = HashMap::new();
    let mut damaged = 0;
    let Ok(dir) = std::fs::read_dir(data_dir.join("cluster")) else { return Ok((out, damaged)) };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(node) = name.strip_prefix("visits-").and_then(|n| n.strip_suffix(".redb")) else { continue };
        if node == me {
            continue;
        }
        let index = match open_checked(data_dir, node) {
            Ok(index) => index,
            Err(e) => {
                let path = index_path(data_dir, node);
                let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let aside = path.with_extension(format!("redb.damaged-{at}"));
                std::fs::rename(&path, &aside)
                    .map_err(|e| ClusterError::Index { node: node.into(), why: format!("setting it aside: {e}") })?;
                ::tracing::warn!(
                    node, error = %e, moved_to = %aside.display(),
                    "a remote tracing index is damaged: set aside, reading the records stream again to rebuild it"
                );
                damaged += 1;
                open_remote_index(data_dir, node)?
            }
        };
        out.insert(node.to_owned(), Arc::new(index));
    }
    Ok((out, damaged))
}

/// Opens a remote index and reads it once; redb may panic on damage its
/// checksums do not cover, which counts as damage here.
fn open_checked(data_dir: &Path, node: &str) -> Result<VisitIndex, ClusterError> {
    std::panic::catch_unwind(|| {
        let index = open_remote_index(data_dir, node)?;
        index.indexed_lsn().map_err(|e| ClusterError::Index { node: node.into(), why: e.to_string() })?;
        Ok(index)
    })
    .unwrap_or_else(|_| Err(ClusterError::Index { node: node.into(), why: "the index panicked while opening".into() }))
}

/// The records a message carries; `None` when one does not check or the
/// count is not the one announced.
pub fn decode(payload: &[u8], announced: Option<usize>) -> Option<Vec<Record>> {
    let mut out = Vec::new();
    let mut end = SEGMENT_MAGIC.len();
    wal::follow_frames(&SEGMENT_MAGIC, SEGMENT_MAGIC.len(), payload, |r, e| {
        out.push(r);
        end = e;
    });
    let whole = end - SEGMENT_MAGIC.len() == payload.len();
    (whole && announced.is_none_or(|n| n == out.len())).then_some(out)
}

pub async fn run(c: Arc<Cluster>) {
    let durable = format!("hg-{}-records", c.settings.node);
    let own = c.settings.records_subject(&c.settings.node);
    let prefix = format!("{}.records.", c.settings.subject_prefix);
    // The server whose stream was last checked against every id.
    let mut checked: Option<String> = None;
    loop {
        let generation = c.connections.load(std::sync::atomic::Ordering::Acquire);
        let server = c.server_id();
        let pos = c.records_pos.load(std::sync::atomic::Ordering::Acquire);
        // A restarted server may have lost messages and given their
        // sequences to newer ones: read again from where the stream still
        // holds what was applied (the senders publish again what it lost;
        // merging is idempotent and the indexes skip what they hold).
        let (ids, quick) = c.ids_to_check(1, checked.as_deref(), &server);
        match streams::agrees_up_to(&c.js, &c.settings.records_stream, &ids, pos).await {
            Ok(agreed) if agreed < pos && quick => {
                // Something changed under a server that did not restart
                // (an operator purged the stream?): look at every id.
                ::tracing::warn!(applied = pos, agrees_up_to = agreed, "stream changed under this reader; checking");
                checked = None;
                continue;
            }
            Ok(agreed) if agreed < pos => {
                ::tracing::warn!(
                    applied = pos,
                    agrees_up_to = agreed,
                    "the records stream no longer holds what this replica applied: it lost messages; reading again"
                );
                c.records_rewound(agreed);
                continue;
            }
            Ok(_) => checked = Some(server.clone()),
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        let consumer = match streams::consumer(&c.js, &c.settings.records_stream, &durable, pos + 1).await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let Ok(mut messages) = consumer.messages().await else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        loop {
            // A pull that died with its connection (a partition) may never
            // end: when nothing comes while the stream holds more than this
            // replica applied, read again from the position.
            let next = match tokio::time::timeout(super::probe::IDLE, messages.next()).await {
                Ok(next) => next,
                Err(_) if c.reader_behind(1) || c.reconnected_since(generation) || c.server_id() != server => {
                    ::tracing::info!("records reader idle while the stream holds more: reading again");
                    break;
                }
                Err(_) => continue,
            };
            let Some(Ok(m)) = next else { break };
            if c.reconnected_since(generation) || c.server_id() != server {
                break;
            }
            let Ok(info) = m.info() else { continue };
            let (seq, pending, published) = (info.stream_sequence, info.pending, info.published);
            let subject = m.subject.as_str();
            if subject != own {
                match subject.strip_prefix(&prefix) {
                    Some(node) if !node.is_empty() => {
                        let count = streams::header(m.headers.as_ref(), "Hg-Count").and_then(|n| n.parse().ok());
                        match decode(&m.payload, count) {
                            Some(records) => {
                                let started = Instant::now();
                                if let Err(e) = apply(&c, node, records).await {
                                    // The message stays unacknowledged and the
                                    // position unmoved: read again after a pause.
                                    ::tracing::error!(node, error = %e, "applying remote records failed");
                                    break;
                                }
                                c.metrics.apply_seconds.set(started.elapsed().as_secs_f64());
                            }
                            None => {
                                c.metrics.refused.with_label_values(&["malformed"]).inc();
                            }
                        }
                    }
                    _ => c.metrics.refused.with_label_values(&["unknown_subject"]).inc(),
                }
            }
            c.records_applied(seq, streams::message_id(m.headers.as_ref()));
            let waited = (time::OffsetDateTime::now_utc() - published).as_seconds_f64().max(0.0);
            c.set_freshness(1, pending, if pending == 0 { 0.0 } else { waited });
            let _ = m.ack().await;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Merges a run of `node`'s records and indexes its registrations (on the
/// blocking pool: the index writes a file).
async fn apply(c: &Arc<Cluster>, node: &str, records: Vec<Record>) -> Result<(), String> {
    let index = c.remote_index(node).map_err(|e| e.to_string())?;
    let gw = c.gw.clone();
    tokio::task::spawn_blocking(move || {
        let mut visits: Vec<Visit> = Vec::with_capacity(records.len());
        for r in &records {
            match &r.event {
                Event::Scan(s) => {
                    if let Some(h) = s.holder {
                        if !s.effect.is_empty() {
                            gw.merge_replicated(&h, &s.effect, r.at, None);
                        }
                    }
                }
                Event::Checkin { holder, day, effect, .. } => gw.merge_replicated(holder, effect, r.at, Some(*day)),
                Event::Updates { .. } | Event::Revocations { .. } => {}
            }
            if let Some(v) = visit_of(r) {
                // Increasing LSNs only (a run published again may overlap).
                if visits.last().is_none_or(|l: &Visit| l.lsn < v.lsn) {
                    visits.push(v);
                }
            }
        }
        index.insert(&visits).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}
