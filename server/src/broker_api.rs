//! Revocation on EMQX and VerneMQ: they ask Pantau about each connection
//! and publish through the broker hooks (`pantau_api::broker_hooks`), so a
//! revoked gateway is refused at its next connect; its live session is
//! closed through the broker's own management API, as the embedded broker
//! and Mosquitto's dynamic security close it:
//!
//! - EMQX 5 (`--broker-api emqx+https://HOST:18083`): `DELETE
//!   /api/v5/clients/{clientid}` with an API key and secret (HTTP Basic);
//!   204, or 404 when the gateway is not connected.
//! - VerneMQ (`--broker-api vernemq+https://HOST:8888`): its HTTP
//!   administration, `vmq-admin session disconnect client-id=ID` as `GET
//!   /api/v1/session/disconnect?client-id=ID`, the API key as the Basic
//!   user name.
//!
//! A gateway's MQTT client id is its gateway id (`pantau-agent` connects
//! so). Adding and rotating need nothing from the broker: the hooks read
//! the shared state at every connect.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

/// Which management API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// EMQX 5 REST API.
    Emqx,
    /// VerneMQ HTTP administration.
    Vernemq,
}

/// A broker's management API.
#[derive(Debug, Clone)]
pub struct BrokerApi {
    flavor: Flavor,
    base: String,
    key: String,
    secret: String,
    client: reqwest::Client,
}

impl BrokerApi {
    /// `emqx+https://HOST:PORT` or `vernemq+https://HOST:PORT` (`+http://`
    /// on loopback only), the API key and its secret (EMQX), the CA (PEM)
    /// of an `https://` API with a private certificate.
    pub fn new(url: &str, key: &str, secret: &str, ca: Option<&Path>) -> anyhow::Result<Self> {
        let (flavor, rest) = if let Some(r) = url.strip_prefix("emqx+") {
            (Flavor::Emqx, r)
        } else if let Some(r) = url.strip_prefix("vernemq+") {
            (Flavor::Vernemq, r)
        } else {
            bail!("--broker-api {url:?}: expected emqx+https://HOST:PORT or vernemq+https://HOST:PORT");
        };
        let parsed = url::Url::parse(rest).with_context(|| format!("--broker-api {url:?}"))?;
        let loopback = match parsed.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        match parsed.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => bail!("--broker-api {url:?}: plain http off loopback would send the API secret in clear; use https"),
            other => bail!("--broker-api {url:?}: unknown scheme {other:?}"),
        }
        if flavor == Flavor::Emqx && secret.is_empty() {
            bail!("--broker-api emqx+… needs the API key's secret (PANTAU_BROKER_API_SECRET)");
        }
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = ca {
            let pem =
                std::fs::read(ca).with_context(|| format!("--broker-api-ca {}", ca.display()))?;
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("--broker-api-ca {}", ca.display()))?,
            );
        }
        Ok(Self {
            flavor,
            base: rest.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            secret: secret.to_owned(),
            client: builder.build()?,
        })
    }

    /// Closes gateway `id`'s live session (nothing to do if it has none).
    pub async fn disconnect(&self, id: &str) -> anyhow::Result<()> {
        let req = match self.flavor {
            Flavor::Emqx => self
                .client
                .delete(format!("{}/api/v5/clients/{id}", self.base))
                .basic_auth(&self.key, Some(&self.secret)),
            Flavor::Vernemq => self
                .client
                .get(format!("{}/api/v1/session/disconnect", self.base))
                .query(&[("client-id", id)])
                .basic_auth(&self.key, None::<&str>),
        };
        let resp = req
            .header("accept", "application/json")
            .send()
            .await
            .with_context(|| format!("the broker's management API at {}", self.base))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        match (self.flavor, status) {
            (Flavor::Emqx, 200..=299 | 404) => Ok(()),
            (Flavor::Vernemq, 200..=299) => {
                // vmq-admin answers errors in the body: a session that is
                // not there is nothing to close.
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let text = v["text"].as_str().unwrap_or_default();
                if v["type"] == "error" && !text.to_ascii_lowercase().contains("not found") {
                    bail!("VerneMQ refused the disconnect: {text}");
                }
                Ok(())
            }
            (_, 401 | 403) => {
                bail!("the broker's management API refused the API key (HTTP {status})")
            }
            _ => bail!(
                "the broker's management API answered HTTP {status}: {}",
                body.chars().take(200).collect::<String>()
            ),
        }
    }
}

impl pantau_api::GatewayHook for BrokerApi {
    fn added<'a>(
        &'a self,
        _id: &'a str,
        _password: &'a str,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn revoked<'a>(&'a self, id: &'a str) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.disconnect(id))
    }

    fn rotated<'a>(
        &'a self,
        _id: &'a str,
        _password: &'a str,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
        // As on the embedded broker: a live connection stays until it
        // reconnects, with the new token.
        Box::pin(async { Ok(()) })
    }
}
