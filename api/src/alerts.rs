//! Alert routes: the agency inbox (`/api/v1/alerts`, limited to the
//! token's read scopes; acting on an alert needs `ack:<kind>`), its live
//! feed, the admin routes for rules, webhooks and silences, and the
//! public warnings (JSON and CAP 1.2).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use futures::Stream;
use pantau_alerts::store::{AlertFilter, Silence, Webhook};
use pantau_alerts::{Alert, AlertState, Engine, EngineError, RuleSpec, StoreError};
use pantau_model::{SensorKind, Timestamp};
use serde::Deserialize;
use serde_json::{json, Value as JsonValue};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Agency;
use crate::extract::Q;
use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};

/// Most alerts one list answers.
const MAX_LIMIT: usize = 1_000;

fn engine(state: &AppState) -> Result<Arc<Engine>, ApiError> {
    state.alerts.clone().ok_or(ApiError::Busy(
        "alerting runs in `pantau up`; this process has no alert engine",
    ))
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(what) => ApiError::NotFound(what),
        StoreError::Exists(what) => ApiError::Conflict(what),
        e => ApiError::Internal(crate::error::Internal::Alerts(e.to_string())),
    }
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Rule { error, .. } => ApiError::BadField {
            field: error.field.to_owned(),
            message: error.message,
        },
        EngineError::Duplicate(id) => ApiError::Conflict(format!(
            "alert rule {id:?} is configured in the server's file or built in"
        )),
        EngineError::Store(e) => store_error(e),
        e => ApiError::Internal(crate::error::Internal::Alerts(e.to_string())),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await?
}

/// A JSON body parsed into `T`; a body that does not parse is a 400
/// naming the field serde names (unknown, missing or mistyped).
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        let field = ["unknown field `", "missing field `", "duplicate field `"]
            .iter()
            .find_map(|p| {
                let rest = text.split(p).nth(1)?;
                Some(rest.split('`').next()?.to_owned())
            })
            .unwrap_or_else(|| "body".to_owned());
        ApiError::BadField {
            field,
            message: text,
        }
    })
}

/// `GET /api/v1/alerts` filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Comma-separated states: `open`, `acknowledged`, `resolved`
    /// (default: `open,acknowledged`; `all` for every state).
    state: Option<String>,
    /// Only this sensor kind.
    kind: Option<String>,
    /// Only this sensor (or gateway, for `gateway-offline`).
    sensor: Option<String>,
    /// Only this rule.
    rule: Option<String>,
    /// Only this district.
    district: Option<String>,
    /// Only alerts that reached at least this severity (1 = the rule's
    /// lowest level; for Siaga 1 = Siaga 3, 3 = Siaga 1).
    #[param(minimum = 0, maximum = 255)]
    level: Option<u8>,
    /// Changed at or after (RFC 3339).
    since: Option<String>,
    /// Raised before (RFC 3339).
    until: Option<String>,
    /// At most this many (default 200, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

fn time_param(name: &'static str, v: &Option<String>) -> Result<Option<Timestamp>, ApiError> {
    v.as_deref()
        .map(|s| {
            Timestamp::parse_rfc3339(s).ok_or_else(|| ApiError::BadParam {
                param: name,
                message: format!("{s:?} is not an RFC 3339 time such as 2026-12-04T08:00:00Z"),
            })
        })
        .transpose()
}

fn kind_param(v: &Option<String>) -> Result<Option<SensorKind>, ApiError> {
    v.as_deref()
        .map(|k| {
            SensorKind::parse(k).ok_or_else(|| ApiError::BadParam {
                param: "kind",
                message: format!("unknown sensor kind {k:?}"),
            })
        })
        .transpose()
}

/// The alerts the token may read (its read scopes' kinds), most recently
/// changed first.
#[utoipa::path(get, path = "/api/v1/alerts", operation_id = "list_alerts", tag = "alerts", params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{\"alerts\":[{\"id\":1,\"rule\":\"siaga\",\"sensor\":\"fl-…\",\"state\":\"open\",\"level\":2,\"level_label\":\"Siaga 2 (Siaga)\",\"since\":…},…]}`", body = Object),
        (status = 400, description = "A bad filter", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 503, description = "No alert engine in this process", body = ErrorBody),
    ))]
