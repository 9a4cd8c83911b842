//! Routing a call over the cluster: the shard map kept fresh, one persistent channel per node,
//! and each batch split by shard, grouped per node, sent concurrently, merged back into request
//! order, and retried where it failed. Used by the router process and by [`Client::direct`](crate::Client::direct), the
//! client that routes itself; the decisions (map, plan, merge, retry policy) are
//! `leakbloom-cluster`'s, this module carries them out over gRPC.
//!
//! # Retries
//! A part that fails retryably (no leader, node down or restarting, connection lost:
//! [`crate::status::retryable`]) is planned again over a refreshed map and sent again, with
//! backoff ([`RetryPolicy`]), until the call's deadline. Only that part's keys go again; the
//! parts that succeeded stay. Any other status is the caller's to see and is passed on
//! unchanged.
//!
//! # Hedged reads
//! A node can stop answering without failing: a frozen process (SIGSTOP, a stalled VM, a disk
//! stall) keeps its TCP connection up, so its calls neither fail nor answer until the deadline.
//! An any-replica check part that a node has not answered within the hedge delay (the recent
//! p99 of node calls plus a margin: [`HedgeDelay`]) is therefore planned again over the other
//! replicas of its keys' shards ([`Plan::hedge`]) and sent there too: the first complete answer
//! wins and the other call is dropped (cancelled). Inserts and linearizable checks are not
//! hedged: they go to leaders, and a frozen leader is replaced by a Raft election (its calls
//! then fail and are retried).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use leakbloom_cluster::plan::gather;
use leakbloom_cluster::{
    bound_message, Key, MapError, NodeId, NodeView, Plan, Retry, RetryPolicy, ShardId, ShardMap,
    ShardView, KEY_LEN, LEADER_METADATA,
};
use leakbloom_proto::v1::cluster_client::ClusterClient;
use leakbloom_proto::v1::lookup_client::LookupClient;
use leakbloom_proto::v1::nodes_client::NodesClient;
use leakbloom_proto::v1::GetShardMapRequest;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::hedge::HedgeDelay;
use crate::status::{leader_hint, retryable};

/// How often the shard map is refreshed when nothing fails: leaders move (elections, the
/// handback to preferred replicas) and routing should follow within about a second.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// How long a refresh waits for each node's map: a node that is down must not hold it up.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(1);

/// What a routed call can fail with, beyond the request itself. None of it contains a key.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No shard map: no node answered, or no node holds some shard.
    #[error(
        "the shard map is unknown: no node answered ({reason}); check that the node \
         addresses given are reachable client addresses"
    )]
    NoMap {
        /// Why the last attempt failed.
        reason: String,
    },
    /// A node answered with an error that retrying does not fix: passed on as it is.
    #[error("{}", .0.message())]
    Node(Status),
    /// Retryable failures until the deadline.
    #[error(
        "gave up after {attempts} attempts in {elapsed_ms} ms; last error from node {node}: \
         {reason}"
    )]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed_ms: u128,
        /// The node of the last failure.
        node: NodeId,
        /// Its failure, as a gRPC status.
        reason: String,
        /// Its leader hint, if any.
        leader: Option<NodeId>,
    },
    /// Parts of a check of every set were answered for different sets (one was being
    /// created or dropped); carries the first part's sets.
    #[error("the sets changed while the check ran: retry it")]
    SetsChanged(Vec<String>),
    /// A node's reply does not match the request (a bug or a version mismatch).
    #[error("node {node} answered malformed data: {reason}")]
    Reply {
        /// The node.
        node: NodeId,
        /// What is wrong.
        reason: String,
    },
}

impl RouteError {
    /// Retries ran out (`retry` says how many and since when), the last failing with `status`
    /// from `node` (its leader hint is passed on).
    pub fn gave_up(retry: &Retry, node: NodeId, status: &Status) -> RouteError {
        RouteError::GaveUp {
            attempts: retry.attempts(),
            elapsed_ms: retry.started().elapsed().as_millis(),
            node,
            reason: format!("{:?}: {}", status.code(), status.message()),
            leader: leader_hint(status),
        }
    }
}

