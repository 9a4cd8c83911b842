//! The peer service and transport over real sockets: three nodes on `127.0.0.1:0`, each with
//! an on-disk Raft store, one group (a byte register) and a `PeerService` server. Elections and
//! commits over gRPC, forwarding and leader hints, shard checks, a chunked snapshot to a replica
//! that fell behind the leader's compacted log, a node killed outright, and garbage on the peer
//! port.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use leakbloom_node::peer::{Local, PeerService, Peers, MAX_MESSAGE_BYTES};
use leakbloom_node::Error;
use leakbloom_proto::internal::v1::peer_client::PeerClient;
use leakbloom_proto::internal::v1::peer_server::{Peer, PeerServer};
use leakbloom_proto::internal::v1::status_response::State;
use leakbloom_proto::internal::v1::{
    ProposeBatchRequest, ProposeBatchResponse, ProposeRequest, ProposeResponse, RaftAck, RaftBatch,
    RaftMessage, RejoinRequest, RejoinResponse, ShardCheckRequest, ShardCheckResponse, SnapshotAck,
    SnapshotChunk, StatusRequest, StatusResponse,
};
use leakbloom_raft::{
    ApplyError, GroupHandle, GroupId, GroupNode, NodeConfig, NodeId, Poller, StateMachine, Store,
};
use leakbloom_testkit::{eventually, scratch, within};
use raft::StateRole;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming};

/// The one group every node hosts.
const GROUP: GroupId = 7;
/// A fast clock keeps elections (10-20 ticks) around 100-200 ms, so the tests stay short.
const TICK: Duration = Duration::from_millis(10);
/// How long any awaited condition may take before the test fails: many elections' worth.
const PATIENCE: Duration = Duration::from_secs(10);
const NODES: [NodeId; 3] = [1, 2, 3];

/// A byte register: commands are appended; the result is the new length. Records the size of
/// every snapshot it restores, so a test can tell that a snapshot arrived.
#[derive(Debug, Default)]
struct Register {
    bytes: Vec<u8>,
    restored: Vec<usize>,
}

/// A [`Register`] the test can inspect while the group's thread applies to it.
#[derive(Debug, Clone, Default)]
struct Probe(Arc<Mutex<Register>>);

impl Probe {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().bytes.clone()
    }

    fn restored(&self) -> Vec<usize> {
        self.0.lock().unwrap().restored.clone()
    }
}

impl StateMachine for Probe {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Result<Vec<u8>, ApplyError> {
        let mut register = self.0.lock().unwrap();
        register.bytes.extend_from_slice(command);
        Ok((register.bytes.len() as u64).to_be_bytes().to_vec())
    }

    fn snapshot(&self) -> Vec<u8> {
        self.bytes()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ApplyError> {
        let mut register = self.0.lock().unwrap();
        register.bytes = snapshot.to_vec();
        register.restored.push(snapshot.len());
        Ok(())
    }
}

/// What the peer service sees of a test node: its one replica, and a check that answers the
/// node's id for every set (so a test sees which node answered), or `NOT_FOUND` for a set
/// named "missing".
#[derive(Debug)]
struct TestLocal {
    id: NodeId,
    replica: RwLock<Option<GroupHandle>>,
}

#[tonic::async_trait]
impl Local for TestLocal {
    fn id(&self) -> NodeId {
        self.id
    }

    fn replica(&self, group: GroupId) -> Option<GroupHandle> {
        if group != GROUP {
            return None;
        }
        self.replica.read().unwrap().clone()
    }

    async fn check_shard(&self, request: ShardCheckRequest) -> Result<ShardCheckResponse, Error> {
        if let Some(set) = request.sets.iter().find(|set| *set == "missing") {
            return Err(Error::SetNotFound(set.clone()));
        }
        let answer = Bytes::from(vec![self.id as u8]);
        Ok(ShardCheckResponse {
            present: request.sets.iter().map(|_| answer.clone()).collect(),
        })
    }

