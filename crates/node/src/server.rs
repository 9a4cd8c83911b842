//! Serving a node over gRPC on two real TCP sockets, each a [`leakbloom_net::server::Port`]: the
//! client address (`listen`: the public services `Lookup` and `Cluster`, plus `grpc.health.v1`
//! and server reflection v1 and v1alpha, for grpcurl 1.8, of those only) and the peer address
//! (`peer_listen`: only the internal [`crate::peer`] service, for other nodes); and, when
//! configured, Prometheus metrics over HTTP on `metrics_listen` ([`crate::metrics`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leakbloom_net::server::{Port, Settings};
use leakbloom_proto::v1::cluster_server::ClusterServer;
use leakbloom_proto::v1::lookup_server::LookupServer;
use leakbloom_proto::v1::nodes_server::NodesServer;
use leakbloom_raft::GroupId;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::discovery::discover;
use crate::error::Error;
use crate::metrics::{self, Metrics};
use crate::node::{Health, Node};
use crate::peer::{Local, PeerService, Peers, Slot};
use crate::service::{ClusterService, LookupService, NodesService};

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
                Health::Stalled { .. }
                | Health::Rebuilding { .. }
                | Health::Left
                | Health::Joining => true,
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
        let port = Port::new(Settings {
            connections: timeouts,
            ..Settings::default()
        })
        .add_service(PeerService::server(local));
        let task = tokio::spawn(port.run(listener, async move {
            let _ = stopped.wait_for(|&stop| stop).await;
        }));
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
        if config.peers.contains_key(&config.id) {
            // One of the nodes that bootstrap the cluster: it does not join.
            config.join = None;
        }
        let peer_address = config.peer_advertised(peer_addr);
        config.peer_advertise = Some(peer_address.clone());
        crate::join::prepare(&mut config, &peer_address, &address).await?;
        let record = config.record().map_err(Error::from)?;
        let new_directory = !record.check(&config.data_dir).map_err(Error::from)?;
        let slot = Arc::new(Slot::new(config.id, address, new_directory));
        let peer = PeerServing::start(peer_listener, slot.clone(), config.connection_timeouts());
        let opened = async {
            let peers = Arc::new(Peers::new(config.id, config.members()));
            let held_elsewhere = if new_directory && config.join.is_none() {
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
            .max_decoding_message_size(leakbloom_cluster::max_request_bytes(
                self.node.config().max_batch,
            ))
            .max_encoding_message_size(leakbloom_cluster::MAX_REPLY_BYTES);

        // The server as a whole ("") is SERVING while the process runs (liveness); the Lookup
        // service only while the node's replicas can serve (readiness).
        let (port, health_reporter) = Port::new(Settings {
            connections: self.node.config().connection_timeouts(),
            ..Settings::default()
        })
        .health();
        let health_task = tokio::spawn(watch_health(self.node.clone(), health_reporter));
        // Only public services, and reflection of those only.
        let port = port
            .reflection(leakbloom_proto::PUBLIC_DESCRIPTOR_SET)
            .add_service(lookup)
            .add_service(ClusterServer::new(ClusterService::new(self.node.clone())))
            .add_service(NodesServer::new(NodesService::new(self.node.clone())));

        tracing::info!(
            node = self.node.id(),
            listen = %self.local_addr(),
            peer_listen = %self.peer_addr(),
            metrics_listen = ?metrics_addr,
            shards = self.node.config().shards,
            "node serving"
        );
        // Clients stop first; the peer service serves on until their in-flight requests (which
        // need other nodes' votes and acknowledgements) have finished.
        let client = port.run(self.listener, shutdown);
        // Replicas rebuilt from peers (a lost disk) ask their leaders to re-add them.
        let rebuild = tokio::spawn(self.node.clone().rebuild());
        let capacity = tokio::spawn(self.node.clone().watch_capacity(CAPACITY_WATCH));
        // Limits reported to the catalog; interrupted set changes finished.
        let maintain = tokio::spawn(self.node.clone().maintain());
        let host = tokio::spawn(self.node.clone().host());
        let place = tokio::spawn(self.node.clone().place());
        let client = client.await;
        let peer = self.peer.stop().await;
        rebuild.abort();
        capacity.abort();
        maintain.abort();
        host.abort();
        place.abort();
        health_task.abort();
        if let Some(task) = metrics_task {
            task.abort();
        }
        self.node.shutdown().await;
        client.and(peer)
    }
}