/// The one place a routing failure becomes a `tonic::Status`: a node's status is passed on
/// with its code and metadata (its message cut, should the node not have); running out of
/// retries is UNAVAILABLE with the last leader hint; a malformed reply is INTERNAL.
impl From<RouteError> for Status {
    fn from(error: RouteError) -> Status {
        let code = match &error {
            RouteError::Node(status) => {
                return Status::with_metadata(
                    status.code(),
                    bound_message(status.message().to_string()),
                    status.metadata().clone(),
                );
            }
            RouteError::NoMap { .. } | RouteError::GaveUp { .. } | RouteError::SetsChanged(_) => {
                tonic::Code::Unavailable
            }
            RouteError::Reply { .. } => tonic::Code::Internal,
        };
        let mut status = Status::new(code, bound_message(error.to_string()));
        if let RouteError::GaveUp {
            leader: Some(leader),
            ..
        } = &error
        {
            status
                .metadata_mut()
                .insert(LEADER_METADATA, leader.to_string().parse().expect("digits"));
        }
        status
    }
}

impl From<MapError> for RouteError {
    fn from(error: MapError) -> RouteError {
        RouteError::NoMap {
            reason: error.to_string(),
        }
    }
}

/// Result alias for routed calls.
pub type Result<T, E = RouteError> = std::result::Result<T, E>;

/// What routing reports as it goes (the router's Prometheus metrics; nothing for a client).
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// A shard map refresh started.
    fn refresh(&self) {}
    /// A refresh ended with `nodes` nodes answering.
    fn nodes_up(&self, _nodes: usize) {}
    /// A call to `node` failed with `code`.
    fn node_failure(&self, _node: NodeId, _code: tonic::Code) {}
    /// Part of a call is retried.
    fn retry(&self) {}
    /// An any-replica part was hedged on other replicas.
    fn hedge(&self) {}
}

/// An observer that notes nothing.
#[derive(Debug, Default)]
pub struct Unobserved;

impl Observer for Unobserved {}

/// Turns a node's `GetShardMap` answer into the cluster core's view of it.
pub fn node_view(answer: leakbloom_proto::v1::ShardMap) -> NodeView {
    NodeView {
        node: answer.node,
        epoch: answer.epoch,
        shards: answer.shards,
        max_batch: usize::try_from(answer.max_batch).unwrap_or(usize::MAX),
        addresses: answer
            .nodes
            .into_iter()
            .map(|node| (node.id, node.address))
            .collect(),
        shard: answer
            .shard_replicas
            .into_iter()
            .map(|shard| ShardView {
                replicas: shard.replicas,
                leader: (shard.leader != 0).then_some(shard.leader),
                term: shard.term,
            })
            .collect(),
    }
}

/// The keys of a routed call, its deadline, and whether its parts may be hedged.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// The request's keys, packed (whole keys: the caller checked).
    pub packed: &'a Bytes,
    /// When the call gives up.
    pub deadline: Instant,
    /// Any-replica reads only: the request's rotation position, which plans the first try
    /// and its hedges; `None`: never hedged.
    pub hedge: Option<usize>,
}

/// A part's answer from one node: the node, its keys' positions in the request, and what it
/// said.
type Answer<T> = (NodeId, Vec<u32>, Result<T, Status>);

/// The shard map and the channels to the nodes: the routing state of a router or a direct
/// client. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Routing {
    /// Node client addresses given at start; asked on every refresh with the discovered ones.
    seeds: Vec<String>,
    /// The last map learned; `None` until a node answered.
    map: RwLock<Option<Arc<ShardMap>>>,
    /// One lazily connecting channel per node address.
    channels: Mutex<BTreeMap<String, Channel>>,
    /// When the last refresh finished; held during a refresh so that concurrent failures
    /// share one.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    /// Rotates any-replica reads and any-node calls over the nodes.
    spread: AtomicUsize,
    /// How long an any-replica part waits before it is hedged; `None`: never hedged.
    hedge: Option<HedgeDelay>,
    retry: RetryPolicy,
    /// Most keys per request towards the nodes (their `max_batch` when smaller).
    max_batch: usize,
    observer: Arc<dyn Observer>,
}

