//! The API end to end on a demo run (real binary, real HTTP): the
//! authorization matrix, scope isolation, the public projection on REST and
//! live, caching, rate limiting, tokens from the CLI, and bad input.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use pantau_tests::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

const FLOOD: &str = "fl-sgbuluh";
const TRAFFIC: &str = "tr-soekarnohatta";

struct Demo {
    p: Pantau,
    flood: String,
    traffic: String,
    admin: String,
    revoked: String,
    /// Sensor ids by kind, from the registry the demo runs.
    kinds: Vec<(String, String, bool)>,
}

async fn demo(dir: &std::path::Path, extra: &[&str]) -> Result<Demo> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let token = |name: &str, scopes: &str| -> Result<String> {
        let v = token_create(&data, name, scopes)?;
        ensure!(v["name"] == name, "{v}");
        Ok(v["token"].as_str().context("token")?.to_owned())
    };
    let flood = token("bpbd", "read:flood")?;
    let traffic = token("dishub", "read:traffic")?;
    let admin = token("diskominfo", "admin")?;
    let revoked = token("old-app", "read:flood,read:traffic,read:port")?;
    let mut args = vec!["--demo"];
    if !extra.contains(&"--demo-interval") {
        args.extend_from_slice(&["--demo-interval", "200ms"]);
    }
    args.extend_from_slice(extra);
    let p = Pantau::start(&data, &args).await?;
    // Revoked while the server runs: refused from the next request.
    token_revoke(&data, "old-app")?;
    let registry = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dumai-demo-registry.toml"),
    )?;
    let parsed: toml_like::Registry = toml_like::parse(&registry);
    Ok(Demo {
        p,
        flood,
        traffic,
        admin,
        revoked,
        kinds: parsed,
    })
}

/// A tiny reader of the demo registry's `id`/`kind`/`public` lines (the
/// tests crate has no TOML parser; the registry's layout is fixed).
mod toml_like {
    pub(crate) type Registry = Vec<(String, String, bool)>;
    pub(crate) fn parse(text: &str) -> Registry {
        let mut out: Registry = Vec::new();
        for line in text.lines().map(str::trim) {
            let value = |l: &str| {
                l.split('=')
                    .nth(1)
                    .map(|v| v.trim().trim_matches('"').to_string())
            };
            if line.starts_with("[[sensor]]") {
                out.push((String::new(), String::new(), false));
            } else if let Some(last) = out.last_mut() {
                if line.starts_with("id ") {
                    last.0 = value(line).unwrap_or_default();
                } else if line.starts_with("kind ") {
                    last.1 = value(line).unwrap_or_default();
                } else if line.starts_with("public ") {
                    last.2 = value(line).is_some_and(|v| v == "true");
                }
            }
        }
        out
    }
}

impl Demo {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let client = reqwest::Client::new();
        let mut req = client.request(method, self.p.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        if resp.headers().get("content-type").is_some_and(|v| {
            v.to_str()
                .unwrap_or_default()
                .starts_with("text/event-stream")
        }) {
            return Ok((status, Value::Null));
        }
        let text = resp.text().await?;
        let v =
            serde_json::from_str(&text).with_context(|| format!("{path}: not JSON: {text:?}"))?;
        Ok((status, v))
    }

    fn ids_of_kinds(&self, pred: impl Fn(&str, bool) -> bool) -> BTreeSet<String> {
        self.kinds
            .iter()
            .filter(|(_, k, public)| pred(k, *public))
            .map(|(id, _, _)| id.clone())
            .collect()
    }
}

/// Every known sensor id mentioned anywhere in `v`.
fn sensor_ids(v: &Value, known: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) if known.contains(s) => {
            out.insert(s.clone());
        }
        Value::Array(a) => a.iter().for_each(|x| sensor_ids(x, known, out)),
        Value::Object(o) => o.values().for_each(|x| sensor_ids(x, known, out)),
        _ => {}
    }
}

/// Reads `n` `reading` events from an SSE response (or fails at `deadline`).
async fn sse_readings(resp: reqwest::Response, n: usize, deadline: Duration) -> Result<Vec<Value>> {
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + deadline;
    while out.len() < n {
        let chunk = tokio::time::timeout_at(end, body.next())
            .await
            .with_context(|| format!("{} of {n} live events before the deadline", out.len()))?
            .context("stream ended")??;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = if e.trim() == "reading" {
                        "reading"
                    } else {
                        "other"
                    };
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if event == "reading" {
                out.push(serde_json::from_str(&data)?);
            }
        }
    }
    Ok(out)
}

