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
//! (1 while the replica is rebuilt from peers), `leakbloom_raft_stalled` (1 while it cannot
//! apply for want of memory); the catalog's replica has `shard="catalog"`. Per node:
//! `leakbloom_replica_unhealthy{shard,reason}` (each reason the node is NOT_SERVING:
//! `stalled`, `rebuilding`, `no_leader`, `left` or `joining`), `leakbloom_filter_memory_bytes{kind="used"|"limit"}`,
//! `leakbloom_shards_under_replicated` (fewer replicas on active or decommissioning nodes than
//! the replication, from the catalog) and `leakbloom_shard_moves_in_flight` (shards this node
//! leads whose membership is not yet their placement; sum it over nodes). Per set (`set` label, as this node sees it):
//! `leakbloom_set_estimated_keys`, `leakbloom_set_capacity`, `leakbloom_set_fill_ratio`,
//! `leakbloom_set_estimated_fpr` and `leakbloom_set_over_capacity` (1 once the estimated keys
//! exceed the capacity: the false-positive rate then climbs past its target).
//!
//! Labels are rpc names, gRPC codes, shard numbers and set names: never keys or identifiers.

use std::sync::Arc;

use leakbloom_metrics::Requests;
use leakbloom_proto::v1::SetInfo;
use leakbloom_raft::GroupHandle;
use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};
use tokio::net::TcpListener;

use crate::catalog::CATALOG_GROUP;
use crate::node::{Health, Node};

/// The node's request counters (the gauges are read from the node at each scrape).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Lookup calls, latency and keys (`leakbloom_requests_total`, ...).
    pub requests: Requests,
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
        let requests = Requests::register(&registry, "leakbloom");
        Metrics { registry, requests }
    }

    /// The text exposition of the counters and of `node`'s current state.
    pub async fn render(&self, node: &Node) -> String {
        let state = Registry::new();
        for (name, help, value) in SHARD_GAUGES {
            let gauge =
                IntGaugeVec::new(Opts::new(*name, *help), &["shard"]).expect("valid metric");
            let shards = (0..node.config().shards)
                .filter_map(|shard| Some((shard.to_string(), node.group(shard)?)))
                .chain([("catalog".to_string(), node.catalog_group().clone())]);
            for (shard, group) in shards {
                let value = i64::try_from(value(&group)).unwrap_or(i64::MAX);
                gauge.with_label_values(&[&shard]).set(value);
            }
            state
                .register(Box::new(gauge))
                .expect("metric names are unique");
        }
        let unhealthy = IntGaugeVec::new(
            Opts::new(
                "leakbloom_replica_unhealthy",
                "1 for each reason a replica keeps this node NOT_SERVING: stalled (it cannot \
                 apply for want of filter memory), rebuilding (the catalog's replica is rebuilt from its \
                 peers), no_leader (its group has no leader it knows), left (the cluster \
                 replaced this node), joining (its catalog replica has not caught up).",
            ),
            &["shard", "reason"],
        )
        .expect("valid metric");
        for problem in node.health() {
            let reason = match problem {
                Health::Stalled { .. } => "stalled",
                Health::Rebuilding { .. } => "rebuilding",
                Health::NoLeader { .. } => "no_leader",
                Health::Left => "left",
                Health::Joining => "joining",
            };
            let group = problem.group();
            let shard = if group == CATALOG_GROUP {
                "catalog".to_string()
            } else {
                group.to_string()
            };
            unhealthy.with_label_values(&[&shard, reason]).set(1);
        }
        state
            .register(Box::new(unhealthy))
            .expect("metric names are unique");
        let (under_replicated, moving) = node.placement_health();
        for (name, help, value) in [
            (
                "leakbloom_shards_under_replicated",
                "Shards with fewer replicas on active or decommissioning nodes than the \
                 replication, as this node's copy of the catalog says (the same on every node).",
                under_replicated,
            ),
            (
                "leakbloom_shard_moves_in_flight",
                "Shards led by this node whose Raft membership is not yet their placement (a \
                 replica being added or removed); summed over nodes, the moves in flight.",
                moving,
            ),
        ] {
            let gauge = prometheus::IntGauge::new(name, help).expect("valid metric");
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            state
                .register(Box::new(gauge))
                .expect("metric names are unique");
        }
        let memory = IntGaugeVec::new(
            Opts::new(
                "leakbloom_filter_memory_bytes",
                "This node's filter memory: held by its partitions (used), and its limit.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let budget = node.budget();
        for (kind, bytes) in [("used", budget.used()), ("limit", budget.limit())] {
            memory
                .with_label_values(&[kind])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        state
            .register(Box::new(memory))
            .expect("metric names are unique");
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
        leakbloom_metrics::encode([&self.registry, &state])
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
        "leakbloom_raft_stalled",
        "1 while this replica cannot apply committed entries for want of filter memory (it \
         serves no reads and leads nothing; the log says why; it resumes by itself).",
        |g| u64::from(g.stalled().is_some()),
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
    leakbloom_metrics::serve(listener, move || {
        let (node, metrics) = (node.clone(), metrics.clone());
        async move { metrics.render(&node).await }
    })
    .await;
}
