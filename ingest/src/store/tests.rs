//! Store tests: upserts, rollups that survive replays, history answers
//! checked against a brute-force computation, retention by partition.

use std::sync::Arc;

use pantau_model::{Reading, SensorKind, Timestamp, Value};
use proptest::prelude::*;

use super::schema::{exists, Level};
use super::{Retention, Store};
use crate::history::{Agg, HistoryQuery};

fn reading(sensor: &str, ts: i64, level: f64) -> Reading {
    Reading {
        sensor: sensor.into(),
        ts: Timestamp(ts),
        values: [("water_level_cm".to_string(), Value::Num(level))].into(),
    }
}

fn query(from: i64, to: i64, every: Option<i64>, agg: Agg) -> HistoryQuery {
    HistoryQuery {
        sensor: "a".into(),
        kind: SensorKind::FloodGauge,
        fields: vec!["water_level_cm".into()],
        from: Timestamp(from),
        to: Timestamp(to),
        every_ms: every,
        agg,
    }
}

fn points(store: &Store, q: &HistoryQuery) -> Vec<(i64, f64)> {
    store.history(q).unwrap()[0]
        .points
        .iter()
        .map(|p| (p.ts.0, p.value))
        .collect()
}

/// The reference answer: windows aligned to the epoch, empty ones omitted.
fn brute(samples: &[(i64, f64)], from: i64, to: i64, every: i64, agg: Agg) -> Vec<(i64, f64)> {
    let mut windows: std::collections::BTreeMap<i64, Vec<(i64, f64)>> = Default::default();
    for &(t, v) in samples.iter().filter(|(t, _)| *t >= from && *t < to) {
        windows
            .entry(t.div_euclid(every) * every)
            .or_default()
            .push((t, v));
    }
    windows
        .into_iter()
        .map(|(b, mut xs)| {
            xs.sort_by_key(|x| x.0);
            let vals: Vec<f64> = xs.iter().map(|x| x.1).collect();
            let v = match agg {
                Agg::Mean => vals.iter().sum::<f64>() / vals.len() as f64,
                Agg::Min => vals.iter().cloned().fold(f64::MAX, f64::min),
                Agg::Max => vals.iter().cloned().fold(f64::MIN, f64::max),
                Agg::Last => *vals.last().unwrap(),
                Agg::Count => vals.len() as f64,
            };
            (b, v)
        })
        .collect()
}

fn close(a: &[(i64, f64)], b: &[(i64, f64)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() <= 1e-9 * x.1.abs().max(1.0))
}

#[tokio::test]
async fn replays_overwrite_and_rollups_do_not_double_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let h = (Timestamp::now().0 - 7_200_000).div_euclid(3_600_000) * 3_600_000;
    let batch: Vec<Reading> = (0..120)
        .map(|i| reading("a", h + i * 1000, i as f64))
        .collect();
    store.write(batch.clone()).await.unwrap();
    store.write(batch).await.unwrap(); // replay
    store
        .write(vec![reading("a", h + 5_000, 500.0)])
        .await
        .unwrap(); // correction
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.sample_count().unwrap(), 120);
    let counts = points(&store, &query(h, h + 120_000, Some(60_000), Agg::Count));
    assert_eq!(counts, vec![(h, 60.0), (h + 60_000, 60.0)]);
    let max = points(&store, &query(h, h + 3_600_000, Some(3_600_000), Agg::Max));
    assert_eq!(max, vec![(h, 500.0)]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn history_matches_brute_force(
        samples in proptest::collection::btree_map(0i64..(3 * 86_400_000), -500.0f64..5000.0, 1..300),
        from_min in 0i64..(24 * 60),
        span_min in 1i64..(3 * 24 * 60),
        every_pick in 0usize..5,
        agg_pick in 0usize..5,
        odd_edges in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Recent data (older partitions would fall to retention), day-aligned.
        let base = (Timestamp::now().0 - 4 * 86_400_000).div_euclid(86_400_000) * 86_400_000;
        let samples: Vec<(i64, f64)> = samples.into_iter().map(|(t, v)| (base + t, v)).collect();
        // Several commits, then a replay of the first part and a correction
        // of one sample: rollups are maintained incrementally and must still
        // agree with the raw data.
        let mut samples = samples;
        let all: Vec<Reading> = samples.iter().map(|&(t, v)| reading("a", t, v)).collect();
        let third = all.len().div_ceil(3);
        for chunk in all.chunks(third) {
            rt.block_on(store.write(chunk.to_vec())).unwrap();
        }
        rt.block_on(store.write(all[..third].to_vec())).unwrap();
        if let Some(last) = samples.last_mut() {
            last.1 += 1.0;
            rt.block_on(store.write(vec![reading("a", last.0, last.1)])).unwrap();
        }
        let every = [None, Some(60_000), Some(300_000), Some(3_600_000), Some(7_000)][every_pick];
        let agg = [Agg::Mean, Agg::Min, Agg::Max, Agg::Last, Agg::Count][agg_pick];
        let skew = if odd_edges { 1_234 } else { 0 };
        let (from, to) = (base + from_min * 60_000 + skew, base + (from_min + span_min) * 60_000);
        let got = points(&store, &query(from, to, every, agg));
        let want = match every {
            None => samples.iter().cloned().filter(|(t, _)| *t >= from && *t < to).collect(),
            Some(e) => brute(&samples, from, to, e, agg),
        };
        prop_assert!(close(&got, &want), "got {:?}\nwant {:?}", got, want);
    }
}

#[tokio::test]
async fn retention_drops_whole_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::now().0;
    let day = 86_400_000;
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .write(vec![
                reading("a", now - 10 * day, 1.0),
                reading("a", now, 2.0),
            ])
            .await
            .unwrap();
    }
    // Reopen with a 3-day retention: the writer applies it at start.
    let store = Store::open_with(
        dir.path(),
        Retention {
            raw: std::time::Duration::from_secs(3 * 86_400),
            ..Retention::default()
        },
    )
    .unwrap();
    // A write forces a round-trip through the writer, after its retention pass.
    store.write(vec![reading("b", now, 3.0)]).await.unwrap();
    let old = Level::Raw.partition(now - 10 * day).1;
    let old_1m = Level::Minute.partition(now - 10 * day).1;
    let conn = store.reader();
    assert!(!exists(&conn, &old).unwrap(), "old raw partition kept");
    assert!(!exists(&conn, &old_1m).unwrap(), "old 1m partition kept");
    assert!(exists(&conn, &Level::Raw.partition(now).1).unwrap());
    drop(conn);
    assert_eq!(store.sample_count().unwrap(), 2);
    // 1-hour rollups outlive raw data.
    let h = (now - 10 * day).div_euclid(3_600_000) * 3_600_000;
    let hourly = points(
        &store,
        &query(h, h + 3_600_000, Some(3_600_000), Agg::Count),
    );
    assert_eq!(hourly, vec![(h, 1.0)]);
}

#[tokio::test]
async fn concurrent_writers_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let mut tasks = Vec::new();
    for w in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                store
                    .write(vec![reading(&format!("s{w}"), i * 1000, i as f64)])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.sample_count().unwrap(), 1000);
}
