//! The admin HTTP API (axum): health, readiness, metrics, status, explain, forced states,
//! drills, reload, and the live map.
//!
//! Read-only calls are open (bind the API to loopback or a private network); calls that change
//! what is served need `Authorization: Bearer <token>`. The token is compared in constant time
//! and never logged; without a configured token those calls are refused.
//!
//! No admin request may slow a DNS answer, and no client may drive the process out of memory
//! through it: the API runs on its own thread and runtime at a lower CPU priority ([`spawn`]),
//! heavy renders run on a bounded blocking pool, the map is capped and cached, connections are
//! limited and must send their request head within a timeout, bodies are limited in size and
//! time, and only IP-literal, `localhost` and configured `Host`s are answered ([`serve`]).

use std::net::{IpAddr, SocketAddr};
use std::ptr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, Request, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::control::{Control, ControlError, parse_duration};
use super::drill::DrillRequest;
use crate::geo::GeoPoint;
use crate::health::{ForceAction, ForceTarget, HealthSnapshot, MonitorState};
use crate::locate::Location;
use crate::routing::effective::{Viewer, force_for, precedence};
use crate::routing::{Client, Family, Method, Target};

/// Largest request body accepted (drill and force requests are tiny).
const BODY_LIMIT: usize = 64 * 1024;
/// A request body not received within this long is refused (408): a slow sender cannot hold
/// a connection slot and a buffer for longer.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest read buffer per connection, hence largest request head. hyper's default (~400 KB)
/// let 1,800 half-sent heads take ~550 MiB.
const MAX_BUF: usize = 16 * 1024;
/// CPU-heavy renders (status, metrics, explain, map) running at once, each on the admin
/// runtime's blocking pool. One more waits for a permit.
const HEAVY_AT_ONCE: usize = 2;
/// A heavy render that cannot start within this long is refused (503, with words).
const HEAVY_WAIT: Duration = Duration::from_secs(10);
/// Most routing decisions (grid cells × endpoints evaluated per cell) one `/api/map` request
/// may take; more is refused with 422 naming the smallest step that fits. A decision over a
/// large performance profile costs ~0.7–2.7 µs per endpoint in a release build here, so this
/// is about 1–2 s of one core: a 5,000-endpoint profile gets step ≥ 13, the bundled 3-endpoint
/// profile any step.
const MAX_MAP_WORK: u64 = 2_000_000;
/// Map renders kept (per profile and step), all of one state and health generation.
const MAP_CACHE_ENTRIES: usize = 8;
/// The live map page (no external resources).
const MAP_HTML: &str = include_str!("map.html");
/// How nice the admin threads are (Linux): under CPU contention the DNS workers (nice 0) get
/// about ten times their share.
const ADMIN_NICE: libc::c_int = 10;

type Shared = Arc<Control>;

/// What the admin server shares between its connections besides the control plane.
pub struct Admin {
    control: Shared,
    /// The runtime the control plane lives on (DNS workers, prober, drill timers): calls that
    /// change state run there, so their timers and spawned tasks (drill expiry) keep running
    /// and follow the clock they always did, whatever happens to the admin runtime.
    control_rt: Handle,
    /// Bounds the heavy renders running at once.
    heavy: Arc<Semaphore>,
    /// Map renders of the current state and health generation.
    map_cache: tokio::sync::Mutex<Vec<MapEntry>>,
    /// Per profile: answers per endpoint sampled while the map is watched, for the shares of
    /// recent queries (see [`query_shares`]).
    query_samples: std::sync::Mutex<std::collections::HashMap<usize, QuerySamples>>,
}

/// Answers per endpoint of one profile, sampled over time (one configuration generation: a
/// reload restarts the counters, and the samples).
#[derive(Default)]
struct QuerySamples {
    generation: u64,
    samples: std::collections::VecDeque<(std::time::Instant, Vec<u64>)>,
}

/// One cached `/api/map` body.
struct MapEntry {
    /// [`crate::state::State::generation`] it was computed from.
    state_generation: u64,
    /// The health snapshot it was computed from. A `Weak` keeps the allocation (so its
    /// address cannot be reused by a later snapshot: no ABA) without keeping the snapshot's
    /// contents alive.
    health: Weak<HealthSnapshot>,
    profile: usize,
    step_bits: u64,
    body: Bytes,
}

