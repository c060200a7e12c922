//! Tracing answers for the whole cluster: this replica's own tracing index
//! and the other replicas' (fed by the records stream), merged by time.

use crate::durability::visits::{Visit, VisitError, VisitIndex};
use crate::HolderId;
use std::sync::Arc;

/// A registration and the replica that made it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeVisit {
    #[serde(flatten)]
    pub visit: Visit,
    pub node: String,
}

/// What a tracing query asks.
#[derive(Debug, Clone)]
pub enum Query {
    Holder(HolderId),
    Checkpoint(String),
}

/// Runs `q` over every index and calls `emit` in (time, node, lsn) order;
/// stops when `emit` returns false. Blocking.
pub fn merged(
    sources: &[(String, Arc<VisitIndex>)],
    q: &Query,
    from: u64,
    to: u64,
    emit: &mut dyn FnMut(NodeVisit) -> bool,
) -> Result<(), VisitError> {
    let mut all: Vec<NodeVisit> = Vec::new();
    for (node, index) in sources {
        let mut push = |v: Visit| {
            all.push(NodeVisit { visit: v, node: node.clone() });
            true
        };
        match q {
            Query::Holder(h) => index.by_holder(h, from, to, &mut push)?,
            Query::Checkpoint(c) => index.by_checkpoint(c, from, to, &mut push)?,
        }
    }
    all.sort_by(|a, b| (a.visit.at, &a.node, a.visit.lsn).cmp(&(b.visit.at, &b.node, b.visit.lsn)));
    for v in all {
        if !emit(v) {
            break;
        }
    }
    Ok(())
}
