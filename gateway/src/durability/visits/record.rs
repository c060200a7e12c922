//! The stored form of a visit: the value of the `visits_by_checkpoint` table.
//!
//! The key of that table already holds the checkpoint, the time and the lsn,
//! so the value carries only the rest, in a fixed little layout (see the
//! module doc of [`super`] for the byte table). The first byte is a version:
//! a later build that changes the layout adds a version and keeps decoding
//! this one, so an index never has to be rebuilt just because the gateway was
//! upgraded.

use super::{Visit, VisitError};
use crate::clock::UnixSecs;
use crate::policy::{Direction, Reason};
use crate::HolderId;

/// The layout written by this build.
pub(super) const VERSION: u8 = 1;

const FLAG_OUT: u8 = 0b001;
const FLAG_PASS: u8 = 0b010;
const FLAG_TEMPERATURE: u8 = 0b100;
const KNOWN_FLAGS: u8 = FLAG_OUT | FLAG_PASS | FLAG_TEMPERATURE;

const HOLDER_AT: usize = 3;
const TEMPERATURE_AT: usize = HOLDER_AT + 16;
const SHORT_LEN: usize = TEMPERATURE_AT;
const LONG_LEN: usize = TEMPERATURE_AT + 4;

/// An encoded value, on the stack: the insert loop encodes one per visit and
/// should not allocate for it.
pub(super) struct Encoded {
    buf: [u8; LONG_LEN],
    len: usize,
}

impl Encoded {
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

pub(super) fn encode(v: &Visit) -> Encoded {
    let mut buf = [0u8; LONG_LEN];
    let mut flags = 0;
    if v.direction == Direction::Out {
        flags |= FLAG_OUT;
    }
    if v.pass {
        flags |= FLAG_PASS;
    }
    if v.temperature_c.is_some() {
        flags |= FLAG_TEMPERATURE;
    }
    buf[0] = VERSION;
    buf[1] = flags;
    // Reason has 13 variants, so its index always fits a byte.
    buf[2] = v.reason as u8;
    buf[HOLDER_AT..TEMPERATURE_AT].copy_from_slice(&v.holder.0);
    let len = match v.temperature_c {
        Some(t) => {
            buf[TEMPERATURE_AT..LONG_LEN].copy_from_slice(&t.to_le_bytes());
            LONG_LEN
        }
        None => SHORT_LEN,
    };
    Encoded { buf, len }
}

/// The fields of a visit that live in the value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Record {
    pub holder: HolderId,
    pub direction: Direction,
    pub temperature_c: Option<f32>,
    pub pass: bool,
    pub reason: Reason,
}

impl Record {
    pub(super) fn into_visit(self, lsn: u64, at: UnixSecs, checkpoint: String) -> Visit {
        Visit {
            lsn,
            at,
            holder: self.holder,
            checkpoint,
            direction: self.direction,
            temperature_c: self.temperature_c,
            pass: self.pass,
            reason: self.reason,
        }
    }
}

pub(super) fn decode(b: &[u8]) -> Result<Record, VisitError> {
    let (&version, rest) = b.split_first().ok_or(VisitError::Corrupt("empty visit record"))?;
    if version != VERSION {
        return Err(VisitError::RecordVersion(version));
    }
    let [flags, reason, ..] = *rest else {
        return Err(VisitError::Corrupt("truncated visit record"));
    };
    if flags & !KNOWN_FLAGS != 0 {
        return Err(VisitError::Corrupt("unknown flags in visit record"));
    }
    let want = if flags & FLAG_TEMPERATURE != 0 { LONG_LEN } else { SHORT_LEN };
    if b.len() != want {
        return Err(VisitError::Corrupt("visit record has the wrong length"));
    }
    let reason = Reason::try_from(reason).map_err(|_| VisitError::Corrupt("unknown reason in visit record"))?;
    let temperature_c = match b.get(TEMPERATURE_AT..LONG_LEN) {
        Some(t) if flags & FLAG_TEMPERATURE != 0 => Some(f32::from_le_bytes(array(t)?)),
        _ => None,
    };
    Ok(Record {
        holder: holder(b)?,
        direction: if flags & FLAG_OUT != 0 { Direction::Out } else { Direction::In },
        temperature_c,
        pass: flags & FLAG_PASS != 0,
        reason,
    })
}

/// Just the holder, for the purge: it checks that the visit it removes
/// belongs to the `visits_by_holder` entry that led to it, and needs no more
/// of the record.
pub(super) fn holder(b: &[u8]) -> Result<HolderId, VisitError> {
    match b.first() {
        Some(&VERSION) => {}
        Some(&v) => return Err(VisitError::RecordVersion(v)),
        None => return Err(VisitError::Corrupt("empty visit record")),
    }
    let h = b.get(HOLDER_AT..TEMPERATURE_AT).ok_or(VisitError::Corrupt("truncated visit record"))?;
    Ok(HolderId(array(h)?))
}

fn array<const N: usize>(b: &[u8]) -> Result<[u8; N], VisitError> {
    b.try_into().map_err(|_| VisitError::Corrupt("truncated visit record"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visit(temperature_c: Option<f32>, direction: Direction, pass: bool, reason: Reason) -> Visit {
        Visit {
            lsn: 7,
            at: 1_600_000_000,
            holder: HolderId([0xab; 16]),
            checkpoint: "metro-1".into(),
            direction,
            temperature_c,
            pass,
            reason,
        }
    }

    #[test]
    fn round_trips_every_field() {
        for reason in Reason::ALL {
            for (t, d, p) in [(None, Direction::In, true), (Some(37.25), Direction::Out, false)] {
                let v = visit(t, d, p, reason);
                let e = encode(&v);
                assert_eq!(e.as_bytes().len(), if t.is_some() { LONG_LEN } else { SHORT_LEN });
                let back = decode(e.as_bytes()).unwrap().into_visit(v.lsn, v.at, v.checkpoint.clone());
                assert_eq!(back, v);
                assert_eq!(holder(e.as_bytes()).unwrap(), v.holder);
            }
        }
    }

    #[test]
    fn layout_is_stable() {
        // Bytes on disk outlive builds: this pins version 1 exactly.
        let v = visit(Some(36.5), Direction::Out, true, Reason::Fever);
        let mut want = vec![1, 0b111, 1];
        want.extend_from_slice(&[0xab; 16]);
        want.extend_from_slice(&36.5f32.to_le_bytes());
        assert_eq!(encode(&v).as_bytes(), &want[..]);
    }

    #[test]
    fn bad_bytes_are_typed_errors() {
        let good = encode(&visit(Some(36.5), Direction::In, true, Reason::Ok)).as_bytes().to_vec();
        assert!(matches!(decode(&[]), Err(VisitError::Corrupt(_))));
        assert!(matches!(decode(&[2, 0, 0]), Err(VisitError::RecordVersion(2))));
        assert!(matches!(holder(&[9]), Err(VisitError::RecordVersion(9))));
        assert!(matches!(decode(&[1]), Err(VisitError::Corrupt(_))));
        assert!(matches!(decode(&good[..good.len() - 1]), Err(VisitError::Corrupt(_))));
        assert!(matches!(holder(&good[..10]), Err(VisitError::Corrupt(_))));
        let mut flags = good.clone();
        flags[1] |= 0b1000;
        assert!(matches!(decode(&flags), Err(VisitError::Corrupt(_))));
        let mut reason = good.clone();
        reason[2] = 13;
        assert!(matches!(decode(&reason), Err(VisitError::Corrupt(_))));
        // Every prefix of a valid record is rejected without a panic.
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err());
        }
    }
}
