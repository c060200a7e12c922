//! How a logged event changes the gateway's state: the same functions for
//! the live path (right after the event is logged) and for replay at
//! recovery, so that the two can never drift apart.

use super::Gateway;
use crate::durability::wal::record::{Event, Record};
use crate::state::{Effect, HolderState, Step};
use crate::store::Update;
use crate::{Color, UnixSecs};

/// Applies a holder's effect as at `at` (and the check-in day, for a
/// check-in); returns the colour change the store applies with it. A
/// replica (`merge`) merges the effect by the rule every replica uses for
/// the others' effects too (`healthgate_core::merge`), so that the order in
/// which effects reach a replica cannot matter.
pub(crate) fn settle(
    state: &mut HolderState,
    effect: &Effect,
    at: UnixSecs,
    checkin_day: Option<u16>,
    merge: bool,
) -> Option<(Color, Vec<Step>)> {
    if merge {
        healthgate_core::merge::merge(state, effect, at, checkin_day);
    } else {
        effect.apply(state, at);
        if let Some(day) = checkin_day {
            state.set_checkin_day(day);
        }
    }
    effect.color.clone()
}

impl Gateway {
    /// Applies an authority batch in memory and moves the feed position:
    /// live under the feed order right after logging it, and at replay.
    /// Returns the new epoch. Other events are applied where they are
    /// decided (under the holder's entry lock) and are ignored here.
    pub(crate) fn apply_feed_event(&self, event: &Event, at: UnixSecs) -> u64 {
        if matches!(event, Event::Updates { .. } | Event::Revocations { .. }) {
            self.metrics.feed_last_batch_time.set(i64::try_from(at).unwrap_or(i64::MAX));
        }
        match event {
            Event::Updates { seq, changes, .. } => {
                let epoch = self.store.apply_changes(changes, at);
                self.metrics.feed_changes.inc_by(changes.len() as u64);
                self.set_feed_seq_at_least(*seq);
                epoch
            }
            Event::Revocations { seq, entries, .. } => {
                self.add_revocations(entries, at, self.live().revocation_filter);
                self.set_feed_seq_at_least(*seq);
                self.store.bump_epoch()
            }
            Event::Scan(_) | Event::Checkin { .. } => self.store.epoch(),
        }
    }

    /// Applies one log record's effects (recovery).
    pub(crate) fn replay(&self, rec: &Record) {
        let (holder, effect, day) = match &rec.event {
            Event::Scan(s) => match s.holder {
                Some(h) if !s.effect.is_empty() => (h, &s.effect, None),
                _ => return,
            },
            Event::Checkin { holder, day, effect, .. } => (*holder, effect, Some(*day)),
            // A replica re-reads authority batches from the order stream,
            // in their place among the other colour changes, not from its
            // own log (docs/CLUSTER.md).
            Event::Updates { .. } | Event::Revocations { .. } if self.clustered => return,
            Event::Updates { .. } | Event::Revocations { .. } => {
                self.apply_feed_event(&rec.event, rec.at);
                return;
            }
        };
        self.store.update(&holder, rec.at, |entry| match entry {
            Some((_, state)) => Update::Commit((), settle(state, effect, rec.at, day, self.clustered)),
            None => Update::Abort(()),
        });
    }
}
