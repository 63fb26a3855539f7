//! RPC metrics: requests by route and status, latency by route.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

#[derive(Clone)]
pub struct RpcMetrics {
    pub requests: Family<RouteStatus, Counter>,
    pub latency: Family<RouteLabel, Histogram>,
}

impl RpcMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.5, 14))
            }),
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
        m
    }
}
