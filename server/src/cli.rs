//! Command line: `pantau up`, `pantau gateway add`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pantau_broker::tls::{ensure_ca, issue_gateway_cert, TlsFiles};
use pantau_model::scope::Scopes;
use pantau_model::GatewayId;
use pantau_state::StateDb;

use crate::config::{
    ApiArgs, FileConfig, GatekeeperArgs, UpConfig, DEFAULT_DATA_DIR, DEFAULT_HTTP, DEFAULT_MQTT,
};
use crate::storage::StorageArgs;

/// Pantau: sensor telemetry for a city's infrastructure.
#[derive(Debug, Parser)]
#[command(name = "pantau", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform in one process (broker, ingest, store, API).
    Up(UpArgs),
    /// Consume telemetry from an external MQTT broker into storage.
    Ingest(IngestArgs),
    /// Serve the API as one replica of a scaled deployment: history from
    /// InfluxDB, state from PostgreSQL, live readings from the broker.
    Api(ReplicaArgs),
    /// Manage gateways.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// Manage agency API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Copy an embedded data directory, consistently, while `pantau up`
    /// runs (ingest log, store, state, TLS material); prints a JSON summary.
    Backup {
        /// Data directory [default: ./pantau-data].
        #[arg(long, env = "PANTAU_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Where the backup goes (a new or empty directory).
        #[arg(long)]
        to: PathBuf,
    },
    /// Restore a backup into a new (or empty) data directory.
    Restore {
        /// The backup (made by `pantau backup`).
        #[arg(long)]
        from: PathBuf,
        /// The new data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token; prints {"name", "token", "scopes"} once, as JSON.
    Create {
        /// A name for the token (the agency or application), unique.
        #[arg(long)]
        name: String,
        /// Comma-separated: read:flood, read:traffic, read:port, ack:<kind>, admin.
        #[arg(long)]
        scopes: String,
        /// Data directory [default: ./pantau-data].
        #[arg(long, env = "PANTAU_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Revoke a token by name; a running server refuses it from the next request.
    Revoke {
        /// The token's name.
        name: String,
        /// Data directory [default: ./pantau-data].
        #[arg(long, env = "PANTAU_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        state: StateArgs,
    },
}

/// The account Pantau uses on an external broker.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BrokerLogin {
    /// Username on the external broker (e.g. pantau-ingest, pantau-api).
    #[arg(long, env = "PANTAU_BROKER_USERNAME")]
    pub broker_username: Option<String>,
    /// Its password (prefer the environment variable).
    #[arg(long, env = "PANTAU_BROKER_PASSWORD", hide_env_values = true)]
    pub broker_password: Option<String>,
}

/// Where platform state lives.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StateArgs {
    /// Platform state shared by every process of a scaled deployment:
    /// postgres://USER:PASSWORD@HOST:PORT/DB (prefer the environment
    /// variable: a command line is visible to every user)
    /// [default: state.db in the data directory].
    #[arg(long = "state", env = "PANTAU_STATE", hide_env_values = true)]
    pub url: Option<String>,
    /// CA certificate (PEM) of the PostgreSQL server: the connection is
    /// TLS and the server's certificate is verified against it (use with
    /// sslmode=require in the address).
    #[arg(long = "state-ca", env = "PANTAU_STATE_CA")]
    pub ca: Option<PathBuf>,
}

impl StateArgs {
    /// Opens the state store (blocking).
    pub fn open(&self, data_dir: &std::path::Path) -> anyhow::Result<StateDb> {
        Ok(StateDb::select(
            self.url.as_deref(),
            self.ca.as_deref(),
            data_dir,
        )?)
    }
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Also run simulated gateways for every site of the registry (the
    /// Dumai demo registry unless --registry is given).
    #[arg(long, env = "PANTAU_DEMO")]
    demo: bool,
    /// Data directory [default: ./pantau-data].
    #[arg(long, env = "PANTAU_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP API address [default: 127.0.0.1:8080].
    #[arg(long, env = "PANTAU_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// MQTT over TLS address [default: 0.0.0.0:8883].
    #[arg(long, env = "PANTAU_MQTT_LISTEN")]
    mqtt_listen: Option<SocketAddr>,
    /// Configuration file (TOML); flags override it.
    #[arg(long, env = "PANTAU_CONFIG")]
    config: Option<PathBuf>,
    /// Sensor registry (TOML).
    #[arg(long, env = "PANTAU_REGISTRY")]
    registry: Option<PathBuf>,
    /// Sampling interval of the demo gateways.
    #[arg(long, env = "PANTAU_DEMO_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    demo_interval: Duration,
    /// Run without the alert engine (overrides `[alerts] enabled`).
    #[arg(long, env = "PANTAU_NO_ALERTS")]
    no_alerts: bool,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    broker: GatekeeperArgs,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, clap::Args)]
