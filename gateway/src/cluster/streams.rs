//! NATS and JetStream plumbing: connecting, creating or checking the two
//! streams, (re)creating this replica's durable consumers from its own
//! positions, and publishing with the headers the design names.

use super::{Cluster, ClusterError};
use crate::operations::cluster_settings::ClusterSettings;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Duplicates of a message id inside this window are dropped by the stream.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Headers of ours (the NATS ones come from `async_nats::header`).
pub const H_NODE: &str = "Hg-Node";
pub const H_KIND: &str = "Hg-Kind";
pub const H_AT: &str = "Hg-At";
pub const H_FIRST_LSN: &str = "Hg-First-Lsn";
pub const H_LAST_LSN: &str = "Hg-Last-Lsn";
/// JetStream's message id header (what deduplicates publishes).
pub const MSG_ID: &str = "Nats-Msg-Id";

/// Connects (failing at once when no server answers: a replica that cannot
/// reach its cluster at start says so), then reconnects forever.
pub async fn connect(
    s: &ClusterSettings,
    connected: Arc<AtomicBool>,
    connections: Arc<AtomicU64>,
) -> Result<async_nats::Client, ClusterError> {
    let opts = match &s.credentials_file {
        Some(p) => async_nats::ConnectOptions::with_credentials_file(p)
            .await
            .map_err(|source| ClusterError::Credentials { path: p.clone(), source })?,
        None => async_nats::ConnectOptions::new(),
    };
    let (flag, count) = (connected.clone(), connections.clone());
    let opts = opts
        .name(format!("healthgate-{}", s.node))
        .connection_timeout(s.connect_timeout)
        .max_reconnects(None)
        // Notice a dead connection (a partition drops packets silently) in
        // a few seconds rather than the client's default minutes.
        .ping_interval(Duration::from_secs(2))
        // Reconnect quickly: a replica cut off is stale until it is back.
        .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 100).min(1000)))
        .event_callback(move |event| {
            let (flag, count) = (flag.clone(), count.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        count.fetch_add(1, Ordering::AcqRel);
                        flag.store(true, Ordering::Release)
                    }
                    async_nats::Event::Disconnected => flag.store(false, Ordering::Release),
                    _ => {}
                }
            }
        });
    let urls: Vec<async_nats::ServerAddr> = s
        .nats_urls
        .iter()
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| ClusterError::Connect { urls: s.nats_urls.join(","), why: format!("{e}") })?;
    let client = tokio::time::timeout(s.connect_timeout, opts.connect(urls))
        .await
        .map_err(|_| ClusterError::Connect { urls: s.nats_urls.join(","), why: "timed out".into() })?
        .map_err(|e| ClusterError::Connect { urls: s.nats_urls.join(","), why: e.to_string() })?;
    connected.store(true, Ordering::Release);
    Ok(client)
}

fn stream_config(name: &str, subject: String, max_age: Duration) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subject],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age,
        duplicate_window: DUPLICATE_WINDOW,
        allow_direct: true,
        ..Default::default()
    }
}

/// Creates the streams if missing, or checks the ones found; returns the
/// last sequence of each (order, records): where "caught up" is at start.
pub async fn ensure(js: &jetstream::Context, s: &ClusterSettings) -> Result<(u64, u64), ClusterError> {
    let wanted = [
        // The order stream keeps everything: a replica joining late needs
        // every authority batch.
        stream_config(&s.order_stream, format!("{}.order.>", s.subject_prefix), Duration::ZERO),
        stream_config(&s.records_stream, format!("{}.records.>", s.subject_prefix), s.records_max_age),
    ];
    let mut ends = [0u64; 2];
    for (i, want) in wanted.into_iter().enumerate() {
        let name = want.name.clone();
        let err = |why: String| ClusterError::Stream { stream: name.clone(), why };
        let mut st = match js.get_stream(&name).await {
            Ok(st) => st,
            Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {
                js.create_stream(want.clone()).await.map_err(|e| err(format!("cannot create it: {e}")))?
            }
            Err(e) => return Err(err(format!("{e} (is JetStream enabled on the server? nats-server -js)"))),
        };
        let info = st.info().await.map_err(|e| err(e.to_string()))?;
        let c = &info.config;
        if !c.subjects.contains(&want.subjects[0]) {
            return Err(err(format!("has subjects {:?}, needs {:?}", c.subjects, want.subjects[0])));
        }
        if c.storage != stream::StorageType::File {
            return Err(err("is kept in memory; replicas need file storage".into()));
        }
        if c.duplicate_window.is_zero() {
            return Err(err("has no duplicate window; replicas publish with message ids".into()));
        }
        if i == 0 && !c.max_age.is_zero() {
            return Err(err("drops old messages (max_age); the order stream must keep every batch".into()));
        }
        if c.retention != stream::RetentionPolicy::Limits {
            return Err(err("uses interest or work-queue retention; every replica reads every message".into()));
        }
        ends[i] = info.state.last_sequence;
    }
    Ok((ends[0], ends[1]))
}

