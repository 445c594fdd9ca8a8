//! `pantau up --demo` replaces the token of every gateway it simulates, so
//! it refuses a registry of its own and a data directory holding gateways
//! it did not create — with a message saying why, and changing nothing.

use std::process::Command;

use anyhow::{ensure, Result};
use pantau_tests::*;

/// Every file of a directory with its content, to compare before and after.
fn snapshot(dir: &std::path::Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if dir.exists() {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                out.push((
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path())?,
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn up_demo(data: &std::path::Path, extra: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(binary("pantau"))
        .arg("up")
        .arg("--demo")
        .arg("--data-dir")
        .arg(data)
        .args(["--http-listen", &free_addr().to_string()])
        .args(["--mqtt-listen", &free_addr().to_string()])
        .args(extra)
        .output()?)
}

#[tokio::test]
async fn the_demo_refuses_real_registries_and_real_data_and_changes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A registry of one's own.
    let reg = dir.path().join("registry.toml");
    std::fs::write(&reg, MINIMAL_REGISTRY)?;
    let fresh = dir.path().join("fresh");
    let out = up_demo(&fresh, &["--registry", reg.to_str().unwrap()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "--demo --registry started");
    ensure!(
        err.contains("--demo") && err.contains("--registry"),
        "{err}"
    );
    ensure!(
        !fresh.exists(),
        "the refused start created {}",
        fresh.display()
    );

    // A data directory with a real gateway.
    let data = dir.path().join("data");
    let real = gateway_add(&data, "gw-sungai")?;
    let before = snapshot(&data)?;
    let out = up_demo(&data, &[])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "--demo started on a data dir with real gateways"
    );
    ensure!(
        err.contains("gw-sungai") && err.contains("--data-dir"),
        "{err}"
    );
    ensure!(
        snapshot(&data)? == before,
        "the refused start changed {}",
        data.display()
    );
    // The real gateway's token still works.
    let reg_arg = reg.to_str().unwrap().to_owned();
    std::fs::write(&reg, MINIMAL_REGISTRY.replace("gw-test", "gw-sungai"))?;
    let p = Pantau::start(&data, &["--registry", &reg_arg]).await?;
    publish_ok(&p, &real, &envelope("gw-sungai", 1, &[]))?;
    Ok(())
}