impl Admin {
    /// The admin server's shared parts; `control_rt` is the runtime of the control plane.
    pub fn new(control: Shared, control_rt: Handle) -> Arc<Self> {
        Arc::new(Self {
            control,
            control_rt,
            heavy: Arc::new(Semaphore::new(HEAVY_AT_ONCE)),
            map_cache: tokio::sync::Mutex::new(Vec::new()),
            query_samples: std::sync::Mutex::default(),
        })
    }
}

/// Builds the router.
///
/// Layers, outermost first: the `Host` check (DNS rebinding), the body read (size limit and
/// timeout), then per route: state-changing calls run on the control plane's runtime, heavy
/// renders on the admin runtime's blocking pool (bounded); `/healthz`, `/readyz` and the
/// small reads answer on the admin runtime's own thread and never wait behind a render.
pub fn router(admin: Arc<Admin>) -> Router {
    let heavy = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/explain", get(explain))
        .route("/api/map", get(map_data))
        .route_layer(middleware::from_fn_with_state(admin.clone(), offload));
    Router::new()
        .route("/", get(map_page))
        .route("/map", get(map_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/forced", get(forced))
        .route("/api/force", post(force))
        .route("/api/reload", post(reload))
        .route("/api/drills", get(drills).post(start_drill))
        .route("/api/fleet", get(fleet))
        .route("/api/demo", post(demo))
        .route("/api/drills/stop", post(stop_drills))
        .route_layer(middleware::from_fn_with_state(
            admin.clone(),
            on_control_runtime,
        ))
        .merge(heavy)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(read_body))
        .layer(middleware::from_fn_with_state(admin.clone(), check_host))
        .layer(Extension(admin.clone()))
        .with_state(admin.control.clone())
}

/// Starts the admin API on its own OS thread with its own single-threaded tokio runtime, so
/// no admin request — authenticated or not, however expensive — takes a DNS worker: 8
/// parallel `step=1` map requests on the DNS runtime raised UDP p50 from 0.15 ms to 187 ms.
/// The thread and its blocking pool run at a lower CPU priority than the DNS workers.
///
/// Must be called inside the control plane's runtime (its handle is captured). The returned
/// receiver completes when the server has stopped (after `stop`, open connections get
/// `grace` to finish).
pub fn spawn(
    listener: std::net::TcpListener,
    control: Shared,
    stop: CancellationToken,
    grace: Duration,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let control_rt = Handle::current();
    let (done, stopped) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("geosteer-admin".into())
        .spawn(move || {
            lower_priority();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("geosteer-admin-render")
                .max_blocking_threads(HEAVY_AT_ONCE + 1)
                .on_thread_start(lower_priority)
                .build();
            match rt {
                Ok(rt) => {
                    let admin = Admin::new(control, control_rt);
                    rt.block_on(serve(listener, admin, stop, grace));
                    rt.shutdown_timeout(grace);
                }
                Err(e) => warn!(error = %e, "cannot start the admin API's runtime"),
            }
            let _ = done.send(());
        })?;
    Ok(stopped)
}

/// Returns free heap pages to the OS (glibc keeps them otherwise).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator already considers free; it has no
    // preconditions and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Lowers the calling thread's CPU priority (Linux: nice is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take no pointers; on failure the thread just keeps
        // its priority.
        unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, ADMIN_NICE);
        }
    }
}

