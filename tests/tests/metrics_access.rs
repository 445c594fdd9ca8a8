//! `/metrics` is open on loopback only: a client elsewhere — here one
//! forwarded by a trusted reverse proxy — needs an admin token.

use anyhow::{ensure, Context, Result};
use pantau_tests::*;

#[tokio::test]
async fn metrics_off_loopback_need_an_admin_token() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, _creds) = minimal(dir.path(), &["--trusted-proxy", "127.0.0.1"]).await?;
    let token = |name: &str, scopes: &str| -> Result<String> {
        Ok(token_create(&p.data_dir, name, scopes)?["token"]
            .as_str()
            .context("token")?
            .to_owned())
    };
    let (admin, reader) = (token("ops", "admin")?, token("bpbd", "read:flood")?);
    let client = p.client()?;
    let url = p.url("/metrics");
    // On loopback: open.
    let r = client.get(&url).send().await?;
    ensure!(r.status() == 200, "loopback: {}", r.status());
    // A public client behind the proxy: refused without an admin token.
    let forwarded = |req: reqwest::RequestBuilder| req.header("X-Forwarded-For", "203.0.113.7");
    let r = forwarded(client.get(&url)).send().await?;
    ensure!(r.status() == 401, "forwarded, no token: {}", r.status());
    let r = forwarded(client.get(&url).bearer_auth(&reader))
        .send()
        .await?;
    ensure!(r.status() == 403, "forwarded, reader token: {}", r.status());
    let r = forwarded(client.get(&url).bearer_auth(&admin))
        .send()
        .await?;
    ensure!(r.status() == 200, "forwarded, admin token: {}", r.status());
    ensure!(r.text().await?.contains("pantau_ingest_log_pending"));
    Ok(())
}
