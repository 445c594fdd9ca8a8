//! End-to-end test harness: starts the real `pantau` binary on free
//! loopback ports with a temporary data directory, waits for readiness with
//! a deadline, drives real third-party clients (Mosquitto's
//! `mosquitto_pub`), and kills the process on drop.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub mod browser;
pub mod faults;
pub mod mqtt;
pub mod services;
pub mod webhook;

use anyhow::{bail, Context, Result};
use pantau_model::Timestamp;
use serde_json::Value;

/// Path of a workspace binary built next to the test executable.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!("{}_BIN", name.to_uppercase().replace('-', "_"))) {
        return p.into();
    }
    // Tests run from target/<profile>/deps/, programs (the benchmark) from
    // target/<profile>/: look beside the executable, then one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let here = exe.parent().expect("executable dir");
    let bin = [
        here.join(name),
        here.parent().map(|p| p.join(name)).unwrap_or_default(),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .unwrap_or_else(|| {
        panic!(
            "{name} not found near {}: build it first (cargo build --workspace --bins)",
            here.display()
        )
    });
    bin
}

/// The ids of the demo registry's public sites.
pub fn demo_public_ids() -> Result<Vec<String>> {
    let registry = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/dumai-demo-registry.toml"
    ))?;
    Ok(registry
        .split("[[sensor]]")
        .filter(|s| s.contains("public = true"))
        .filter_map(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("id = \"")
                    .map(|r| r.trim_end_matches('"').to_string())
            })
        })
        .collect())
}

/// A free loopback port (bound, then released).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// Polls `check` until it returns `Some`, or fails after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
    }
}

/// A running `pantau up`.
#[derive(Debug)]
pub struct Pantau {
    child: Child,
    /// Data directory (kept across restarts by the caller).
    pub data_dir: PathBuf,
    /// HTTP address.
    pub http: SocketAddr,
    /// MQTT over TLS address.
    pub mqtt: SocketAddr,
    /// Where the process's stderr (its log) goes.
    pub log: PathBuf,
    /// Whether the API serves HTTPS (`--http-tls`, or a non-loopback address).
    pub https: bool,
}

