//! The alert store of a scaled deployment (PostgreSQL 15 from Debian)
//! answers as the embedded one (`state.db`): one scenario — a Siaga
//! sequence, a reopening within the cool-down, a rule added by API, a
//! silenced alert, people's actions, webhooks and their outboxes, filters
//! and refusals — runs through the alert engine on both, and everything
//! read back is the same. And the fence: once another evaluator took the
//! alert lease over, the old one's steps are refused and leave nothing.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pantau_alerts::store::{AlertFilter, Fence, Silence, Webhook, WebhookHealth};
use pantau_alerts::{AlertMetrics, AlertState, AlertStore, Engine, EngineConfig, StoreError};
use pantau_ingest::log::LoggedReading;
use pantau_model::{Registry, SensorKind, SharedRegistry, Timestamp, Value};
use pantau_state::StateDb;
use pantau_tests::services::Postgres;
use serde_json::json;

const GAUGE: &str = "fl-sungai-dumai";
const WIND: &str = "mo-pelabuhan";

fn registry() -> Registry {
    Registry::parse(&format!(
        "[[sensor]]\nid = \"{GAUGE}\"\nkind = \"flood_gauge\"\ngateway = \"gw-1\"\nname = \"Sungai Dumai\"\ndistrict = \"Dumai Kota\"\nlat = 1.67\nlon = 101.45\npublic = true\nthresholds = {{ siaga3 = 100, siaga2 = 200, siaga1 = 300 }}\n\n\
         [[sensor]]\nid = \"{WIND}\"\nkind = \"metocean\"\ngateway = \"gw-1\"\nname = \"Pelabuhan\"\ndistrict = \"Dumai Barat\"\nlat = 1.68\nlon = 101.44\n"
    ))
    .expect("a valid registry")
}

fn engine(store: Arc<AlertStore>) -> Result<Engine> {
    let cfg = EngineConfig {
        sensor_silent_after: None,
        gateway_offline_after: None,
        ..Default::default()
    };
    Ok(Engine::open(
        store,
        Arc::new(SharedRegistry::new(registry())),
        cfg,
        AlertMetrics::default(),
    )?)
}

fn reading(sensor: &str, at: Timestamp, field: &str, v: f64) -> LoggedReading {
    LoggedReading {
        sensor: sensor.into(),
        gateway: "gw-1".into(),
        kind: if sensor == GAUGE {
            SensorKind::FloodGauge
        } else {
            SensorKind::Metocean
        },
        ts: at,
        values: [(field.to_string(), Value::Num(v))].into(),
    }
}

fn hook(id: &str, min_level: u8) -> Webhook {
    Webhook {
        id: id.into(),
        url: format!("http://127.0.0.1:9/{id}"),
        secret: format!("whsec_{id}"),
        kinds: vec![],
        districts: vec![],
        min_level,
        created_by: "ops".into(),
        created: Timestamp(1_800_000_000_000),
        health: WebhookHealth::default(),
    }
}

