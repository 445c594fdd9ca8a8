//! `pantau up` settings: command-line flags (each with a `PANTAU_*` env
//! twin) over an optional TOML file over built-in defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The optional configuration file (`--config FILE`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory (state, store, TLS material).
    pub data_dir: Option<PathBuf>,
    /// HTTP API listen address.
    pub http_listen: Option<SocketAddr>,
    /// MQTT over TLS listen address.
    pub mqtt_listen: Option<SocketAddr>,
    /// Sensor registry file.
    pub registry: Option<PathBuf>,
    /// Extra DNS names or IPs for the generated server certificate.
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// Traffic level-of-service bands (default: PKJI 2023 / KM 14/2006).
    pub level_of_service: Option<pantau_model::derive::LosBands>,
    /// Alerting: silences, lateness, webhook timeout and rules.
    #[serde(default)]
    pub alerts: AlertsFile,
}

/// The `[alerts]` table of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    /// Run the alert engine (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A reading evaluated this long after its observation time is late.
    #[serde(default = "late_after", with = "humantime_serde")]
    pub late_after: std::time::Duration,
    /// A sensor silent this long raises `sensor-silent` (`"0s"`: off).
    #[serde(default = "sensor_silent_after", with = "humantime_serde")]
    pub sensor_silent_after: std::time::Duration,
    /// A gateway unheard this long raises `gateway-offline` (`"0s"`: off).
    #[serde(default = "gateway_offline_after", with = "humantime_serde")]
    pub gateway_offline_after: std::time::Duration,
    /// Longest one webhook attempt may take.
    #[serde(default = "webhook_timeout", with = "humantime_serde")]
    pub webhook_timeout: std::time::Duration,
    /// Rules (`[[alerts.rule]]`), as the admin API takes them.
    #[serde(default, rename = "rule")]
    pub rules: Vec<pantau_alerts::RuleSpec>,
    /// Upstream → downstream gauges with a travel time
    /// (`[[alerts.upstream]]`): expected-arrival alerts.
    #[serde(default)]
    pub upstream: Vec<pantau_alerts::engine::Upstream>,
}

fn yes() -> bool {
    true
}
fn late_after() -> std::time::Duration {
    pantau_alerts::EngineConfig::default().late_after
}
fn sensor_silent_after() -> std::time::Duration {
    pantau_alerts::EngineConfig::default()
        .sensor_silent_after
        .unwrap_or_default()
}
fn gateway_offline_after() -> std::time::Duration {
    pantau_alerts::EngineConfig::default()
        .gateway_offline_after
        .unwrap_or_default()
}
fn webhook_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

impl Default for AlertsFile {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

impl AlertsFile {
    /// The engine's settings, with the traffic bands of the platform.
    pub fn engine(&self, los: &pantau_model::derive::LosBands) -> pantau_alerts::EngineConfig {
        let on = |d: std::time::Duration| (!d.is_zero()).then_some(d);
        pantau_alerts::EngineConfig {
            late_after: self.late_after,
            sensor_silent_after: on(self.sensor_silent_after),
            gateway_offline_after: on(self.gateway_offline_after),
            rules: self.rules.clone(),
            upstream: self.upstream.clone(),
            los: los.clone(),
        }
    }
}

impl FileConfig {
    /// Reads a config file; errors name the file and the field.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        let cfg: Self =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        if let Some(bands) = &cfg.level_of_service {
            bands
                .check()
                .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        }
        Ok(cfg)
    }
}

/// Effective settings of `pantau up`.
#[derive(Debug, Clone)]
pub struct UpConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// MQTT/TLS listen address.
    pub mqtt_listen: SocketAddr,
    /// Registry file, if any.
    pub registry: Option<PathBuf>,
    /// Run the simulated demo gateways.
    pub demo: bool,
    /// Sampling interval of the demo gateways.
    pub demo_interval: std::time::Duration,
    /// Extra server certificate names.
    pub tls_names: Vec<String>,
    /// Storage selection.
    pub storage: crate::storage::StorageArgs,
    /// Gatekeeper limits.
    pub broker: GatekeeperArgs,
    /// API limits.
    pub api: ApiArgs,
    /// Traffic level-of-service bands.
    pub los: pantau_model::derive::LosBands,
    /// Alerting.
    pub alerts: AlertsFile,
}

