//! `data/cluster.json`: where a replica stands in the streams, saved with
//! each snapshot.
//!
//! The positions are read before the snapshot reads the store (every
//! message up to them is in what it reads) and written only once the
//! snapshot is in place, so they never claim more than the snapshot holds.
//! A crash between the two leaves the older positions: the next start reads
//! more of the streams than it needs, which changes nothing (records merge
//! idempotently, the order stream re-applies colour in its order and its
//! authority sequence goes back with the positions).

use super::ClusterError;
use crate::gateway::replica::Positions;
use std::io::Write;
use std::path::Path;

/// The file's format version. Version 2 added the message ids of the last
/// messages applied and the authority batches applied; a version 1 file
/// still loads (without them: the start then trusts the saved positions).
const VERSION: u64 = 2;

#[derive(serde::Serialize, serde::Deserialize)]
struct File {
    version: u64,
    #[serde(flatten)]
    positions: Positions,
}

pub fn load(data_dir: &Path) -> Result<Positions, ClusterError> {
    let path = data_dir.join("cluster.json");
    let err = |why: String| ClusterError::Positions { path: path.clone(), why };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let f: File = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
            if f.version != VERSION && f.version != 1 {
                return Err(err(format!("version {} is not supported by this build (it knows {VERSION})", f.version)));
            }
            Ok(f.positions)
        }
        // A new replica: read both streams from the start.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Positions::default()),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes the file atomically: a temporary file, fsynced, renamed over it,
/// and the directory fsynced.
pub fn save(data_dir: &Path, p: &Positions) -> std::io::Result<()> {
    let tmp = data_dir.join("cluster.json.tmp");
    let body = serde_json::to_vec(&File { version: VERSION, positions: p.clone() }).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, data_dir.join("cluster.json"))?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let d = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(d.path()).expect("missing is fine"), Positions::default());
        let p = Positions {
            order: 7,
            feed_seq: 3,
            records: 99,
            order_ids: vec![(6, "a:1:color".into()), (7, "auth-00".into())],
            records_ids: vec![(99, "b:1-4".into())],
            batches: vec![crate::gateway::replica::AppliedBatch { seq: 3, stream: 7, lsn: 12, sha256: "00".into() }],
            batches_from_start: true,
        };
        save(d.path(), &p).expect("save");
        assert_eq!(load(d.path()).expect("load"), p);
        // A version 1 file (before the ids and batches) still loads.
        std::fs::write(d.path().join("cluster.json"), b"{\"version\":1,\"order\":5,\"feed_seq\":2,\"records\":8}")
            .expect("write");
        let old = load(d.path()).expect("version 1");
        assert_eq!((old.order, old.feed_seq, old.records), (5, 2, 8));
        assert!(old.order_ids.is_empty() && old.batches.is_empty() && !old.batches_from_start);
        std::fs::write(d.path().join("cluster.json"), b"{\"version\":9,\"order\":1,\"feed_seq\":1,\"records\":1}")
            .expect("write");
        assert!(load(d.path()).unwrap_err().to_string().contains("version 9"));
    }
}
