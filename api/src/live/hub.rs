//! The process's one reader of the live broadcast, shared by every stream.
//!
//! The hub receives each stored reading once and appends it, with the
//! registry it was stored under, to a bounded ring, recording it as its
//! sensor's latest. An event is rendered to JSON (public or agency) only
//! when a stream takes it, and at most once per audience however many
//! streams take it. Streams
//! hold only a cursor (the last sequence number they took) and pull at
//! their own pace: the next matching event from the ring while they keep
//! up, and — once more than [`BEHIND`] events behind, or past the ring's
//! start — the latest event of each sensor after their cursor, in sequence
//! order (a slow client coalesces to the latest value per sensor). The
//! per-reading cost is paid once however many streams are open, a stream
//! costs nothing while its client does not read, and the memory is the
//! ring plus one event per sensor, whatever the clients do.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use pantau_ingest::{Ingestor, LiveReading};
use pantau_model::derive::LosBands;
use pantau_model::{Registry, Sensor, SensorKind};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::watch;

/// Events kept in the ring.
pub(crate) const RING: usize = 4096;
/// A stream further behind than this coalesces.
pub(crate) const BEHIND: u64 = 256;
/// Readings taken from the broadcast per append.
const BATCH: usize = 1024;

/// One stored reading, rendered on demand for each audience.
#[derive(Debug)]
pub(crate) struct Ev {
    reading: Arc<LiveReading>,
    /// The registry the reading was stored under (its sensor is in it).
    registry: Arc<Registry>,
    /// Traffic level-of-service bands (the events carry the status).
    los: Arc<LosBands>,
    /// The public event's JSON (`None` for a sensor that is not public).
    public: OnceLock<Option<Arc<str>>>,
    /// The agency event's JSON (every field).
    agency: OnceLock<Arc<str>>,
}

impl Ev {
    /// An event of `reading`, whose sensor `registry` holds (else `None`).
    pub(crate) fn new(
        reading: Arc<LiveReading>,
        registry: Arc<Registry>,
        los: Arc<LosBands>,
    ) -> Option<Self> {
        registry.get(&reading.sensor)?;
        Some(Self {
            reading,
            registry,
            los,
            public: OnceLock::new(),
            agency: OnceLock::new(),
        })
    }

    fn sensor(&self) -> &Sensor {
        self.registry
            .get(&self.reading.sensor)
            .expect("checked when the event was made")
    }

    /// The sensor's id.
    pub(crate) fn id(&self) -> &str {
        &self.reading.sensor
    }

    /// The sensor's kind.
    pub(crate) fn kind(&self) -> SensorKind {
        self.reading.kind
    }

    /// The sensor's district.
    pub(crate) fn district(&self) -> &str {
        &self.sensor().district
    }

    /// The public event (public sensors only, no restricted field).
    pub(crate) fn public(&self) -> Option<Arc<str>> {
        self.public
            .get_or_init(|| {
                crate::public::public_event(self.sensor(), &self.reading, &self.los)
                    .map(|v| Arc::from(v.to_string()))
            })
            .clone()
    }

    /// The agency event (every field).
    pub(crate) fn agency(&self) -> Arc<str> {
        self.agency
            .get_or_init(|| {
                let r = &self.reading;
                let latest = crate::public::latest_of(r);
                let v = serde_json::json!({
                    "sensor": r.sensor,
                    "kind": r.kind,
                    "district": self.sensor().district,
                    "gateway": r.gateway,
                    "ts": r.ts.to_rfc3339(),
                    "status": crate::public::status(self.sensor(), &latest, &self.los),
                    "values": latest.values,
                });
                Arc::from(v.to_string())
            })
            .clone()
    }
}

/// An entry of the ring.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    Reading(Arc<Ev>),
    /// Readings the hub itself missed (the broadcast outran it).
    Lagged(u64),
}

/// What a stream takes next.
#[derive(Debug, PartialEq)]
pub(crate) enum Next<T> {
    /// An event, and how many events of the feed the stream skipped to
    /// reach it (it was behind and took its sensor's latest instead).
    Reading(T, u64),
    Lagged(u64),
    /// Nothing new for this stream.
    Idle,
}

/// The ring and the latest event per sensor; sequence numbers start at 1.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    events: VecDeque<Entry>,
    /// Sequence number of `events[0]`.
    first: u64,
    /// Last sequence number given.
    head: u64,
    /// Each sensor's latest event's sequence number...
    latest: HashMap<String, u64>,
    /// ...and those events by sequence number.
    by_seq: BTreeMap<u64, Arc<Ev>>,
}

impl Ring {
    /// Appends an entry; returns its sequence number.
    pub(crate) fn push(&mut self, e: Entry) -> u64 {
        self.head += 1;
        let seq = self.head;
        if self.events.is_empty() {
            self.first = seq;
        }
        if let Entry::Reading(ev) = &e {
            match self.latest.get_mut(ev.id()) {
                Some(at) => {
                    self.by_seq.remove(at);
                    *at = seq;
                }
                None => {
                    self.latest.insert(ev.id().to_owned(), seq);
                }
            }
            self.by_seq.insert(seq, ev.clone());
        }
        self.events.push_back(e);
        if self.events.len() > RING {
            self.events.pop_front();
            self.first += 1;
        }
        seq
    }