/// API limits (each flag with a `PANTAU_*` env twin).
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Public routes: sustained requests per second per client address.
    #[arg(long, env = "PANTAU_PUBLIC_RATE_PER_S", default_value = "20")]
    pub public_rate_per_s: std::num::NonZeroU32,
    /// Public routes: burst per client address.
    #[arg(long, env = "PANTAU_PUBLIC_BURST", default_value = "60")]
    pub public_burst: std::num::NonZeroU32,
    /// Public map: raster tiles to draw under the sites
    /// (`https://tiles.example/{z}/{x}/{y}.png`); without it the map draws
    /// the city's outline shipped in the binary and works offline.
    #[arg(long, env = "PANTAU_MAP_TILES_URL")]
    pub map_tiles_url: Option<String>,
    /// Attribution of the map tiles, shown on the map.
    #[arg(long, env = "PANTAU_MAP_TILES_ATTRIBUTION")]
    pub map_tiles_attribution: Option<String>,
    /// A file holding the secret an external broker's authentication and
    /// authorization hooks present (EMQX HTTP auth, VerneMQ webhooks at
    /// /broker/v1/…); without it those routes are off.
    #[arg(long, env = "PANTAU_BROKER_HOOK_TOKEN_FILE")]
    pub broker_hook_token_file: Option<std::path::PathBuf>,
    /// Live feeds: most events per second per connection; beyond it events
    /// coalesce to the latest per sensor.
    #[arg(long, env = "PANTAU_LIVE_MAX_PER_S", default_value = "50")]
    pub live_max_per_s: std::num::NonZeroU32,
    /// Most live streams (SSE and WebSocket) at once.
    #[arg(long, env = "PANTAU_LIVE_MAX_STREAMS", default_value_t = 4_096)]
    pub live_max_streams: usize,
    /// Most live streams from one client address (as many as the API's
    /// connections per address: phones behind a carrier's CGNAT share one).
    #[arg(long, env = "PANTAU_LIVE_MAX_STREAMS_PER_IP", default_value_t = 1_024)]
    pub live_max_streams_per_ip: usize,
    /// Serve HTTPS on the HTTP listener even on a loopback address (it
    /// always does on any other address).
    #[arg(long, env = "PANTAU_HTTP_TLS")]
    pub http_tls: bool,
    /// A reverse proxy (address or network, repeatable) whose
    /// `X-Forwarded-For` names the client for the public rate limit.
    #[arg(
        long = "trusted-proxy",
        env = "PANTAU_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// Most API connections at once (also kept under half of the process's
    /// open-file limit: the rest is the gateways' reserve).
    #[arg(long, env = "PANTAU_HTTP_MAX_CONNECTIONS", default_value_t = 8_192)]
    pub http_max_connections: usize,
    /// Most API connections from one client address (trusted proxies are
    /// exempt). Generous: mobile carriers put many phones behind one
    /// address (CGNAT).
    #[arg(
        long,
        env = "PANTAU_HTTP_MAX_CONNECTIONS_PER_IP",
        default_value_t = 1_024
    )]
    pub http_max_connections_per_ip: usize,
    /// Most time a client may take to send a request head.
    #[arg(long, env = "PANTAU_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_header_timeout: std::time::Duration,
    /// An API connection without traffic for this long is closed.
    #[arg(long, env = "PANTAU_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub http_idle_timeout: std::time::Duration,
}

/// Descriptors kept for the process's own files (databases, logs,
/// runtime) before the API and the gateways share the rest.
const OWN_FILES: u64 = 128;

