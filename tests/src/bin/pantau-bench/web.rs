//! Web benchmarks in Debian's headless Chromium (through ChromeDriver):
//!
//! - `web-load`: the public page's first load on a demo run, each with a
//!   fresh profile — compressed bytes over the wire (Resource Timing's
//!   transfer sizes) and the time from navigation until the map shows
//!   every site (the page's `pantau-map-ready` mark), against the load of
//!   `/healthz` in the same browser and run.
//! - `web-live`: 200 public sites live-updating at 50 readings/s for 60 s
//!   (`PANTAU_BENCH_WEB_SECS`): the page's JS heap after a GC and the
//!   publish → paint lag in the first and last 10 s of the run, as ratios.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pantau_tests::browser::Browser;
use pantau_tests::mqtt::connect_gateway;
use pantau_tests::*;
use serde_json::Value;

const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

pub(crate) async fn bench_web_load() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let p = Pantau::start(&data, &["--demo", "--demo-interval", "10s"]).await?;
    let sites = p
        .get_json("/api/v1/public/conditions")
        .await?
        .as_array()
        .map(Vec::len)
        .context("conditions")?;
    let (mut base_ms, mut ready_ms, mut bytes, mut requests) = (vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let b = Browser::start(1440, 900, "id-ID,id").await?;
        // Baseline: the same browser loading the smallest answer.
        b.client.goto(&p.url("/healthz")).await?;
        let base = b
            .wait_for(
                Duration::from_secs(10),
                "/healthz loaded",
                "const n = performance.getEntriesByType('navigation')[0]; return n && n.loadEventEnd > 0 ? n.loadEventEnd : null",
            )
            .await?;
        b.client.goto(&p.url("/")).await?;
        let ready = b
            .wait_for(
                Duration::from_secs(20),
                "every site on the map",
                &format!(
                    "const m = performance.getEntriesByName('pantau-map-ready')[0];
                     return m && document.querySelectorAll('.pin[data-site]').length === {sites} ? m.startTime : null"
                ),
            )
            .await?;
        // Everything the first load fetched (the page, its assets, the
        // outline, the first answers; the live feed's bytes excluded).
        let sizes = b
            .js("const n = performance.getEntriesByType('navigation')[0];
                 const by = new Map();
                 for (const e of performance.getEntriesByType('resource')) {
                   if (e.name.includes('/api/v1/public/live')) continue;
                   by.set(e.name, Math.max(by.get(e.name) || 0, e.transferSize));
                 }
                 return [n.transferSize + [...by.values()].reduce((a, b) => a + b, 0), by.size + 1,
                         [...by].filter(([, size]) => size === 0).map(([name]) => name)];")
            .await?;
        ensure!(
            sizes[2].as_array().is_some_and(Vec::is_empty),
            "resources not fetched over the wire on a fresh profile: {}",
            sizes[2]
        );
        base_ms.push(base.as_f64().context("baseline")?);
        ready_ms.push(ready.as_f64().context("ready")?);
        bytes.push(sizes[0].as_f64().context("bytes")?);
        requests.push(sizes[1].as_f64().context("requests")?);
        b.close().await?;
    }
    let (base, ready) = (median(base_ms), median(ready_ms));
    println!(
        "web-load: first load of the public page (median of {RUNS}, fresh profile each): {:.0} KB over the wire in {:.0} requests; map shows all {sites} sites at {ready:.0} ms after navigation start; /healthz loads in {base:.0} ms (ratio {:.1}x)",
        median(bytes) / 1024.0,
        median(requests),
        ready / base
    );
    Ok(())
}

/// 200 public flood gauges on 4 gateways, spread over the city.
fn registry_200() -> String {
    let mut out = String::new();
    for i in 0..200 {
        let (g, row, col) = (i / 50, i / 20, i % 20);
        out.push_str(&format!(
            "[[sensor]]\nid = \"fl-w{i}\"\nkind = \"flood_gauge\"\ngateway = \"gw-w{g}\"\nname = \"Pos {i}\"\ndistrict = \"D{}\"\nlat = {}\nlon = {}\npublic = true\n[sensor.thresholds]\nsiaga3 = 100.0\nsiaga2 = 150.0\nsiaga1 = 200.0\n\n",
            g,
            1.60 + row as f64 * 0.011,
            101.38 + col as f64 * 0.007
        ));
    }
    out
}

