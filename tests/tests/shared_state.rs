//! Platform state shared through PostgreSQL (Debian's PostgreSQL 15, a
//! cluster of the test's own): two `pantau ingest` workers on one
//! Mosquitto, each serving the API, both on `--state postgres://…`. A
//! token created through one works on the other and, revoked through the
//! other, is refused by both on the next request; a sensor registered
//! through one is accepted by both workers at once; the schema is migrated
//! once however many processes start, and no secret is stored in clear.

use pantau_model::Timestamp;
use pantau_tests::services::{Mosquitto, Postgres};
use pantau_tests::*;
use serde_json::{json, Value};

async fn call(
    w: &IngestWorker,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{}{path}", w.http))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

#[tokio::test]
async fn tokens_and_sensors_are_shared_by_every_worker_through_postgres() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pg = Postgres::start().await?;
    let url = pg.url();
    let mosq = Mosquitto::start(&dir.path().join("mosquitto")).await?;
    let broker = format!("mqtt://{}", mosq.addr);
    let reg = dir.path().join("registry.toml");
    std::fs::write(
        &reg,
        "[[sensor]]\nid = \"fl-file\"\nkind = \"flood_gauge\"\ngateway = \"gw-s\"\nname = \"From the file\"\nlat = 1.6\nlon = 101.4\n",
    )?;
    let reg = reg.to_str().unwrap().to_owned();
    let args = ["--registry", reg.as_str(), "--state", url.as_str()];
    let (d1, d2) = (dir.path().join("w1"), dir.path().join("w2"));
    // Both start at once: the migrations must run exactly once.
    let (w1, w2) = tokio::join!(
        IngestWorker::start(&d1, &broker, "w1", &args),
        IngestWorker::start(&d2, &broker, "w2", &args),
    );
    let (w1, w2) = (w1?, w2?);
    assert_eq!(
        pg.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM pantau_migrations")?,
        "1,2,3",
        "each migration recorded once"
    );

    let admin = token_create_shared(&url, "ops", "admin")?;
    // Created through worker 1's API…
    let (status, created) = call(
        &w1,
        reqwest::Method::POST,
        "/api/v1/admin/tokens",
        &admin,
        Some(json!({"name": "bpbd", "scopes": ["read:flood"]})),
    )
    .await?;
    assert_eq!(status, 201, "{created}");
    let bpbd = created["token"].as_str().unwrap().to_owned();
    // …it works on worker 2, and both list it.
    for w in [&w1, &w2] {
        let (status, body) = call(w, reqwest::Method::GET, "/api/v1/sensors", &bpbd, None).await?;
        assert_eq!(status, 200, "{body}");
        let (_, list) = call(
            w,
            reqwest::Method::GET,
            "/api/v1/admin/tokens",
            &admin,
            None,
        )
        .await?;
        assert!(
            list.as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == "bpbd" && t["revoked"].is_null()),
            "{list}"
        );
    }
    // Revoked through worker 2: refused by both on the very next request.
    let (status, _) = call(
        &w2,
        reqwest::Method::POST,
        "/api/v1/admin/tokens/bpbd/revoke",
        &admin,
        None,
    )
    .await?;
    assert_eq!(status, 200);
    for w in [&w1, &w2] {
        let (status, _) = call(w, reqwest::Method::GET, "/api/v1/sensors", &bpbd, None).await?;
        assert_eq!(status, 401, "a revoked token still works");
    }
    // The same name cannot be taken again, through either.
    let (status, _) = call(
        &w1,
        reqwest::Method::POST,
        "/api/v1/admin/tokens",
        &admin,
        Some(json!({"name": "bpbd", "scopes": ["admin"]})),
    )
    .await?;
    assert_eq!(status, 409);

    // A sensor registered through worker 1 is accepted by both workers at
    // once (no wait for a periodic refresh): readings published right
    // after the registration are split between the workers by the shared
    // subscription, and none is refused.
    let (status, body) = call(
        &w1,
        reqwest::Method::POST,
        "/api/v1/admin/sensors",
        &admin,
        Some(json!({
            "id": "fl-new", "kind": "flood_gauge", "gateway": "gw-s", "name": "Registered over the API",
            "district": "Dumai Kota", "lat": 1.67, "lon": 101.45, "owner": "bpbd", "public": true
        })),
    )
    .await?;
    assert_eq!(status, 201, "{body}");
    let n = 40;
    let base = Timestamp::now().millis() - 60_000;
    for i in 0..n {
        let env = envelope(
            "gw-s",
            i + 1,
            &[format!(
                r#"{{"sensor":"fl-new","ts":"{}","values":{{"water_level_cm":{}}}}}"#,
                Timestamp(base + i as i64 * 1000).to_rfc3339(),
                100 + i
            )],
        );
        let out = mosquitto_pub(
            mosq.addr,
            None,
            "gw-s",
            "unused",
            "pantau/v1/gw/gw-s/telemetry",
            &env,
        )?;
        anyhow::ensure!(out.status.success(), "mosquitto_pub failed");
    }
    let total = eventually(
        std::time::Duration::from_secs(30),
        "every reading of the new sensor stored",
        || async {
            let n1 = stored(&d1, "fl-new").map(|v| v.len()).unwrap_or(0);
            let n2 = stored(&d2, "fl-new").map(|v| v.len()).unwrap_or(0);
            (n1 + n2 >= n as usize).then_some((n1, n2))
        },
    )
    .await?;
    assert!(
        total.0 > 0 && total.1 > 0,
        "both workers must have taken some: {total:?}"
    );
    for w in [&w1, &w2] {
        let m = w.metrics().await?;
        assert_eq!(
            metric(
                &m,
                "pantau_ingest_readings_rejected_total{reason=\"unknown_sensor\"}"
            )
            .unwrap_or(0.0),
            0.0,
            "a worker refused the newly registered sensor"
        );
    }

    // Secrets are kept hashed only.
    let dump = pg.psql("SELECT string_agg(token_sha256, ',') FROM api_tokens")?;
    assert!(!dump.contains(&admin) && !dump.contains(&bpbd));
    assert_eq!(dump.split(',').count(), 2);
    Ok(())
}

