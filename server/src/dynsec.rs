//! Gateways on an external Mosquitto keep Pantau's identities and ACL:
//! Pantau provisions each gateway through Mosquitto's dynamic-security
//! plugin (shipped with Debian's `mosquitto`), over its MQTT control API
//! (`$CONTROL/dynamic-security/v1`), as the broker's dynsec admin.
//!
//! A gateway `ID` becomes dynsec client `ID` (its Pantau token is the
//! password; the plugin keeps only a salted hash) with a role
//! `pantau-gw-ID` allowing exactly what the embedded gatekeeper allows:
//! publish to `pantau/v1/gw/ID/telemetry` and `…/status`, subscribe to and
//! receive `pantau/v1/gw/ID/cmd`. With the plugin's default ACL (publish
//! and subscribe denied) every other topic is refused. Revocation deletes
//! the client, which the plugin also disconnects at once; rotation sets a
//! new password (a live connection stays until it reconnects, as on the
//! embedded broker).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{json, Value};

/// Where commands go.
const CONTROL: &str = "$CONTROL/dynamic-security/v1";
/// Where the plugin answers.
const RESPONSE: &str = "$CONTROL/dynamic-security/v1/response";
/// Most time one exchange with the broker may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// The broker's dynsec admin account (`--broker-admin`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BrokerAdminArgs {
    /// An external Mosquitto whose dynamic-security plugin Pantau
    /// provisions gateways in (mqtts://HOST:PORT, or mqtt:// on loopback).
    #[arg(long, env = "PANTAU_BROKER_ADMIN")]
    pub broker_admin: Option<String>,
    /// CA certificate (PEM) of that broker, for mqtts://.
    #[arg(long, env = "PANTAU_BROKER_ADMIN_CA")]
    pub broker_admin_ca: Option<PathBuf>,
    /// The dynsec admin's username.
    #[arg(long, env = "PANTAU_BROKER_ADMIN_USERNAME")]
    pub broker_admin_username: Option<String>,
    /// Its password (prefer the environment variable).
    #[arg(long, env = "PANTAU_BROKER_ADMIN_PASSWORD", hide_env_values = true)]
    pub broker_admin_password: Option<String>,
    /// EMQX's or VerneMQ's management API, where revoked gateways' live
    /// sessions are closed: emqx+https://HOST:18083 or
    /// vernemq+https://HOST:8888 (+http:// on loopback).
    #[arg(long, env = "PANTAU_BROKER_API", conflicts_with = "broker_admin")]
    pub broker_api: Option<String>,
    /// Its API key.
    #[arg(long, env = "PANTAU_BROKER_API_KEY")]
    pub broker_api_key: Option<String>,
    /// The API key's secret (EMQX; prefer the environment variable).
    #[arg(long, env = "PANTAU_BROKER_API_SECRET", hide_env_values = true)]
    pub broker_api_secret: Option<String>,
    /// CA certificate (PEM) of an https:// management API.
    #[arg(long, env = "PANTAU_BROKER_API_CA")]
    pub broker_api_ca: Option<PathBuf>,
}

impl BrokerAdminArgs {
    /// What gateway registrations and revocations tell the external
    /// broker: Mosquitto's dynamic security (`--broker-admin`), EMQX's or
    /// VerneMQ's management API (`--broker-api`), or nothing.
    pub fn hook(&self) -> anyhow::Result<Option<Arc<dyn pantau_api::GatewayHook>>> {
        if let Some(d) = self.dynsec()? {
            return Ok(Some(d));
        }
        let Some(url) = &self.broker_api else {
            return Ok(None);
        };
        let key = self
            .broker_api_key
            .as_deref()
            .context("--broker-api needs --broker-api-key (PANTAU_BROKER_API_KEY)")?;
        let api = crate::broker_api::BrokerApi::new(
            url,
            key,
            self.broker_api_secret.as_deref().unwrap_or_default(),
            self.broker_api_ca.as_deref(),
        )?;
        Ok(Some(Arc::new(api)))
    }

    /// The provisioner, when a broker is named.
    pub fn dynsec(&self) -> anyhow::Result<Option<Arc<Dynsec>>> {
        let Some(url) = &self.broker_admin else {
            return Ok(None);
        };
        let (tls, host, port) =
            broker_address(url, self.broker_admin_ca.as_deref(), "--broker-admin")?;
        let username = self.broker_admin_username.clone().context(
            "--broker-admin needs --broker-admin-username (PANTAU_BROKER_ADMIN_USERNAME)",
        )?;
        let password = self
            .broker_admin_password
            .clone()
            .context("--broker-admin needs PANTAU_BROKER_ADMIN_PASSWORD")?;
        Ok(Some(Arc::new(Dynsec {
            host,
            port,
            tls,
            username,
            password,
        })))
    }
}

/// An external broker's `mqtts://HOST:PORT` (with the CA that signed its
/// certificate) or `mqtt://HOST:PORT`: the client TLS settings, host and
/// port; `flag` names the option in errors.
pub fn broker_address(
    url: &str,
    ca: Option<&std::path::Path>,
    flag: &str,
) -> anyhow::Result<(Option<Arc<rustls::ClientConfig>>, String, u16)> {
    let (tls, host, port) =
        pantau_edge_agent::uplink::parse_url(url).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    let tls = match (tls, ca) {
        (true, Some(ca)) => Some(pantau_edge_agent::uplink::client_tls(ca)?),
        (true, None) => bail!("{flag} mqtts:// needs {flag}-ca FILE"),
        (false, _) => None,
    };
    Ok((tls, host, port))
}