struct IngestArgs {
    /// External broker: mqtts://HOST:PORT (or mqtt://HOST:PORT on loopback).
    #[arg(long, env = "PANTAU_BROKER")]
    broker: String,
    /// Stable worker name (its MQTT client id is pantau-ingest-NAME).
    #[arg(long, env = "PANTAU_WORKER_ID")]
    worker_id: String,
    /// At shutdown, leave the shared subscription first and take what the
    /// broker still has queued for this worker: for a worker removed for
    /// good (scaling down). Not for the last worker, nor for restarts.
    #[arg(long, env = "PANTAU_LEAVE_ON_STOP")]
    leave_on_stop: bool,
    /// CA certificate of the broker (PEM), for mqtts://.
    #[arg(long, env = "PANTAU_BROKER_CA")]
    broker_ca: Option<PathBuf>,
    /// Data directory [default: ./pantau-data].
    #[arg(long, env = "PANTAU_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Sensor registry (TOML).
    #[arg(long, env = "PANTAU_REGISTRY")]
    registry: Option<PathBuf>,
    /// Optional HTTP address for /healthz and /metrics.
    #[arg(long, env = "PANTAU_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    #[command(flatten)]
    broker_login: BrokerLogin,
    #[command(flatten)]
    state: StateArgs,
    #[command(flatten)]
    broker_admin: crate::dynsec::BrokerAdminArgs,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, clap::Args)]
struct ReplicaArgs {
    /// Broker cluster the ingest workers publish their commits to:
    /// mqtts://HOST:PORT (or mqtt://HOST:PORT on loopback).
    #[arg(long, env = "PANTAU_BROKER")]
    broker: String,
    /// Stable replica name (its MQTT client id is pantau-api-NAME).
    #[arg(long, env = "PANTAU_REPLICA_ID")]
    replica_id: String,
    /// CA certificate of the broker (PEM), for mqtts://.
    #[arg(long, env = "PANTAU_BROKER_CA")]
    broker_ca: Option<PathBuf>,
    /// Cache directory (mirrored commits, TLS files) [default: ./pantau-data].
    #[arg(long, env = "PANTAU_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Sensor registry (TOML), the same file the ingest workers use.
    #[arg(long, env = "PANTAU_REGISTRY")]
    registry: Option<PathBuf>,
    /// HTTP API address [default: 127.0.0.1:8080]; HTTPS off loopback.
    #[arg(long, env = "PANTAU_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Time to live of the alert lease: one replica evaluates alerts and
    /// sends notifications; when it dies another takes over within this.
    #[arg(long, env = "PANTAU_ALERT_LEASE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    alert_lease_ttl: std::time::Duration,
    #[command(flatten)]
    broker_login: BrokerLogin,
    #[command(flatten)]
    state: StateArgs,
    #[command(flatten)]
    broker_admin: crate::dynsec::BrokerAdminArgs,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Subcommand)]
enum GatewayCommand {
    /// Register a gateway; prints its credentials once, as JSON.
    Add {
        /// Gateway id: lowercase letters, digits and '-', at most 64.
        id: String,
        /// Also issue a client certificate (CN = id) signed by the platform CA.
        #[arg(long)]
        cert: bool,
        /// Data directory [default: ./pantau-data].
        #[arg(long, env = "PANTAU_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        broker_admin: crate::dynsec::BrokerAdminArgs,
    },
    /// Revoke a gateway: its token and client certificates stop working,
    /// and a running platform disconnects it within a second.
    Revoke {
        /// Gateway id.
        id: String,
        /// Data directory [default: ./pantau-data].
        #[arg(long, env = "PANTAU_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        broker_admin: crate::dynsec::BrokerAdminArgs,
    },
    /// Give a gateway a new token; prints its credentials once, as JSON.
    /// The old token stops working at once.
    Rotate {
        /// Gateway id.
        id: String,
        /// Data directory [default: ./pantau-data].
        #[arg(long, env = "PANTAU_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        broker_admin: crate::dynsec::BrokerAdminArgs,
    },
}

