//! The uplink: publishes the spool to the broker over MQTT 3.1.1 (rumqttc,
//! TLS with rustls/ring) and deletes spool rows only when their envelope's
//! PUBACK arrives.
//!
//! Connectivity is an explicit state machine, one `async fn` per state:
//!
//! ```text
//!   Offline ──CONNACK──▶ CatchingUp ──backlog acknowledged──▶ Online
//!      ▲                     │                                 │
//!      └────connection lost──┴─────────────────────────────────┘
//! ```
//!
//! - **Offline**: connects to the next broker URL (failover in order) with
//!   jittered exponential backoff.
//! - **CatchingUp**: readings spooled before the connection (the backlog) are
//!   replayed oldest first at a bounded rate, while readings arriving now (live)
//!   go out first, so the city sees the present while history catches up.
//! - **Online**: live readings only.
//!
//! Every connection uses a fresh rumqttc event loop, so rumqttc never holds a
//! publish across connections (it would silently drop them on reconnect;
//! DESIGN.md §5). PUBACKs are matched to envelopes here: rumqttc reports each
//! outgoing PUBLISH's packet id in request order, so a FIFO of what was
//! requested maps packet ids to the spool rows they carry. Unacknowledged rows
//! simply stay in the spool and go out again on the next connection.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use pantau_model::backoff::Backoff;
use pantau_model::envelope::encode;
use pantau_model::topic::{topic, TopicKind};
use pantau_model::Timestamp;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::command::{Command, CommandError, Intervals};
use crate::spool::{self, Spool, Spooled};
use crate::status::{Stats, Status};

/// Errors setting up the uplink.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The broker URL is not `mqtts://HOST:PORT` or `mqtt://HOST:PORT`.
    #[error("broker url {0:?} is not mqtts://HOST:PORT or mqtt://HOST:PORT")]
    BadUrl(String),
    /// A CA, certificate or key file could not be read.
    #[error("{path}: {message}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] spool::Error),
    /// The MQTT client's event loop refused a request (it is closing).
    #[error("mqtt client: {0}")]
    Client(#[from] rumqttc::ClientError),
}

/// One broker to try.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS client configuration; `None` for plain MQTT (loopback only).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// Gateway id (client id and username).
    pub gateway: String,
    /// Brokers, tried in order (failover).
    pub endpoints: Vec<Endpoint>,
    /// Secret token; `None` when the TLS client certificate is the identity.
    pub password: Option<String>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Most readings per envelope.
    pub max_readings: usize,
    /// Most payload bytes per envelope (approximate: spool accounting).
    pub max_bytes: u64,
    /// Longest a live reading waits for its envelope.
    pub max_delay: Duration,
    /// Envelopes awaiting their PUBACK at once.
    pub max_in_flight: usize,
    /// Backlog replay rate bound, readings per second.
    pub replay_rate: NonZeroU32,
    /// How often the status is published.
    pub status_interval: Duration,
}

/// Parses `mqtts://host:port` / `mqtt://host:port` into (tls, host, port).
pub fn parse_url(url: &str) -> Result<(bool, String, u16), UplinkError> {
    let bad = || UplinkError::BadUrl(url.to_owned());
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.trim_end_matches('/').parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((tls, host.to_owned(), port))
}

