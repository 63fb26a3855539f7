//! RPC metrics: requests by route and status, latency by route; and the connections of
//! both HTTP servers (RPC and metrics): open, refused at a cap, closed for a late head.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

/// Which HTTP server: "rpc" or "metrics".
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

/// A server and the cap that refused a connection (`max_connections`,
/// `max_connections_per_ip`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub server: String,
    pub reason: String,
}

#[derive(Clone)]
pub struct RpcMetrics {
    pub requests: Family<RouteStatus, Counter>,
    pub latency: Family<RouteLabel, Histogram>,
    pub connections: Family<ServerLabel, Gauge>,
    pub connections_refused: Family<RefusedLabels, Counter>,
    pub connections_timed_out: Family<ServerLabel, Counter>,
}

impl RpcMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.5, 14))
            }),
            connections: Family::default(),
            connections_refused: Family::default(),
            connections_timed_out: Family::default(),
        };
        r.register(
            "tally_rpc_requests",
            "RPC requests by route and HTTP status",
            m.requests.clone(),
        );
        r.register(
            "tally_rpc_request_duration_seconds",
            "RPC request latency by route",
            m.latency.clone(),
        );
        r.register(
            "tally_http_connections",
            "Open HTTP connections by server (rpc, metrics)",
            m.connections.clone(),
        );
        r.register(
            "tally_http_connections_refused",
            "HTTP connections answered 503 and closed at accept because a connection cap was reached, by server and cap",
            m.connections_refused.clone(),
        );
        r.register(
            "tally_http_header_timeouts",
            "HTTP connections closed because no complete request head arrived within rpc.header_read_timeout_ms (slow clients, and idle kept-alive connections), by server",
            m.connections_timed_out.clone(),
        );
        m
    }
}
