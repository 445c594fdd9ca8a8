//! The in-memory tail of the ingest log: the entries committed by this
//! process and not yet handed to the drain, newest last, bounded by a
//! number of readings. It is a cache of the rows on disk, never the record.
//!
//! Invariant: every committed entry with an id above `floor` is in
//! `entries`. Handing an entry out, or forgetting it over the bound, raises
//! `floor` to its id, so a reader asking for anything at or below `floor`
//! is sent to disk.

use std::collections::VecDeque;

use super::LogEntry;

/// Entries committed by this process and not yet read, newest last.
#[derive(Debug)]
pub(super) struct Tail {
    /// Every committed entry with an id above this is in `entries`.
    floor: i64,
    /// The entries, oldest first.
    entries: VecDeque<LogEntry>,
    /// Readings in `entries`.
    readings: usize,
    /// Most readings kept.
    pub(super) max: usize,
}

impl Tail {
    /// An empty tail above `floor` (the newest id on disk at open).
    pub(super) fn new(floor: i64, max: usize) -> Self {
        Self {
            floor,
            entries: VecDeque::new(),
            readings: 0,
            max,
        }
    }

    /// Keeps a newly committed entry.
    pub(super) fn push(&mut self, entry: LogEntry) {
        self.readings += entry.readings.len();
        self.entries.push_back(entry);
        // Over the bound, forget the oldest: the drain reads them from disk.
        while self.readings > self.max && self.entries.len() > 1 {
            self.pop();
        }
    }

    fn pop(&mut self) -> Option<LogEntry> {
        let e = self.entries.pop_front()?;
        self.readings -= e.readings.len();
        self.floor = e.id;
        Some(e)
    }

    /// The entries after `after_id`, about `max_readings` of readings (at
    /// least one entry when there is one), if the tail holds every entry
    /// after `after_id`; `None` when the reader must go to disk. Entries
    /// handed out leave the tail.
    pub(super) fn take_after(
        &mut self,
        after_id: i64,
        max_readings: usize,
    ) -> Option<Vec<LogEntry>> {
        if after_id < self.floor {
            return None;
        }
        while self.entries.front().is_some_and(|e| e.id <= after_id) {
            self.pop();
        }
        let mut entries = Vec::new();
        let mut total = 0;
        while total < max_readings {
            let Some(e) = self.pop() else { break };
            total += e.readings.len();
            entries.push(e);
        }
        Some(entries)
    }

    /// The entries after `after_id` like [`Tail::take_after`], leaving
    /// them in the tail.
    pub(super) fn peek_after(&self, after_id: i64, max_readings: usize) -> Option<Vec<LogEntry>> {
        if after_id < self.floor {
            return None;
        }
        let mut entries = Vec::new();
        let mut total = 0;
        for e in self.entries.iter().filter(|e| e.id > after_id) {
            if total >= max_readings {
                break;
            }
            total += e.readings.len();
            entries.push(e.clone());
        }
        Some(entries)
    }
}
