//! Prometheus metrics of a node, served as text on `GET /metrics` at `metrics_listen` (plain
//! HTTP/1.1 on its own port, like the peer port never the client one).
//!
//! Counted as requests are served: `leakbloom_requests_total{rpc,code}` and
//! `leakbloom_request_seconds{rpc}` (every `Lookup` call, by gRPC code), and
//! `leakbloom_keys_checked_total` / `leakbloom_keys_inserted_total` (keys of successful calls).
//! Read from the node at each scrape, per hosted shard (`shard` label):
//! `leakbloom_raft_term`, `leakbloom_raft_leader` (node id, 0 when unknown),
//! `leakbloom_raft_leader_changes_total` (since start), `leakbloom_raft_applied`,
//! `leakbloom_raft_apply_lag` (durable commit index minus applied), `leakbloom_raft_rebuilding`
//! (1 while the replica is rebuilt from peers); per set (`set` label, as this node sees it):
//! `leakbloom_set_estimated_keys`, `leakbloom_set_capacity`, `leakbloom_set_fill_ratio`,
//! `leakbloom_set_estimated_fpr` and `leakbloom_set_over_capacity` (1 once the estimated keys
//! exceed the capacity: the false-positive rate then climbs past its target).
//!
//! Labels are rpc names, gRPC codes, shard numbers and set names: never keys or identifiers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use leakbloom_proto::v1::SetInfo;
use leakbloom_raft::GroupHandle;
use prometheus::{
    Encoder as _, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::node::Node;

/// Latency buckets in seconds: sub-millisecond checks to multi-second retried inserts.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The node's request counters (the gauges are read from the node at each scrape).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    keys_checked: IntCounter,
    keys_inserted: IntCounter,
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
        let requests = IntCounterVec::new(
            Opts::new(
                "leakbloom_requests_total",
                "Lookup calls served, by rpc and gRPC code.",
            ),
            &["rpc", "code"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("leakbloom_request_seconds", "Lookup call latency, by rpc.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["rpc"],
        )
        .expect("valid metric");
        let keys_checked = IntCounter::new(
            "leakbloom_keys_checked_total",
            "Keys in successful Check calls.",
        )
        .expect("valid metric");
        let keys_inserted = IntCounter::new(
            "leakbloom_keys_inserted_total",
            "Keys in acknowledged Insert calls.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(keys_checked.clone()),
            Box::new(keys_inserted.clone()),
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

    /// The text exposition of the counters and of `node`'s current state.
    pub async fn render(&self, node: &Node) -> String {
        let state = Registry::new();
        for (name, help, value) in SHARD_GAUGES {
            let gauge =
                IntGaugeVec::new(Opts::new(*name, *help), &["shard"]).expect("valid metric");
            for shard in 0..node.config().shards {
                if let Some(group) = node.group(shard) {
                    let value = i64::try_from(value(group)).unwrap_or(i64::MAX);
                    gauge.with_label_values(&[&shard.to_string()]).set(value);
                }
            }
            state
                .register(Box::new(gauge))
                .expect("metric names are unique");
        }
        let sets = node.list_sets().await.unwrap_or_default();
        for (name, help, value) in SET_GAUGES {
            let gauge = GaugeVec::new(Opts::new(*name, *help), &["set"]).expect("valid metric");
            for set in &sets {
                gauge
                    .with_label_values(&[set.name.as_str()])
                    .set(value(set));
            }
            state
                .register(Box::new(gauge))
                .expect("metric names are unique");
        }
        let mut families = self.registry.gather();
        families.extend(state.gather());
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut text)
            .expect("encoding metrics to memory cannot fail");
        String::from_utf8(text).expect("the text format is UTF-8")
    }
}

/// A per-shard gauge: name, help, and its value read from the local replica.
type ShardGauge = (&'static str, &'static str, fn(&GroupHandle) -> u64);

/// Gauges of each hosted shard's replica, read at each scrape.
const SHARD_GAUGES: &[ShardGauge] = &[
    (
        "leakbloom_raft_term",
        "Raft term of this node's replica.",
        |g| g.leadership().term,
    ),
    (
        "leakbloom_raft_leader",
        "The shard's leader as this replica knows it (node id, 0: none).",
        |g| g.leadership().leader.unwrap_or(0),
    ),
    (
        "leakbloom_raft_leader_changes_total",
        "Role or leader changes seen by this replica since the node started.",
        GroupHandle::leader_changes,
    ),
    (
        "leakbloom_raft_applied",
        "Last applied log index.",
        GroupHandle::applied,
    ),
    (
        "leakbloom_raft_apply_lag",
        "Durable commit index minus applied index.",
        |g| g.committed().saturating_sub(g.applied()),
    ),
    (
        "leakbloom_raft_rebuilding",
        "1 while this replica is rebuilt from its peers (it serves no reads).",
        |g| u64::from(g.rejoin_mark().is_some()),
    ),
];

/// A per-set gauge: name, help, and its value from the set's statistics.
type SetGauge = (&'static str, &'static str, fn(&SetInfo) -> f64);

/// Gauges of each set as this node sees it, read at each scrape.
const SET_GAUGES: &[SetGauge] = &[
    (
        "leakbloom_set_estimated_keys",
        "Keys in the set, estimated from its filters' fill.",
        |s| s.estimated_keys as f64,
    ),
    (
        "leakbloom_set_capacity",
        "Keys the set is sized for.",
        |s| s.capacity as f64,
    ),
    (
        "leakbloom_set_fill_ratio",
        "Share of filter bits set.",
        |s| s.fill_ratio,
    ),
    (
        "leakbloom_set_estimated_fpr",
        "False-positive rate estimated from the fill.",
        |s| s.estimated_fpr,
    ),
    (
        "leakbloom_set_over_capacity",
        "1 once the estimated keys exceed the capacity (the rate climbs past its target).",
        |s| f64::from(u8::from(s.estimated_keys > s.capacity)),
    ),
];

/// Serves `GET /metrics` for `node` on `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, node: Arc<Node>, metrics: Arc<Metrics>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (node, metrics) = (node.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (node, metrics) = (node.clone(), metrics.clone());
                async move { Ok::<_, Infallible>(answer(request, &node, &metrics).await) }
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

async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
    node: &Node,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(node).await,
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "only GET /metrics is served here\n".into(),
        ),
    }
}