/// Entry point of the `pantau` binary.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // rumqttd instruments its router with info-level spans that
            // format payloads: keep them out of the hot path by default.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One crypto provider for every TLS user in the process: ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::limits::raise_open_files();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => resolve(args).and_then(|cfg| {
            tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(crate::up::up(cfg)))
        }),
        Command::Ingest(args) => {
            let cfg = crate::ingest::IngestConfig {
                broker: args.broker,
                worker_id: args.worker_id,
                broker_ca: args.broker_ca,
                data_dir: args.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
                registry: args.registry,
                http_listen: args.http_listen,
                state: args.state,
                storage: args.storage,
                api: args.api,
                broker_admin: args.broker_admin,
                broker_login: args.broker_login,
                leave_on_stop: args.leave_on_stop,
            };
            tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(crate::ingest::run(cfg)))
        }
        Command::Api(args) => {
            let cfg = crate::replica::ReplicaConfig {
                broker: args.broker,
                replica_id: args.replica_id,
                broker_ca: args.broker_ca,
                data_dir: dir(args.data_dir),
                registry: args.registry,
                http_listen: args
                    .http_listen
                    .unwrap_or_else(|| DEFAULT_HTTP.parse().expect("valid default")),
                state: args.state,
                storage: args.storage,
                api: args.api,
                broker_admin: args.broker_admin,
                broker_login: args.broker_login,
                alert_lease_ttl: args.alert_lease_ttl,
            };
            tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(crate::replica::run(cfg)))
        }
        Command::Gateway {
            command:
                GatewayCommand::Add {
                    id,
                    cert,
                    data_dir,
                    state,
                    broker_admin,
                },
        } => gateway_add(&id, cert, dir(data_dir), &state, &broker_admin),
        Command::Gateway {
            command:
                GatewayCommand::Revoke {
                    id,
                    data_dir,
                    state,
                    broker_admin,
                },
        } => gateway_revoke(&id, dir(data_dir), &state, &broker_admin),
        Command::Gateway {
            command:
                GatewayCommand::Rotate {
                    id,
                    data_dir,
                    state,
                    broker_admin,
                },
        } => gateway_rotate(&id, dir(data_dir), &state, &broker_admin),
        Command::Token {
            command:
                TokenCommand::Create {
                    name,
                    scopes,
                    data_dir,
                    state,
                },
        } => token_create(&name, &scopes, dir(data_dir), &state),
        Command::Token {
            command:
                TokenCommand::Revoke {
                    name,
                    data_dir,
                    state,
                },
        } => token_revoke(&name, dir(data_dir), &state),
        Command::Backup { data_dir, to } => {
            crate::backup::backup(&data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()), &to)
        }
        Command::Restore { from, data_dir } => crate::backup::restore(&from, &data_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pantau: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dir(data_dir: Option<PathBuf>) -> PathBuf {
    data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into())
}

fn resolve(args: UpArgs) -> anyhow::Result<UpConfig> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    Ok(UpConfig {
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
        http_listen: args
            .http_listen
            .or(file.http_listen)
            .unwrap_or_else(|| DEFAULT_HTTP.parse().expect("valid default")),
        mqtt_listen: args
            .mqtt_listen
            .or(file.mqtt_listen)
            .unwrap_or_else(|| DEFAULT_MQTT.parse().expect("valid default")),
        registry: args.registry.or(file.registry),
        demo: args.demo,
        demo_interval: args.demo_interval,
        tls_names: file.tls_names,
        storage: args.storage,
        broker: args.broker,
        api: args.api,
        los: file.level_of_service.unwrap_or_default(),
        alerts: {
            let mut a = file.alerts;
            a.enabled &= !args.no_alerts;
            a
        },
    })
}

