//! The web pages in a real browser (Debian's headless Chromium through
//! ChromeDriver): the public app on a demo run — every public site and no
//! other in the DOM, a reading published with `mosquitto_pub` on the page
//! within 2 s, a Siaga 2 crossing on the marker, the list and the warnings
//! banner, the language switch, the site page's chart, the last conditions
//! offline from the service worker — and the agency console — a bad token
//! explained, a `read:flood` token limited to flood sensors and alerts, an
//! acknowledgement made in the page visible through the API. Both pages
//! pass axe-core with no serious or critical violation and leave no error
//! in the browser console. Screenshots (390×844 and 1440×900) are written
//! to `target/artifacts/web/`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pantau_tests::browser::Browser;
use pantau_tests::*;
use serde_json::{json, Value};

const PHONE: (u32, u32) = (390, 844);
const DESKTOP: (u32, u32) = (1440, 900);
/// The probe site registered through the API on top of the demo.
const PROBE: &str = "fl-web";
/// A non-public tide gauge with an alert rule of its own.
const HIDDEN: &str = "tide-web";
/// The demo's sites that are not public.
const NOT_PUBLIC: [&str; 3] = ["tr-pelabuhan-gate", "br-dermaga-b", "br-dermaga-c"];

struct Demo {
    _dir: tempfile::TempDir,
    p: Pantau,
    admin: String,
    gw: GatewayCreds,
}

/// A demo run (one reading per demo site, then quiet: a 10 min interval),
/// plus `gw-web` reporting the public flood gauge `fl-web` (Siaga 3, 2, 1
/// from 100, 150, 200 cm) and the non-public tide gauge `tide-web`, whose
/// rule `pasang-web` opens above 2 m.
async fn demo() -> Result<Demo> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let p = Pantau::start(&data, &["--demo", "--demo-interval", "10m"]).await?;
    let admin = token_create(&data, "web-admin", "admin")?["token"]
        .as_str()
        .context("token")?
        .to_owned();
    let gw = gateway_add(&data, "gw-web")?;
    for body in [
        json!({"id": PROBE, "kind": "flood_gauge", "gateway": "gw-web", "name": "Pos Uji Jalan Sudirman",
               "district": "Dumai Kota", "lat": 1.6745, "lon": 101.4530, "owner": "bpbd", "public": true,
               "thresholds": {"siaga3": 100, "siaga2": 150, "siaga1": 200}}),
        json!({"id": HIDDEN, "kind": "tide_gauge", "gateway": "gw-web", "name": "Pasang Uji Internal",
               "district": "Dumai Barat", "lat": 1.6890, "lon": 101.4300, "owner": "ksop", "public": false}),
    ] {
        let (status, v) = p
            .call(
                reqwest::Method::POST,
                "/api/v1/admin/sensors",
                &admin,
                Some(body),
            )
            .await?;
        ensure!(status == 201, "register a sensor: {status} {v}");
    }
    let rule = json!({"id": "pasang-web", "name": "Pasang tinggi (uji)", "kind": "tide_gauge",
        "sensors": [HIDDEN], "field": "tide_height_m", "above": [2.0]});
    let (status, v) = p
        .call(
            reqwest::Method::POST,
            "/api/v1/admin/alert-rules",
            &admin,
            Some(rule),
        )
        .await?;
    ensure!(status == 201, "add a rule: {status} {v}");
    let d = Demo {
        _dir: dir,
        p,
        admin,
        gw,
    };
    // 20 minutes old: the probe starts stale.
    publish_at(
        &d,
        -1200,
        &[
            (PROBE, "water_level_cm", 60.0),
            (HIDDEN, "tide_height_m", 1.0),
        ],
    )?;
    Ok(d)
}

/// Publishes one reading per `(sensor, field, value)`, stamped now, as
/// `gw-web` with `mosquitto_pub` (QoS 1; returns after the PUBACK).
fn publish(d: &Demo, readings: &[(&str, &str, f64)]) -> Result<()> {
    publish_at(d, 0, readings)
}