impl Pantau {
    /// Starts `pantau up EXTRA...` on `data_dir` and waits for `/healthz`.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_on(data_dir, free_addr(), free_addr(), extra).await
    }

    /// Like `start`, on given addresses (a restart on the same ports).
    pub async fn start_on(
        data_dir: &Path,
        http: SocketAddr,
        mqtt: SocketAddr,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_with(data_dir, http, mqtt, extra, None).await
    }

    /// Like `start_on`, with the process's open-file limit (soft and hard)
    /// set to `nofile` when given (through util-linux `prlimit`, which
    /// execs the program: the pid stays pantau's).
    pub async fn start_with(
        data_dir: &Path,
        http: SocketAddr,
        mqtt: SocketAddr,
        extra: &[&str],
        nofile: Option<u64>,
    ) -> Result<Self> {
        let mut p = Self::spawn_with(data_dir, http, mqtt, extra, nofile)?;
        p.wait_healthy().await?;
        Ok(p)
    }

    /// Starts `pantau up` like [`Pantau::start_on`] without waiting for
    /// it (a test that acts during its start-up, then calls
    /// [`Pantau::wait_healthy`]).
    pub fn spawn_on(
        data_dir: &Path,
        http: SocketAddr,
        mqtt: SocketAddr,
        extra: &[&str],
    ) -> Result<Self> {
        Self::spawn_with(data_dir, http, mqtt, extra, None)
    }

    fn spawn_with(
        data_dir: &Path,
        http: SocketAddr,
        mqtt: SocketAddr,
        extra: &[&str],
        nofile: Option<u64>,
    ) -> Result<Self> {
        let log = data_dir.with_extension(format!("{}.log", mqtt.port()));
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(binary("pantau"));
                c
            }
            None => Command::new(binary("pantau")),
        };
        let child = cmd
            .arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--http-listen")
            .arg(http.to_string())
            .arg("--mqtt-listen")
            .arg(mqtt.to_string())
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("PANTAU_TEST_LOG").unwrap_or_else(|_| "info,rumqttd=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawn pantau")?;
        Ok(Self {
            child,
            data_dir: data_dir.to_owned(),
            http,
            mqtt,
            log,
            https: extra.contains(&"--http-tls") || !http.ip().is_loopback(),
        })
    }

    /// Waits (30 s at most) for `/healthz`.
    pub async fn wait_healthy(&mut self) -> Result<()> {
        let p = self;
        let url = p.url("/healthz");
        let ready = eventually(Duration::from_secs(30), "pantau /healthz", || {
            // Over HTTPS the client needs the CA, which the server writes
            // at its first start.
            let (client, url) = (p.client(), url.clone());
            async move {
                client
                    .ok()?
                    .get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        if let Err(e) = ready {
            let status = p.child.try_wait()?;
            bail!("{e}; process status {status:?}; log:\n{}", p.log_text());
        }
        Ok(())
    }

    /// `METHOD path` with a bearer token and an optional JSON body: the
    /// status and the JSON answer (`null` when it is not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .client()?
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A URL on the HTTP listener (`https://localhost:PORT` when it serves
    /// HTTPS: the platform's certificate names `localhost`).
    pub fn url(&self, path: &str) -> String {
        if self.https {
            format!("https://localhost:{}{}", self.http.port(), path)
        } else {
            format!("http://{}{}", self.http, path)
        }
    }

    /// An HTTP client for the API; over HTTPS it trusts the platform's CA
    /// (and nothing else).
    pub fn client(&self) -> Result<reqwest::Client> {
        let mut b = reqwest::Client::builder();
        if self.https {
            let ca = std::fs::read(self.data_dir.join("tls").join("ca.pem"))?;
            b = b
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
                .https_only(true);
        }
        Ok(b.build()?)
    }

    /// GETs a JSON document.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let r = self
            .client()?
            .get(self.url(path))
            .send()
            .await?
            .error_for_status()?;
        Ok(r.json().await?)
    }

    /// GETs `/metrics` as text.
    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .client()?
            .get(self.url("/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the process with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process with SIGTERM and waits (bounded) for it to exit.
    pub async fn terminate(&mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let child = &mut self.child;
        let mut exited = None;
        let waited = eventually(
            Duration::from_secs(15),
            "pantau to exit after SIGTERM",
            || {
                exited = child.try_wait().ok().flatten();
                std::future::ready(exited)
            },
        )
        .await;
        if waited.is_err() {
            self.kill();
        }
        waited.map(drop)
    }
}

impl Drop for Pantau {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Credentials printed by `pantau gateway add`.
#[derive(Debug, Clone)]
pub struct GatewayCreds {
    /// Gateway id.
    pub gateway: String,
    /// Token.
    pub password: String,
    /// CA certificate path.
    pub ca_file: PathBuf,
    /// Client certificate (with `--cert`).
    pub cert_file: Option<PathBuf>,
    /// Client key (with `--cert`).
    pub key_file: Option<PathBuf>,
}

/// Runs `pantau token create --name NAME --scopes SCOPES --data-dir DIR`
/// and returns its one JSON object.
pub fn token_create(data_dir: &Path, name: &str, scopes: &str) -> Result<Value> {
    let out = Command::new(binary("pantau"))
        .args([
            "token",
            "create",
            "--name",
            name,
            "--scopes",
            scopes,
            "--data-dir",
        ])
        .arg(data_dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "stdout is not one JSON object: {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs `pantau token revoke NAME --data-dir DIR`.
pub fn token_revoke(data_dir: &Path, name: &str) -> Result<()> {
    let out = Command::new(binary("pantau"))
        .args(["token", "revoke", name, "--data-dir"])
        .arg(data_dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "token revoke failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs `pantau gateway add ID --data-dir DIR`.
pub fn gateway_add(data_dir: &Path, id: &str) -> Result<GatewayCreds> {
    gateway_add_with(data_dir, id, &[])
}

/// Runs `pantau gateway add ID --data-dir DIR EXTRA...` (e.g. `--cert`).
pub fn gateway_add_with(data_dir: &Path, id: &str, extra: &[&str]) -> Result<GatewayCreds> {
    let out = Command::new(binary("pantau"))
        .args(["gateway", "add", id, "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .output()?;
    if !out.status.success() {
        bail!(
            "gateway add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "stdout is not one JSON object: {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    assert_eq!(v["gateway"], id);
    assert_eq!(v["username"], id);
    Ok(GatewayCreds {
        gateway: id.into(),
        password: v["password"].as_str().context("password")?.into(),
        ca_file: v["ca_file"].as_str().context("ca_file")?.into(),
        cert_file: v["cert_file"].as_str().map(PathBuf::from),
        key_file: v["key_file"].as_str().map(PathBuf::from),
    })
}

/// Runs `mosquitto_pub` (Debian's mosquitto-clients) at QoS 1 over TLS.
pub fn mosquitto_pub(
    mqtt: SocketAddr,
    ca: Option<&Path>,
    user: &str,
    password: &str,
    topic: &str,
    message: &str,
) -> Result<Output> {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &mqtt.port().to_string()]);
    if let Some(ca) = ca {
        cmd.arg("--cafile").arg(ca);
    }
    cmd.args([
        "-u", user, "-P", password, "-q", "1", "-t", topic, "-m", message,
    ]);
    cmd.output()
        .context("run mosquitto_pub (install mosquitto-clients)")
}

fn store_conn(data_dir: &Path) -> Result<rusqlite::Connection> {
    Ok(rusqlite::Connection::open_with_flags(
        data_dir.join("readings.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?)
}

fn raw_partitions(conn: &rusqlite::Connection) -> Result<Vec<String>> {
    let mut stmt =
        conn.prepare("SELECT name FROM partitions WHERE level = 'raw' ORDER BY start_ms")?;
    let names = stmt.query_map([], |r| r.get(0))?;
    Ok(names.collect::<Result<_, _>>()?)
}

/// Raw samples (field, ts, value) of one sensor, read straight from the
/// embedded store's partitions, oldest first.
pub fn stored(data_dir: &Path, sensor: &str) -> Result<Vec<(String, i64, f64)>> {
    let conn = store_conn(data_dir)?;
    let mut out = Vec::new();
    for table in raw_partitions(&conn)? {
        let mut stmt = conn.prepare(&format!(
            "SELECT field, ts, value FROM {table} WHERE sensor = ?1 ORDER BY ts, field"
        ))?;
        let rows = stmt.query_map([sensor], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        for row in rows {
            out.push(row?);
        }
    }
    Ok(out)
}

/// Total raw samples in the embedded store.
pub fn stored_count(data_dir: &Path) -> Result<i64> {
    let conn = store_conn(data_dir)?;
    let mut total = 0;
    for table in raw_partitions(&conn)? {
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        total += n;
    }
    Ok(total)
}

/// Polls the embedded store until `sensor` has `n` samples (the sink drains
/// the ingest log asynchronously), then returns them.
pub async fn stored_eventually(
    data_dir: &Path,
    sensor: &str,
    n: usize,
) -> Result<Vec<(String, i64, f64)>> {
    eventually(
        Duration::from_secs(15),
        &format!("{n} samples of {sensor} in the store"),
        || async { stored(data_dir, sensor).ok().filter(|rows| rows.len() >= n) },
    )
    .await
}

/// The value of a Prometheus sample line (`name{labels} value`), if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// The minimal registry from the foundation issue, as written.
pub const MINIMAL_REGISTRY: &str = r#"[[sensor]]
id = "fl-test-01"
kind = "flood_gauge"
gateway = "gw-test"
name = "Test gauge"
district = "Dumai Kota"
lat = 1.6731
lon = 101.4498
owner = "pupr"
public = true
thresholds = { siaga3 = 150, siaga2 = 200, siaga1 = 250 }
"#;

/// Now plus `offset_s` seconds, whole seconds, RFC 3339 UTC.
pub fn now_rfc3339(offset_s: i64) -> String {
    let now = Timestamp::now().millis() / 1000 * 1000;
    Timestamp(now + offset_s * 1000).to_rfc3339()
}

/// An envelope JSON with the given readings (JSON objects).
pub fn envelope(gw: &str, seq: u64, readings: &[String]) -> String {
    format!(
        r#"{{"v":1,"gw":"{gw}","seq":{seq},"sent":"{}","readings":[{}]}}"#,
        now_rfc3339(0),
        readings.join(",")
    )
}

/// A `fl-test-01` water-level reading JSON.
pub fn level(ts: &str, cm: f64) -> String {
    format!(r#"{{"sensor":"fl-test-01","ts":"{ts}","values":{{"water_level_cm":{cm}}}}}"#)
}

/// Starts `pantau up` with the minimal registry plus `extra` flags, then
/// registers `gw-test` while it runs.
pub async fn minimal(dir: &Path, extra: &[&str]) -> Result<(Pantau, GatewayCreds)> {
    minimal_with(dir, extra, None).await
}

/// [`minimal`] with the process's open-file limit set to `nofile`.
pub async fn minimal_with(
    dir: &Path,
    extra: &[&str],
    nofile: Option<u64>,
) -> Result<(Pantau, GatewayCreds)> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let reg = dir.join("registry.toml");
    std::fs::write(&reg, MINIMAL_REGISTRY)?;
    let mut args = vec!["--registry", reg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let p = Pantau::start_with(&data, free_addr(), free_addr(), &args, nofile).await?;
    // Registered while the server runs: it must be accepted without a restart.
    let creds = gateway_add(&data, "gw-test")?;
    Ok((p, creds))
}

/// Publishes an envelope as the gateway with `mosquitto_pub` over TLS at
/// QoS 1 and requires it to succeed (PUBACK received).
pub fn publish_ok(p: &Pantau, creds: &GatewayCreds, env: &str) -> Result<()> {
    let topic = format!("pantau/v1/gw/{}/telemetry", creds.gateway);
    let out = mosquitto_pub(
        p.mqtt,
        Some(&creds.ca_file),
        &creds.gateway,
        &creds.password,
        &topic,
        env,
    )?;
    anyhow::ensure!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A running `pantau-agent` fed through its standard input (`stdin` source).
/// It runs in a directory of its own (`DIR/NAME/`), so a relative spool path
/// in its configuration stays there and survives restarts.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    /// Its working directory.
    pub dir: PathBuf,
    config: PathBuf,
    /// Where its log goes (appended across restarts).
    pub log: PathBuf,
    /// Its clock's offset from the machine's (libfaketime), if any.
    clock: Option<String>,
}

impl Agent {
    /// Writes `config` to `dir/NAME.toml` and starts the agent with it.
    pub fn start(dir: &Path, name: &str, config: &str) -> Result<Self> {
        Self::start_with_clock(dir, name, config, None)
    }

    /// Like [`Agent::start`], with the agent's wall clock off by `offset`
    /// (`"+1h"`, `"-1h"`: Debian's `faketime`, monotonic time left alone)
    /// — a gateway whose clock is wrong.
    pub fn start_with_clock(
        dir: &Path,
        name: &str,
        config: &str,
        offset: Option<&str>,
    ) -> Result<Self> {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config)?;
        let work = dir.join(name);
        std::fs::create_dir_all(&work)?;
        let log = dir.join(format!("{name}.log"));
        let clock = offset.map(str::to_owned);
        let (child, stdin) = Self::spawn(&work, &cfg, &log, clock.as_deref())?;
        Ok(Self {
            child,
            stdin,
            dir: work,
            config: cfg,
            log,
            clock,
        })
    }

    fn spawn(
        work: &Path,
        cfg: &Path,
        log: &Path,
        clock: Option<&str>,
    ) -> Result<(Child, Option<std::process::ChildStdin>)> {
        let mut cmd = match clock {
            Some(offset) => {
                let mut c = Command::new("faketime");
                c.args(["-f", offset])
                    .arg(binary("pantau-agent"))
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
                c
            }
            None => Command::new(binary("pantau-agent")),
        };
        let mut child = cmd
            .arg("--config")
            .arg(cfg)
            .current_dir(work)
            .env(
                "RUST_LOG",
                std::env::var("PANTAU_TEST_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)?,
            )
            .spawn()
            .context("spawn pantau-agent")?;
        let stdin = child.stdin.take();
        Ok((child, stdin))
    }

    /// Sends JSON lines to the agent.
    pub fn send(&mut self, lines: &str) -> Result<()> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().context("agent stdin closed")?;
        stdin.write_all(lines.as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, then waits for the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdin = None;
    }

    /// Starts the agent again with the same configuration and directory.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let (child, stdin) =
            Self::spawn(&self.dir, &self.config, &self.log, self.clock.as_deref())?;
        self.child = child;
        self.stdin = stdin;
        Ok(())
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A live-feed client that asks for `path` with a 2 KiB receive window and
/// never reads: a stalled subscriber.
pub async fn stalled_client(http: SocketAddr, path: &str) -> Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(2048)?;
    let mut stream = socket.connect(http).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: pantau\r\n\r\n").as_bytes())
        .await?;
    Ok(stream)
}

/// Resident memory of a process in KiB (Linux `/proc`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One JSON line for the agent's stdin source.
pub fn agent_line(sensor: &str, ts_ms: i64, field: &str, value: f64) -> String {
    format!(
        "{{\"sensor\":\"{sensor}\",\"ts\":\"{}\",\"values\":{{\"{field}\":{value}}}}}\n",
        Timestamp(ts_ms).to_rfc3339()
    )
}

/// Waits (30 s at most) until `url` answers 2xx; otherwise fails with the
/// end of the process's `log` (backtrace frames left out).
async fn serving(url: &str, what: &str, log: &Path) -> Result<()> {
    let up = eventually(Duration::from_secs(30), what, || async move {
        reqwest::get(url)
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(drop)
    })
    .await;
    if let Err(e) = up {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("   "))
            .rev()
            .take(12)
            .collect();
        bail!(
            "{e}; its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// A running `pantau ingest` worker.
#[derive(Debug)]
pub struct IngestWorker {
    child: Child,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its HTTP address (/metrics, /healthz).
    pub http: SocketAddr,
    /// Its log.
    pub log: PathBuf,
}

impl IngestWorker {
    /// Starts `pantau ingest --broker BROKER --worker-id ID ...` and waits
    /// for its /healthz.
    pub async fn start(
        data_dir: &Path,
        broker: &str,
        worker_id: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_env(data_dir, broker, worker_id, extra, &[]).await
    }

    /// [`IngestWorker::start`] with environment variables (credentials).
    pub async fn start_env(
        data_dir: &Path,
        broker: &str,
        worker_id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let http = free_addr();
        let log = data_dir.with_extension(format!("{}.log", http.port()));
        let child = Command::new(binary("pantau"))
            .args([
                "ingest",
                "--broker",
                broker,
                "--worker-id",
                worker_id,
                "--data-dir",
            ])
            .arg(data_dir)
            .args(["--http-listen", &http.to_string()])
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawn pantau ingest")?;
        let w = Self {
            child,
            data_dir: data_dir.to_owned(),
            http,
            log,
        };
        serving(
            &format!("http://{http}/healthz"),
            "pantau ingest /healthz",
            &w.log,
        )
        .await?;
        Ok(w)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.http))
            .await?
            .text()
            .await?)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and waits (bounded) for the exit.
    pub async fn terminate(&mut self) -> Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let child = &mut self.child;
        eventually(Duration::from_secs(20), "pantau ingest to exit", || {
            std::future::ready(child.try_wait().ok().flatten().map(drop))
        })
        .await
    }
}

impl Drop for IngestWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `pantau token create --scopes SCOPES` on the shared state `url`
/// (`PANTAU_STATE`); the token's secret.
pub fn token_create_shared(url: &str, name: &str, scopes: &str) -> Result<String> {
    let out = Command::new(binary("pantau"))
        .args(["token", "create", "--name", name, "--scopes", scopes])
        .env("PANTAU_STATE", url)
        .output()?;
    if !out.status.success() {
        bail!("token create: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["token"].as_str().unwrap_or_default().to_owned())
}

/// A running `pantau api` replica.
#[derive(Debug)]
pub struct ApiReplica {
    child: Child,
    /// Its cache directory.
    pub data_dir: PathBuf,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Its log.
    pub log: PathBuf,
    args: Vec<String>,
}

impl ApiReplica {
    /// Starts `pantau api --broker BROKER --replica-id ID --http-listen
    /// ADDR ...` (on a free port, or `http` when given) and waits for its
    /// /readyz.
    pub async fn start(
        data_dir: &Path,
        broker: &str,
        replica_id: &str,
        http: Option<SocketAddr>,
        extra: &[&str],
    ) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let http = http.unwrap_or_else(free_addr);
        let log = data_dir.with_extension(format!("{}.log", http.port()));
        let mut args: Vec<String> = ["api", "--broker", broker, "--replica-id", replica_id]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--data-dir".into(), data_dir.display().to_string()]);
        args.extend(["--http-listen".into(), http.to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(binary("pantau"))
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawn pantau api")?;
        let r = Self {
            child,
            data_dir: data_dir.to_owned(),
            http,
            log,
            args,
        };
        r.wait_ready().await?;
        Ok(r)
    }

    async fn wait_ready(&self) -> Result<()> {
        serving(&self.url("/readyz"), "pantau api /readyz", &self.log).await
    }

    /// Starts it again with the same arguments (after [`ApiReplica::kill`]).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.child = Command::new(binary("pantau"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().append(true).open(&self.log)?)
            .spawn()
            .context("spawn pantau api")?;
        self.wait_ready().await
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> Result<String> {
        Ok(reqwest::get(self.url("/metrics")).await?.text().await?)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ApiReplica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every (sensor, ts) key in an embedded store, with how often it occurs.
pub fn stored_keys(data_dir: &Path) -> Result<Vec<(String, i64)>> {
    let conn = store_conn(data_dir)?;
    let mut out = Vec::new();
    for table in raw_partitions(&conn)? {
        let mut stmt = conn.prepare(&format!("SELECT sensor, ts FROM {table}"))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        for row in rows {
            out.push(row?);
        }
    }
    Ok(out)
}

/// The (ts, value) points of the first series of a history API answer.
pub fn history_points(v: &Value) -> Vec<(i64, f64)> {
    v["series"][0]["points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["ts"].as_i64()?, p["value"].as_f64()?)))
        .collect()
}
