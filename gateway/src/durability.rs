//! Durability: the write-ahead log, the state file (the snapshot of the
//! store on disk) and the tracing index of passages, which follows the log
//! through the [`indexer`]. Recovery, snapshots and retention, which need
//! the gateway, are `gateway::lifecycle`. Nothing here knows the gateway.

pub mod gentle;
pub mod indexer;
pub mod state_file;
pub mod visits;
pub mod wal;