    async fn admit(&self, _group: GroupId, _command: &[u8]) -> Result<(), Error> {
        Ok(())
    }

    fn status(&self) -> StatusResponse {
        let replica = self.replica.read().unwrap();
        StatusResponse {
            node: self.id,
            state: State::Serving.into(),
            committed: replica.iter().map(|r| (r.group(), r.committed())).collect(),
            ..StatusResponse::default()
        }
    }
}

/// The peer service, refusing the next `refuse_snapshots` snapshot streams: a failed delivery
/// the sender must report to its group.
#[derive(Debug, Clone)]
struct Gate {
    service: PeerService,
    refuse_snapshots: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Peer for Gate {
    async fn raft(&self, request: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        self.service.raft(request).await
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let refuse = self
            .refuse_snapshots
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if refuse.is_ok() {
            return Err(Status::unavailable("snapshot refused by the test"));
        }
        self.service.snapshot(request).await
    }

    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        self.service.propose(request).await
    }

    async fn propose_batch(
        &self,
        request: Request<ProposeBatchRequest>,
    ) -> Result<Response<ProposeBatchResponse>, Status> {
        self.service.propose_batch(request).await
    }

    async fn check(
        &self,
        request: Request<ShardCheckRequest>,
    ) -> Result<Response<ShardCheckResponse>, Status> {
        self.service.check(request).await
    }

    async fn rejoin(
        &self,
        request: Request<RejoinRequest>,
    ) -> Result<Response<RejoinResponse>, Status> {
        self.service.rejoin(request).await
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.service.status(request).await
    }
}

/// One node: its server, its transport and its replica.
struct Member {
    local: Arc<TestLocal>,
    refuse_snapshots: Arc<AtomicUsize>,
    peers: Arc<Peers>,
    probe: Probe,
    /// The raft loop hosting the replica, while it runs.
    poller: Option<Poller>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

struct Cluster {
    dir: tempfile::TempDir,
    config: NodeConfig,
    addresses: BTreeMap<NodeId, String>,
    members: BTreeMap<NodeId, Member>,
}

impl Cluster {
    /// Three nodes serving the peer service, each running its replica of [`GROUP`].
    async fn start(config: NodeConfig) -> Cluster {
        // Bind first, so every node's address is known before any transport is built.
        let mut listeners = BTreeMap::new();
        for id in NODES {
            listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addresses: BTreeMap<NodeId, String> = listeners
            .iter()
            .map(|(&id, listener)| (id, listener.local_addr().unwrap().to_string()))
            .collect();
        let mut cluster = Cluster {
            // tmpfs when there is one: the tests check the transport, not the disk.
            dir: scratch(),
            config,
            addresses,
            members: BTreeMap::new(),
        };
        for (id, listener) in listeners {
            let local = Arc::new(TestLocal {
                id,
                replica: RwLock::new(None),
            });
            let peers = Arc::new(Peers::new(id, cluster.addresses.clone()));
            let as_local: Arc<dyn Local> = local.clone();
            peers.set_local(Arc::downgrade(&as_local));
            let (stop, stopped) = oneshot::channel::<()>();
            let refuse_snapshots = Arc::new(AtomicUsize::new(0));
            let gate = Gate {
                service: PeerService::new(as_local),
                refuse_snapshots: refuse_snapshots.clone(),
            };
            // As `PeerService::server` does, for the wrapper.
            let gate = PeerServer::new(gate)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let server = tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(gate)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    }),
            );
            cluster.members.insert(
                id,
                Member {
                    local,
                    refuse_snapshots,
                    peers,
                    probe: Probe::default(),
                    poller: None,
                    stop: Some(stop),
                    server: Some(server),
                },
            );
            cluster.start_replica(id);
        }
        cluster
    }

