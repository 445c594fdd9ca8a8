//! The InfluxDB sink: one writer for the three write APIs — v1 `/write`
//! (InfluxDB 1.x), v2 `/api/v2/write` (1.8+, 2.x, 3.x, VictoriaMetrics) and
//! v3 `/api/v3/write_lp` — and InfluxQL history queries over `/query`.
//!
//! A write is a chain: encode lines → gzip (compressed here; reqwest only
//! decompresses responses) → POST → classify the answer:
//! - 2xx: written;
//! - connection error, 429, 5xx: retried with the shared jittered backoff,
//!   honouring `Retry-After`;
//! - 413: the batch is split in halves;
//! - 400/422: some lines are bad. The batch is bisected (lines are
//!   idempotent by series and time, so resending good ones is harmless)
//!   until each refused line stands alone; those go to the dead-letter
//!   table with the server's message and the rest count as written. No
//!   line is retried forever;
//! - 401/403/404: fatal. The sink stops, naming the database or bucket and
//!   the credential, and the readings stay in the ingest log.

mod lp;
mod query;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use pantau_model::backoff::Backoff;
use pantau_model::SharedRegistry;
use reqwest::{RequestBuilder, StatusCode};

use crate::health::{Health, Part};
use crate::log::{Batch, DeadLetter, IngestLog};
use crate::metrics::IngestMetrics;
use crate::sink::{Fatal, WriteReport};

pub use lp::line;
pub use query::InfluxQuery;

/// Lines per write request.
const LINES_PER_REQUEST: usize = 5_000;

/// Which write API to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfluxApi {
    /// InfluxDB 1.x `/write` and `/query`.
    V1,
    /// `/api/v2/write` (InfluxDB 2.x, 1.8+, 3.x; VictoriaMetrics).
    V2,
    /// InfluxDB 3 `/api/v3/write_lp`.
    V3,
}

impl InfluxApi {
    /// Parses `v1`, `v2` or `v3`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "v1" => Some(Self::V1),
            "v2" => Some(Self::V2),
            "v3" => Some(Self::V3),
            _ => None,
        }
    }

    /// `v1`, `v2` or `v3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::V3 => "v3",
        }
    }
}

