//! Serving a node over gRPC on two real TCP sockets: the client address (`listen`: the Lookup
//! service plus `grpc.health.v1` and server reflection v1 and v1alpha for grpcurl 1.8) and the
//! peer address (`peer_listen`: the [`crate::peer`] service, for other nodes only); and, when
//! configured, Prometheus metrics over HTTP on `metrics_listen` ([`crate::metrics`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use leakbloom_proto::v1::cluster_server::ClusterServer;
use leakbloom_proto::v1::lookup_server::LookupServer;
use leakbloom_proto::v1::status_response::State;
use leakbloom_proto::v1::StatusResponse;
use leakbloom_raft::{GroupId, NodeId};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::catalog::CATALOG_GROUP;
use crate::config::Config;
use crate::error::Error;
use crate::metrics::{self, Metrics};
use crate::node::{Health, Node};
use crate::peer::{Local, PeerService, Peers, Slot};
use crate::service::{ClusterService, LookupService};

/// HTTP/2 frame size on the server: 256 KiB instead of 16 KiB. h2 writes every frame with its
/// own syscall, so large check batches were measured 1.7x faster with it.
pub const HTTP2_MAX_FRAME_SIZE: u32 = 256 << 10;

/// How often the node looks for sets over their capacity (to warn in the log).
const CAPACITY_WATCH: Duration = Duration::from_secs(30);

/// How often the Lookup service's health is worked out again.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// How long a replica may know no leader before its node reports NOT_SERVING: longer than an
/// election (1-2 s at the default tick), so a failover does not flap readiness.
const NO_LEADER_GRACE: Duration = Duration::from_secs(3);

/// Keeps the health of `leakbloom.v1.Lookup` true: NOT_SERVING while a replica of the node is
/// stalled (it cannot apply for want of memory) or has known no leader for
/// [`NO_LEADER_GRACE`] (no quorum reachable), SERVING otherwise; logs each change with why.
async fn watch_health(node: Arc<Node>, reporter: tonic_health::server::HealthReporter) {
    let mut leaderless: BTreeMap<GroupId, Instant> = BTreeMap::new();
    let mut was: Option<Vec<String>> = None;
    loop {
        let now = Instant::now();
        let problems = node.health();
        leaderless.retain(|group, _| {
            problems
                .iter()
                .any(|p| matches!(p, Health::NoLeader { group: g } if g == group))
        });
        let problems: Vec<String> = problems
            .iter()
            .filter(|problem| match problem {
                Health::NoLeader { group } => {
                    now.duration_since(*leaderless.entry(*group).or_insert(now)) >= NO_LEADER_GRACE
                }
                Health::Stalled { .. } | Health::Rebuilding { .. } => true,
            })
            .map(ToString::to_string)
            .collect();
        if was.as_ref() != Some(&problems) {
            if problems.is_empty() {
                reporter.set_serving::<LookupServer<LookupService>>().await;
                tracing::info!(node = node.id(), "serving");
            } else {
                reporter
                    .set_not_serving::<LookupServer<LookupService>>()
                    .await;
                tracing::warn!(node = node.id(), problems = ?problems, "not serving");
            }
            was = Some(problems);
        }
        tokio::time::sleep(HEALTH_EVERY).await;
    }
}

/// How often a node with a new data directory asks its peers whether the cluster is new.
const DISCOVER_POLL: Duration = Duration::from_millis(200);

/// How often it says that it is still waiting for them.
const DISCOVER_LOG: Duration = Duration::from_secs(5);

