//! Reading sources feeding the uplink through a bounded channel.

use std::time::Duration;

use pantau_model::{Reading, Timestamp, Values};
use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::sim::SimSensor;

/// Samples every simulated sensor each `interval` until shutdown.
pub async fn simulate(
    sensors: Vec<SimSensor>,
    interval: Duration,
    tx: mpsc::Sender<Reading>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        // Whole seconds: the same instant on every sensor of the gateway.
        let now = Timestamp(Timestamp::now().millis() / 1000 * 1000);
        for s in &sensors {
            let r = Reading {
                sensor: s.id.clone(),
                ts: now,
                values: s.values(now),
            };
            if tx.send(r).await.is_err() {
                return;
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    sensor: String,
    ts: String,
    values: Values,
}

/// Reads JSON lines `{"sensor":..,"ts":..,"values":{..}}` until EOF or
/// shutdown. A bad line is logged with its number and skipped; returns the
/// number of bad lines.
pub async fn json_lines<R: AsyncBufRead + Unpin>(
    input: R,
    tx: mpsc::Sender<Reading>,
    shutdown: CancellationToken,
) -> u64 {
    let mut lines = input.lines();
    let (mut n, mut bad) = (0u64, 0u64);
    loop {
        let line = tokio::select! {
            l = lines.next_line() => l,
            _ = shutdown.cancelled() => return bad,
        };
        let line = match line {
            Ok(Some(l)) => l,
            Ok(None) => return bad,
            Err(e) => {
                tracing::warn!(error = %e, "Input read failed.");
                return bad;
            }
        };
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Line>(&line)
            .map_err(|e| e.to_string())
            .and_then(|l| match Timestamp::parse_rfc3339(&l.ts) {
                Some(ts) => Ok(Reading {
                    sensor: l.sensor,
                    ts,
                    values: l.values,
                }),
                None => Err(format!("ts {:?} is not RFC 3339", l.ts)),
            });
        match parsed {
            Ok(r) => {
                if tx.send(r).await.is_err() {
                    return bad;
                }
            }
            Err(e) => {
                bad += 1;
                tracing::warn!(line = n, error = %e, "Skipping a bad input line.");
            }
        }
    }
}
