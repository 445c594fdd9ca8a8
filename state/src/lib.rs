//! Platform state that outlives a restart: gateway credentials, agency API
//! tokens and API-registered sensors. On one machine it is `state.db`, a
//! SQLite database in the data directory, so that `pantau gateway add` in
//! another process takes effect in a running server without a restart; in
//! a scaled deployment it is a PostgreSQL database that every API replica
//! and ingest worker shares (`--state postgres://…`), its schema brought up
//! to date by migrations at start. Also the in-memory state the listeners
//! share: gateway presence and connection counts per address
//! ([`admission`]).
//!
//! Secrets are random 256-bit tokens shown once; only their SHA-256 is
//! stored. A fast hash is enough for a secret with that much entropy (there
//! is nothing to brute-force), and it keeps each CONNECT cheap.

#![forbid(unsafe_code)]

pub mod admission;
mod pg;
mod pg_tls;
pub mod presence;
mod sqlite;

use std::path::{Path, PathBuf};

use pantau_model::{GatewayId, SensorSpec, Timestamp};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite failed.
    #[error("state database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The gateway is already registered.
    #[error("gateway {0} is already registered")]
    DuplicateGateway(String),
    /// No gateway of that id is registered.
    #[error("no gateway {0} is registered")]
    UnknownGateway(String),
    /// An API token of that name exists (revoked names stay taken, so an
    /// audit trail never shows two tokens under one name).
    #[error("an API token named {0:?} exists")]
    DuplicateToken(String),
    /// No API token of that name.
    #[error("no API token named {0:?}")]
    UnknownToken(String),
    /// PostgreSQL failed (the address is given without its password).
    #[error("state database {place}: {source}")]
    Postgres {
        /// `postgres://HOST:PORT/DB`, no credentials.
        place: String,
        /// The cause.
        #[source]
        source: postgres::Error,
    },
    /// The `--state` address cannot be used.
    #[error("--state: {0}")]
    BadAddress(String),
    /// A stored sensor record cannot be read back.
    #[error("state database {place}: sensor {id:?}: {message}")]
    BadSensor {
        /// The database (file or address).
        place: String,
        /// The sensor.
        id: String,
        /// What is wrong.
        message: String,
    },
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The platform state database: SQLite in the data directory (one
/// machine) or a shared PostgreSQL (a scaled deployment).
#[derive(Debug)]
pub struct StateDb {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Sqlite(Box<sqlite::Sqlite>),
    Postgres(Box<pg::Postgres>),
}

/// Calls the same method on whichever backend is in use.
macro_rules! dispatch {
    ($self:ident . $m:ident ( $($a:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(s) => s.$m($($a),*),
            Backend::Postgres(p) => p.$m($($a),*),
        }
    };
}

/// A gateway as registered (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRecord {
    /// Gateway id.
    pub id: String,
    /// When it was registered.
    pub created: Timestamp,
}

impl StateDb {
    /// Opens (creating if needed) `state.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Ok(Self {
            backend: Backend::Sqlite(Box::new(sqlite::Sqlite::open(data_dir)?)),
        })
    }

    /// Connects to a shared PostgreSQL state database
    /// (`postgres://USER:PASSWORD@HOST:PORT/DB`, over TLS verified against
    /// `ca` when given) and runs the migrations it lacks. Blocking: call it off the async runtime's worker threads
    /// (`spawn_blocking`), as every other method.
    pub fn connect(url: &str, ca: Option<&Path>) -> Result<Self> {
        Ok(Self {
            backend: Backend::Postgres(Box::new(pg::Postgres::connect(url, ca)?)),
        })
    }

    /// `--state` as given: a `postgres://` (or `postgresql://`) address, or
    /// nothing for `state.db` in `data_dir`; `ca` (PEM) verifies a
    /// PostgreSQL server's certificate (TLS).
    pub fn select(state: Option<&str>, ca: Option<&Path>, data_dir: &Path) -> Result<Self> {
        match state.map(str::trim).filter(|s| !s.is_empty()) {
            Some(url) if is_postgres(url) => Self::connect(url, ca),
            Some(other) => Err(Error::BadAddress(format!(
                "{:?} is not a postgres:// address (leave it unset for state.db in the data directory)",
                redact(other)
            ))),
            None => Self::open(data_dir),
        }
    }

    /// Where the state lives, without credentials (for logs).
    pub fn place(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => s.place(),
            Backend::Postgres(p) => p.place().to_owned(),
        }
    }

    /// Whether the state is shared with other processes over the network
    /// (then sensors registered elsewhere must be picked up by polling
    /// [`StateDb::sensors_revision`]).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Registers a new gateway and returns its token (shown only once).
    pub fn add_gateway(&self, id: &GatewayId) -> Result<String> {
        dispatch!(self.add_gateway(id))
    }

    /// Registers many new gateways in one transaction (fleet imports);
    /// returns their tokens in order. Fails whole if any id exists.
    pub fn add_gateways(&self, ids: &[GatewayId]) -> Result<Vec<String>> {
        dispatch!(self.add_gateways(ids))
    }

    /// Registers a gateway or replaces its token; returns the new token.
    /// Used for the demo's own simulated gateways at each start.
    pub fn rotate_gateway_token(&self, id: &GatewayId) -> Result<String> {
        dispatch!(self.rotate_gateway_token(id))
    }

    /// Replaces the token of a registered gateway; returns the new one.
    /// The old token stops working at once (a live connection that used it
    /// stays until it reconnects).
    pub fn rotate_gateway(&self, id: &GatewayId) -> Result<String> {
        dispatch!(self.rotate_gateway(id))
    }

    /// Revokes a gateway: its token and every client certificate issued to
    /// it stop working, and the revocation is recorded so that a running
    /// gatekeeper (in this process or another) disconnects it at once.
    pub fn revoke_gateway(&self, id: &GatewayId) -> Result<()> {
        dispatch!(self.revoke_gateway(id))
    }

    /// Records the serial (hex) of a client certificate issued to `gateway`.
    pub fn record_gateway_cert(&self, gateway: &GatewayId, serial: &str) -> Result<()> {
        dispatch!(self.record_gateway_cert(gateway, serial))
    }

    /// Serials (hex) of every revoked client certificate.
    pub fn revoked_serials(&self) -> Result<std::collections::HashSet<String>> {
        dispatch!(self.revoked_serials())
    }

    /// Revocations recorded after `after` (their id and gateway), oldest
    /// first; `last_revocation()` gives where to start.
    pub fn revocations_after(&self, after: i64) -> Result<Vec<(i64, String)>> {
        dispatch!(self.revocations_after(after))
    }

    /// The id of the newest revocation (0 when none).
    pub fn last_revocation(&self) -> Result<i64> {
        dispatch!(self.last_revocation())
    }

    /// Whether `token` is the secret of gateway `id`.
    pub fn verify_gateway(&self, id: &str, token: &str) -> Result<bool> {
        dispatch!(self.verify_gateway(id, token))
    }

    /// Whether a gateway is registered.
    pub fn gateway_exists(&self, id: &str) -> Result<bool> {
        dispatch!(self.gateway_exists(id))
    }

    /// Whether a gateway of this id was ever revoked (a broker hook
    /// refuses such a name instead of passing it on).
    pub fn was_revoked(&self, id: &str) -> Result<bool> {
        dispatch!(self.was_revoked(id))
    }

    /// Every registered gateway.
    pub fn gateways(&self) -> Result<Vec<GatewayRecord>> {
        dispatch!(self.gateways())
    }
}

