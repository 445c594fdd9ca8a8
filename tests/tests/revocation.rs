//! Gateway credentials can be revoked and rotated: `pantau gateway revoke`
//! (another process) disconnects a connected gateway within a second and
//! refuses its reconnect; a revoked client certificate fails the TLS
//! handshake; a rotated token works and the old one does not.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pantau_tests::mqtt::connect_gateway;
use pantau_tests::*;
use tokio::time::Instant;

fn pantau_gateway(p: &Pantau, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(binary("pantau"))
        .arg("gateway")
        .args(args)
        .arg("--data-dir")
        .arg(&p.data_dir)
        .output()?;
    ensure!(
        out.status.success(),
        "pantau gateway {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `mosquitto_pub` with a client certificate; whether it got its PUBACK.
fn publish_with_cert(p: &Pantau, creds: &GatewayCreds) -> Result<bool> {
    let topic = format!("pantau/v1/gw/{}/telemetry", creds.gateway);
    let msg = envelope(&creds.gateway, 1, &[]);
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &p.mqtt.port().to_string()])
        .arg("--cafile")
        .arg(&creds.ca_file)
        .arg("--cert")
        .arg(creds.cert_file.as_ref().context("cert")?)
        .arg("--key")
        .arg(creds.key_file.as_ref().context("key")?)
        .args(["-i", &creds.gateway, "-q", "1", "-t", &topic, "-m", &msg])
        .output()?;
    Ok(out.status.success())
}

#[tokio::test]
async fn revoked_gateways_are_cut_off_at_once_and_rotated_tokens_replace_old_ones() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, creds) = minimal(dir.path(), &[]).await?;

    // 1. A connected gateway, revoked from another process.
    let (_client, mut eventloop) = connect_gateway(&p, &creds).await?;
    pantau_gateway(&p, &["revoke", "gw-test"])?;
    let revoked_at = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break,
            Err(_) => anyhow::bail!("the revoked gateway is still connected after 5 s"),
        }
    }
    let took = revoked_at.elapsed();
    ensure!(
        took < Duration::from_secs(1),
        "disconnected {took:?} after the revocation"
    );
    let env = envelope("gw-test", 2, &[level(&now_rfc3339(-5), 10.0)]);
    ensure!(
        publish_ok(&p, &creds, &env).is_err(),
        "a revoked token still works"
    );
    ensure!(
        connect_gateway(&p, &creds).await.is_err(),
        "a revoked gateway reconnected"
    );

    // 2. A client certificate: works, then fails the handshake once revoked.
    let cert = gateway_add_with(&p.data_dir, "gw-cert", &["--cert"])?;
    ensure!(
        publish_with_cert(&p, &cert)?,
        "the certificate did not work before revocation"
    );
    let failed_before = metric(
        &p.metrics().await?,
        "pantau_broker_refused_total{reason=\"tls_handshake_failed\"}",
    )
    .unwrap_or(0.0);
    pantau_gateway(&p, &["revoke", "gw-cert"])?;
    // Refused at once at CONNECT (the gateway is gone), and within the
    // watcher's poll at the handshake itself (the serial is denied).
    ensure!(
        !publish_with_cert(&p, &cert)?,
        "a revoked certificate still works"
    );
    let handshake_refusals = || async {
        metric(
            &p.metrics().await.ok()?,
            "pantau_broker_refused_total{reason=\"tls_handshake_failed\"}",
        )
    };
    eventually(
        Duration::from_secs(5),
        "the revoked certificate refused at the handshake",
        || async {
            let refused = !publish_with_cert(&p, &cert).ok()?;
            let failed = handshake_refusals().await.unwrap_or(0.0);
            (refused && failed > failed_before).then_some(())
        },
    )
    .await?;

    // 3. Rotation: the new token works, the old one does not.
    let old = gateway_add(&p.data_dir, "gw-rot")?;
    let env = envelope("gw-rot", 1, &[]);
    publish_ok(&p, &old, &env)?;
    let v = pantau_gateway(&p, &["rotate", "gw-rot"])?;
    let new = GatewayCreds {
        password: v["password"].as_str().context("password")?.to_owned(),
        ..old.clone()
    };
    ensure!(new.password != old.password);
    publish_ok(&p, &new, &env)?;
    ensure!(
        publish_ok(&p, &old, &env).is_err(),
        "the old token still works"
    );

    // 4. The same through the admin API.
    let admin = token_create(&p.data_dir, "ops", "admin")?;
    let admin = admin["token"].as_str().context("token")?.to_owned();
    let client = p.client()?;
    let r = client
        .post(p.url("/api/v1/admin/gateways/gw-rot/rotate"))
        .bearer_auth(&admin)
        .send()
        .await?;
    ensure!(r.status().as_u16() == 200, "{}", r.status());
    let v: serde_json::Value = r.json().await?;
    let api_new = GatewayCreds {
        password: v["password"].as_str().context("password")?.to_owned(),
        ..old.clone()
    };
    publish_ok(&p, &api_new, &env)?;
    ensure!(
        publish_ok(&p, &new, &env).is_err(),
        "the previous token still works"
    );
    let r = client
        .post(p.url("/api/v1/admin/gateways/gw-rot/revoke"))
        .bearer_auth(&admin)
        .send()
        .await?;
    ensure!(r.status().as_u16() == 200, "{}", r.status());
    ensure!(
        publish_ok(&p, &api_new, &env).is_err(),
        "revoked through the API but still works"
    );
    let r = client
        .post(p.url("/api/v1/admin/gateways/gw-nope/revoke"))
        .bearer_auth(&admin)
        .send()
        .await?;
    ensure!(r.status().as_u16() == 404, "{}", r.status());
    Ok(())
}
