//! Time: an injectable clock and RFC 3339 helpers.
//!
//! Every rule that depends on time takes `now` as an argument; the server
//! reads it from a [`Clock`] once per request. Tests use [`ManualClock`] and
//! never sleep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, UTC.
pub type UnixSecs = u64;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixSecs;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixSecs {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(now: UnixSecs) -> Self {
        ManualClock(Arc::new(AtomicU64::new(now)))
    }
    pub fn set(&self, now: UnixSecs) {
        self.0.store(now, Ordering::SeqCst);
    }
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixSecs {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 time at or after 1970 (e.g. 2020-04-25T08:30:00+08:00)")]
pub struct ParseTimeError(pub String);

pub fn parse_rfc3339(s: &str) -> Result<UnixSecs, ParseTimeError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp()).ok())
        .ok_or_else(|| ParseTimeError(s.to_owned()))
}

pub fn format_rfc3339(t: UnixSecs) -> String {
    i64::try_from(t)
        .ok()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| t.to_string())
}

/// Serde helpers for RFC 3339 timestamps in configuration files.
pub mod serde_rfc3339 {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &UnixSecs, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_rfc3339(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<UnixSecs, D::Error> {
        let s = String::deserialize(d)?;
        parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_with_offset() {
        let t = parse_rfc3339("2020-04-25T08:30:00+08:00").unwrap();
        assert_eq!(t, 1_587_774_600);
        assert_eq!(format_rfc3339(t), "2020-04-25T00:30:00Z");
        assert!(parse_rfc3339("1969-12-31T23:59:59Z").is_err());
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
