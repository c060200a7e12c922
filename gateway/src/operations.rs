//! Operations: what an operator touches besides the API: configuration,
//! API keys by role, Prometheus metrics, key files, TLS material, the open-file limit, the demo deployment and
//! the small HTTP client the CLI uses to push authority batches.

pub mod auth;
pub mod client;
pub mod cluster_settings;
pub mod config;
pub mod demo;
pub mod keyfiles;
pub mod limits;
pub mod metrics;
pub mod tls;