impl Routing {
    /// Routing that learns the cluster from `seeds` (node client addresses, `HOST:PORT`),
    /// sends at most `max_batch` keys per node call (or the nodes' limit, when smaller), and
    /// hedges any-replica parts unanswered for `hedge` more than the recent p99 of node calls
    /// (zero: never). It knows nothing until [`refresh`](Self::refresh) (or
    /// [`run_refresh`](Self::run_refresh)) reaches a node.
    pub fn new(
        seeds: Vec<String>,
        hedge: Duration,
        max_batch: usize,
        observer: Arc<dyn Observer>,
    ) -> Routing {
        Routing {
            seeds,
            map: RwLock::new(None),
            channels: Mutex::new(BTreeMap::new()),
            refreshed: tokio::sync::Mutex::new(None),
            spread: AtomicUsize::new(0),
            hedge: (!hedge.is_zero()).then(|| HedgeDelay::new(hedge)),
            retry: RetryPolicy::default(),
            max_batch,
            observer,
        }
    }

    /// The current map, if any node has answered yet.
    pub fn map(&self) -> Option<Arc<ShardMap>> {
        self.map.read().expect("map lock").clone()
    }

    /// The most keys one routed request may carry: the smaller of this routing's limit and
    /// the nodes'.
    pub fn max_batch(&self, map: &ShardMap) -> usize {
        map.max_batch.min(self.max_batch)
    }

    /// The next rotation position, spreading reads and any-node calls over the nodes.
    pub fn spread(&self) -> usize {
        self.spread.fetch_add(1, Ordering::Relaxed)
    }

    /// The channel to `address`, created (lazily connecting) on first use.
    fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = crate::channel::lazy(address)?;
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// A `Lookup` client for node `node` of `map`.
    pub fn lookup(&self, map: &ShardMap, node: NodeId) -> Result<LookupClient<Channel>, Status> {
        let address = map
            .addresses
            .get(&node)
            .ok_or_else(|| Status::unavailable(format!("node {node}'s address is unknown")))?;
        Ok(LookupClient::new(self.channel(address)?)
            .max_decoding_message_size(leakbloom_cluster::MAX_REPLY_BYTES)
            .max_encoding_message_size(leakbloom_cluster::max_request_bytes(self.max_batch(map))))
    }

