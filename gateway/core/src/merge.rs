//! How replicas merge a holder's effects, in any order: the rule of
//! docs/CLUSTER.md for everything a gate does to a holder except its
//! colour (which the cluster's ordered stream decides).
//!
//! Every replica applies its own effects and the others' through
//! [`merge`], and each field's rule is commutative, associative and
//! idempotent, so two replicas that have applied the same effects hold the
//! same state whatever order the effects came in, and an effect delivered
//! twice changes nothing:
//!
//! - health record time: the later one (max);
//! - check-in day: the later one (max);
//! - anti-passback (inside, station group, time): last writer wins by the
//!   key (event time, exit before entry, higher group). An exit carries no
//!   group and stores group 0, so that the stored value is a function of
//!   the winning key alone.
//!
//! A single gateway keeps `Effect::apply` (each effect in log order); the
//! two agree whenever effects arrive in time order.

use crate::clock::UnixSecs;
use crate::state::{Effect, HolderState, Passback};

/// Where an anti-passback write sorts: (time, exit = 1 / entry = 0, group).
fn passback_key(inside: bool, group: u16, at: UnixSecs) -> (u32, u8, u16) {
    let at = u32::try_from(at).unwrap_or(u32::MAX);
    if inside {
        (at, 0, group)
    } else {
        (at, 1, 0)
    }
}

/// Merges `effect`, which happened at `at` (and a check-in of `checkin_day`),
/// into `state`. The colour part of the effect is not touched here.
pub fn merge(state: &mut HolderState, effect: &Effect, at: UnixSecs, checkin_day: Option<u16>) {
    if effect.health && state.health_at().is_none_or(|h| h < at) {
        state.set_health_at(at);
    }
    if let Some(day) = checkin_day {
        if state.checkin_day().is_none_or(|d| d < day) {
            state.set_checkin_day(day);
        }
    }
    let incoming = match effect.passback {
        Passback::None => return,
        Passback::Enter(group) => (true, group),
        Passback::Exit => (false, 0),
    };
    let (inside, group, stored_at) = state.passback();
    if passback_key(incoming.0, incoming.1, at) > passback_key(inside, group, stored_at) {
        state.set_passback(incoming.0, incoming.1, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::color::Color;
    use proptest::prelude::*;

    fn effect(kind: u8, group: u16) -> Effect {
        let passback = match kind % 3 {
            0 => Passback::None,
            1 => Passback::Enter(group),
            _ => Passback::Exit,
        };
        Effect { health: kind & 4 != 0, passback, color: None }
    }

    #[test]
    fn later_entry_wins_and_exit_wins_a_tie() {
        let mut s = HolderState::new(Color::Green, 0, None);
        merge(&mut s, &effect(1, 7), 100, None);
        assert_eq!(s.inside(), Some((7, 100)));
        // An older exit (delivered late) does not undo a newer entry.
        merge(&mut s, &effect(2, 0), 90, None);
        assert_eq!(s.inside(), Some((7, 100)));
        // An exit in the same second does: the gate fails open.
        merge(&mut s, &effect(2, 0), 100, None);
        assert_eq!(s.inside(), None);
        // And a later entry again.
        merge(&mut s, &effect(1, 3), 101, None);
        assert_eq!(s.inside(), Some((3, 101)));
    }

    #[test]
    fn health_and_checkin_only_move_forward() {
        let mut s = HolderState::new(Color::Green, 0, Some(500));
        merge(&mut s, &effect(4, 0), 400, Some(10));
        assert_eq!((s.health_at(), s.checkin_day()), (Some(500), Some(10)));
        merge(&mut s, &effect(4, 0), 600, Some(9));
        assert_eq!((s.health_at(), s.checkin_day()), (Some(600), Some(10)));
    }

    proptest! {
        /// Any order of the same effects, with any of them delivered twice,
        /// gives the same state.
        #[test]
        fn order_and_duplicates_do_not_matter(
            effects in proptest::collection::vec((0u8..8, 0u16..4, 0u64..20, proptest::option::of(0u16..5)), 0..12),
            seed in any::<u64>(),
            dup in any::<prop::sample::Index>(),
        ) {
            let start = HolderState::new(Color::Green, 0, None);
            let run = |order: &[usize]| {
                let mut s = start;
                for &i in order {
                    let (k, g, at, day) = effects[i];
                    merge(&mut s, &effect(k, g), at, day);
                }
                s
            };
            let forward: Vec<usize> = (0..effects.len()).collect();
            let mut shuffled = forward.clone();
            // A deterministic shuffle from the seed (no randomness in the core).
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            if !shuffled.is_empty() {
                shuffled.push(shuffled[dup.index(shuffled.len())]);
            }
            prop_assert_eq!(run(&forward), run(&shuffled));
        }
    }
}