/// For a node whose data directory is new: the hosted groups (shards, and the catalog) whose
/// data the cluster already holds, so that their replicas must be rebuilt from the peers (a wiped disk) instead of
/// bootstrapped (a new cluster). Asks the peers' `Status` until every hosted shard is decided:
/// held when one of its other replicas has committed anything, new when a majority of its
/// replicas, this one included, are new or hold nothing committed. Waits as long as a shard is
/// undecided, saying so every few seconds: with a majority of its replicas silent, a new shard
/// cannot be told from one whose data this node lost, and bootstrapping the latter could elect
/// a leader without acknowledged writes. Nodes of a new cluster therefore start together (a
/// StatefulSet with `podManagementPolicy: Parallel`, or `leakbloom dev`); one that starts
/// after the others committed is rebuilt from them, which is slower but as good.
async fn discover(config: &Config, peers: &Peers) -> Vec<GroupId> {
    let Ok(layout) = config.layout() else {
        // Node::open reports the configuration error.
        return Vec::new();
    };
    // Every hosted shard's group and its replicas, and the catalog's (on every node).
    let hosted: Vec<(GroupId, Vec<NodeId>)> = (0..config.shards)
        .map(|shard| (GroupId::from(shard), layout.replicas(shard)))
        .chain([(CATALOG_GROUP, layout.nodes().to_vec())])
        .filter(|(_, replicas)| replicas.contains(&config.id))
        .collect();
    if layout.replication() < 2 {
        return Vec::new();
    }
    let others: Vec<NodeId> = config
        .members()
        .into_keys()
        .filter(|&id| id != config.id)
        .collect();
    let mut said = Instant::now();
    loop {
        let answers: BTreeMap<NodeId, StatusResponse> = join_all(
            others
                .iter()
                .map(|&id| async move { peers.status(id).await.ok().map(|status| (id, status)) }),
        )
        .await
        .into_iter()
        .flatten()
        .collect();
        let mut held = Vec::new();
        let mut undecided = Vec::new();
        for (group, replicas) in &hosted {
            let group = *group;
            let answered = replicas.iter().filter_map(|id| answers.get(id));
            let mut new = 1;
            let mut committed = false;
            for status in answered {
                let commit = status.committed.get(&group).copied().unwrap_or(0);
                match status.state() {
                    State::Serving if commit > 0 => committed = true,
                    State::Serving | State::New => new += 1,
                    _ => {}
                }
            }
            if committed {
                held.push(group);
            } else if new < replicas.len() / 2 + 1 {
                undecided.push(group);
            }
        }
        if undecided.is_empty() {
            if held.is_empty() {
                tracing::info!(node = config.id, "new cluster: bootstrapping");
            } else {
                tracing::info!(
                    node = config.id,
                    groups = ?held,
                    "new data directory, but the peers hold these groups' data: rebuilding \
                     their replicas from the peers"
                );
            }
            return held;
        }
        if said.elapsed() >= DISCOVER_LOG {
            said = Instant::now();
            let silent: Vec<NodeId> = others
                .iter()
                .copied()
                .filter(|id| !answers.contains_key(id))
                .collect();
            tracing::warn!(
                node = config.id,
                groups = ?undecided,
                silent = ?silent,
                "new data directory: waiting for a majority of these groups' replicas to say \
                 whether they are new (bootstrap) or hold data (rebuild from them)"
            );
        }
        tokio::time::sleep(DISCOVER_POLL).await;
    }
}

/// A bound node: its peer port serves already (other nodes' Raft messages reach its replicas),
/// its client port waits for [`run`](Server::run). Binding first lets callers learn the ports
/// of `127.0.0.1:0` before serving.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    peer_addr: SocketAddr,
    peer: PeerServing,
    node: Arc<Node>,
}