#[tokio::test]
async fn authorization_matrix_and_scope_isolation() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = demo(dir.path(), &[]).await?;
    let readings = |id: &str| format!("/api/v1/sensors/{id}/readings?every=1m");
    let (u, ok, fb, cr) = (
        StatusCode::UNAUTHORIZED,
        StatusCode::OK,
        StatusCode::FORBIDDEN,
        StatusCode::CREATED,
    );
    // route, method, [none, flood, traffic, admin, revoked]
    let matrix: Vec<(Method, String, [StatusCode; 5])> = vec![
        (Method::GET, "/api/v1/sensors".into(), [u, ok, ok, ok, u]),
        (
            Method::GET,
            format!("/api/v1/sensors/{FLOOD}"),
            [u, ok, fb, ok, u],
        ),
        (
            Method::GET,
            format!("/api/v1/sensors/{TRAFFIC}"),
            [u, fb, ok, ok, u],
        ),
        (Method::GET, readings(FLOOD), [u, ok, fb, ok, u]),
        (Method::GET, readings(TRAFFIC), [u, fb, ok, ok, u]),
        (Method::GET, "/api/v1/latest".into(), [u, ok, ok, ok, u]),
        (
            Method::GET,
            format!("/api/v1/latest?sensors={FLOOD}"),
            [u, ok, fb, ok, u],
        ),
        (
            Method::GET,
            format!("/api/v1/latest?sensors={TRAFFIC},{FLOOD}"),
            [u, fb, fb, ok, u],
        ),
        (Method::GET, "/api/v1/gateways".into(), [u, ok, ok, ok, u]),
        (Method::GET, "/api/v1/live".into(), [u, ok, ok, ok, u]),
        (
            Method::POST,
            "/api/v1/admin/gateways".into(),
            [u, fb, fb, cr, u],
        ),
        (
            Method::GET,
            "/api/v1/public/conditions".into(),
            [ok, ok, ok, ok, ok],
        ),
        (
            Method::GET,
            "/api/v1/public/sensors".into(),
            [ok, ok, ok, ok, ok],
        ),
        (
            Method::GET,
            format!("/api/v1/public/sensors/{FLOOD}/history"),
            [ok, ok, ok, ok, ok],
        ),
        (
            Method::GET,
            "/api/v1/public/live".into(),
            [ok, ok, ok, ok, ok],
        ),
    ];
    let tokens = [
        None,
        Some(&d.flood),
        Some(&d.traffic),
        Some(&d.admin),
        Some(&d.revoked),
    ];
    let mut n = 0;
    for (method, path, want) in &matrix {
        for (token, want) in tokens.iter().zip(want) {
            n += 1;
            let body =
                (*method == Method::POST).then(|| serde_json::json!({"id": format!("gw-api-{n}")}));
            let (got, v) = d
                .call(method.clone(), path, token.map(String::as_str), body)
                .await?;
            ensure!(
                got == *want,
                "{method} {path} with token #{:?}: {got}, expected {want}: {v}",
                token.map(|t| &t[..6])
            );
            if !got.is_success() {
                ensure!(
                    v["error"].is_string() && v["message"].is_string(),
                    "{path}: JSON error: {v}"
                );
            }
        }
    }
    // A read:flood token never sees traffic or port data.
    let all: BTreeSet<String> = d.ids_of_kinds(|_, _| true);
    let flood_ids = d.ids_of_kinds(|k, _| k == "flood_gauge");
    let mut seen = BTreeSet::new();
    for path in ["/api/v1/sensors", "/api/v1/latest", "/api/v1/gateways"] {
        let (_, v) = d.call(Method::GET, path, Some(&d.flood), None).await?;
        sensor_ids(&v, &all, &mut seen);
    }
    ensure!(
        !seen.is_empty() && seen.is_subset(&flood_ids),
        "flood token saw {seen:?}"
    );
    let (_, gws) = d
        .call(Method::GET, "/api/v1/gateways", Some(&d.flood), None)
        .await?;
    for g in gws.as_array().context("gateways")? {
        ensure!(
            g["sensors"].as_u64().unwrap_or(0) > 0,
            "a gateway with no flood sensor: {g}"
        );
    }
    let resp = reqwest::Client::new()
        .get(d.p.url("/api/v1/live"))
        .bearer_auth(&d.flood)
        .send()
        .await?;
    let events = sse_readings(resp, 200, Duration::from_secs(60)).await?;
    for e in &events {
        ensure!(e["kind"] == "flood_gauge", "flood token got a live {e}");
    }
    Ok(())
}

