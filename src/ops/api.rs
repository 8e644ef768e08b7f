//! The admin HTTP API (axum): health, readiness, metrics, status, explain, forced states,
//! drills, reload, and the live map.
//!
//! Read-only calls are open (bind the API to loopback or a private network); calls that change
//! what is served need `Authorization: Bearer <token>`. The token is compared in constant time
//! and never logged; without a configured token those calls are refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::control::{Control, ControlError, parse_duration};
use super::drill::DrillRequest;
use crate::geo::GeoPoint;
use crate::health::{ForceAction, ForceTarget, MonitorState};
use crate::locate::Location;
use crate::routing::effective::{Viewer, force_for, precedence};
use crate::routing::{Client, Family, Method, Target};

/// Largest request body accepted (drill and force requests are tiny).
const BODY_LIMIT: usize = 64 * 1024;
/// The live map page (no external resources).
const MAP_HTML: &str = include_str!("map.html");

type Shared = Arc<Control>;

/// Builds the router.
pub fn router(control: Shared) -> Router {
    Router::new()
        .route("/", get(map_page))
        .route("/map", get(map_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/explain", get(explain))
        .route("/api/map", get(map_data))
        .route("/api/forced", get(forced))
        .route("/api/force", post(force))
        .route("/api/reload", post(reload))
        .route("/api/drills", get(drills).post(start_drill))
        .route("/api/drills/stop", post(stop_drills))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(control)
}

/// Serves the API on an already-bound listener until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Shared,
    shutdown: CancellationToken,
) {
    let app = router(control);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        warn!(error = %e, "admin API stopped");
    }
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

/// Constant-time equality: the time taken does not depend on where the strings differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

/// `Some(rejection)` unless the request carries the configured bearer token.
fn unauthorized(control: &Control, headers: &HeaderMap) -> Option<Response> {
    let config = control.config.load();
    let Some(token) = config.admin_token.as_deref() else {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "no admin token is configured ([admin] token or token_file); state-changing calls are disabled",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if ct_eq(given.as_bytes(), token.as_bytes()) {
        None
    } else {
        Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ))
    }
}

async fn map_page() -> Html<&'static str> {
    Html(MAP_HTML)
}

async fn readyz(AxState(c): AxState<Shared>) -> Response {
    let health = c.health.load();
    if health.first_round_done {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first probe round\n",
        )
            .into_response()
    }
}