impl ApiArgs {
    /// The API's connection caps, registered in `metrics`. The global cap
    /// is at most half of what the open-file limit leaves after the
    /// process's own files, so anonymous HTTP clients can never take the
    /// descriptors the gateways' listener needs.
    pub fn conn_gate(
        &self,
        metrics: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<std::sync::Arc<pantau_api::ConnGate>> {
        let nofile = crate::limits::open_files();
        let share = (nofile.saturating_sub(OWN_FILES) / 2).max(1) as usize;
        let max_connections = self.http_max_connections.min(share);
        if max_connections < self.http_max_connections {
            tracing::warn!(
                nofile,
                requested = self.http_max_connections,
                max_connections,
                "API connections capped to keep descriptors for the gateways."
            );
        }
        let proxies = pantau_api::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| anyhow::anyhow!("--trusted-proxy: {e}"))?;
        let conn_metrics = pantau_api::ConnMetrics::default();
        conn_metrics.register(metrics);
        Ok(std::sync::Arc::new(pantau_api::ConnGate::new(
            pantau_api::ConnLimits {
                max_connections,
                max_per_ip: self.http_max_connections_per_ip,
                header_read_timeout: self.http_header_timeout,
                idle_timeout: self.http_idle_timeout,
            },
            std::sync::Arc::new(proxies),
            conn_metrics,
        )))
    }

    /// The API's listener on `tcp`: HTTPS with the platform's server
    /// certificate unless `tcp` is on loopback and `--http-tls` is off.
    pub fn listener(
        &self,
        tcp: tokio::net::TcpListener,
        files: &pantau_broker::tls::TlsFiles,
        names: &[String],
        gate: std::sync::Arc<pantau_api::ConnGate>,
    ) -> anyhow::Result<pantau_api::ApiListener> {
        let addr = tcp.local_addr()?;
        Ok(if self.http_tls || !addr.ip().is_loopback() {
            pantau_api::ApiListener::https(
                tcp,
                pantau_broker::tls::https_config(files, names)?,
                pantau_api::HandshakeLimits::default(),
                gate,
            )?
        } else {
            pantau_api::ApiListener::plain(tcp, gate)?
        })
    }

    /// The API's state; registers the API's counters.
    pub fn app_state(&self, deps: ApiDeps) -> anyhow::Result<pantau_api::AppState> {
        let ApiDeps {
            ingestor,
            history,
            mut metrics,
            state,
            presence,
            los,
            health,
            alerts,
            gateway_hook,
        } = deps;
        let trusted_proxies = pantau_api::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| anyhow::anyhow!("--trusted-proxy: {e}"))?;
        let limiter = pantau_api::PublicLimiter::new(self.public_rate_per_s, self.public_burst);
        metrics.register(
            "pantau_api_public_rate_limited",
            "Public requests refused by the per-client rate limit",
            limiter.refused.clone(),
        );
        let web = pantau_api::Web::new(&pantau_api::WebConfig {
            tiles_url: self.map_tiles_url.clone(),
            tiles_attribution: self.map_tiles_attribution.clone(),
        })
        .map_err(|e| anyhow::anyhow!("--map-tiles-url: {e}"))?;
        let broker_hooks = match &self.broker_hook_token_file {
            None => None,
            Some(f) => {
                let text = std::fs::read_to_string(f).map_err(|e| {
                    anyhow::anyhow!("--broker-hook-token-file {}: {e}", f.display())
                })?;
                Some(std::sync::Arc::new(
                    pantau_api::broker_hooks::BrokerHookSecret::new(&text).ok_or_else(|| {
                        anyhow::anyhow!("--broker-hook-token-file {} is empty", f.display())
                    })?,
                ))
            }
        };
        let live_gate =
            pantau_api::LiveGate::new(self.live_max_streams, self.live_max_streams_per_ip);
        live_gate.register(&mut metrics);
        let live_gate = std::sync::Arc::new(live_gate);
        Ok(pantau_api::AppState {
            ingestor,
            history,
            metrics: std::sync::Arc::new(metrics),
            state,
            presence,
            public_limit: std::sync::Arc::new(limiter),
            trusted_proxies: std::sync::Arc::new(trusted_proxies),
            live_max_per_s: self.live_max_per_s.get(),
            live_gate,
            health,
            los: std::sync::Arc::new(los),
            caches: std::sync::Arc::default(),
            alerts,
            web: std::sync::Arc::new(web),
            gateway_hook,
            broker_hooks,
        })
    }
}