pub(crate) async fn bench_web_live() -> Result<()> {
    let secs: u64 = std::env::var("PANTAU_BENCH_WEB_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
        .max(30);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let reg = dir.path().join("registry.toml");
    std::fs::write(&reg, registry_200())?;
    let p = Pantau::start(&data, &["--registry", reg.to_str().context("path")?]).await?;
    let mut gateways = Vec::new();
    for g in 0..4 {
        let creds = gateway_add(&data, &format!("gw-w{g}"))?;
        let (client, mut eventloop) = connect_gateway(&p, &creds).await?;
        tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        gateways.push((creds.gateway, client));
    }
    let b = Browser::start_with(
        1440,
        900,
        "id-ID,id",
        &["--enable-precise-memory-info", "--js-flags=--expose-gc"],
    )
    .await?;
    b.client.goto(&p.url("/")).await?;
    b.wait_for(
        Duration::from_secs(20),
        "200 sites on the map",
        "return document.querySelectorAll('.pin[data-site]').length === 200",
    )
    .await?;
    b.js("window.__pantauLag = []; return 1").await?;

    // Baseline: the same feed read by a plain HTTP client in this process,
    // publish → event received (what the page adds is the browser's part).
    let plain: std::sync::Arc<std::sync::Mutex<Vec<f64>>> = Default::default();
    let reader = {
        let (plain, url) = (plain.clone(), p.url("/api/v1/public/live"));
        tokio::spawn(async move {
            use futures::StreamExt;
            let Ok(resp) = reqwest::get(&url).await else {
                return;
            };
            let mut body = resp.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(i) = buf.find("\n\n") {
                    let frame: String = buf.drain(..i + 2).collect();
                    let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                        continue;
                    };
                    let Ok(v) = serde_json::from_str::<Value>(data) else {
                        continue;
                    };
                    if let Some(ts) = v["ts"]
                        .as_str()
                        .and_then(pantau_model::Timestamp::parse_rfc3339)
                    {
                        let lag = pantau_model::Timestamp::now().millis() - ts.millis();
                        plain.lock().unwrap().push(lag as f64);
                    }
                }
            }
        })
    };

    // 50 readings/s: every 100 ms one envelope of 5 readings, the gateways
    // in turn, water levels that cross the Siaga thresholds now and then.
    // Every 10 s: the page's lag samples, the plain client's, and the JS
    // heap after a GC.
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (mut n, mut seq) = (0u64, 0u64);
    let heap = "window.gc(); return performance.memory.usedJSHeapSize";
    let drain = "const l = window.__pantauLag; window.__pantauLag = []; return l";
    // (page p50, page p99, paints, plain p50, plain p99, heap MB)
    let mut windows: Vec<(f64, f64, usize, f64, f64, f64)> = vec![];
    let mut next = 10;
    while started.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let (gw, client) = &gateways[(seq % 4) as usize];
        let g = seq % 4;
        seq += 1;
        let ts = pantau_model::Timestamp::now().to_rfc3339();
        let lines: Vec<String> = (0..5)
            .map(|k| {
                let s = g * 50 + (n + k) % 50;
                let cm = 60.0 + ((n + k) * 37 % 160) as f64;
                format!(r#"{{"sensor":"fl-w{s}","ts":"{ts}","values":{{"water_level_cm":{cm}}}}}"#)
            })
            .collect();
        n += 5;
        client
            .publish(
                format!("pantau/v1/gw/{gw}/telemetry"),
                rumqttc::QoS::AtLeastOnce,
                false,
                envelope(gw, seq, &lines),
            )
            .await?;
        if started.elapsed().as_secs() >= next {
            next += 10;
            let page: Vec<f64> = b
                .js(drain)
                .await?
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect();
            let base: Vec<f64> = std::mem::take(&mut *plain.lock().unwrap());
            let h = b.js(heap).await?.as_f64().context("heap")? / 1e6;
            windows.push((
                quantile(page.clone(), 0.5),
                quantile(page.clone(), 0.99),
                page.len(),
                quantile(base.clone(), 0.5),
                quantile(base, 0.99),
                h,
            ));
        }
    }
    reader.abort();
    ensure!(windows.len() >= 3, "too short a run");
    let metrics = p.metrics().await?;
    let coalesced = metric(&metrics, "pantau_ingest_live_coalesced_total").unwrap_or(0.0);
    let (first, last) = (windows[0], windows[windows.len() - 1]);
    let series: Vec<String> = windows
        .iter()
        .map(|w| format!("{:.0}/{:.0}", w.0, w.3))
        .collect();
    println!(
        "web-live: 200 sites, {:.0} readings/s for {secs} s, {} paints per 10 s (of {:.0} readings): JS heap after GC {:.2} MB after 10 s, {:.2} MB at the end (ratio {:.2}); publish→paint p50/p99 {:.0}/{:.0} ms in the first 10 s, {:.0}/{:.0} ms in the last (p99 ratio {:.2}); baseline publish→SSE event at a plain client, same run: {:.0}/{:.0} ms first, {:.0}/{:.0} ms last; page/plain p50 per 10 s window: {}; live events coalesced by the server: {coalesced:.0}",
        n as f64 / started.elapsed().as_secs_f64(),
        last.2,
        n as f64 / started.elapsed().as_secs_f64() * 10.0,
        first.5,
        last.5,
        last.5 / first.5,
        first.0,
        first.1,
        last.0,
        last.1,
        last.1 / first.1,
        first.3,
        first.4,
        last.3,
        last.4,
        series.join(" "),
    );
    b.close().await
}