/// Serves the API on an already-bound listener until `stop`, then drains open connections
/// for up to `grace`.
///
/// At most `[admin] max_connections` connections are served at once; a connection beyond
/// that is closed at accept. A connection that has not sent a complete request head within
/// `[admin] header_timeout` (also an idle keep-alive connection) is closed by hyper, and its
/// read buffer never exceeds [`MAX_BUF`]: together they bound the memory any client can pin.
pub async fn serve(
    listener: std::net::TcpListener,
    admin: Arc<Admin>,
    stop: CancellationToken,
    grace: Duration,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "admin API stopped: cannot register its listener");
            return;
        }
    };
    let config = admin.control.config.load();
    let max = config.admin_max_connections;
    let header_timeout = config.admin_header_timeout;
    drop(config);
    let slots = Arc::new(Semaphore::new(max));
    let app = router(admin);
    let conns = TaskTracker::new();
    let mut refused: u64 = 0;
    let mut refused_logged = tokio::time::Instant::now();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    warn!(error = %e, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            refused += 1;
            if refused_logged.elapsed() >= Duration::from_secs(10) {
                warn!(
                    refused,
                    max_connections = max,
                    "admin API connections closed at accept: all slots in use ([admin] max_connections)"
                );
                refused = 0;
                refused_logged = tokio::time::Instant::now();
            }
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        let slots = slots.clone();
        conns.spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_BUF);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "admin API connection ended");
            }
            // The last open connection is closing: give the memory of the renders and
            // responses (megabytes each on large profiles) back to the OS, or glibc keeps it
            // (RSS stayed ~90 MiB higher after a flood on 5,000 endpoints).
            if slots.available_permits() + 1 == max {
                drop(tokio::task::spawn_blocking(trim_heap));
            }
        });
    }
    drop(listener);
    conns.close();
    if tokio::time::timeout(grace, conns.wait()).await.is_err() {
        warn!(
            ?grace,
            "admin API connections still open after the grace period"
        );
    }
}

/// Refuses a request whose `Host` is not an IP literal, `localhost` or a name in
/// `[admin] allowed_hosts` (421, with words): a web page whose name an attacker re-points
/// at 127.0.0.1 (DNS rebinding) must not read `/api/status` through the visitor's browser.
/// Browsers always send `Host`; a request without one (HTTP/1.0 tools) is served.
async fn check_host(AxState(admin): AxState<Arc<Admin>>, req: Request, next: Next) -> Response {
    let config = admin.control.config.load();
    let allowed = &config.admin_allowed_hosts;
    let mut hosts = req
        .headers()
        .get_all(header::HOST)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .chain(req.uri().authority().map(|a| a.as_str()));
    if let Some(bad) = hosts.find(|h| !host_allowed(h, allowed)) {
        let msg = format!(
            "Host {bad:?} is not served: the admin API answers only IP literals, localhost \
             and the names in [admin] allowed_hosts (protection against DNS rebinding)"
        );
        return error(StatusCode::MISDIRECTED_REQUEST, msg);
    }
    drop(config);
    next.run(req).await
}

/// Whether a `Host` value (with or without port) names this server acceptably.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port or [v6]
        match rest.split_once(']') {
            Some((ip, tail)) if tail.is_empty() || port_ok(tail.strip_prefix(':')) => {
                return ip.parse::<std::net::Ipv6Addr>().is_ok();
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) if port_ok(Some(p)) => n,
            Some(_) => return false,
            None => host,
        }
    };
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || allowed.contains(&name)
}