/// A rustls client configuration (ring provider) trusting the CA in `ca_file`.
pub fn client_tls(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, UplinkError> {
    client_tls_with(ca_file, None)
}

/// Like `client_tls`, presenting a client certificate (`cert`, `key`: PEM
/// files) when one is given: the gateway's identity on Pantau's broker.
pub fn client_tls_with(
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, UplinkError> {
    let pem_err = |path: &Path, message: String| UplinkError::Ca {
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_err(ca_file, e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(pem_err(ca_file, "no CA certificate in the file".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| pem_err(cert, e.to_string()))?;
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e.to_string()))?;
            builder.with_client_auth_cert(chain, key_der)?
        }
    };
    Ok(Arc::new(config))
}

/// The connectivity states.
#[derive(Debug)]
enum State {
    Offline,
    CatchingUp(Box<Session>),
    Online(Box<Session>),
    Shutdown(Option<Box<Session>>),
}

/// Why a connected phase ended.
enum Exit {
    BacklogDone,
    Lost(String),
    Shutdown,
}

/// An envelope awaiting its PUBACK.
#[derive(Debug)]
struct Envelope {
    /// Spool rows it carries.
    ids: Vec<i64>,
    /// Whether it came from the backlog replay.
    replay: bool,
}

/// One connection's state.
struct Session {
    client: AsyncClient,
    eventloop: EventLoop,
    /// What each of our PUBLISH requests carries, in request order: rumqttc
    /// reports their packet ids in the same order.
    requested: VecDeque<Option<Envelope>>,
    /// Envelopes on the wire, by packet id.
    on_wire: HashMap<u16, Envelope>,
    /// Envelopes requested and not yet acknowledged.
    outstanding: usize,
    /// Replay envelopes among them.
    replay_outstanding: usize,
    /// Live readings: rows after this id not yet sent on this connection.
    live_after: i64,
    /// A live envelope is due (the batching delay has passed).
    live_due: bool,
    /// Backlog: rows in `(backlog_after, backlog_end]` not yet sent.
    backlog_after: i64,
    backlog_end: i64,
    /// A replay batch read but held back by the rate bound.
    held: Option<Vec<Spooled>>,
    /// When the rate bound lets the held batch go.
    replay_wake: Option<Instant>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("outstanding", &self.outstanding)
            .field("live_after", &self.live_after)
            .field("backlog_after", &self.backlog_after)
            .field("backlog_end", &self.backlog_end)
            .finish_non_exhaustive()
    }
}

/// The uplink.
#[derive(Debug)]
pub struct Uplink {
    cfg: UplinkConfig,
    spool: Arc<Spool>,
    /// Signalled by the spool writer after each append.
    appended: Arc<Notify>,
    stats: Arc<Stats>,
    intervals: Arc<Intervals>,
    backoff: Backoff,
    /// Index of the endpoint to try next.
    endpoint: usize,
    replay: DefaultDirectRateLimiter,
    /// Envelope sequence number (starts at the clock, so it grows across
    /// restarts).
    seq: u64,
    telemetry: String,
    status: String,
    cmd: String,
}

impl Uplink {
    /// An uplink publishing `spool`.
    pub fn new(
        cfg: UplinkConfig,
        spool: Arc<Spool>,
        appended: Arc<Notify>,
        stats: Arc<Stats>,
        intervals: Arc<Intervals>,
    ) -> Self {
        let burst = NonZeroU32::new((cfg.replay_rate.get() / 4).max(cfg.max_readings as u32))
            .unwrap_or(NonZeroU32::MIN);
        let replay = RateLimiter::direct(Quota::per_second(cfg.replay_rate).allow_burst(burst));
        Self {
            telemetry: topic(&cfg.gateway, TopicKind::Telemetry),
            status: topic(&cfg.gateway, TopicKind::Status),
            cmd: topic(&cfg.gateway, TopicKind::Cmd),
            cfg,
            spool,
            appended,
            stats,
            intervals,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
                .expect("valid backoff bounds"),
            endpoint: 0,
            replay,
            seq: Timestamp::now().millis() as u64,
        }
    }

