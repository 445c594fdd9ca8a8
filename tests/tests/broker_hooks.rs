//! The HTTP hooks an external broker cluster calls (EMQX's HTTP
//! authenticator and authorizer, VerneMQ's webhooks), driven as those
//! brokers do — POSTs with their documented bodies — against a running
//! Pantau with a registered gateway: its token authenticates it, a wrong
//! one is refused, a username that is not a gateway is passed on to the
//! broker's own accounts, a gateway may use only its own topics, a revoked
//! gateway is refused at once, and no hook answers without the secret.

use pantau_tests::*;
use serde_json::{json, Value};

const SECRET: &str = "hook-secret-for-the-test";

async fn post(
    p: &Pantau,
    path: &str,
    bearer: Option<&str>,
    body: Value,
) -> anyhow::Result<(u16, Option<String>, Value)> {
    let mut req = reqwest::Client::new().post(p.url(path)).json(&body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let cache = r
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((status, cache, r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn emqx_and_vernemq_hooks_hold_gateways_to_their_identity_and_topics() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let secret_file = dir.path().join("hook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n"))?;
    let (p, gw) = minimal(
        dir.path(),
        &["--broker-hook-token-file", secret_file.to_str().unwrap()],
    )
    .await?;
    let id = gw.gateway.as_str();
    let own = format!("pantau/v1/gw/{id}/telemetry");
    let other = "pantau/v1/gw/gw-other/telemetry";

    // EMQX: authentication.
    let authn = |u: &str, pw: &str| json!({"username": u, "password": pw, "clientid": "c1"});
    let (s, _, v) = post(
        &p,
        "/broker/v1/emqx/authn",
        Some(SECRET),
        authn(id, &gw.password),
    )
    .await?;
    assert_eq!((s, v["result"].as_str()), (200, Some("allow")), "{v}");
    assert_eq!(v["is_superuser"], false);
    let (_, _, v) = post(
        &p,
        "/broker/v1/emqx/authn",
        Some(SECRET),
        authn(id, "wrong"),
    )
    .await?;
    assert_eq!(v["result"], "deny");
    let (_, _, v) = post(
        &p,
        "/broker/v1/emqx/authn",
        Some(SECRET),
        authn("pantau-ingest", "x"),
    )
    .await?;
    assert_eq!(
        v["result"], "ignore",
        "a service account is the broker's to judge"
    );
    // EMQX: authorization.
    let authz = |u: &str, t: &str, a: &str| json!({"username": u, "topic": t, "action": a});
    for (topic, action, want) in [
        (own.as_str(), "publish", "allow"),
        (other, "publish", "deny"),
        (&format!("pantau/v1/gw/{id}/cmd"), "subscribe", "allow"),
        ("pantau/v1/gw/+/cmd", "subscribe", "deny"),
        ("#", "subscribe", "deny"),
    ] {
        let (_, _, v) = post(
            &p,
            "/broker/v1/emqx/authz",
            Some(SECRET),
            authz(id, topic, action),
        )
        .await?;
        assert_eq!(v["result"], want, "{action} {topic}");
    }
    let (s, _, _) = post(
        &p,
        "/broker/v1/emqx/authz",
        Some(SECRET),
        authz(id, &own, "delete"),
    )
    .await?;
    assert_eq!(s, 400);

    // VerneMQ: the secret in the URL (its webhooks send no headers).
    let verne = |hook: &str| format!("/broker/v1/vernemq/{hook}?token={SECRET}");
    let reg = |u: &str, pw: &str| {
        json!({"peer_addr": "127.0.0.1", "peer_port": 40000, "username": u, "password": pw,
               "mountpoint": "", "client_id": "c1", "clean_session": false})
    };
    let (_, cache, v) = post(&p, &verne("auth_on_register"), None, reg(id, &gw.password)).await?;
    assert_eq!(v, json!({"result": "ok"}));
    assert_eq!(cache, None, "a registration must not be cached");
    let (_, _, v) = post(&p, &verne("auth_on_register"), None, reg(id, "wrong")).await?;
    assert_eq!(v, json!({"result": {"error": "not_allowed"}}));
    let (_, _, v) = post(
        &p,
        &verne("auth_on_register_m5"),
        None,
        reg("pantau-api", "x"),
    )
    .await?;
    assert_eq!(v, json!({"result": "next"}));
    let publish = |t: &str| {
        json!({"username": id, "client_id": "c1", "mountpoint": "", "qos": 1, "topic": t,
               "payload": "e30=", "retain": false})
    };
    let (_, cache, v) = post(&p, &verne("auth_on_publish"), None, publish(&own)).await?;
    assert_eq!(v, json!({"result": "ok"}));
    assert_eq!(cache.as_deref(), Some("max-age=5"));
    let (_, _, v) = post(&p, &verne("auth_on_publish"), None, publish(other)).await?;
    assert_eq!(v, json!({"result": {"error": "not_allowed"}}));
    let subscribe = |topics: &[&str]| {
        json!({"username": id, "client_id": "c1", "mountpoint": "",
               "topics": topics.iter().map(|t| json!({"topic": t, "qos": 1})).collect::<Vec<_>>()})
    };
    let cmd = format!("pantau/v1/gw/{id}/cmd");
    let (_, _, v) = post(&p, &verne("auth_on_subscribe"), None, subscribe(&[&cmd])).await?;
    assert_eq!(v, json!({"result": "ok"}));
    let (_, _, v) = post(
        &p,
        &verne("auth_on_subscribe"),
        None,
        subscribe(&[&cmd, "pantau/v1/gw/gw-other/cmd"]),
    )
    .await?;
    assert_eq!(v, json!({"result": {"error": "not_allowed"}}));

    // No secret, a wrong one, or an unknown hook: refused.
    let (s, _, _) = post(&p, "/broker/v1/emqx/authn", None, authn(id, &gw.password)).await?;
    assert_eq!(s, 401);
    let (s, _, _) = post(
        &p,
        "/broker/v1/emqx/authn",
        Some("guess"),
        authn(id, &gw.password),
    )
    .await?;
    assert_eq!(s, 401);
    let (s, _, _) = post(&p, &verne("on_deliver"), None, json!({})).await?;
    assert_eq!(s, 404);

    // Revoked: refused on the next connect.
    let out = std::process::Command::new(binary("pantau"))
        .args(["gateway", "revoke", id, "--data-dir"])
        .arg(dir.path().join("data"))
        .output()?;
    assert!(out.status.success());
    let (_, _, v) = post(
        &p,
        "/broker/v1/emqx/authn",
        Some(SECRET),
        authn(id, &gw.password),
    )
    .await?;
    assert_eq!(
        v["result"], "deny",
        "a revoked gateway must be refused, not passed on: {v}"
    );
    let (_, _, v) = post(
        &p,
        "/broker/v1/emqx/authz",
        Some(SECRET),
        authz(id, &own, "publish"),
    )
    .await?;
    assert_eq!(v["result"], "deny");
    let (_, _, v) = post(&p, &verne("auth_on_register"), None, reg(id, &gw.password)).await?;
    assert_eq!(v, json!({"result": {"error": "not_allowed"}}));

    let m = p.metrics().await?;
    assert!(metric(&m, "pantau_ingest_broker_hook_decisions_total{broker=\"emqx\",hook=\"authn\",verdict=\"deny\"}").unwrap_or(0.0) >= 1.0, "{m}");
    Ok(())
}

/// What the stand-in management API was asked: (method, path and query,
/// Authorization header).
type Asked = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

/// A stand-in for EMQX's and VerneMQ's management APIs on loopback (no
/// EMQX or VerneMQ in Debian): records each request as the documented
/// API would receive it and answers as it does, or 500 when `fail` is set.
async fn management_api(
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<(std::net::SocketAddr, Asked)> {
    use axum::extract::{Request, State};
    let asked: Asked = Default::default();
    let app = axum::Router::new()
        .fallback(
            |State((asked, fail)): State<(
                Asked,
                std::sync::Arc<std::sync::atomic::AtomicBool>,
            )>,
             req: Request| async move {
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let method = req.method().to_string();
                asked.lock().unwrap().push((method.clone(), path, auth));
                if fail.load(std::sync::atomic::Ordering::Relaxed) {
                    return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new());
                }
                if method == "DELETE" {
                    (axum::http::StatusCode::NO_CONTENT, String::new())
                } else {
                    (
                        axum::http::StatusCode::OK,
                        json!({"type": "text", "text": "Done"}).to_string(),
                    )
                }
            },
        )
        .with_state((asked.clone(), fail));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, asked))
}

