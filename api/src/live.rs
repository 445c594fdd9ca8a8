//! Live feeds over Server-Sent Events, public and agency.
//!
//! Each connection gets a small task that reads the platform's broadcast of
//! stored readings and keeps those the caller may see and asked for (kinds,
//! sensors, districts) in a short queue; the stream sends them in order, at
//! most `max_per_s` a second. When the queue is full (the client is slow or
//! over its rate), a new reading replaces the queued one of its sensor —
//! it coalesces to the latest value per sensor — so a stalled client holds
//! at most `QUEUE` + one event per sensor, never an unbounded buffer, and
//! cannot slow ingest or other clients. Readings the connection's task itself missed (the broadcast
//! outran it) are reported as a `lagged` event and counted.
//!
//! Streams are bounded too: at most `max_streams` at once and
//! `max_streams_per_ip` from one client address ([`LiveGate`]; over it a
//! JSON 503 or 429, counted in `pantau_api_live_refused_total{reason}`);
//! a WebSocket client may send frames of at most 16 KiB and messages of
//! at most 64 KiB (it only ever needs to answer pings), and one that does
//! not answer a ping within [`PONG_DEADLINE`] is disconnected.

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Response;
use futures::{SinkExt, Stream, StreamExt};
use pantau_ingest::LiveReading;
use pantau_model::{Sensor, SensorKind};
use serde::Deserialize;
use serde_json::{json, Value as JsonValue};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use pantau_state::admission::{Admission, OverCap, Slot};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::{ApiError, AppState};

/// Largest WebSocket frame a client may send.
const WS_MAX_FRAME: usize = 16 * 1024;
/// Largest WebSocket message a client may send.
const WS_MAX_MESSAGE: usize = 64 * 1024;
/// How often a WebSocket client is pinged.
const PING_EVERY: Duration = Duration::from_secs(15);
/// A WebSocket client silent this long (no pong, nothing) is disconnected.
pub(crate) const PONG_DEADLINE: Duration = Duration::from_secs(45);

/// The caps on live streams and their counters.
#[derive(Debug)]
pub struct LiveGate {
    admission: Admission,
    /// Streams open now.
    pub open: Gauge,
    /// Streams refused, by reason.
    pub refused: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Streams ended by the server, by reason.
    pub closed: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl LiveGate {
    /// At most `max` streams, `max_per_ip` from one client address.
    pub fn new(max: usize, max_per_ip: usize) -> Self {
        Self {
            admission: Admission::new(max, max_per_ip),
            open: Gauge::default(),
            refused: Family::default(),
            closed: Family::default(),
        }
    }

    /// Registers the counters under `pantau_api_live_*`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("pantau_api_live");
        r.register("streams", "Live streams open now", self.open.clone());
        r.register(
            "refused",
            "Live streams refused over a cap, by reason",
            self.refused.clone(),
        );
        r.register(
            "closed",
            "Live streams ended by the server, by reason",
            self.closed.clone(),
        );
    }

    /// A stream for `client`, or the answer over a cap (counted).
    pub(crate) fn admit(self: &Arc<Self>, client: std::net::IpAddr) -> Result<Admitted, ApiError> {
        let slot = self.admission.admit(client);
        let refuse = |reason| {
            self.refused.get_or_create(&vec![("reason", reason)]).inc();
        };
        match slot.over {
            None => {
                self.open.inc();
                Ok(Admitted {
                    _slot: slot,
                    gate: self.clone(),
                })
            }
            Some(OverCap::Global) => {
                refuse("streams_cap");
                Err(ApiError::Busy(
                    "live feeds are at capacity; try again shortly",
                ))
            }
            Some(OverCap::PerIp) => {
                refuse("streams_cap_per_ip");
                Err(ApiError::TooManyStreams)
            }
        }
    }
}

/// An admitted live stream; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Admitted {
    _slot: Slot,
    gate: Arc<LiveGate>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gate.open.dec();
    }
}

/// Filters of a live feed, each a comma-separated list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Params {
    /// Sensor kinds, e.g. `flood_gauge,tide_gauge`.
    #[param(
        pattern = r"^(flood_gauge|tide_gauge|traffic_counter|metocean|berth|gateway_health)(,(flood_gauge|tide_gauge|traffic_counter|metocean|berth|gateway_health))*$"
    )]
    kind: Option<String>,
    /// Sensor ids.
    #[param(pattern = r"^[a-z0-9-]+(,[a-z0-9-]+)*$")]
    sensor: Option<String>,
    /// Districts (kecamatan), e.g. `Dumai Kota`.
    district: Option<String>,
}