/// The peer service, running on its own task from [`Server::bind`] on.
#[derive(Debug)]
struct PeerServing {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl PeerServing {
    /// Serves the peer service over `local` on `listener` until stopped; connections that
    /// stall close after `timeouts`.
    fn start(
        listener: TcpListener,
        local: Arc<dyn Local>,
        timeouts: leakbloom_net::Timeouts,
    ) -> PeerServing {
        let (stop, mut stopped) = watch::channel(false);
        let incoming = leakbloom_net::Incoming::new(listener, timeouts);
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .max_frame_size(Some(HTTP2_MAX_FRAME_SIZE))
                .add_service(PeerService::server(local))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.wait_for(|&stop| stop).await;
                }),
        );
        PeerServing { stop, task }
    }

    /// Stops serving once in-flight calls have finished.
    async fn stop(self) -> Result<(), tonic::transport::Error> {
        self.stop.send_replace(true);
        self.task.await.expect("the peer server task panicked")
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An address could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which address.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The node could not open its data or start its replicas.
    #[error(transparent)]
    Node(#[from] Error),
}

impl Server {
    /// Binds the client and peer addresses from `config`, opens the data directory and starts
    /// the node's replicas (their groups begin electing at once; the peer service answers once
    /// [`run`](Self::run) is called). With no `peers`, the node is a one-node cluster at its
    /// bound peer address.
    pub async fn bind(mut config: Config) -> Result<Server, StartError> {
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let listener = bind("client API", config.listen).await?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(bind("metrics", addr).await?),
            None => None,
        };
        let peer_listener = bind("peer API", config.peer_listen).await?;
        let peer_addr = peer_listener.local_addr().expect("a bound listener");
        if config.peers.is_empty() {
            config.peer_listen = peer_addr;
        }
        let address = config.advertised(listener.local_addr().expect("a bound listener"));
        config.advertise = Some(address.clone());
        let record = config.record().map_err(Error::from)?;
        let new_directory = !record.check(&config.data_dir).map_err(Error::from)?;
        let slot = Arc::new(Slot::new(config.id, address, new_directory));
        let peer = PeerServing::start(peer_listener, slot.clone(), config.connection_timeouts());
        let opened = async {
            let peers = Arc::new(Peers::new(config.id, config.members()));
            let held_elsewhere = if new_directory {
                discover(&config, &peers).await
            } else {
                Vec::new()
            };
            let opening = peers.clone();
            let node =
                tokio::task::spawn_blocking(move || Node::open(config, opening, &held_elsewhere))
                    .await
                    .expect("opening the node panicked")?;
            let node = Arc::new(node);
            let local: Arc<dyn Local> = node.clone();
            peers.set_local(Arc::downgrade(&local));
            slot.set(local);
            Ok::<_, Error>(node)
        };
        match opened.await {
            Ok(node) => Ok(Server {
                listener,
                metrics_listener,
                peer_addr,
                peer,
                node,
            }),
            Err(error) => {
                let _ = peer.stop().await;
                Err(error.into())
            }
        }
    }

    /// The client API address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The peer API address actually bound.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The metrics address actually bound, when the config asks for one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    /// The node behind the server.
    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests, stops the
    /// replicas (closing their stores) and returns.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let metrics = Arc::new(Metrics::new());
        let metrics_addr = self.metrics_addr();
        let metrics_task = self.metrics_listener.take().map(|listener| {
            tokio::spawn(metrics::serve(listener, self.node.clone(), metrics.clone()))
        });
        // Requests as large as the batch limit needs, replies as large as a check may be: a
        // larger request is refused before it is read.
        let lookup = LookupServer::new(LookupService::new(self.node.clone(), metrics))
            .max_decoding_message_size(leakbloom_client::max_request_bytes(
                self.node.config().max_batch,
            ))
            .max_encoding_message_size(leakbloom_client::MAX_REPLY_BYTES);

        // The server as a whole ("") is SERVING while the process runs (liveness); the Lookup
        // service only while the node's replicas can serve (readiness).
        let (health_reporter, health) = tonic_health::server::health_reporter();
        let health_task = tokio::spawn(watch_health(self.node.clone(), health_reporter));

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(leakbloom_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .expect("leakbloom's descriptors are valid");
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .expect("leakbloom's descriptors are valid");

        tracing::info!(
            node = self.node.id(),
            listen = %self.local_addr(),
            peer_listen = %self.peer_addr(),
            metrics_listen = ?metrics_addr,
            shards = self.node.config().shards,
            "node serving"
        );
        // TCP_NODELAY, and connections that stall are closed (see leakbloom_net).
        let incoming =
            leakbloom_net::Incoming::new(self.listener, self.node.config().connection_timeouts());
        // Clients stop first; the peer service serves on until their in-flight requests (which
        // need other nodes' votes and acknowledgements) have finished.
        let client = tonic::transport::Server::builder()
            .max_frame_size(Some(HTTP2_MAX_FRAME_SIZE))
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(lookup)
            .add_service(ClusterServer::new(ClusterService::new(self.node.clone())))
            .serve_with_incoming_shutdown(incoming, shutdown);
        // Replicas rebuilt from peers (a lost disk) ask their leaders to re-add them.
        let rebuild = tokio::spawn(self.node.clone().rebuild());
        let capacity = tokio::spawn(self.node.clone().watch_capacity(CAPACITY_WATCH));
        // Limits reported to the catalog; interrupted set changes finished.
        let maintain = tokio::spawn(self.node.clone().maintain());
        let client = client.await;
        let peer = self.peer.stop().await;
        rebuild.abort();
        capacity.abort();
        maintain.abort();
        health_task.abort();
        if let Some(task) = metrics_task {
            task.abort();
        }
        self.node.shutdown().await;
        client.and(peer)
    }
}
