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
        call(&self.p, method, path, token, body).await
    }

    fn ids_of_kinds(&self, pred: impl Fn(&str, bool) -> bool) -> BTreeSet<String> {
        self.kinds
            .iter()
            .filter(|(_, k, public)| pred(k, *public))
            .map(|(id, _, _)| id.clone())
            .collect()
    }
}

/// One API call; the answer's status and JSON (null for an event stream).
async fn call(
    p: &Pantau,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(StatusCode, Value)> {
    {
        let client = reqwest::Client::new();
        let mut req = client.request(method, p.url(path));
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
}

/// POSTs headers announcing a `len`-byte JSON body without sending it;
/// returns the answer's status and JSON body.
async fn oversized_post(
    http: std::net::SocketAddr,
    path: &str,
    token: &str,
    len: usize,
) -> Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await?;
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\n\
             Expect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = s.read(&mut buf).await?;
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            let complete = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
                head.lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .is_some_and(|want| body.len() >= want)
            });
            if n == 0 || complete {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .context("no answer to an oversized request")??;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("status line")?;
    Ok((
        status,
        serde_json::from_str(body).with_context(|| format!("not JSON: {body:?}"))?,
    ))
}

/// A `POST /api/v1/admin/sensors` body: a public flood gauge.
fn new_sensor(id: &str, gateway: &str) -> Value {
    serde_json::json!({
        "id": id,
        "kind": "flood_gauge",
        "gateway": gateway,
        "name": "Pintu air Jalan Sudirman",
        "district": "Dumai Barat",
        "lat": 1.6702,
        "lon": 101.4412,
        "owner": "bpbd",
        "public": true,
        "thresholds": {"siaga3": 100, "siaga2": 200, "siaga1": 300},
    })
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
            Method::POST,
            "/api/v1/admin/sensors".into(),
            [u, fb, fb, cr, u],
        ),
        (
            Method::PUT,
            format!("/api/v1/admin/sensors/{FLOOD}/thresholds"),
            [u, fb, fb, ok, u],
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
            let body = if path.ends_with("/admin/gateways") {
                Some(serde_json::json!({"id": format!("gw-api-{n}")}))
            } else if path.ends_with("/admin/sensors") {
                Some(new_sensor(&format!("fl-api-{n}"), "gw-pelabuhan"))
            } else if path.ends_with("/thresholds") {
                Some(
                    serde_json::json!({"thresholds": {"siaga3": 120, "siaga2": 180, "siaga1": 240}}),
                )
            } else {
                None
            };
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
    // An oversized body is refused from its Content-Length, before it is
    // read: the request asks for `100 Continue` and never sends the body.
    for path in ["/api/v1/admin/gateways", "/api/v1/admin/sensors"] {
        let (status, v) = oversized_post(d.p.http, path, &d.admin, 64 * 1024).await?;
        ensure!(
            status == 413 && v["error"] == "payload_too_large" && v["param"] == "body",
            "{path}: {status} {v}"
        );
    }
    let r = client
        .post(d.p.url("/api/v1/admin/gateways"))
        .bearer_auth(&d.admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    ensure!(r.status() == StatusCode::BAD_REQUEST, "{}", r.status());
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

/// Waits until the public conditions show `sensor` at Siaga `want`,
/// derived from thresholds whose Siaga 1 is `siaga1`.
async fn siaga(p: &Pantau, sensor: &str, want: u64, siaga1: f64) -> Result<Value> {
    eventually(
        Duration::from_secs(10),
        &format!("{sensor} at Siaga {want} (siaga1 = {siaga1}) in the public conditions"),
        || async move {
            let c = p.get_json("/api/v1/public/conditions").await.ok()?;
            let s = c.as_array()?.iter().find(|s| s["id"] == sensor)?.clone();
            let st = &s["status"];
            (st["siaga_level"] == want && st["thresholds"]["siaga1"] == siaga1).then_some(s)
        },
    )
    .await
}

#[tokio::test]
async fn admins_register_sensors_and_set_thresholds_at_once_and_for_good() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut p, creds) = minimal(dir.path(), &[]).await?;
    let data = dir.path().join("data");
    let token = |name: &str, scopes: &str| -> Result<String> {
        Ok(token_create(&data, name, scopes)?["token"]
            .as_str()
            .context("token")?
            .to_owned())
    };
    let (admin, flood) = (token("ops", "admin")?, token("bpbd", "read:flood")?);
    const NEW: &str = "fl-api-01";
    let reading = |offset_s: i64, cm: f64| {
        format!(
            r#"{{"sensor":"{NEW}","ts":"{}","values":{{"water_level_cm":{cm}}}}}"#,
            now_rfc3339(offset_s)
        )
    };
    // Not registered yet: its reading is refused and counted.
    publish_ok(&p, &creds, &envelope("gw-test", 1, &[reading(-30, 250.0)]))?;
    eventually(
        Duration::from_secs(10),
        "unknown_sensor counted",
        || async {
            let m = p.metrics().await.ok()?;
            metric(
                &m,
                "pantau_ingest_readings_rejected_total{reason=\"unknown_sensor\"}",
            )
            .filter(|n| *n >= 1.0)
        },
    )
    .await?;
    ensure!(
        stored(&data, NEW)?.is_empty(),
        "an unregistered sensor's reading was stored"
    );

    // Registered over the API: in effect at once for every view and ingest.
    let (status, v) = call(
        &p,
        Method::POST,
        "/api/v1/admin/sensors",
        Some(&admin),
        Some(new_sensor(NEW, "gw-test")),
    )
    .await?;
    ensure!(status == StatusCode::CREATED, "{status}: {v}");
    ensure!(v["id"] == NEW && v["thresholds"]["siaga2"] == 200.0, "{v}");
    let (status, v) = call(
        &p,
        Method::GET,
        &format!("/api/v1/sensors/{NEW}"),
        Some(&flood),
        None,
    )
    .await?;
    ensure!(
        status == StatusCode::OK && v["district"] == "Dumai Barat",
        "{status}: {v}"
    );
    let public = p.get_json("/api/v1/public/sensors").await?;
    ensure!(
        public
            .as_array()
            .context("list")?
            .iter()
            .any(|s| s["id"] == NEW),
        "not in the public list: {public}"
    );
    publish_ok(&p, &creds, &envelope("gw-test", 2, &[reading(-20, 250.0)]))?;
    let rows = stored_eventually(&data, NEW, 1).await?;
    ensure!(rows[0].2 == 250.0, "{rows:?}");
    siaga(&p, NEW, 2, 300.0).await?;

    // New thresholds: the same reading now means Siaga 1, with no new
    // reading in between (the cached conditions follow the registry).
    let path = format!("/api/v1/admin/sensors/{NEW}/thresholds");
    let body = serde_json::json!({"thresholds": {"siaga3": 50, "siaga2": 100, "siaga1": 240}});
    let (status, v) = call(&p, Method::PUT, &path, Some(&admin), Some(body.clone())).await?;
    ensure!(
        status == StatusCode::OK && v["thresholds"]["siaga1"] == 240.0,
        "{status}: {v}"
    );
    siaga(&p, NEW, 1, 240.0).await?;

    // Bad input: a 4xx naming the field, nothing changed.
    let mut volcano = new_sensor("fl-api-02", "gw-test");
    volcano["kind"] = "volcano".into();
    let mut falling = new_sensor("fl-api-03", "gw-test");
    falling["thresholds"]["siaga1"] = 50.into();
    let mut misplaced = new_sensor("tr-api-04", "gw-test");
    misplaced["kind"] = "traffic_counter".into();
    // method, path, token, body, expected status, the parameter named
    type Case<'a> = (
        Method,
        String,
        Option<&'a str>,
        Value,
        StatusCode,
        &'static str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            Method::POST,
            "/api/v1/admin/sensors".into(),
            Some(&admin),
            new_sensor(NEW, "gw-test"),
            StatusCode::CONFLICT,
            "",
        ),
        (
            Method::POST,
            "/api/v1/admin/sensors".into(),
            Some(&admin),
            new_sensor("fl-test-01", "gw-test"),
            StatusCode::CONFLICT,
            "",
        ),
        (
            Method::POST,
            "/api/v1/admin/sensors".into(),
            Some(&admin),
            volcano,
            StatusCode::BAD_REQUEST,
            "kind",
        ),
        (
            Method::POST,
            "/api/v1/admin/sensors".into(),
            Some(&admin),
            falling,
            StatusCode::BAD_REQUEST,
            "thresholds",
        ),
        (
            Method::POST,
            "/api/v1/admin/sensors".into(),
            Some(&admin),
            misplaced,
            StatusCode::BAD_REQUEST,
            "thresholds",
        ),
        (
            Method::POST,
            "/api/v1/admin/sensors".into(),
            Some(&admin),
            serde_json::json!({"id": "x"}),
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            Method::POST,
            "/api/v1/admin/sensors".into(),
            Some(&flood),
            new_sensor("fl-api-05", "gw-test"),
            StatusCode::FORBIDDEN,
            "",
        ),
        (
            Method::PUT,
            "/api/v1/admin/sensors/fl-nowhere/thresholds".into(),
            Some(&admin),
            body.clone(),
            StatusCode::NOT_FOUND,
            "",
        ),
        (
            Method::PUT,
            path.clone(),
            Some(&admin),
            serde_json::json!({}),
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            Method::PUT,
            path.clone(),
            Some(&admin),
            serde_json::json!({"capacity_pcu_h": 1800}),
            StatusCode::BAD_REQUEST,
            "capacity_pcu_h",
        ),
        (
            Method::PUT,
            path.clone(),
            Some(&admin),
            serde_json::json!({"thresholds": {"siaga3": 1, "siaga2": 1, "siaga1": 1}}),
            StatusCode::BAD_REQUEST,
            "thresholds",
        ),
        (
            Method::PUT,
            path.clone(),
            Some(&flood),
            body.clone(),
            StatusCode::FORBIDDEN,
            "",
        ),
        (
            Method::PUT,
            path.clone(),
            None,
            body.clone(),
            StatusCode::UNAUTHORIZED,
            "",
        ),
    ];
    for (method, path, token, body, want, param) in cases {
        let (got, v) = call(&p, method.clone(), &path, token, Some(body.clone())).await?;
        ensure!(
            got == want,
            "{method} {path} {body}: {got}, expected {want}: {v}"
        );
        ensure!(
            v["error"].is_string() && v["message"].is_string(),
            "{path}: {v}"
        );
        if !param.is_empty() {
            ensure!(
                v["param"] == param,
                "{method} {path} {body}: param {}, expected {param}",
                v["param"]
            );
        }
    }
    let (_, list) = call(&p, Method::GET, "/api/v1/sensors", Some(&admin), None).await?;
    let ids: Vec<&str> = list
        .as_array()
        .context("list")?
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    ensure!(ids == ["fl-api-01", "fl-test-01"], "{ids:?}");

    // Kept across a restart, and still in effect for ingest.
    p.terminate().await?;
    let reg = dir.path().join("registry.toml");
    let p = Pantau::start_on(
        &data,
        p.http,
        p.mqtt,
        &["--registry", reg.to_str().unwrap()],
    )
    .await?;
    let (status, v) = call(
        &p,
        Method::GET,
        &format!("/api/v1/sensors/{NEW}"),
        Some(&flood),
        None,
    )
    .await?;
    ensure!(
        status == StatusCode::OK && v["thresholds"]["siaga1"] == 240.0,
        "after restart {status}: {v}"
    );
    publish_ok(&p, &creds, &envelope("gw-test", 3, &[reading(-10, 90.0)]))?;
    stored_eventually(&data, NEW, 2).await?;
    siaga(&p, NEW, 3, 240.0).await?;
    Ok(())
}

