//! Runs an agent: sources → spool writer → spool → uplink.
//!
//! The sources feed one bounded channel; the spool writer commits what it
//! holds in one transaction per batch and wakes the uplink, which builds
//! envelopes from the spool only. On shutdown the sources stop first, the
//! writer spools what they already produced, then the uplink marks the
//! gateway offline and disconnects.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pantau_model::backoff::Backoff;
use pantau_model::Reading;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::command::Intervals;
use crate::config::{AgentConfig, SourceSection};
use crate::modbus::{Device, Link};
use crate::sim::SimSensor;
use crate::spool::{self, Spool};
use crate::status::Stats;
use crate::uplink::{self, Endpoint, Uplink, UplinkConfig, UplinkError};

/// Readings between the sources and the spool writer.
const CHANNEL: usize = 10_000;
/// Most readings committed to the spool in one transaction.
const WRITE_BATCH: usize = 2_000;

/// Errors starting an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The uplink configuration is unusable.
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] spool::Error),
    /// A json-tcp source could not listen.
    #[error("source json-tcp {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Where readings come from.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// JSON lines on standard input.
    Stdin,
    /// JSON lines from local TCP connections.
    JsonTcp(SocketAddr),
    /// A Modbus device polled every `interval` (commands may change it per
    /// sensor).
    Modbus {
        /// Initial polling interval.
        interval: Duration,
        /// The device and its register map.
        device: Device,
    },
    /// Simulated sensors sampled every `interval` (commands may change it
    /// per sensor).
    Simulated {
        /// Initial sampling interval.
        interval: Duration,
        /// The sensors.
        sensors: Vec<SimSensor>,
    },
}

impl SourceSpec {
    fn name(&self) -> String {
        match self {
            SourceSpec::Stdin => "stdin".into(),
            SourceSpec::JsonTcp(addr) => format!("json-tcp {addr}"),
            SourceSpec::Modbus { device, .. } => format!("{} unit {}", device.link, device.unit),
            SourceSpec::Simulated { .. } => "simulated".into(),
        }
    }
}

/// A configured agent, ready to run.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Brokers, identity and batching.
    pub uplink: UplinkConfig,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool bound in bytes.
    pub spool_max_bytes: u64,
    /// Spool sync mode.
    pub spool_sync: spool::Sync,
    /// The sources.
    pub sources: Vec<SourceSpec>,
}

impl Agent {
    /// Builds an agent from its checked configuration file (reads the CA).
    pub fn from_config(cfg: AgentConfig) -> Result<Self, UplinkError> {
        let identity = match (&cfg.broker.cert_file, &cfg.broker.key_file) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        let tls = match &cfg.broker.ca_file {
            Some(ca) => Some(uplink::client_tls_with(ca, identity)?),
            None => None,
        };
        let mut endpoints = Vec::new();
        for url in std::iter::once(&cfg.broker.url).chain(&cfg.broker.failover) {
            let (use_tls, host, port) = uplink::parse_url(url)?;
            endpoints.push(Endpoint {
                host,
                port,
                tls: if use_tls { tls.clone() } else { None },
            });
        }
        let sources = cfg
            .source
            .iter()
            .map(|s| match s {
                SourceSection::Stdin => SourceSpec::Stdin,
                SourceSection::JsonTcp { listen } => SourceSpec::JsonTcp(*listen),
                SourceSection::ModbusTcp {
                    address,
                    unit,
                    interval,
                    timeout,
                    register,
                } => SourceSpec::Modbus {
                    interval: *interval,
                    device: Device {
                        link: Link::Tcp(*address),
                        unit: *unit,
                        timeout: *timeout,
                        registers: register.clone(),
                    },
                },
                SourceSection::ModbusRtu {
                    device,
                    baud,
                    unit,
                    interval,
                    timeout,
                    register,
                } => SourceSpec::Modbus {
                    interval: *interval,
                    device: Device {
                        link: Link::Rtu {
                            device: device.clone(),
                            baud: *baud,
                        },
                        unit: *unit,
                        timeout: *timeout,
                        registers: register.clone(),
                    },
                },
                SourceSection::Simulated { interval, sensors } => SourceSpec::Simulated {
                    interval: *interval,
                    // Checked when the file was loaded.
                    sensors: sensors.iter().filter_map(|s| s.build().ok()).collect(),
                },
            })
            .collect();
        Ok(Self {
            uplink: UplinkConfig {
                gateway: cfg.gateway.clone(),
                endpoints,
                password: cfg.broker.password.clone(),
                keep_alive: cfg.broker.keep_alive,
                max_readings: cfg.batch.max_readings,
                max_bytes: cfg.batch.max_bytes,
                max_delay: cfg.batch.max_delay,
                max_in_flight: cfg.batch.max_in_flight,
                replay_rate: NonZeroU32::new(cfg.broker.replay_readings_per_s)
                    .unwrap_or(NonZeroU32::MIN),
                status_interval: cfg.broker.status_interval,
            },
            spool_dir: cfg.spool.path.clone(),
            spool_max_bytes: cfg.spool.max_bytes(),
            spool_sync: cfg.spool.synchronous,
            sources,
        })
    }

