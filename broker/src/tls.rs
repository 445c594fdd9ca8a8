//! The platform's TLS material. On first start a development CA and a
//! server certificate signed by it are generated into `DATA_DIR/tls/` and
//! reused on every later start; gateways trust `tls/ca.pem`. An operator
//! may replace `server.pem`/`server-key.pem` with a certificate from the
//! city's own CA.
//!
//! The server certificate is served through a [`ReloadableCert`]: one per
//! certificate file in the process, shared by the MQTT and HTTPS
//! listeners. [`reload_all`] (called on SIGHUP) reads the files again and
//! swaps the certificate for new handshakes; connections already open keep
//! theirs, and a pair that does not load (unreadable, not PEM, key not
//! matching the certificate) leaves the old one in place.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::HashSet;
use std::sync::RwLock;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

/// Errors preparing TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: not a usable PEM certificate or key: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Paths of the platform's TLS files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate gateways trust.
    pub ca_cert: PathBuf,
    /// The CA's private key (mode 0600).
    pub ca_key: PathBuf,
    /// The MQTT listener's certificate.
    pub server_cert: PathBuf,
    /// The MQTT listener's private key (mode 0600).
    pub server_key: PathBuf,
}

impl TlsFiles {
    /// The file layout under `data_dir/tls`.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        let dir = data_dir.join("tls");
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = secret;
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(contents.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The CA's parameters. They are the same on every call, so an issuer can
/// be rebuilt from the stored key alone.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Pantau platform CA");
    dn.push(DnType::OrganizationName, "Pantau");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(3650);
    p
}

/// Loads the CA, generating it first if `data_dir` has none.
/// Returns whether it was generated now.
pub fn ensure_ca(files: &TlsFiles) -> Result<bool, TlsError> {
    if files.ca_cert.exists() && files.ca_key.exists() {
        return Ok(false);
    }
    if let Some(dir) = files.ca_cert.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    write_file(&files.ca_key, &key.serialize_pem(), true)?;
    write_file(&files.ca_cert, &cert.pem(), false)?;
    tracing::info!(path = %files.ca_cert.display(), "Generated the platform CA.");
    Ok(true)
}

fn ca_issuer(files: &TlsFiles) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let pem = fs::read_to_string(&files.ca_key).map_err(io(&files.ca_key))?;
    let key = KeyPair::from_pem(&pem)?;
    Ok(Issuer::new(ca_params(), key))
}

/// Serials (hex) of revoked gateway certificates, checked at every
/// handshake; the gatekeeper refreshes it from the state database.
pub type Denylist = Arc<RwLock<HashSet<String>>>;

