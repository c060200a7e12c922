//! What the write-ahead log holds, and its strict binary encoding.
//!
//! Every record carries the absolute effect it had on the state (the new
//! health-record time, the anti-passback move, the new colour and schedule),
//! never an instruction to recompute one: replaying a record gives the same
//! state whatever the configuration is at replay time, and replaying it twice
//! gives the same state as once (snapshots are fuzzy; recovery relies on it).
//!
//! Payload layout (little-endian), inside the frame of `wal::frame`:
//!
//! ```text
//! lsn u64 | kind u8 | at u64 | body
//! kind 1 scan:        holder? u8 | holder [16] | serial u64 | checkpoint len u8 + bytes
//!                     | direction u8 | temperature f32 (NaN: none) | pass u8 | reason u8 | effect
//! kind 2 updates:     seq u64 | count u32 | count × (holder [16] | colour u8 | steps)
//! kind 3 revocations: seq u64 | count u32 | count × (target u8 | id [16] | expires u64, 0 = never)
//! kind 4 check-in:    holder [16] | day u16 | temperature f32 | symptoms u8 | effect
//! kind 5 updates, signed:     as kind 2, then signed body len u32 + bytes
//! kind 6 revocations, signed: as kind 3, then signed body len u32 + bytes
//! effect:             flags u8 (1 health, 2 enter, 4 exit, 8 colour) | [group u16] | [colour u8 | steps]
//! steps:              n u8 | n × (until u64 | then u8)
//! ```
//!
//! Kinds 5 and 6 (since 0.2) are what a replica logs for an authority batch
//! read from its cluster's order stream: the decoded changes, as kinds 2
//! and 3, and the batch exactly as signed and published, so that a replica
//! can publish it again if the stream loses it (docs/CLUSTER.md). A single
//! gateway still writes kinds 2 and 3, and every kind stays readable.