/// (Re)creates this replica's durable consumer on `stream` so that it
/// delivers from `start` on: the replica's own position, not the server's
/// memory of it, decides where reading resumes.
pub async fn consumer(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    start: u64,
) -> Result<consumer::PullConsumer, String> {
    let st = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    // Gone already is fine.
    let _ = st.delete_consumer(durable).await;
    let deliver_policy = if start <= 1 {
        consumer::DeliverPolicy::All
    } else {
        consumer::DeliverPolicy::ByStartSequence { start_sequence: start }
    };
    st.create_consumer(consumer::pull::Config {
        durable_name: Some(durable.to_owned()),
        deliver_policy,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(60),
        max_ack_pending: 100_000,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())
}

/// The last sequence of `stream` (rollback checks).
pub async fn last_sequence(js: &jetstream::Context, stream: &str) -> Result<u64, String> {
    let mut st = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    Ok(st.info().await.map_err(|e| e.to_string())?.state.last_sequence)
}

/// Publishes a posted authority batch to the order stream; returns its
/// stream sequence (the first copy's, when the stream dropped this one as a
/// duplicate of a retried post).
pub async fn publish_authority(c: &Cluster, kind: &str, at: u64, body: Vec<u8>) -> Result<u64, String> {
    publish_signed(c, kind, &at.to_string(), body.into()).await
}

/// Publishes an authority batch exactly as signed, with its kind and
/// accepted time, under `Nats-Msg-Id: auth-<sha256 of the body>`: a post
/// retried, or a batch published again by several replicas after the
/// stream lost it, lands once within the duplicate window.
pub async fn publish_signed(c: &Cluster, kind: &str, at: &str, body: bytes::Bytes) -> Result<u64, String> {
    let id = format!("auth-{}", body_sha256(&body));
    let mut h = HeaderMap::new();
    h.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    h.insert(H_KIND, kind);
    h.insert(H_AT, at);
    h.insert(H_NODE, c.settings.node.as_str());
    let ack = c.js.publish_with_headers(c.settings.authority_subject(), h, body).await.map_err(|e| e.to_string())?;
    let ack = tokio::time::timeout(Duration::from_secs(10), ack)
        .await
        .map_err(|_| "no acknowledgement from JetStream".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(ack.sequence)
}

/// SHA-256 of a batch as signed and published, in hex.
pub fn body_sha256(body: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(body))
}

/// A header's value as text.
pub fn header<'a>(h: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    h?.get(name).map(|v| v.as_str())
}

/// How many (stream sequence, message id) pairs a reader remembers of what
/// it applied, and checks against the stream (and saves with its positions).
pub const RECENT_IDS: usize = 256;

/// What a reader applied last, by stream sequence, oldest first: to tell a
/// stream that lost its tail (nats-server killed before its own fsync) and
/// has since given the same sequences to other messages.
#[derive(Default)]
pub struct Recent(std::collections::VecDeque<(u64, String)>);

impl Recent {
    /// What was saved with the positions.
    pub fn from_saved(ids: Vec<(u64, String)>) -> Recent {
        let mut r = Recent(ids.into());
        r.trim();
        r
    }

    fn trim(&mut self) {
        while self.0.len() > RECENT_IDS {
            self.0.pop_front();
        }
    }

    pub fn push(&mut self, seq: u64, id: String) {
        self.0.push_back((seq, id));
        self.trim();
    }

    pub fn forget_after(&mut self, seq: u64) {
        self.0.retain(|(s, _)| *s <= seq);
    }

    /// The pairs at or below `pos`, oldest first.
    pub fn upto(&self, pos: u64) -> Vec<(u64, String)> {
        self.0.iter().filter(|(s, _)| *s <= pos).cloned().collect()
    }
}

/// The message id a message carries ("" when none).
pub fn message_id(h: Option<&HeaderMap>) -> String {
    header(h, MSG_ID).unwrap_or_default().to_owned()
}

/// How far `stream` still holds what a reader applied up to `pos`, given
/// the ids it remembers (`ids`, oldest first, contiguous up to `pos`): the
/// first remembered sequence where the stream now holds another message or
/// none marks the end of the agreement. When even the oldest remembered one
/// differs, nothing below it can be trusted either: 0, read it all again.
/// With no ids to compare (positions from before they were saved), only a
/// stream ending before `pos` is seen.
pub async fn agrees_up_to(
    js: &jetstream::Context,
    stream: &str,
    ids: &[(u64, String)],
    pos: u64,
) -> Result<u64, String> {
    if pos == 0 {
        return Ok(0);
    }
    let mut st = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let last = st.info().await.map_err(|e| e.to_string())?.state.last_sequence;
    if ids.is_empty() {
        return Ok(pos.min(last));
    }
    for (i, (seq, id)) in ids.iter().enumerate() {
        let there = if *seq > last {
            None
        } else {
            match st.get_raw_message(*seq).await {
                Ok(m) => Some(message_id(Some(&m.headers))),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => None,
                Err(e) => return Err(e.to_string()),
            }
        };
        if there.as_deref() != Some(id.as_str()) {
            return Ok(if i == 0 { 0 } else { seq - 1 });
        }
    }
    Ok(pos.min(last))
}
