//! Serving a router: `leakbloom.v1.Lookup` and `leakbloom.v1.Nodes` with `grpc.health.v1` and server reflection (v1 and
//! v1alpha, for grpcurl 1.8) of those only, on the client address (a
//! [`leakbloom_net::server::Port`]), and optionally Prometheus metrics.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use leakbloom_net::server::{Port, Settings};
use leakbloom_proto::v1::lookup_server::LookupServer;
use leakbloom_proto::v1::nodes_server::NodesServer;
use tokio::net::TcpListener;

use crate::metrics::{self, Metrics};
use crate::router::Router;
use crate::service::{RouterNodes, RouterService};

/// How a router runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address of the client API.
    pub listen: SocketAddr,
    /// Client addresses of some nodes (`HOST:PORT`); the rest are learned from them.
    pub nodes: Vec<String>,
    /// Address of the Prometheus endpoint; not served when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// Deadline of a call whose client sets none (and the most a client may ask for).
    pub timeout: Duration,
    /// Most keys per request (the nodes' `max_batch` applies when smaller); sizes the largest
    /// request the router reads and sends.
    pub max_batch: usize,
    /// When client connections that stall are closed.
    pub connections: leakbloom_net::Timeouts,
    /// How much longer than the recent p99 of node calls an any-replica check part waits for
    /// its node before it is also sent to another replica (a hedged read); zero: never hedged.
    pub hedge: Duration,
}

/// Why a router could not start.
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
    /// No node address was given.
    #[error("no node addresses: give --nodes HOST:PORT[,HOST:PORT...] (node client addresses)")]
    NoNodes,
}

/// A bound router; serves on [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
}

impl Server {
    /// Binds the addresses of `config`.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        if config.nodes.is_empty() {
            return Err(StartError::NoNodes);
        }
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
        Ok(Server {
            config,
            listener,
            metrics_listener,
        })
    }

    /// The client API address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The metrics address actually bound, when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    /// Serves until `shutdown` completes, then finishes in-flight calls. Health says
    /// `leakbloom.v1.Lookup` is NOT_SERVING until the first shard map is learned; the server
    /// as a whole (service "") is SERVING from the start.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let metrics = Arc::new(Metrics::new());
        let router = Arc::new(Router::new(
            self.config.nodes.clone(),
            self.config.hedge,
            metrics.clone(),
            self.config.max_batch,
        ));
        let local_addr = self.local_addr();
        let metrics_addr = self.metrics_addr();
        let metrics_task = self
            .metrics_listener
            .map(|listener| tokio::spawn(metrics::serve(listener, metrics.clone())));

        let (port, health_reporter) = Port::new(Settings {
            connections: self.config.connections,
            ..Settings::default()
        })
        .health();
        // The server as a whole ("") is SERVING while the process runs (liveness); the Lookup
        // service only once the shard map is known (readiness).
        health_reporter
            .set_not_serving::<LookupServer<RouterService>>()
            .await;
        let ready = {
            let reporter = health_reporter.clone();
            move || {
                tokio::spawn(async move {
                    reporter.set_serving::<LookupServer<RouterService>>().await;
                    tracing::info!("shard map learned: serving");
                });
            }
        };
        let refresh = tokio::spawn(router.clone().run_refresh(ready));

        // A request larger than the batch limit needs is refused before it is read.
        let nodes = NodesServer::new(RouterNodes::new(router.clone(), self.config.timeout));
        let lookup = LookupServer::new(RouterService::new(router, metrics, self.config.timeout))
            .max_decoding_message_size(leakbloom_cluster::max_request_bytes(self.config.max_batch))
            .max_encoding_message_size(leakbloom_cluster::MAX_REPLY_BYTES);
        // Lookup and Nodes of the public services, and reflection of those only.
        let port = port
            .reflection(leakbloom_proto::PUBLIC_DESCRIPTOR_SET)
            .add_service(lookup)
            .add_service(nodes);

        tracing::info!(
            listen = %local_addr,
            nodes = ?self.config.nodes,
            hedge_ms = self.config.hedge.as_millis() as u64,
            metrics_listen = ?metrics_addr,
            "router serving"
        );
        let served = port.run(self.listener, shutdown).await;
        refresh.abort();
        if let Some(task) = metrics_task {
            task.abort();
        }
        served
    }
}
