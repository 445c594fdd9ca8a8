//! Real third-party services for the tests (DESIGN.md §7), each started on
//! free loopback ports with a temporary data directory, polled until ready
//! with a deadline, and killed on drop. Never a system service.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{eventually, free_addr};
use pantau_broker::tls::TlsFiles;

fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    Ok(cmd
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()?)
}

async fn http_ready(url: &str, what: &str) -> Result<()> {
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(30), what, || {
        let (client, url) = (client.clone(), url.to_owned());
        async move {
            client
                .get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(drop)
        }
    })
    .await
}

/// InfluxDB 1.x (`influxd` from Debian's `influxdb`).
#[derive(Debug)]
pub struct Influx {
    child: Option<Child>,
    /// HTTP address.
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Influx {
    /// Starts influxd under `dir` (created), optionally with auth enabled.
    pub async fn start(dir: &Path, auth: bool) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let addr = free_addr();
        let rpc = free_addr();
        let conf = dir.join("influxdb.conf");
        std::fs::write(
            &conf,
            format!(
                r#"reporting-disabled = true
bind-address = "{rpc}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[http]
  bind-address = "{addr}"
  auth-enabled = {auth}
  log-enabled = false
"#,
                d = dir.display()
            ),
        )?;
        let mut me = Self {
            child: None,
            addr,
            dir: dir.to_owned(),
        };
        me.restart().await?;
        Ok(me)
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its process id (while running).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the server on the same port and data and waits for /ping.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        let log = self.dir.join("influxd.log");
        let child = spawn_logged(
            Command::new(which("influxd")?)
                .arg("-config")
                .arg(self.dir.join("influxdb.conf")),
            &log,
        )
        .context("start influxd (install Debian's influxdb)")?;
        self.child = Some(child);
        let client = reqwest::Client::new();
        let url = format!("{}/ping", self.url());
        eventually(Duration::from_secs(30), "influxd /ping", || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().as_u16() == 204)
                    .map(drop)
            }
        })
        .await
    }

    /// Points per sensor of `field` in `measurement` of database `pantau`
    /// (InfluxDB keeps one point per series and time, so a count equal to
    /// what was sent means none lost and none extra).
    pub async fn counts_by_sensor(
        &self,
        measurement: &str,
        field: &str,
    ) -> Result<std::collections::BTreeMap<String, u64>> {
        let v = self
            .query(
                Some("pantau"),
                &format!("SELECT count({field}) FROM {measurement} GROUP BY sensor"),
                None,
            )
            .await?;
        let mut out = std::collections::BTreeMap::new();
        for s in v["results"][0]["series"].as_array().into_iter().flatten() {
            out.insert(
                s["tags"]["sensor"].as_str().unwrap_or_default().to_owned(),
                s["values"][0][1].as_u64().unwrap_or(0),
            );
        }
        Ok(out)
    }

    /// Runs InfluxQL (POST /query) and returns the JSON.
    pub async fn query(
        &self,
        db: Option<&str>,
        q: &str,
        auth: Option<(&str, &str)>,
    ) -> Result<serde_json::Value> {
        let mut params = vec![("q", q.to_owned()), ("epoch", "ms".to_owned())];
        if let Some(db) = db {
            params.push(("db", db.to_owned()));
        }
        let mut req = reqwest::Client::new()
            .post(format!("{}/query", self.url()))
            .form(&params);
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        Ok(req.send().await?.json().await?)
    }

    /// Writes raw line protocol (v1 /write, precision ms).
    pub async fn write(&self, db: &str, lines: &str) -> Result<()> {
        let r = reqwest::Client::new()
            .post(format!("{}/write?db={db}&precision=ms", self.url()))
            .body(lines.to_owned())
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("write failed: {} {}", r.status(), r.text().await?);
        }
        Ok(())
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// VictoriaMetrics (Debian's `victoria-metrics`).
#[derive(Debug)]
pub struct Victoria {
    child: Child,
    /// HTTP address.
    pub addr: SocketAddr,
}