/// A Mosquitto dynamic-security control connection's settings.
pub struct Dynsec {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    username: String,
    password: String,
}

impl std::fmt::Debug for Dynsec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dynsec")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The role of gateway `id`.
fn role(id: &str) -> String {
    format!("pantau-gw-{id}")
}

impl Dynsec {
    /// Provisions gateway `id` with `password` (idempotent for the role).
    pub async fn add_gateway(&self, id: &str, password: &str) -> anyhow::Result<()> {
        let topic = |kind: &str| format!("pantau/v1/gw/{id}/{kind}");
        let acl = |acltype: &str, topic: String| json!({"acltype": acltype, "topic": topic, "priority": 0, "allow": true});
        let create_role = json!({
            "command": "createRole",
            "rolename": role(id),
            "textdescription": format!("Pantau gateway {id}"),
            "acls": [
                acl("publishClientSend", topic("telemetry")),
                acl("publishClientSend", topic("status")),
                acl("subscribeLiteral", topic("cmd")),
                acl("publishClientReceive", topic("cmd")),
            ],
        });
        let answers = self.run(vec![create_role]).await?;
        check(&answers, &["Role already exists"])?;
        let create_client = json!({
            "command": "createClient",
            "username": id,
            "password": password,
            "textdescription": "Pantau gateway",
            "roles": [{"rolename": role(id), "priority": 0}],
        });
        check(&self.run(vec![create_client]).await?, &[])
    }

    /// Deletes gateway `id`'s client (the broker disconnects it) and role.
    pub async fn revoke_gateway(&self, id: &str) -> anyhow::Result<()> {
        let answers = self
            .run(vec![
                json!({"command": "deleteClient", "username": id}),
                json!({"command": "deleteRole", "rolename": role(id)}),
            ])
            .await?;
        // Already gone is what was asked for.
        check(&answers, &["Client not found", "Role not found"])
    }

    /// Gives gateway `id` a new password.
    pub async fn rotate_gateway(&self, id: &str, password: &str) -> anyhow::Result<()> {
        check(
            &self
                .run(vec![json!({
                    "command": "setClientPassword",
                    "username": id,
                    "password": password,
                })])
                .await?,
            &[],
        )
    }

    /// Sends `commands` and returns the plugin's responses, in order.
    async fn run(&self, commands: Vec<Value>) -> anyhow::Result<Vec<Value>> {
        let n = commands.len();
        tokio::time::timeout(DEADLINE, self.exchange(commands))
            .await
            .with_context(|| {
                format!(
                    "the broker's dynamic-security plugin at {}:{} did not answer within {DEADLINE:?}",
                    self.host, self.port
                )
            })?
            .and_then(|answers| {
                if answers.len() == n {
                    Ok(answers)
                } else {
                    bail!("dynamic-security answered {} of {n} commands", answers.len())
                }
            })
    }

    async fn exchange(&self, commands: Vec<Value>) -> anyhow::Result<Vec<Value>> {
        // One client id per exchange: two at once (two admin requests) with
        // one id would have the broker drop the first.
        static EXCHANGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = EXCHANGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("pantau-admin-{}-{n}", std::process::id());
        let mut opts = MqttOptions::new(id, self.host.clone(), self.port);
        opts.set_clean_session(true);
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_credentials(self.username.clone(), self.password.clone());
        if let Some(tls) = &self.tls {
            opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        }
        let (client, mut events) = AsyncClient::new(opts, 16);
        let body = serde_json::to_vec(&json!({ "commands": commands }))?;
        loop {
            match events.poll().await.context("dynamic-security connection")? {
                Event::Incoming(Packet::ConnAck(_)) => {
                    client.subscribe(RESPONSE, QoS::AtLeastOnce).await?;
                }
                Event::Incoming(Packet::SubAck(ack)) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        bail!("the broker refused {RESPONSE} to the admin account (is it the dynsec admin?)");
                    }
                    client
                        .publish(CONTROL, QoS::AtLeastOnce, false, body.clone())
                        .await?;
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == RESPONSE => {
                    let v: Value = serde_json::from_slice(&p.payload)
                        .context("dynamic-security answered something that is not JSON")?;
                    let _ = client.try_disconnect();
                    return Ok(v["responses"].as_array().cloned().unwrap_or_default());
                }
                _ => {}
            }
        }
    }
}

/// Fails on the first response with an error not in `tolerated`.
fn check(answers: &[Value], tolerated: &[&str]) -> anyhow::Result<()> {
    for a in answers {
        if let Some(e) = a["error"].as_str() {
            if !tolerated.contains(&e) {
                bail!(
                    "dynamic-security {}: {e}",
                    a["command"].as_str().unwrap_or("command")
                );
            }
        }
    }
    Ok(())
}

/// The API's hook: gateways added, revoked or rotated through any replica
/// are provisioned in the broker the same way.
impl pantau_api::GatewayHook for Dynsec {
    fn added<'a>(
        &'a self,
        id: &'a str,
        password: &'a str,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.add_gateway(id, password))
    }

    fn revoked<'a>(&'a self, id: &'a str) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.revoke_gateway(id))
    }

    fn rotated<'a>(
        &'a self,
        id: &'a str,
        password: &'a str,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.rotate_gateway(id, password))
    }
}
