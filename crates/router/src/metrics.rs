//! Prometheus metrics of a router, served as text on `GET /metrics` at `--metrics-listen`
//! (plain HTTP/1.1 on its own port).
//!
//! `leakbloom_router_requests_total{rpc,code}` and `leakbloom_router_request_seconds{rpc}`
//! (every `Lookup` call, by gRPC code), `leakbloom_router_keys_checked_total` /
//! `leakbloom_router_keys_inserted_total` (keys of successful calls),
//! `leakbloom_router_node_failures_total{node,code}` (failed calls to nodes, retried or not),
//! `leakbloom_router_retries_total` (retry rounds), `leakbloom_router_hedges_total`
//! (any-replica check parts sent to a second replica because the first had not answered
//! within the hedge delay), `leakbloom_router_shard_map_refreshes_total` and
//! `leakbloom_router_nodes_up` (nodes that answered the last refresh). Labels are rpc names,
//! codes and node ids: never keys or identifiers.

use std::sync::Arc;

use leakbloom_metrics::{code_label, register, Requests};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::net::TcpListener;

use leakbloom_client::routing::Observer;
use leakbloom_cluster::NodeId;

/// The router's counters.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Lookup calls, latency and keys (`leakbloom_router_requests_total`, ...).
    pub requests: Requests,
    node_failures: IntCounterVec,
    retries: IntCounter,
    hedges: IntCounter,
    refreshes: IntCounter,
    nodes_up: IntGauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty counters.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = Requests::register(&registry, "leakbloom_router");
        let counter = |name: &str, help: &str| {
            register(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let retries = counter(
            "leakbloom_router_retries_total",
            "Rounds of resending parts of a call that failed retryably.",
        );
        let hedges = counter(
            "leakbloom_router_hedges_total",
            "Any-replica check parts also sent to another replica after the hedge delay.",
        );
        let refreshes = counter(
            "leakbloom_router_shard_map_refreshes_total",
            "Shard map refreshes (periodic and after failures).",
        );
        let node_failures = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "leakbloom_router_node_failures_total",
                    "Failed calls to nodes, by node id and gRPC code.",
                ),
                &["node", "code"],
            )
            .expect("valid metric"),
        );
        let nodes_up = register(
            &registry,
            IntGauge::new(
                "leakbloom_router_nodes_up",
                "Nodes that answered the last shard map refresh.",
            )
            .expect("valid metric"),
        );
        Metrics {
            registry,
            requests,
            node_failures,
            retries,
            hedges,
            refreshes,
            nodes_up,
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        leakbloom_metrics::encode([&self.registry])
    }
}

/// What routing reports, counted.
impl Observer for Metrics {
    /// Counts a failed call to `node`.
    fn node_failure(&self, node: NodeId, code: tonic::Code) {
        self.node_failures
            .with_label_values(&[&node.to_string(), code_label(code)])
            .inc();
    }

    /// Counts a retry round.
    fn retry(&self) {
        self.retries.inc();
    }

    /// Counts a hedged part.
    fn hedge(&self) {
        self.hedges.inc();
    }

    /// Counts a shard map refresh.
    fn refresh(&self) {
        self.refreshes.inc();
    }

    /// Sets the number of nodes that answered the last refresh.
    fn nodes_up(&self, nodes: usize) {
        self.nodes_up.set(i64::try_from(nodes).unwrap_or(i64::MAX));
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    leakbloom_metrics::serve(listener, move || {
        let metrics = metrics.clone();
        async move { metrics.render() }
    })
    .await;
}