use crate::clock::UnixSecs;
use crate::codec::TARGET_LEN;
use crate::color::Color;
use crate::feed::{Revocation, Target};
use crate::holder::HolderId;
use crate::policy::{Direction, Reason};
use crate::state::{ColorChange, Effect, Passback, Step, MAX_STEPS};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq)]
pub struct ScanRecord {
    pub holder: Option<HolderId>,
    pub serial: u64,
    pub checkpoint: String,
    pub direction: Direction,
    pub temperature_c: Option<f32>,
    pub pass: bool,
    pub reason: Reason,
    pub effect: Effect,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Scan(ScanRecord),
    /// `signed`: the batch as the authority signed it (JSON, signature
    /// included), when it came through a cluster's order stream.
    Updates {
        seq: u64,
        changes: Vec<ColorChange>,
        signed: Option<bytes::Bytes>,
    },
    Revocations {
        seq: u64,
        entries: Vec<Revocation>,
        signed: Option<bytes::Bytes>,
    },
    Checkin {
        holder: HolderId,
        day: u16,
        temperature_c: f32,
        symptoms: u8,
        effect: Effect,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub lsn: u64,
    pub at: UnixSecs,
    pub event: Event,
}

/// Record kinds as written; never renumber one.
const KIND_SCAN: u8 = 1;
const KIND_UPDATES: u8 = 2;
const KIND_REVOCATIONS: u8 = 3;
const KIND_CHECKIN: u8 = 4;
const KIND_UPDATES_SIGNED: u8 = 5;
const KIND_REVOCATIONS_SIGNED: u8 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("undecodable log record: {0}")]
pub struct DecodeError(pub &'static str);

fn put_steps(out: &mut Vec<u8>, steps: &[Step]) {
    out.push(steps.len() as u8);
    for s in steps {
        out.extend_from_slice(&s.until.to_le_bytes());
        out.push(s.then as u8);
    }
}

fn put_effect(out: &mut Vec<u8>, e: &Effect) {
    let mut flags = 0u8;
    if e.health {
        flags |= 1;
    }
    match e.passback {
        Passback::Enter(_) => flags |= 2,
        Passback::Exit => flags |= 4,
        Passback::None => {}
    }
    if e.color.is_some() {
        flags |= 8;
    }
    out.push(flags);
    if let Passback::Enter(g) = e.passback {
        out.extend_from_slice(&g.to_le_bytes());
    }
    if let Some((c, steps)) = &e.color {
        out.push(*c as u8);
        put_steps(out, steps);
    }
}

/// The signed body of a batch from the order stream (kinds 5 and 6).
fn put_signed(out: &mut Vec<u8>, signed: Option<&[u8]>) {
    if let Some(b) = signed {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
}

impl Record {
    /// Appends the payload bytes (without the frame) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.lsn.to_le_bytes());
        let kind = match self.event {
            Event::Scan(_) => KIND_SCAN,
            Event::Updates { signed: None, .. } => KIND_UPDATES,
            Event::Revocations { signed: None, .. } => KIND_REVOCATIONS,
            Event::Updates { signed: Some(_), .. } => KIND_UPDATES_SIGNED,
            Event::Revocations { signed: Some(_), .. } => KIND_REVOCATIONS_SIGNED,
            Event::Checkin { .. } => KIND_CHECKIN,
        };
        out.push(kind);
        out.extend_from_slice(&self.at.to_le_bytes());
        match &self.event {
            Event::Scan(s) => {
                out.push(u8::from(s.holder.is_some()));
                out.extend_from_slice(&s.holder.map_or([0; 16], |h| h.0));
                out.extend_from_slice(&s.serial.to_le_bytes());
                let cp = &s.checkpoint.as_bytes()[..s.checkpoint.len().min(255)];
                out.push(cp.len() as u8);
                out.extend_from_slice(cp);
                out.push(s.direction as u8);
                out.extend_from_slice(&s.temperature_c.unwrap_or(f32::NAN).to_le_bytes());
                out.push(u8::from(s.pass));
                out.push(s.reason as u8);
                put_effect(out, &s.effect);
            }
            Event::Updates { seq, changes, signed } => {
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&(changes.len() as u32).to_le_bytes());
                for c in changes {
                    out.extend_from_slice(&c.holder.0);
                    out.push(c.color as u8);
                    put_steps(out, &c.steps);
                }
                put_signed(out, signed.as_deref());
            }
            Event::Revocations { seq, entries, signed } => {
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for r in entries {
                    out.extend_from_slice(&r.target.to_disk());
                    out.extend_from_slice(&r.expires.unwrap_or(0).to_le_bytes());
                }
                put_signed(out, signed.as_deref());
            }
            Event::Checkin { holder, day, temperature_c, symptoms, effect } => {
                out.extend_from_slice(&holder.0);
                out.extend_from_slice(&day.to_le_bytes());
                out.extend_from_slice(&temperature_c.to_le_bytes());
                out.push(*symptoms);
                put_effect(out, effect);
            }
        }
    }

    pub fn decode(b: &[u8]) -> Result<Record, DecodeError> {
        let mut r = Reader(b);
        let lsn = r.u64()?;
        let kind = r.u8()?;
        let at = r.u64()?;
        let event = match kind {
            KIND_SCAN => {
                let present = r.u8()?;
                let holder = HolderId(r.arr()?);
                let serial = r.u64()?;
                let n = usize::from(r.u8()?);
                let checkpoint =
                    String::from_utf8(r.take(n)?.to_vec()).map_err(|_| DecodeError("checkpoint is not UTF-8"))?;
                let direction = Direction::try_from(r.u8()?).map_err(|_| DecodeError("bad direction"))?;
                let t = f32::from_le_bytes(r.arr()?);
                let pass = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError("bad decision")),
                };
                let reason = Reason::try_from(r.u8()?).map_err(|_| DecodeError("bad reason"))?;
                let effect = r.effect()?;
                Event::Scan(ScanRecord {
                    holder: match present {
                        0 => None,
                        1 => Some(holder),
                        _ => return Err(DecodeError("bad holder flag")),
                    },
                    serial,
                    checkpoint,
                    direction,
                    temperature_c: (!t.is_nan()).then_some(t),
                    pass,
                    reason,
                    effect,
                })
            }
            KIND_UPDATES | KIND_UPDATES_SIGNED => {
                let seq = r.u64()?;
                let n = r.u32()? as usize;
                let mut changes = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    let holder = HolderId(r.arr()?);
                    let color = r.color()?;
                    changes.push(ColorChange { holder, color, steps: r.steps()? });
                }
                let signed = if kind == KIND_UPDATES_SIGNED { Some(r.signed()?) } else { None };
                Event::Updates { seq, changes, signed }
            }
            KIND_REVOCATIONS | KIND_REVOCATIONS_SIGNED => {
                let seq = r.u64()?;
                let n = r.u32()? as usize;
                let mut entries = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    let target: [u8; TARGET_LEN] = r.arr()?;
                    let target = Target::from_disk(&target).map_err(|_| DecodeError("bad revocation target"))?;
                    let expires = r.u64()?;
                    entries.push(Revocation { target, expires: (expires != 0).then_some(expires) });
                }
                let signed = if kind == KIND_REVOCATIONS_SIGNED { Some(r.signed()?) } else { None };
                Event::Revocations { seq, entries, signed }
            }
            KIND_CHECKIN => Event::Checkin {
                holder: HolderId(r.arr()?),
                day: u16::from_le_bytes(r.arr()?),
                temperature_c: f32::from_le_bytes(r.arr()?),
                symptoms: r.u8()?,
                effect: r.effect()?,
            },
            _ => return Err(DecodeError("unknown record kind")),
        };
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Record { lsn, at, event })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn signed(&mut self) -> Result<bytes::Bytes, DecodeError> {
        let n = self.u32()? as usize;
        Ok(bytes::Bytes::copy_from_slice(self.take(n)?))
    }
    fn color(&mut self) -> Result<Color, DecodeError> {
        Color::try_from(self.u8()?).map_err(|_| DecodeError("bad colour"))
    }
    fn steps(&mut self) -> Result<Vec<Step>, DecodeError> {
        let n = usize::from(self.u8()?);
        if n > MAX_STEPS {
            return Err(DecodeError("too many steps"));
        }
        (0..n).map(|_| Ok(Step { until: self.u64()?, then: self.color()? })).collect()
    }
    fn effect(&mut self) -> Result<Effect, DecodeError> {
        let flags = self.u8()?;
        if flags & !0b1111 != 0 || flags & 6 == 6 {
            return Err(DecodeError("bad effect flags"));
        }
        let passback = if flags & 2 != 0 {
            Passback::Enter(u16::from_le_bytes(self.arr()?))
        } else if flags & 4 != 0 {
            Passback::Exit
        } else {
            Passback::None
        };
        let color = if flags & 8 != 0 { Some((self.color()?, self.steps()?)) } else { None };
        Ok(Effect { health: flags & 1 != 0, passback, color })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn samples() -> Vec<Record> {
        let h = HolderId([7; 16]);
        let steps = vec![Step { until: 100, then: Color::Yellow }, Step { until: 200, then: Color::Green }];
        vec![
            Record {
                lsn: 1,
                at: 10,
                event: Event::Scan(ScanRecord {
                    holder: Some(h),
                    serial: 99,
                    checkpoint: "wuhan-metro-hankou-1".into(),
                    direction: Direction::In,
                    temperature_c: Some(37.5),
                    pass: false,
                    reason: Reason::Fever,
                    effect: Effect {
                        health: false,
                        passback: Passback::None,
                        color: Some((Color::Yellow, steps.clone())),
                    },
                }),
            },
            Record {
                lsn: 2,
                at: 11,
                event: Event::Scan(ScanRecord {
                    holder: None,
                    serial: 0,
                    checkpoint: "x".into(),
                    direction: Direction::Out,
                    temperature_c: None,
                    pass: false,
                    reason: Reason::Malformed,
                    effect: Effect::default(),
                }),
            },
            Record {
                lsn: 3,
                at: 12,
                event: Event::Updates {
                    seq: 5,
                    changes: vec![ColorChange { holder: h, color: Color::Red, steps: steps.clone() }],
                    signed: None,
                },
            },
            Record {
                lsn: 4,
                at: 13,
                event: Event::Revocations {
                    seq: 6,
                    entries: vec![
                        Revocation { target: Target::Holder(h), expires: Some(50) },
                        Revocation { target: Target::Serial(u64::MAX), expires: None },
                    ],
                    signed: None,
                },
            },
            Record {
                lsn: 6,
                at: 15,
                event: Event::Updates {
                    seq: 7,
                    changes: vec![ColorChange { holder: h, color: Color::Yellow, steps }],
                    signed: Some(bytes::Bytes::from_static(br#"{"seq":7,"signature":"x"}"#)),
                },
            },
            Record {
                lsn: 7,
                at: 16,
                event: Event::Revocations {
                    seq: 8,
                    entries: vec![Revocation { target: Target::Holder(h), expires: None }],
                    signed: Some(bytes::Bytes::new()),
                },
            },
            Record {
                lsn: 5,
                at: 14,
                event: Event::Checkin {
                    holder: h,
                    day: 20_000,
                    temperature_c: 36.5,
                    symptoms: 0,
                    effect: Effect { health: true, passback: Passback::Enter(3), color: None },
                },
            },
        ]
    }

    #[test]
    fn round_trip() {
        for r in samples() {
            let mut b = Vec::new();
            r.encode(&mut b);
            assert_eq!(Record::decode(&b).unwrap(), r);
            // Every truncation is an error, never a panic.
            for n in 0..b.len() {
                assert!(Record::decode(&b[..n]).is_err());
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(Record::decode(&longer).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = Record::decode(&b);
        }
    }
}