    /// The last sequence number given (a new stream's cursor).
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// The next entry after `cursor` that `wants` keeps (it returns what to
    /// send), advancing the cursor past everything looked at.
    /// A `complete` stream never coalesces: it follows the ring however
    /// far behind, and once it falls off the ring's start it gets one
    /// `Lagged` with how many events it missed, then goes on from there.
    pub(crate) fn next<T>(
        &self,
        cursor: &mut u64,
        complete: bool,
        wants: impl Fn(&Ev) -> Option<T>,
    ) -> Next<T> {
        if complete && *cursor + 1 < self.first {
            let missed = self.first - *cursor - 1;
            *cursor = self.first - 1;
            return Next::Lagged(missed);
        }
        if (!complete && self.head.saturating_sub(*cursor) > BEHIND) || *cursor + 1 < self.first {
            // Behind: the latest of each sensor after the cursor.
            for (&seq, ev) in self.by_seq.range(*cursor + 1..) {
                if let Some(out) = wants(ev) {
                    let skipped = seq - *cursor - 1;
                    *cursor = seq;
                    return Next::Reading(out, skipped);
                }
            }
            // Every later event is superseded or not for this stream.
            *cursor = self.head;
            return Next::Idle;
        }
        let start = (*cursor + 1 - self.first) as usize;
        for e in self.events.range(start.min(self.events.len())..) {
            *cursor += 1;
            match e {
                Entry::Lagged(n) => return Next::Lagged(*n),
                Entry::Reading(ev) => {
                    if let Some(out) = wants(ev) {
                        return Next::Reading(out, 0);
                    }
                }
            }
        }
        Next::Idle
    }
}

/// The hub: the ring behind a lock and the head's watch.
#[derive(Debug)]
pub(crate) struct Hub {
    ring: Mutex<Ring>,
    head: watch::Sender<u64>,
}

