//! The shared state store of a scaled deployment: a PostgreSQL database
//! that every API replica, ingest worker and CLI call uses, so a token
//! revoked through one replica is refused by all of them on the next
//! request. The schema is brought up to date at connect by numbered
//! migrations, serialized between processes that start together by an
//! advisory lock.
//!
//! Two connections per process, as with SQLite: one for writes, one for
//! reads (a token check never queues behind a slow write). A connection
//! found closed (the server restarted, a network cut) is replaced on the
//! next call; the call that found it fails with the error. With a CA
//! (`--state-ca`) the connection is TLS, the server's certificate
//! verified; off loopback without one, a warning says it is not encrypted.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use pantau_model::{GatewayId, SensorSpec, Timestamp};
use postgres::config::Host;
use postgres::{Client, Config, NoTls};

use crate::{equal, hash, new_token, ApiToken, Error, GatewayRecord, Result};

/// Serializes migrations of processes that start at the same time
/// (`pg_advisory_xact_lock` key: "pantau" in ASCII).
const MIGRATION_LOCK: i64 = 0x70_61_6e_74_61_75;

/// The migrations, in order. Each runs once, in a transaction, and is
/// recorded in `pantau_migrations`. Never edit a released one: add the next.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "platform state: gateways, API tokens, sensors, client certificates, revocations",
        "CREATE TABLE gateways (
         id TEXT PRIMARY KEY,
         token_sha256 TEXT NOT NULL,
         created_ms BIGINT NOT NULL
     );
     CREATE TABLE api_tokens (
         name TEXT PRIMARY KEY,
         token_sha256 TEXT NOT NULL UNIQUE,
         scopes TEXT NOT NULL,
         created_ms BIGINT NOT NULL,
         revoked_ms BIGINT
     );
     CREATE SEQUENCE sensor_revision;
     CREATE TABLE sensors (
         id TEXT PRIMARY KEY,
         spec TEXT NOT NULL,
         updated_ms BIGINT NOT NULL,
         updated_by TEXT NOT NULL,
         revision BIGINT NOT NULL DEFAULT nextval('sensor_revision')
     );
     CREATE TABLE gateway_certs (
         serial TEXT PRIMARY KEY,
         gateway TEXT NOT NULL,
         revoked BOOLEAN NOT NULL DEFAULT false
     );
     CREATE INDEX gateway_certs_by_gateway ON gateway_certs (gateway);
     CREATE TABLE revocations (
         id BIGSERIAL PRIMARY KEY,
         gateway TEXT NOT NULL,
         at_ms BIGINT NOT NULL
     );",
    ),
    (
        2,
        "leases: one holder at a time for a named duty, with a fencing epoch",
        "CREATE TABLE leases (
             name TEXT PRIMARY KEY,
             holder TEXT NOT NULL,
             expires_ms BIGINT NOT NULL,
             epoch BIGINT NOT NULL
         );",
    ),
    (
        3,
        "alerts: alerts and their timelines, trackers, rules, webhooks and their outbox, silences",
        "CREATE TABLE alerts (
             id BIGSERIAL PRIMARY KEY,
             rule TEXT NOT NULL,
             rule_name TEXT NOT NULL,
             sensor TEXT NOT NULL,
             kind TEXT NOT NULL,
             district TEXT NOT NULL,
             public BOOLEAN NOT NULL,
             state TEXT NOT NULL,
             level BIGINT NOT NULL,
             peak BIGINT NOT NULL,
             level_label TEXT NOT NULL,
             since_ms BIGINT NOT NULL,
             changed_ms BIGINT NOT NULL,
             resolved_ms BIGINT,
             resolved_by TEXT,
             ack_by TEXT,
             ack_ms BIGINT,
             assignee TEXT,
             late BOOLEAN NOT NULL DEFAULT false
         );
         CREATE INDEX alerts_open ON alerts (state) WHERE state <> 'resolved';
         CREATE INDEX alerts_sensor ON alerts (sensor);
         CREATE INDEX alerts_changed ON alerts (changed_ms DESC, id DESC);
         CREATE TABLE alert_current (
             rule TEXT NOT NULL,
             sensor TEXT NOT NULL,
             alert BIGINT NOT NULL,
             PRIMARY KEY (rule, sensor)
         );
         CREATE TABLE alert_events (
             id BIGSERIAL PRIMARY KEY,
             alert BIGINT NOT NULL,
             change TEXT NOT NULL,
             level BIGINT NOT NULL,
             from_level BIGINT NOT NULL,
             at_ms BIGINT NOT NULL,
             recorded_ms BIGINT NOT NULL,
             late BOOLEAN NOT NULL,
             actor TEXT,
             note TEXT
         );
         CREATE INDEX alert_events_alert ON alert_events (alert, id);
         CREATE INDEX alert_events_recorded ON alert_events (recorded_ms);
         CREATE TABLE alert_trackers (
             rule TEXT NOT NULL,
             sensor TEXT NOT NULL,
             state TEXT NOT NULL,
             PRIMARY KEY (rule, sensor)
         );
         CREATE TABLE alert_rules (
             id TEXT PRIMARY KEY,
             spec TEXT NOT NULL,
             updated_ms BIGINT NOT NULL,
             updated_by TEXT NOT NULL
         );
         CREATE TABLE alert_webhooks (
             id TEXT PRIMARY KEY,
             url TEXT NOT NULL,
             secret TEXT NOT NULL,
             kinds TEXT NOT NULL,
             districts TEXT NOT NULL,
             min_level BIGINT NOT NULL,
             created_by TEXT NOT NULL,
             created_ms BIGINT NOT NULL,
             last_success_ms BIGINT,
             last_failure_ms BIGINT,
             last_error TEXT,
             consecutive_errors BIGINT NOT NULL DEFAULT 0,
             delivered BIGINT NOT NULL DEFAULT 0
         );
         CREATE TABLE alert_outbox (
             id BIGSERIAL PRIMARY KEY,
             webhook TEXT NOT NULL,
             msg_id TEXT NOT NULL,
             body TEXT NOT NULL,
             queued_ms BIGINT NOT NULL
         );
         CREATE INDEX alert_outbox_webhook ON alert_outbox (webhook, id);
         CREATE TABLE alert_silences (
             id BIGSERIAL PRIMARY KEY,
             spec TEXT NOT NULL,
             ends_ms BIGINT NOT NULL,
             cancelled_by TEXT,
             cancelled_ms BIGINT
         );",
    ),
];

