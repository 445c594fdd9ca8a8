//! `pantau backup` and `pantau restore`: a consistent copy of an embedded
//! data directory, taken while `pantau up` runs.
//!
//! Each SQLite database is copied with `VACUUM INTO` (a read transaction:
//! the writer goes on; the copy is the database as of one commit). The
//! ingest log is copied first and the store after it: a reading is deleted
//! from the log only once the store committed it, so every reading that
//! was acknowledged (in the log) when the backup began is in the log copy,
//! the store copy, or both — and replaying a log entry the store already
//! holds stores nothing twice (the store's key is sensor, field, time).
//! Then the platform state (`state.db`) and the TLS material (`tls/`).
//! Restoring copies a backup into a new, empty data directory; `pantau up`
//! on it drains the log's copy into the store at start.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The databases, in the order they are copied (the log before the store).
const DATABASES: [&str; 3] = ["ingest-log.db", "readings.db", "state.db"];

fn empty_or_missing(dir: &Path) -> Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(())
}

/// Copies `tls/` (keys stay owner-only).
fn copy_tls(from: &Path, to: &Path) -> Result<usize> {
    let (src, dst) = (from.join("tls"), to.join("tls"));
    if !src.is_dir() {
        return Ok(0);
    }
    std::fs::create_dir_all(&dst)?;
    let mut n = 0;
    for e in std::fs::read_dir(&src)? {
        let e = e?;
        if e.file_type()?.is_file() {
            let target = dst.join(e.file_name());
            std::fs::copy(e.path(), &target)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Backs `data_dir` up into `to` (new or empty); prints what it copied as
/// one JSON object.
pub fn backup(data_dir: &Path, to: &Path) -> Result<()> {
    if !data_dir.join("ingest-log.db").exists() {
        bail!(
            "{} holds no Pantau data (no ingest-log.db)",
            data_dir.display()
        );
    }
    empty_or_missing(to)?;
    let started = pantau_model::Timestamp::now();
    let mut copied = Vec::new();
    for name in DATABASES {
        let src = data_dir.join(name);
        if !src.exists() {
            continue; // readings.db is absent with InfluxDB storage
        }
        let dst: PathBuf = to.join(name);
        let conn = rusqlite::Connection::open_with_flags(
            &src,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("open {}", src.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        let target = dst.to_str().context("a UTF-8 backup path")?;
        conn.execute("VACUUM INTO ?1", [target])
            .with_context(|| format!("copy {}", src.display()))?;
        copied.push(serde_json::json!({
            "file": name,
            "bytes": std::fs::metadata(&dst)?.len(),
        }));
    }
    let tls = copy_tls(data_dir, to)?;
    let manifest = serde_json::json!({
        "backup_of": data_dir.display().to_string(),
        "started": started.to_rfc3339(),
        "finished": pantau_model::Timestamp::now().to_rfc3339(),
        "databases": copied,
        "tls_files": tls,
    });
    std::fs::write(
        to.join("BACKUP.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    println!("{manifest}");
    Ok(())
}

/// Restores the backup `from` into the new (or empty) data directory `to`.
pub fn restore(from: &Path, to: &Path) -> Result<()> {
    if !from.join("BACKUP.json").exists() {
        bail!("{} is not a Pantau backup (no BACKUP.json)", from.display());
    }
    empty_or_missing(to)?;
    for name in DATABASES {
        let src = from.join(name);
        if src.exists() {
            std::fs::copy(&src, to.join(name))
                .with_context(|| format!("copy {}", src.display()))?;
        }
    }
    copy_tls(from, to)?;
    println!(
        "{}",
        serde_json::json!({"restored": from.display().to_string(), "data_dir": to.display().to_string()})
    );
    Ok(())
}
