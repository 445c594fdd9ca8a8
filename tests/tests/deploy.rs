//! What operators install (`deploy/`): the systemd units pass
//! `systemd-analyze verify` with no warning and `systemd-analyze security`
//! rates each at most 2.0 ("OK"), with the hardening the deploy guide
//! promises; the example configuration files are accepted by the programs
//! they are for (`pantau up` starts on them, `pantau-agent --check-config`
//! passes); the Kubernetes manifests pass a schema validator
//! (kubernetes-validate, strict) and, like the compose file, give the
//! programs only settings they know, secrets only from Secrets, and probes
//! on /healthz and /readyz.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use pantau_tests::*;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// Each unit with its programs pointed at the built binaries.
fn units(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (file, instance) in [
        ("pantau-up.service", "pantau-up.service"),
        ("pantau-ingest@.service", "pantau-ingest@a.service"),
        ("pantau-api@.service", "pantau-api@a.service"),
        ("pantau-agent.service", "pantau-agent.service"),
    ] {
        let text = std::fs::read_to_string(deploy(&format!("systemd/{file}")))?
            .replace(
                "/usr/local/bin/pantau-agent",
                &binary("pantau-agent").to_string_lossy(),
            )
            .replace(
                "/usr/local/bin/pantau ",
                &format!("{} ", binary("pantau").display()),
            );
        let path = dir.join(instance);
        std::fs::write(&path, text)?;
        out.push(path);
    }
    Ok(out)
}

#[test]
fn systemd_units_verify_cleanly_and_are_hardened() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let units = units(dir.path())?;
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .context("run systemd-analyze (Debian systemd)")?;
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    for unit in &units {
        let text = std::fs::read_to_string(unit)?;
        for directive in [
            "User=",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=\n",
            "StateDirectory=",
            "Restart=",
            "SystemCallFilter=@system-service",
            "StandardError=journal",
        ] {
            ensure!(
                text.contains(directive),
                "{}: no {directive:?}",
                unit.display()
            );
        }
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(unit)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let level: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("systemd-analyze security: {text}"))?;
        println!("{}: exposure {level}", unit.display());
        ensure!(
            level <= 2.0,
            "{}: exposure {level} > 2.0:\n{text}",
            unit.display()
        );
    }
    // The check can fail: a unit with a typo and a missing program does.
    let bad = dir.path().join("bad.service");
    std::fs::write(
        &bad,
        "[Service]\nExecStart=/nonexistent/pantau up\nProtectSytem=strict\n",
    )?;
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&bad)
        .output()?;
    ensure!(!out.status.success(), "a broken unit verified");
    Ok(())
}

#[tokio::test]
async fn example_configs_are_accepted_by_their_programs() -> Result<()> {
    let out = Command::new(binary("pantau-agent"))
        .arg("--check-config")
        .arg(deploy("config/agent.toml"))
        .output()?;
    ensure!(
        out.status.success(),
        "agent.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `pantau up` on the example (its paths and ports replaced by flags,
    // which take precedence over the file).
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let config = deploy("config/pantau.toml");
    let registry = deploy("dumai-demo-registry.toml");
    let p = Pantau::start(
        &data,
        &[
            "--config",
            config.to_str().context("path")?,
            "--registry",
            registry.to_str().context("path")?,
        ],
    )
    .await?;
    let admin = token_create(&data, "deploy-admin", "admin")?["token"]
        .as_str()
        .context("token")?
        .to_owned();
    let (status, rules) = p
        .call(
            reqwest::Method::GET,
            "/api/v1/admin/alert-rules",
            &admin,
            None,
        )
        .await?;
    ensure!(status == 200, "{status} {rules}");
    ensure!(
        rules.to_string().contains("rob-pelabuhan"),
        "the example's alert rule is not loaded: {rules}"
    );
    // Every variable the env examples name is one the programs read.
    let help = String::from_utf8_lossy(
        &Command::new(binary("pantau"))
            .args(["up", "--help"])
            .output()?
            .stdout,
    )
    .to_string()
        + &String::from_utf8_lossy(
            &Command::new(binary("pantau"))
                .args(["ingest", "--help"])
                .output()?
                .stdout,
        );
    for env in ["config/pantau.env", "config/ingest.env"] {
        for line in std::fs::read_to_string(deploy(env))?.lines() {
            let line = line.trim_start_matches("# ").trim();
            let Some((name, _)) = line.split_once('=') else {
                continue;
            };
            if name.starts_with("PANTAU_") {
                ensure!(
                    help.contains(&format!("[env: {name}=")),
                    "{env}: {name} is not an option of pantau up or pantau ingest"
                );
            }
        }
    }
    Ok(())
}

/// The linter `tests/run.sh` installs (npm `dockerfilelint`, pinned).
fn dockerfilelint() -> PathBuf {
    std::env::var_os("PANTAU_DOCKERFILELINT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/tools/node_modules/.bin/dockerfilelint")
        })
}

