//! The alert duty of a scaled deployment: every API replica runs an
//! engine over the commits it mirrors, and exactly one of them — the
//! holder of a lease in the shared PostgreSQL state — evaluates and
//! records; the others stand by. When the holder dies its lease runs out
//! (by the database's clock) and a standby takes it over with a higher
//! epoch, reloads the trackers the old holder last recorded, and
//! evaluates again what it mirrored in the last [`Duty::window`]. That
//! re-evaluation opens nothing twice: a tracker is recorded in the same
//! transaction as the alert change it made, so readings the old holder
//! already turned into changes are older than the tracker and refused as
//! stale, and readings it evaluated without a change evaluate the same
//! way again (the trackers run on observation time). A holder that
//! stalled past its lease writes nothing more: each step's transaction
//! checks the lease's epoch ([`crate::store::Fence`]).
//!
//! A standby keeps the commits it mirrored for `window` (held in its
//! cache log), so `window` must cover the lease's time to live and the
//! holder's evaluation lag; the default is six times the TTL.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pantau_ingest::log::IngestLog;
use pantau_model::Timestamp;
use pantau_state::StateDb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineError};
use crate::store::{Fence, StoreError};

/// Readings evaluated per step.
const BATCH: usize = 20_000;

/// The lease and how it is kept.
#[derive(Debug, Clone)]
pub struct Duty {
    /// Shared state holding the lease.
    pub state: Arc<StateDb>,
    /// The lease's name (`alerts`).
    pub name: String,
    /// This process (its replica id).
    pub holder: String,
    /// The lease's time to live; renewed every quarter of it.
    pub ttl: Duration,
    /// How long a standby keeps what it mirrored.
    pub window: Duration,
}

impl Duty {
    /// The alert lease of replica `holder`, with a TTL of `ttl`.
    pub fn new(state: Arc<StateDb>, holder: &str, ttl: Duration) -> Self {
        Self {
            state,
            name: "alerts".into(),
            holder: holder.into(),
            ttl,
            window: ttl * 6,
        }
    }

    fn period(&self) -> Duration {
        (self.ttl / 4).max(Duration::from_millis(100))
    }

    async fn acquire(&self) -> Result<Option<i64>, EngineError> {
        let me = self.clone();
        let ttl = self.ttl.as_millis() as i64;
        tokio::task::spawn_blocking(move || me.state.acquire_lease(&me.name, &me.holder, ttl))
            .await
            .map_err(|_| pantau_ingest::Error::WriterGone)?
            .map_err(|e| EngineError::Store(StoreError::Shared(e)))
    }

    async fn release(&self) {
        let me = self.clone();
        let released =
            tokio::task::spawn_blocking(move || me.state.release_lease(&me.name, &me.holder)).await;
        if let Ok(Err(e)) = released {
            tracing::warn!(lease = %self.name, error = %e, "Cannot give the alert lease up (it runs out by itself).");
        }
    }
}

/// What the commits mirrored so far were, over time: `(when, last id)`,
/// oldest first, for a standby to let go of what is older than its window.
#[derive(Debug)]
struct Marks(VecDeque<(Instant, i64)>);

impl Marks {
    /// The newest position appended before `window` ago, dropping marks
    /// older than it.
    fn expired(&mut self, window: Duration) -> Option<i64> {
        let mut out = None;
        while let Some(&(at, id)) = self.0.front() {
            if at.elapsed() < window {
                break;
            }
            out = Some(id);
            self.0.pop_front();
        }
        out
    }
}