pub(crate) async fn list(
    agency: Agency,
    State(state): State<AppState>,
    Q(p): Q<ListParams>,
) -> Result<impl IntoResponse, ApiError> {
    let engine = engine(&state)?;
    let states = match p.state.as_deref() {
        None => vec![AlertState::Open, AlertState::Acknowledged],
        Some("all") => vec![],
        Some(s) => s
            .split(',')
            .map(|x| {
                AlertState::parse(x.trim()).ok_or_else(|| ApiError::BadParam {
                    param: "state",
                    message: format!("{x:?}: open, acknowledged, resolved or all"),
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let readable: Vec<SensorKind> = SensorKind::ALL
        .into_iter()
        .filter(|k| agency.reads(*k))
        .collect();
    let kinds = match kind_param(&p.kind)? {
        Some(k) if readable.contains(&k) => vec![k],
        Some(k) => {
            return Err(ApiError::Forbidden(format!(
                "token {:?} may not read {k} alerts",
                agency.name
            )))
        }
        None => readable,
    };
    if kinds.is_empty() {
        return Ok(Json(json!({ "alerts": [] })));
    }
    let limit = match p.limit {
        None => 200,
        Some(n @ 1..=MAX_LIMIT) => n,
        Some(n) => {
            return Err(ApiError::BadParam {
                param: "limit",
                message: format!("{n}: from 1 to {MAX_LIMIT}"),
            })
        }
    };
    let filter = AlertFilter {
        states,
        kinds,
        sensor: p.sensor,
        rule: p.rule,
        district: p.district,
        min_level: p.level,
        public_only: false,
        since: time_param("since", &p.since)?,
        until: time_param("until", &p.until)?,
        limit,
    };
    let alerts = blocking(move || {
        let store = engine.store();
        let mut alerts = store.alerts(&filter).map_err(store_error)?;
        mark_muted(store, &mut alerts)?;
        Ok(alerts)
    })
    .await?;
    Ok(Json(json!({ "alerts": alerts })))
}

/// Marks the alerts a silence in force mutes now.
fn mark_muted(store: &pantau_alerts::AlertStore, alerts: &mut [Alert]) -> Result<(), ApiError> {
    let now = Timestamp::now();
    let silences = store.silences(now).map_err(store_error)?;
    for a in alerts {
        a.muted = silences
            .iter()
            .any(|s| s.mutes(&a.rule, &a.sensor, a.kind, now));
    }
    Ok(())
}

fn readable(agency: &Agency, alert: Alert) -> Result<Alert, ApiError> {
    if agency.reads(alert.kind) {
        Ok(alert)
    } else {
        // Not visible to this token: as if it did not exist.
        Err(ApiError::NotFound(format!("alert {}", alert.id)))
    }
}

/// One alert with its timeline (every change and every action, oldest
/// first).
#[utoipa::path(get, path = "/api/v1/alerts/{id}", operation_id = "get_alert", tag = "alerts",
    params(("id" = i64, Path, description = "Alert id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{\"alert\":{…},\"timeline\":[{\"change\":\"raised\",\"level\":1,\"at\":…,\"late\":false},…]}`", body = Object),
        (status = 400, description = "Not an alert id", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 404, description = "No such alert visible to the token", body = ErrorBody),
        (status = 503, description = "No alert engine in this process", body = ErrorBody),
    ))]
pub(crate) async fn get_one(
    agency: Agency,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let engine = engine(&state)?;
    let id = alert_id(&id)?;
    let (alert, timeline) = blocking(move || {
        let mut a = vec![engine.store().alert(id).map_err(store_error)?];
        mark_muted(engine.store(), &mut a)?;
        let a = a.pop().expect("one alert");
        let t = engine.store().timeline(id).map_err(store_error)?;
        Ok((a, t))
    })
    .await?;
    let alert = readable(&agency, alert)?;
    Ok(Json(json!({ "alert": alert, "timeline": timeline })))
}

fn alert_id(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadParam {
            param: "id",
            message: format!("{s:?} is not an alert id"),
        })
}

/// Body of the actions on an alert.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionBody {
    /// A note for the timeline (ack, resolve, notes).
    #[schema(max_length = 2000)]
    note: Option<String>,
    /// Who it is assigned to (assign; empty or absent clears it).
    #[schema(max_length = 200)]
    assignee: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Ack,
    Assign,
    Note,
    Resolve,
}

async fn act(
    agency: Agency,
    state: AppState,
    id: String,
    body: Bytes,
    action: Action,
) -> Result<axum::response::Response, ApiError> {
    let engine = engine(&state)?;
    let id = alert_id(&id)?;
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        parse_body(&body)?
    };
    for (field, v, max) in [
        ("note", &body.note, 2000),
        ("assignee", &body.assignee, 200),
    ] {
        if v.as_ref().is_some_and(|s| s.chars().count() > max) {
            return Err(ApiError::BadField {
                field: field.into(),
                message: format!("at most {max} characters"),
            });
        }
    }
    if matches!(action, Action::Note) && body.note.as_deref().is_none_or(|n| n.trim().is_empty()) {
        return Err(ApiError::BadField {
            field: "note".into(),
            message: "a note is required".into(),
        });
    }
    let e = engine.clone();
    let alert = blocking(move || e.store().alert(id).map_err(store_error)).await?;
    let alert = readable(&agency, alert)?;
    if !agency.scopes.can_ack(alert.kind) {
        return Err(ApiError::Forbidden(format!(
            "token {:?} may not act on {} alerts (needs ack:{})",
            agency.name,
            alert.kind,
            alert.kind.as_str()
        )));
    }
    let by = agency.name.clone();
    let e = engine.clone();
    let rec = blocking(move || {
        let s = e.store();
        let note = body
            .note
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty());
        match action {
            Action::Ack => s.acknowledge(id, &by, note),
            Action::Assign => s.assign(
                id,
                &by,
                body.assignee
                    .as_deref()
                    .map(str::trim)
                    .filter(|a| !a.is_empty()),
            ),
            Action::Note => s.note(id, &by, note.unwrap_or_default()),
            Action::Resolve => s.resolve(id, &by, note),
        }
        .map_err(store_error)
    })
    .await?;
    let rec = engine.published(rec);
    tracing::info!(alert = id, change = %rec.event.change, by = %agency.name, "Alert action.");
    Ok(Json(json!({ "alert": rec.alert, "event": rec.event })).into_response())
}