#[tokio::test]
async fn the_public_view_never_shows_a_private_sensor_or_a_restricted_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = demo(
        dir.path(),
        &["--live-max-per-s", "100000", "--demo-interval", "50ms"],
    )
    .await?;
    let all = d.ids_of_kinds(|_, _| true);
    let public = d.ids_of_kinds(|_, p| p);
    ensure!(public.len() < all.len() && public.contains("br-dermaga-a"));
    // Subscribe before anything else so the count starts now.
    let live = reqwest::get(d.p.url("/api/v1/public/live")).await?;
    for path in [
        "/api/v1/public/conditions",
        "/api/v1/public/sensors",
        "/api/v1/public/sensors/br-dermaga-a/history?every=5m",
    ] {
        let (status, v) = d.call(Method::GET, path, None, None).await?;
        ensure!(status == StatusCode::OK, "{path}: {status}");
        let mut seen = BTreeSet::new();
        sensor_ids(&v, &all, &mut seen);
        ensure!(
            seen.is_subset(&public),
            "{path} shows {:?}",
            seen.difference(&public).collect::<Vec<_>>()
        );
        let text = v.to_string();
        ensure!(
            !text.contains("vessel_imo") && !text.contains("\"gateway\""),
            "{path}: restricted field in {text}"
        );
    }
    let (status, _) = d
        .call(
            Method::GET,
            "/api/v1/public/sensors/br-dermaga-b/history",
            None,
            None,
        )
        .await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "non-public history: {status}"
    );
    let events = sse_readings(live, 10_000, Duration::from_secs(120)).await?;
    let mut kinds = BTreeSet::new();
    for e in &events {
        let id = e["sensor"].as_str().unwrap_or_default();
        ensure!(
            public.contains(id),
            "live event of a non-public sensor: {e}"
        );
        ensure!(
            e["values"].get("vessel_imo").is_none() && e.get("gateway").is_none(),
            "restricted field live: {e}"
        );
        kinds.insert(e["kind"].as_str().unwrap_or_default().to_string());
    }
    ensure!(
        kinds.contains("berth"),
        "the public berth was in the feed: {kinds:?}"
    );
    // Agencies with the port scope do see the vessel.
    let port = token_create(&d.p.data_dir, "ksop", "read:port")?;
    let port = port["token"].as_str().context("token")?.to_owned();
    let v = eventually(
        Duration::from_secs(30),
        "an occupied berth with its vessel",
        || {
            let (d, port) = (&d, port.clone());
            async move {
                let (_, v) = d
                    .call(Method::GET, "/api/v1/latest?kind=berth", Some(&port), None)
                    .await
                    .ok()?;
                v.to_string().contains("vessel_imo").then_some(v)
            }
        },
    )
    .await?;
    ensure!(v.as_array().is_some_and(|a| a.len() == 3), "{v}");
    Ok(())
}