/// An API token as stored (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Its name.
    pub name: String,
    /// Its scopes, as given at creation (checked by the caller).
    pub scopes: String,
    /// When it was created.
    pub created: Timestamp,
    /// When it was revoked, if it was.
    pub revoked: Option<Timestamp>,
}

impl StateDb {
    /// Creates an API token; returns the secret (shown only once).
    pub fn create_token(&self, name: &str, scopes: &str) -> Result<String> {
        dispatch!(self.create_token(name, scopes))
    }

    /// Revokes a token by name; effective for the next request (the API
    /// looks tokens up on every request, in every replica).
    pub fn revoke_token(&self, name: &str) -> Result<()> {
        dispatch!(self.revoke_token(name))
    }

    /// The live (not revoked) token with this secret, if any.
    pub fn verify_token(&self, token: &str) -> Result<Option<ApiToken>> {
        dispatch!(self.verify_token(token))
    }

    /// Every token, revoked ones too (no secrets), ordered by name.
    pub fn tokens(&self) -> Result<Vec<ApiToken>> {
        dispatch!(self.tokens())
    }
}

/// Sensors registered or changed over the admin API. They overlay the
/// registry file: a sensor here replaces the file's sensor of that id.
impl StateDb {
    /// Stores a sensor (replacing an earlier record of its id), noting who
    /// changed it.
    pub fn save_sensor(&self, spec: &SensorSpec, by: &str) -> Result<()> {
        dispatch!(self.save_sensor(spec, by))
    }

