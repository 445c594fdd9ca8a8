//! Gateways on an external Mosquitto (Debian's, with its dynamic-security
//! plugin) keep Pantau's identities and ACL: the service accounts come
//! from `deploy/mosquitto/pantau-dynsec-roles.sh`; a gateway added through
//! Pantau (the CLI, or the admin API of a worker) can publish through
//! Mosquitto, its token is its only password there, another gateway's
//! topic is refused by Mosquitto itself, and a revoked gateway can no
//! longer connect and is disconnected.

use std::process::{Command, Stdio};
use std::time::Duration;

use pantau_tests::services::{Mosquitto, Postgres};
use pantau_tests::*;
use serde_json::{json, Value};

const ADMIN_PW: &str = "dynsec-admin-pw";

fn pantau(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Value> {
    let out = Command::new(binary("pantau"))
        .args(args)
        .envs(env.iter().copied())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "pantau {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn reading(gw: &str, sensor: &str, seq: u64, ts: &str) -> String {
    envelope(
        gw,
        seq,
        &[format!(
            r#"{{"sensor":"{sensor}","ts":"{ts}","values":{{"water_level_cm":{seq}}}}}"#
        )],
    )
}

#[tokio::test]
async fn gateways_provisioned_in_mosquitto_dynsec_publish_only_their_own_topics(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pg = Postgres::start().await?;
    let state = pg.url();
    let mosq = Mosquitto::start_dynsec(&dir.path().join("mosquitto"), ADMIN_PW).await?;
    let port = mosq.addr.port().to_string();
    // The service accounts, by the script operators run.
    let out = Command::new("sh")
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/mosquitto/pantau-dynsec-roles.sh"),
        )
        .env(
            "MOSQUITTO_CTRL",
            format!("mosquitto_ctrl -h 127.0.0.1 -p {port} -u admin -P {ADMIN_PW}"),
        )
        .env("INGEST_PASSWORD", "ingest-pw")
        .env("API_PASSWORD", "api-pw")
        .output()?;
    assert!(
        out.status.success(),
        "roles script: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let reg = dir.path().join("registry.toml");
    std::fs::write(
        &reg,
        "[[sensor]]\nid = \"fl-a\"\nkind = \"flood_gauge\"\ngateway = \"gw-a\"\nname = \"A\"\nlat = 1.6\nlon = 101.4\n\n[[sensor]]\nid = \"fl-b\"\nkind = \"flood_gauge\"\ngateway = \"gw-b\"\nname = \"B\"\nlat = 1.6\nlon = 101.4\n",
    )?;
    let broker = format!("mqtt://{}", mosq.addr);
    let admin_url = broker.clone();
    let env = [
        ("PANTAU_BROKER_USERNAME", "pantau-ingest"),
        ("PANTAU_BROKER_PASSWORD", "ingest-pw"),
        ("PANTAU_BROKER_ADMIN", admin_url.as_str()),
        ("PANTAU_BROKER_ADMIN_USERNAME", "admin"),
        ("PANTAU_BROKER_ADMIN_PASSWORD", ADMIN_PW),
        ("PANTAU_STATE", state.as_str()),
    ];
    let data = dir.path().join("w1");
    let w = IngestWorker::start_env(
        &data,
        &broker,
        "w1",
        &["--registry", reg.to_str().unwrap()],
        &env,
    )
    .await?;
    // The worker's service account may take the shared subscription.
    eventually(
        Duration::from_secs(15),
        "the worker to subscribe",
        || async {
            let r = reqwest::get(format!("http://{}/readyz", w.http))
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await?;

    // gw-a through the CLI, gw-b through the worker's admin API.
    let a = pantau(&["gateway", "add", "gw-a"], &env)?;
    let a_pw = a["password"].as_str().unwrap().to_owned();
    let admin = pantau(
        &["token", "create", "--name", "ops", "--scopes", "admin"],
        &env,
    )?;
    let admin = admin["token"].as_str().unwrap().to_owned();
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/v1/admin/gateways", w.http))
        .bearer_auth(&admin)
        .json(&json!({"id": "gw-b"}))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let b: Value = r.json().await?;
    let b_pw = b["password"].as_str().unwrap().to_owned();

    // Two registrations at once each get a control connection of their own.
    let add = |id: &'static str| {
        let (url, admin) = (
            format!("http://{}/api/v1/admin/gateways", w.http),
            admin.clone(),
        );
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(admin)
                .json(&json!({ "id": id }))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    let (c, d) = tokio::join!(add("gw-c"), add("gw-d"));
    assert_eq!((c?, d?), (201, 201), "concurrent registrations collided");

    let ts = |s: i64| now_rfc3339(-600 + s);
    // A wrong password is refused by Mosquitto.
    let out = mosquitto_pub(
        mosq.addr,
        None,
        "gw-a",
        "wrong",
        "pantau/v1/gw/gw-a/telemetry",
        &reading("gw-a", "fl-a", 1, &ts(1)),
    )?;
    assert!(!out.status.success(), "a wrong password was accepted");
    // gw-a publishes its own reading...
    let out = mosquitto_pub(
        mosq.addr,
        None,
        "gw-a",
        &a_pw,
        "pantau/v1/gw/gw-a/telemetry",
        &reading("gw-a", "fl-a", 1, &ts(1)),
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...then tries to speak for gw-b on gw-b's topic: Mosquitto drops it
    // (Pantau alone would take it: the topic names the gateway).
    let forged = reading("gw-b", "fl-b", 7, &ts(2));
    let _ = mosquitto_pub(
        mosq.addr,
        None,
        "gw-a",
        &a_pw,
        "pantau/v1/gw/gw-b/telemetry",
        &forged,
    )?;
    // gw-b's own reading, after the forged one.
    let out = mosquitto_pub(
        mosq.addr,
        None,
        "gw-b",
        &b_pw,
        "pantau/v1/gw/gw-b/telemetry",
        &reading("gw-b", "fl-b", 8, &ts(3)),
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = stored_eventually(&data, "fl-b", 1).await?;
    assert_eq!(
        got.len(),
        1,
        "gw-a's forged reading reached the store: {got:?}"
    );
    assert_eq!(got[0].2, 8.0);
    assert_eq!(stored(&data, "fl-a")?.len(), 1);

    // A connected gw-a is disconnected at revocation and refused after.
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-u", "gw-a", "-P", &a_pw])
        .args([
            "-t",
            "pantau/v1/gw/gw-a/cmd",
            "-q",
            "1",
            "-c",
            "-i",
            "gw-a-sub",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    eventually(
        Duration::from_secs(10),
        "gw-a's subscriber to connect",
        || async {
            let log = std::fs::read_to_string(dir.path().join("mosquitto/mosquitto.log")).ok()?;
            log.contains("as gw-a-sub").then_some(())
        },
    )
    .await?;
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/admin/gateways/gw-a/revoke",
            w.http
        ))
        .bearer_auth(&admin)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let out = mosquitto_pub(
        mosq.addr,
        None,
        "gw-a",
        &a_pw,
        "pantau/v1/gw/gw-a/telemetry",
        &reading("gw-a", "fl-a", 2, &ts(4)),
    )?;
    assert!(
        !out.status.success(),
        "a revoked gateway could still connect"
    );
    eventually(
        Duration::from_secs(10),
        "gw-a's live session to be closed",
        || async {
            let log = std::fs::read_to_string(dir.path().join("mosquitto/mosquitto.log")).ok()?;
            log.lines()
                .any(|l| {
                    l.contains("gw-a-sub")
                        && (l.contains("disconnect")
                            || l.contains("closed")
                            || l.contains("Kicking"))
                })
                .then_some(())
        },
    )
    .await?;
    let _ = sub.kill();
    let _ = sub.wait();
    // gw-b is untouched.
    let out = mosquitto_pub(
        mosq.addr,
        None,
        "gw-b",
        &b_pw,
        "pantau/v1/gw/gw-b/telemetry",
        &reading("gw-b", "fl-b", 9, &ts(5)),
    )?;
    assert!(out.status.success());
    Ok(())
}