macro_rules! action_route {
    ($name:ident, $op:literal, $path:literal, $action:expr, $what:literal) => {
        #[doc = $what]
        #[utoipa::path(post, path = $path, operation_id = $op, tag = "alerts",
            params(("id" = i64, Path, description = "Alert id")),
            request_body(content = ActionBody, description = "Optional `{\"note\": …}` (`{\"assignee\": …}` to assign)"),
            security(("bearer" = [])),
            responses(
                (status = 200, description = "`{\"alert\":{…},\"event\":{…}}`", body = Object),
                (status = 400, description = "A bad id or body (the field is named)", body = ErrorBody),
                (status = 401, description = "No usable token", body = ErrorBody),
                (status = 403, description = "The token lacks `ack:<kind>` for this alert", body = ErrorBody),
                (status = 404, description = "No such alert visible to the token", body = ErrorBody),
                (status = 409, description = "The alert is resolved", body = ErrorBody),
                (status = 413, description = "Body too large", body = ErrorBody),
                (status = 503, description = "No alert engine in this process", body = ErrorBody),
            ))]
        pub(crate) async fn $name(
            agency: Agency,
            State(state): State<AppState>,
            Path(id): Path<String>,
            body: Bytes,
        ) -> Result<axum::response::Response, ApiError> {
            act(agency, state, id, body, $action).await
        }
    };
}

