//! PostgreSQL reached over TLS: a cluster that accepts only TLS
//! connections (`hostssl` in its pg_hba.conf) with a server certificate
//! from a CA of the test's own. With `--state-ca` and `sslmode=require`
//! the CLI and an ingest worker use it (their sessions show in
//! `pg_stat_ssl`); without the CA, `sslmode=require` is refused rather
//! than trusting whoever answers; a CA that did not sign the server's
//! certificate fails the handshake.

use std::process::Command;

use pantau_tests::services::{dev_tls, Mosquitto, Postgres};
use pantau_tests::*;

fn token_create(url: &str, ca: Option<&std::path::Path>, name: &str) -> std::process::Output {
    let mut cmd = Command::new(binary("pantau"));
    cmd.args(["token", "create", "--name", name, "--scopes", "admin"])
        .env("PANTAU_STATE", url);
    if let Some(ca) = ca {
        cmd.env("PANTAU_STATE_CA", ca);
    }
    cmd.output().expect("run pantau")
}

#[tokio::test]
async fn the_state_database_is_reached_over_verified_tls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tls = dev_tls(&dir.path().join("pki"))?;
    let pg = Postgres::start_tls(&tls).await?;
    let url = format!(
        "postgres://pantau:{}@localhost:{}/pantau?sslmode=require&hostaddr=127.0.0.1",
        pg.password,
        pg.addr.port()
    );

    let out = token_create(&url, Some(&tls.ca_cert), "ops");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without the CA: refused before any connection, with the reason.
    let out = token_create(&url, None, "ops2");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--state-ca"));
    // Plain TCP is refused by the server (only hostssl lines).
    let plain = url.replace("sslmode=require", "sslmode=disable");
    let out = token_create(&plain, None, "ops3");
    assert!(!out.status.success(), "the cluster took a plain connection");
    // A CA that did not sign the server's certificate: the handshake fails.
    let other = dev_tls(&dir.path().join("other-pki"))?;
    let out = token_create(&url, Some(&other.ca_cert), "ops4");
    assert!(
        !out.status.success(),
        "an unknown server certificate was trusted"
    );

    // A worker on it holds its sessions over TLS.
    let mosq = Mosquitto::start(&dir.path().join("mosquitto")).await?;
    let ca = tls.ca_cert.to_str().unwrap().to_owned();
    let _w = IngestWorker::start(
        &dir.path().join("w1"),
        &format!("mqtt://{}", mosq.addr),
        "w1",
        &["--state", &url, "--state-ca", &ca],
    )
    .await?;
    let encrypted = pg.psql(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'pantau' AND s.ssl",
    )?;
    assert!(
        encrypted.parse::<i64>()? >= 1,
        "no TLS session from the worker"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM api_tokens")?, "1");
    Ok(())
}