#[tokio::test]
async fn caching_rate_limits_and_bad_input_get_clear_4xx() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = demo(
        dir.path(),
        &["--public-rate-per-s", "5", "--public-burst", "10"],
    )
    .await?;
    let client = reqwest::Client::new();
    // ETag and Cache-Control; a revalidation with the tag gets 304.
    let r = client.get(d.p.url("/api/v1/public/sensors")).send().await?;
    ensure!(r.status() == StatusCode::OK);
    ensure!(r.headers()["cache-control"].to_str()?.contains("max-age="));
    let tag = r.headers()["etag"].to_str()?.to_owned();
    let r = client
        .get(d.p.url("/api/v1/public/sensors"))
        .header("if-none-match", &tag)
        .send()
        .await?;
    ensure!(r.status() == StatusCode::NOT_MODIFIED, "{}", r.status());
    // Per-client rate limit: the burst passes, then a JSON 429.
    let mut limited = None;
    for _ in 0..30 {
        let r = client
            .get(d.p.url("/api/v1/public/conditions"))
            .send()
            .await?;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((
                r.headers().get("retry-after").is_some(),
                r.json::<Value>().await?,
            ));
            break;
        }
    }
    let (retry_after, body) = limited.context("no 429 after 30 quick requests")?;
    ensure!(retry_after && body["error"] == "rate_limited", "{body}");
    let m = d.p.metrics().await?;
    ensure!(metric(&m, "pantau_api_public_rate_limited_total").unwrap_or(0.0) >= 1.0);
    // Agency routes are not limited by the public limiter.
    for _ in 0..20 {
        let (s, _) = d
            .call(Method::GET, "/api/v1/sensors", Some(&d.admin), None)
            .await?;
        ensure!(s == StatusCode::OK);
    }
    // Bad input: a 4xx with a JSON error naming the parameter, never a 5xx.
    let now = pantau_model::Timestamp::now();
    let later = pantau_model::Timestamp(now.millis() + 3_600_000).to_rfc3339();
    let cases: Vec<(Method, String, Option<Value>, StatusCode, &str)> = vec![
        (Method::GET, format!("/api/v1/sensors/{FLOOD}/readings?from=yesterday"), None, StatusCode::BAD_REQUEST, "from"),
        (Method::GET, format!("/api/v1/sensors/{FLOOD}/readings?from={later}&to={}", now.to_rfc3339()), None, StatusCode::BAD_REQUEST, "from"),
        (Method::GET, format!("/api/v1/sensors/{FLOOD}/readings?from=2020-01-01T00:00:00Z&every=1s"), None, StatusCode::BAD_REQUEST, "from"),
        (Method::GET, format!("/api/v1/sensors/{FLOOD}/readings?from=2026-01-01T00:00:00Z&every=1s&to=2026-03-01T00:00:00Z"), None, StatusCode::BAD_REQUEST, "every"),
        (Method::GET, format!("/api/v1/sensors/{FLOOD}/readings?every=soon"), None, StatusCode::BAD_REQUEST, "every"),
        (Method::GET, format!("/api/v1/sensors/{FLOOD}/readings?fn=median&every=1m"), None, StatusCode::BAD_REQUEST, "fn"),
        (Method::GET, format!("/api/v1/sensors/{FLOOD}/readings?field=speed&every=1m"), None, StatusCode::BAD_REQUEST, "field"),
        (Method::GET, "/api/v1/sensors/no-such-sensor/readings".into(), None, StatusCode::NOT_FOUND, ""),
        (Method::GET, "/api/v1/sensors?kind=volcano".into(), None, StatusCode::BAD_REQUEST, "kind"),
        (Method::GET, "/api/v1/latest?sensors=".into(), None, StatusCode::BAD_REQUEST, "sensors"),
        (Method::GET, "/api/v1/live?kind=volcano".into(), None, StatusCode::BAD_REQUEST, "kind"),
        (Method::POST, "/api/v1/admin/gateways".into(), Some(serde_json::json!({"id": "Bad Id!"})), StatusCode::BAD_REQUEST, "id"),
        (Method::POST, "/api/v1/admin/gateways".into(), Some(serde_json::json!({"name": 1})), StatusCode::BAD_REQUEST, "body"),
        (Method::POST, "/api/v1/admin/gateways".into(), Some(serde_json::json!({"id": "gw-pelabuhan"})), StatusCode::CONFLICT, ""),
        (Method::GET, "/api/v1/nothing-here".into(), None, StatusCode::NOT_FOUND, ""),
    ];
    for (method, path, body, want, param) in cases {
        let (got, v) = d.call(method.clone(), &path, Some(&d.admin), body).await?;
        ensure!(got == want, "{method} {path}: {got}, expected {want}: {v}");
        ensure!(v["error"].is_string(), "{path}: {v}");
        if !param.is_empty() {
            ensure!(
                v["param"] == param,
                "{path}: names {:?}, expected {param}",
                v["param"]
            );
        }
    }
    // Oversized and invalid JSON bodies.
    let big = "x".repeat(64 * 1024);
    for (body, want) in [
        (
            format!("{{\"id\":\"{big}\"}}"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        ("{not json".to_string(), StatusCode::BAD_REQUEST),
    ] {
        let r = client
            .post(d.p.url("/api/v1/admin/gateways"))
            .bearer_auth(&d.admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        ensure!(r.status() == want, "{}", r.status());
        ensure!(r.status().is_client_error());
    }
    // Ready.
    let (s, v) = d.call(Method::GET, "/readyz", None, None).await?;
    ensure!(s == StatusCode::OK && v["ready"] == true, "{v}");
    Ok(())
}

#[tokio::test]
async fn websocket_feeds_follow_scopes_and_filters() -> Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let dir = tempfile::tempdir()?;
    let d = demo(dir.path(), &["--demo-interval", "100ms"]).await?;
    let ws_url = |path: &str| format!("ws://{}{path}", d.p.http);
    let next_readings = |mut ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
                         n: usize| async move {
        let mut out = Vec::new();
        while out.len() < n {
            let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .context("a WebSocket message within 30 s")?
                .context("socket closed")??;
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t)?;
                if v["event"] == "reading" {
                    out.push(v["data"].clone());
                }
            }
        }
        anyhow::Ok(out)
    };
    // Public, filtered to one district: only public sensors of it.
    let (ws, _) =
        tokio_tungstenite::connect_async(ws_url("/api/v1/public/live/ws?district=Dumai%20Barat"))
            .await?;
    let public = d.ids_of_kinds(|_, p| p);
    for e in next_readings(ws, 50).await? {
        ensure!(e["district"] == "Dumai Barat", "{e}");
        ensure!(
            public.contains(e["sensor"].as_str().unwrap_or_default()),
            "{e}"
        );
        ensure!(e["values"].get("vessel_imo").is_none(), "{e}");
    }
    // Agency: no token is refused before the upgrade; a flood token gets flood only.
    ensure!(
        tokio_tungstenite::connect_async(ws_url("/api/v1/live/ws"))
            .await
            .is_err(),
        "an agency WebSocket without a token"
    );
    let mut req = ws_url("/api/v1/live/ws").into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {}", d.flood).parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    for e in next_readings(ws, 50).await? {
        ensure!(e["kind"] == "flood_gauge", "{e}");
    }
    // A plain GET on a WebSocket route is a JSON 400.
    let (s, v) = d
        .call(Method::GET, "/api/v1/public/live/ws", None, None)
        .await?;
    ensure!(
        s == StatusCode::BAD_REQUEST && v["param"] == "upgrade",
        "{s} {v}"
    );
    Ok(())
}