/// Runs `engine` under `duty` until `stop`: standing by, or evaluating
/// what `log` mirrors while this process holds the lease. `on_duty`
/// says which (the webhook dispatcher runs only on duty). Errors are
/// logged and end the duty, never the task: a standby retries.
pub async fn run(
    engine: Arc<Engine>,
    log: Arc<IngestLog>,
    duty: Duty,
    on_duty: watch::Sender<bool>,
    stop: CancellationToken,
) {
    // Everything from here on is held until released (a standby after its
    // window, the holder once evaluated), whatever the pruner acks.
    let mut released: i64 = 0;
    log.hold_after(released);
    let mut marks = Marks(VecDeque::from([(Instant::now(), log.last_id())]));
    loop {
        let epoch = match duty.acquire().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(lease = %duty.name, error = %e, "Cannot reach the alert lease; standing by.");
                None
            }
        };
        if let Some(epoch) = epoch {
            released = on_lease(&engine, &log, &duty, epoch, released, &on_duty, &stop).await;
            if stop.is_cancelled() {
                return;
            }
            marks = Marks(VecDeque::from([(Instant::now(), log.last_id())]));
        }
        marks.0.push_back((Instant::now(), log.last_id()));
        if let Some(through) = marks.expired(duty.window) {
            if through > released {
                released = through;
                if let Err(e) = log.release(released).await {
                    tracing::warn!(error = %e, "Cannot let go of mirrored commits.");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(duty.period()) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Holds the lease at `epoch`: evaluates from `from` on until the lease
/// is lost or `stop`; returns the position evaluated.
async fn on_lease(
    engine: &Arc<Engine>,
    log: &Arc<IngestLog>,
    duty: &Duty,
    epoch: i64,
    from: i64,
    on_duty: &watch::Sender<bool>,
    stop: &CancellationToken,
) -> i64 {
    engine.store().set_fence(Some(Fence {
        name: duty.name.clone(),
        holder: duty.holder.clone(),
        epoch,
    }));
    let e = engine.clone();
    match tokio::task::spawn_blocking(move || e.reload()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Cannot load the alert trackers; standing by.");
            return from;
        }
        Err(_) => return from,
    }
    tracing::info!(lease = %duty.name, holder = %duty.holder, epoch, from, "Took the alert duty.");
    let _ = on_duty.send(true);
    let mut cursor = from;
    let result = evaluate_while_held(engine, log, duty, epoch, &mut cursor, stop).await;
    let _ = on_duty.send(false);
    match result {
        Ok(()) => {
            // Stopping: hand the duty over at once.
            duty.release().await;
            tracing::info!(lease = %duty.name, "Gave the alert duty up.");
        }
        Err(e) => {
            tracing::warn!(lease = %duty.name, epoch, error = %e, "Lost the alert duty; standing by.")
        }
    }
    cursor
}

async fn evaluate_while_held(
    engine: &Arc<Engine>,
    log: &Arc<IngestLog>,
    duty: &Duty,
    epoch: i64,
    cursor: &mut i64,
    stop: &CancellationToken,
) -> Result<(), EngineError> {
    let mut renewed = Instant::now();
    let mut last_tick: Option<Instant> = None;
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        if renewed.elapsed() >= duty.period() {
            match duty.acquire().await {
                Ok(Some(e)) if e == epoch => renewed = Instant::now(),
                Ok(_) => {
                    return Err(EngineError::Store(StoreError::Fenced {
                        name: duty.name.clone(),
                        epoch,
                    }))
                }
                // Unreachable for longer than the lease: another may hold it.
                Err(e) if renewed.elapsed() >= duty.ttl => return Err(e),
                Err(e) => tracing::warn!(error = %e, "Cannot renew the alert lease; trying again."),
            }
            let e = engine.clone();
            tokio::task::spawn_blocking(move || e.follow_rules())
                .await
                .map_err(|_| pantau_ingest::Error::WriterGone)??;
        }
        let seen = log.appended();
        let (reader, after) = (log.clone(), *cursor);
        let batch = tokio::task::spawn_blocking(move || reader.peek_after(after, BATCH))
            .await
            .map_err(|_| pantau_ingest::Error::WriterGone)??;
        let busy = !batch.entries.is_empty();
        if let Some(last) = batch.entries.last().map(|e| e.id) {
            let e = engine.clone();
            let entries = batch.entries;
            tokio::task::spawn_blocking(move || {
                let readings = entries.iter().flat_map(|e| e.readings.iter());
                e.evaluate(readings, last, Timestamp::now())
            })
            .await
            .map_err(|_| pantau_ingest::Error::WriterGone)??;
            *cursor = last;
            log.release(last).await?;
        }
        let mut wait = duty.period().min(Duration::from_secs(1));
        if !busy || last_tick.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            let e = engine.clone();
            let next = tokio::task::spawn_blocking(move || e.tick(Timestamp::now()))
                .await
                .map_err(|_| pantau_ingest::Error::WriterGone)??;
            last_tick = Some(Instant::now());
            if let Some(t) = next {
                let until =
                    Duration::from_millis((t.0 - Timestamp::now().0).clamp(1, 1_000) as u64);
                wait = wait.min(until);
            }
        }
        if busy {
            continue;
        }
        tokio::select! {
            _ = log.wait_for_append_after(seen, wait) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_lets_go_only_of_what_is_older_than_its_window() {
        let now = Instant::now();
        let mut m = Marks(VecDeque::from([
            (now - Duration::from_secs(50), 10),
            (now - Duration::from_secs(40), 20),
            (now - Duration::from_secs(5), 30),
        ]));
        assert_eq!(m.expired(Duration::from_secs(30)), Some(20));
        assert_eq!(m.0.len(), 1);
        assert_eq!(m.expired(Duration::from_secs(30)), None);
    }
}