/// The client address of a request (through trusted proxies) admitted to
/// a live stream, or the 429/503 answer.
pub(crate) fn admit(
    state: &AppState,
    peer: std::net::SocketAddr,
    headers: &axum::http::HeaderMap,
) -> Result<Admitted, ApiError> {
    let client = state.trusted_proxies.client(peer.ip(), headers);
    state.live_gate.admit(client)
}

/// Parsed filters.
#[derive(Debug, Default, Clone)]
pub(crate) struct Filter {
    kinds: Option<BTreeSet<SensorKind>>,
    sensors: Option<BTreeSet<String>>,
    districts: Option<BTreeSet<String>>,
}

fn list(v: &Option<String>) -> Option<BTreeSet<String>> {
    v.as_ref().map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

impl Filter {
    /// Parses the filters, naming a bad one.
    pub(crate) fn parse(p: &Params) -> Result<Self, ApiError> {
        let kinds = match list(&p.kind) {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| {
                        SensorKind::ALL
                            .into_iter()
                            .find(|k| k.as_str() == n)
                            .ok_or_else(|| ApiError::BadParam {
                                param: "kind",
                                message: format!("{n:?} is not a sensor kind"),
                            })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(Self {
            kinds,
            sensors: list(&p.sensor),
            districts: list(&p.district),
        })
    }

    fn matches(&self, s: &Sensor) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(&s.kind))
            && self
                .sensors
                .as_ref()
                .is_none_or(|ids| ids.contains(s.id.as_str()))
            && self
                .districts
                .as_ref()
                .is_none_or(|d| d.contains(&s.district))
    }
}

/// Events a connection queues before it starts coalescing.
const QUEUE: usize = 256;

/// What a connection has not sent yet.
#[derive(Debug, Default)]
struct Pending {
    queue: VecDeque<(String, JsonValue)>,
    /// Readings the connection's task missed since the last report.
    lagged: u64,
}

impl Pending {
    /// Queues an event; when the queue is full, replaces the queued event
    /// of the same sensor instead (returns true when it coalesced).
    fn push(&mut self, sensor: &str, event: JsonValue) -> bool {
        if self.queue.len() >= QUEUE {
            if let Some(slot) = self.queue.iter_mut().rev().find(|(s, _)| s == sensor) {
                slot.1 = event;
                return true;
            }
        }
        self.queue.push_back((sensor.to_owned(), event));
        false
    }
}

/// One item of a connection's feed.
#[derive(Debug)]
pub(crate) enum Item {
    /// A reading, as the caller may see it.
    Reading(JsonValue),
    /// Readings this connection missed (the broadcast outran its task).
    Lagged(u64),
}

struct Feed {
    pending: Arc<(Mutex<Pending>, Notify)>,
    tick: tokio::time::Interval,
    /// Stops the connection's task when the client goes away.
    _stop: DropGuard,
    /// Its place under the stream caps, freed with the stream.
    _admitted: Admitted,
}

/// A connection's feed of the readings `project` lets through (it returns
/// the event's JSON, or `None` for a reading the caller may not see), at
/// most `live_max_per_s` items a second.
pub(crate) fn subscribe<P>(
    state: &AppState,
    admitted: Admitted,
    filter: Filter,
    project: P,
) -> impl Stream<Item = Item>
where
    P: Fn(&Sensor, &LiveReading) -> Option<JsonValue> + Send + 'static,
{
    let pending: Arc<(Mutex<Pending>, Notify)> = Arc::default();
    let stop = CancellationToken::new();
    let mut rx = state.ingestor.subscribe_live();
    let ingestor = state.ingestor.clone();
    let (task_pending, task_stop) = (pending.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                r = rx.recv() => r,
                _ = task_stop.cancelled() => return,
            };
            let (lock, notify) = &*task_pending;
            match received {
                Ok(r) => {
                    let registry = ingestor.registry();
                    let Some(sensor) = registry.get(&r.sensor) else {
                        continue;
                    };
                    if !filter.matches(sensor) {
                        continue;
                    }
                    let Some(event) = project(sensor, &r) else {
                        continue;
                    };
                    let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
                    if p.push(&r.sensor, event) {
                        ingestor.metrics().live_coalesced.inc();
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    ingestor.metrics().live_lagged.inc_by(n);
                    lock.lock().unwrap_or_else(|e| e.into_inner()).lagged += n;
                }
                Err(RecvError::Closed) => return,
            }
            notify.notify_one();
        }
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1) / state.live_max_per_s.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Feed {
        pending,
        tick,
        _stop: stop.drop_guard(),
        _admitted: admitted,
    };
    futures::stream::unfold(start, |mut f| async move {
        loop {
            let next = {
                let mut p = f.pending.0.lock().unwrap_or_else(|e| e.into_inner());
                if p.lagged > 0 {
                    Some(Item::Lagged(std::mem::take(&mut p.lagged)))
                } else {
                    p.queue.pop_front().map(|(_, v)| Item::Reading(v))
                }
            };
            match next {
                Some(item) => {
                    f.tick.tick().await;
                    return Some((item, f));
                }
                None => f.pending.1.notified().await,
            }
        }
    })
}