fn port_ok(p: Option<&str>) -> bool {
    p.is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Reads the whole request body, at most [`BODY_LIMIT`] bytes within [`BODY_TIMEOUT`],
/// before anything else runs: a slow or oversized body is refused with words instead of
/// holding a handler (and, for state-changing calls, a task on the control plane's runtime).
async fn read_body(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {} KiB", BODY_LIMIT / 1024),
        );
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body larger than {} KiB, or cut off: {e}",
                BODY_LIMIT / 1024
            ),
        ),
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// Runs state-changing calls (POST) on the control plane's runtime; reads stay here.
async fn on_control_runtime(
    AxState(admin): AxState<Arc<Admin>>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != axum::http::Method::POST {
        return next.run(req).await;
    }
    match admin.control_rt.spawn(next.run(req)).await {
        Ok(resp) => resp,
        Err(e) if e.is_panic() => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the call failed unexpectedly (see the log)",
        ),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

/// Runs a heavy render on the admin runtime's blocking pool, at most [`HEAVY_AT_ONCE`] at a
/// time: the admin thread itself stays free to answer `/healthz` (the liveness probe) while
/// renders run, and a flood of renders queues here (503 after [`HEAVY_WAIT`]) instead of
/// taking more CPU.
async fn offload(AxState(admin): AxState<Arc<Admin>>, req: Request, next: Next) -> Response {
    let permit = match tokio::time::timeout(HEAVY_WAIT, admin.heavy.clone().acquire_owned()).await {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "busy: {HEAVY_AT_ONCE} status/metrics/explain/map renders running and \
                     this one waited {} s; retry later",
                    HEAVY_WAIT.as_secs()
                ),
            );
        }
    };
    let here = Handle::current();
    let render = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        // Not an async context: this thread drives the handler to completion; the admin
        // thread keeps the timers and sockets going.
        here.block_on(next.run(req))
    });
    match render.await {
        Ok(resp) => resp,
        Err(e) if e.is_panic() => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the render failed unexpectedly (see the log)",
        ),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
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
    if health.status.first_round_done {
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
    let mut body = c.metrics.render(&c.state.load(), &c.health.load());
    crate::ops::fleet::render_metrics(c.fleet().map(|f| &**f), &mut body);
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
    /// Fleet mode: every instance's vote on this endpoint, this instance's first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    votes: Vec<crate::health::votes::Vote>,
    /// Fleet mode: the quorum rule's verdict (what routing uses), when votes are in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet_up: Option<bool>,
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
                    let d = health.status.details.get(&e.key);
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
                        votes: d.map(|d| d.votes.clone()).unwrap_or_default(),
                        fleet_up: d.and_then(|d| d.fleet_up),
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
        "ready": health.status.first_round_done,
        "reload": reload,
        "zones": st.zones.iter().map(|z| z.origin.to_string()).collect::<Vec<_>>(),
        "profiles": profiles,
        "failed_open": health.status.failed_open,
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

/// Grid cells for a step (as the loops in [`render_map`] walk them).
fn map_cells(step: f64) -> u64 {
    ((180.0 / step).ceil() as u64) * ((360.0 / step).ceil() as u64)
}

/// Endpoints one decision of profile `pi` looks at: its own, and those of profiles it nests.
fn map_endpoints(table: &crate::routing::RoutingTable, pi: usize) -> u64 {
    let p = &table.profiles[pi];
    let nested: usize = p
        .endpoints
        .iter()
        .filter_map(|e| match e.target {
            Target::Nested(i) => table.profiles.get(i).map(|c| c.endpoints.len()),
            _ => None,
        })
        .sum();
    (p.endpoints.len() + nested).max(1) as u64
}

/// The routing decision over a lat/lon grid, evaluated through the real model and health.
///
/// Bounded and shared: a grid over [`MAX_MAP_WORK`] decisions is refused (422, naming the
/// smallest step that fits), and a render is cached per state generation, health snapshot,
/// profile and step, so a flood of identical requests computes it once (the lock also makes
/// concurrent identical requests wait for the first instead of each computing it).
async fn map_data(
    AxState(c): AxState<Shared>,
    Extension(admin): Extension<Arc<Admin>>,
    Query(q): Query<MapQuery>,
) -> Response {
    let state = c.state.load_full();
    let health = c.health.load_full();
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
    let step = q.step.unwrap_or(5.0);
    let step = if step.is_finite() {
        step.clamp(1.0, 30.0)
    } else {
        5.0
    };
    let endpoints = map_endpoints(table, pi);
    let work = map_cells(step).saturating_mul(endpoints);
    if work > MAX_MAP_WORK {
        let fits = (2..=60)
            .map(|h| f64::from(h) / 2.0)
            .find(|s| map_cells(*s).saturating_mul(endpoints) <= MAX_MAP_WORK);
        let hint = match fits {
            Some(s) => format!("use step={s} or more"),
            None => "this profile is too large for the map".to_string(),
        };
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "a map of profile {} ({endpoints} endpoints) at step={step} takes {work} \
                 routing decisions, more than the {MAX_MAP_WORK} one request may: {hint}",
                table.profiles[pi].owner
            ),
        );
    }
    let mut cache = admin.map_cache.lock().await;
    let generation = state.generation;
    let is_current =
        |e: &MapEntry| e.state_generation == generation && ptr::eq(e.health.as_ptr(), &*health);
    cache.retain(is_current);
    let body = match cache
        .iter()
        .find(|e| e.profile == pi && e.step_bits == step.to_bits())
    {
        Some(e) => e.body.clone(),
        None => {
            let body = Bytes::from(render_map(&state, &health, pi, step).to_string());
            if cache.len() >= MAP_CACHE_ENTRIES {
                cache.remove(0);
            }
            cache.push(MapEntry {
                state_generation: generation,
                health: Arc::downgrade(&health),
                profile: pi,
                step_bits: step.to_bits(),
                body: body.clone(),
            });
            body
        }
    };
    drop(cache);
    // The grid is cached per state and health generation; the shares of recent queries change
    // with every query, so they are added to the cached body here, fresh.
    let queries = query_shares(&admin, &state, pi);
    let mut out = Vec::with_capacity(body.len() + 256);
    match body.strip_suffix(b"}") {
        Some(head) => {
            out.extend_from_slice(head);
            out.extend_from_slice(b",\"queries\":");
            out.extend_from_slice(queries.to_string().as_bytes());
            out.push(b'}');
        }
        None => out.extend_from_slice(&body),
    }
    ([(header::CONTENT_TYPE, "application/json")], out).into_response()
}