fn revoke(dir: &std::path::Path, id: &str, api: &str, key: &str) -> std::process::Output {
    std::process::Command::new(binary("pantau"))
        .args(["gateway", "revoke", id, "--data-dir"])
        .arg(dir)
        .args(["--broker-api", api, "--broker-api-key", key])
        .env("PANTAU_BROKER_API_SECRET", "api-secret")
        .output()
        .expect("pantau runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_gateway_closes_its_live_session_on_emqx_and_vernemq() -> anyhow::Result<()> {
    use base64::Engine as _;
    let dir = tempfile::tempdir()?;
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (addr, asked) = management_api(fail.clone()).await?;
    let basic = |user: &str, pw: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    };

    // EMQX: DELETE /api/v5/clients/{clientid} with the key and secret.
    gateway_add(dir.path(), "gw-emqx")?;
    let out = revoke(
        dir.path(),
        "gw-emqx",
        &format!("emqx+http://{addr}"),
        "api-key",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        asked.lock().unwrap().last().cloned(),
        Some((
            "DELETE".into(),
            "/api/v5/clients/gw-emqx".into(),
            basic("api-key", "api-secret")
        ))
    );

    // VerneMQ: vmq-admin session disconnect client-id=ID over HTTP, the
    // API key as the user name.
    gateway_add(dir.path(), "gw-verne")?;
    let out = revoke(
        dir.path(),
        "gw-verne",
        &format!("vernemq+http://{addr}"),
        "vmq-key",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        asked.lock().unwrap().last().cloned(),
        Some((
            "GET".into(),
            "/api/v1/session/disconnect?client-id=gw-verne".into(),
            basic("vmq-key", "")
        ))
    );

    // A broker that fails: revoked in Pantau all the same, and said so.
    gateway_add(dir.path(), "gw-fail")?;
    fail.store(true, std::sync::atomic::Ordering::Relaxed);
    let out = revoke(
        dir.path(),
        "gw-fail",
        &format!("emqx+http://{addr}"),
        "api-key",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("revoked in Pantau") && stderr.contains("HTTP 500"),
        "{stderr}"
    );
    let state = pantau_state::StateDb::open(dir.path())?;
    for id in ["gw-emqx", "gw-verne", "gw-fail"] {
        assert!(state.was_revoked(id)?, "{id} is not revoked");
    }

    // The API secret never goes out in clear off loopback.
    let n = asked.lock().unwrap().len();
    let out = revoke(
        dir.path(),
        "gw-emqx",
        "emqx+http://192.0.2.1:18083",
        "api-key",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("plain http off loopback"), "{stderr}");
    assert_eq!(asked.lock().unwrap().len(), n);
    Ok(())
}
