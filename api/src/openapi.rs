//! The OpenAPI 3.1 document, generated from the handlers' annotations
//! (utoipa), served at `/api/v1/openapi.json`, and a browsable docs page
//! (Scalar) at `/api/v1/docs`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_scalar::{Scalar, Servable};

use crate::AppState;

/// Every error answer: a stable code, a message, and for a bad parameter
/// its name.
#[derive(Debug, serde::Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `rate_limited` or `internal`.
    pub error: String,
    /// What went wrong.
    pub message: String,
    /// The offending parameter (`from`, `every`, `body`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// Seconds until a rate-limited client may retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

/// One field's points (schema of the ingest crate's `Series`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct SeriesDoc {
    /// Field name.
    field: String,
    /// Points, oldest first.
    points: Vec<PointDoc>,
}

/// One point: window start (or sample time) and value.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct PointDoc {
    /// Milliseconds since the Unix epoch.
    ts: i64,
    /// Value (booleans as 0/1).
    value: f64,
}

/// A sensor kind.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum KindDoc {
    FloodGauge,
    TideGauge,
    TrafficCounter,
    Metocean,
    Berth,
    GatewayHealth,
}

/// A kind of sensor that can be registered (gateway health is reported by
/// gateways themselves).
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum RegisteredKindDoc {
    FloodGauge,
    TideGauge,
    TrafficCounter,
    Metocean,
    Berth,
}

/// An aggregate per window.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum AggDoc {
    Mean,
    Min,
    Max,
    Last,
    Count,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "An agency token from `pantau token create --scopes ...`",
                        ))
                        .build(),
                ),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Pantau API",
        description = "Dumai's sensor telemetry: public live conditions, and agency (OPD) access to sensors, readings, gateways and live feeds behind scoped bearer tokens.",
    ),
    paths(
        crate::public::conditions,
        crate::public::sensors,
        crate::history::history,
        crate::public::live,
        crate::public::live_ws,
        crate::agency::sensors,
        crate::agency::sensor,
        crate::agency::readings,
        crate::agency::latest,
        crate::agency::gateways,
        crate::agency::live,
        crate::agency::live_ws,
        crate::broker_hooks::emqx_authn,
        crate::broker_hooks::emqx_authz,
        crate::broker_hooks::vernemq,
        crate::tokens::list,
        crate::tokens::create,
        crate::tokens::revoke,
        crate::admin::add_gateway,
        crate::admin::revoke_gateway,
        crate::admin::rotate_gateway,
        crate::admin::add_sensor,
        crate::admin::set_thresholds,
        crate::alerts::list,
        crate::alerts::get_one,
        crate::alerts::ack,
        crate::alerts::assign,
        crate::alerts::notes,
        crate::alerts::resolve,
        crate::alerts::live,
        crate::alerts::rules,
        crate::alerts::put_rule,
        crate::alerts::delete_rule,
        crate::alerts::add_webhook,
        crate::alerts::webhooks,
        crate::alerts::delete_webhook,
        crate::alerts::add_silence,
        crate::alerts::silences,
        crate::alerts::cancel_silence,
        crate::alerts::warnings,
        crate::alerts::warnings_cap,
        crate::rejected::list,
        crate::rejected::replay,
        crate::healthz,
        crate::readyz,
        crate::metrics,
        document,
    ),
    components(schemas(ErrorBody, SeriesDoc, PointDoc, KindDoc, AggDoc)),
    modifiers(&BearerAuth),
    tags(
        (name = "public", description = "Anonymous, curated, cached and rate limited"),
        (name = "agency", description = "Bearer token; answers limited to the token's scopes"),
        (name = "alerts", description = "Bearer token; alerts of the kinds the token reads; actions need `ack:<kind>`"),
        (name = "admin", description = "Bearer token with the admin scope"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "broker", description = "For an external broker cluster (EMQX HTTP auth, VerneMQ webhooks): the hook secret, not an agency token"),
    )
)]
pub(crate) struct ApiDoc;

/// This OpenAPI 3.1 document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The docs page, `/api/v1/docs`.
pub(crate) fn docs_page() -> axum::Router<AppState> {
    axum::Router::from(Scalar::with_url("/api/v1/docs", ApiDoc::openapi()))
}