/// How long back "recent queries" reaches on the map.
const QUERY_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);
/// Sampling interval of the answers per endpoint while the map is watched.
const QUERY_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// GeoIP networks the map decides at most (an even sample of bigger databases).
const MAP_NETWORK_SAMPLE: usize = 50_000;

/// Answers per endpoint of profile `pi` over the last [`QUERY_WINDOW`] — from the oldest
/// sample taken while the map was watched, or since the configuration loaded when there is
/// none yet — with the window it covers.
fn query_shares(admin: &Admin, state: &crate::state::State, pi: usize) -> serde_json::Value {
    let now = std::time::Instant::now();
    let counts: Vec<u64> = state.routing.profiles[pi]
        .endpoints
        .iter()
        .map(|e| e.answers.get())
        .collect();
    let mut all = admin
        .query_samples
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let q = all.entry(pi).or_default();
    if q.generation != state.generation {
        *q = QuerySamples {
            generation: state.generation,
            ..Default::default()
        };
    }
    while q
        .samples
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > QUERY_WINDOW)
    {
        q.samples.pop_front();
    }
    let (since_s, base) = match q.samples.front() {
        Some((t, c)) => (Some(now.duration_since(*t).as_secs_f64()), c.clone()),
        None => (None, vec![0; counts.len()]),
    };
    if q.samples
        .back()
        .is_none_or(|(t, _)| now.duration_since(*t) >= QUERY_SAMPLE_EVERY)
    {
        q.samples.push_back((now, counts.clone()));
    }
    let recent: Vec<u64> = counts
        .iter()
        .zip(base.iter().chain(std::iter::repeat(&0)))
        .map(|(c, b)| c.saturating_sub(*b))
        .collect();
    json!({
        "counts": recent,
        "total": recent.iter().sum::<u64>(),
        // Seconds the counts cover; null = since the configuration was loaded.
        "window_s": since_s,
    })
}