action_route!(
    ack,
    "ack_alert",
    "/api/v1/alerts/{id}/ack",
    Action::Ack,
    "Acknowledges an alert (scope `ack:<kind>`)."
);
action_route!(
    assign,
    "assign_alert",
    "/api/v1/alerts/{id}/assign",
    Action::Assign,
    "Assigns an alert (scope `ack:<kind>`)."
);
action_route!(
    notes,
    "notes_alert",
    "/api/v1/alerts/{id}/notes",
    Action::Note,
    "Adds a note to an alert's timeline (scope `ack:<kind>`)."
);
action_route!(
    resolve,
    "resolve_alert",
    "/api/v1/alerts/{id}/resolve",
    Action::Resolve,
    "Resolves an alert by hand (scope `ack:<kind>`)."
);

/// Alert changes and actions as they happen, limited to the token's read
/// scopes: `alert` events of `{"alert":{…},"event":{…}}`, `lagged` when
/// the client fell behind (re-read `/api/v1/alerts`), a heartbeat comment
/// every 15 s.
#[utoipa::path(get, path = "/api/v1/alerts/live", operation_id = "alerts_live", tag = "alerts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An endless `text/event-stream`", content_type = "text/event-stream", body = String),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 429, description = "Too many live streams from this address", body = ErrorBody),
        (status = 503, description = "No alert engine, or live feeds at capacity", body = ErrorBody),
    ))]
pub(crate) async fn live(
    agency: Agency,
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let engine = engine(&state)?;
    let admitted = crate::live::admit(&state, peer, &headers)?;
    let rx = engine.subscribe();
    let stream = futures::stream::unfold(
        (rx, agency, admitted),
        |(mut rx, agency, admitted)| async move {
            loop {
                match rx.recv().await {
                    Ok(rec) if agency.reads(rec.alert.kind) => {
                        let data = json!({"alert": rec.alert, "event": rec.event}).to_string();
                        let ev = Event::default()
                            .event("alert")
                            .id(rec.event.id.to_string())
                            .data(data);
                        return Some((Ok(ev), (rx, agency, admitted)));
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let ev = Event::default()
                            .event("lagged")
                            .data(json!({"skipped": n}).to_string());
                        return Some((Ok(ev), (rx, agency, admitted)));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

// ---- admin: rules ----

/// Every alert rule: built in (`siaga` for every gauge with thresholds,
/// `sensor-silent`, `gateway-offline`), from the server's configuration
/// file, and added by API.
#[utoipa::path(get, path = "/api/v1/admin/alert-rules", operation_id = "list_alert_rules", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{\"rules\":[{\"id\":…,\"source\":\"api\",\"spec\":{…}}],\"built_in\":[…]}`", body = Object),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 503, description = "No alert engine in this process", body = ErrorBody),
    ))]
pub(crate) async fn rules(
    agency: Agency,
    State(state): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    agency.require_admin()?;
    let engine = engine(&state)?;
    let specs = blocking(move || engine.rule_specs().map_err(engine_error)).await?;
    let rules: Vec<JsonValue> = specs
        .into_iter()
        .map(|(spec, source)| json!({"id": spec.id, "source": source, "spec": spec}))
        .collect();
    Ok(Json(json!({
        "rules": rules,
        "built_in": [
            {"id": pantau_alerts::rules::SIAGA_RULE, "description": "Siaga 3/2/1 from each gauge's own thresholds, deadband 5 cm, immediate"},
            {"id": pantau_alerts::engine::SILENCE_RULE, "description": "a sensor with no reading for the configured time"},
            {"id": pantau_alerts::engine::GATEWAY_RULE, "description": "a gateway none of whose sensors was heard for the configured time; inhibits its sensors' silence"},
        ],
    })))
}

/// Creates or replaces an alert rule (`above` or `below` levels on one
/// field of one kind, optional `sensors`, `deadband` or `clear`, `for`,
/// `clear_for`, `cooldown`, `rate_window`). A bad rule is a 400 naming
/// the field; nothing configured changes.
#[utoipa::path(post, path = "/api/v1/admin/alert-rules", operation_id = "put_alert_rule", tag = "admin",
    request_body(content = Object, description = "`{\"id\":\"crane-wind\",\"kind\":\"metocean\",\"field\":\"wind_gust_ms\",\"above\":[15],\"for\":\"2m\"}`"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The rule as stored", body = Object),
        (status = 400, description = "An invalid rule (the field is named)", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 409, description = "The id is built in or set in the server's file", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "No alert engine in this process", body = ErrorBody),
    ))]
pub(crate) async fn put_rule(
    agency: Agency,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    agency.require_admin()?;
    let engine = engine(&state)?;
    let spec: RuleSpec = parse_body(&body)?;
    let by = agency.name.clone();
    let stored = spec.clone();
    blocking(move || engine.put_rule(spec, &by).map_err(engine_error)).await?;
    tracing::info!(rule = %stored.id, by = %agency.name, "Alert rule stored through the API.");
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": stored.id, "source": "api", "spec": stored})),
    ))
}

