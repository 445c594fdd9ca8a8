//! Webhook notifications, signed per the Standard Webhooks scheme
//! (<https://www.standardwebhooks.com/>): headers `webhook-id` (stable
//! per event and subscriber: the receiver's idempotency key),
//! `webhook-timestamp` (Unix seconds of this attempt) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
//! keyed with the base64-decoded part of the `whsec_…` secret.
//!
//! Each subscriber has its own durable outbox (in the alert store) and its
//! own task, delivering strictly in queue order (so in order per alert):
//! the head notification is retried with jittered exponential backoff
//! until the receiver answers 2xx; after [`BREAKER_AFTER`] consecutive
//! failures the circuit opens and only one probe is sent per
//! [`BREAKER_OPEN`]. A receiver that hangs holds only its own task (each
//! attempt is bounded by [`Dispatcher::timeout`]); the others go on.
//!
//! The secret must be kept in clear to sign (unlike tokens, which are
//! stored hashed): it is shown once at creation and never listed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pantau_model::Timestamp;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::AlertMetrics;
use crate::store::AlertStore;

/// Consecutive failures after which the circuit opens.
pub const BREAKER_AFTER: u32 = 5;
/// How long an open circuit waits between probes.
pub const BREAKER_OPEN: Duration = Duration::from_secs(30);
/// First retry delay (doubled per failure, jittered to 50–100 %).
const RETRY_BASE: Duration = Duration::from_millis(500);

/// A new signing secret, `whsec_` and 24 random bytes in base64.
pub fn new_secret() -> Result<String, ring::error::Unspecified> {
    let mut key = [0u8; 24];
    SystemRandom::new().fill(&mut key)?;
    Ok(format!("whsec_{}", B64.encode(key)))
}

/// Why a secret cannot sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret is \"whsec_\" followed by base64")]
pub struct BadSecret;

/// The `webhook-signature` value of a message.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &str) -> Result<String, BadSecret> {
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|k| B64.decode(k).ok())
        .ok_or(BadSecret)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let tag = hmac::sign(&key, format!("{msg_id}.{timestamp}.{body}").as_bytes());
    Ok(format!("v1,{}", B64.encode(tag.as_ref())))
}

/// Checks a webhook URL: `https://`, or `http://` to a loopback address
/// only (notifications carry agency data; TLS off the machine).
pub fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = u
        .host_str()
        .ok_or_else(|| format!("{url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    match u.scheme() {
        "https" => Ok(u),
        "http" => {
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(u)
            } else {
                Err(format!(
                    "{url:?}: plain http is allowed to a loopback address only; use https"
                ))
            }
        }
        other => Err(format!(
            "{url:?}: scheme {other:?} (https, or http to loopback)"
        )),
    }
}

/// Delivers every subscriber's outbox.
#[derive(Debug)]
pub struct Dispatcher {
    store: Arc<AlertStore>,
    client: reqwest::Client,
    metrics: AlertMetrics,
    /// Longest one attempt may take.
    pub timeout: Duration,
}

impl Dispatcher {
    /// A dispatcher over `store` (rustls with the process's provider).
    pub fn new(store: Arc<AlertStore>, metrics: AlertMetrics, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pantau/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with default TLS settings builds");
        Self {
            store,
            client,
            metrics,
            timeout,
        }
    }