    /// Every stored sensor, ordered by id.
    pub fn sensors(&self) -> Result<Vec<SensorSpec>> {
        dispatch!(self.sensors())
    }

    /// A number that changes whenever a stored sensor does (`None` where
    /// the state is not shared and no other process changes it).
    pub fn sensors_revision(&self) -> Result<Option<i64>> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(p) => p.sensors_revision().map(Some),
        }
    }
}

/// Leases: one holder at a time for a named duty (an alert evaluator's
/// share of the sensors, say), renewed by its holder before it runs out
/// and taken over by another once it has. Each change of holder raises the
/// lease's epoch, a fencing token: a holder that stalled past its lease
/// and comes back learns it lost it at its next renewal, and work it
/// stamps with its epoch can be refused.
impl StateDb {
    /// Takes or renews lease `name` for `holder` for `ttl_ms`; its epoch,
    /// or `None` while another holder's lease runs. On shared state the
    /// database's clock decides when a lease ran out.
    pub fn acquire_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<Option<i64>> {
        dispatch!(self.acquire_lease(name, holder, ttl_ms))
    }

    /// Gives lease `name` up at once (if `holder` has it), for a clean
    /// hand-over at shutdown.
    pub fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        dispatch!(self.release_lease(name, holder))
    }
}

/// The shared database's connections, for the parts of the platform that
/// keep tables of their own in it (the alert store, whose tables come
/// with migration 3). `None` on `state.db`.
impl StateDb {
    /// Runs `f` on the connection for writes (reconnecting first when it
    /// was found closed). Blocks: on a runtime's worker thread it runs in
    /// `block_in_place`.
    pub fn pg_write<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> std::result::Result<T, postgres::Error>,
    ) -> Option<Result<T>> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(p) => Some(p.shared_write(f)),
        }
    }

    /// Runs `f` on the connection for reads.
    pub fn pg_read<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> std::result::Result<T, postgres::Error>,
    ) -> Option<Result<T>> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(p) => Some(p.shared_read(f)),
        }
    }
}

pub use postgres;

/// Whether `--state` names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `url` with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A new random token: 256 bits, hex.
pub(crate) fn new_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Random)?;
    Ok(hex(&bytes))
}