    /// Runs until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let spool = Arc::new(Spool::open(
            &self.spool_dir,
            self.spool_max_bytes,
            self.spool_sync,
        )?);
        let stats = Arc::new(Stats::new(self.sources.iter().map(SourceSpec::name)));
        let intervals = Arc::new(Intervals::default());
        let (tx, rx) = mpsc::channel::<Reading>(CHANNEL);
        let mut sources = Vec::new();
        for (spec, st) in self.sources.into_iter().zip(stats.sources.clone()) {
            let (tx, sd) = (tx.clone(), shutdown.clone());
            sources.push(match spec {
                SourceSpec::Stdin => tokio::spawn(async move {
                    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
                    crate::source::json_lines(stdin, tx, st, sd).await;
                }),
                SourceSpec::JsonTcp(addr) => {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|source| AgentError::Listen { addr, source })?;
                    tokio::spawn(crate::source::json_tcp(listener, tx, st, sd))
                }
                SourceSpec::Modbus { interval, device } => {
                    for r in &device.registers {
                        intervals.register(&r.sensor, interval);
                    }
                    tokio::spawn(crate::modbus::poll(device, intervals.clone(), tx, st, sd))
                }
                SourceSpec::Simulated { interval, sensors } => {
                    for s in &sensors {
                        intervals.register(&s.id, interval);
                    }
                    tokio::spawn(crate::source::simulate(
                        sensors,
                        intervals.clone(),
                        tx,
                        st,
                        sd,
                    ))
                }
            });
        }
        drop(tx);
        let appended = Arc::new(Notify::new());
        let writer = tokio::spawn(spool_writer(
            spool.clone(),
            rx,
            appended.clone(),
            stats.clone(),
        ));
        let uplink_stop = CancellationToken::new();
        let uplink = tokio::spawn(
            Uplink::new(self.uplink, spool, appended, stats, intervals).run(uplink_stop.clone()),
        );
        shutdown.cancelled().await;
        for s in sources {
            let _ = s.await;
        }
        // What the sources produced is spooled before the uplink stops.
        let _ = writer.await;
        uplink_stop.cancel();
        let _ = uplink.await;
        Ok(())
    }
}

/// Commits readings from the sources to the spool, a batch per
/// transaction, and wakes the uplink. A failed commit is retried with
/// backoff while the batch is held (the sources wait: nothing is lost),
/// and counted in the status (`spool_append_failures`, `last_spool_error`).
async fn spool_writer(
    spool: Arc<Spool>,
    mut rx: mpsc::Receiver<Reading>,
    appended: Arc<Notify>,
    stats: Arc<crate::status::Stats>,
) {
    let mut last_full_warning: Option<tokio::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
            .expect("valid backoff bounds");
        loop {
            let sp = spool.clone();
            let (result, back) = tokio::task::spawn_blocking(move || {
                let r = sp.append(&batch);
                (r, batch)
            })
            .await
            .expect("the spool append does not panic");
            batch = back;
            match result {
                Ok(dropped) => {
                    if dropped > 0
                        && last_full_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                    {
                        last_full_warning = Some(tokio::time::Instant::now());
                        let d = spool.depth();
                        tracing::warn!(
                            dropped_total = d.dropped,
                            max_bytes = d.max_bytes,
                            "Spool full: dropping the oldest readings."
                        );
                    }
                    appended.notify_one();
                    break;
                }
                Err(e) => {
                    stats.spool_error(e.to_string());
                    let delay = backoff.next_delay();
                    tracing::error!(error = %e, readings = batch.len(), retry_in_ms = delay.as_millis() as u64, "Spool append failed, retrying.");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Installs the ring provider as the process default (idempotent).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