/// Deletes an alert rule added by API (its open alerts stay, as they are).
#[utoipa::path(delete, path = "/api/v1/admin/alert-rules/{id}", operation_id = "delete_alert_rule", tag = "admin",
    params(("id" = String, Path, description = "Rule id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 404, description = "No rule of that id was added by API", body = ErrorBody),
        (status = 503, description = "No alert engine in this process", body = ErrorBody),
    ))]
pub(crate) async fn delete_rule(
    agency: Agency,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    agency.require_admin()?;
    let engine = engine(&state)?;
    blocking(move || engine.delete_rule(&id).map_err(engine_error)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- admin: webhooks ----

/// `POST /api/v1/admin/webhooks` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewWebhook {
    /// Id: lowercase letters, digits and '-'.
    #[schema(pattern = r"^[a-z0-9-]{1,64}$")]
    id: String,
    /// `https://…` (or `http://` to a loopback address).
    url: String,
    /// Only alerts of these sensor kinds (default: all).
    #[serde(default)]
    kinds: Vec<String>,
    /// Only alerts in these districts (default: all).
    #[serde(default)]
    districts: Vec<String>,
    /// Only alerts that reached at least this severity (default 1).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 255)]
    min_level: Option<u8>,
}

/// Adds a webhook subscriber; the answer holds its signing secret, shown
/// this once.
#[utoipa::path(post, path = "/api/v1/admin/webhooks", operation_id = "add_webhook", tag = "admin", request_body = NewWebhook,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "`{\"id\":…,\"url\":…,\"secret\":\"whsec_…\"}`", body = Object),
        (status = 400, description = "A bad field (named)", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 409, description = "A webhook of that id exists", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "No alert engine in this process", body = ErrorBody),
    ))]