/// What the API serves from, built by `pantau up` or `pantau ingest`.
#[derive(Debug)]
pub struct ApiDeps {
    /// Registry, ingest log (latest values) and live feed.
    pub ingestor: std::sync::Arc<pantau_ingest::Ingestor>,
    /// The store history is read from.
    pub history: pantau_ingest::Sink,
    /// Every component's counters.
    pub metrics: prometheus_client::registry::Registry,
    /// Tokens and gateways.
    pub state: std::sync::Arc<pantau_state::StateDb>,
    /// Gateway presence (empty without the broker).
    pub presence: std::sync::Arc<pantau_state::presence::Presence>,
    /// Traffic level-of-service bands.
    pub los: pantau_model::derive::LosBands,
    /// Readiness of the process's parts.
    pub health: pantau_ingest::Health,
    /// The alert engine, if this process runs one.
    pub alerts: Option<std::sync::Arc<pantau_alerts::Engine>>,
    /// Provisions gateways in an external broker (Mosquitto dynsec).
    pub gateway_hook: Option<std::sync::Arc<dyn pantau_api::GatewayHook>>,
}

/// Gatekeeper limits (each flag with a `PANTAU_*` env twin).
#[derive(Debug, Clone, clap::Args)]
pub struct GatekeeperArgs {
    /// Most time a client may take to finish the TLS handshake.
    #[arg(long, env = "PANTAU_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: std::time::Duration,
    /// Most TLS handshakes in progress at once.
    #[arg(long, env = "PANTAU_MAX_HANDSHAKES", default_value_t = 512)]
    pub max_handshakes: usize,
    /// Largest MQTT packet accepted, bytes.
    #[arg(long, env = "PANTAU_MAX_PACKET_BYTES", default_value_t = 256 * 1024)]
    pub max_packet_bytes: usize,
    /// Most gateway connections at once.
    #[arg(long, env = "PANTAU_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,
    /// Most connections from one source address.
    #[arg(long, env = "PANTAU_MAX_CONNECTIONS_PER_IP", default_value_t = 2_000)]
    pub max_connections_per_ip: usize,
    /// Sustained telemetry publishes per second per gateway.
    #[arg(long, env = "PANTAU_PUBLISH_RATE", default_value_t = 500)]
    pub publish_rate: u32,
    /// Publishes a gateway may burst above the rate.
    #[arg(long, env = "PANTAU_PUBLISH_BURST", default_value_t = 1_000)]
    pub publish_burst: u32,
    /// Accept clean-session client ids other than the gateway id (for stock
    /// tools such as mosquitto_pub without -i).
    #[arg(long, env = "PANTAU_ALLOW_ANY_CLIENT_ID")]
    pub allow_any_client_id: bool,
    /// Also fan telemetry out through the embedded MQTT router (for
    /// platform-side MQTT subscribers; the SSE live feed does not need it).
    #[arg(long, env = "PANTAU_MQTT_FANOUT")]
    pub mqtt_fanout: bool,
    /// Most sockets from one address still in the TLS handshake or waiting
    /// for CONNECT (more are closed at once).
    #[arg(long, env = "PANTAU_MAX_PENDING_PER_IP", default_value_t = 64)]
    pub max_pending_per_ip: usize,
    /// Most time between the TLS handshake and CONNECT.
    #[arg(long, env = "PANTAU_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: std::time::Duration,
    /// Most time a write to a gateway may take (a gateway that does not
    /// read is disconnected).
    #[arg(long, env = "PANTAU_MQTT_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub mqtt_write_timeout: std::time::Duration,
}

impl GatekeeperArgs {
    /// The broker's configuration.
    pub fn to_config(&self) -> pantau_broker::BrokerConfig {
        pantau_broker::BrokerConfig {
            handshake_timeout: self.tls_handshake_timeout,
            max_handshakes: self.max_handshakes,
            max_packet_size: self.max_packet_bytes,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            publish_rate: self.publish_rate,
            publish_burst: self.publish_burst,
            allow_any_client_id: self.allow_any_client_id,
            mqtt_fanout: self.mqtt_fanout,
            max_pending_per_ip: self.max_pending_per_ip,
            connect_timeout: self.connect_timeout,
            write_timeout: self.mqtt_write_timeout,
            ..pantau_broker::BrokerConfig::default()
        }
    }
}

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./pantau-data";
/// Default HTTP address.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Default MQTT address.
pub const DEFAULT_MQTT: &str = "0.0.0.0:8883";