impl Victoria {
    /// Starts VictoriaMetrics under `dir`.
    pub async fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let addr = free_addr();
        let child = spawn_logged(
            Command::new(which("victoria-metrics")?)
                .arg(format!("-storageDataPath={}", dir.join("data").display()))
                .arg(format!("-httpListenAddr={addr}"))
                .arg("-retentionPeriod=100y"),
            &dir.join("victoria.log"),
        )
        .context("start victoria-metrics (install Debian's victoria-metrics)")?;
        let me = Self { child, addr };
        http_ready(&format!("{}/health", me.url()), "victoria-metrics /health").await?;
        Ok(me)
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every stored series, via `/api/v1/export` after a flush.
    pub async fn export(&self) -> Result<Vec<serde_json::Value>> {
        let client = reqwest::Client::new();
        client
            .get(format!("{}/internal/force_flush", self.url()))
            .send()
            .await?;
        let text = client
            .get(format!("{}/api/v1/export", self.url()))
            .query(&[("match[]", "{__name__=~\".+\"}")])
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

impl Drop for Victoria {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mosquitto 2.0 on loopback, anonymous, no persistence; plain MQTT or TLS.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    /// Listener address.
    pub addr: SocketAddr,
}

impl Mosquitto {
    /// Mosquitto with its dynamic-security plugin (Debian's
    /// `mosquitto_dynamic_security.so`), anonymous access off, its config
    /// made by `mosquitto_ctrl dynsec init` with admin `admin` /
    /// `admin_password`.
    pub async fn start_dynsec(dir: &Path, admin_password: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let plugin = [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib",
        ]
        .iter()
        .map(|d| Path::new(d).join("mosquitto_dynamic_security.so"))
        .find(|p| p.exists())
        .context("no mosquitto_dynamic_security.so (install Debian's mosquitto)")?;
        let json = dir.join("dynamic-security.json");
        let out = Command::new(which("mosquitto_ctrl")?)
            .args(["dynsec", "init"])
            .arg(&json)
            .args(["admin", admin_password])
            .output()
            .context("run mosquitto_ctrl (install Debian's mosquitto-clients)")?;
        if !out.status.success() {
            bail!(
                "mosquitto_ctrl dynsec init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let addr = free_addr();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nuser root\nallow_anonymous false\npersistence false\nmax_queued_messages 0\nlog_dest stderr\nplugin {}\nplugin_opt_config_file {}\n",
                addr.port(),
                plugin.display(),
                json.display()
            ),
        )?;
        let child = spawn_logged(
            Command::new(which("mosquitto")?).arg("-c").arg(&conf),
            &dir.join("mosquitto.log"),
        )?;
        let me = Self { child, addr };
        eventually(Duration::from_secs(10), "mosquitto to listen", || async {
            std::net::TcpStream::connect(addr).ok().map(drop)
        })
        .await?;
        Ok(me)
    }
}

/// The platform's dev CA and a server certificate for `localhost` under
/// `data_dir/tls` (generated by Pantau's own code when missing), for a
/// third-party TLS listener that Pantau's agents and tests trust.
pub fn dev_tls(data_dir: &Path) -> Result<TlsFiles> {
    let files = TlsFiles::in_data_dir(data_dir);
    pantau_broker::tls::server_config(&files, &[])?;
    Ok(files)
}

impl Mosquitto {
    /// Starts mosquitto under `dir` with a plain listener.
    pub async fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, None, free_addr()).await
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts mosquitto under `dir` with a TLS listener.
    pub async fn start_tls(dir: &Path, tls: &TlsFiles) -> Result<Self> {
        Self::start_with(dir, Some(tls), free_addr()).await
    }

    /// Starts mosquitto with a TLS listener on a given address (a restart).
    pub async fn start_tls_on(dir: &Path, tls: &TlsFiles, addr: SocketAddr) -> Result<Self> {
        Self::start_with(dir, Some(tls), addr).await
    }

    async fn start_with(dir: &Path, tls: Option<&TlsFiles>, addr: SocketAddr) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("mosquitto.conf");
        let mut text = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nlog_dest stderr\n",
            addr.port()
        );
        if let Some(tls) = tls {
            // Stay root so the key files of a temporary directory stay readable.
            text.push_str(&format!(
                "user root\ncafile {}\ncertfile {}\nkeyfile {}\n",
                tls.ca_cert.display(),
                tls.server_cert.display(),
                tls.server_key.display()
            ));
        }
        std::fs::write(&conf, text)?;
        let bin = which("mosquitto").or_else(|_| {
            Path::new("/usr/sbin/mosquitto")
                .exists()
                .then(|| PathBuf::from("/usr/sbin/mosquitto"))
                .context("mosquitto not found")
        })?;
        let child = spawn_logged(
            Command::new(bin).arg("-c").arg(&conf),
            &dir.join("mosquitto.log"),
        )?;
        let me = Self { child, addr };
        eventually(
            Duration::from_secs(15),
            "mosquitto to listen",
            || async move { tokio::net::TcpStream::connect(addr).await.ok().map(drop) },
        )
        .await?;
        Ok(me)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Result<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} not found on PATH")
}

/// PostgreSQL (Debian's `postgresql`, version 15 on bookworm): a cluster of
/// its own made by `initdb` in a temporary directory, password
/// authentication (SCRAM) on a free loopback port, a database `pantau`
/// owned by role `pantau`. Run as the `postgres` system user when the
/// tests run as root (the server refuses root).
#[derive(Debug)]
pub struct Postgres {
    child: Option<Child>,
    /// TCP address.
    pub addr: SocketAddr,
    /// Password of role `pantau`.
    pub password: String,
    bin: PathBuf,
    root: tempfile::TempDir,
    /// TLS only.
    tls: bool,
}

