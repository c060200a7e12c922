//! Stable one-byte codes of the enums that the log, the state file and the
//! tracing index write, and the one disk codec of a revocation target.
//!
//! Every such enum has explicit discriminants and a checked
//! `TryFrom<u8>`: reordering a variant can no longer change what an old log
//! means, and a byte no release ever wrote is an error, never a panic. The
//! tests pin every code, so a renumbering fails them.

use crate::color::Color;
use crate::feed::Target;
use crate::holder::HolderId;
use crate::policy::{Direction, Reason};
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("unknown {what} code {code}")]
pub struct UnknownCode {
    pub what: &'static str,
    pub code: u8,
}

impl TryFrom<u8> for Color {
    type Error = UnknownCode;
    fn try_from(code: u8) -> Result<Self, UnknownCode> {
        Color::from_u8(code).ok_or(UnknownCode { what: "colour", code })
    }
}

impl TryFrom<u8> for Reason {
    type Error = UnknownCode;
    fn try_from(code: u8) -> Result<Self, UnknownCode> {
        Reason::ALL.into_iter().find(|r| *r as u8 == code).ok_or(UnknownCode { what: "reason", code })
    }
}

impl TryFrom<u8> for Direction {
    type Error = UnknownCode;
    fn try_from(code: u8) -> Result<Self, UnknownCode> {
        Direction::ALL.into_iter().find(|d| *d as u8 == code).ok_or(UnknownCode { what: "direction", code })
    }
}

/// Bytes of a revocation target on disk.
pub const TARGET_LEN: usize = 17;
const TARGET_HOLDER: u8 = 1;
const TARGET_SERIAL: u8 = 2;

impl Target {
    /// The disk form (log and state file): a tag (1 holder, 2 serial) and
    /// 16 bytes of id, a serial little-endian in the first 8. The feed's
    /// signing input and the exported filter's items are public formats of
    /// their own (docs/FEED.md) and are not this.
    pub fn to_disk(self) -> [u8; TARGET_LEN] {
        let mut b = [0u8; TARGET_LEN];
        match self {
            Target::Holder(h) => {
                b[0] = TARGET_HOLDER;
                b[1..].copy_from_slice(&h.0);
            }
            Target::Serial(s) => {
                b[0] = TARGET_SERIAL;
                b[1..9].copy_from_slice(&s.to_le_bytes());
            }
        }
        b
    }

    pub fn from_disk(b: &[u8; TARGET_LEN]) -> Result<Target, UnknownCode> {
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[1..]);
        match b[0] {
            TARGET_HOLDER => Ok(Target::Holder(HolderId(id))),
            TARGET_SERIAL if id[8..] == [0; 8] => {
                let mut s = [0u8; 8];
                s.copy_from_slice(&id[..8]);
                Ok(Target::Serial(u64::from_le_bytes(s)))
            }
            code => Err(UnknownCode { what: "revocation target", code }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes as released. Append new variants; never change a line.
    #[test]
    fn codes_are_pinned() {
        let reasons = [
            (Reason::Ok, 0),
            (Reason::Fever, 1),
            (Reason::NotGreen, 2),
            (Reason::Pending, 3),
            (Reason::UnknownHolder, 4),
            (Reason::Revoked, 5),
            (Reason::Expired, 6),
            (Reason::NotYetValid, 7),
            (Reason::BadSignature, 8),
            (Reason::UnknownIssuer, 9),
            (Reason::Malformed, 10),
            (Reason::NoHealthRecord, 11),
            (Reason::AntiPassback, 12),
        ];
        assert_eq!(reasons.len(), Reason::ALL.len());
        for (r, code) in reasons {
            assert_eq!(r as u8, code);
            assert_eq!(Reason::try_from(code), Ok(r));
        }
        for (c, code) in [(Color::Green, 0), (Color::Yellow, 1), (Color::Red, 2), (Color::Pending, 3)] {
            assert_eq!(c as u8, code);
            assert_eq!(Color::try_from(code), Ok(c));
        }
        for (d, code) in [(Direction::In, 0), (Direction::Out, 1)] {
            assert_eq!(d as u8, code);
            assert_eq!(Direction::try_from(code), Ok(d));
        }
        assert!(Reason::try_from(13).is_err() && Color::try_from(4).is_err() && Direction::try_from(2).is_err());
    }

    #[test]
    fn targets_round_trip_and_refuse_unknown_tags() {
        for t in [Target::Holder(HolderId([0xab; 16])), Target::Serial(u64::MAX - 3)] {
            assert_eq!(Target::from_disk(&t.to_disk()), Ok(t));
        }
        let mut b = Target::Serial(5).to_disk();
        assert_eq!(b[..9], [2, 5, 0, 0, 0, 0, 0, 0, 0]);
        b[0] = 3;
        assert!(Target::from_disk(&b).is_err());
    }
}
