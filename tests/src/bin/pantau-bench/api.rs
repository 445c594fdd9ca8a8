//! API benchmarks: `/api/v1/public/conditions` under Debian's `wrk`
//! against `/healthz` on the same server in the same run; and publish →
//! SSE event latency at 5 000 readings/s against Mosquitto's publish →
//! subscribe latency for the same envelopes at the same rate.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pantau_tests::{eventually, Pantau};

/// One wrk run: (requests/s, p99 latency).
fn wrk(url: &str, secs: u32) -> Result<(f64, Duration)> {
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", url])
        .output()
        .context("run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk output: {text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(str::trim)
        .and_then(parse_wrk_duration)
        .with_context(|| format!("wrk output: {text}"))?;
    if text.contains("Non-2xx") {
        bail!("wrk saw errors: {text}");
    }
    Ok((rps, p99))
}

fn parse_wrk_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(Duration::from_secs_f64(match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return None,
    }))
}

/// `/api/v1/public/conditions` throughput and p99 under wrk.
pub(crate) async fn bench_conditions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let p = Pantau::start(
        &data,
        &["--demo", "--public-rate-per-s", "100000000", "--public-burst", "100000000"],
    )
    .await?;
    eventually(Duration::from_secs(30), "demo conditions", || async {
        let v = p.get_json("/api/v1/public/conditions").await.ok()?;
        v.as_array()?.iter().all(|c| !c["latest"].is_null()).then_some(())
    })
    .await?;
    let (rps, p99) = wrk(&p.url("/api/v1/public/conditions"), 10)?;
    let (base_rps, base_p99) = wrk(&p.url("/healthz"), 10)?;
    println!("api: wrk -t2 -c64 -d10s on the demo (18 public sensors), same server");
    println!(
        "  /api/v1/public/conditions: {rps:.0} req/s, p99 {:.1} ms",
        p99.as_secs_f64() * 1e3
    );
    println!(
        "  baseline /healthz: {base_rps:.0} req/s, p99 {:.1} ms (ratio {:.2})",
        base_p99.as_secs_f64() * 1e3,
        rps / base_rps
    );
    Ok(())
}
