//! A real browser for the web tests: Debian's headless Chromium driven
//! through ChromeDriver (WebDriver) with `fantoccini`, on a fresh profile,
//! with the browser's console log, axe-core accessibility checks and
//! screenshots written as test artifacts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fantoccini::wd::WebDriverCompatibleCommand;
use serde_json::{json, Value};

use crate::{eventually, free_addr};

/// axe-core 4.14.1 (MPL-2.0), from the npm registry; injected by the tests
/// only, never served by Pantau.
const AXE: &str = include_str!("../vendor/axe-core/axe.min.js");

/// The Chromium binary (the Debian launcher script's target when present).
fn chromium() -> &'static str {
    if Path::new("/usr/lib/chromium/chromium").exists() {
        "/usr/lib/chromium/chromium"
    } else {
        "/usr/bin/chromium"
    }
}

/// Where screenshots go: `$PANTAU_ARTIFACTS`, else `target/artifacts/web`.
pub fn artifacts_dir() -> PathBuf {
    std::env::var_os("PANTAU_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts/web"))
}

/// A headless Chromium session.
pub struct Browser {
    driver: Child,
    /// The WebDriver client.
    pub client: fantoccini::Client,
    _profile: tempfile::TempDir,
    downloads: tempfile::TempDir,
}

/// ChromeDriver's log endpoint (`POST /session/{id}/se/log`).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

impl Browser {
    /// Starts ChromeDriver and a browser window of `width`×`height` whose
    /// preferred languages are `langs` (e.g. `"id-ID,id"`).
    pub async fn start(width: u32, height: u32, langs: &str) -> Result<Self> {
        Self::start_with(width, height, langs, &[]).await
    }

    /// [`Browser::start`] with more Chromium flags.
    pub async fn start_with(width: u32, height: u32, langs: &str, flags: &[&str]) -> Result<Self> {
        let port = free_addr().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("run chromedriver (install chromium-driver)")?;
        let profile = tempfile::tempdir()?;
        let downloads = tempfile::tempdir()?;
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push(format!("--window-size={width},{height}"));
        args.push(format!(
            "--lang={}",
            langs.split(',').next().unwrap_or("id")
        ));
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let caps = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": args,
                "prefs": {
                    "intl.accept_languages": langs,
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{port}");
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = eventually(Duration::from_secs(30), "a WebDriver session", || {
            let (caps, url, connector) = (caps.clone(), url.clone(), connector.clone());
            async move {
                fantoccini::ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&url)
                    .await
                    .ok()
            }
        })
        .await?;
        let b = Self {
            driver,
            client,
            _profile: profile,
            downloads,
        };
        b.resize(width, height).await?;
        Ok(b)
    }

    /// Where the browser saves downloads.
    pub fn downloads(&self) -> &Path {
        self.downloads.path()
    }

    /// Sets the viewport to `width`×`height` CSS pixels.
    pub async fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.client
            .set_window_size(width, height)
            .await
            .context("set the window size")?;
        // The window's outer size includes no chrome headless, but check.
        let inner = self
            .js("return [window.innerWidth, window.innerHeight]")
            .await?;
        let (w, h) = (
            inner[0].as_u64().unwrap_or(0),
            inner[1].as_u64().unwrap_or(0),
        );
        if w != u64::from(width) || h != u64::from(height) {
            let (dw, dh) = (u64::from(width) * 2 - w, u64::from(height) * 2 - h);
            self.client
                .set_window_size(dw as u32, dh as u32)
                .await
                .context("set the window size")?;
        }
        Ok(())
    }

    /// Runs `script` (a function body) in the page.
    pub async fn js(&self, script: &str) -> Result<Value> {
        self.client
            .execute(script, vec![])
            .await
            .with_context(|| format!("script: {script}"))
    }

    /// Polls `script` until it returns something truthy (not null, false,
    /// 0 or ""), within `deadline`.
    pub async fn wait_for(&self, deadline: Duration, what: &str, script: &str) -> Result<Value> {
        let found = eventually(deadline, what, || async {
            let v = self.js(script).await.ok()?;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            truthy.then_some(v)
        })
        .await;
        if found.is_err() {
            // What the page showed, and what the browser said, to tell why.
            let text = self
                .js("return location.href + '\\n' + document.body.innerText.slice(0, 1500)")
                .await
                .unwrap_or_default();
            let log = self.console().await.unwrap_or_default();
            return found.with_context(|| format!("the page: {text}\nthe console: {log:#?}"));
        }
        found
    }

    /// Saves a PNG of the viewport as `artifacts/NAME.png`.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let png = self.client.screenshot().await.context("screenshot")?;
        let dir = artifacts_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// The browser console's entries since the last call, as
    /// `(level, message)`.
    pub async fn console(&self) -> Result<Vec<(String, String)>> {
        let v = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .context("read the browser log")?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or_default().to_owned(),
                    e["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// Fails when the console holds an error (or a warning about the
    /// content security policy) since the last call.
    pub async fn no_console_errors(&self, page: &str) -> Result<()> {
        let bad: Vec<_> = self
            .console()
            .await?
            .into_iter()
            .filter(|(level, msg)| level == "SEVERE" || msg.contains("Content Security Policy"))
            .collect();
        if !bad.is_empty() {
            bail!("{page}: the browser console has errors: {bad:#?}");
        }
        Ok(())
    }

    /// Runs axe-core on the page; returns the serious and critical
    /// violations (rule id, impact, help, the first offending elements).
    pub async fn axe(&self) -> Result<Vec<Value>> {
        self.js(&format!("{AXE}\n;window.__axe = axe; return true;"))
            .await
            .context("inject axe-core")?;
        let result = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 window.__axe.run(document, {resultTypes: ['violations']})
                   .then((r) => done(r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
                      nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ') + ' — ' + n.failureSummary)}))))
                   .catch((e) => done({error: String(e)}));",
                vec![],
            )
            .await
            .context("run axe-core")?;
        if let Some(e) = result.get("error") {
            bail!("axe-core failed: {e}");
        }
        Ok(result
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .cloned()
            .collect())
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) -> Result<()> {
        let r = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        r.context("close the browser")
    }
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("driver", &self.driver.id())
            .finish()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