fn token_create(
    name: &str,
    scopes: &str,
    data_dir: PathBuf,
    state: &StateArgs,
) -> anyhow::Result<()> {
    if name.trim().is_empty() || name.len() > 128 {
        anyhow::bail!("invalid token name {name:?}: 1 to 128 characters");
    }
    let parsed = Scopes::parse(scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
    if state.url.is_none() {
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", data_dir.display()))?;
    }
    let names = parsed.names();
    let token = state
        .open(&data_dir)?
        .create_token(name, &names.join(","))?;
    println!(
        "{}",
        serde_json::json!({"name": name, "token": token, "scopes": names})
    );
    Ok(())
}

fn token_revoke(name: &str, data_dir: PathBuf, state: &StateArgs) -> anyhow::Result<()> {
    state.open(&data_dir)?.revoke_token(name)?;
    println!("{}", serde_json::json!({"name": name, "revoked": true}));
    Ok(())
}

fn gateway_id(id: &str) -> anyhow::Result<GatewayId> {
    GatewayId::new(id).map_err(|e| anyhow::anyhow!("invalid gateway id {id:?}: {e}"))
}

/// Runs a broker provisioning step to completion (the CLI has no runtime).
fn on_broker(step: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(step)
}

fn gateway_revoke(
    id: &str,
    data_dir: PathBuf,
    state: &StateArgs,
    broker: &crate::dynsec::BrokerAdminArgs,
) -> anyhow::Result<()> {
    let id = gateway_id(id)?;
    let hook = broker.hook()?;
    state.open(&data_dir)?.revoke_gateway(&id)?;
    if let Some(d) = hook {
        on_broker(d.revoked(id.as_str())).map_err(|e| {
            anyhow::anyhow!("gateway {id} is revoked in Pantau, but the broker did not remove it (run the revocation again): {e:#}")
        })?;
    }
    println!(
        "{}",
        serde_json::json!({"gateway": id.as_str(), "revoked": true})
    );
    Ok(())
}

fn gateway_rotate(
    id: &str,
    data_dir: PathBuf,
    state: &StateArgs,
    broker: &crate::dynsec::BrokerAdminArgs,
) -> anyhow::Result<()> {
    let id = gateway_id(id)?;
    let hook = broker.hook()?;
    let token = state.open(&data_dir)?.rotate_gateway(&id)?;
    if let Some(d) = hook {
        on_broker(d.rotated(id.as_str(), &token)).map_err(|e| {
            anyhow::anyhow!(
                "gateway {id}: the broker did not take the new token (rotate again): {e:#}"
            )
        })?;
    }
    println!(
        "{}",
        serde_json::json!({"gateway": id.as_str(), "username": id.as_str(), "password": token})
    );
    Ok(())
}

fn gateway_add(
    id: &str,
    cert: bool,
    data_dir: PathBuf,
    state: &StateArgs,
    broker: &crate::dynsec::BrokerAdminArgs,
) -> anyhow::Result<()> {
    let id = gateway_id(id)?;
    let hook = broker.hook()?;
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", data_dir.display()))?;
    let files = TlsFiles::in_data_dir(&data_dir);
    ensure_ca(&files)?;
    let state = state.open(&data_dir)?;
    let token = state.add_gateway(&id)?;
    if let Some(d) = hook {
        if let Err(e) = on_broker(d.added(id.as_str(), &token)) {
            // Not in the broker: not registered either.
            let _ = state.revoke_gateway(&id);
            anyhow::bail!("gateway {id} not registered: the broker refused it: {e:#}");
        }
    }
    let abs = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    let mut out = serde_json::json!({
        "gateway": id.as_str(),
        "username": id.as_str(),
        "password": token,
        "ca_file": abs(files.ca_cert.clone()),
    });
    if cert {
        let (cert_file, key_file, serial) =
            issue_gateway_cert(&files, id.as_str(), &data_dir.join("gateways"))?;
        state.record_gateway_cert(&id, &serial)?;
        out["cert_file"] = serde_json::json!(abs(cert_file));
        out["key_file"] = serde_json::json!(abs(key_file));
    }
    println!("{out}");
    Ok(())
}