/// Runs the scenario on `store` and returns everything read back, without
/// the times taken from the clock (people's actions).
fn scenario(store: Arc<AlertStore>, now: Timestamp) -> Result<serde_json::Value> {
    let e = engine(store.clone())?;
    let s = e.store();
    s.add_webhook(&hook("all", 0))?;
    s.add_webhook(&hook("severe", 2))?;
    ensure!(matches!(
        s.add_webhook(&hook("all", 0)),
        Err(StoreError::Exists(_))
    ));
    e.put_rule(
        serde_json::from_value(json!({
            "id": "crane-wind", "kind": "metocean", "field": "wind_gust_ms",
            "above": [15.0, 20.0], "deadband": 1.0,
        }))?,
        "ops",
    )?;
    s.add_silence(&Silence {
        id: 0,
        sensor: Some(WIND.into()),
        kind: None,
        rule: None,
        reason: "crane maintenance".into(),
        by: "ops".into(),
        starts: now.add_millis(-3_600_000),
        ends: now.add_millis(3_600_000),
    })?;
    let min = |m: i64| now.add_millis(m * 60_000 - 3_600_000);
    let first: Vec<LoggedReading> = [150.0, 250.0, 350.0, 250.0, 50.0]
        .iter()
        .enumerate()
        .map(|(i, v)| reading(GAUGE, min(i as i64), "water_level_cm", *v))
        .chain([reading(WIND, min(2), "wind_gust_ms", 22.0)])
        .collect();
    let rec = e.evaluate(first.iter(), 6, now)?;
    ensure!(rec.len() == 6, "{} changes", rec.len());
    // Within the cool-down: the same alert reopens.
    let rec = e.evaluate(
        [reading(GAUGE, min(10), "water_level_cm", 160.0)].iter(),
        7,
        now,
    )?;
    let id = rec.first().context("reopened")?.alert.id;
    // An older reading than the last evaluated is refused, not recorded.
    ensure!(e
        .evaluate(
            [reading(GAUGE, min(9), "water_level_cm", 400.0)].iter(),
            8,
            now
        )?
        .is_empty());
    s.acknowledge(id, "bpbd-ani", Some("on the way"))?;
    s.assign(id, "bpbd-ani", Some("tim-reaksi-cepat"))?;
    s.note(id, "tim-reaksi-cepat", "sandbags placed")?;
    s.resolve(id, "bpbd-ani", Some("water receding"))?;
    ensure!(matches!(
        s.acknowledge(id, "bpbd-ani", None),
        Err(StoreError::Exists(_))
    ));
    ensure!(matches!(s.alert(9_999), Err(StoreError::NotFound(_))));
    ensure!(matches!(
        s.delete_rule("nope"),
        Err(StoreError::NotFound(_))
    ));

    let filters = [
        AlertFilter {
            limit: 100,
            ..Default::default()
        },
        AlertFilter {
            states: vec![AlertState::Open, AlertState::Acknowledged],
            limit: 100,
            ..Default::default()
        },
        AlertFilter {
            kinds: vec![SensorKind::Metocean],
            limit: 100,
            ..Default::default()
        },
        AlertFilter {
            min_level: Some(3),
            public_only: true,
            sensor: Some(GAUGE.into()),
            rule: Some("siaga".into()),
            district: Some("Dumai Kota".into()),
            since: Some(min(0)),
            until: Some(now),
            limit: 1,
            ..Default::default()
        },
    ];
    let mut lists = Vec::new();
    for f in &filters {
        let alerts: Vec<serde_json::Value> = s
            .alerts(f)?
            .into_iter()
            .map(|a| {
                json!([
                    a.id,
                    a.rule,
                    a.rule_name,
                    a.sensor,
                    a.kind.as_str(),
                    a.district,
                    a.public,
                    a.state,
                    a.level,
                    a.peak,
                    a.level_label,
                    a.since.0,
                    a.late,
                    a.ack_by,
                    a.assignee,
                    a.resolved_by,
                    a.resolved_at.is_some(),
                    a.ack_at.is_some()
                ])
            })
            .collect();
        lists.push(alerts);
    }
    let timeline: Vec<serde_json::Value> = s
        .timeline(id)?
        .into_iter()
        .map(|ev| {
            let at = ev.by.is_none().then_some(ev.at.0);
            json!([ev.alert, ev.change, ev.level, ev.from, at, ev.late, ev.by, ev.note])
        })
        .collect();
    let mut outboxes = Vec::new();
    for h in ["all", "severe"] {
        let rows: Vec<serde_json::Value> = s
            .outgoing(h, 100)?
            .into_iter()
            .map(|o| {
                let b: serde_json::Value = serde_json::from_str(&o.body).unwrap_or_default();
                json!([
                    o.msg_id,
                    b["type"],
                    b["data"]["alert"],
                    b["data"]["level"],
                    b["data"]["by"]
                ])
            })
            .collect();
        outboxes.push(rows);
    }
    // One delivered, one failed twice.
    let first = s.outgoing("all", 1)?.pop().context("a notification")?;
    s.delivered("all", first.row, now)?;
    s.failed("severe", "HTTP 503", now)?;
    let failures = s.failed("severe", "HTTP 503", now)?;
    let health: Vec<serde_json::Value> = s
        .webhooks()?
        .into_iter()
        .map(|w| {
            json!([
                w.id,
                w.min_level,
                w.health.pending,
                w.health.delivered,
                w.health.consecutive_errors,
                w.health.last_error,
                w.health.last_success
            ])
        })
        .collect();
    let depth = s.outbox_depth()?;
    let silences: Vec<serde_json::Value> = s
        .silences(now)?
        .into_iter()
        .map(|x| json!([x.id, x.sensor, x.reason]))
        .collect();
    let silence = s.silences(now)?.first().context("a silence")?.id;
    s.cancel_silence(silence, "ops")?;
    ensure!(matches!(
        s.cancel_silence(silence, "ops"),
        Err(StoreError::NotFound(_))
    ));
    let rules = s.rules()?;
    e.delete_rule("crane-wind")?;
    s.delete_webhook("severe")?;
    let mut trackers: Vec<String> = s
        .trackers()?
        .into_iter()
        .map(|(k, st)| format!("{k:?} {}", serde_json::to_string(&st).unwrap_or_default()))
        .collect();
    trackers.sort();
    let events: Vec<(i64, String)> = s
        .events_since(min(0))?
        .into_iter()
        .map(|e| (e.alert, e.change))
        .collect();
    Ok(json!({
        "events_since": events,
        "lists": lists,
        "timeline": timeline,
        "outboxes": outboxes,
        "failures": failures,
        "health": health,
        "depth": depth,
        "silences": silences,
        "silences_after_cancel": s.silences(now)?.len(),
        "rules": rules.iter().map(|(id, _)| id).collect::<Vec<_>>(),
        "rules_after_delete": s.rules()?.len(),
        "webhooks_after_delete": s.webhooks()?.len(),
        "depth_after_delete": s.outbox_depth()?,
        "trackers": trackers,
    }))
}