pub(crate) fn hash(token: &str) -> String {
    hex(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without an early exit.
pub(crate) fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensors_are_kept_replaced_by_id_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let mut spec = SensorSpec {
            id: "fl-a".into(),
            kind: "flood_gauge".into(),
            gateway: "gw-a".into(),
            name: "A".into(),
            district: "Dumai Kota".into(),
            lat: 1.6,
            lon: 101.4,
            owner: "bpbd".into(),
            public: true,
            thresholds: None,
            capacity_pcu_h: None,
        };
        db.save_sensor(&spec, "ops").unwrap();
        spec.thresholds = Some(pantau_model::Thresholds {
            siaga3: 1.0,
            siaga2: 2.0,
            siaga1: 3.0,
        });
        db.save_sensor(&spec, "ops").unwrap();
        drop(db);
        let db = StateDb::open(dir.path()).unwrap();
        assert_eq!(db.sensors().unwrap(), vec![spec]);
    }

    #[test]
    fn a_lease_has_one_holder_until_it_runs_out_and_each_takeover_raises_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        assert_eq!(db.acquire_lease("eval-0", "a", 60_000).unwrap(), Some(1));
        assert_eq!(db.acquire_lease("eval-0", "b", 60_000).unwrap(), None);
        assert_eq!(
            db.acquire_lease("eval-0", "a", 60_000).unwrap(),
            Some(1),
            "renewal"
        );
        // Another duty is another lease.
        assert_eq!(db.acquire_lease("eval-1", "b", 60_000).unwrap(), Some(1));
        // Run out (a lease of no time), then taken over: a new epoch.
        assert_eq!(db.acquire_lease("eval-0", "a", -1).unwrap(), Some(1));
        assert_eq!(db.acquire_lease("eval-0", "b", 60_000).unwrap(), Some(2));
        assert_eq!(
            db.acquire_lease("eval-0", "a", 60_000).unwrap(),
            None,
            "fenced"
        );
        db.release_lease("eval-0", "a").unwrap();
        assert_eq!(
            db.acquire_lease("eval-0", "a", 60_000).unwrap(),
            None,
            "not a's to release"
        );
        db.release_lease("eval-0", "b").unwrap();
        assert_eq!(db.acquire_lease("eval-0", "a", 60_000).unwrap(), Some(3));
    }

    #[test]
    fn api_tokens_verify_hashed_and_revocation_is_immediate() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let token = db.create_token("bpbd", "read:flood").unwrap();
        let t = db.verify_token(&token).unwrap().unwrap();
        assert_eq!((t.name.as_str(), t.scopes.as_str()), ("bpbd", "read:flood"));
        assert!(db.verify_token("nope").unwrap().is_none());
        assert!(matches!(
            db.create_token("bpbd", "admin"),
            Err(Error::DuplicateToken(_))
        ));
        // Another process (the CLI) revokes; this one sees it at once.
        StateDb::open(dir.path())
            .unwrap()
            .revoke_token("bpbd")
            .unwrap();
        assert!(db.verify_token(&token).unwrap().is_none());
        assert!(matches!(db.revoke_token("x"), Err(Error::UnknownToken(_))));
        drop(db);
        let raw = std::fs::read(dir.path().join("state.db")).unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains(&token));
    }

    #[test]
    fn gateway_tokens_verify_and_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let id = GatewayId::new("gw-a").unwrap();
        let token = db.add_gateway(&id).unwrap();
        assert_eq!(token.len(), 64);
        assert!(db.verify_gateway("gw-a", &token).unwrap());
        assert!(!db.verify_gateway("gw-a", "wrong").unwrap());
        assert!(!db.verify_gateway("gw-b", &token).unwrap());
        assert!(matches!(
            db.add_gateway(&id),
            Err(Error::DuplicateGateway(_))
        ));
        drop(db);
        let raw = std::fs::read(dir.path().join("state.db")).unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains(&token), "token stored in clear");
        // A second process sees the gateway, and rotation replaces the token.
        let db = StateDb::open(dir.path()).unwrap();
        assert!(db.verify_gateway("gw-a", &token).unwrap());
        let new = db.rotate_gateway_token(&id).unwrap();
        assert!(!db.verify_gateway("gw-a", &token).unwrap());
        assert!(db.verify_gateway("gw-a", &new).unwrap());
        assert_eq!(db.gateways().unwrap().len(), 1);
        let many: Vec<GatewayId> = (0..3)
            .map(|i| GatewayId::new(format!("gw-{i}")).unwrap())
            .collect();
        let tokens = db.add_gateways(&many).unwrap();
        assert!(db.verify_gateway("gw-2", &tokens[2]).unwrap());
        assert!(matches!(
            db.add_gateways(&many[..1]),
            Err(Error::DuplicateGateway(_))
        ));
    }
}