pub(crate) async fn add_webhook(
    agency: Agency,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    agency.require_admin()?;
    let engine = engine(&state)?;
    let b: NewWebhook = parse_body(&body)?;
    pantau_model::id::check_id(&b.id).map_err(|e| ApiError::BadField {
        field: "id".into(),
        message: e.to_string(),
    })?;
    pantau_alerts::webhook::check_url(&b.url).map_err(|message| ApiError::BadField {
        field: "url".into(),
        message,
    })?;
    let kinds = b
        .kinds
        .iter()
        .map(|k| {
            SensorKind::parse(k).ok_or_else(|| ApiError::BadField {
                field: "kinds".into(),
                message: format!("unknown sensor kind {k:?}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let secret = pantau_alerts::webhook::new_secret()
        .map_err(|_| ApiError::Internal(crate::error::Internal::Alerts("random".into())))?;
    let hook = Webhook {
        id: b.id,
        url: b.url,
        secret: secret.clone(),
        kinds,
        districts: b.districts,
        min_level: b.min_level.unwrap_or(1),
        created_by: agency.name.clone(),
        created: Timestamp::now(),
        health: Default::default(),
    };
    let stored = hook.clone();
    blocking(move || engine.store().add_webhook(&stored).map_err(store_error)).await?;
    tracing::info!(webhook = %hook.id, url = %hook.url, by = %agency.name, "Webhook subscriber added.");
    let mut v = serde_json::to_value(&hook)?;
    v["secret"] = JsonValue::String(secret);
    Ok((StatusCode::CREATED, Json(v)))
}

/// Every webhook subscriber with its delivery health (`last_success`,
/// `last_failure`, `last_error`, `consecutive_errors`, `pending`,
/// `delivered`); never the secret.
#[utoipa::path(get, path = "/api/v1/admin/webhooks", operation_id = "list_webhooks", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{\"webhooks\":[{\"id\":…,\"url\":…,\"health\":{…}}]}`", body = Object),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 503, description = "No alert engine in this process", body = ErrorBody),
    ))]
pub(crate) async fn webhooks(
    agency: Agency,
    State(state): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    agency.require_admin()?;
    let engine = engine(&state)?;
    let hooks = blocking(move || engine.store().webhooks().map_err(store_error)).await?;
    Ok(Json(json!({ "webhooks": hooks })))
}

/// Removes a webhook subscriber and what waits in its outbox.
#[utoipa::path(delete, path = "/api/v1/admin/webhooks/{id}", operation_id = "delete_webhook", tag = "admin",
    params(("id" = String, Path, description = "Webhook id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 404, description = "No such webhook", body = ErrorBody),
        (status = 503, description = "No alert engine in this process", body = ErrorBody),
    ))]
pub(crate) async fn delete_webhook(
    agency: Agency,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    agency.require_admin()?;
    let engine = engine(&state)?;
    blocking(move || engine.store().delete_webhook(&id).map_err(store_error)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- admin: silences ----

/// `POST /api/v1/admin/silences` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewSilence {
    /// Only this sensor (or gateway).
    sensor: Option<String>,
    /// Only this sensor kind.
    kind: Option<String>,
    /// Only this rule.
    rule: Option<String>,
    /// Why (shown with the alerts it mutes).
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
    /// Until (RFC 3339), at most 30 days ahead.
    until: String,
}

/// Starts a maintenance window: notifications of matching alerts are
/// muted until it ends (the alerts are still raised and listed).
#[utoipa::path(post, path = "/api/v1/admin/silences", operation_id = "add_silence", tag = "admin", request_body = NewSilence,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The silence", body = Object),
        (status = 400, description = "A bad field (named)", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "No alert engine in this process", body = ErrorBody),
    ))]
pub(crate) async fn add_silence(
    agency: Agency,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    agency.require_admin()?;
    let engine = engine(&state)?;
    let b: NewSilence = parse_body(&body)?;
    let now = Timestamp::now();
    let ends = Timestamp::parse_rfc3339(&b.until)
        .filter(|t| *t > now && t.0 - now.0 <= 30 * 86_400_000)
        .ok_or_else(|| ApiError::BadField {
            field: "until".into(),
            message: "an RFC 3339 time in the next 30 days".into(),
        })?;
    if b.reason.trim().is_empty() || b.reason.chars().count() > 500 {
        return Err(ApiError::BadField {
            field: "reason".into(),
            message: "1 to 500 characters".into(),
        });
    }
    let kind = b
        .kind
        .as_deref()
        .map(|k| {
            SensorKind::parse(k).ok_or_else(|| ApiError::BadField {
                field: "kind".into(),
                message: format!("unknown sensor kind {k:?}"),
            })
        })
        .transpose()?;
    let mut s = Silence {
        id: 0,
        sensor: b.sensor,
        kind,
        rule: b.rule,
        reason: b.reason,
        by: agency.name.clone(),
        starts: now,
        ends,
    };
    let stored = s.clone();
    s.id = blocking(move || engine.store().add_silence(&stored).map_err(store_error)).await?;
    tracing::info!(silence = s.id, by = %agency.name, until = %ends.to_rfc3339(), "Silence started.");
    Ok((StatusCode::CREATED, Json(s)))
}

/// The silences in force.
#[utoipa::path(get, path = "/api/v1/admin/silences", operation_id = "list_silences", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{\"silences\":[…]}`", body = Object),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 503, description = "No alert engine in this process", body = ErrorBody),
    ))]