#[tokio::test]
async fn off_loopback_the_api_speaks_only_https_and_a_stalled_handshake_blocks_nobody() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let flood = token_create(&data, "bpbd", "read:flood")?["token"]
        .as_str()
        .context("token")?
        .to_owned();
    // Every address, not loopback: HTTPS whether asked for or not.
    let http: std::net::SocketAddr = format!("0.0.0.0:{}", free_addr().port()).parse()?;
    let p = Pantau::start_on(&data, http, free_addr(), &["--demo"]).await?;
    ensure!(p.https, "the harness should expect HTTPS here");
    // A client that connects and never says hello holds nobody up.
    let _stalled = tokio::net::TcpStream::connect(("127.0.0.1", http.port())).await?;
    let started = std::time::Instant::now();
    let conditions = p.get_json("/api/v1/public/conditions").await?;
    ensure!(
        started.elapsed() < Duration::from_secs(1),
        "an HTTPS request took {:?} behind a stalled client",
        started.elapsed()
    );
    ensure!(
        !conditions.as_array().context("list")?.is_empty(),
        "{conditions}"
    );
    // An agency token works over HTTPS.
    let r = p
        .client()?
        .get(p.url(&format!("/api/v1/sensors/{FLOOD}")))
        .bearer_auth(&flood)
        .send()
        .await?;
    ensure!(r.status() == StatusCode::OK, "{}", r.status());
    // Plain HTTP gets no HTTP answer, and a client that does not trust the
    // platform's CA does not get one either.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", http.port()))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    ensure!(plain.is_err(), "plain HTTP answered: {plain:?}");
    let untrusted = reqwest::Client::new()
        .get(p.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    ensure!(untrusted.is_err(), "an untrusting client got {untrusted:?}");
    Ok(())
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_rate_limit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, _) = minimal(
        dir.path(),
        &[
            "--trusted-proxy",
            "127.0.0.1",
            "--public-rate-per-s",
            "1",
            "--public-burst",
            "2",
        ],
    )
    .await?;
    let client = reqwest::Client::new();
    let get = |xff: &'static str| {
        client
            .get(p.url("/api/v1/public/sensors"))
            .header("x-forwarded-for", xff)
            .send()
    };
    // One client behind the proxy uses up its burst...
    for _ in 0..2 {
        ensure!(get("198.51.100.1").await?.status() == StatusCode::OK);
    }
    let r = get("198.51.100.1").await?;
    ensure!(
        r.status() == StatusCode::TOO_MANY_REQUESTS,
        "{}",
        r.status()
    );
    // ...another one is not affected, and spoofing a left-hand entry does
    // not get the first one a fresh bucket.
    ensure!(get("198.51.100.2").await?.status() == StatusCode::OK);
    let r = get("203.0.113.50, 198.51.100.1").await?;
    ensure!(
        r.status() == StatusCode::TOO_MANY_REQUESTS,
        "{}",
        r.status()
    );
    Ok(())
}
