//! Live feeds over Server-Sent Events and WebSockets, public and agency.
//!
//! One [`hub`] per process reads the platform's broadcast of stored
//! readings and renders each once; every stream is a cursor into the hub
//! that takes, at most `max_per_s` times a second, the next event its
//! caller may see and asked for (kinds, sensors, districts). A stream that
//! falls behind (a slow client, or one over its rate) takes the latest
//! reading of each sensor instead — it coalesces, counted in
//! `pantau_ingest_live_coalesced_total` — so a stalled client holds no
//! buffer of its own and cannot slow ingest or other clients. Readings the
//! hub missed (the broadcast outran it) reach the streams as a `lagged`
//! event and are counted.
//!
//! Streams are bounded too: at most `max_streams` at once and
//! `max_streams_per_ip` from one client address ([`LiveGate`]; over it a
//! JSON 503 or 429, counted in `pantau_api_live_refused_total{reason}`);
//! a WebSocket client may send frames of at most 16 KiB and messages of
//! at most 64 KiB (it only ever needs to answer pings), and one that does
//! not answer a ping within [`PONG_DEADLINE`] is disconnected.

mod hub;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Response;
use futures::{FutureExt, SinkExt, Stream, StreamExt};
use pantau_ingest::Ingestor;
use pantau_model::SensorKind;
use serde::Deserialize;
use serde_json::json;

use hub::{Ev, Hub, Next};

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
    /// The hub every stream reads, started with the first stream.
    hub: OnceLock<Arc<Hub>>,
}

impl LiveGate {
    /// At most `max` streams, `max_per_ip` from one client address.
    pub fn new(max: usize, max_per_ip: usize) -> Self {
        Self {
            admission: Admission::new(max, max_per_ip),
            open: Gauge::default(),
            refused: Family::default(),
            closed: Family::default(),
            hub: OnceLock::new(),
        }
    }

    /// The hub over `ingestor`'s live broadcast (started on first use).
    fn hub(&self, ingestor: &Arc<Ingestor>, los: &Arc<pantau_model::derive::LosBands>) -> Arc<Hub> {
        self.hub
            .get_or_init(|| Hub::start(ingestor.clone(), los.clone(), self.open.clone()))
            .clone()
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
    /// Every reading, in order, instead of the latest of each sensor when
    /// the stream falls behind: it follows the feed's ring (4 096 events)
    /// and, once it falls off it, gets a `lagged` event with how many it
    /// missed (an analyst's recorder; a map wants the default).
    complete: Option<bool>,
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
    /// Every reading rather than coalescing when behind.
    complete: bool,
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
            complete: p.complete.unwrap_or(false),
        })
    }

    fn matches(&self, s: &Ev) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(&s.kind()))
            && self.sensors.as_ref().is_none_or(|ids| ids.contains(s.id()))
            && self
                .districts
                .as_ref()
                .is_none_or(|d| d.contains(s.district()))
    }
}

/// Who a stream is for: what it may see of an event.
#[derive(Debug, Clone)]
pub(crate) enum Audience {
    /// Public sensors, no restricted field.
    Public,
    /// Sensors of the token's kinds, every field.
    Agency(crate::auth::Agency),
}

impl Audience {
    fn view(&self, ev: &Ev) -> Option<Arc<str>> {
        match self {
            Self::Public => ev.public(),
            Self::Agency(a) => a.reads(ev.kind()).then(|| ev.agency()),
        }
    }
}

/// One item of a connection's feed.
#[derive(Debug)]
pub(crate) enum Item {
    /// A reading, as the caller may see it (JSON).
    Reading(Arc<str>),
    /// Readings the live feed missed (the broadcast outran the hub).
    Lagged(u64),
}

struct Feed {
    hub: Arc<Hub>,
    head: tokio::sync::watch::Receiver<u64>,
    /// The last sequence number this stream took.
    cursor: u64,
    filter: Filter,
    audience: Audience,
    /// One look at the hub per window...
    window: tokio::time::Interval,
    /// ...taking at most this many items, sent together.
    budget: usize,
    batch: std::collections::VecDeque<Item>,
    coalesced: Counter,
    /// Its place under the stream caps, freed with the stream.
    _admitted: Admitted,
}

/// A busy live stream looks for new events once per window and writes
/// what it finds together: the window holds [`PER_LOOK`] events of the
/// stream's rate, between [`MIN_WINDOW`] and [`MAX_WINDOW`] (and at least
/// one event's time). A stream that was idle looks at once when an event
/// comes, so the window delays only a stream that keeps busy.
const PER_LOOK: u32 = 12;
const MIN_WINDOW: Duration = Duration::from_millis(10);
const MAX_WINDOW: Duration = Duration::from_millis(250);