    /// Asks every known node (seeds and discovered) for its view and merges the answers,
    /// unless another refresh finished after `after` (then its map is used). Nodes that do not
    /// answer count as down until the next refresh. A merged map of an older epoch than the
    /// one held is not taken.
    pub async fn refresh(&self, after: Instant) -> Result<Arc<ShardMap>> {
        let mut refreshed = self.refreshed.lock().await;
        if let (Some(when), Some(map)) = (*refreshed, self.map()) {
            if when > after {
                return Ok(map);
            }
        }
        self.observer.refresh();
        let mut addresses: Vec<String> = self.seeds.clone();
        if let Some(map) = self.map() {
            addresses.extend(map.addresses.values().cloned());
        }
        addresses.sort();
        addresses.dedup();
        let answers = join_all(addresses.iter().map(|address| async move {
            let mut client = ClusterClient::new(self.channel(address)?);
            let call = client.get_shard_map(GetShardMapRequest {});
            match tokio::time::timeout(REFRESH_TIMEOUT, call).await {
                Ok(answer) => answer.map(|answer| node_view(answer.into_inner())),
                Err(_) => Err(Status::deadline_exceeded("no answer within 1 s")),
            }
        }))
        .await;
        let mut views = Vec::new();
        let mut failures = Vec::new();
        for (address, answer) in addresses.iter().zip(answers) {
            match answer {
                Ok(view) => views.push(view),
                Err(status) => failures.push(format!("{address}: {}", status.message())),
            }
        }
        *refreshed = Some(Instant::now());
        let merged = match ShardMap::merge(&views) {
            Ok(map) => Arc::new(map),
            Err(error) => {
                // Keep routing over the last map, with every node marked down.
                if let Some(map) = self.map.write().expect("map lock").as_mut() {
                    Arc::make_mut(map).up.clear();
                }
                let error = match error {
                    MapError::NoAnswer => RouteError::NoMap {
                        reason: failures.join("; "),
                    },
                    other => other.into(),
                };
                tracing::warn!(%error, "shard map refresh failed");
                return Err(error);
            }
        };
        if !failures.is_empty() {
            tracing::debug!(failures = ?failures, "some nodes did not answer the refresh");
        }
        let old = self.map();
        if let Some(old) = old.as_ref().filter(|old| !merged.is_newer_than(old)) {
            tracing::debug!(
                held = old.epoch,
                answered = merged.epoch,
                "an older shard map was ignored"
            );
            return Ok(old.clone());
        }
        // Operators hear of new placements and of nodes coming and going; leaders moving
        // within a placement is routine.
        let news = old.as_deref().is_none_or(|old| {
            old.epoch != merged.epoch || old.addresses != merged.addresses || old.up != merged.up
        });
        if news {
            tracing::info!(
                epoch = merged.epoch,
                shards = merged.shards,
                nodes = ?merged.addresses,
                up = ?merged.up,
                "shard map updated"
            );
        } else if old.as_deref() != Some(&*merged) {
            tracing::debug!(epoch = merged.epoch, "shard map leaders updated");
        }
        self.observer.nodes_up(merged.up.len());
        *self.map.write().expect("map lock") = Some(merged.clone());
        Ok(merged)
    }

    /// Refreshes the map every [`REFRESH_INTERVAL`], for ever. Calls `ready` once the first
    /// map is known.
    pub async fn run_refresh(self: Arc<Routing>, ready: impl FnOnce()) {
        let mut ready = Some(ready);
        loop {
            if self.refresh(Instant::now()).await.is_ok() {
                if let Some(ready) = ready.take() {
                    ready();
                }
            }
            tokio::time::sleep(REFRESH_INTERVAL).await;
        }
    }

    /// The map, refreshing first when there is none yet.
    pub async fn current(&self) -> Result<Arc<ShardMap>> {
        match self.map() {
            Some(map) => Ok(map),
            None => self.refresh(Instant::now()).await,
        }
    }