    fn store_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// Starts (or restarts) node `id`'s replica from its directory, with a fresh register.
    fn start_replica(&mut self, id: NodeId) {
        let store = Store::open(self.store_dir(id)).unwrap();
        let member = self.members.get_mut(&id).unwrap();
        member.probe = Probe::default();
        let node = GroupNode::new(
            id,
            store.group(GROUP).unwrap(),
            &NODES,
            member.probe.clone(),
            self.config.clone(),
        )
        .unwrap();
        let poller = Poller::start(&format!("n{id}"), member.peers.clone(), TICK);
        let handle = poller.add(node);
        member.poller = Some(poller);
        *member.local.replica.write().unwrap() = Some(handle);
    }

    /// Stops node `id`'s replica (its server keeps answering, without the group).
    async fn stop_replica(&self, id: NodeId) {
        let handle = self.members[&id].local.replica.write().unwrap().take();
        let handle = handle.unwrap();
        within("a replica to stop", PATIENCE, handle.shutdown()).await;
        // The loop holds the store until it stops (a snapshot may be in writing).
        let poller = self.members[&id].poller.clone().unwrap();
        within("a raft loop to stop", PATIENCE, poller.shutdown()).await;
    }

    /// Stops node `id` outright: its replica, its server, its transport.
    async fn kill(&mut self, id: NodeId) {
        self.stop_replica(id).await;
        let mut member = self.members.remove(&id).unwrap();
        let _ = member.stop.take().unwrap().send(());
        let served = within("a server to stop", PATIENCE, member.server.take().unwrap()).await;
        served.unwrap().unwrap();
    }

    fn replicas(&self) -> Vec<GroupHandle> {
        self.members
            .values()
            .filter_map(|m| m.local.replica.read().unwrap().clone())
            .collect()
    }

    fn peers(&self, id: NodeId) -> &Peers {
        &self.members[&id].peers
    }

    /// The leader every running replica agrees on.
    async fn leader(&self) -> NodeId {
        eventually("every replica knows one leader", PATIENCE, async || {
            let replicas = self.replicas();
            let leader = replicas
                .iter()
                .find(|h| h.leadership().role == StateRole::Leader)?
                .id();
            replicas
                .iter()
                .all(|h| h.leadership().leader == Some(leader))
                .then_some(leader)
        })
        .await
    }

    /// Waits until every running replica applied at least `index`, all the same entries, and
    /// returns their (equal) register.
    async fn converged(&self, index: u64) -> Vec<u8> {
        eventually(
            "the replicas applied the same entries",
            PATIENCE,
            async || {
                let replicas = self.replicas();
                let applied = replicas[0].applied();
                if applied < index || replicas.iter().any(|h| h.applied() != applied) {
                    return None;
                }
                let registers: Vec<Vec<u8>> = replicas
                    .iter()
                    .map(|h| self.members[&h.id()].probe.bytes())
                    .collect();
                // Re-check: an entry may have been applied between the reads.
                if replicas.iter().any(|h| h.applied() != applied) {
                    return None;
                }
                for (handle, register) in replicas.iter().zip(&registers) {
                    assert!(
                        register == &registers[0],
                        "node {} diverged at index {applied}",
                        handle.id()
                    );
                }
                Some(registers[0].clone())
            },
        )
        .await
    }

    fn applied(&self, id: NodeId) -> u64 {
        self.members[&id]
            .local
            .replica
            .read()
            .unwrap()
            .as_ref()
            .unwrap()
            .applied()
    }

    async fn shutdown(mut self) {
        for id in self.members.keys().copied().collect::<Vec<_>>() {
            self.kill(id).await;
        }
    }
}

/// Proposes `command` through `via`'s transport to whichever node leads, following leader
/// hints, as the node does.
async fn propose(cluster: &Cluster, via: NodeId, command: &[u8]) -> Bytes {
    let start = Instant::now();
    let mut target = cluster.leader().await;
    loop {
        let peers = cluster.peers(via);
        match peers
            .propose(target, GROUP, Bytes::copy_from_slice(command))
            .await
        {
            Ok(result) => return result,
            Err(Error::Unavailable { leader, .. }) if start.elapsed() < PATIENCE => {
                tokio::time::sleep(TICK).await;
                target = match leader {
                    Some(leader) => leader,
                    None => cluster.leader().await,
                };
            }
            Err(error) => panic!("proposal failed: {error}"),
        }
    }
}