/// Issues the linter finds in `file`.
fn lint(file: &Path) -> Result<serde_json::Value> {
    let out = Command::new(dockerfilelint())
        .args(["-o", "json"])
        .arg(file)
        .output()
        .context("run dockerfilelint (tests/run.sh installs it)")?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "dockerfilelint output: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn the_container_file_is_multi_stage_non_root_and_passes_a_linter() -> Result<()> {
    let file = deploy("Containerfile");
    let v = lint(&file)?;
    ensure!(v["totalIssues"] == 0, "dockerfilelint: {v:#}");
    let text = std::fs::read_to_string(&file)?;
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    ensure!(
        froms == 2,
        "{froms} stages, not a build stage and a runtime stage"
    );
    let users: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .collect();
    ensure!(
        users.len() == 1 && !users[0].starts_with('0') && !users[0].starts_with("root"),
        "USER {users:?}: the image must run as a non-root user"
    );
    let last_stage = &text[text.rfind("\nFROM ").context("a runtime stage")?..];
    ensure!(
        last_stage.contains("USER "),
        "the runtime stage does not set a user"
    );
    // The check can fail: a careless file gets issues.
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("Containerfile");
    std::fs::write(&bad, "FROM debian\nRUN apt-get install curl\n")?;
    let v = lint(&bad)?;
    ensure!(
        v["totalIssues"].as_u64().unwrap_or(0) > 0,
        "the linter passed a bad file: {v}"
    );
    Ok(())
}

fn yaml_docs(path: &Path) -> Result<Vec<serde_json::Value>> {
    // PyYAML (installed with schemathesis) reads YAML; the test reads JSON.
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(path)
        .output()?;
    ensure!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `pantau SUB --help`: every PANTAU_* variable it reads is named there.
fn help(sub: &str) -> Result<String> {
    let out = Command::new(binary("pantau"))
        .args([sub, "--help"])
        .output()?;
    ensure!(out.status.success(), "pantau {sub} --help");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn manifests() -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("kubernetes"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    ensure!(files.len() >= 4, "manifests missing: {files:?}");
    Ok(files)
}

#[test]
fn kubernetes_manifests_pass_a_strict_schema_validator() -> Result<()> {
    for file in manifests()? {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", "1.30.0"])
            .arg(&file)
            .output()
            .context("run kubernetes-validate (PyPI)")?;
        ensure!(
            out.status.success(),
            "{}: {}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The validator can fail: an unknown field in strict mode does.
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.yaml");
    let api = std::fs::read_to_string(deploy("kubernetes/40-api.yaml"))?;
    std::fs::write(&bad, api.replace("  replicas: 2", "  replicaz: 2"))?;
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.30.0"])
        .arg(&bad)
        .output()?;
    ensure!(!out.status.success(), "a misspelt field passed validation");
    Ok(())
}

#[test]
fn manifests_and_compose_give_the_programs_only_what_they_know() -> Result<()> {
    let mut seen_kinds = std::collections::BTreeSet::new();
    let mut probed = 0;
    for file in manifests()? {
        for doc in yaml_docs(&file)? {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            seen_kinds.insert(kind.clone());
            if kind == "ConfigMap" {
                if let Some(reg) = doc["data"]["registry.toml"].as_str() {
                    pantau_model::Registry::parse(reg)
                        .map_err(|e| anyhow::anyhow!("{}: registry: {e}", file.display()))?;
                }
            }
            let pod = &doc["spec"]["template"]["spec"];
            for c in pod["containers"].as_array().into_iter().flatten() {
                let sub = c["args"][0].as_str().context("container args")?;
                let known = help(sub)?;
                for e in c["env"].as_array().into_iter().flatten() {
                    let name = e["name"].as_str().unwrap_or_default();
                    ensure!(
                        known.contains(&format!("[env: {name}")) || !name.starts_with("PANTAU_"),
                        "{}: pantau {sub} does not read {name}",
                        file.display()
                    );
                    ensure!(
                        !(name.contains("PASSWORD") || name == "PANTAU_STATE")
                            || e["valueFrom"]["secretKeyRef"].is_object(),
                        "{}: {name} must come from a Secret",
                        file.display()
                    );
                }
                let path = |probe: &str| c[probe]["httpGet"]["path"].as_str().map(str::to_owned);
                ensure!(
                    path("livenessProbe").as_deref() == Some("/healthz")
                        && path("readinessProbe").as_deref() == Some("/readyz"),
                    "{}: {sub} needs /healthz and /readyz probes",
                    file.display()
                );
                ensure!(
                    c["securityContext"]["readOnlyRootFilesystem"] == true
                        && pod["securityContext"]["runAsNonRoot"] == true,
                    "{}: {sub} must run as non-root on a read-only root",
                    file.display()
                );
                probed += 1;
            }
        }
    }
    ensure!(
        probed == 2,
        "expected the ingest and API pods, found {probed}"
    );
    for kind in [
        "StatefulSet",
        "Deployment",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ] {
        ensure!(seen_kinds.contains(kind), "no {kind} in deploy/kubernetes");
    }

    // The compose file: every Pantau service's variables are known to its
    // subcommand (anchors expanded by the YAML reader).
    let compose = yaml_docs(&deploy("compose/compose.yaml"))?;
    let services = compose[0]["services"].as_object().context("services")?;
    let mut pantau_services = 0;
    for (name, svc) in services {
        let Some(sub) = svc["command"][0].as_str() else {
            continue;
        };
        pantau_services += 1;
        let known = help(sub)?;
        for var in svc["environment"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            ensure!(
                !var.starts_with("PANTAU_") || known.contains(&format!("[env: {var}")),
                "compose {name}: pantau {sub} does not read {var}"
            );
        }
    }
    ensure!(pantau_services == 4, "compose: 2 ingest + 2 api expected");
    pantau_model::Registry::parse(&std::fs::read_to_string(deploy("compose/registry.toml"))?)
        .map_err(|e| anyhow::anyhow!("compose registry: {e}"))?;
    // HAProxy accepts its configuration (the replicas resolve only on the
    // compose network).
    let out = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(deploy("compose/haproxy.cfg"))
        .output()
        .context("run haproxy (Debian)")?;
    ensure!(
        out.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