/// Where and how to write.
#[derive(Clone)]
pub struct InfluxConfig {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    /// Write API.
    pub api: InfluxApi,
    /// Database (v1, v3; also the InfluxQL database for queries).
    pub db: Option<String>,
    /// Retention policy (v1, optional).
    pub rp: Option<String>,
    /// Organisation (v2).
    pub org: Option<String>,
    /// Bucket (v2).
    pub bucket: Option<String>,
    /// API token (v2, v3; v1 when set).
    pub token: Option<String>,
    /// Username (v1).
    pub username: Option<String>,
    /// Password (v1).
    pub password: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for InfluxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are never printed.
        f.debug_struct("InfluxConfig")
            .field("url", &self.url)
            .field("api", &self.api)
            .field("db", &self.db)
            .field("rp", &self.rp)
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Why the InfluxDB configuration cannot work.
#[derive(Debug, thiserror::Error)]
pub enum InfluxError {
    /// A required setting is missing.
    #[error("influxdb {api}: {what} is required")]
    Missing {
        /// The API version.
        api: &'static str,
        /// The missing setting (flag name).
        what: &'static str,
    },
    /// The server cannot be reached.
    #[error("influxdb at {url} is unreachable: {source}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The server refused the credential.
    #[error("influxdb at {url} refused {credential} for {target}: HTTP {status}: {message}")]
    Credential {
        /// The URL.
        url: String,
        /// Which credential (`PANTAU_INFLUX_TOKEN`, ...).
        credential: &'static str,
        /// Database or bucket.
        target: String,
        /// Status.
        status: u16,
        /// Server message.
        message: String,
    },
    /// The database or bucket does not exist (and cannot be created).
    #[error("influxdb at {url}: {target} not found: {message}")]
    NotFound {
        /// The URL.
        url: String,
        /// Database or bucket.
        target: String,
        /// Server message.
        message: String,
    },
    /// The server answered something unexpected.
    #[error("influxdb at {url}: unexpected answer HTTP {status}: {message}")]
    Unexpected {
        /// The URL.
        url: String,
        /// Status.
        status: u16,
        /// Body.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The sink.
#[derive(Debug)]
pub struct InfluxSink {
    /// Settings.
    cfg: InfluxConfig,
    /// HTTP client (rustls with ring).
    client: reqwest::Client,
    /// For the district tag.
    registry: Arc<SharedRegistry>,
    /// Where refused lines are recorded.
    log: Arc<IngestLog>,
}

/// (written, dead-lettered), boxed because splitting recurses.
type WriteFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(u64, u64), Fatal>> + Send + 'a>>;

/// The outcome of one POST.
enum Sent {
    Ok,
    Retry(&'static str, Option<Duration>),
    TooLarge,
    Rejected(u16, String),
    Fatal(Fatal),
}

impl InfluxSink {
    /// Builds the sink; call [`InfluxSink::check`] before draining.
    pub fn new(
        cfg: InfluxConfig,
        registry: Arc<SharedRegistry>,
        log: Arc<IngestLog>,
    ) -> Result<Self, InfluxError> {
        let need = |v: &Option<String>, what| match v {
            Some(s) if !s.is_empty() => Ok(()),
            _ => Err(InfluxError::Missing {
                api: cfg.api.as_str(),
                what,
            }),
        };
        match cfg.api {
            InfluxApi::V1 | InfluxApi::V3 => need(&cfg.db, "--influx-db")?,
            InfluxApi::V2 => {
                need(&cfg.org, "--influx-org")?;
                need(&cfg.bucket, "--influx-bucket")?;
            }
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .build()
            .map_err(InfluxError::Client)?;
        Ok(Self {
            cfg,
            client,
            registry,
            log,
        })
    }

    fn base(&self) -> &str {
        self.cfg.url.trim_end_matches('/')
    }

    /// Names the write target for messages (`database "x"`, `bucket "y"`).
    pub fn target(&self) -> String {
        match self.cfg.api {
            InfluxApi::V2 => format!(
                "bucket {:?} of org {:?}",
                self.cfg.bucket.as_deref().unwrap_or_default(),
                self.cfg.org.as_deref().unwrap_or_default()
            ),
            _ => format!("database {:?}", self.cfg.db.as_deref().unwrap_or_default()),
        }
    }

    fn credential(&self) -> &'static str {
        match (&self.cfg.token, &self.cfg.username) {
            (Some(_), _) => "PANTAU_INFLUX_TOKEN",
            (None, Some(_)) => "PANTAU_INFLUX_USERNAME/PANTAU_INFLUX_PASSWORD",
            (None, None) => "no credential (anonymous)",
        }
    }

    /// Adds authentication to a request.
    fn auth(&self, req: RequestBuilder) -> RequestBuilder {
        match (&self.cfg.token, self.cfg.api) {
            (Some(t), InfluxApi::V3) => req.bearer_auth(t),
            (Some(t), _) => req.header("Authorization", format!("Token {t}")),
            (None, _) => match &self.cfg.username {
                Some(u) => req.basic_auth(u, self.cfg.password.as_deref()),
                None => req,
            },
        }
    }

    fn write_request(&self) -> RequestBuilder {
        let base = self.base();
        let req = match self.cfg.api {
            InfluxApi::V1 => {
                let mut q = vec![
                    ("db", self.cfg.db.clone().unwrap_or_default()),
                    ("precision", "ms".into()),
                ];
                if let Some(rp) = &self.cfg.rp {
                    q.push(("rp", rp.clone()));
                }
                self.client.post(format!("{base}/write")).query(&q)
            }
            InfluxApi::V2 => self.client.post(format!("{base}/api/v2/write")).query(&[
                ("org", self.cfg.org.clone().unwrap_or_default()),
                ("bucket", self.cfg.bucket.clone().unwrap_or_default()),
                ("precision", "ms".into()),
            ]),
            InfluxApi::V3 => self.client.post(format!("{base}/api/v3/write_lp")).query(&[
                ("db", self.cfg.db.clone().unwrap_or_default()),
                ("precision", "millisecond".into()),
            ]),
        };
        self.auth(req)
    }

    /// Checks at start-up what can be checked: the server answers, the
    /// credential is accepted, the database or bucket exists (a missing v1
    /// database is created when the credential allows it).
    pub async fn check(&self) -> Result<(), InfluxError> {
        let url = self.cfg.url.clone();
        let ping = self
            .client
            .get(format!("{}/ping", self.base()))
            .send()
            .await;
        if let Err(source) = ping {
            return Err(InfluxError::Unreachable { url, source });
        }
        match self.cfg.api {
            InfluxApi::V1 => self.check_v1_database().await,
            InfluxApi::V2 | InfluxApi::V3 => {
                // An empty write exercises the credential and the target.
                let resp =
                    self.write_request()
                        .body(Vec::new())
                        .send()
                        .await
                        .map_err(|source| InfluxError::Unreachable {
                            url: url.clone(),
                            source,
                        })?;
                let status = resp.status();
                let message = resp.text().await.unwrap_or_default();
                match status.as_u16() {
                    200..=299 | 400 => Ok(()),
                    401 | 403 => Err(InfluxError::Credential {
                        url,
                        credential: self.credential(),
                        target: self.target(),
                        status: status.as_u16(),
                        message,
                    }),
                    404 => Err(InfluxError::NotFound {
                        url,
                        target: self.target(),
                        message,
                    }),
                    s => Err(InfluxError::Unexpected {
                        url,
                        status: s,
                        message,
                    }),
                }
            }
        }
    }

    async fn check_v1_database(&self) -> Result<(), InfluxError> {
        let url = self.cfg.url.clone();
        let db = self.cfg.db.clone().unwrap_or_default();
        let (status, body) = self.influxql("SHOW DATABASES", None).await?;
        if status == 401 || status == 403 {
            return Err(InfluxError::Credential {
                url,
                credential: self.credential(),
                target: self.target(),
                status,
                message: body.to_string(),
            });
        }
        if status != 200 {
            return Err(InfluxError::Unexpected {
                url,
                status,
                message: body.to_string(),
            });
        }
        let exists = body["results"][0]["series"][0]["values"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r[0] == db.as_str()));
        if exists {
            return Ok(());
        }
        let create = format!("CREATE DATABASE \"{}\"", db.replace('"', "\\\""));
        let (status, body) = self.influxql(&create, None).await?;
        let err = body["results"][0]["error"]
            .as_str()
            .or(body["error"].as_str());
        match (status, err) {
            (200, None) => {
                tracing::info!(database = %db, "Created the InfluxDB database.");
                Ok(())
            }
            (_, msg) => Err(InfluxError::NotFound {
                url,
                target: self.target(),
                message: format!(
                    "it does not exist and {} cannot create it: {}",
                    self.credential(),
                    msg.map_or_else(|| body.to_string(), str::to_owned)
                ),
            }),
        }
    }

    /// Runs an InfluxQL statement over `/query` (POST), returning the status
    /// and the JSON body.
    pub(crate) async fn influxql(
        &self,
        q: &str,
        db: Option<&str>,
    ) -> Result<(u16, serde_json::Value), InfluxError> {
        let mut params = vec![("q", q.to_owned()), ("epoch", "ms".to_owned())];
        if let Some(db) = db {
            params.push(("db", db.to_owned()));
        }
        if let (Some(rp), Some(_)) = (&self.cfg.rp, db) {
            params.push(("rp", rp.clone()));
        }
        let resp = self
            .auth(self.client.post(format!("{}/query", self.base())))
            .form(&params)
            .send()
            .await
            .map_err(|source| InfluxError::Unreachable {
                url: self.cfg.url.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, json))
    }

    /// The InfluxQL database name (v1/v3 database; v2 bucket via DBRP).
    pub(crate) fn query_db(&self) -> String {
        match self.cfg.api {
            InfluxApi::V2 => self.cfg.bucket.clone().unwrap_or_default(),
            _ => self.cfg.db.clone().unwrap_or_default(),
        }
    }

    /// Writes a batch (see the module docs for the answer handling).
    pub async fn write(
        &self,
        batch: &Batch,
        metrics: &IngestMetrics,
        health: &Health,
    ) -> Result<WriteReport, Fatal> {
        let registry = self.registry.get();
        let lines: Vec<String> = batch
            .entries
            .iter()
            .flat_map(|e| {
                e.readings.iter().map(|r| {
                    let district = registry.get(&r.sensor).map_or("", |s| s.district.as_str());
                    line(r, district)
                })
            })
            .collect();
        // Log entries can be larger than a good request: ~5 000 lines each.
        let (mut written, mut dead) = (0, 0);
        for chunk in lines.chunks(LINES_PER_REQUEST) {
            let (w, d) = self.write_lines(chunk, metrics, health).await?;
            written += w;
            dead += d;
        }
        health.up(Part::Storage);
        Ok(WriteReport {
            written,
            dead_lettered: dead,
        })
    }

    fn write_lines<'a>(
        &'a self,
        lines: &'a [String],
        metrics: &'a IngestMetrics,
        health: &'a Health,
    ) -> WriteFuture<'a> {
        Box::pin(async move {
            if lines.is_empty() {
                return Ok((0, 0));
            }
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
                .expect("valid backoff bounds");
            loop {
                match self.send(lines).await {
                    Sent::Ok => return Ok((lines.len() as u64, 0)),
                    Sent::Retry(reason, after) => {
                        metrics.retry(reason);
                        health.down(
                            Part::Storage,
                            format_args!("influxdb at {}: {reason}, retrying", self.cfg.url),
                        );
                        let delay = after.unwrap_or_else(|| backoff.next_delay());
                        tracing::warn!(
                            reason,
                            retry_in_ms = delay.as_millis() as u64,
                            lines = lines.len(),
                            "Write to InfluxDB failed, retrying."
                        );
                        tokio::time::sleep(delay).await;
                    }
                    Sent::TooLarge | Sent::Rejected(..) if lines.len() > 1 => {
                        return self.split(lines, metrics, health).await
                    }
                    Sent::TooLarge => {
                        return self
                            .dead(&lines[0], 413, "line too large for the server".into())
                            .await
                    }
                    Sent::Rejected(status, message) => {
                        return self.dead(&lines[0], status, message).await
                    }
                    Sent::Fatal(fatal) => return Err(fatal),
                }
            }
        })
    }

