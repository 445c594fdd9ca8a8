//! TLS to PostgreSQL (rustls, the process's ring provider): the server's
//! certificate is verified against the CA given with `--state-ca`
//! (`PANTAU_STATE_CA`), and its name against the address's host.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::{Error, Result};

/// How the state database is reached.
#[derive(Clone)]
pub(crate) enum Transport {
    /// Plain TCP or a Unix socket (loopback, or `sslmode=disable`).
    Plain,
    /// TLS, verified against the operator's CA.
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Transport {
    /// The transport for `mode` with `ca`: a CA means TLS, verified;
    /// `sslmode=require` without one is refused (an unverified TLS
    /// connection would hand the password to whoever answers).
    pub(crate) fn choose(mode: postgres::config::SslMode, ca: Option<&Path>) -> Result<Self> {
        use postgres::config::SslMode;
        match (ca, mode) {
            (Some(_), SslMode::Disable) => Err(Error::BadAddress(
                "--state-ca given with sslmode=disable: drop one of them".into(),
            )),
            (Some(ca), _) => Ok(Self::Tls(tokio_postgres_rustls::MakeRustlsConnect::new(
                client_config(ca)?,
            ))),
            (None, SslMode::Require) => Err(Error::BadAddress(
                "sslmode=require needs --state-ca FILE (the CA of the PostgreSQL server's certificate) so the server is verified".into(),
            )),
            (None, _) => Ok(Self::Plain),
        }
    }

    /// Whether the connection is encrypted.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }
}

fn client_config(ca: &Path) -> Result<rustls::ClientConfig> {
    let bad = |m: String| Error::BadAddress(format!("--state-ca {}: {m}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    for c in certs {
        roots.add(c).map_err(|e| bad(e.to_string()))?;
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}
