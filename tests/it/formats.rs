//! The on-disk formats stay readable: a log and a state file written by
//! release 0.1.0 (`tests/fixtures/release-0.1.0/`, made by that release's
//! `healthgate demo` with one scan of every decision, a check-in, a colour
//! update and a revocation, then a graceful stop) decode to what was done,
//! and a log in the old format is continued in a new segment of the current
//! format, never appended to.

use healthgate::durability::state_file;
use healthgate::durability::wal::record::{Event, Record};
use healthgate::durability::wal::storage::{FsStorage, Storage};
use healthgate::durability::wal::{self, Wal, WalSettings, SEGMENT_MAGIC};
use healthgate::feed::Target;
use healthgate::policy::{Direction, Reason};
use healthgate::state::Passback;
use healthgate::store::Store;
use healthgate::{Color, HolderId};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/release-0.1.0")
}

fn holder(hex: &str) -> HolderId {
    hex.parse().unwrap()
}

/// A writable copy of the fixture's log folder.
fn log_copy() -> (tempfile::TempDir, FsStorage) {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixtures().join("wal")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let storage = FsStorage::open(dir.path()).unwrap();
    (dir, storage)
}

fn records(storage: &mut FsStorage) -> (Vec<Record>, wal::Recovered) {
    let mut out = Vec::new();
    let recovered = wal::recover(storage, 1, |r| out.push(r.clone())).unwrap();
    (out, recovered)
}

#[test]
fn a_release_0_1_0_log_decodes_to_what_was_done() {
    let (_dir, mut storage) = log_copy();
    let (recs, recovered) = records(&mut storage);
    assert_eq!(recs.len(), 14);
    assert_eq!(recovered.next_lsn, 15);
    assert!(recs.iter().enumerate().all(|(i, r)| r.lsn == i as u64 + 1));
    let scans: Vec<_> = recs
        .iter()
        .filter_map(|r| match &r.event {
            Event::Scan(s) => Some(s),
            _ => None,
        })
        .collect();
    let reasons: Vec<Reason> = scans.iter().map(|s| s.reason).collect();
    use Reason::*;
    assert_eq!(
        reasons,
        [Ok, Fever, NotGreen, NotGreen, Pending, NoHealthRecord, Ok, Expired, BadSignature, UnknownIssuer, Malformed]
    );
    // The fever turned the green holder yellow for the quarantine time.
    let fever = scans[1];
    assert_eq!(fever.holder, Some(holder("38d596ba820c50c37e904912c7e82b52")));
    assert_eq!(fever.temperature_c, Some(38.2));
    assert_eq!(fever.effect.color.as_ref().map(|(c, steps)| (*c, steps.len())), Some((Color::Yellow, 1)));
    assert_eq!(scans[0].direction, Direction::In);
    assert!(matches!(scans[0].effect.passback, Passback::Enter(_)), "a pass at a metro gate enters");
    assert!(scans[10].holder.is_none(), "a malformed code names no holder");
    let mut kinds = recs.iter().filter(|r| !matches!(r.event, Event::Scan(_)));
    match &kinds.next().unwrap().event {
        Event::Updates { seq, changes, signed } => {
            assert!(signed.is_none(), "release 0.1.0 logged no signed bodies");
            assert_eq!(*seq, 1);
            assert_eq!(changes[0].holder, holder("e220a8397b1dcdaf07776f161bd8ea27"));
            assert_eq!((changes[0].color, changes[0].steps[0].then), (Color::Red, Color::Green));
        }
        other => panic!("expected the update batch, got {other:?}"),
    }
    match &kinds.next().unwrap().event {
        Event::Revocations { seq, entries, signed } => {
            assert!(signed.is_none());
            assert_eq!(*seq, 2);
            assert_eq!(entries[0].target, Target::Serial(4242));
        }
        other => panic!("expected the revocation batch, got {other:?}"),
    }
    match &kinds.next().unwrap().event {
        Event::Checkin { holder: h, effect, .. } => {
            assert_eq!(*h, holder("f47642f85d21cdaf8bc2703a1af9ae2f"));
            assert!(effect.health && effect.color.is_none());
        }
        other => panic!("expected the check-in, got {other:?}"),
    }
}

#[test]
fn a_release_0_1_0_state_file_loads() {
    let store = Store::default();
    let loaded = state_file::load(&fixtures().join("state.hgs"), &store).unwrap();
    assert_eq!(loaded.holders, 305);
    assert_eq!(store.len(), 305);
    // Written at the graceful stop: it covers the whole log.
    assert_eq!((loaded.meta.lsn, loaded.meta.feed_seq), (14, 2));
    assert_eq!(loaded.meta.revocations.len(), 1);
    assert_eq!(loaded.meta.revocations[0].target, Target::Serial(4242));
    let now = 1_800_000_000; // after every step of the fixture's schedules
    store.read(&holder("e220a8397b1dcdaf07776f161bd8ea27"), now, |v| {
        let v = v.expect("the recoloured holder");
        assert_eq!(v.state.color(), Color::Red, "stored red until 2030");
    });
    store.read(&holder("38d596ba820c50c37e904912c7e82b52"), now, |v| {
        assert_eq!(v.expect("the fevered holder").state.color(), Color::Yellow);
    });
}

#[test]
fn an_old_format_log_is_continued_in_a_new_segment() {
    let (dir, mut storage) = log_copy();
    let (_, recovered) = records(&mut storage);
    assert!(recovered.tail.is_none(), "a format 1 segment is never appended to");
    let wal = Wal::start(Box::new(storage), WalSettings::default(), &recovered, ());
    let scan = |serial| {
        Event::Scan(healthgate::durability::wal::record::ScanRecord {
            holder: None,
            serial,
            checkpoint: "gate".into(),
            direction: Direction::Out,
            temperature_c: None,
            pass: false,
            reason: Reason::Malformed,
            effect: Default::default(),
        })
    };
    assert_eq!(wal.append(1, scan(1)).unwrap().wait_blocking().unwrap(), 15);
    assert_eq!(wal.append(2, scan(2)).unwrap().wait_blocking().unwrap(), 16);
    wal.close();
    let mut storage = FsStorage::open(dir.path()).unwrap();
    let names = storage.list().unwrap();
    assert_eq!(names, ["00000000000000000001.log", "00000000000000000015.log"]);
    let new = std::fs::read(dir.path().join(&names[1])).unwrap();
    assert!(new.starts_with(&SEGMENT_MAGIC));
    let (recs, recovered) = records(&mut storage);
    assert_eq!(recs.len(), 16);
    assert_eq!(recovered.next_lsn, 17);
}
