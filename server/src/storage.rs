//! Storage selection, shared by `pantau up` and `pantau ingest`: the
//! ingest log in the data directory, and the sink it drains into — the
//! embedded store (default) or InfluxDB. Credentials come only from the
//! environment or a file, never from the command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use pantau_ingest::drain::{drain, DrainConfig};
use pantau_ingest::influx::{InfluxApi, InfluxConfig, InfluxSink};
use pantau_ingest::store::Retention;
use pantau_ingest::{Health, IngestLog, IngestMetrics, Part, Sink, Store};
use pantau_model::SharedRegistry;

use crate::shutdown::{StageId, Supervisor};

/// Which store readings end up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageKind {
    /// The embedded SQLite time-series store in the data directory.
    Embedded,
    /// An InfluxDB server.
    Influxdb,
}

/// InfluxDB write API version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApiVersion {
    /// `/write` (InfluxDB 1.x).
    V1,
    /// `/api/v2/write` (InfluxDB 2.x, 1.8+, 3.x, VictoriaMetrics).
    V2,
    /// `/api/v3/write_lp` (InfluxDB 3).
    V3,
}

/// Storage flags (each with a `PANTAU_*` env twin).
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// Where readings are stored.
    #[arg(long, env = "PANTAU_STORAGE", value_enum, default_value = "embedded")]
    pub storage: StorageKind,
    /// InfluxDB base URL, e.g. http://127.0.0.1:8086.
    #[arg(long, env = "PANTAU_INFLUX_URL")]
    pub influx_url: Option<String>,
    /// InfluxDB write API.
    #[arg(long, env = "PANTAU_INFLUX_API", value_enum, default_value = "v2")]
    pub influx_api: ApiVersion,
    /// Database (v1, v3).
    #[arg(long, env = "PANTAU_INFLUX_DB")]
    pub influx_db: Option<String>,
    /// Retention policy (v1, optional).
    #[arg(long, env = "PANTAU_INFLUX_RP")]
    pub influx_rp: Option<String>,
    /// Organisation (v2).
    #[arg(long, env = "PANTAU_INFLUX_ORG")]
    pub influx_org: Option<String>,
    /// Bucket (v2).
    #[arg(long, env = "PANTAU_INFLUX_BUCKET")]
    pub influx_bucket: Option<String>,
    /// File holding the InfluxDB token (instead of PANTAU_INFLUX_TOKEN).
    #[arg(long, env = "PANTAU_INFLUX_TOKEN_FILE")]
    pub influx_token_file: Option<PathBuf>,
    /// How long the embedded store keeps raw and 1-minute data.
    #[arg(long, env = "PANTAU_RETENTION", default_value = "90d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Most readings the ingest log holds before it refuses new ones.
    #[arg(long, env = "PANTAU_LOG_MAX_READINGS", default_value_t = 20_000_000)]
    pub log_max_readings: u64,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl StorageArgs {
    fn influx_config(&self) -> anyhow::Result<InfluxConfig> {
        let url = self
            .influx_url
            .clone()
            .context("--storage influxdb needs --influx-url (PANTAU_INFLUX_URL)")?;
        let token = match &self.influx_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --influx-token-file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => env("PANTAU_INFLUX_TOKEN"),
        };
        Ok(InfluxConfig {
            url,
            api: match self.influx_api {
                ApiVersion::V1 => InfluxApi::V1,
                ApiVersion::V2 => InfluxApi::V2,
                ApiVersion::V3 => InfluxApi::V3,
            },
            db: self.influx_db.clone(),
            rp: self.influx_rp.clone(),
            org: self.influx_org.clone(),
            bucket: self.influx_bucket.clone(),
            token,
            username: env("PANTAU_INFLUX_USERNAME"),
            password: env("PANTAU_INFLUX_PASSWORD"),
            timeout: Duration::from_secs(30),
        })
    }
}

/// The ingest log and its sink, ready to drain.
#[derive(Debug)]
pub struct Storage {
    /// The durable queue.
    pub log: Arc<IngestLog>,
    /// Where the log drains to (also answers history queries).
    pub sink: Sink,
}

impl Storage {
    /// Runs the drain from the log into the sink as a task of `stage`,
    /// restarted with backoff whenever it stops ([`Part::Drain`] down
    /// meanwhile).
    pub fn spawn_drain(
        &self,
        sup: &Supervisor,
        stage: StageId,
        metrics: &IngestMetrics,
        health: &Health,
    ) {
        let (log, sink, metrics, health) = (
            self.log.clone(),
            self.sink.clone(),
            metrics.clone(),
            health.clone(),
        );
        sup.spawn_restarting(stage, "drain", Some(Part::Drain), move |stop| {
            drain(
                log.clone(),
                sink.clone(),
                DrainConfig::default(),
                metrics.clone(),
                health.clone(),
                stop,
            )
        });
    }
}

/// Opens the ingest log and the sink, checking an InfluxDB at start-up.
pub async fn open(
    data_dir: &Path,
    registry: Arc<SharedRegistry>,
    args: &StorageArgs,
    metrics: &IngestMetrics,
) -> anyhow::Result<Storage> {
    let log = Arc::new(IngestLog::open(
        data_dir,
        args.log_max_readings,
        metrics.clone(),
    )?);
    let sink = match args.storage {
        StorageKind::Embedded => Sink::Embedded(Arc::new(Store::open_with(
            data_dir,
            Retention {
                raw: args.retention,
                ..Retention::default()
            },
        )?)),
        StorageKind::Influxdb => {
            let cfg = args.influx_config()?;
            let sink = InfluxSink::new(cfg, registry, log.clone())?;
            sink.check().await?;
            tracing::info!(target_db = %sink.target(), "InfluxDB is reachable and accepts the credential.");
            Sink::Influx(Arc::new(sink))
        }
    };
    Ok(Storage { log, sink })
}
