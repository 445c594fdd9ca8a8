//! Ingest log tests: acknowledgements, recovery after reopen, the bound.

use std::sync::Arc;

use pantau_model::{SensorKind, Timestamp, Value};

use super::*;

fn r(i: i64) -> LoggedReading {
    LoggedReading {
        sensor: "fl-a".into(),
        gateway: "gw-a".into(),
        kind: SensorKind::FloodGauge,
        ts: Timestamp(i * 1000),
        values: [("water_level_cm".to_string(), Value::Num(i as f64))].into(),
    }
}

#[tokio::test]
async fn entries_stay_until_acknowledged_and_replay_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let m = IngestMetrics::default();
    let log = IngestLog::open(dir.path(), 1_000, m.clone()).unwrap();
    log.append(vec![r(1), r(2)]).await.unwrap();
    log.append(vec![r(3)]).await.unwrap();
    assert_eq!(log.pending(), 3);
    let batch = log.read_after(0, 10).unwrap();
    assert_eq!(batch.len(), 3);
    assert_eq!(batch.replayed, 0);
    // Acknowledge the first entry only, then "crash".
    log.ack(vec![batch.entries[0].id]).await.unwrap();
    assert_eq!(log.pending(), 1);
    drop(log);
    let log = IngestLog::open(dir.path(), 1_000, IngestMetrics::default()).unwrap();
    assert_eq!(log.pending(), 1);
    let again = log.read_after(0, 10).unwrap();
    assert_eq!(again.replayed, 1);
    assert_eq!(again.entries.len(), 1);
    assert_eq!(*again.entries[0].readings, vec![r(3)]);
    assert_eq!(again.entries[0].gateway.as_deref(), Some("gw-a"));
    assert_eq!(again.entries[0].readings[0].gateway, "gw-a");
    // The latest table follows the newest reading.
    let latest = log.latest_all().unwrap();
    assert_eq!(latest[0].ts, Timestamp(3000));
    assert_eq!(m.log_persisted.get(), 3);
    // A batch holding old and new entries counts only the old as replayed.
    log.append(vec![r(4), r(5)]).await.unwrap();
    let mixed = log.peek_after(0, 10).unwrap();
    assert_eq!((mixed.len(), mixed.replayed), (3, 1));
}

#[tokio::test]
async fn a_full_log_refuses_and_counts_without_dropping_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let m = IngestMetrics::default();
    let log = IngestLog::open(dir.path(), 3, m.clone()).unwrap();
    log.append(vec![r(1), r(2)]).await.unwrap();
    let err = log.append(vec![r(3), r(4)]).await.unwrap_err();
    assert!(matches!(err, Error::LogFull { max_readings: 3 }));
    assert_eq!(
        m.log_dropped
            .get_or_create(&vec![("reason", "log_full")])
            .get(),
        2
    );
    assert_eq!(log.read_after(0, 10).unwrap().len(), 2);
    // Once the sink catches up there is room again.
    let ids = log.read_after(0, 10).unwrap().ids();
    log.ack(ids).await.unwrap();
    log.append(vec![r(3), r(4)]).await.unwrap();
    assert_eq!(log.pending(), 2);
}

#[tokio::test]
async fn concurrent_appends_share_commits_and_all_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(IngestLog::open(dir.path(), 1_000_000, IngestMetrics::default()).unwrap());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                log.append(vec![r(i)]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(log.pending(), 800);
    assert_eq!(log.read_after(0, 10_000).unwrap().len(), 800);
    // Dead letters are durable and readable.
    log.dead_letter(vec![DeadLetter {
        sink: "s".into(),
        line: "l".into(),
        status: 400,
        message: "m".into(),
    }])
    .await
    .unwrap();
    assert_eq!(log.dead_letters().unwrap().len(), 1);
}

#[tokio::test]
async fn ids_are_never_reused_after_the_newest_entries_are_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let log = IngestLog::open(dir.path(), 1_000, IngestMetrics::default()).unwrap();
    log.append(vec![r(1)]).await.unwrap();
    log.append(vec![r(2)]).await.unwrap();
    let first = log.read_after(0, 10).unwrap();
    let cursor = first.entries.last().unwrap().id;
    log.ack(first.ids()).await.unwrap();
    // The table is empty now; a new entry must still come after the cursor.
    log.append(vec![r(3)]).await.unwrap();
    let next = log.read_after(cursor, 10).unwrap();
    assert_eq!(next.len(), 1, "new entry hidden behind the drain's cursor");
    drop(log);
    let log = IngestLog::open(dir.path(), 1_000, IngestMetrics::default()).unwrap();
    let ids = log.read_after(0, 10).unwrap().ids();
    log.ack(ids).await.unwrap();
    log.append(vec![r(4)]).await.unwrap();
    assert_eq!(log.read_after(cursor + 1, 10).unwrap().len(), 1);
}

