//! `pantau-agent`: the gateway agent. Parses flags, sets up logging and
//! runs the library.

use std::path::PathBuf;

use clap::Parser;
use pantau_edge_agent::config::AgentConfig;
use pantau_edge_agent::{agent, Agent};
use tokio_util::sync::CancellationToken;

/// Pantau gateway agent: reads sensors and publishes them to the platform.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Agent configuration file (TOML).
    #[arg(long, env = "PANTAU_AGENT_CONFIG", conflicts_with = "check_config")]
    config: Option<PathBuf>,
    /// Validate a configuration file, name any bad field, and exit.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    agent::install_crypto();
    let cli = Cli::parse();
    if let Some(path) = cli.check_config {
        AgentConfig::load(&path)?;
        println!("{}: ok", path.display());
        return Ok(());
    }
    let Some(path) = cli.config else {
        anyhow::bail!("--config FILE is required");
    };
    let agent = Agent::from_config(AgentConfig::load(&path)?)?;
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        sd.cancel();
    });
    agent.run(shutdown).await?;
    Ok(())
}