#[test]
fn the_shared_alert_store_answers_as_the_embedded_one() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let pg = rt.block_on(Postgres::start())?;
    let now = Timestamp::now();
    let dir = tempfile::tempdir()?;
    let embedded = scenario(Arc::new(AlertStore::open(dir.path())?), now)?;
    let state = Arc::new(StateDb::connect(&pg.url(), None)?);
    let shared = scenario(Arc::new(AlertStore::shared(state)?), now)?;
    // What the scenario must have made (so two empty answers do not pass).
    let changes: Vec<&str> = embedded["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e[1].as_str())
        .collect();
    assert_eq!(
        changes,
        [
            "raised",
            "escalated",
            "escalated",
            "de_escalated",
            "resolved",
            "reopened",
            "acknowledged",
            "assigned",
            "note",
            "resolved"
        ]
    );
    assert_eq!(embedded["lists"][0].as_array().map(Vec::len), Some(2));
    assert_eq!(embedded["events_since"].as_array().map(Vec::len), Some(11));
    assert_eq!(embedded["failures"], 2);
    assert!(embedded["outboxes"][0]
        .as_array()
        .is_some_and(|o| o.len() >= 7));
    for key in embedded.as_object().unwrap().keys() {
        assert_eq!(
            embedded[key], shared[key],
            "{key}: state.db and PostgreSQL differ"
        );
    }
    Ok(())
}

#[test]
fn an_evaluator_whose_lease_was_taken_over_records_nothing() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let pg = rt.block_on(Postgres::start())?;
    let state = Arc::new(StateDb::connect(&pg.url(), None)?);
    let now = Timestamp::now();
    let at = |m: i64| now.add_millis(m * 60_000 - 3_600_000);
    let fence = |holder: &str, epoch| Fence {
        name: "alerts".into(),
        holder: holder.into(),
        epoch,
    };

    let a = engine(Arc::new(AlertStore::shared(state.clone())?))?;
    let e1 = state
        .acquire_lease("alerts", "a", 300)?
        .context("the lease is free")?;
    a.store().set_fence(Some(fence("a", e1)));
    a.evaluate(
        [reading(GAUGE, at(0), "water_level_cm", 150.0)].iter(),
        1,
        now,
    )?;

    // `a` stalls past its lease; `b` takes it over.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let e2 = loop {
        if let Some(e) = state.acquire_lease("alerts", "b", 10_000)? {
            break e;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        std::thread::yield_now();
    };
    assert_eq!(e2, e1 + 1);
    let b = engine(Arc::new(AlertStore::shared(state.clone())?))?;
    b.store().set_fence(Some(fence("b", e2)));
    b.reload()?;

    // `a` wakes up and evaluates the same worsening as `b`: refused.
    let worse = [reading(GAUGE, at(1), "water_level_cm", 250.0)];
    match a.evaluate(worse.iter(), 2, now) {
        Err(pantau_alerts::EngineError::Store(StoreError::Fenced { epoch, .. })) => {
            assert_eq!(epoch, e1)
        }
        other => panic!("a fenced evaluator recorded: {other:?}"),
    }
    let rec = b.evaluate(worse.iter(), 2, now)?;
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert_eq!(rec[0].event.change, "escalated");
    let alerts = b.store().alerts(&AlertFilter {
        limit: 10,
        ..Default::default()
    })?;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let timeline = b.store().timeline(alerts[0].id)?;
    let changes: Vec<&str> = timeline.iter().map(|e| e.change.as_str()).collect();
    assert_eq!(changes, ["raised", "escalated"]);
    Ok(())
}