pub(crate) async fn silences(
    agency: Agency,
    State(state): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    agency.require_admin()?;
    let engine = engine(&state)?;
    let list = blocking(move || {
        engine
            .store()
            .silences(Timestamp::now())
            .map_err(store_error)
    })
    .await?;
    Ok(Json(json!({ "silences": list })))
}

/// Ends a silence early (kept for the audit trail).
#[utoipa::path(delete, path = "/api/v1/admin/silences/{id}", operation_id = "cancel_silence", tag = "admin",
    params(("id" = i64, Path, description = "Silence id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Ended"),
        (status = 400, description = "Not a silence id", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 404, description = "No such active silence", body = ErrorBody),
        (status = 503, description = "No alert engine in this process", body = ErrorBody),
    ))]
pub(crate) async fn cancel_silence(
    agency: Agency,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    agency.require_admin()?;
    let engine = engine(&state)?;
    let id = alert_id(&id)?;
    let by = agency.name.clone();
    blocking(move || engine.store().cancel_silence(id, &by).map_err(store_error)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- public warnings ----

/// The active warnings of public sensors.
async fn public_warnings(state: &AppState) -> Result<Vec<JsonValue>, ApiError> {
    let engine = engine(state)?;
    let alerts = blocking(move || {
        engine
            .store()
            .alerts(&AlertFilter {
                states: vec![AlertState::Open, AlertState::Acknowledged],
                public_only: true,
                limit: MAX_LIMIT,
                ..Default::default()
            })
            .map_err(store_error)
    })
    .await?;
    let registry = state.ingestor.registry();
    Ok(alerts
        .into_iter()
        // A silent sensor or gateway is the operators' business; the public
        // view already shows how old each value is.
        .filter(|a| {
            a.rule != pantau_alerts::engine::GATEWAY_RULE
                && a.rule != pantau_alerts::engine::SILENCE_RULE
        })
        .filter_map(|a| {
            // Only while the sensor is still public.
            let s = registry.get(&a.sensor).filter(|s| s.public)?;
            Some(json!({
                "sensor": a.sensor,
                "name": s.name,
                "kind": a.kind.as_str(),
                "district": s.district,
                "lat": s.lat,
                "lon": s.lon,
                "warning": a.rule_name,
                "level": a.level,
                "level_label": a.level_label,
                "since": a.since.to_rfc3339(),
                "updated": a.changed.to_rfc3339(),
            }))
        })
        .collect())
}

/// The active warnings of public sensors: level, sensor, district and
/// since (no assignee, notes or internal rules).
#[utoipa::path(get, path = "/api/v1/public/warnings", operation_id = "public_warnings", tag = "public",
    responses(
        (status = 200, description = "`{\"warnings\":[{\"sensor\":…,\"level_label\":\"Siaga 2 (Siaga)\",\"district\":…,\"since\":…}]}`", body = Object),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "No alert engine in this process", body = ErrorBody),
    ))]
pub(crate) async fn warnings(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let list = public_warnings(&state).await?;
    Ok(Json(
        json!({ "warnings": list, "generated": Timestamp::now().to_rfc3339() }),
    ))
}

/// The public warnings as one Common Alerting Protocol 1.2 message, one
/// `info` block per active warning (none when all is calm).
#[utoipa::path(get, path = "/api/v1/public/warnings.cap", operation_id = "public_warnings_cap", tag = "public",
    responses(
        (status = 200, description = "A CAP 1.2 `alert`", content_type = "application/cap+xml", body = String),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "No alert engine in this process", body = ErrorBody),
    ))]
pub(crate) async fn warnings_cap(
    State(state): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    let list = public_warnings(&state).await?;
    let xml = cap_document(&list, Timestamp::now());
    Ok((
        [(header::CONTENT_TYPE, "application/cap+xml; charset=utf-8")],
        xml,
    ))
}