impl Hub {
    /// Starts the hub's task on `ingestor`'s live broadcast; it keeps
    /// readings only while `open` (streams open) is above zero.
    pub(crate) fn start(ingestor: Arc<Ingestor>, los: Arc<LosBands>, open: Gauge) -> Arc<Self> {
        let hub = Arc::new(Self {
            ring: Mutex::default(),
            head: watch::Sender::new(0),
        });
        let weak = Arc::downgrade(&hub);
        let mut rx = ingestor.subscribe_live();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                match rx.recv().await {
                    Ok(r) => batch.push(Ok(r)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => batch.push(Err(n)),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(Ok(r)),
                        Err(TryRecvError::Lagged(n)) => batch.push(Err(n)),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Closed) => return,
                    }
                }
                let Some(hub) = weak.upgrade() else { return };
                if open.get() <= 0 {
                    // No stream to serve: a new one starts at the head.
                    batch.clear();
                    continue;
                }
                let registry = ingestor.registry();
                let entries: Vec<Entry> = batch
                    .drain(..)
                    .filter_map(|r| match r {
                        Ok(r) => Ev::new(r, registry.clone(), los.clone())
                            .map(|e| Entry::Reading(Arc::new(e))),
                        Err(n) => {
                            ingestor.metrics().live_lagged.inc_by(n);
                            Some(Entry::Lagged(n))
                        }
                    })
                    .collect();
                let head = {
                    let mut ring = hub.lock();
                    for e in entries {
                        ring.push(e);
                    }
                    ring.head()
                };
                hub.head.send_replace(head);
            }
        });
        hub
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A watch of the head, to wait for new events.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry of flood gauges `a`, `b`, `s0`..`s9` (public) and
    /// `private`.
    fn registry() -> Arc<Registry> {
        let mut toml = String::new();
        let ids = ["a", "b", "private"]
            .into_iter()
            .map(str::to_owned)
            .chain((0..10).map(|i| format!("s{i}")));
        for id in ids {
            toml.push_str(&format!(
                "[[sensor]]\nid = \"{id}\"\nkind = \"flood_gauge\"\ngateway = \"gw-1\"\nname = \"{id}\"\nlat = 1.6\nlon = 101.4\npublic = {}\n\n",
                id != "private"
            ));
        }
        Arc::new(Registry::parse(&toml).expect("a valid registry"))
    }

    thread_local! {
        static REGISTRY: Arc<Registry> = registry();
    }

    /// Reading number `n` of `sensor` (its water level is `n` cm).
    fn ev(sensor: &str, n: u64) -> Entry {
        let mut values = pantau_model::Values::new();
        values.insert("water_level_cm".into(), pantau_model::Value::Num(n as f64));
        let r = LiveReading {
            sensor: sensor.into(),
            kind: SensorKind::FloodGauge,
            gateway: "gw-1".into(),
            ts: pantau_model::Timestamp(1_700_000_000_000),
            values,
        };
        let ev = REGISTRY
            .with(|reg| Ev::new(Arc::new(r), reg.clone(), Arc::default()))
            .expect("a known sensor");
        Entry::Reading(Arc::new(ev))
    }

    /// What a public stream takes: `sensor:n`, from the rendered JSON.
    fn public(e: &Ev) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&e.public()?).expect("JSON");
        Some(format!(
            "{}:{}",
            v["sensor"].as_str()?,
            v["values"]["water_level_cm"].as_f64()? as u64
        ))
    }

    #[test]
    fn a_stream_that_keeps_up_takes_every_event_it_may_see_in_order() {
        let mut ring = Ring::default();
        let mut cursor = ring.head();
        for i in 0..100 {
            ring.push(ev(["a", "b", "private"][i % 3], i as u64));
        }
        let mut got = Vec::new();
        while let Next::Reading(v, skipped) = ring.next(&mut cursor, false, public) {
            assert_eq!(skipped, 0);
            got.push(v.to_string());
        }
        let want: Vec<String> = (0..100)
            .filter(|i| i % 3 != 2)
            .map(|i| format!("{}:{i}", ["a", "b"][i % 3]))
            .collect();
        assert_eq!(got, want);
        assert_eq!(cursor, ring.head());
        assert_eq!(ring.next(&mut cursor, false, public), Next::Idle);
    }

    #[test]
    fn a_stream_far_behind_takes_the_latest_per_sensor_and_counts_the_skipped() {
        let mut ring = Ring::default();
        let mut cursor = ring.head();
        for i in 0..100_000u64 {
            ring.push(ev(&format!("s{}", i % 10), i));
        }
        // Bounded: the ring and one event per sensor.
        assert_eq!(ring.events.len(), RING);
        assert_eq!(ring.by_seq.len(), 10);
        let mut got = Vec::new();
        let mut skipped = 0;
        while let Next::Reading(v, s) = ring.next(&mut cursor, false, public) {
            got.push(v.to_string());
            skipped += s;
        }
        let want: Vec<String> = (99_990..100_000)
            .map(|i| format!("s{}:{i}", i % 10))
            .collect();
        assert_eq!(got, want);
        assert_eq!(skipped, 100_000 - 10);
    }

    #[test]
    fn a_complete_stream_takes_every_event_however_far_behind_within_the_ring() {
        let mut ring = Ring::default();
        let mut cursor = ring.head();
        let n = RING as u64 - 1;
        for i in 0..n {
            ring.push(ev(&format!("s{}", i % 10), i));
        }
        let mut got = Vec::new();
        while let Next::Reading(v, s) = ring.next(&mut cursor, true, public) {
            assert_eq!(s, 0, "a complete stream coalesced");
            got.push(v.to_string());
        }
        let want: Vec<String> = (0..n).map(|i| format!("s{}:{i}", i % 10)).collect();
        assert_eq!(got, want);
        // Fallen off the ring: told how many it missed, then in order again.
        for i in n..n + 2 * RING as u64 {
            ring.push(ev(&format!("s{}", i % 10), i));
        }
        let Next::Lagged(missed) = ring.next(&mut cursor, true, public) else {
            panic!("no lagged event for readings off the ring");
        };
        let Next::Reading(first, 0) = ring.next(&mut cursor, true, public) else {
            panic!("no reading after the lagged event");
        };
        let resumed: u64 = first.split_once(':').unwrap().1.parse().unwrap();
        assert_eq!(
            resumed,
            n + missed,
            "missed count does not match the resume point"
        );
        let mut rest = 1;
        while let Next::Reading(..) = ring.next(&mut cursor, true, public) {
            rest += 1;
        }
        assert_eq!(
            rest as usize, RING,
            "every event on the ring taken after the gap"
        );
    }

    #[test]
    fn a_slow_stream_never_takes_an_older_reading_of_a_sensor_after_a_newer_one() {
        let mut ring = Ring::default();
        let mut cursor = ring.head();
        let mut last: HashMap<String, u64> = HashMap::new();
        for i in 0..20_000u64 {
            ring.push(ev(&format!("s{}", i % 7), i));
            // One take per three readings: it falls behind and coalesces.
            if i % 3 == 0 {
                if let Next::Reading(v, _) = ring.next(&mut cursor, false, public) {
                    let (s, n) = v.split_once(':').unwrap();
                    let n: u64 = n.parse().unwrap();
                    if let Some(prev) = last.insert(s.to_owned(), n) {
                        assert!(n > prev, "{s}: {n} after {prev}");
                    }
                }
            }
        }
        assert_eq!(last.len(), 7);
    }

    #[test]
    fn a_gap_in_the_broadcast_reaches_the_streams_as_lagged() {
        let mut ring = Ring::default();
        let mut cursor = ring.head();
        ring.push(ev("a", 1));
        ring.push(Entry::Lagged(5));
        ring.push(ev("a", 2));
        assert!(matches!(
            ring.next(&mut cursor, false, public),
            Next::Reading(..)
        ));
        assert_eq!(ring.next(&mut cursor, false, public), Next::Lagged(5));
        assert!(matches!(
            ring.next(&mut cursor, false, public),
            Next::Reading(..)
        ));
        assert_eq!(ring.next(&mut cursor, false, public), Next::Idle);
    }
}