    /// Routes the batch's keys: plans them over the map with `target` (shard -> node; for
    /// `None`, a node that takes every key at once, if any: then no key's shard is computed),
    /// sends each node's part with `send` (given a client, the node and the part's packed
    /// keys), hedges a part its node leaves unanswered for the hedge delay (any-replica reads
    /// only: see the [module docs](self)), hands each answer to `take` with its node and its
    /// keys' positions in the request, and retries the parts that failed retryably until the
    /// deadline.
    pub async fn route<T, S, F>(
        &self,
        batch: Batch<'_>,
        target: impl Fn(&ShardMap, Option<ShardId>) -> Option<NodeId>,
        send: S,
        mut take: impl FnMut(NodeId, &[u32], T) -> Result<()>,
    ) -> Result<()>
    where
        S: Fn(LookupClient<Channel>, NodeId, Bytes) -> F,
        F: Future<Output = Result<T, Status>>,
    {
        let Batch {
            packed,
            deadline,
            hedge,
        } = batch;
        let hedge = hedge.filter(|_| self.hedge.is_some());
        let mut map = self.current().await?;
        let mut retry = self.retry.start(Instant::now(), deadline);
        let (keys, _) = packed.as_chunks::<KEY_LEN>();
        let mut pending: Vec<u32> = (0..keys.len() as u32).collect();
        loop {
            retry.attempt();
            let whole = (pending.len() == keys.len())
                .then(|| target(&map, None))
                .flatten();
            let plan = match whole {
                Some(node) => Plan::whole(node, std::mem::take(&mut pending)),
                None => Plan::new(keys, pending.iter().copied(), map.shards, |shard| {
                    target(&map, Some(shard))
                })
                .ok_or_else(|| RouteError::NoMap {
                    reason: "a shard has no replica with a known address".into(),
                })?,
            };
            let call = |node: NodeId, positions: &[u32]| {
                self.call(&map, node, packed, keys, positions, &send)
            };
            let calls = plan.parts.into_iter().map(|(node, positions)| {
                let first = call(node, &positions);
                let map = &map;
                let call = &call;
                async move {
                    let (Some(spread), Some(delay)) = (hedge, &self.hedge) else {
                        return vec![(node, positions, first.await)];
                    };
                    let wait = delay.delay();
                    let mut first = std::pin::pin!(timed(delay, first));
                    if let Ok(answer) = tokio::time::timeout(wait, &mut first).await {
                        return vec![(node, positions, answer)];
                    }
                    let Some(plan) = Plan::hedge(map, keys, &positions, node, spread) else {
                        return vec![(node, positions, first.await)];
                    };
                    tracing::debug!(
                        node,
                        keys = positions.len(),
                        ?wait,
                        "hedging an unanswered any-replica read"
                    );
                    self.observer.hedge();
                    let second = join_all(plan.parts.into_iter().map(|(other, positions)| {
                        let answer = timed(delay, call(other, &positions));
                        async move { (other, positions, answer.await) }
                    }));
                    self.race(node, positions, first, second).await
                }
            });
            let mut again: Vec<u32> = Vec::new();
            let mut last: Option<(NodeId, Status)> = None;
            for (node, positions, answer) in join_all(calls).await.into_iter().flatten() {
                match answer {
                    Ok(answer) => take(node, &positions, answer)?,
                    Err(status) => {
                        self.observer.node_failure(node, status.code());
                        if !retryable(&status) {
                            return Err(RouteError::Node(status));
                        }
                        again.extend(positions);
                        last = Some((node, status));
                    }
                }
            }
            let Some((node, status)) = last else {
                return Ok(());
            };
            let now = Instant::now();
            let Some(pause) = retry.pause(now) else {
                return Err(RouteError::gave_up(&retry, node, &status));
            };
            tracing::debug!(node, code = ?status.code(), message = status.message(), keys = again.len(), "retrying part of a batch");
            self.observer.retry();
            tokio::time::sleep(pause).await;
            // A map at least as new as the failure: leaders moved, or the node went down.
            if let Ok(fresh) = self.refresh(now).await {
                map = fresh;
            }
            again.sort_unstable();
            pending = again;
        }
    }

    /// One node's part of a routed call: its answer (a part with every key sends the
    /// request's own bytes: no copy).
    fn call<T, S, F>(
        &self,
        map: &ShardMap,
        node: NodeId,
        packed: &Bytes,
        keys: &[Key],
        positions: &[u32],
        send: &S,
    ) -> impl Future<Output = Result<T, Status>> + use<T, S, F>
    where
        S: Fn(LookupClient<Channel>, NodeId, Bytes) -> F,
        F: Future<Output = Result<T, Status>>,
    {
        let part = if positions.len() == keys.len() {
            packed.clone()
        } else {
            Bytes::from(gather(keys, positions))
        };
        let call = self
            .lookup(map, node)
            .map(|client| send(client, node, part));
        async move { call?.await }
    }