async fn metrics(AxState(c): AxState<Shared>) -> Response {
    let body = c.metrics.render(&c.state.load(), &c.health.load());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[derive(Serialize)]
struct EndpointView {
    name: String,
    key: String,
    region: Option<String>,
    location: Option<GeoPoint>,
    targets: Vec<String>,
    enabled: bool,
    state: MonitorState,
    forced: Option<crate::health::Force>,
    rtt_ms: Option<f64>,
    since_unix: Option<f64>,
    reason: Option<String>,
    last_error: Option<String>,
    last_stages: Vec<(String, f64)>,
    probes_ok: u64,
    probes_failed: u64,
    protocol: String,
    answers: u64,
    connections: Option<f64>,
    capacity: Option<f64>,
    load: Option<f64>,
    load_error: Option<String>,
    recovery_ramp: f64,
    cert_not_after_unix: Option<i64>,
}

#[derive(Serialize)]
struct ProfileView {
    name: String,
    method: Method,
    ttl: u32,
    queries: u64,
    endpoints: Vec<EndpointView>,
}

fn targets(t: &Target, profiles: &[crate::routing::Profile]) -> Vec<String> {
    match t {
        Target::Addrs { a, aaaa } => a.iter().chain(aaaa).map(|r| r.data.to_string()).collect(),
        Target::Cname(r) => vec![r.data.to_string()],
        Target::Nested(i) => vec![format!("profile {}", profiles[*i].owner)],
    }
}

async fn status(AxState(c): AxState<Shared>) -> Response {
    let st = c.state.load();
    let health = c.health.load();
    let profiles: Vec<ProfileView> = st
        .routing
        .profiles
        .iter()
        .map(|p| ProfileView {
            name: p.owner.to_string(),
            method: p.method,
            ttl: p.ttl,
            queries: p.queries.get(),
            endpoints: p
                .endpoints
                .iter()
                .map(|e| {
                    let h = health.get(&e.key);
                    let d = health.details.get(&e.key);
                    let state = st.routing.effective_state(e, &health, Viewer::Everyone);
                    EndpointView {
                        name: e.name.clone(),
                        key: e.key.to_string(),
                        region: e.region.clone(),
                        location: e.point,
                        targets: targets(&e.target, &st.routing.profiles),
                        enabled: e.enabled,
                        state,
                        // The force that decides the state for everyone, else the strongest
                        // scoped one (precedence: routing::effective).
                        forced: force_for(h, Viewer::Everyone)
                            .or_else(|| {
                                h.forced
                                    .iter()
                                    .min_by_key(|(o, _)| precedence(*o))
                                    .map(|(_, f)| &**f)
                            })
                            .cloned(),
                        rtt_ms: h.rtt_ms,
                        since_unix: d.map(|d| d.since_unix),
                        reason: d.map(|d| d.reason.clone()),
                        last_error: d.and_then(|d| d.last_error.clone()),
                        last_stages: d.map(|d| d.last_stages.clone()).unwrap_or_default(),
                        probes_ok: d.map_or(0, |d| d.probes_ok),
                        probes_failed: d.map_or(0, |d| d.probes_failed),
                        protocol: d.map_or_else(|| "-".into(), |d| d.protocol.clone()),
                        answers: e.answers.get(),
                        connections: d.and_then(|d| d.connections),
                        capacity: d.and_then(|d| d.capacity),
                        load: h.load,
                        load_error: d.and_then(|d| d.load_error.clone()),
                        recovery_ramp: h.ramp,
                        cert_not_after_unix: d.and_then(|d| d.cert_not_after_unix),
                    }
                })
                .collect(),
        })
        .collect();
    let reload = c
        .reload_status
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ready": health.first_round_done,
        "reload": reload,
        "zones": st.zones.iter().map(|z| z.origin.to_string()).collect::<Vec<_>>(),
        "profiles": profiles,
        "failed_open": health.failed_open,
        "forced": c.forced(),
        "drills": c.drills(),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct ExplainQuery {
    name: String,
    client: Option<IpAddr>,
    ecs: Option<IpNet>,
    #[serde(rename = "type")]
    qtype: Option<String>,
}

async fn explain(AxState(c): AxState<Shared>, Query(q): Query<ExplainQuery>) -> Response {
    let family = match q.qtype.as_deref() {
        Some("AAAA") => Family::V6,
        Some("CNAME") => Family::Any,
        _ => Family::V4,
    };
    let client = q.client.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    match crate::explain::explain(
        &c.state.load(),
        &c.health.load(),
        &q.name,
        family,
        client,
        q.ecs,
    ) {
        Ok(report) => Json(json!({ "report": report, "text": report.to_string() })).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

#[derive(Deserialize)]
struct MapQuery {
    profile: Option<String>,
    step: Option<f64>,
}

/// The routing decision over a lat/lon grid, evaluated through the real model and health.
async fn map_data(AxState(c): AxState<Shared>, Query(q): Query<MapQuery>) -> Response {
    let state = c.state.load();
    let health = c.health.load();
    let table = &state.routing;
    let pick = match &q.profile {
        Some(name) => table.find_profile(name),
        None => table
            .profiles
            .iter()
            .position(|p| p.method == Method::Performance),
    };
    let Some(pi) = pick else {
        return error(
            StatusCode::NOT_FOUND,
            "no such profile (or no performance profile)",
        );
    };
    let p = &table.profiles[pi];
    let step = q.step.unwrap_or(5.0).clamp(1.0, 30.0);
    let mut grid = Vec::new();
    let mut lat = 90.0 - step / 2.0;
    while lat > -90.0 {
        let mut row = Vec::new();
        let mut lon = -180.0 + step / 2.0;
        while lon < 180.0 {
            let client = Client {
                loc: Location {
                    point: Some(GeoPoint { lat, lon }),
                    ..Default::default()
                },
                ecs_source: None,
            };
            let sel = table.select(pi, Family::V4, &client, &health, None);
            let first = sel
                .chosen
                .first()
                .and_then(|k| p.endpoints.iter().position(|e| &*e.key == *k));
            row.push(first.map_or(-1, |i| i as i64));
            lon += step;
        }
        grid.push(row);
        lat -= step;
    }
    // Fail-open: every endpoint Degraded, all served anyway — shown as served, and why.
    let failed_open = table.fails_open(pi, &health);
    let endpoints: Vec<_> = p
        .endpoints
        .iter()
        .map(|e| {
            let h = health.get(&e.key);
            let state = table.effective_state(e, &health, Viewer::Everyone);
            let by_fail_open = failed_open && state == MonitorState::Degraded;
            json!({
                "name": e.name,
                "region": e.region,
                "location": e.point,
                "state": state,
                "served": state.serves() || by_fail_open,
                "fail_open": by_fail_open,
                "rtt_ms": h.rtt_ms,
            })
        })
        .collect();
    let profiles: Vec<String> = table.profiles.iter().map(|p| p.owner.to_string()).collect();
    Json(json!({
        "profile": p.owner.to_string(),
        "profiles": profiles,
        "step": step,
        "failed_open": failed_open,
        "endpoints": endpoints,
        "grid": grid,
    }))
    .into_response()
}

async fn forced(AxState(c): AxState<Shared>) -> Response {
    Json(c.forced()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceRequest {
    /// Endpoint key (`owner/name`), or `profile` + `endpoint_name`, or `region`.
    endpoint: Option<String>,
    profile: Option<String>,
    endpoint_name: Option<String>,
    region: Option<String>,
    /// down | up | probe (probe = lift the force)
    action: String,
    #[serde(default)]
    reason: String,
    duration: Option<String>,
    #[serde(default)]
    scope: Vec<IpNet>,
}

/// Parses a JSON body *after* authentication, so unauthenticated callers learn nothing.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("bad request body: {e}"),
        ))
    })
}

async fn force(
    AxState(c): AxState<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(resp) = unauthorized(&c, &headers) {
        return resp;
    }
    let r: ForceRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let target = match (&r.endpoint, &r.profile, &r.endpoint_name, &r.region) {
        // Any form the CLI accepts: owner with or without its dot, or first label; in words.
        (Some(k), None, None, None) => match c.endpoint_ref(k) {
            Ok(key) => ForceTarget::Endpoint(key),
            Err(e) => return control_error(&e),
        },
        (None, Some(p), Some(e), None) => match c.endpoint_key(p, e) {
            Ok((_, key)) => ForceTarget::Endpoint(key),
            Err(e) => return control_error(&e),
        },
        (None, None, None, Some(reg)) => ForceTarget::Region(reg.clone()),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give endpoint (key), or profile + endpoint_name, or region",
            );
        }
    };
    let action = match r.action.as_str() {
        "down" => Some(ForceAction::Down),
        "up" => Some(ForceAction::Up),
        "probe" => None,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("action {other:?}: down, up or probe"),
            );
        }
    };
    let duration = match r.duration.as_deref().map(parse_duration).transpose() {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let reason = if r.reason.is_empty() {
        "forced via admin API".to_string()
    } else {
        r.reason.clone()
    };
    match c.force(target, action, reason, duration, r.scope).await {
        Ok(list) => Json(list).into_response(),
        // NotSaved (500): not stored, so not applied — the caller must not believe the force
        // is in place.
        Err(e) => control_error(&e),
    }
}

