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