    /// Runs the state machine until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut state = State::Offline;
        loop {
            state = match state {
                State::Offline => self.offline(&shutdown).await,
                State::CatchingUp(s) => self.catching_up(s, &shutdown).await,
                State::Online(s) => self.online(s, &shutdown).await,
                State::Shutdown(s) => return self.shutdown(s).await,
            };
        }
    }

    /// Connects, trying the endpoints in turn with backoff.
    async fn offline(&mut self, shutdown: &CancellationToken) -> State {
        loop {
            let ep = self.cfg.endpoints[self.endpoint].clone();
            let (client, mut eventloop) = self.client(&ep);
            let connected = tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(20), wait_connack(&mut eventloop)) => {
                    r.unwrap_or_else(|_| Err("no CONNACK within 20 s".into()))
                }
                _ = shutdown.cancelled() => return State::Shutdown(None),
            };
            match connected {
                Ok(()) => {
                    self.backoff.reset();
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    let depth = self.spool.depth();
                    tracing::info!(gateway = %self.cfg.gateway, host = %ep.host, port = ep.port, backlog = depth.readings, "Uplink connected.");
                    let mut s = Box::new(Session {
                        client,
                        eventloop,
                        requested: VecDeque::new(),
                        on_wire: HashMap::new(),
                        outstanding: 0,
                        replay_outstanding: 0,
                        live_after: depth.last_id,
                        live_due: false,
                        backlog_after: 0,
                        backlog_end: depth.last_id,
                        held: None,
                        replay_wake: None,
                    });
                    if let Err(e) = s.client.try_subscribe(self.cmd.clone(), QoS::AtLeastOnce) {
                        tracing::warn!(gateway = %self.cfg.gateway, error = %e, "Subscribing to commands failed.");
                    }
                    self.publish_status(&mut s, "catching_up");
                    return State::CatchingUp(s);
                }
                Err(e) => {
                    self.endpoint = (self.endpoint + 1) % self.cfg.endpoints.len();
                    let delay = self.backoff.next_delay();
                    tracing::warn!(gateway = %self.cfg.gateway, host = %ep.host, port = ep.port, error = %e, retry_in_ms = delay.as_millis() as u64, "Uplink connection failed, retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return State::Shutdown(None),
                    }
                }
            }
        }
    }

    async fn catching_up(&mut self, mut s: Box<Session>, shutdown: &CancellationToken) -> State {
        match self.pump(&mut s, true, shutdown).await {
            Exit::BacklogDone => {
                tracing::info!(gateway = %self.cfg.gateway, "Backlog replayed; online.");
                self.publish_status(&mut s, "online");
                State::Online(s)
            }
            Exit::Lost(e) => self.lost(e),
            Exit::Shutdown => State::Shutdown(Some(s)),
        }
    }

    async fn online(&mut self, mut s: Box<Session>, shutdown: &CancellationToken) -> State {
        match self.pump(&mut s, false, shutdown).await {
            Exit::BacklogDone => State::Online(s),
            Exit::Lost(e) => self.lost(e),
            Exit::Shutdown => State::Shutdown(Some(s)),
        }
    }

    fn lost(&mut self, error: String) -> State {
        tracing::warn!(gateway = %self.cfg.gateway, error = %error, "Uplink connection lost; unacknowledged readings stay spooled.");
        State::Offline
    }

    /// Marks the gateway offline (retained) and disconnects; unacknowledged
    /// readings stay in the spool for the next start.
    async fn shutdown(&mut self, s: Option<Box<Session>>) {
        let Some(mut s) = s else { return };
        let _ = s.client.try_publish(
            self.status.clone(),
            QoS::AtLeastOnce,
            true,
            r#"{"online":false}"#,
        );
        let _ = s.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while s.eventloop.poll().await.is_ok() {}
        })
        .await;
    }

    /// Runs one connection: sends what is due, handles acknowledgements and
    /// commands, until the backlog is done (when `backlog`), the connection
    /// drops, or shutdown.
    async fn pump(&mut self, s: &mut Session, backlog: bool, shutdown: &CancellationToken) -> Exit {
        let mut live_tick = tokio::time::interval(self.cfg.max_delay);
        let mut status_tick = tokio::time::interval_at(
            Instant::now() + self.cfg.status_interval,
            self.cfg.status_interval,
        );
        loop {
            if let Err(e) = self.fill(s) {
                return Exit::Lost(e.to_string());
            }
            if backlog
                && s.backlog_after >= s.backlog_end
                && s.held.is_none()
                && s.replay_outstanding == 0
            {
                return Exit::BacklogDone;
            }
            let wake = s.replay_wake;
            tokio::select! {
                ev = s.eventloop.poll() => match ev {
                    Ok(ev) => {
                        if let Err(e) = self.on_event(s, ev) {
                            return Exit::Lost(e.to_string());
                        }
                    }
                    Err(e) => return Exit::Lost(e.to_string()),
                },
                _ = self.appended.notified() => {}
                _ = live_tick.tick() => s.live_due = true,
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                    s.replay_wake = None;
                }
                _ = status_tick.tick() => {
                    let state = if backlog { "catching_up" } else { "online" };
                    self.publish_status(s, state);
                }
                _ = shutdown.cancelled() => return Exit::Shutdown,
            }
        }
    }

    /// Sends envelopes while the in-flight window has room: live readings
    /// first (when a full envelope is waiting or the batching delay passed),
    /// then the backlog within the replay rate.
    fn fill(&mut self, s: &mut Session) -> Result<(), UplinkError> {
        while s.outstanding < self.cfg.max_in_flight {
            let last_id = self.spool.depth().last_id;
            let live_pending = last_id - s.live_after;
            if live_pending <= 0 {
                s.live_due = false;
            } else if s.live_due || live_pending >= self.cfg.max_readings as i64 {
                let batch = self.spool.batch(
                    s.live_after,
                    i64::MAX,
                    self.cfg.max_readings,
                    self.cfg.max_bytes,
                )?;
                match batch.last() {
                    Some(last) => s.live_after = last.id,
                    // Dropped by the bound before they could go.
                    None => s.live_after = last_id,
                }
                if !batch.is_empty() {
                    self.send(s, batch, false)?;
                }
                continue;
            }
            if s.replay_wake.is_some() {
                break;
            }
            let batch = match s.held.take() {
                Some(b) => b,
                None if s.backlog_after < s.backlog_end => {
                    let b = self.spool.batch(
                        s.backlog_after,
                        s.backlog_end,
                        self.cfg.max_readings,
                        self.cfg.max_bytes,
                    )?;
                    match b.last() {
                        Some(last) => s.backlog_after = last.id,
                        None => s.backlog_after = s.backlog_end,
                    }
                    b
                }
                None => break,
            };
            if batch.is_empty() {
                continue;
            }
            let n = NonZeroU32::new(batch.len() as u32).unwrap_or(NonZeroU32::MIN);
            match self.replay.check_n(n) {
                Ok(Ok(())) | Err(_) => self.send(s, batch, true)?,
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(self.replay.clock().now());
                    s.replay_wake = Some(Instant::now() + wait);
                    s.held = Some(batch);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Publishes one envelope of spool rows at QoS 1.
    fn send(
        &mut self,
        s: &mut Session,
        batch: Vec<Spooled>,
        replay: bool,
    ) -> Result<(), UplinkError> {
        let (ids, readings): (Vec<i64>, Vec<_>) =
            batch.into_iter().map(|r| (r.id, r.reading)).unzip();
        self.seq += 1;
        let payload = encode(&self.cfg.gateway, self.seq, Timestamp::now(), &readings);
        s.client
            .try_publish(self.telemetry.clone(), QoS::AtLeastOnce, false, payload)
            // Only a closing event loop fails here (the request queue is
            // larger than the window); the rows stay spooled.
            ?;
        if replay {
            self.stats
                .readings_replayed
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            s.replay_outstanding += 1;
        }
        self.stats.envelopes_sent.fetch_add(1, Ordering::Relaxed);
        s.requested.push_back(Some(Envelope { ids, replay }));
        s.outstanding += 1;
        Ok(())
    }

    fn on_event(&mut self, s: &mut Session, ev: Event) -> Result<(), UplinkError> {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => match s.requested.pop_front() {
                Some(Some(envelope)) => {
                    s.on_wire.insert(pkid, envelope);
                }
                Some(None) => {}
                None => {
                    tracing::error!(gateway = %self.cfg.gateway, pkid, "A PUBLISH went out that the uplink did not request.");
                }
            },
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(envelope) = s.on_wire.remove(&ack.pkid) {
                    // The broker has it: now, and only now, the rows go.
                    self.spool.delete(&envelope.ids)?;
                    self.stats
                        .readings_acked
                        .fetch_add(envelope.ids.len() as u64, Ordering::Relaxed);
                    s.outstanding -= 1;
                    if envelope.replay {
                        s.replay_outstanding -= 1;
                    }
                }
            }
            Event::Incoming(Packet::Publish(p)) if p.topic == self.cmd => {
                self.on_command(s, &p.payload);
            }
            _ => {}
        }
        Ok(())
    }

    fn on_command(&mut self, s: &mut Session, payload: &[u8]) {
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let outcome = Command::parse(payload).and_then(|c| match c {
            Command::Status {} => Ok(()),
            Command::Time { now } => match Timestamp::parse_rfc3339(&now) {
                Some(platform) => {
                    let offset = Timestamp::now().millis() - platform.millis();
                    self.stats.clock_offset_ms.store(offset, Ordering::Relaxed);
                    self.stats.clock_known.store(true, Ordering::Relaxed);
                    if offset.abs() > 5_000 {
                        tracing::warn!(gateway = %self.cfg.gateway, offset_ms = offset, "The gateway clock is off from the platform's.");
                    }
                    Ok(())
                }
                None => Err(CommandError::Malformed(format!("time: now {now:?} is not RFC 3339"))),
            },
            Command::SetInterval { sensor, interval } => {
                self.intervals.set(&sensor, interval).map(|()| {
                    tracing::info!(gateway = %self.cfg.gateway, sensor = %sensor, interval_ms = interval.as_millis() as u64, "Sampling interval changed by command.");
                })
            }
        });
        if let Err(e) = outcome {
            tracing::warn!(gateway = %self.cfg.gateway, error = %e, "Command refused.");
            self.stats.command_error(e.to_string());
        }
        // Every command is answered with a fresh status (errors included).
        let state = if s.backlog_after < s.backlog_end {
            "catching_up"
        } else {
            "online"
        };
        self.publish_status(s, state);
    }

    fn publish_status(&mut self, s: &mut Session, state: &'static str) {
        let status = Status::build(&self.stats, self.spool.depth(), state).to_json();
        if s.client
            .try_publish(self.status.clone(), QoS::AtLeastOnce, true, status)
            .is_ok()
        {
            s.requested.push_back(None);
        }
    }

    /// A client and a fresh event loop for one connection attempt.
    fn client(&self, ep: &Endpoint) -> (AsyncClient, EventLoop) {
        let mut opts = MqttOptions::new(self.cfg.gateway.clone(), ep.host.clone(), ep.port);
        if let Some(password) = &self.cfg.password {
            opts.set_credentials(self.cfg.gateway.clone(), password.clone());
        }
        opts.set_keep_alive(self.cfg.keep_alive);
        opts.set_max_packet_size(256 * 1024, 256 * 1024);
        opts.set_clean_session(true);
        // Room for the window plus status messages.
        opts.set_inflight((self.cfg.max_in_flight + 8).min(u16::MAX as usize) as u16);
        opts.set_last_will(LastWill::new(
            self.status.clone(),
            r#"{"online":false}"#,
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(tls) = &ep.tls {
            opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        }
        AsyncClient::new(opts, self.cfg.max_in_flight + 64)
    }
}

/// Polls until the CONNACK; any refusal or error ends the attempt.
async fn wait_connack(eventloop: &mut EventLoop) -> Result<(), String> {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return if ack.code == rumqttc::ConnectReturnCode::Success {
                    Ok(())
                } else {
                    Err(format!("refused: {:?}", ack.code))
                };
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_urls() {
        assert_eq!(
            parse_url("mqtts://127.0.0.1:8883").unwrap(),
            (true, "127.0.0.1".into(), 8883)
        );
        assert_eq!(
            parse_url("mqtt://localhost:1883").unwrap(),
            (false, "localhost".into(), 1883)
        );
        assert_eq!(
            parse_url("mqtts://[::1]:8883").unwrap(),
            (true, "::1".into(), 8883)
        );
        for bad in [
            "http://x:1",
            "mqtts://x",
            "mqtts://:1",
            "mqtts://x:99999",
            "",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