#[tokio::test]
async fn an_append_abandoned_after_queueing_is_still_counted() {
    use futures::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let log = IngestLog::open(dir.path(), 1_000, IngestMetrics::default()).unwrap();
    // Poll once (the entry is queued), then drop the future, as a closed
    // connection would.
    let _ = log.append(vec![r(1), r(2)]).now_or_never();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while log.appended() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "abandoned append not counted"
        );
        log.wait_for_append(std::time::Duration::from_millis(20))
            .await;
    }
    assert_eq!(log.pending(), 2);
    assert_eq!(log.read_after(0, 10).unwrap().len(), 2);
}

#[tokio::test]
async fn a_drain_that_keeps_up_reads_the_tail_and_one_that_fell_behind_reads_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let log = IngestLog::open(dir.path(), 1_000, IngestMetrics::default()).unwrap();
    // Kept up: the batch is the very entry just committed, not a copy.
    let committed = log.append(vec![r(1), r(2)]).await.unwrap();
    let batch = log.read_after(0, 10).unwrap();
    assert!(Arc::ptr_eq(&batch.entries[0].readings, &committed.entry));
    assert_eq!(committed.readings(), &[r(1), r(2)]);
    let mut cursor = batch.entries[0].id;
    // Fell behind: only the newest 5 readings stay in memory; the drain
    // still gets every entry exactly once, in order.
    log.set_tail_max(5);
    let mut handles = Vec::new();
    for i in 3..=20 {
        handles.push(log.append(vec![r(i)]).await.unwrap());
    }
    let mut seen = Vec::new();
    let mut from_memory = 0;
    loop {
        let batch = log.read_after(cursor, 1).unwrap();
        let Some(last) = batch.entries.last() else {
            break;
        };
        cursor = last.id;
        from_memory += batch
            .entries
            .iter()
            .filter(|e| handles.iter().any(|h| Arc::ptr_eq(&e.readings, &h.entry)))
            .count();
        seen.extend(
            batch
                .entries
                .iter()
                .flat_map(|e| e.readings.iter().cloned()),
        );
    }
    assert_eq!(seen, (3..=20).map(r).collect::<Vec<_>>());
    assert_eq!(log.pending(), 20);
    // Reading again from the start goes to disk and finds everything.
    assert_eq!(log.read_after(0, 100).unwrap().len(), 20);
    // The newest five came from memory, the older ones from disk.
    assert_eq!(from_memory, 5);
}

#[tokio::test]
async fn a_corrupt_latest_value_is_an_error_naming_the_sensor_not_an_empty_value() {
    let dir = tempfile::tempdir().unwrap();
    let log = IngestLog::open(dir.path(), 1_000, IngestMetrics::default()).unwrap();
    log.append(vec![r(1)]).await.unwrap();
    assert_eq!(log.latest_all().unwrap()[0].values["water_level_cm"], 1.0);
    // Damage the stored value behind the log's back (a disk fault, a bad
    // migration).
    let conn = rusqlite::Connection::open(dir.path().join("ingest-log.db")).unwrap();
    conn.execute(
        "UPDATE latest SET values_json = '{not json' WHERE sensor = 'fl-a'",
        [],
    )
    .unwrap();
    match log.latest_all() {
        Err(Error::CorruptLatest { sensor, .. }) => assert_eq!(sensor, "fl-a"),
        other => panic!("expected CorruptLatest, got {other:?}"),
    }
}

#[tokio::test]
async fn a_held_reader_keeps_confirmed_entries_until_it_passes_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = IngestLog::open(dir.path(), 1_000, IngestMetrics::default()).unwrap();
    log.hold_after(0);
    for i in 1..=3 {
        log.append(vec![r(i)]).await.unwrap();
    }
    // The second reader sees every entry and leaves the tail to the drain.
    let peeked = log.peek_after(0, 10).unwrap();
    assert_eq!(peeked.len(), 3);
    let drained = log.read_after(0, 10).unwrap();
    assert_eq!(drained.ids(), peeked.ids());
    // The sink confirms all three; the held reader has taken only the first.
    log.release(peeked.entries[0].id).await.unwrap();
    log.ack(drained.ids()).await.unwrap();
    assert_eq!(log.pending(), 2, "two entries wait for the held reader");
    assert_eq!(log.peek_after(peeked.entries[0].id, 10).unwrap().len(), 2);
    log.release(peeked.entries[2].id).await.unwrap();
    assert_eq!(log.pending(), 0);
    assert_eq!(log.last_id_at_open(), 0);
    assert_eq!(log.last_id(), 3, "what this process committed since");
    drop(log);
    let log = IngestLog::open(dir.path(), 1_000, IngestMetrics::default()).unwrap();
    assert_eq!(log.last_id_at_open(), 3, "ids are never given twice");
}
