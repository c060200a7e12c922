//! The `[cluster]` section of the configuration: raw, as serde reads it,
//! and validated into [`ClusterSettings`] (docs/CLUSTER.md). Without the
//! section the gateway runs alone and needs no external service.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Defaults, named once.
pub mod defaults {
    pub const SUBJECT_PREFIX: &str = "healthgate";
    pub const ORDER_STREAM: &str = "HG_ORDER";
    pub const RECORDS_STREAM: &str = "HG_RECORDS";
    pub const RECORDS_MAX_AGE_DAYS: u64 = 28;
    pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub node: String,
    /// One URL or several, comma-separated.
    pub nats_url: String,
    /// NATS user credentials file, relative to the configuration file.
    pub credentials_file: Option<PathBuf>,
    pub subject_prefix: Option<String>,
    pub order_stream: Option<String>,
    pub records_stream: Option<String>,
    pub records_max_age_days: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
}

/// A validated `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This replica's id: 1-32 of `[A-Za-z0-9_-]`, so that it is one NATS
    /// subject token and a file name.
    pub node: String,
    pub nats_urls: Vec<String>,
    pub credentials_file: Option<PathBuf>,
    pub subject_prefix: String,
    pub order_stream: String,
    pub records_stream: String,
    pub records_max_age: Duration,
    pub connect_timeout: Duration,
}

fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ClusterSettings {
    /// Validates the section; errors name the field.
    pub fn from_raw(raw: RawCluster, base: &Path) -> Result<ClusterSettings, (&'static str, String)> {
        if !is_token(&raw.node, 32) {
            return Err(("cluster.node", "must be 1 to 32 letters, digits, '_' or '-'".into()));
        }
        let nats_urls: Vec<String> =
            raw.nats_url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
        if nats_urls.is_empty() {
            return Err(("cluster.nats_url", "must name at least one server".into()));
        }
        for u in &nats_urls {
            let rest = u.split_once("://").map_or(
                u.as_str(),
                |(scheme, rest)| {
                    if matches!(scheme, "nats" | "tls") {
                        rest
                    } else {
                        ""
                    }
                },
            );
            if rest.is_empty() || rest.contains(char::is_whitespace) {
                return Err(("cluster.nats_url", format!("{u:?} is not a nats:// or tls:// URL or host:port")));
            }
        }
        let prefix = raw.subject_prefix.unwrap_or_else(|| defaults::SUBJECT_PREFIX.into());
        if !prefix.split('.').all(|t| is_token(t, 64)) {
            return Err((
                "cluster.subject_prefix",
                "must be dot-separated tokens of letters, digits, '_' or '-'".into(),
            ));
        }
        let stream = |field: &'static str, v: Option<String>, d: &str| {
            let v = v.unwrap_or_else(|| d.into());
            if is_token(&v, 64) {
                Ok(v)
            } else {
                Err((field, "must be 1 to 64 letters, digits, '_' or '-'".to_string()))
            }
        };
        let order_stream = stream("cluster.order_stream", raw.order_stream, defaults::ORDER_STREAM)?;
        let records_stream = stream("cluster.records_stream", raw.records_stream, defaults::RECORDS_STREAM)?;
        if order_stream == records_stream {
            return Err(("cluster.records_stream", "must differ from cluster.order_stream".into()));
        }
        let days = raw.records_max_age_days.unwrap_or(defaults::RECORDS_MAX_AGE_DAYS);
        if days == 0 || days > 3650 {
            return Err(("cluster.records_max_age_days", "must be between 1 and 3650".into()));
        }
        let connect_ms = raw.connect_timeout_ms.unwrap_or(defaults::CONNECT_TIMEOUT_MS);
        if !(100..=600_000).contains(&connect_ms) {
            return Err(("cluster.connect_timeout_ms", "must be between 100 and 600000".into()));
        }
        Ok(ClusterSettings {
            node: raw.node,
            nats_urls,
            credentials_file: raw.credentials_file.map(|p| base.join(p)),
            subject_prefix: prefix,
            order_stream,
            records_stream,
            records_max_age: Duration::from_secs(days * 86_400),
            connect_timeout: Duration::from_millis(connect_ms),
        })
    }

    /// The subject of authority batches on the order stream.
    pub fn authority_subject(&self) -> String {
        format!("{}.order.authority", self.subject_prefix)
    }
    /// The subject of a node's colour changes on the order stream.
    pub fn color_subject(&self, node: &str) -> String {
        format!("{}.order.color.{node}", self.subject_prefix)
    }
    /// The subject of a node's records on the records stream.
    pub fn records_subject(&self, node: &str) -> String {
        format!("{}.records.{node}", self.subject_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(node: &str, url: &str) -> RawCluster {
        RawCluster {
            node: node.into(),
            nats_url: url.into(),
            credentials_file: None,
            subject_prefix: None,
            order_stream: None,
            records_stream: None,
            records_max_age_days: None,
            connect_timeout_ms: None,
        }
    }

    #[test]
    fn validates_and_names_the_field() {
        let ok = ClusterSettings::from_raw(raw("a-1", "nats://127.0.0.1:4222, 127.0.0.1:4223"), Path::new("/c"));
        let ok = ok.expect("valid");
        assert_eq!(ok.nats_urls.len(), 2);
        assert_eq!(ok.records_subject("a-1"), "healthgate.records.a-1");
        for (node, url, field) in [
            ("", "nats://x:1", "cluster.node"),
            ("a.b", "nats://x:1", "cluster.node"),
            ("a", " , ", "cluster.nats_url"),
            ("a", "http://x:1", "cluster.nats_url"),
        ] {
            assert_eq!(ClusterSettings::from_raw(raw(node, url), Path::new("/")).unwrap_err().0, field);
        }
        let mut same = raw("a", "x:1");
        same.records_stream = Some("HG_ORDER".into());
        assert_eq!(ClusterSettings::from_raw(same, Path::new("/")).unwrap_err().0, "cluster.records_stream");
    }
}
