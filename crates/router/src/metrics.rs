//! Prometheus metrics of a router, served as text on `GET /metrics` at `--metrics-listen`
//! (plain HTTP/1.1 on its own port).
//!
//! `leakbloom_router_requests_total{rpc,code}` and `leakbloom_router_request_seconds{rpc}`
//! (every `Lookup` call, by gRPC code), `leakbloom_router_keys_checked_total` /
//! `leakbloom_router_keys_inserted_total` (keys of successful calls),
//! `leakbloom_router_node_failures_total{node,code}` (failed calls to nodes, retried or not),
//! `leakbloom_router_retries_total` (retry rounds), `leakbloom_router_shard_map_refreshes_total`
//! and `leakbloom_router_nodes_up` (nodes that answered the last refresh). Labels are rpc
//! names, codes and node ids: never keys or identifiers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use tokio::net::TcpListener;

use crate::map::NodeId;

/// Latency buckets in seconds: sub-millisecond checks to retried calls near the deadline.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The router's counters.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    keys_checked: IntCounter,
    keys_inserted: IntCounter,
    node_failures: IntCounterVec,
    retries: IntCounter,
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
        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(counter.clone()))
                .expect("metric names are unique");
            counter
        };
        let keys_checked = counter(
            "leakbloom_router_keys_checked_total",
            "Keys in successful Check calls.",
        );
        let keys_inserted = counter(
            "leakbloom_router_keys_inserted_total",
            "Keys in acknowledged Insert calls.",
        );
        let retries = counter(
            "leakbloom_router_retries_total",
            "Rounds of resending parts of a call that failed retryably.",
        );
        let refreshes = counter(
            "leakbloom_router_shard_map_refreshes_total",
            "Shard map refreshes (periodic and after failures).",
        );
        let requests = IntCounterVec::new(
            Opts::new(
                "leakbloom_router_requests_total",
                "Lookup calls served, by rpc and gRPC code.",
            ),
            &["rpc", "code"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "leakbloom_router_request_seconds",
                "Lookup call latency, by rpc.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["rpc"],
        )
        .expect("valid metric");
        let node_failures = IntCounterVec::new(
            Opts::new(
                "leakbloom_router_node_failures_total",
                "Failed calls to nodes, by node id and gRPC code.",
            ),
            &["node", "code"],
        )
        .expect("valid metric");
        let nodes_up = IntGauge::new(
            "leakbloom_router_nodes_up",
            "Nodes that answered the last shard map refresh.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(node_failures.clone()),
            Box::new(nodes_up.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            latency,
            keys_checked,
            keys_inserted,
            node_failures,
            retries,
            refreshes,
            nodes_up,
        }
    }

    /// Records one served call of `rpc` that ended with `code` after `elapsed`.
    pub fn request(&self, rpc: &str, code: tonic::Code, elapsed: Duration) {
        self.requests
            .with_label_values(&[rpc, &format!("{code:?}")])
            .inc();
        self.latency
            .with_label_values(&[rpc])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts the keys of a successful check.
    pub fn keys_checked(&self, keys: u64) {
        self.keys_checked.inc_by(keys);
    }

    /// Counts the keys of an acknowledged insert.
    pub fn keys_inserted(&self, keys: u64) {
        self.keys_inserted.inc_by(keys);
    }

    /// Counts a failed call to `node`.
    pub fn node_failure(&self, node: NodeId, code: tonic::Code) {
        self.node_failures
            .with_label_values(&[&node.to_string(), &format!("{code:?}")])
            .inc();
    }

    /// Counts a retry round.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// Counts a shard map refresh.
    pub fn refresh(&self) {
        self.refreshes.inc();
    }

    /// Sets the number of nodes that answered the last refresh.
    pub fn nodes_up(&self, nodes: usize) {
        self.nodes_up.set(i64::try_from(nodes).unwrap_or(i64::MAX));
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .expect("text encoding of valid metrics");
        String::from_utf8(text).expect("the text format is UTF-8")
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&request, &metrics)) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, %peer, "metrics connection ended");
            }
        });
    }
}

fn answer<B>(request: &hyper::Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: metrics are at GET /metrics\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
