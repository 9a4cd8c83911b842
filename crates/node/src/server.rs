//! Serving a node over gRPC on two real TCP sockets: the client address (`listen`: the Lookup
//! service plus `grpc.health.v1` and server reflection v1 and v1alpha for grpcurl 1.8) and the
//! peer address (`peer_listen`: the [`crate::peer`] service, for other nodes only).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use leakbloom_proto::v1::lookup_server::LookupServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::error::Error;
use crate::node::Node;
use crate::peer::{Local, PeerService, Peers};
use crate::service::LookupService;

/// HTTP/2 frame size on the server: 256 KiB instead of 16 KiB. h2 writes every frame with its
/// own syscall, so large check batches were measured 1.7x faster with it.
pub const HTTP2_MAX_FRAME_SIZE: u32 = 256 << 10;

/// Room in a gRPC message beyond the keys themselves (field tags, set names).
const MESSAGE_OVERHEAD: usize = 64 << 10;

/// A bound, not yet serving, node. Binding first lets callers learn the ports of
/// `127.0.0.1:0` before serving.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    peer_listener: TcpListener,
    node: Arc<Node>,
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
        let peer_listener = bind("peer API", config.peer_listen).await?;
        if config.peers.is_empty() {
            config.peer_listen = peer_listener.local_addr().expect("a bound listener");
        }
        let peers = Arc::new(Peers::new(config.id, config.members()));
        let opening = peers.clone();
        let node = tokio::task::spawn_blocking(move || Node::open(config, opening))
            .await
            .expect("opening the node panicked")?;
        let node = Arc::new(node);
        let local: Arc<dyn Local> = node.clone();
        peers.set_local(Arc::downgrade(&local));
        Ok(Server {
            listener,
            peer_listener,
            node,
        })
    }

    /// The client API address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The peer API address actually bound.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The node behind the server.
    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests, stops the
    /// replicas (closing their stores) and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let max_batch = self.node.config().max_batch;
        let max_message = max_batch * leakbloom_filter::KEY_LEN + MESSAGE_OVERHEAD;
        let lookup = LookupServer::new(LookupService::new(self.node.clone()))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);

        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<LookupServer<LookupService>>()
            .await;

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
            shards = self.node.config().shards,
            "node serving"
        );
        // Small replies must not wait for Nagle's algorithm: with it on, a forwarding hop
        // was measured at ~1 K requests/s instead of ~20 K.
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let peer_incoming = TcpIncoming::from(self.peer_listener).with_nodelay(Some(true));
        let local: Arc<dyn Local> = self.node.clone();
        // Clients stop first; the peer service serves on until their in-flight requests (which
        // need other nodes' votes and acknowledgements) have finished.
        let (stop_peer, mut peer_stopped) = tokio::sync::watch::channel(false);
        let peer = tonic::transport::Server::builder()
            .max_frame_size(Some(HTTP2_MAX_FRAME_SIZE))
            .add_service(PeerService::server(local))
            .serve_with_incoming_shutdown(peer_incoming, async move {
                let _ = peer_stopped.wait_for(|&stop| stop).await;
            });
        let client = async move {
            let served = tonic::transport::Server::builder()
                .max_frame_size(Some(HTTP2_MAX_FRAME_SIZE))
                .add_service(health)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(lookup)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
            stop_peer.send_replace(true);
            served
        };
        // Replicas rebuilt from peers (a lost disk) ask their leaders to re-add them.
        let rebuild = tokio::spawn(self.node.clone().rebuild());
        let (client, peer) = tokio::join!(client, peer);
        rebuild.abort();
        self.node.shutdown().await;
        client.and(peer)
    }
}