    /// Races a part's first call (to `node`, keys `positions`) against its hedge (the same
    /// keys over other nodes): the first to answer in full wins and the other is dropped. When
    /// one fails, the other is awaited; when both fail, the hedge's answers are returned (its
    /// successful pieces are kept, the rest retried) and the first call's failure is counted.
    async fn race<T>(
        &self,
        node: NodeId,
        positions: Vec<u32>,
        first: impl Future<Output = Result<T, Status>>,
        second: impl Future<Output = Vec<Answer<T>>>,
    ) -> Vec<Answer<T>> {
        let mut first = std::pin::pin!(first);
        let mut second = std::pin::pin!(second);
        let failed = tokio::select! {
            answer = &mut first => match answer {
                Ok(answer) => return vec![(node, positions, Ok(answer))],
                Err(status) => status,
            },
            answers = &mut second => {
                if answers.iter().all(|(_, _, answer)| answer.is_ok()) {
                    return answers;
                }
                match first.await {
                    Ok(answer) => {
                        for (other, _, answer) in &answers {
                            if let Err(status) = answer {
                                self.observer.node_failure(*other, status.code());
                            }
                        }
                        return vec![(node, positions, Ok(answer))];
                    }
                    Err(status) => {
                        self.observer.node_failure(node, status.code());
                        return answers;
                    }
                }
            }
        };
        self.observer.node_failure(node, failed.code());
        second.await
    }

    /// Calls `call` on one node after another (rotating, nodes that answered the last refresh
    /// first) until one answers, retrying retryable failures with backoff until `deadline`:
    /// for the set-management calls, which any node serves.
    pub async fn any_node<T, F, Fut>(&self, deadline: Instant, call: F) -> Result<T>
    where
        F: Fn(LookupClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.any_node_by(deadline, |map, node| self.lookup(map, node), call)
            .await
    }

    /// [`any_node`](Self::any_node) for the operators' `Nodes` service.
    pub async fn any_node_nodes<T, F, Fut>(&self, deadline: Instant, call: F) -> Result<T>
    where
        F: Fn(NodesClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let connect = |map: &ShardMap, node: NodeId| {
            let address = map
                .addresses
                .get(&node)
                .ok_or_else(|| Status::unavailable(format!("node {node}'s address is unknown")))?;
            Ok(NodesClient::new(self.channel(address)?))
        };
        self.any_node_by(deadline, connect, call).await
    }

    async fn any_node_by<C, T, F, Fut>(
        &self,
        deadline: Instant,
        connect: impl Fn(&ShardMap, NodeId) -> std::result::Result<C, Status>,
        call: F,
    ) -> Result<T>
    where
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut map = self.current().await?;
        let mut retry = self.retry.start(Instant::now(), deadline);
        loop {
            let mut last = None;
            for node in map.any_node_order(self.spread()) {
                retry.attempt();
                let answer = match connect(&map, node) {
                    Ok(client) => call(client).await,
                    Err(status) => Err(status),
                };
                match answer {
                    Ok(answer) => return Ok(answer.into_inner()),
                    Err(status) => {
                        self.observer.node_failure(node, status.code());
                        if !retryable(&status) {
                            return Err(RouteError::Node(status));
                        }
                        last = Some((node, status));
                    }
                }
            }
            let now = Instant::now();
            let (node, status) = last.unwrap_or((0, Status::unavailable("no node is known")));
            let Some(pause) = retry.pause(now) else {
                return Err(RouteError::gave_up(&retry, node, &status));
            };
            self.observer.retry();
            tokio::time::sleep(pause).await;
            if let Ok(fresh) = self.refresh(now).await {
                map = fresh;
            }
        }
    }
}

/// `call`, its duration recorded in `delay` when it answers.
async fn timed<T>(
    delay: &HedgeDelay,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let sent = Instant::now();
    let answer = call.await;
    if answer.is_ok() {
        delay.record(sent.elapsed());
    }
    answer
}

/// Sets `deadline` as the request's gRPC timeout, so a node stops working on it when the
/// caller stops waiting.
pub fn with_deadline<T>(message: T, deadline: Instant) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    request
}
