//! Shadow rules: a candidate policy decided beside the live one on every
//! scan, with no effect and no log record, its disagreements counted by
//! (live reason, candidate reason) and sampled in the log. An operator
//! tries a new rule on real traffic before it denies anyone, watches the
//! disagreements on the dashboard, and promotes it with a reload (the
//! candidate's sections copied into the configuration).
//!
//! Cheap by construction: the candidate is decided inside the holder's
//! entry lock the scan holds anyway, on the same holder view, with the pure
//! `policy::decide` (one checkpoint look-up and a few comparisons). Only the
//! rule decision is compared: verification (trust list, issuer acceptance,
//! revocations) is the live configuration's.

use crate::policy::{self, Decision, Policy, Reason, ScanInput};
use crate::state::HolderView;
use crate::token::VerifiedToken;
use crate::UnixSecs;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::OnceLock;

pub struct ShadowMetrics {
    /// Scans decided under a candidate.
    scans: IntCounter,
    disagreements: IntCounterVec,
    /// `[live reason][candidate reason]`, resolved on first use so that
    /// only pairs that happened appear on `/metrics`.
    cells: Box<[OnceLock<IntCounter>]>,
    /// 1 while a candidate policy is loaded.
    pub active: IntGauge,
}

const N: usize = Reason::ALL.len();

impl ShadowMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<ShadowMetrics> {
        let scans = IntCounter::new("healthgate_shadow_scans_total", "Scans also decided under the candidate policy.")?;
        let disagreements = IntCounterVec::new(
            Opts::new(
                "healthgate_shadow_disagreements_total",
                "Scans the candidate policy would have decided otherwise, by live and candidate reason.",
            ),
            &["live", "candidate"],
        )?;
        let active = IntGauge::new("healthgate_shadow_active", "1 while a candidate policy is loaded.")?;
        registry.register(Box::new(scans.clone()))?;
        registry.register(Box::new(disagreements.clone()))?;
        registry.register(Box::new(active.clone()))?;
        let cells = (0..N * N).map(|_| OnceLock::new()).collect();
        Ok(ShadowMetrics { scans, disagreements, cells, active })
    }

    /// Counts one disagreement; returns how many of this pair so far.
    fn disagree(&self, live: Reason, candidate: Reason) -> u64 {
        let cell = &self.cells[live as usize * N + candidate as usize];
        let c = cell.get_or_init(|| self.disagreements.with_label_values(&[live.as_str(), candidate.as_str()]));
        c.inc();
        c.get()
    }
}

/// Decides the scan under `candidate` and counts a disagreement with the
/// live `decision`. A checkpoint the candidate lacks cannot happen: a
/// candidate must decide at every live checkpoint (checked at load).
#[allow(clippy::too_many_arguments)]
pub(crate) fn shadow(
    metrics: &ShadowMetrics,
    candidate: &Policy,
    token: &VerifiedToken,
    checkpoint: &str,
    holder: Option<HolderView<'_>>,
    input: ScanInput,
    now: UnixSecs,
    live: &Decision,
) {
    let Some(place) = candidate.place(checkpoint) else { return };
    metrics.scans.inc();
    let (d, _) = policy::decide(token, place, holder, input, now);
    if (d.pass, d.reason) == (live.pass, live.reason) {
        return;
    }
    let n = metrics.disagree(live.reason, d.reason);
    // A sample in the log: the 1st, 2nd, 4th, 8th... of each pair.
    if n.is_power_of_two() {
        tracing::info!(
            checkpoint,
            holder = %token.claims().holder.masked(),
            live = %format!("{}/{}", live.decision_str(), live.reason.as_str()),
            candidate = %format!("{}/{}", d.decision_str(), d.reason.as_str()),
            count = n,
            "shadow rules disagree"
        );
    }
}
