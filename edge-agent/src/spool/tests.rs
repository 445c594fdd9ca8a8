//! Spool tests: acknowledgements, recovery after reopening, the size bound.

use super::*;
use pantau_model::Value;

fn r(sensor: &str, ts: i64) -> Reading {
    Reading {
        sensor: sensor.into(),
        ts: Timestamp(ts),
        // Same size for every reading, so the bound test can count rows.
        values: [(
            "water_level_cm".to_string(),
            Value::Num(sensor.len() as f64),
        )]
        .into(),
    }
}

fn ts_of(rows: &[Spooled]) -> Vec<i64> {
    rows.iter().map(|s| s.reading.ts.0).collect()
}

#[test]
fn rows_leave_only_when_deleted_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1 << 20, Sync::Full).unwrap();
    spool.append(&[r("a", 1), r("a", 2), r("b", 3)]).unwrap();
    let all = spool.batch(0, i64::MAX, 10, u64::MAX).unwrap();
    assert_eq!(ts_of(&all), vec![1, 2, 3]);
    assert_eq!(all[0].reading, r("a", 1));
    assert_eq!(spool.delete(&[all[0].id, all[2].id, 999]).unwrap(), 2);
    assert_eq!(spool.depth().readings, 1);
    drop(spool);
    let spool = Spool::open(dir.path(), 1 << 20, Sync::Normal).unwrap();
    assert_eq!(spool.depth().readings, 1);
    let left = spool.batch(0, i64::MAX, 10, u64::MAX).unwrap();
    assert_eq!(ts_of(&left), vec![2]);
    assert_eq!(left[0].bytes, spool.depth().bytes);
    // Ids keep growing after a restart, even past deleted rows.
    spool.append(&[r("a", 4)]).unwrap();
    let after = spool.batch(left[0].id, i64::MAX, 10, u64::MAX).unwrap();
    assert_eq!(ts_of(&after), vec![4]);
    assert!(after[0].id > all[2].id);
}

#[test]
fn batches_respect_ranges_counts_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1 << 20, Sync::Normal).unwrap();
    spool
        .append(&(1..=10).map(|t| r("a", t)).collect::<Vec<_>>())
        .unwrap();
    let first = spool.batch(0, i64::MAX, 4, u64::MAX).unwrap();
    assert_eq!(ts_of(&first), vec![1, 2, 3, 4]);
    let up_to = spool
        .batch(first[3].id, first[3].id + 2, 100, u64::MAX)
        .unwrap();
    assert_eq!(ts_of(&up_to), vec![5, 6]);
    let one_row = first[0].bytes;
    let by_bytes = spool.batch(0, i64::MAX, 100, one_row * 3).unwrap();
    assert_eq!(by_bytes.len(), 3);
    // The first row always goes, however small the byte budget.
    assert_eq!(spool.batch(0, i64::MAX, 100, 1).unwrap().len(), 1);
}

#[test]
fn a_full_spool_drops_the_oldest_and_counts_them_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Spool::open(&dir.path().join("probe"), 1 << 20, Sync::Normal).unwrap();
    probe.append(&[r("a", 1)]).unwrap();
    let row = probe.depth().bytes;
    let spool = Spool::open(dir.path(), row * 5, Sync::Normal).unwrap();
    let mut dropped = 0;
    for t in 1..=12 {
        dropped += spool.append(&[r("a", t)]).unwrap();
    }
    assert_eq!(dropped, 7);
    let d = spool.depth();
    assert_eq!((d.readings, d.dropped), (5, 7));
    assert!(d.bytes <= d.max_bytes);
    let kept = spool.batch(0, i64::MAX, 100, u64::MAX).unwrap();
    assert_eq!(ts_of(&kept), vec![8, 9, 10, 11, 12]);
    drop(spool);
    let spool = Spool::open(dir.path(), row * 5, Sync::Normal).unwrap();
    assert_eq!(spool.depth().dropped, 7);
    assert_eq!(spool.depth().readings, 5);
}