/// [`publish`], stamped `offset_s` from now.
fn publish_at(d: &Demo, offset_s: i64, readings: &[(&str, &str, f64)]) -> Result<()> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let ts = now_rfc3339(offset_s);
    let lines: Vec<String> = readings
        .iter()
        .map(|(s, f, v)| format!(r#"{{"sensor":"{s}","ts":"{ts}","values":{{"{f}":{v}}}}}"#))
        .collect();
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    publish_ok(&d.p, &d.gw, &envelope("gw-web", seq, &lines))
}

/// The ids the public conditions hold.
async fn public_ids(p: &Pantau) -> Result<BTreeSet<String>> {
    let c = p.get_json("/api/v1/public/conditions").await?;
    Ok(c.as_array()
        .context("a list")?
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect())
}

fn ids_of(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

/// An alert as the admin reads it through the API.
async fn alert(d: &Demo, id: i64) -> Option<Value> {
    let (_, a) =
        d.p.call(
            reqwest::Method::GET,
            &format!("/api/v1/alerts/{id}"),
            &d.admin,
            None,
        )
        .await
        .ok()?;
    Some(a.get("alert").cloned().unwrap_or(a))
}

/// Fails on any serious or critical axe-core violation.
async fn accessible(b: &Browser, page: &str) -> Result<()> {
    let v = b.axe().await?;
    ensure!(
        v.is_empty(),
        "{page}: axe-core finds serious or critical violations: {v:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_app_shows_every_public_site_live_warns_and_works_offline() -> Result<()> {
    let mut d = demo().await?;
    let b = Browser::start(PHONE.0, PHONE.1, "id-ID,id").await?;
    b.client.goto(&d.p.url("/")).await?;

    // Every public site, and no other, in the DOM: the list and the map.
    let want = eventually(
        Duration::from_secs(20),
        "the 18 public demo sites and the probe in the conditions",
        || async {
            let ids = public_ids(&d.p).await.ok()?;
            (ids.len() == 19).then_some(ids)
        },
    )
    .await?;
    for id in demo_public_ids()? {
        ensure!(
            want.contains(&id),
            "public demo site {id} is not in the public conditions"
        );
    }
    let shown = b
        .wait_for(
            Duration::from_secs(10),
            "the list and the map show every public site",
            &format!(
                "const l = [...document.querySelectorAll('#list li[data-site]')].map((e) => e.dataset.site);
                 const m = [...document.querySelectorAll('.leaflet-marker-icon.pin[data-site]')].map((e) => e.dataset.site);
                 return l.length === {n} && m.length === {n} ? [l, m] : null;",
                n = want.len()
            ),
        )
        .await?;
    ensure!(
        ids_of(&shown[0]) == want,
        "list {:?} != public sites {want:?}",
        shown[0]
    );
    ensure!(
        ids_of(&shown[1]) == want,
        "map {:?} != public sites {want:?}",
        shown[1]
    );
    let html = b.js("return document.documentElement.outerHTML").await?;
    let html = html.as_str().context("HTML")?;
    for id in NOT_PUBLIC.iter().chain([&HIDDEN]) {
        ensure!(
            !html.contains(id),
            "non-public site {id} is in the page's DOM"
        );
    }
    ensure!(
        !html.contains("Pasang Uji Internal"),
        "a non-public site's name is in the DOM"
    );
    // Bahasa Indonesia by default.
    let tab = b
        .js("return document.getElementById('tab-list').textContent")
        .await?;
    ensure!(tab == "Daftar", "default language: the list tab says {tab}");

    // A 20-minute-old value says so and looks stale.
    b.wait_for(
        Duration::from_secs(5),
        "the probe's old value marked stale",
        &format!(
            "const li = document.querySelector('#list li[data-site=\"{PROBE}\"]');
             const pin = document.querySelector('.pin[data-site=\"{PROBE}\"]');
             return li.classList.contains('stale') && pin.classList.contains('stale')
               && li.querySelector('.site-age').textContent.includes('Data lama')
               && li.querySelector('.site-age').textContent.includes('20 menit lalu');"
        ),
    )
    .await?;

    // A reading published now is on the page within 2 s, without a reload.
    let before = b
        .js("window.__marker = 1; return performance.timeOrigin")
        .await?;
    publish(&d, &[(PROBE, "water_level_cm", 61.0)])?;
    let sent = Instant::now();
    b.wait_for(
        Duration::from_secs(2),
        "the 61 cm reading on the page",
        &format!("return document.querySelector('#list li[data-site=\"{PROBE}\"] .site-value').textContent === '61 cm'
                  && !document.querySelector('#list li[data-site=\"{PROBE}\"]').classList.contains('stale')"),
    )
    .await?;
    let took = sent.elapsed();
    ensure!(
        b.js("return window.__marker === 1 && performance.timeOrigin")
            .await?
            == before,
        "the page reloaded"
    );
    println!("a published reading reached the page in {took:?}");

    // Siaga 2: the marker, the list entry and the banner.
    publish(&d, &[(PROBE, "water_level_cm", 163.0)])?;
    let sent = Instant::now();
    b.wait_for(
        Duration::from_secs(2),
        "fl-web at Siaga 2 on the marker, the list and the banner",
        &format!(
            "const li = document.querySelector('#list li[data-site=\"{PROBE}\"]');
             const pin = document.querySelector('.pin[data-site=\"{PROBE}\"]');
             const banner = document.getElementById('banner');
             return li.classList.contains('st-siaga2') && li.textContent.includes('Siaga 2')
               && pin.classList.contains('st-siaga2') && pin.dataset.glyph === '2'
               && !banner.hidden && banner.textContent.includes('Pos Uji Jalan Sudirman')
               && banner.textContent.includes('Siaga 2');"
        ),
    )
    .await?;
    println!(
        "Siaga 2 reached the marker, list and banner in {:?}",
        sent.elapsed()
    );
    // The most severe site comes first in the list.
    let first = b
        .js("return document.querySelector('#list li[data-site]').dataset.site")
        .await?;
    ensure!(
        first == PROBE,
        "the list starts with {first}, not the Siaga 2 site"
    );
    // The alert engine's warning reaches the banner too.
    b.wait_for(
        Duration::from_secs(10),
        "the official warning in the banner",
        &format!("return [...document.querySelectorAll('#banner-list li[data-site=\"{PROBE}\"] .when')].some((e) => e.textContent.includes('sejak'))"),
    )
    .await?;
    b.screenshot("public-phone-map").await?;
    accessible(&b, "public page (map)").await?;
    b.js("document.getElementById('tab-list').click(); return 1")
        .await?;
    b.screenshot("public-phone-list").await?;
    accessible(&b, "public page (list)").await?;

    // English by the switch, and back.
    b.js("document.querySelector('[data-lang=en]').click(); return 1")
        .await?;
    b.wait_for(
        Duration::from_secs(2),
        "English labels",
        &format!(
            "return document.documentElement.lang === 'en' && document.getElementById('tab-list').textContent === 'List'
               && document.querySelector('#list li[data-site=\"{PROBE}\"] .site-status').textContent.includes('Standby')
               && document.getElementById('banner').textContent.includes('Active warnings')"
        ),
    )
    .await?;
    b.screenshot("public-phone-list-en").await?;
    b.js("document.querySelector('[data-lang=id]').click(); return 1")
        .await?;
    b.wait_for(
        Duration::from_secs(2),
        "Bahasa labels again",
        "return document.getElementById('tab-list').textContent === 'Daftar' && document.documentElement.lang === 'id'",
    )
    .await?;

    // The site page: value, thresholds, status and a chart of the history.
    b.js(&format!(
        "document.querySelector('#list li[data-site=\"{PROBE}\"] button').click(); return 1"
    ))
    .await?;
    b.wait_for(
        Duration::from_secs(10),
        "the site page with its chart",
        "const s = document.getElementById('site');
         return !s.hidden && s.querySelector('.site-title').textContent === 'Pos Uji Jalan Sudirman'
           && s.querySelector('.limits').textContent.includes('150')
           && s.querySelector('.now-label').textContent.includes('Siaga 2')
           && !!s.querySelector('#chart canvas');",
    )
    .await?;
    b.screenshot("public-phone-site").await?;
    b.js("document.getElementById('chart').scrollIntoView({block: 'end'}); return 1")
        .await?;
    b.screenshot("public-phone-site-chart").await?;
    accessible(&b, "site page").await?;
    b.js("document.querySelector('[data-range=\"7d\"]').click(); return 1")
        .await?;
    b.wait_for(
        Duration::from_secs(10),
        "the 7-day chart",
        "return document.querySelector('[data-range=\"7d\"]').getAttribute('aria-pressed') === 'true' && !!document.querySelector('#chart canvas')",
    )
    .await?;

    // Desktop: map and list side by side.
    b.resize(DESKTOP.0, DESKTOP.1).await?;
    b.js("location.hash = ''; return 1").await?;
    b.wait_for(
        Duration::from_secs(5),
        "the home view on a desktop",
        "return !document.getElementById('home').hidden && document.getElementById('map').offsetWidth > 800
           && document.getElementById('list').offsetParent !== null",
    )
    .await?;
    b.screenshot("public-desktop").await?;
    accessible(&b, "public page (desktop)").await?;
    b.no_console_errors("public page").await?;

    // Offline: the installed page shows the last conditions, marked so.
    b.wait_for(
        Duration::from_secs(10),
        "the service worker controls the page and kept the Siaga 2 reading",
        &format!(
            "const snap = JSON.parse(localStorage.getItem('pantau.public.snapshot') || 'null');
             const s = snap && snap.sites.find((x) => x.id === '{PROBE}');
             return !!navigator.serviceWorker.controller && !!s && s.status && s.status.siaga_level === 2;"
        ),
    )
    .await?;
    d.p.kill();
    b.resize(PHONE.0, PHONE.1).await?;
    b.client.refresh().await?;
    let offline = b
        .wait_for(
            Duration::from_secs(10),
            "the last conditions, marked offline",
            &format!(
                "const note = document.getElementById('offline');
                 const li = document.querySelector('#list li[data-site=\"{PROBE}\"]');
                 return !note.hidden && document.body.classList.contains('is-offline') && li
                   && li.classList.contains('st-siaga2')
                   && document.querySelectorAll('#list li[data-site]').length === {n}
                   && document.getElementById('conn').textContent === 'Offline' ? note.textContent : null;",
                n = want.len()
            ),
        )
        .await;
    let offline = match offline {
        Ok(v) => v,
        Err(e) => {
            let state = b
                .js(&format!(
                    "const li = document.querySelector('#list li[data-site=\"{PROBE}\"]');
                     return {{note: document.getElementById('offline').outerHTML, body: document.body.className,
                       li: li && li.className, n: document.querySelectorAll('#list li[data-site]').length,
                       conn: document.getElementById('conn').textContent}}"
                ))
                .await?;
            return Err(e.context(format!("offline page state: {state:#}")));
        }
    };
    ensure!(
        offline.as_str().is_some_and(|t| t.contains("offline")),
        "{offline}"
    );
    b.js("document.getElementById('tab-list').click(); return 1")
        .await?;
    b.screenshot("public-phone-offline").await?;
    b.close().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_is_limited_to_the_tokens_scopes_and_acts_through_the_api() -> Result<()> {
    let d = demo().await?;
    let data = &d.p.data_dir;
    let flood = token_create(data, "web-flood", "read:flood,ack:flood_gauge")?["token"]
        .as_str()
        .context("token")?
        .to_owned();
    // One alert of each kind: Siaga 2 on fl-web, high tide on tide-web.
    publish(
        &d,
        &[
            (PROBE, "water_level_cm", 170.0),
            (HIDDEN, "tide_height_m", 2.4),
        ],
    )?;
    let alerts = eventually(
        Duration::from_secs(15),
        "a flood and a tide alert",
        || async {
            let (_, v) =
                d.p.call(reqwest::Method::GET, "/api/v1/alerts", &d.admin, None)
                    .await
                    .ok()?;
            let list = v["alerts"].as_array()?.clone();
            let flood = list.iter().find(|a| a["sensor"] == PROBE)?.clone();
            list.iter().find(|a| a["sensor"] == HIDDEN)?;
            Some((flood, list))
        },
    )
    .await?;
    let alert_id = alerts.0["id"].as_i64().context("alert id")?;
    let (_, sensors) =
        d.p.call(
            reqwest::Method::GET,
            "/api/v1/sensors?kind=flood_gauge",
            &d.admin,
            None,
        )
        .await?;
    let flood_ids: BTreeSet<String> = sensors
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        flood_ids.contains(PROBE) && flood_ids.len() == 9,
        "{flood_ids:?}"
    );

    // English by the browser's Accept-Language.
    let b = Browser::start(DESKTOP.0, DESKTOP.1, "en-US,en").await?;
    b.client.goto(&d.p.url("/")).await?;
    b.wait_for(
        Duration::from_secs(10),
        "the public page in English",
        "return document.documentElement.lang === 'en' && document.getElementById('tab-list').textContent === 'List'",
    )
    .await?;

    // A bad token gets a clear message, not a blank page.
    b.client.goto(&d.p.url("/console")).await?;
    b.wait_for(
        Duration::from_secs(10),
        "the sign-in form",
        "return !!document.getElementById('token')",
    )
    .await?;
    accessible(&b, "console sign-in").await?;
    b.js("document.getElementById('token').value = 'not-a-token'; document.querySelector('#signin-form button[type=submit]').click(); return 1")
        .await?;
    let msg = b
        .wait_for(
            Duration::from_secs(5),
            "the bad-token message",
            "const e = document.getElementById('signin-error'); return e.hidden ? null : e.textContent",
        )
        .await?;
    ensure!(
        msg.as_str()
            .is_some_and(|m| m.contains("unknown or was revoked")),
        "{msg}"
    );
    ensure!(
        b.js("return document.getElementById('app').hidden && !document.getElementById('signin').hidden").await? == true,
        "the sign-in form stays after a bad token"
    );
    b.screenshot("console-desktop-bad-token").await?;
    // The 401 the browser logs for the refused token is the one expected
    // error; nothing else may be there.
    let logged = b.console().await?;
    let unexpected: Vec<_> = logged
        .iter()
        .filter(|(level, m)| level == "SEVERE" && !m.contains("/api/v1/sensors - Failed to load resource: the server responded with a status of 401"))
        .collect();
    ensure!(
        unexpected.is_empty(),
        "console errors besides the refused token: {unexpected:#?}"
    );

    // Signed in with read:flood: only flood alerts and sensors.
    b.js(&format!("document.getElementById('token').value = '{flood}'; document.querySelector('#signin-form button[type=submit]').click(); return 1"))
        .await?;
    let shown = b
        .wait_for(
            Duration::from_secs(10),
            "the alerts inbox",
            &format!("const l = [...document.querySelectorAll('#alerts li[data-alert]')].map((e) => e.dataset.sensor);
                      return l.includes('{PROBE}') ? l : null;"),
        )
        .await?;
    for s in shown.as_array().into_iter().flatten() {
        let s = s.as_str().unwrap_or_default();
        ensure!(
            flood_ids.contains(s),
            "the read:flood console shows an alert of {s}"
        );
    }
    ensure!(
        b.js("return document.documentElement.outerHTML")
            .await?
            .as_str()
            .is_some_and(|h| !h.contains(HIDDEN)),
        "the tide alert is in the read:flood console's DOM"
    );
    ensure!(
        b.js("return sessionStorage.getItem('pantau.console.token') !== null && localStorage.getItem('pantau.console.token') === null").await? == true,
        "the token is kept for the tab only"
    );
    b.screenshot("console-desktop-alerts").await?;
    accessible(&b, "console alerts").await?;

    // Acknowledge in the page; the API shows it.
    b.js(&format!("document.querySelector('#alerts li[data-alert=\"{alert_id}\"] button[data-act=ack]').click(); return 1"))
        .await?;
    let acked = eventually(
        Duration::from_secs(5),
        "the alert acknowledged through the API",
        || async {
            let a = alert(&d, alert_id).await?;
            (a["state"] == "acknowledged").then_some(a)
        },
    )
    .await?;
    ensure!(
        acked["ack_by"] == "web-flood",
        "acknowledged by {}",
        acked["ack_by"]
    );
    b.wait_for(
        Duration::from_secs(5),
        "the page shows it acknowledged",
        &format!("const li = document.querySelector('#alerts li[data-alert=\"{alert_id}\"]'); return li && li.dataset.state === 'acknowledged'"),
    )
    .await?;

    // Assign in the page; the API shows the assignee.
    b.js(&format!("document.querySelector('#alerts li[data-alert=\"{alert_id}\"] button[data-act=assign]').click(); return 1"))
        .await?;
    b.js(&format!(
        "const f = document.querySelector('#alerts li[data-alert=\"{alert_id}\"] form.act-form');
         f.querySelector('input').value = 'Regu BPBD 2'; f.requestSubmit(); return 1"
    ))
    .await?;
    eventually(
        Duration::from_secs(5),
        "the assignee through the API",
        || async {
            let a = alert(&d, alert_id).await?;
            (a["assignee"] == "Regu BPBD 2").then_some(())
        },
    )
    .await?;

    // Sensors: flood only, in the table and on the map; a history chart.
    b.js("document.getElementById('tab-sensors').click(); return 1")
        .await?;
    let rows = b
        .wait_for(
            Duration::from_secs(10),
            "the sensor table and map",
            &format!(
                "const r = [...document.querySelectorAll('#sensors tbody tr[data-site]')].map((e) => e.dataset.site);
                 const m = document.querySelectorAll('#cmap .pin[data-site]').length;
                 return r.length === {n} && m === {n} ? r : null;",
                n = flood_ids.len()
            ),
        )
        .await?;
    ensure!(
        ids_of(&rows) == flood_ids,
        "sensor table {rows} != flood sensors {flood_ids:?}"
    );
    b.js(&format!(
        "document.querySelector('#sensors tr[data-site=\"{PROBE}\"] button').click(); return 1"
    ))
    .await?;
    b.wait_for(
        Duration::from_secs(10),
        "the history chart",
        "return !document.getElementById('detail').hidden && !!document.querySelector('#d-chart canvas')",
    )
    .await?;
    b.screenshot("console-desktop-sensors").await?;
    // CSV export of what the chart shows: the readings, as the browser
    // downloads them.
    b.js("document.getElementById('d-csv').click(); return 1")
        .await?;
    let csv = eventually(Duration::from_secs(10), "the CSV download", || async {
        let entry = std::fs::read_dir(b.downloads())
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".csv"))?;
        std::fs::read_to_string(entry.path())
            .ok()
            .filter(|t| t.ends_with('\n'))
    })
    .await?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = header.iter().position(|h| *h == "water_level_cm");
    ensure!(header[0] == "time" && col.is_some(), "CSV header: {csv}");
    let levels: Vec<&str> = lines
        .filter_map(|l| l.split(',').nth(col.unwrap_or(0)))
        .collect();
    ensure!(
        levels.contains(&"60") && levels.contains(&"170"),
        "the readings 60 and 170 cm are not in the CSV: {csv}"
    );
    accessible(&b, "console sensors").await?;

    // Gateways: health of the token's gateways only.
    b.js("document.getElementById('tab-gateways').click(); return 1")
        .await?;
    b.wait_for(
        Duration::from_secs(10),
        "gw-web in the gateway table",
        "return !!document.querySelector('#gateways tr[data-gateway=\"gw-web\"]')",
    )
    .await?;
    accessible(&b, "console gateways").await?;
    b.resize(PHONE.0, PHONE.1).await?;
    b.js("document.getElementById('tab-alerts').click(); return 1")
        .await?;
    b.screenshot("console-phone-alerts").await?;
    b.no_console_errors("console").await?;
    b.close().await
}

/// Over HTTP, without a browser: the pages carry the strict policy and
/// revalidate; fingerprinted assets are immutable and gzipped; no page
/// holds an inline script or style; the first load stays under 300 KB.
#[tokio::test]
async fn pages_are_served_with_a_strict_policy_cached_and_compressed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let p = Pantau::start(&data, &[]).await?;
    let http = reqwest::Client::builder().no_gzip().build()?;
    let mut first_load = 0usize;
    for page in ["/", "/console"] {
        let resp = http
            .get(p.url(page))
            .header("Accept-Encoding", "gzip")
            .send()
            .await?;
        ensure!(resp.status() == 200, "{page}: {}", resp.status());
        let h = resp.headers().clone();
        let csp = h["content-security-policy"].to_str()?;
        for part in [
            "default-src 'none'",
            "script-src 'self';",
            "style-src 'self';",
            "frame-ancestors 'none'",
        ] {
            ensure!(csp.contains(part), "{page}: CSP {csp} lacks {part}");
        }
        ensure!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        ensure!(
            h["cache-control"] == "no-cache" && h.contains_key("etag"),
            "{page}: {h:?}"
        );
        ensure!(h["content-encoding"] == "gzip", "{page} not gzipped: {h:?}");
        let etag = h["etag"].to_str()?.to_owned();
        let body = http.get(p.url(page)).send().await?.text().await?;
        if page == "/" {
            first_load += resp.bytes().await?.len();
        }
        // No inline script or style: every script has a src, no style
        // element, no style or on* attribute.
        for (i, _) in body.match_indices("<script") {
            let tag = &body[i..i + body[i..].find('>').context("a closed tag")?];
            ensure!(
                tag.contains(" src=\"/assets/"),
                "{page}: inline script {tag}"
            );
        }
        ensure!(
            !body.contains("<style") && !body.contains(" style=\"") && !body.contains(" onclick="),
            "{page}: inline style or handler"
        );
        let revalidated = http
            .get(p.url(page))
            .header("If-None-Match", &etag)
            .send()
            .await?;
        ensure!(
            revalidated.status() == 304,
            "{page}: {}",
            revalidated.status()
        );
        let mut assets: Vec<String> = body
            .match_indices("/assets/")
            .map(|(i, _)| body[i..].chars().take_while(|c| *c != '"').collect())
            .collect();
        assets.sort();
        assets.dedup();
        ensure!(assets.len() >= 8, "{page} names {assets:?}");
        for a in &assets {
            let resp = http
                .get(p.url(a))
                .header("Accept-Encoding", "gzip, br")
                .send()
                .await?;
            ensure!(resp.status() == 200, "{a}: {}", resp.status());
            let h = resp.headers().clone();
            ensure!(
                h["cache-control"] == "public, max-age=31536000, immutable",
                "{a}: {h:?}"
            );
            let text = a.ends_with(".js")
                || a.ends_with(".css")
                || a.ends_with(".geojson")
                || a.ends_with(".svg");
            ensure!(
                !text || h["content-encoding"] == "gzip",
                "{a} not gzipped: {h:?}"
            );
            let n = resp.bytes().await?.len();
            if page == "/" {
                first_load += n;
            }
        }
    }
    // An unknown asset is a JSON 404 like any unknown route.
    let missing = http
        .get(p.url("/assets/nothing.0000000000.js"))
        .send()
        .await?;
    ensure!(missing.status() == 404, "{}", missing.status());
    println!("first load of / (page and assets, gzipped): {first_load} bytes");
    ensure!(
        first_load <= 300 * 1024,
        "first load {first_load} bytes > 300 KB"
    );
    Ok(())
}
