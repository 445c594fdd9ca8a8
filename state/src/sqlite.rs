//! The embedded state store: `state.db`, SQLite in the data directory.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use pantau_model::{GatewayId, SensorSpec, Timestamp};
use rusqlite::{params, Connection, OptionalExtension};

use crate::{equal, hash, new_token, ApiToken, Error, GatewayRecord, Result};

/// The platform state database.
#[derive(Debug)]
pub(crate) struct Sqlite {
    /// Where the database lives, for error messages.
    path: PathBuf,
    /// The write connection; writes are rare and short.
    conn: Mutex<Connection>,
    /// A read connection of its own: with WAL a reader never waits for a
    /// writer, so MQTT authentication and API token checks do not queue
    /// behind a write's fsync on a slow disk.
    reader: Mutex<Connection>,
}

impl Sqlite {
    /// Opens (creating if needed) `state.db` in `data_dir`.
    pub(crate) fn open(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("state.db");
        let sql = |source| Error::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS gateways (
                 id TEXT PRIMARY KEY,
                 token_sha256 TEXT NOT NULL,
                 created_ms INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS api_tokens (
                 name TEXT PRIMARY KEY,
                 token_sha256 TEXT NOT NULL UNIQUE,
                 scopes TEXT NOT NULL,
                 created_ms INTEGER NOT NULL,
                 revoked_ms INTEGER
             );
             CREATE TABLE IF NOT EXISTS sensors (
                 id TEXT PRIMARY KEY,
                 spec TEXT NOT NULL,
                 updated_ms INTEGER NOT NULL,
                 updated_by TEXT NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS gateway_certs (
                 serial TEXT PRIMARY KEY,
                 gateway TEXT NOT NULL,
                 revoked INTEGER NOT NULL DEFAULT 0
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS leases (
                 name TEXT PRIMARY KEY,
                 holder TEXT NOT NULL,
                 expires_ms INTEGER NOT NULL,
                 epoch INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS revocations (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 gateway TEXT NOT NULL,
                 at_ms INTEGER NOT NULL
             );",
        )
        .map_err(sql)?;
        let reader = Connection::open(&path).map_err(sql)?;
        reader.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
        })
    }

    pub(crate) fn place(&self) -> String {
        self.path.display().to_string()
    }

    fn sql(&self, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new gateway and returns its token (shown only once).
    pub(crate) fn add_gateway(&self, id: &GatewayId) -> Result<String> {
        let token = new_token()?;
        let n = self
            .conn()
            .execute(
                "INSERT INTO gateways (id, token_sha256, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO NOTHING",
                params![id.as_str(), hash(&token), Timestamp::now().millis()],
            )
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(Error::DuplicateGateway(id.to_string()));
        }
        Ok(token)
    }

    /// Registers many new gateways in one transaction (fleet imports);
    /// returns their tokens in order. Fails whole if any id exists.
    pub(crate) fn add_gateways(&self, ids: &[GatewayId]) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.sql(e))?;
        let mut tokens = Vec::with_capacity(ids.len());
        {
            let mut insert = tx
                .prepare("INSERT INTO gateways (id, token_sha256, created_ms) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING")
                .map_err(|e| self.sql(e))?;
            let now = Timestamp::now().millis();
            for id in ids {
                let token = new_token()?;
                if insert
                    .execute(params![id.as_str(), hash(&token), now])
                    .map_err(|e| self.sql(e))?
                    == 0
                {
                    return Err(Error::DuplicateGateway(id.to_string()));
                }
                tokens.push(token);
            }
        }
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(tokens)
    }

    /// Registers a gateway or replaces its token; returns the new token.
    /// Used for the demo's own simulated gateways at each start.
    pub(crate) fn rotate_gateway_token(&self, id: &GatewayId) -> Result<String> {
        let token = new_token()?;
        self.conn()
            .execute(
                "INSERT INTO gateways (id, token_sha256, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET token_sha256 = excluded.token_sha256",
                params![id.as_str(), hash(&token), Timestamp::now().millis()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(token)
    }

    /// Replaces the token of a registered gateway; returns the new one.
    /// The old token stops working at once (a live connection that used it
    /// stays until it reconnects).
    pub(crate) fn rotate_gateway(&self, id: &GatewayId) -> Result<String> {
        let token = new_token()?;
        let n = self
            .conn()
            .execute(
                "UPDATE gateways SET token_sha256 = ?2 WHERE id = ?1",
                params![id.as_str(), hash(&token)],
            )
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(Error::UnknownGateway(id.to_string()));
        }
        Ok(token)
    }

    /// Revokes a gateway: its token and every client certificate issued to
    /// it stop working, and the revocation is recorded so that a running
    /// gatekeeper (in this process or another) disconnects it at once.
    pub(crate) fn revoke_gateway(&self, id: &GatewayId) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.sql(e))?;
        let n = tx
            .execute("DELETE FROM gateways WHERE id = ?1", [id.as_str()])
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(Error::UnknownGateway(id.to_string()));
        }
        tx.execute(
            "UPDATE gateway_certs SET revoked = 1 WHERE gateway = ?1",
            [id.as_str()],
        )
        .map_err(|e| self.sql(e))?;
        tx.execute(
            "INSERT INTO revocations (gateway, at_ms) VALUES (?1, ?2)",
            params![id.as_str(), Timestamp::now().millis()],
        )
        .map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))
    }

    /// Records the serial (hex) of a client certificate issued to `gateway`.
    pub(crate) fn record_gateway_cert(&self, gateway: &GatewayId, serial: &str) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO gateway_certs (serial, gateway) VALUES (?1, ?2)
                 ON CONFLICT (serial) DO UPDATE SET gateway = excluded.gateway",
                params![serial, gateway.as_str()],
            )
            .map(drop)
            .map_err(|e| self.sql(e))
    }

    /// Serials (hex) of every revoked client certificate.
    pub(crate) fn revoked_serials(&self) -> Result<std::collections::HashSet<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT serial FROM gateway_certs WHERE revoked = 1")
            .map_err(|e| self.sql(e))?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Revocations recorded after `after` (their id and gateway), oldest
    /// first; `last_revocation()` gives where to start.
    pub(crate) fn revocations_after(&self, after: i64) -> Result<Vec<(i64, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT id, gateway FROM revocations WHERE id > ?1 ORDER BY id")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// The id of the newest revocation (0 when none).
    pub(crate) fn last_revocation(&self) -> Result<i64> {
        self.reader()
            .query_row("SELECT coalesce(max(id), 0) FROM revocations", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.sql(e))
    }

    /// Whether `token` is the secret of gateway `id`.
    pub(crate) fn verify_gateway(&self, id: &str, token: &str) -> Result<bool> {
        let stored: Option<String> = self
            .reader()
            .query_row(
                "SELECT token_sha256 FROM gateways WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        Ok(stored.is_some_and(|s| equal(s.as_bytes(), hash(token).as_bytes())))
    }

    /// Whether a gateway is registered.
    pub(crate) fn gateway_exists(&self, id: &str) -> Result<bool> {
        self.reader()
            .query_row("SELECT 1 FROM gateways WHERE id = ?1", [id], |_| Ok(()))
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.sql(e))
    }

    pub(crate) fn was_revoked(&self, id: &str) -> Result<bool> {
        self.reader()
            .query_row(
                "SELECT 1 FROM revocations WHERE gateway = ?1 LIMIT 1",
                [id],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.sql(e))
    }

    /// Every registered gateway.
    pub(crate) fn gateways(&self) -> Result<Vec<GatewayRecord>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare("SELECT id, created_ms FROM gateways ORDER BY id")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(GatewayRecord {
                    id: r.get(0)?,
                    created: Timestamp(r.get(1)?),
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }
}

impl Sqlite {
    /// Creates an API token; returns the secret (shown only once).
    pub(crate) fn create_token(&self, name: &str, scopes: &str) -> Result<String> {
        let token = new_token()?;
        let n = self
            .conn()
            .execute(
                "INSERT INTO api_tokens (name, token_sha256, scopes, created_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO NOTHING",
                params![name, hash(&token), scopes, Timestamp::now().millis()],
            )
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(Error::DuplicateToken(name.to_owned()));
        }
        Ok(token)
    }

    /// Revokes a token by name; effective for the next request (the API
    /// looks tokens up on every request).
    pub(crate) fn revoke_token(&self, name: &str) -> Result<()> {
        let n = self
            .conn()
            .execute(
                "UPDATE api_tokens SET revoked_ms = coalesce(revoked_ms, ?2) WHERE name = ?1",
                params![name, Timestamp::now().millis()],
            )
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(Error::UnknownToken(name.to_owned()));
        }
        Ok(())
    }

    pub(crate) fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<Option<i64>> {
        let now = Timestamp::now().millis();
        self.conn()
            .query_row(
                "INSERT INTO leases (name, holder, expires_ms, epoch) VALUES (?1, ?2, ?3 + ?4, 1)
                 ON CONFLICT (name) DO UPDATE SET
                     holder = excluded.holder,
                     expires_ms = excluded.expires_ms,
                     epoch = CASE WHEN leases.holder = excluded.holder THEN leases.epoch
                                  ELSE leases.epoch + 1 END
                 WHERE leases.holder = excluded.holder OR leases.expires_ms < ?3
                 RETURNING epoch",
                params![name, holder, now, ttl_ms],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    pub(crate) fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE leases SET expires_ms = 0 WHERE name = ?1 AND holder = ?2",
                params![name, holder],
            )
            .map(drop)
            .map_err(|e| self.sql(e))
    }

    /// Every token (no secrets), ordered by name.
    pub(crate) fn tokens(&self) -> Result<Vec<ApiToken>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare("SELECT name, scopes, created_ms, revoked_ms FROM api_tokens ORDER BY name")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ApiToken {
                    name: r.get(0)?,
                    scopes: r.get(1)?,
                    created: Timestamp(r.get(2)?),
                    revoked: r.get::<_, Option<i64>>(3)?.map(Timestamp),
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// The live (not revoked) token with this secret, if any.
    pub(crate) fn verify_token(&self, token: &str) -> Result<Option<ApiToken>> {
        self.reader()
            .query_row(
                "SELECT name, scopes, created_ms FROM api_tokens
                 WHERE token_sha256 = ?1 AND revoked_ms IS NULL",
                [hash(token)],
                |r| {
                    Ok(ApiToken {
                        name: r.get(0)?,
                        scopes: r.get(1)?,
                        created: Timestamp(r.get(2)?),
                        revoked: None,
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql(e))
    }
}

/// Sensors registered or changed over the admin API. They overlay the
/// registry file: a sensor here replaces the file's sensor of that id.
impl Sqlite {
    /// Stores a sensor (replacing an earlier record of its id), noting who
    /// changed it.
    pub(crate) fn save_sensor(&self, spec: &SensorSpec, by: &str) -> Result<()> {
        let json = serde_json::to_string(spec).map_err(|e| Error::BadSensor {
            place: self.path.display().to_string(),
            id: spec.id.clone(),
            message: e.to_string(),
        })?;
        self.conn()
            .execute(
                "INSERT INTO sensors (id, spec, updated_ms, updated_by) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET spec = excluded.spec,
                     updated_ms = excluded.updated_ms, updated_by = excluded.updated_by",
                params![spec.id, json, Timestamp::now().millis(), by],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Every stored sensor, ordered by id.
    pub(crate) fn sensors(&self) -> Result<Vec<SensorSpec>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare("SELECT id, spec FROM sensors ORDER BY id")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, json) = row.map_err(|e| self.sql(e))?;
            out.push(serde_json::from_str(&json).map_err(|e| Error::BadSensor {
                place: self.path.display().to_string(),
                id,
                message: e.to_string(),
            })?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod reader_tests {
    use super::*;

    #[test]
    fn reads_never_wait_for_a_write_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(Sqlite::open(dir.path()).unwrap());
        let id = GatewayId::new("gw-a").unwrap();
        let token = db.add_gateway(&id).unwrap();
        // A write holds the writer (as a commit on a slow disk would).
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let writer = {
            let db = db.clone();
            std::thread::spawn(move || {
                let _writing = db.conn();
                held_tx.send(()).unwrap();
                let _ = release_rx.recv();
            })
        };
        held_rx.recv().unwrap();
        // Authentication and token checks still answer meanwhile.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let reader = {
            let db = db.clone();
            std::thread::spawn(move || {
                let ok = db.verify_gateway("gw-a", &token).unwrap()
                    && db.gateway_exists("gw-a").unwrap()
                    && db.verify_token("nope").unwrap().is_none();
                done_tx.send(ok).unwrap();
            })
        };
        let answered = done_rx.recv_timeout(std::time::Duration::from_secs(5));
        release_tx.send(()).unwrap();
        writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!(answered, Ok(true), "reads queued behind the write");
    }
}