/// The PostgreSQL state store.
pub(crate) struct Postgres {
    config: Config,
    transport: crate::pg_tls::Transport,
    /// `postgres://USER@HOST:PORT/DB`, never the password.
    place: String,
    writer: Mutex<Option<Client>>,
    reader: Mutex<Option<Client>>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The synchronous client blocks on its own runtime when it closes,
        // which panics on an async runtime's thread: close on a thread of
        // its own, wherever the last reference is dropped.
        let clients = (
            self.writer
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
            self.reader
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        if clients.0.is_some() || clients.1.is_some() {
            let _ = std::thread::spawn(move || drop(clients)).join();
        }
    }
}

impl Postgres {
    /// Connects, migrates, and keeps the connection for writes.
    pub(crate) fn connect(url: &str, ca: Option<&std::path::Path>) -> Result<Self> {
        let mut config = Config::from_str(url).map_err(|e| {
            // The parser's message never repeats the password.
            Error::BadAddress(format!("{}: {e}", crate::redact(url)))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_options().is_none() {
            // A query that hangs (a lock held elsewhere, a stalled server)
            // fails instead of holding a request or a CONNECT forever.
            config.options(
                "-c statement_timeout=10000 -c lock_timeout=5000 -c client_min_messages=warning",
            );
        }
        config.application_name("pantau");
        let place = place(&config);
        let transport = crate::pg_tls::Transport::choose(config.get_ssl_mode(), ca)?;
        if !transport.is_tls() && !config.get_hosts().iter().all(is_local) {
            tracing::warn!(
                state = %place,
                "The connection to PostgreSQL is not encrypted: give --state-ca (PANTAU_STATE_CA) and sslmode=require."
            );
        }
        let me = Self {
            config,
            transport,
            place,
            writer: Mutex::new(None),
            reader: Mutex::new(None),
        };
        me.with(&me.writer, |c| migrate(c).map_err(|e| me.err(e)))?;
        Ok(me)
    }

    pub(crate) fn place(&self) -> &str {
        &self.place
    }

    fn err(&self, source: postgres::Error) -> Error {
        Error::Postgres {
            place: self.place.clone(),
            source,
        }
    }

    /// Runs `f` on the connection in `slot`, (re)connecting first when it
    /// is missing or closed.
    fn with<T>(
        &self,
        slot: &Mutex<Option<Client>>,
        f: impl FnOnce(&mut Client) -> Result<T>,
    ) -> Result<T> {
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        let client = match guard.take() {
            Some(c) if !c.is_closed() => c,
            _ => match &self.transport {
                crate::pg_tls::Transport::Plain => self.config.connect(NoTls),
                crate::pg_tls::Transport::Tls(tls) => self.config.connect(tls.clone()),
            }
            .map_err(|e| self.err(e))?,
        };
        let client = guard.insert(client);
        let out = f(client);
        if client.is_closed() {
            *guard = None;
        }
        out
    }

    pub(crate) fn shared_write<T>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        off_worker(|| self.write(|c| f(c).map_err(|e| self.err(e))))
    }

    pub(crate) fn shared_read<T>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        off_worker(|| self.read(|c| f(c).map_err(|e| self.err(e))))
    }

