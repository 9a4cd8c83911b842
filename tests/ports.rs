//! Which services each port serves and lists, end to end over real gRPC on 127.0.0.1:0: a
//! node's client port and a router serve and reflect only the public API (`leakbloom.v1`) with
//! health and reflection; a node's peer port serves only the internal `Peer` service.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use leakbloom_client::DEFAULT_MAX_BATCH;
use leakbloom_proto::internal::v1::peer_client::PeerClient;
use leakbloom_proto::internal::v1::StatusRequest;
use leakbloom_proto::v1::lookup_client::LookupClient;
use leakbloom_proto::v1::ListSetsRequest;
use leakbloom_tests::TestNode;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

/// Health and reflection, listed on every client port.
const SERVING_AIDS: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The services `addr` lists through reflection v1alpha, as `grpcurl list` (1.8) asks.
async fn listed(addr: SocketAddr) -> Result<BTreeSet<String>, Status> {
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let reply = replies.message().await?.expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    Ok(list.service.into_iter().map(|s| s.name).collect())
}

/// Health and reflection, and `public`.
fn client_port(public: &[&str]) -> BTreeSet<String> {
    SERVING_AIDS
        .iter()
        .chain(public)
        .map(|name| name.to_string())
        .collect()
}

/// The peer service's `Status` at `addr`.
async fn peer_status(addr: SocketAddr) -> Result<(), Status> {
    PeerClient::new(channel(addr).await)
        .status(StatusRequest {})
        .await
        .map(drop)
}

#[tokio::test]
async fn a_node_client_port_lists_only_the_public_services() {
    let node = TestNode::start_default().await;
    assert_eq!(
        listed(node.addr).await.unwrap(),
        client_port(&[
            "leakbloom.v1.Cluster",
            "leakbloom.v1.Lookup",
            "leakbloom.v1.Nodes"
        ])
    );
    // Not listed, and not served either.
    let error = peer_status(node.addr).await.unwrap_err();
    assert_eq!(error.code(), Code::Unimplemented, "{error:?}");
    node.stop().await;
}

#[tokio::test]
async fn a_router_lists_only_the_lookup_and_nodes_services() {
    let node = TestNode::start_default().await;
    let router = leakbloom_router::Server::bind(leakbloom_router::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        nodes: vec![node.addr.to_string()],
        metrics_listen: None,
        timeout: Duration::from_secs(10),
        max_batch: DEFAULT_MAX_BATCH,
        connections: leakbloom_net::Timeouts::default(),
        hedge: Duration::ZERO,
    })
    .await
    .unwrap();
    let addr = router.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(router.run(async {
        let _ = stopped.await;
    }));

    assert_eq!(
        listed(addr).await.unwrap(),
        client_port(&["leakbloom.v1.Lookup", "leakbloom.v1.Nodes"])
    );
    let error = peer_status(addr).await.unwrap_err();
    assert_eq!(error.code(), Code::Unimplemented, "{error:?}");

    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    node.stop().await;
}

#[tokio::test]
async fn a_node_peer_port_serves_only_the_peer_service() {
    let node = TestNode::start_default().await;
    peer_status(node.peer).await.unwrap();
    // Neither the public API nor reflection nor health.
    let lookup = LookupClient::new(channel(node.peer).await)
        .list_sets(ListSetsRequest {})
        .await
        .unwrap_err();
    assert_eq!(lookup.code(), Code::Unimplemented, "{lookup:?}");
    let reflection = listed(node.peer).await.unwrap_err();
    assert_eq!(reflection.code(), Code::Unimplemented, "{reflection:?}");
    let health = tonic_health::pb::health_client::HealthClient::new(channel(node.peer).await)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(health.code(), Code::Unimplemented, "{health:?}");
    node.stop().await;
}