/// The window and the items per window of a stream of at most `max_per_s`
/// items a second.
fn pace(max_per_s: u32) -> (Duration, usize) {
    let max_per_s = max_per_s.max(1);
    let one = Duration::from_secs(1) / max_per_s;
    let window = (one * PER_LOOK).clamp(MIN_WINDOW, MAX_WINDOW).max(one);
    let budget = (f64::from(max_per_s) * window.as_secs_f64()).round() as usize;
    (window, budget.max(1))
}

/// A connection's feed of the readings `audience` may see and `filter`
/// keeps, from now on, at most `live_max_per_s` items a second: it looks
/// at the hub at most once per window ([`pace`]) and takes what is there
/// up to its share of the rate, so a busy stream costs one write per
/// window, not one per event. A stream that falls behind takes the latest
/// reading of each sensor instead (see [`hub`]).
pub(crate) fn subscribe(
    state: &AppState,
    admitted: Admitted,
    filter: Filter,
    audience: Audience,
) -> impl Stream<Item = Item> {
    let hub = state.live_gate.hub(&state.ingestor, &state.los);
    let cursor = hub.lock().head();
    let (window, budget) = pace(state.live_max_per_s);
    let mut window = tokio::time::interval(window);
    window.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Feed {
        head: hub.watch(),
        hub,
        cursor,
        filter,
        audience,
        window,
        budget,
        batch: Default::default(),
        coalesced: state.ingestor.metrics().live_coalesced.clone(),
        _admitted: admitted,
    };
    futures::stream::unfold(start, |mut f| async move {
        loop {
            if let Some(item) = f.batch.pop_front() {
                return Some((item, f));
            }
            f.window.tick().await;
            f.head.borrow_and_update();
            {
                let (filter, audience) = (&f.filter, &f.audience);
                let ring = f.hub.lock();
                while f.batch.len() < f.budget {
                    match ring.next(&mut f.cursor, filter.complete, |ev| {
                        filter.matches(ev).then(|| audience.view(ev)).flatten()
                    }) {
                        Next::Reading(v, skipped) => {
                            if skipped > 0 {
                                f.coalesced.inc_by(skipped);
                            }
                            f.batch.push_back(Item::Reading(v));
                        }
                        Next::Lagged(n) => f.batch.push_back(Item::Lagged(n)),
                        Next::Idle => break,
                    }
                }
            }
            if f.batch.is_empty() && f.head.changed().await.is_err() {
                return None;
            }
        }
    })
}

/// The feed as Server-Sent Events: `reading` and `lagged` events, a
/// heartbeat comment every 15 s.
pub(crate) fn sse(
    state: &AppState,
    admitted: Admitted,
    filter: Filter,
    audience: Audience,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = subscribe(state, admitted, filter, audience).map(|item| {
        Ok(match item {
            Item::Reading(v) => Event::default().event("reading").data(&*v),
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
pub(crate) fn websocket(
    ws: WebSocketUpgrade,
    state: &AppState,
    admitted: Admitted,
    filter: Filter,
    audience: Audience,
) -> Response {
    let gate = admitted.gate.clone();
    let items = subscribe(state, admitted, filter, audience);
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
                    Some(item) => message(item),
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
            // What the stream has ready goes out in one write.
            if tx.feed(Message::Text(msg.into())).await.is_err() {
                return;
            }
            while let Some(Some(item)) = items.next().now_or_never() {
                if tx.feed(Message::Text(message(item).into())).await.is_err() {
                    return;
                }
            }
            if tx.flush().await.is_err() {
                return;
            }
        }
    })
}

/// An item as a WebSocket text message.
fn message(item: Item) -> String {
    match item {
        Item::Reading(v) => format!(r#"{{"event":"reading","data":{v}}}"#),
        Item::Lagged(n) => json!({"event": "lagged", "data": {"skipped": n}}).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_stream_writes_several_events_per_look_and_keeps_to_its_rate() {
        // The default: twelve events every 240 ms.
        assert_eq!(pace(50), (Duration::from_millis(240), 12));
        assert_eq!(pace(20), (MAX_WINDOW, 5));
        assert_eq!(pace(200), (Duration::from_millis(60), 12));
        // Fast streams look every 10 ms (the live-latency target is 50 ms).
        assert_eq!(pace(100_000), (MIN_WINDOW, 1_000));
        // Slower than four a second: one item per look.
        assert_eq!(pace(2), (Duration::from_millis(500), 1));
        assert_eq!(pace(0), (Duration::from_secs(1), 1));
    }
}