#[tokio::test]
async fn a_lease_in_postgres_has_one_holder_and_passes_on_when_it_runs_out() -> anyhow::Result<()> {
    let pg = Postgres::start().await?;
    let url = pg.url();
    // Two processes' worth of connections; the client blocks, so off the
    // runtime's threads.
    let (a, b) = tokio::task::spawn_blocking(move || {
        Ok::<_, pantau_state::Error>((
            std::sync::Arc::new(pantau_state::StateDb::connect(&url, None)?),
            std::sync::Arc::new(pantau_state::StateDb::connect(&url, None)?),
        ))
    })
    .await??;
    let take = |db: &std::sync::Arc<pantau_state::StateDb>, who: &'static str, ttl: i64| {
        let db = db.clone();
        async move {
            tokio::task::spawn_blocking(move || db.acquire_lease("alerts-0", who, ttl))
                .await
                .expect("lease task")
        }
    };
    assert_eq!(take(&a, "a", 60_000).await?, Some(1));
    assert_eq!(take(&b, "b", 60_000).await?, None, "two holders at once");
    // a renews for a short while and then stops (as if it died): b gets
    // it once it has run out, by the database's clock, with a new epoch.
    assert_eq!(take(&a, "a", 300).await?, Some(1));
    let epoch = eventually(
        std::time::Duration::from_secs(10),
        "b to take the lease over",
        || async { take(&b, "b", 60_000).await.ok().flatten() },
    )
    .await?;
    assert_eq!(epoch, 2);
    assert_eq!(
        take(&a, "a", 60_000).await?,
        None,
        "the old holder is fenced"
    );
    Ok(())
}