impl Postgres {
    /// Makes and starts the cluster.
    pub async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// A cluster that takes only TLS connections (`hostssl` lines alone in
    /// its pg_hba.conf), with `tls`'s server certificate (for localhost).
    pub async fn start_tls(tls: &TlsFiles) -> Result<Self> {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<&TlsFiles>) -> Result<Self> {
        let bin = pg_bin()?;
        let root = tempfile::Builder::new().prefix("pantau-pg-").tempdir()?;
        let password = format!("pw-{}", std::process::id());
        let data = root.path().join("data");
        std::fs::write(root.path().join("pwfile"), &password)?;
        if let Some(tls) = tls {
            std::fs::copy(&tls.server_cert, root.path().join("server.pem"))?;
            let key = root.path().join("server-key.pem");
            std::fs::copy(&tls.server_key, &key)?;
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            std::fs::write(
                root.path().join("pg_hba.conf"),
                "hostssl all all 127.0.0.1/32 scram-sha-256\n",
            )?;
        }
        let me = Self {
            child: None,
            addr: free_addr(),
            password,
            bin,
            root,
            tls: tls.is_some(),
        };
        if as_root() {
            // The postgres user must reach and own the cluster's files.
            std::fs::set_permissions(
                me.root.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )?;
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(me.root.path())
                .status()?
                .success();
            if !ok {
                bail!("chown of the PostgreSQL test cluster failed");
            }
        }
        let out = me
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "pantau", "--auth=scram-sha-256", "--no-sync"])
            .arg(format!(
                "--pwfile={}",
                me.root.path().join("pwfile").display()
            ))
            .output()
            .context("run initdb (install Debian's postgresql)")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut me = me;
        me.restart().await?;
        let out = Command::new(me.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &me.addr.port().to_string()])
            .args(["-U", "pantau", "pantau"])
            .env("PGPASSWORD", &me.password)
            .output()?;
        if !out.status.success() {
            bail!("createdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(me)
    }

    fn command(&self, program: &str) -> Command {
        if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
            c
        } else {
            Command::new(self.bin.join(program))
        }
    }

    /// The database's address, with the password.
    pub fn url(&self) -> String {
        format!(
            "postgres://pantau:{}@127.0.0.1:{}/pantau",
            self.password,
            self.addr.port()
        )
    }

    /// Stops the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the server on the same port and data; waits until it
    /// accepts connections.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        let log = self.root.path().join("postgres.log");
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.root.path().join("data"))
            .args(["-p", &self.addr.port().to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.root.path().display()
            ))
            .args(["-c", "max_connections=200"]);
        if self.tls {
            let at = |f: &str| self.root.path().join(f).display().to_string();
            cmd.args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!("ssl_cert_file={}", at("server.pem")))
                .arg("-c")
                .arg(format!("ssl_key_file={}", at("server-key.pem")))
                .arg("-c")
                .arg(format!("hba_file={}", at("pg_hba.conf")));
        }
        self.child = Some(spawn_logged(&mut cmd, &log).context("start postgres")?);
        let (ready, port) = (self.bin.join("pg_isready"), self.addr.port().to_string());
        eventually(Duration::from_secs(30), "postgres ready", || {
            let ok = Command::new(&ready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port])
                .status()
                .is_ok_and(|s| s.success());
            async move { ok.then_some(()) }
        })
        .await
    }

    /// Runs SQL with psql; returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .args([
                "-U",
                "pantau",
                "-d",
                "pantau",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", &self.password)
            .output()?;
        if !out.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn as_root() -> bool {
    // The tests run as root in CI; `id -u` avoids unsafe libc calls.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// The newest installed PostgreSQL's binaries (`/usr/lib/postgresql/N/bin`).
fn pg_bin() -> Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql (install Debian's postgresql)")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

/// HAProxy (Debian's `haproxy`) in front of HTTP backends: round robin,
/// each backend checked on `/readyz` every 500 ms, a request to a dead
/// backend retried on another (`option redispatch`), long timeouts for
/// live streams.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    /// Frontend address.
    pub addr: SocketAddr,
}

impl Haproxy {
    /// Starts it under `dir` for `backends`; waits until the frontend
    /// answers `/healthz` through a backend.
    pub async fn start(dir: &Path, backends: &[SocketAddr]) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let addr = free_addr();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("  server r{i} {b} check inter 500ms fall 2 rise 1\n"))
            .collect();
        let conf = dir.join("haproxy.cfg");
        std::fs::write(
            &conf,
            format!(
                "global\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 120s\n  timeout server 120s\n  timeout tunnel 1h\n  retries 3\n  option redispatch\nfrontend api\n  bind {addr}\n  default_backend replicas\nbackend replicas\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n{servers}"
            ),
        )?;
        let out = Command::new(which("haproxy")?)
            .arg("-c")
            .arg("-f")
            .arg(&conf)
            .output()
            .context("run haproxy (install Debian's haproxy)")?;
        if !out.status.success() {
            bail!("haproxy -c: {}", String::from_utf8_lossy(&out.stderr));
        }
        let child = spawn_logged(
            Command::new(which("haproxy")?)
                .arg("-db")
                .arg("-f")
                .arg(&conf),
            &dir.join("haproxy.log"),
        )?;
        let me = Self { child, addr };
        http_ready(&format!("http://{addr}/healthz"), "haproxy frontend").await?;
        Ok(me)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