/// CAP times: no fractions, UTC written `-00:00` (CAP 1.2 §3.3.2).
fn cap_time(t: Timestamp) -> String {
    let s = t.to_rfc3339();
    let base = s.split('.').next().unwrap_or(&s).trim_end_matches('Z');
    format!("{base}-00:00")
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

fn cap_document(list: &[JsonValue], now: Timestamp) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str("<alert xmlns=\"urn:oasis:names:tc:emergency:cap:1.2\">\n");
    x.push_str(&format!(
        "  <identifier>pantau-dumai-warnings-{}</identifier>\n  <sender>pantau@dumai.go.id</sender>\n  <sent>{}</sent>\n  <status>Actual</status>\n  <msgType>Alert</msgType>\n  <scope>Public</scope>\n",
        now.0,
        cap_time(now)
    ));
    for w in list {
        let s = |k: &str| w[k].as_str().unwrap_or_default().to_owned();
        let level = w["level"].as_u64().unwrap_or(1);
        let kind = s("kind");
        let (category, event) = match kind.as_str() {
            "flood_gauge" => ("Met", "Banjir"),
            "traffic_counter" => ("Transport", "Kemacetan"),
            "berth" => ("Transport", "Pelabuhan"),
            _ => ("Met", "Kondisi pelabuhan"),
        };
        let severity = match level {
            0 | 1 => "Moderate",
            2 => "Severe",
            _ => "Extreme",
        };
        let since = Timestamp::parse_rfc3339(&s("since")).unwrap_or(now);
        x.push_str("  <info>\n    <language>id-ID</language>\n");
        x.push_str(&format!("    <category>{category}</category>\n"));
        x.push_str(&format!(
            "    <event>{}</event>\n",
            xml_escape(&format!("{event}: {}", s("level_label")))
        ));
        x.push_str(&format!(
            "    <urgency>Immediate</urgency>\n    <severity>{severity}</severity>\n    <certainty>Observed</certainty>\n"
        ));
        x.push_str(&format!("    <onset>{}</onset>\n", cap_time(since)));
        x.push_str("    <senderName>Pantau Kota Dumai</senderName>\n");
        x.push_str(&format!(
            "    <headline>{}</headline>\n",
            xml_escape(&format!(
                "{} — {}: {}",
                s("name"),
                s("district"),
                s("level_label")
            ))
        ));
        x.push_str(&format!(
            "    <description>{}</description>\n",
            xml_escape(&format!(
                "{} di {} ({}) sejak {}.",
                s("warning"),
                s("name"),
                s("district"),
                s("since")
            ))
        ));
        x.push_str(&format!(
            "    <parameter>\n      <valueName>pantau:sensor</valueName>\n      <value>{}</value>\n    </parameter>\n",
            xml_escape(&s("sensor"))
        ));
        x.push_str(&format!(
            "    <area>\n      <areaDesc>{}</areaDesc>\n      <circle>{},{} 1.0</circle>\n    </area>\n",
            xml_escape(&format!("{}, Kota Dumai", s("district"))),
            w["lat"].as_f64().unwrap_or_default(),
            w["lon"].as_f64().unwrap_or_default()
        ));
        x.push_str("  </info>\n");
    }
    x.push_str("</alert>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_times_are_utc_without_fractions_and_text_is_escaped() {
        assert_eq!(
            cap_time(Timestamp(1_800_000_000_123)),
            "2027-01-15T08:00:00-00:00"
        );
        assert_eq!(xml_escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
        let doc = cap_document(
            &[
                json!({"sensor":"fl-x","name":"Sungai <Dumai>","kind":"flood_gauge","district":"Dumai Kota",
                     "lat":1.68,"lon":101.44,"warning":"Siaga","level":2,"level_label":"Siaga 2 (Siaga)",
                     "since":"2026-12-04T01:00:00Z"}),
            ],
            Timestamp(1_800_000_000_000),
        );
        assert!(doc.contains("<severity>Severe</severity>"), "{doc}");
        assert!(doc.contains("Sungai &lt;Dumai&gt;"), "{doc}");
        assert!(
            doc.contains("<onset>2026-12-04T01:00:00-00:00</onset>"),
            "{doc}"
        );
    }
}