/// The map's JSON for profile `pi` at `step` degrees (the caller bounds the work).
fn render_map(
    state: &crate::state::State,
    health: &HealthSnapshot,
    pi: usize,
    step: f64,
) -> serde_json::Value {
    let table = &state.routing;
    let p = &table.profiles[pi];
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
            let sel = table.select(pi, Family::V4, &client, health, None);
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
    // Shares of GeoIP networks (where no queries are seen yet): which endpoint each network
    // of the City database is answered, every network or an even sample of them.
    let mut by_network = vec![0u64; p.endpoints.len()];
    let mut networks = 0u64;
    let stride = state.locator.sample_networks(MAP_NETWORK_SAMPLE, |addr| {
        let client = Client {
            loc: state.locator.locate(addr, table.wants_subdivision),
            ecs_source: None,
        };
        networks += 1;
        let sel = table.select(pi, Family::V4, &client, health, None);
        if let Some(i) = sel
            .chosen
            .first()
            .and_then(|k| p.endpoints.iter().position(|e| &*e.key == *k))
        {
            by_network[i] += 1;
        }
    });
    // Fail-open: every endpoint Degraded, all served anyway — shown as served, and why.
    let failed_open = table.fails_open(pi, health);
    let endpoints: Vec<_> = p
        .endpoints
        .iter()
        .map(|e| {
            let h = health.get(&e.key);
            let state = table.effective_state(e, health, Viewer::Everyone);
            let by_fail_open = failed_open && state == MonitorState::Degraded;
            json!({
                "name": e.name,
                "region": e.region,
                "location": e.point,
                "state": state,
                "served": state.serves() || by_fail_open,
                "fail_open": by_fail_open,
                "rtt_ms": h.rtt_ms,
                // Fleet mode: who says what (empty standalone).
                "votes": health
                    .status
                    .details
                    .get(&e.key)
                    .map(|d| d.votes.clone())
                    .unwrap_or_default(),
            })
        })
        .collect();
    let profiles: Vec<String> = table.profiles.iter().map(|p| p.owner.to_string()).collect();
    json!({
        "profile": p.owner.to_string(),
        "profiles": profiles,
        "step": step,
        "failed_open": failed_open,
        "endpoints": endpoints,
        "grid": grid,
        "networks": { "counts": by_network, "total": networks, "sampled_every": stride },
    })
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

/// A state-changing call's JSON body, read only once the caller is authenticated; else the
/// response to send (401, or 400 for a body that does not parse).
fn authorized_body<T: serde::de::DeserializeOwned>(
    control: &Control,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Box<Response>> {
    if let Some(resp) = unauthorized(control, headers) {
        return Err(Box::new(resp));
    }
    parse_body(body)
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
    let r: ForceRequest = match authorized_body(&c, &headers, &body) {
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
    Json(c.drills_view()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoRequest {
    endpoint: String,
    up: bool,
}

/// `[demo]` endpoints: take one down (its probes are refused, answers move) or up again.
async fn demo(
    AxState(c): AxState<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req: DemoRequest = match authorized_body(&c, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match c.set_demo(&req.endpoint, req.up) {
        Ok(addr) => {
            Json(json!({ "endpoint": req.endpoint, "up": req.up, "listen": addr.to_string() }))
                .into_response()
        }
        Err(e) => control_error(&e),
    }
}

/// The fleet: instances, their configuration digests and sample answers, and this instance's
/// link to etcd. Standalone: 404 with words (there is no fleet to show).
async fn fleet(AxState(c): AxState<Shared>) -> Response {
    match c.fleet() {
        Some(f) => Json(f.view()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "ok": false, "error": "standalone: no [cluster] configured, so there is no fleet" })),
        )
            .into_response(),
    }
}

async fn start_drill(
    AxState(c): AxState<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req: DrillRequest = match authorized_body(&c, &headers, &body) {
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
    match c.stop_drills(req.id.as_deref()).await {
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
    use super::{ct_eq, host_allowed};

    #[test]
    fn host_check_accepts_ip_literals_localhost_and_listed_names_only() {
        let listed = vec!["admin.example.net".to_string()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8053",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:8053",
            "[2001:db8::1]:8053",
            "localhost",
            "LOCALHOST:8053",
            "localhost.",
            "admin.example.net",
            "Admin.Example.Net.:443",
        ] {
            assert!(host_allowed(ok, &listed), "{ok}");
        }
        for bad in [
            "attacker.com",
            "attacker.com:8053",
            "localhost.attacker.com",
            "127.0.0.1.nip.io",
            "admin.example.net.attacker.com",
            "[::1]x",
            "[::1]:",
            "[attacker.com]:80",
            "127.0.0.1:80:80",
            "localhost:port",
            "",
        ] {
            assert!(!host_allowed(bad, &listed), "{bad}");
        }
    }

    #[test]
    fn constant_time_compare_is_equality() {
        assert!(ct_eq(b"secret-token-123", b"secret-token-123"));
        assert!(!ct_eq(b"secret-token-124", b"secret-token-123"));
        assert!(!ct_eq(b"secret", b"secret-token-123"));
        assert!(!ct_eq(b"", b"x"));
    }
}
