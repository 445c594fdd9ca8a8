//! Reading sources. Each feeds the spool writer through one bounded channel
//! (a fast source is slowed down, never buffered without bound) and counts
//! its readings and errors in its own `SourceStats`; a failing source never
//! stops the others.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pantau_model::{Reading, Timestamp, Values};
use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::command::Intervals;
use crate::sim::SimSensor;
use crate::status::SourceStats;

/// Longest JSON line accepted; longer lines are counted as errors.
pub const MAX_LINE: usize = 64 * 1024;

/// Samples each simulated sensor at its own interval (which a command may
/// change) until shutdown.
pub async fn simulate(
    sensors: Vec<SimSensor>,
    intervals: Arc<Intervals>,
    tx: mpsc::Sender<Reading>,
    stats: Arc<SourceStats>,
    shutdown: CancellationToken,
) {
    let start = Instant::now();
    let mut due: Vec<Instant> = vec![start; sensors.len()];
    loop {
        let next = due.iter().min().copied().unwrap_or(start);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            // An interval changed: reschedule from now.
            _ = intervals.changed.notified() => {
                let now = Instant::now();
                for (s, d) in sensors.iter().zip(due.iter_mut()) {
                    let every = intervals.get(&s.id).unwrap_or(Duration::from_secs(5));
                    *d = (*d).min(now + every);
                }
                continue;
            }
            _ = shutdown.cancelled() => return,
        }
        let now = Instant::now();
        // Whole seconds: one instant for every sensor sampled together.
        let ts = Timestamp(Timestamp::now().millis() / 1000 * 1000);
        for (s, d) in sensors.iter().zip(due.iter_mut()) {
            if *d > now {
                continue;
            }
            let every = intervals.get(&s.id).unwrap_or(Duration::from_secs(5));
            *d += every;
            if *d <= now {
                // Fell behind (a stalled machine): skip, do not burst.
                *d = now + every;
            }
            let r = Reading {
                sensor: s.id.clone(),
                ts,
                values: s.values(ts),
            };
            if tx.send(r).await.is_err() {
                return;
            }
            stats.readings.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One input line: `{"sensor":..,"ts":..,"values":{..}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    sensor: String,
    ts: String,
    values: Values,
}

fn parse_line(line: &str) -> Result<Reading, String> {
    let l: Line = serde_json::from_str(line).map_err(|e| e.to_string())?;
    pantau_model::id::check_id(&l.sensor).map_err(|e| format!("sensor: {e}"))?;
    let ts =
        Timestamp::parse_rfc3339(&l.ts).ok_or_else(|| format!("ts {:?} is not RFC 3339", l.ts))?;
    if l.values.is_empty() {
        return Err("values: empty".into());
    }
    Ok(Reading {
        sensor: l.sensor,
        ts,
        values: l.values,
    })
}

/// Reads JSON lines until EOF or shutdown. A bad line (malformed JSON, an
/// unknown field, a bad sensor id or timestamp, a line over `MAX_LINE`) is
/// counted and logged with its number, and skipped.
pub async fn json_lines<R: AsyncBufRead + Unpin>(
    mut input: R,
    tx: mpsc::Sender<Reading>,
    stats: Arc<SourceStats>,
    shutdown: CancellationToken,
) {
    let mut n = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = tokio::select! {
            r = read_line_bounded(&mut input, &mut buf) => r,
            _ = shutdown.cancelled() => return,
        };
        let complete = match read {
            Ok(None) => return,
            Ok(Some(complete)) => complete,
            Err(e) => {
                stats.error(format!("read: {e}"));
                tracing::warn!(source = %stats.name, error = %e, "Input read failed.");
                return;
            }
        };
        n += 1;
        let parsed = if complete {
            std::str::from_utf8(&buf)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    let text = text.trim();
                    if text.is_empty() {
                        Err(String::new())
                    } else {
                        parse_line(text)
                    }
                })
        } else {
            Err(format!("line longer than {MAX_LINE} bytes"))
        };
        match parsed {
            Ok(r) => {
                if tx.send(r).await.is_err() {
                    return;
                }
                stats.readings.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_empty() => {}
            Err(e) => {
                // Logged at debug per line (a flood of bad lines must not
                // flood the log); counted always, the latest kept for status.
                tracing::debug!(source = %stats.name, line = n, error = %e, "Skipping a bad input line.");
                stats.error(format!("line {n}: {e}"));
            }
        }
    }
}

/// Reads one line into `buf` (without the newline), keeping at most
/// `MAX_LINE` bytes. `Ok(None)` at EOF; `Ok(Some(false))` if the line was
/// too long (the rest of it is consumed and discarded).
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    input: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    let mut complete = true;
    let mut any = false;
    loop {
        let chunk = input.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(any.then_some(complete));
        }
        any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if complete {
            if buf.len() + take > MAX_LINE {
                complete = false;
                buf.clear();
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        input.consume(if done { take + 1 } else { take });
        if done {
            return Ok(Some(complete));
        }
    }
}

/// Accepts local TCP connections and reads JSON lines from each, for
/// sensors read by other programs on the gateway.
pub async fn json_tcp(
    listener: TcpListener,
    tx: mpsc::Sender<Reading>,
    stats: Arc<SourceStats>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let (tx, stats, sd) = (tx.clone(), stats.clone(), shutdown.clone());
                tokio::spawn(async move {
                    json_lines(tokio::io::BufReader::new(stream), tx, stats, sd).await;
                });
            }
            Err(e) => {
                stats.error(format!("accept: {e}"));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run_lines(input: &[u8]) -> (Vec<Reading>, Arc<SourceStats>) {
        let (tx, mut rx) = mpsc::channel(100);
        let stats = Arc::new(SourceStats::default());
        json_lines(input, tx, stats.clone(), CancellationToken::new()).await;
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r);
        }
        (out, stats)
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_changes_one_simulated_sensors_interval() {
        let intervals = Arc::new(Intervals::default());
        let sensors: Vec<SimSensor> = ["a", "b"]
            .iter()
            .map(|id| {
                intervals.register(id, Duration::from_secs(10));
                SimSensor::new(id.to_string(), crate::Model::Tide { mean_m: 1.7 })
            })
            .collect();
        let (tx, mut rx) = mpsc::channel(10_000);
        let sd = CancellationToken::new();
        let stats = Arc::new(SourceStats::default());
        tokio::spawn(simulate(
            sensors,
            intervals.clone(),
            tx,
            stats.clone(),
            sd.clone(),
        ));
        let count = |rx: &mut mpsc::Receiver<Reading>| {
            let mut n = std::collections::HashMap::<String, u32>::new();
            while let Ok(r) = rx.try_recv() {
                *n.entry(r.sensor).or_default() += 1;
            }
            (
                n.get("a").copied().unwrap_or(0),
                n.get("b").copied().unwrap_or(0),
            )
        };
        // Virtual time: samples at 0, 10, 20, 30 s.
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert_eq!(count(&mut rx), (4, 4));
        intervals.set("a", Duration::from_secs(1)).unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (a, b) = count(&mut rx);
        assert!((9..=11).contains(&a), "a sampled {a} times in 10 s at 1 s");
        assert_eq!(b, 1, "b keeps its 10 s interval");
        assert!(intervals.set("c", Duration::from_secs(1)).is_err());
        sd.cancel();
    }

    #[tokio::test]
    async fn good_lines_pass_and_each_bad_line_is_counted() {
        let long = format!("{{\"sensor\":\"a\",\"x\":\"{}\"}}\n", "y".repeat(MAX_LINE));
        let input = [
            r#"{"sensor":"fl-a","ts":"2026-11-28T00:00:00Z","values":{"water_level_cm":12}}"#,
            "not json",
            r#"{"sensor":"fl-a","ts":"2026-11-28T00:00:01Z","values":{"water_level_cm":1},"extra":1}"#,
            r#"{"sensor":"Bad Id","ts":"2026-11-28T00:00:01Z","values":{"water_level_cm":1}}"#,
            r#"{"sensor":"fl-a","ts":"yesterday","values":{"water_level_cm":1}}"#,
            r#"{"sensor":"fl-a","ts":"2026-11-28T00:00:01Z","values":{}}"#,
            "",
            long.trim_end(),
            r#"{"sensor":"fl-a","ts":"2026-11-28T00:00:02Z","values":{"water_level_cm":13}}"#,
        ]
        .join("\n");
        let mut bytes = input.into_bytes();
        bytes.extend_from_slice(&[b'\n', 0xff, 0xfe, b'\n']);
        let (good, stats) = run_lines(&bytes).await;
        assert_eq!(
            good.iter().map(|r| r.ts.to_rfc3339()).collect::<Vec<_>>(),
            ["2026-11-28T00:00:00.000Z", "2026-11-28T00:00:02.000Z"]
        );
        assert_eq!(
            stats.readings.load(Ordering::Relaxed),
            2,
            "{:?}",
            stats.last_error
        );
        assert_eq!(stats.errors.load(Ordering::Relaxed), 7);
    }
}