#[tokio::test]
async fn level_of_service_bands_come_from_the_config_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("pantau.toml");
    // Bands so tight that any traffic is F by volume/capacity.
    std::fs::write(
        &cfg,
        "[level_of_service]\nvolume_capacity = [0.0001, 0.0002, 0.0003, 0.0004, 0.0005]\nspeed_kmh = [48, 40, 32, 24, 16]\n",
    )?;
    let cfg_s = cfg.display().to_string();
    let d = demo(dir.path(), &["--config", &cfg_s]).await?;
    let conds = eventually(Duration::from_secs(20), "traffic statuses", || async {
        let (_, v) = d
            .call(Method::GET, "/api/v1/public/conditions", None, None)
            .await
            .ok()?;
        let all = v
            .as_array()?
            .iter()
            .filter(|c| c["kind"] == "traffic_counter")
            .all(|c| !c["status"].is_null());
        all.then_some(v)
    })
    .await?;
    let traffic: Vec<&Value> = conds
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "traffic_counter")
        .collect();
    ensure!(!traffic.is_empty());
    for c in traffic {
        let s = &c["status"];
        ensure!(
            s["level_of_service"] == "F" && s["by_volume_capacity"] == "F",
            "{s}"
        );
        ensure!(
            s["bands"]["volume_capacity"][0] == 0.0001,
            "the bands used are shown: {s}"
        );
        ensure!(s["by_speed"].is_string(), "speed graded too: {s}");
    }
    // Bands out of order are refused at start, naming the list.
    std::fs::write(&cfg, "[level_of_service]\nvolume_capacity = [0.9, 0.5, 0.6, 0.7, 1.0]\nspeed_kmh = [48, 40, 32, 24, 16]\n")?;
    let out = std::process::Command::new(binary("pantau"))
        .args(["up", "--config", &cfg_s, "--data-dir"])
        .arg(dir.path().join("other"))
        .output()?;
    ensure!(!out.status.success());
    ensure!(String::from_utf8_lossy(&out.stderr).contains("level_of_service.volume_capacity"));
    Ok(())
}