async fn reload(
    AxState(c): AxState<Shared>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if let Some(resp) = unauthorized(&c, &headers) {
        return resp;
    }
    // `?allow_removal=true`: the explicit ask for a reload that removes every zone or every
    // profile (refused otherwise).
    let allow_removal = match query.as_deref().unwrap_or("") {
        "" | "allow_removal=false" | "allow_removal=0" => false,
        "allow_removal" | "allow_removal=true" | "allow_removal=1" => true,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown query {other:?}: the only parameter is allow_removal=true"),
            );
        }
    };
    match c.reload_with("admin API", allow_removal).await {
        Ok(generation) => Json(json!({ "ok": true, "generation": generation })).into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "ok": false, "error": e })),
        )
            .into_response(),
    }
}

async fn drills(AxState(c): AxState<Shared>) -> Response {
    Json(c.drills()).into_response()
}

async fn start_drill(
    AxState(c): AxState<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(resp) = unauthorized(&c, &headers) {
        return resp;
    }
    let req: DrillRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match c.start_drill(req).await {
        Ok(record) => {
            info!(drill = %record.id, "drill via admin API");
            Json(json!({ "record": record, "text": record.to_string() })).into_response()
        }
        Err(e) => control_error(&e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StopRequest {
    id: Option<String>,
}

async fn stop_drills(
    AxState(c): AxState<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(resp) = unauthorized(&c, &headers) {
        return resp;
    }
    let req: StopRequest = if body.is_empty() {
        StopRequest::default()
    } else {
        match parse_body(&body) {
            Ok(r) => r,
            Err(resp) => return *resp,
        }
    };
    match c.stop_drills(req.id.as_deref()) {
        Ok(n) => Json(json!({ "stopped": n })).into_response(),
        Err(e) => control_error(&e),
    }
}

/// The response for a control-plane error: its kind's status, the message in words.
fn control_error(e: &ControlError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, e.to_string())
}

/// Binds the admin listener (before serving, so a bind error exits cleanly).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::ct_eq;

    #[test]
    fn constant_time_compare_is_equality() {
        assert!(ct_eq(b"secret-token-123", b"secret-token-123"));
        assert!(!ct_eq(b"secret-token-124", b"secret-token-123"));
        assert!(!ct_eq(b"secret", b"secret-token-123"));
        assert!(!ct_eq(b"", b"x"));
    }
}