/// The serial number of a certificate, as lowercase hex.
pub fn cert_serial(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(
        parsed
            .tbs_certificate
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// A client-certificate verifier that also refuses revoked serials.
#[derive(Debug)]
struct Revocable {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Denylist,
}

impl ClientCertVerifier for Revocable {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let revoked = cert_serial(end_entity).is_some_and(|serial| {
            self.revoked
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&serial)
        });
        if revoked {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server certificate and key of one pair of files, swappable while
/// listeners use it.
#[derive(Debug)]
pub struct ReloadableCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<rustls::sign::CertifiedKey>>,
}

/// The reloadable certificates of this process, by certificate path.
static RELOADABLE: std::sync::Mutex<Vec<Arc<ReloadableCert>>> = std::sync::Mutex::new(Vec::new());

impl ReloadableCert {
    fn load(cert: &Path, key: &Path) -> Result<rustls::sign::CertifiedKey, TlsError> {
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|source| TlsError::Pem {
                path: cert.to_owned(),
                source,
            })?;
        let der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
            path: key.to_owned(),
            source,
        })?;
        let provider = rustls::crypto::ring::default_provider();
        // Checks the key matches the certificate.
        Ok(rustls::sign::CertifiedKey::from_der(certs, der, &provider)?)
    }

    /// The process's reloadable certificate for `files` (made on first use).
    fn for_files(files: &TlsFiles) -> Result<Arc<Self>, TlsError> {
        let mut all = RELOADABLE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = all.iter().find(|r| r.cert == files.server_cert) {
            return Ok(r.clone());
        }
        let r = Arc::new(Self {
            current: RwLock::new(Arc::new(Self::load(&files.server_cert, &files.server_key)?)),
            cert: files.server_cert.clone(),
            key: files.server_key.clone(),
        });
        all.push(r.clone());
        Ok(r)
    }

    /// Reads the files again and serves the new pair from the next
    /// handshake; on an error the current pair stays. Returns the new
    /// certificate's serial.
    pub fn reload(&self) -> Result<String, TlsError> {
        let loaded = Self::load(&self.cert, &self.key)?;
        let serial = loaded
            .end_entity_cert()
            .ok()
            .and_then(cert_serial)
            .unwrap_or_default();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(serial)
    }

    /// The certificate file.
    pub fn path(&self) -> &Path {
        &self.cert
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Reloads every server certificate this process serves (see
/// [`ReloadableCert::reload`]): each file and its outcome.
pub fn reload_all() -> Vec<(PathBuf, Result<String, TlsError>)> {
    let all = RELOADABLE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    all.iter()
        .map(|r| (r.path().to_owned(), r.reload()))
        .collect()
}

/// [`server_config_with`] with an empty denylist.
pub fn server_config(
    files: &TlsFiles,
    names: &[String],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with(files, names, Denylist::default())
}

/// Ensures the CA and a server certificate exist (generating what is
/// missing) and builds the listener's rustls configuration with the ring
/// provider. `names` are extra DNS names or IP addresses for the server
/// certificate besides `localhost`, `127.0.0.1` and `::1`. A client
/// certificate whose serial is in `revoked` fails the handshake.
pub fn server_config_with(
    files: &TlsFiles,
    names: &[String],
    revoked: Denylist,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_identity(files, names)?;
    let resolver = ReloadableCert::for_files(files)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Gateways may present a certificate issued by the platform CA (the
    // identity is its CN); those that do not authenticate with a token.
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::pem_file_iter(&files.ca_cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem {
            path: files.ca_cert.clone(),
            source,
        })?;
    roots.add_parsable_certificates(ca);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = Arc::new(Revocable {
        inner: verifier,
        revoked,
    });
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    Ok(Arc::new(config))
}

/// The HTTPS API's rustls configuration: the same server certificate as
/// the MQTT listener (replace `tls/server.pem` and `tls/server-key.pem`
/// with a publicly trusted pair for browsers and the public app), no client
/// certificates (agencies use bearer tokens).
pub fn https_config(
    files: &TlsFiles,
    names: &[String],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_identity(files, names)?;
    let resolver = ReloadableCert::for_files(files)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    Ok(Arc::new(config))
}

/// Generates the server certificate (and the CA) when missing.
fn server_identity(files: &TlsFiles, names: &[String]) -> Result<(), TlsError> {
    ensure_ca(files)?;
    if !(files.server_cert.exists() && files.server_key.exists()) {
        let mut all = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        all.extend(names.iter().cloned());
        let mut p = CertificateParams::default();
        p.subject_alt_names = all
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "pantau");
        p.distinguished_name = dn;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::days(1);
        p.not_after = now + Duration::days(825);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca_issuer(files)?)?;
        write_file(&files.server_key, &key.serialize_pem(), true)?;
        write_file(&files.server_cert, &cert.pem(), false)?;
        tracing::info!(path = %files.server_cert.display(), "Generated the MQTT server certificate.");
    }
    Ok(())
}

/// Issues a client certificate for a gateway (CN = gateway id, client
/// authentication only, 2 years, a random 128-bit serial) signed by the
/// platform CA; writes `DIR/{id}.pem` and `DIR/{id}-key.pem` (mode 0600)
/// and returns their paths and the serial (hex, for revocation).
pub fn issue_gateway_cert(
    files: &TlsFiles,
    gateway: &str,
    dir: &Path,
) -> Result<(PathBuf, PathBuf, String), TlsError> {
    ensure_ca(files)?;
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, gateway);
    dn.push(DnType::OrganizationName, "Pantau gateways");
    p.distinguished_name = dn;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(730);
    let mut serial = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut serial)
        .map_err(|_| TlsError::Verifier("no system randomness for a serial".into()))?;
    serial[0] &= 0x7f; // a positive INTEGER
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &ca_issuer(files)?)?;
    let serial = cert_serial(cert.der()).unwrap_or_default();
    let cert_path = dir.join(format!("{gateway}.pem"));
    let key_path = dir.join(format!("{gateway}-key.pem"));
    // A re-issue replaces the files.
    let _ = fs::remove_file(&cert_path);
    let _ = fs::remove_file(&key_path);
    write_file(&key_path, &key.serialize_pem(), true)?;
    write_file(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path, serial))
}

/// The gateway identity of a verified client certificate: its subject CN.
pub fn cert_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::in_data_dir(dir.path());
        server_config(&files, &["gateway.example".into()]).unwrap();
        let ca = fs::read(&files.ca_cert).unwrap();
        let server = fs::read(&files.server_cert).unwrap();
        assert!(!ensure_ca(&files).unwrap());
        server_config(&files, &[]).unwrap();
        assert_eq!(fs::read(&files.ca_cert).unwrap(), ca);
        assert_eq!(fs::read(&files.server_cert).unwrap(), server);
        // A server certificate issued later by the stored CA key still chains.
        fs::remove_file(&files.server_cert).unwrap();
        fs::remove_file(&files.server_key).unwrap();
        server_config(&files, &[]).unwrap();
        let (cert, key, serial) =
            issue_gateway_cert(&files, "gw-a", &dir.path().join("gateways")).unwrap();
        let der = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(cert_identity(&der).as_deref(), Some("gw-a"));
        assert_eq!(cert_serial(&der).as_deref(), Some(serial.as_str()));
        assert_eq!(serial.len(), 32);
        assert!(key.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&files.ca_key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
