//! The agent's counters and the status message it publishes (retained) on
//! `pantau/v1/gw/{gw}/status`.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pantau_model::Timestamp;
use serde::Serialize;

use crate::spool::Depth;

/// Counters of one source.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// `stdin`, `json-tcp 127.0.0.1:7001`, `simulated`, ...
    pub name: String,
    /// Readings it produced.
    pub readings: AtomicU64,
    /// Lines or reads that failed (malformed, unknown field, I/O).
    pub errors: AtomicU64,
    /// The latest error, for the status message.
    pub last_error: Mutex<Option<String>>,
}

impl SourceStats {
    /// Counts an error and remembers it.
    pub fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }
}

/// Everything the agent counts.
#[derive(Debug, Default)]
pub struct Stats {
    /// One entry per configured source.
    pub sources: Vec<Arc<SourceStats>>,
    /// Envelopes published (each attempt).
    pub envelopes_sent: AtomicU64,
    /// Readings whose envelope was acknowledged.
    pub readings_acked: AtomicU64,
    /// Envelopes sent again after a reconnect (their readings were never
    /// acknowledged).
    pub readings_replayed: AtomicU64,
    /// Connections made.
    pub connects: AtomicU64,
    /// Commands received on the cmd topic.
    pub commands: AtomicU64,
    /// Commands that could not be carried out.
    pub command_errors: AtomicU64,
    /// The latest command error.
    pub last_command_error: Mutex<Option<String>>,
    /// This clock minus the platform's, from the last `time` command
    /// (positive: the gateway is ahead).
    pub clock_offset_ms: AtomicI64,
    /// Whether a `time` command has arrived.
    pub clock_known: AtomicBool,
    /// Spool appends that failed (a full or failing disk); each is retried
    /// while the sources wait, so no reading is lost.
    pub spool_append_failures: AtomicU64,
    /// Why the latest spool append failed.
    pub last_spool_error: Mutex<Option<String>>,
}

impl Stats {
    /// Stats with one entry per source name.
    pub fn new(sources: impl IntoIterator<Item = String>) -> Self {
        Self {
            sources: sources
                .into_iter()
                .map(|name| {
                    Arc::new(SourceStats {
                        name,
                        ..SourceStats::default()
                    })
                })
                .collect(),
            ..Self::default()
        }
    }

    /// Counts a failed spool append and remembers why.
    pub fn spool_error(&self, message: String) {
        self.spool_append_failures.fetch_add(1, Ordering::Relaxed);
        *self
            .last_spool_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(message);
    }

    /// Counts a failed command and remembers why.
    pub fn command_error(&self, message: String) {
        self.command_errors.fetch_add(1, Ordering::Relaxed);
        *self
            .last_command_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(message);
    }
}

/// The status message.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Always true when published by the agent; the last will says false.
    pub online: bool,
    /// `online` or `catching_up`.
    pub state: &'static str,
    /// When the agent built this message (agent clock).
    pub ts: String,
    /// Spool depth, bound and dropped count.
    pub spool: Depth,
    /// Spool appends that failed and were retried (disk full or failing).
    pub spool_append_failures: u64,
    /// Why the latest spool append failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_spool_error: Option<String>,
    /// Per-source counters.
    pub sources: Vec<SourceStatus>,
    /// Readings acknowledged by the broker since start.
    pub readings_acked: u64,
    /// Readings sent again after a reconnect since start.
    pub readings_replayed: u64,
    /// Gateway clock minus platform clock, when the platform told its time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
    /// Commands received.
    pub commands: u64,
    /// Commands that failed.
    pub command_errors: u64,
    /// Why the latest command failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_command_error: Option<String>,
}

/// One source in the status.
#[derive(Debug, Serialize)]
pub struct SourceStatus {
    /// Source name.
    pub name: String,
    /// Readings produced.
    pub readings: u64,
    /// Errors counted.
    pub errors: u64,
    /// The latest error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Status {
    /// The status now.
    pub fn build(stats: &Stats, spool: Depth, state: &'static str) -> Self {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Self {
            online: true,
            state,
            ts: Timestamp::now().to_rfc3339(),
            spool,
            spool_append_failures: get(&stats.spool_append_failures),
            last_spool_error: stats
                .last_spool_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            sources: stats
                .sources
                .iter()
                .map(|s| SourceStatus {
                    name: s.name.clone(),
                    readings: get(&s.readings),
                    errors: get(&s.errors),
                    last_error: s
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                })
                .collect(),
            readings_acked: get(&stats.readings_acked),
            readings_replayed: get(&stats.readings_replayed),
            clock_offset_ms: stats
                .clock_known
                .load(Ordering::Relaxed)
                .then(|| stats.clock_offset_ms.load(Ordering::Relaxed)),
            commands: get(&stats.commands),
            command_errors: get(&stats.command_errors),
            last_command_error: stats
                .last_command_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// The JSON payload.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"online":true}"#.into())
    }
}
