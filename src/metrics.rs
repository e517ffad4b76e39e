//! `GET /metrics`: the figures an operator graphs and alerts on, in the OpenMetrics text format
//! (which Prometheus scrapes).
//!
//! Request counters and latencies are fed by [`record_requests`], a layer of the stack; every
//! other figure (sessions, statements and batches by state, driver connections, RPC
//! authentication failures, security events, lost audit events) is read from its owner at
//! scrape time, so it can never drift from what the API shows. Scraping needs the `[admin]`
//! right (see policies/README.md): the figures describe every user's work.

use crate::api::AppState;
use crate::audit_slots::RouteSlot;
use crate::engine::state::{SessionState, StatementState};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::time::Instant;

/// The OpenMetrics media type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
    decision: String,
}

type DurationFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The gateway's counters (one per gateway, shared by the stack and the `/metrics` handler).
#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    durations: DurationFamily,
    /// Handles to the series already created, by route pattern: a request finds its counter
    /// and histogram with one read lock and no allocation (the families' own lookups need
    /// owned label strings).
    seen: std::sync::RwLock<std::collections::HashMap<String, RouteSeries>>,
}

/// One route's series: a counter per (method, status) and a histogram per method.
#[derive(Debug, Default)]
struct RouteSeries {
    counts: Vec<(&'static str, u16, Counter)>,
    durations: Vec<(&'static str, Histogram)>,
}

impl RouteSeries {
    fn find(&self, method: &'static str, status: u16) -> Option<(&Counter, &Histogram)> {
        let count = self.counts.iter().find(|(m, s, _)| *m == method && *s == status).map(|(_, _, c)| c)?;
        let duration = self.durations.iter().find(|(m, _)| *m == method).map(|(_, h)| h)?;
        Some((count, duration))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms … about 33 s, doubling: statement polls sit at the bottom, uploads at the top.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    /// Empty counters.
    pub fn new() -> Self {
        Self {
            requests: Family::default(),
            durations: Family::new_with_constructor(latency_histogram),
            seen: std::sync::RwLock::default(),
        }
    }

    /// Counts one answered request. `route` is the route's pattern (`/sessions/{id}`), never a
    /// raw path, and unknown methods are folded into `other`, so clients cannot make the
    /// label sets grow without bound.
    pub fn observe(&self, method: &Method, route: &str, status: u16, seconds: f64) {
        let method = method_label(method);
        {
            let seen = self.seen.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((count, duration)) = seen.get(route).and_then(|series| series.find(method, status)) {
                count.inc();
                duration.observe(seconds);
                return;
            }
        }
        // A series seen for the first time: created in the families, its handles kept.
        let count = self
            .requests
            .get_or_create(&RequestLabels { method: method.into(), route: route.into(), status: status.to_string() })
            .clone();
        let duration =
            self.durations.get_or_create(&RouteLabels { method: method.into(), route: route.into() }).clone();
        count.inc();
        duration.observe(seconds);
        let mut seen = self.seen.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let series = seen.entry(route.to_string()).or_default();
        if !series.counts.iter().any(|(m, s, _)| *m == method && *s == status) {
            series.counts.push((method, status, count));
        }
        if !series.durations.iter().any(|(m, _)| *m == method) {
            series.durations.push((method, duration));
        }
    }

    /// The whole exposition, as of now.
    pub fn render(&self, state: &AppState) -> String {
        let mut registry = Registry::with_prefix("sparkgate");
        self.register_requests(&mut registry);
        register_engine(&mut registry, state);
        encode(&registry)
    }

    fn register_requests(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route pattern and status",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its response, by method and route pattern",
            Unit::Seconds,
            self.durations.clone(),
        );
    }
}

/// The engine's and the audit trail's figures, read now.
fn register_engine(registry: &mut Registry, state: &AppState) {
    let sessions = state.manager.list();
    let session_states = by_state(sessions.iter().map(|s| s.state()));
    registry.register("sessions", "Interactive sessions the gateway holds, by state", session_states);
    let mut statement_counts: BTreeMap<StatementState, usize> = BTreeMap::new();
    for session in &sessions {
        for (state, n) in session.statement_state_counts() {
            *statement_counts.entry(state).or_insert(0) += n;
        }
    }
    let statements: Family<StateLabels, Gauge> = Family::default();
    for state in StatementState::ALL {
        let n = statement_counts.get(&state).copied().unwrap_or(0);
        statements.get_or_create(&StateLabels { state: state.as_str().into() }).set(gauge_value(n));
    }
    registry.register("statements", "Statements retained in live sessions, by state", statements);
    let connected = Gauge::<i64>::default();
    connected.set(gauge_value(sessions.iter().filter(|s| s.driver_connected()).count()));
    registry.register("drivers_connected", "Sessions whose driver is connected and authenticated", connected);

    let warm = by_state(state.manager.warm_drivers().iter().map(|s| s.state()));
    registry.register("warm_drivers", "Warm drivers started ahead and not claimed yet, by state", warm);

    let batches = by_state(state.batches.list().iter().map(|b| b.state()));
    registry.register("batches", "Batches the gateway holds, by state", batches);

    let rpc_failures = Counter::<u64>::default();
    rpc_failures.inc_by(state.manager.rpc_auth_failures());
    registry.register(
        "rpc_auth_failures",
        "Driver connections refused by the RPC handshake (wrong secret, replay, bad frames)",
        rpc_failures,
    );
    let events: Family<EventLabels, Counter> = Family::default();
    for ((event, decision), n) in state.audit.security_event_counts() {
        events.get_or_create(&EventLabels { event, decision: decision.into() }).inc_by(n);
    }
    registry.register(
        "security_events",
        "Security events recorded, by event and decision (repeats the audit trail summarises count one each)",
        events,
    );
    let lost = Counter::<u64>::default();
    lost.inc_by(state.audit.lost_events());
    registry.register("audit_lost_events", "Audit events lost because the writer fell behind", lost);
}

fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// A gauge family with every session state present (zero or not), so dashboards and alerts
/// do not see series appear and vanish.
fn by_state(states: impl Iterator<Item = SessionState>) -> Family<StateLabels, Gauge> {
    let mut counts: BTreeMap<&'static str, usize> = SessionState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for state in states {
        *counts.entry(state.as_str()).or_insert(0) += 1;
    }
    let family: Family<StateLabels, Gauge> = Family::default();
    for (state, n) in counts {
        family.get_or_create(&StateLabels { state: state.into() }).set(gauge_value(n));
    }
    family
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Stack layer: counts every answered request with its route pattern (from the router's
/// [`MatchedPath`], which `audit::expose_matched_path` writes into the request's
/// [`RouteSlot`]) or `unmatched` for paths no route knows.
pub async fn record_requests(State(metrics): State<Arc<Metrics>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let slot = RouteSlot::attach(&mut request);
    let response = next.run(request).await;
    let route = match &matched {
        Some(path) => path.as_str(),
        None => slot.get().map_or("unmatched", |r| r.0.as_str()),
    };
    metrics.observe(&method, route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// The `GET /metrics` response (the `[admin]` right is checked by the handler in `api`).
pub fn exposition(state: &AppState) -> Response {
    let mut response = state.metrics.render(state).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

#[cfg(test)]
mod tests;