    /// Runs until `stop`: keeps one task per subscriber (started for new
    /// ones, stopped for deleted ones), each woken by `queued`.
    pub async fn run(self: Arc<Self>, queued: watch::Receiver<u64>, stop: CancellationToken) {
        let mut tasks: HashMap<String, CancellationToken> = HashMap::new();
        let mut changes = queued.clone();
        loop {
            match self.store.webhooks() {
                Ok(hooks) => {
                    let ids: Vec<String> = hooks.iter().map(|h| h.id.clone()).collect();
                    tasks.retain(|id, t| {
                        let keep = ids.contains(id);
                        if !keep {
                            t.cancel();
                        }
                        keep
                    });
                    for h in hooks {
                        if tasks.contains_key(&h.id) {
                            continue;
                        }
                        let token = stop.child_token();
                        tasks.insert(h.id.clone(), token.clone());
                        let me = self.clone();
                        let queued = queued.clone();
                        tokio::spawn(async move { me.deliver(h.id, queued, token).await });
                    }
                }
                Err(e) => tracing::error!(error = %e, "Cannot list webhook subscribers."),
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One subscriber's delivery loop.
    async fn deliver(
        self: Arc<Self>,
        id: String,
        mut queued: watch::Receiver<u64>,
        stop: CancellationToken,
    ) {
        let labels = vec![("webhook", id.clone())];
        let mut failures: u32 = 0;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let hook = match self.store.webhooks() {
                Ok(h) => h.into_iter().find(|h| h.id == id),
                Err(e) => {
                    tracing::error!(error = %e, webhook = %id, "Cannot read the webhook subscriber.");
                    None
                }
            };
            let Some(hook) = hook else {
                return;
            };
            self.metrics
                .outbox
                .get_or_create(&labels)
                .set(hook.health.pending as i64);
            let next = match self.store.outgoing(&id, 1) {
                Ok(mut rows) => rows.pop(),
                Err(e) => {
                    tracing::error!(error = %e, webhook = %id, "Cannot read the outbox.");
                    None
                }
            };
            let Some(msg) = next else {
                tokio::select! {
                    _ = queued.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            };
            if failures > 0 {
                self.metrics.retried.get_or_create(&labels).inc();
            }
            let now = Timestamp::now();
            let ts = now.0.div_euclid(1000);
            let result = match sign(&hook.secret, &msg.msg_id, ts, &msg.body) {
                Err(e) => Err(e.to_string()),
                Ok(signature) => self
                    .client
                    .post(&hook.url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &msg.msg_id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", signature)
                    .body(msg.body.clone())
                    .send()
                    .await
                    .map_err(|e| error_text(&e))
                    .and_then(|r| {
                        if r.status().is_success() {
                            Ok(())
                        } else {
                            Err(format!("HTTP {}", r.status()))
                        }
                    }),
            };
            match result {
                Ok(()) => {
                    failures = 0;
                    self.metrics.sent.get_or_create(&labels).inc();
                    if let Err(e) = self.store.delivered(&id, msg.row, Timestamp::now()) {
                        tracing::error!(error = %e, webhook = %id, "Cannot record a delivery (it will be sent again).");
                    }
                }
                Err(error) => {
                    self.metrics.failed.get_or_create(&labels).inc();
                    failures = self
                        .store
                        .failed(&id, &error, Timestamp::now())
                        .unwrap_or(failures + 1);
                    let wait = retry_delay(failures);
                    tracing::warn!(webhook = %id, url = %hook.url, error = %error, failures, retry_in_ms = wait.as_millis() as u64, "Webhook delivery failed.");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// The delay after the `failures`-th consecutive failure: exponential,
/// jittered, and [`BREAKER_OPEN`] once the circuit is open.
pub fn retry_delay(failures: u32) -> Duration {
    if failures >= BREAKER_AFTER {
        return BREAKER_OPEN;
    }
    let full = RETRY_BASE * 2u32.saturating_pow(failures.saturating_sub(1));
    let mut b = [0u8; 2];
    let r = SystemRandom::new()
        .fill(&mut b)
        .map(|_| u16::from_le_bytes(b))
        .unwrap_or(u16::MAX);
    full / 2 + full.mul_f64(f64::from(r) / f64::from(u16::MAX) / 2.0)
}

fn error_text(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sig = sign(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .expect("signs");
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(sign("nope", "m", 1, "b"), Err(BadSecret));
        let fresh = new_secret().expect("random");
        assert!(fresh.starts_with("whsec_") && fresh.len() > 30);
    }

    #[test]
    fn urls_need_tls_off_the_machine() {
        assert!(check_url("https://bpbd.example.go.id/hook").is_ok());
        assert!(check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(check_url("http://[::1]:9000/hook").is_ok());
        assert!(check_url("http://bpbd.example.go.id/hook").is_err());
        assert!(check_url("ftp://x/").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn retries_back_off_with_jitter_and_the_circuit_opens() {
        for n in 1..BREAKER_AFTER {
            let full = RETRY_BASE * 2u32.pow(n - 1);
            let d = retry_delay(n);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?}");
        }
        assert_eq!(retry_delay(BREAKER_AFTER), BREAKER_OPEN);
    }
}