/// The feed as Server-Sent Events: `reading` and `lagged` events, a
/// heartbeat comment every 15 s.
pub(crate) fn sse<P>(
    state: &AppState,
    admitted: Admitted,
    filter: Filter,
    project: P,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    P: Fn(&Sensor, &LiveReading) -> Option<JsonValue> + Send + 'static,
{
    let stream = subscribe(state, admitted, filter, project).map(|item| {
        Ok(match item {
            Item::Reading(v) => Event::default().event("reading").data(v.to_string()),
            Item::Lagged(n) => Event::default()
                .event("lagged")
                .data(json!({"skipped": n}).to_string()),
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// The feed over a WebSocket: one JSON text message per item
/// (`{"event":"reading","data":{..}}` or `{"event":"lagged","data":{"skipped":n}}`),
/// a ping every 15 s; the connection ends when the client closes it or
/// stops answering (nothing heard for [`PONG_DEADLINE`]).
pub(crate) fn websocket<P>(
    ws: WebSocketUpgrade,
    state: &AppState,
    admitted: Admitted,
    filter: Filter,
    project: P,
) -> Response
where
    P: Fn(&Sensor, &LiveReading) -> Option<JsonValue> + Send + 'static,
{
    let gate = admitted.gate.clone();
    let items = subscribe(state, admitted, filter, project);
    let ws = ws
        .max_frame_size(WS_MAX_FRAME)
        .max_message_size(WS_MAX_MESSAGE);
    ws.on_upgrade(move |socket| async move {
        let (mut tx, mut rx) = socket.split();
        let mut items = std::pin::pin!(items);
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut heard = tokio::time::Instant::now();
        loop {
            let msg = tokio::select! {
                item = items.next() => match item {
                    Some(Item::Reading(v)) => json!({"event": "reading", "data": v}),
                    Some(Item::Lagged(n)) => json!({"event": "lagged", "data": {"skipped": n}}),
                    None => return,
                },
                _ = ping.tick() => {
                    if heard.elapsed() >= PONG_DEADLINE {
                        gate.closed.get_or_create(&vec![("reason", "pong_timeout")]).inc();
                        return;
                    }
                    if tx.send(Message::Ping(Default::default())).await.is_err() {
                        return;
                    }
                    continue;
                }
                incoming = rx.next() => match incoming {
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Err(e)) => {
                        // Over the frame or message limit, or broken.
                        gate.closed.get_or_create(&vec![("reason", "bad_message")]).inc();
                        tracing::debug!(error = %e, "Live WebSocket closed.");
                        return;
                    }
                    Some(Ok(_)) => {
                        heard = tokio::time::Instant::now();
                        continue;
                    }
                },
            };
            if tx
                .send(Message::Text(msg.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_coalesces_per_sensor_and_stays_bounded() {
        let mut p = Pending::default();
        for i in 0..QUEUE {
            assert!(!p.push(&format!("s{}", i % 8), json!(i)));
        }
        // Full: a sensor already queued is replaced in place...
        assert!(p.push("s3", json!("new")));
        assert_eq!(p.queue.len(), QUEUE);
        assert_eq!(
            p.queue.iter().filter(|(_, v)| *v == json!("new")).count(),
            1
        );
        // ...a sensor not queued still gets one place; then it coalesces too.
        assert!(!p.push("other", json!(1)));
        for i in 0..10_000 {
            p.push(&format!("s{}", i % 8), json!(i));
            p.push("other", json!(i));
        }
        assert_eq!(p.queue.len(), QUEUE + 1);
        assert_eq!(p.queue.back().unwrap().1, json!(9_999));
    }
}