    async fn split(
        &self,
        lines: &[String],
        metrics: &IngestMetrics,
        health: &Health,
    ) -> Result<(u64, u64), Fatal> {
        let (a, b) = lines.split_at(lines.len() / 2);
        let (wa, da) = self.write_lines(a, metrics, health).await?;
        let (wb, db) = self.write_lines(b, metrics, health).await?;
        Ok((wa + wb, da + db))
    }

    async fn dead(&self, line: &str, status: u16, message: String) -> Result<(u64, u64), Fatal> {
        tracing::warn!(status, error = %message, "InfluxDB refused a line; dead-lettered.");
        let record = DeadLetter {
            sink: format!("influxdb {} {}", self.cfg.api.as_str(), self.cfg.url),
            line: line.to_owned(),
            status,
            message,
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
            .expect("valid backoff bounds");
        // The dead-letter record must be durable before the entry is acked.
        while let Err(e) = self.log.dead_letter(vec![record.clone()]).await {
            tracing::error!(error = %e, "Recording a dead letter failed, retrying.");
            tokio::time::sleep(backoff.next_delay()).await;
        }
        Ok((0, 1))
    }

    async fn send(&self, lines: &[String]) -> Sent {
        let mut gz = GzEncoder::new(Vec::with_capacity(lines.len() * 40), Compression::fast());
        for l in lines {
            use std::io::Write;
            let _ = gz.write_all(l.as_bytes());
            let _ = gz.write_all(b"\n");
        }
        let body = match gz.finish() {
            Ok(b) => b,
            Err(e) => return Sent::Fatal(Fatal::Compress(e)),
        };
        let resp = self
            .write_request()
            .header("Content-Encoding", "gzip")
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Sent::Retry("timeout", None),
            Err(_) => return Sent::Retry("connection", None),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(300)));
        if status.is_success() {
            return Sent::Ok;
        }
        let message = resp.text().await.unwrap_or_default();
        match status {
            StatusCode::TOO_MANY_REQUESTS => Sent::Retry("http_429", retry_after),
            s if s.is_server_error() => Sent::Retry("http_5xx", retry_after),
            StatusCode::PAYLOAD_TOO_LARGE => Sent::TooLarge,
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                Sent::Rejected(status.as_u16(), message)
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Sent::Fatal(Fatal::Influx(InfluxError::Credential {
                    url: self.cfg.url.clone(),
                    credential: self.credential(),
                    target: self.target(),
                    status: status.as_u16(),
                    message: message.trim().to_owned(),
                }))
            }
            StatusCode::NOT_FOUND => Sent::Fatal(Fatal::Influx(InfluxError::NotFound {
                url: self.cfg.url.clone(),
                target: self.target(),
                message: message.trim().to_owned(),
            })),
            s => Sent::Fatal(Fatal::Influx(InfluxError::Unexpected {
                url: self.cfg.url.clone(),
                status: s.as_u16(),
                message: message.trim().to_owned(),
            })),
        }
    }
}