    fn write<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        self.with(&self.writer, f)
    }

    fn read<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        self.with(&self.reader, f)
    }

    pub(crate) fn add_gateway(&self, id: &GatewayId) -> Result<String> {
        let token = new_token()?;
        let n = self.write(|c| {
            c.execute(
                "INSERT INTO gateways (id, token_sha256, created_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO NOTHING",
                &[&id.as_str(), &hash(&token), &Timestamp::now().millis()],
            )
            .map_err(|e| self.err(e))
        })?;
        if n == 0 {
            return Err(Error::DuplicateGateway(id.to_string()));
        }
        Ok(token)
    }

    pub(crate) fn add_gateways(&self, ids: &[GatewayId]) -> Result<Vec<String>> {
        self.write(|c| {
            let mut tx = c.transaction().map_err(|e| self.err(e))?;
            let insert = tx
                .prepare(
                    "INSERT INTO gateways (id, token_sha256, created_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (id) DO NOTHING",
                )
                .map_err(|e| self.err(e))?;
            let now = Timestamp::now().millis();
            let mut tokens = Vec::with_capacity(ids.len());
            for id in ids {
                let token = new_token()?;
                let n = tx
                    .execute(&insert, &[&id.as_str(), &hash(&token), &now])
                    .map_err(|e| self.err(e))?;
                if n == 0 {
                    // Dropping the transaction rolls it back.
                    return Err(Error::DuplicateGateway(id.to_string()));
                }
                tokens.push(token);
            }
            tx.commit().map_err(|e| self.err(e))?;
            Ok(tokens)
        })
    }

    pub(crate) fn rotate_gateway_token(&self, id: &GatewayId) -> Result<String> {
        let token = new_token()?;
        self.write(|c| {
            c.execute(
                "INSERT INTO gateways (id, token_sha256, created_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET token_sha256 = excluded.token_sha256",
                &[&id.as_str(), &hash(&token), &Timestamp::now().millis()],
            )
            .map_err(|e| self.err(e))
        })?;
        Ok(token)
    }

    pub(crate) fn rotate_gateway(&self, id: &GatewayId) -> Result<String> {
        let token = new_token()?;
        let n = self.write(|c| {
            c.execute(
                "UPDATE gateways SET token_sha256 = $2 WHERE id = $1",
                &[&id.as_str(), &hash(&token)],
            )
            .map_err(|e| self.err(e))
        })?;
        if n == 0 {
            return Err(Error::UnknownGateway(id.to_string()));
        }
        Ok(token)
    }

    pub(crate) fn revoke_gateway(&self, id: &GatewayId) -> Result<()> {
        self.write(|c| {
            let mut tx = c.transaction().map_err(|e| self.err(e))?;
            let n = tx
                .execute("DELETE FROM gateways WHERE id = $1", &[&id.as_str()])
                .map_err(|e| self.err(e))?;
            if n == 0 {
                return Err(Error::UnknownGateway(id.to_string()));
            }
            tx.execute(
                "UPDATE gateway_certs SET revoked = true WHERE gateway = $1",
                &[&id.as_str()],
            )
            .map_err(|e| self.err(e))?;
            tx.execute(
                "INSERT INTO revocations (gateway, at_ms) VALUES ($1, $2)",
                &[&id.as_str(), &Timestamp::now().millis()],
            )
            .map_err(|e| self.err(e))?;
            tx.commit().map_err(|e| self.err(e))
        })
    }

    pub(crate) fn record_gateway_cert(&self, gateway: &GatewayId, serial: &str) -> Result<()> {
        self.write(|c| {
            c.execute(
                "INSERT INTO gateway_certs (serial, gateway) VALUES ($1, $2)
                 ON CONFLICT (serial) DO UPDATE SET gateway = excluded.gateway",
                &[&serial, &gateway.as_str()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
        })
    }

    pub(crate) fn revoked_serials(&self) -> Result<HashSet<String>> {
        self.read(|c| {
            let rows = c
                .query("SELECT serial FROM gateway_certs WHERE revoked", &[])
                .map_err(|e| self.err(e))?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    pub(crate) fn revocations_after(&self, after: i64) -> Result<Vec<(i64, String)>> {
        self.read(|c| {
            let rows = c
                .query(
                    "SELECT id, gateway FROM revocations WHERE id > $1 ORDER BY id",
                    &[&after],
                )
                .map_err(|e| self.err(e))?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    pub(crate) fn last_revocation(&self) -> Result<i64> {
        self.read(|c| {
            c.query_one("SELECT coalesce(max(id), 0) FROM revocations", &[])
                .map(|r| r.get(0))
                .map_err(|e| self.err(e))
        })
    }

    pub(crate) fn verify_gateway(&self, id: &str, token: &str) -> Result<bool> {
        let stored: Option<String> = self.read(|c| {
            c.query_opt("SELECT token_sha256 FROM gateways WHERE id = $1", &[&id])
                .map(|r| r.map(|r| r.get(0)))
                .map_err(|e| self.err(e))
        })?;
        Ok(stored.is_some_and(|s| equal(s.as_bytes(), hash(token).as_bytes())))
    }

    pub(crate) fn gateway_exists(&self, id: &str) -> Result<bool> {
        self.read(|c| {
            c.query_opt("SELECT 1 FROM gateways WHERE id = $1", &[&id])
                .map(|r| r.is_some())
                .map_err(|e| self.err(e))
        })
    }

    pub(crate) fn was_revoked(&self, id: &str) -> Result<bool> {
        self.read(|c| {
            c.query_opt(
                "SELECT 1 FROM revocations WHERE gateway = $1 LIMIT 1",
                &[&id],
            )
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
        })
    }

    pub(crate) fn gateways(&self) -> Result<Vec<GatewayRecord>> {
        self.read(|c| {
            let rows = c
                .query("SELECT id, created_ms FROM gateways ORDER BY id", &[])
                .map_err(|e| self.err(e))?;
            Ok(rows
                .iter()
                .map(|r| GatewayRecord {
                    id: r.get(0),
                    created: Timestamp(r.get(1)),
                })
                .collect())
        })
    }

    pub(crate) fn create_token(&self, name: &str, scopes: &str) -> Result<String> {
        let token = new_token()?;
        let n = self.write(|c| {
            c.execute(
                "INSERT INTO api_tokens (name, token_sha256, scopes, created_ms)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
                &[&name, &hash(&token), &scopes, &Timestamp::now().millis()],
            )
            .map_err(|e| self.err(e))
        })?;
        if n == 0 {
            return Err(Error::DuplicateToken(name.to_owned()));
        }
        Ok(token)
    }

    pub(crate) fn revoke_token(&self, name: &str) -> Result<()> {
        let n = self.write(|c| {
            c.execute(
                "UPDATE api_tokens SET revoked_ms = coalesce(revoked_ms, $2) WHERE name = $1",
                &[&name, &Timestamp::now().millis()],
            )
            .map_err(|e| self.err(e))
        })?;
        if n == 0 {
            return Err(Error::UnknownToken(name.to_owned()));
        }
        Ok(())
    }

    pub(crate) fn verify_token(&self, token: &str) -> Result<Option<ApiToken>> {
        self.read(|c| {
            c.query_opt(
                "SELECT name, scopes, created_ms FROM api_tokens
                 WHERE token_sha256 = $1 AND revoked_ms IS NULL",
                &[&hash(token)],
            )
            .map(|r| {
                r.map(|r| ApiToken {
                    name: r.get(0),
                    scopes: r.get(1),
                    created: Timestamp(r.get(2)),
                    revoked: None,
                })
            })
            .map_err(|e| self.err(e))
        })
    }

    pub(crate) fn tokens(&self) -> Result<Vec<ApiToken>> {
        self.read(|c| {
            let rows = c
                .query(
                    "SELECT name, scopes, created_ms, revoked_ms FROM api_tokens ORDER BY name",
                    &[],
                )
                .map_err(|e| self.err(e))?;
            Ok(rows
                .iter()
                .map(|r| ApiToken {
                    name: r.get(0),
                    scopes: r.get(1),
                    created: Timestamp(r.get(2)),
                    revoked: r.get::<_, Option<i64>>(3).map(Timestamp),
                })
                .collect())
        })
    }

    pub(crate) fn save_sensor(&self, spec: &SensorSpec, by: &str) -> Result<()> {
        let json = serde_json::to_string(spec).map_err(|e| Error::BadSensor {
            place: self.place.clone(),
            id: spec.id.clone(),
            message: e.to_string(),
        })?;
        self.write(|c| {
            c.execute(
                "INSERT INTO sensors (id, spec, updated_ms, updated_by) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET spec = excluded.spec,
                     updated_ms = excluded.updated_ms, updated_by = excluded.updated_by,
                     revision = nextval('sensor_revision')",
                &[&spec.id, &json, &Timestamp::now().millis(), &by],
            )
            .map(drop)
            .map_err(|e| self.err(e))
        })
    }

    pub(crate) fn sensors(&self) -> Result<Vec<SensorSpec>> {
        let rows: Vec<(String, String)> = self.read(|c| {
            let rows = c
                .query("SELECT id, spec FROM sensors ORDER BY id", &[])
                .map_err(|e| self.err(e))?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })?;
        rows.into_iter()
            .map(|(id, json)| {
                serde_json::from_str(&json).map_err(|e| Error::BadSensor {
                    place: self.place.clone(),
                    id,
                    message: e.to_string(),
                })
            })
            .collect()
    }

    pub(crate) fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<Option<i64>> {
        // The database's clock, not the callers': holders on several
        // machines agree on when a lease ran out.
        self.write(|c| {
            c.query_opt(
                "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT AS ms)
                 INSERT INTO leases (name, holder, expires_ms, epoch)
                 SELECT $1, $2, now.ms + $3, 1 FROM now
                 ON CONFLICT (name) DO UPDATE SET
                     holder = excluded.holder,
                     expires_ms = excluded.expires_ms,
                     epoch = CASE WHEN leases.holder = excluded.holder THEN leases.epoch
                                  ELSE leases.epoch + 1 END
                 WHERE leases.holder = excluded.holder
                    OR leases.expires_ms < (SELECT ms FROM now)
                 RETURNING epoch",
                &[&name, &holder, &ttl_ms],
            )
            .map(|r| r.map(|r| r.get(0)))
            .map_err(|e| self.err(e))
        })
    }

    pub(crate) fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        self.write(|c| {
            c.execute(
                "UPDATE leases SET expires_ms = 0 WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
            .map(drop)
            .map_err(|e| self.err(e))
        })
    }

    pub(crate) fn sensors_revision(&self) -> Result<i64> {
        self.read(|c| {
            c.query_one("SELECT coalesce(max(revision), 0) FROM sensors", &[])
                .map(|r| r.get(0))
                .map_err(|e| self.err(e))
        })
    }
}

/// Applies the migrations this database lacks.
fn migrate(client: &mut Client) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS pantau_migrations (
             version INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             applied_ms BIGINT NOT NULL
         )",
    )?;
    let applied: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM pantau_migrations",
            &[],
        )?
        .get(0);
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if applied > newest {
        // A newer Pantau migrated it (a rolling upgrade in progress);
        // migrations only add, so this one keeps working.
        tracing::warn!(
            applied,
            known = newest,
            "The state database was migrated by a newer Pantau."
        );
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > applied) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO pantau_migrations (version, name, applied_ms) VALUES ($1, $2, $3)",
            &[version, name, &Timestamp::now().millis()],
        )?;
        tracing::info!(version, name, "State database migrated.");
    }
    tx.commit()
}

/// Runs blocking `f` where the synchronous client may block: through
/// `block_in_place` on a multi-threaded runtime's worker (the client
/// drives a runtime of its own, which panics inside another's worker),
/// directly elsewhere.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn is_local(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(h) => {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

/// `postgres://USER@HOST:PORT/DB` of a config, without the password.
fn place(c: &Config) -> String {
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let user = c.get_user().unwrap_or("");
    let db = c.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}