fn length(result: &[u8]) -> u64 {
    u64::from_be_bytes(result.try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_over_grpc_and_answers_with_leader_hints() {
    let cluster = Cluster::start(NodeConfig::default()).await;
    let leader = cluster.leader().await;
    let follower = NODES.into_iter().find(|&id| id != leader).unwrap();

    // Forwarded to the leader from every node (the leader's own call loops back over gRPC).
    for (i, via) in NODES.into_iter().enumerate() {
        let result = within(
            "a forwarded proposal",
            PATIENCE,
            cluster
                .peers(via)
                .propose(leader, GROUP, Bytes::from(vec![b'a' + i as u8; 3])),
        )
        .await
        .unwrap();
        assert_eq!(length(&result), 3 * (i as u64 + 1));
    }
    let register = cluster.converged(cluster.applied(leader)).await;
    assert_eq!(register, b"aaabbbccc");

    // A follower answers UNAVAILABLE with the leader as its hint.
    let error = cluster
        .peers(leader)
        .propose(follower, GROUP, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    match &error {
        Error::Unavailable {
            shard: 7,
            leader: Some(hint),
            reason,
        } => {
            assert_eq!(*hint, leader);
            assert_eq!(reason, &format!("node {follower} does not lead it"));
        }
        other => panic!("expected UNAVAILABLE with a hint, got {other:?}"),
    }
    // A group the node does not host: UNAVAILABLE, naming the node.
    let error = cluster
        .peers(follower)
        .propose(leader, 8, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Unavailable { shard: 8, leader: None, reason }
            if reason.contains(&format!("node {leader} holds no running replica"))),
        "{error:?}"
    );
    assert_eq!(cluster.converged(cluster.applied(leader)).await, register);

    // Checks reach the node asked, and its errors come back typed.
    let request = ShardCheckRequest {
        generations: Vec::new(),
        shard: GROUP,
        sets: vec!["a".into(), "b".into()],
        keys: Bytes::from(vec![0; 64]),
        consistency: 0,
    };
    let answer = cluster.peers(1).check(3, request.clone()).await.unwrap();
    assert_eq!(answer.present, vec![Bytes::from_static(&[3]); 2]);
    let missing = ShardCheckRequest {
        sets: vec!["a".into(), "missing".into()],
        ..request
    };
    let error = cluster.peers(1).check(2, missing).await.unwrap_err();
    assert!(
        matches!(&error, Error::SetNotFound(set) if set == "missing"),
        "{error:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_peer_port_is_dropped_not_fatal() {
    let cluster = Cluster::start(NodeConfig::default()).await;
    let leader = cluster.leader().await;
    let mut client = PeerClient::connect(format!("http://{}", cluster.addresses[&leader]))
        .await
        .unwrap();

    // Undecodable, misaddressed and unknown-group messages are skipped; the call succeeds.
    let heartbeat = raft::eraftpb::Message {
        msg_type: raft::eraftpb::MessageType::MsgHeartbeat,
        to: 99,
        from: 2,
        ..Default::default()
    };
    let encoded = Bytes::from(protobuf::Message::write_to_bytes(&heartbeat).unwrap());
    let batch = RaftBatch {
        from: 2,
        messages: vec![
            RaftMessage {
                group: GROUP,
                message: Bytes::from_static(&[0xff, 0xff, 0xff, 0x0f, 0x01]),
            },
            RaftMessage {
                group: GROUP,
                message: encoded.clone(),
            },
            RaftMessage {
                group: 12345,
                message: encoded,
            },
        ],
    };
    client.raft(batch).await.unwrap();

    // A snapshot stream that does not start with a snapshot message is refused with a status.
    let chunks = vec![SnapshotChunk {
        group: GROUP,
        message: Bytes::from_static(b"\x08\x01"),
        data: Bytes::from_static(b"data"),
    }];
    let status = client
        .snapshot(tokio_stream::iter(chunks))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let status = client
        .snapshot(tokio_stream::iter(Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");

    // The group still commits.
    let result = propose(&cluster, leader, b"ok").await;
    assert_eq!(length(&result), 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_catches_up_by_chunked_snapshot() {
    let config = NodeConfig {
        // Compact often, so the leader's log soon starts past anything the stopped replica has.
        snapshot_entries: 3,
        ..NodeConfig::default()
    };
    let mut cluster = Cluster::start(config).await;
    let leader = cluster.leader().await;
    let lagging = NODES.into_iter().find(|&id| id != leader).unwrap();
    propose(&cluster, leader, b"before").await;
    cluster.converged(cluster.applied(leader)).await;

    // The replica stops (its server stays up, so the leader's snapshot attempts fail and are
    // reported); meanwhile 12 MiB are committed without it and the log is compacted past it.
    // Its disk is kept: a replica that lost its disk must not rejoin under its old id (raft-rs
    // would panic on a commit index beyond its log); it needs a membership change.
    cluster.stop_replica(lagging).await;
    let mut expected = b"before".to_vec();
    for i in 0..12u8 {
        // 1 MiB of bytes that differ by command and position.
        let command: Vec<u8> = (0..1u32 << 20)
            .map(|j| (j.wrapping_mul(31) as u8) ^ i)
            .collect();
        expected.extend_from_slice(&command);
        let result = propose(&cluster, leader, &command).await;
        assert_eq!(length(&result), expected.len() as u64);
    }

    // Restarted, it can only catch up by a snapshot of over 4 MiB (many chunks). Its server
    // refuses the first one: the leader hears of the failure and sends another.
    let refusals = cluster.members[&lagging].refuse_snapshots.clone();
    refusals.store(1, Ordering::SeqCst);
    cluster.start_replica(lagging);
    let register = cluster.converged(cluster.applied(leader)).await;
    assert!(
        register == expected,
        "the register differs from what was committed"
    );
    let probe = &cluster.members[&lagging].probe;
    assert!(probe.bytes() == expected);
    let restored = probe.restored();
    assert!(
        restored.iter().any(|&size| size > 4 << 20),
        "node {lagging} caught up without a large snapshot (restored sizes {restored:?})"
    );
    assert_eq!(
        refusals.load(Ordering::SeqCst),
        0,
        "no snapshot was refused"
    );

    // And it follows the log as usual afterwards.
    propose(&cluster, lagging, b"after").await;
    expected.extend_from_slice(b"after");
    assert!(cluster.converged(cluster.applied(leader)).await == expected);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_leaves_the_other_two_committing() {
    let mut cluster = Cluster::start(NodeConfig::default()).await;
    let killed = cluster.leader().await;
    propose(&cluster, killed, b"one").await;
    cluster.converged(cluster.applied(killed)).await;

    // Kill the leader outright: the other two elect a new one and commit without it.
    cluster.kill(killed).await;
    let survivor = NODES.into_iter().find(|&id| id != killed).unwrap();
    let leader = cluster.leader().await;
    assert_ne!(leader, killed);
    for _ in 0..20 {
        propose(&cluster, survivor, b"+").await;
    }
    let register = cluster.converged(cluster.applied(leader)).await;
    assert_eq!(register, [b"one".as_slice(), &[b'+'; 20]].concat());

    // The dead node is unreachable, said so with its address, and retryable.
    let error = cluster
        .peers(survivor)
        .propose(killed, GROUP, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    let address = cluster.peers(survivor).address(killed).unwrap().to_string();
    assert!(
        matches!(&error, Error::Unavailable { leader: None, reason, .. }
            if reason.starts_with(&format!("node {killed} at {address} unreachable: "))),
        "{error:?}"
    );
    cluster.shutdown().await;
}
