//! The state digest and dump that convergence checks compare replica by
//! replica (`GET /v1/admin/cluster/state`).
//!
//! What is compared is what decides: each holder's *effective* colour as
//! of one time (stored colours differ harmlessly where one replica has
//! folded a due step and another not yet), its remaining steps, health
//! record, check-in day and anti-passback register; the revocations still
//! in force; the authority sequence. The digest is the XOR of one SHA-256 a
//! holder, so it does not depend on the map's iteration order.

use crate::gateway::Gateway;
use crate::state::effective;
use crate::UnixSecs;
use sha2::{Digest, Sha256};

/// One holder as compared.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HolderLine {
    pub holder: String,
    pub color: &'static str,
    pub since: UnixSecs,
    pub steps: Vec<(UnixSecs, &'static str)>,
    pub health_at: Option<UnixSecs>,
    pub checkin_day: Option<u16>,
    pub inside: bool,
    pub passback_group: u16,
    pub passback_at: UnixSecs,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub at: UnixSecs,
    pub holders: u64,
    pub digest: String,
    pub revocations: u64,
    pub revocations_digest: String,
    pub feed_seq: u64,
}

/// Walks the whole store (blocking: run it on the blocking pool). Calls
/// `line` for every holder when given.
pub fn summarize(gw: &Gateway, at: UnixSecs, mut line: Option<&mut dyn FnMut(&HolderLine)>) -> Summary {
    let mut digest = [0u8; 32];
    let mut holders = 0u64;
    gw.store().for_each(|id, state, steps| {
        let (color, since, applied) = effective(state.color(), state.since(), steps, at);
        let (inside, group, passback_at) = state.passback();
        let l = HolderLine {
            holder: id.to_string(),
            color: color.as_str(),
            since,
            steps: steps[applied..].iter().map(|s| (s.until, s.then.as_str())).collect(),
            health_at: state.health_at(),
            checkin_day: state.checkin_day(),
            inside,
            // Outside, the group and time of the last write are kept only to
            // order writes; a single gateway keeps the entry's, a replica the
            // exit's. Compare what a decision reads.
            passback_group: if inside { group } else { 0 },
            passback_at: if inside { passback_at } else { 0 },
        };
        let h = Sha256::digest(serde_json::to_vec(&l).unwrap_or_default());
        for (d, b) in digest.iter_mut().zip(h.iter()) {
            *d ^= b;
        }
        holders += 1;
        if let Some(f) = line.as_mut() {
            f(&l);
        }
    });
    let mut rev = [0u8; 32];
    let mut revocations = 0u64;
    for r in gw.revocation_entries() {
        if r.expires.is_some_and(|e| e <= at) {
            continue;
        }
        let h = Sha256::digest(serde_json::to_vec(&r).unwrap_or_default());
        for (d, b) in rev.iter_mut().zip(h.iter()) {
            *d ^= b;
        }
        revocations += 1;
    }
    Summary {
        at,
        holders,
        digest: hex::encode(digest),
        revocations,
        revocations_digest: hex::encode(rev),
        feed_seq: gw.last_feed_seq(),
    }
}
