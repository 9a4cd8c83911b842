//! No request can take the cluster down: three real nodes in this process, and requests that
//! used to stop it. Each story says what went wrong before the catalog, the memory budget and
//! the state machine's checks existed.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{all_present, create, create_request, insert, key, Cluster, PATIENCE, SHARDS};
use futures_util::future::join_all;
use leakbloom_cluster::Consistency;
use leakbloom_node::catalog::{Outcome, CATALOG_GROUP};
use leakbloom_node::machine::decode_catalog_outcome;
use leakbloom_node::set::SetSpec;
use leakbloom_node::shard::shard_of;
use leakbloom_node::{Error, Node};
use leakbloom_proto::internal::v1::catalog_command::Kind;
use leakbloom_proto::internal::v1::peer_client::PeerClient;
use leakbloom_proto::internal::v1::{
    command, CatalogCommand, Command, CreateSetCommand, DropSetCommand, InsertCommand, NodeLimits,
    ProposeRequest, RejoinRequest,
};
use leakbloom_raft::{GroupId, NodeId};
use leakbloom_testkit::eventually;
use prost::Message as _;
use raft::StateRole;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Waits until the catalog holds every node's limits (nodes report them when they start).
async fn limits_reported(cluster: &Cluster) {
    let node = cluster.node(1).clone();
    eventually("every node reported its limits", PATIENCE, async || {
        node.catalog()
            .read(|c| (1..=3).all(|id| c.limits(id).is_some()))
    })
    .await;
}

/// The node that leads `group`, as node 1 sees it.
async fn leader_of(cluster: &Cluster, group: GroupId) -> NodeId {
    eventually(
        format!("group {group} has a leader"),
        PATIENCE,
        async || {
            cluster.running.iter().find_map(|(&id, r)| {
                let handle = if group == CATALOG_GROUP {
                    r.node.catalog_group().clone()
                } else {
                    r.node
                        .group(group as u32)
                        .expect("every node hosts every shard")
                };
                (handle.leadership().role == StateRole::Leader).then_some(id)
            })
        },
    )
    .await
}

async fn peer_client(cluster: &Cluster, node: NodeId) -> PeerClient<Channel> {
    PeerClient::connect(format!("http://{}", cluster.peers[&node]))
        .await
        .expect("peer port")
}

fn status(error: Error) -> Code {
    tonic::Status::from(error).code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_creates_at_the_limit_never_oversubscribe_a_node() {
    // Each node may hold exactly eight such sets (every node hosts every shard here).
    let capacity = 200_000;
    let spec = SetSpec::new("x", capacity, 1e-6, "sha256").unwrap();
    let per_node = spec.partition_geometry(SHARDS).unwrap().memory_bytes() * u64::from(SHARDS);
    let limit = 8 * per_node + per_node / 2;
    let cluster = Cluster::start_with(|config| config.max_filter_memory = Some(limit)).await;
    limits_reported(&cluster).await;

    // Before the catalog, each proposer checked its own node's memory, and all twenty passed.
    let creates = (0..20).map(|i| {
        let node = cluster.node(1 + i % 3).clone();
        async move {
            node.create_set(&create_request(&format!("s{i}"), capacity))
                .await
        }
    });
    let results = join_all(creates).await;
    let created: Vec<usize> = (0..20).filter(|&i| results[i].is_ok()).collect();
    let refused: Vec<Code> = results
        .into_iter()
        .filter_map(|r| r.err())
        .map(status)
        .collect();
    assert_eq!(created.len(), 8, "refused: {refused:?}");
    assert!(
        refused.iter().all(|&code| code == Code::ResourceExhausted),
        "{refused:?}"
    );

    // Every node holds what was admitted, within its limit, and serves it.
    for id in 1..=3 {
        let node = cluster.node(id).clone();
        eventually("every replica applied the creates", PATIENCE, async || {
            node.budget().used() == 8 * per_node
        })
        .await;
        assert!(node.budget().used() <= node.budget().limit());
        assert_eq!(node.list_sets().await.unwrap().len(), 8);
    }
    let set = format!("s{}", created[0]);
    insert(cluster.node(2), &set, 0..300).await;
    for id in 1..=3 {
        all_present(cluster.node(id), &set, 0..300, Consistency::Linearizable).await;
    }
    // Freeing memory admits a set again.
    cluster.node(3).drop_set(&set).await.unwrap();
    cluster
        .node(1)
        .create_set(&create_request("after-drop", capacity))
        .await
        .expect("room after a drop");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_proposals_through_the_peer_port_are_refused_and_change_nothing() {
    let cluster = Cluster::start().await;
    create(cluster.node(1), &create_request("s", 10_000)).await;
    insert(cluster.node(1), "s", 0..500).await;
    let generation = cluster
        .node(1)
        .catalog()
        .read(|c| c.active("s").unwrap().generation);
    let leader = leader_of(&cluster, 0).await;
    let mut peer = peer_client(&cluster, leader).await;
    let propose = |group: GroupId, command: Command| ProposeRequest {
        group,
        command: Bytes::from(command.encode_to_vec()),
    };
    let shard_command = |kind| Command {
        id: 0,
        kind: Some(kind),
    };

    // Keys of shard 1 inserted into shard 0.
    let stray: Vec<u8> = (10_000..)
        .map(key)
        .filter(|k| shard_of(k, SHARDS) == 1)
        .take(3)
        .flatten()
        .collect();
    let insert_stray = shard_command(command::Kind::Insert(InsertCommand {
        set: "s".into(),
        keys: stray.into(),
        generation,
        ..InsertCommand::default()
    }));
    // Suffixes cut short: no node proposes them.
    let torn_suffixes = shard_command(command::Kind::Insert(InsertCommand {
        set: "s".into(),
        suffixes: vec![1; 25].into(),
        generation,
        ..InsertCommand::default()
    }));
    // The set dropped on shard 0 only: before, it vanished from every node, and creating it
    // again left the other shards' keys missing.
    let drop_one_shard = shard_command(command::Kind::DropSet(DropSetCommand {
        name: "s".into(),
        generation,
    }));
    // A set the catalog never admitted, with a geometry past every node's memory.
    let spec = SetSpec::new("huge", 1_000, 1e-6, "sha256").unwrap();
    let huge = shard_command(command::Kind::CreateSet(CreateSetCommand {
        generation: 1 << 40,
        blocks: 1 << 32,
        ..spec.command(spec.partition_geometry(SHARDS).unwrap())
    }));
    for (what, command, code) in [
        (
            "keys of another shard",
            insert_stray,
            Code::FailedPrecondition,
        ),
        ("torn suffixes", torn_suffixes, Code::FailedPrecondition),
        (
            "a drop on one shard",
            drop_one_shard,
            Code::FailedPrecondition,
        ),
        ("a create the catalog did not admit", huge, Code::NotFound),
    ] {
        let refused = peer.propose(propose(0, command)).await.unwrap_err();
        assert_eq!(refused.code(), code, "{what}: {refused:?}");
    }
    // A made-up node re-added to a group.
    let rejoin = peer
        .rejoin(RejoinRequest { group: 0, node: 99 })
        .await
        .unwrap_err();
    assert!(
        rejoin.message().contains("node 99 is not a member"),
        "{rejoin:?}"
    );
    // The catalog refuses limits of a node it does not have (a deterministic result).
    let limits = CatalogCommand {
        kind: Some(Kind::Limits(NodeLimits {
            node: 99,
            filter_memory: u64::MAX,
            max_sets: 1,
            suffixes: true,
        })),
    };
    assert!(matches!(
        propose_to_catalog(&cluster, limits).await,
        Err(Error::UnknownNode { node: 99 })
    ));

    // Nothing changed: the set is whole on every node, with every key.
    for id in 1..=3 {
        let node = cluster.node(id);
        let sets = node.list_sets().await.unwrap();
        assert_eq!(
            sets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["s"]
        );
        all_present(node, "s", 0..500, Consistency::Linearizable).await;
        assert!(node.shard(0).unwrap().partition("huge").is_none());
    }
    cluster.stop().await;
}

/// Proposes `command` to the catalog's leader through its peer port, as a peer would, and
/// decodes what applying it gave.
async fn propose_to_catalog(cluster: &Cluster, command: CatalogCommand) -> Result<Outcome, Error> {
    let leader = leader_of(cluster, CATALOG_GROUP).await;
    let answer = peer_client(cluster, leader)
        .await
        .propose(ProposeRequest {
            group: CATALOG_GROUP,
            command: command.encode_to_vec().into(),
        })
        .await
        .unwrap()
        .into_inner();
    decode_catalog_outcome(&answer.result)
}

/// What an interrupted DropSet leaves behind: the catalog committed the drop, and its proposer
/// died before any shard dropped its partition.
async fn drop_in_catalog_only(cluster: &Cluster, set: &str) -> u64 {
    let drop = CatalogCommand {
        kind: Some(Kind::DropSet(set.into())),
    };
    match propose_to_catalog(cluster, drop).await {
        Ok(Outcome::Dropped(generation)) => generation,
        other => panic!("drop answered {other:?}"),
    }
}

fn partitions_left(node: &Node, set: &str) -> usize {
    (0..SHARDS)
        .filter(|&s| {
            node.shard(s)
                .and_then(|state| state.partition(set))
                .is_some()
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_cut_short_leaves_the_set_gone_everywhere_and_its_partitions_collected() {
    let mut cluster = Cluster::start().await;
    create(cluster.node(1), &create_request("s", 10_000)).await;
    insert(cluster.node(1), "s", 0..500).await;
    drop_in_catalog_only(&cluster, "s").await;
    // A node dies in the middle and comes back.
    cluster.stop_node(2).await;
    cluster.start_node(2).await;

    // Gone from every node at once, though its partitions are still there.
    for id in 1..=3 {
        let node = cluster.node(id).clone();
        eventually(
            "the drop reached every catalog replica",
            PATIENCE,
            async || node.catalog().read(|c| c.entry("s").is_none()),
        )
        .await;
        assert!(node.list_sets().await.unwrap().is_empty());
        let check = node
            .check(
                &["s".into()],
                &common::packed(0..10),
                Consistency::Linearizable,
            )
            .await
            .unwrap_err();
        assert_eq!(status(check), Code::NotFound);
        assert_eq!(status(node.get_set("s").await.unwrap_err()), Code::NotFound);
    }
    // The catalog's leader finishes the drop: every partition goes, and the garbage with it.
    for id in 1..=3 {
        let node = cluster.node(id).clone();
        eventually("the partitions are collected", PATIENCE, async || {
            partitions_left(&node, "s") == 0 && node.catalog().read(|c| c.garbage().count() == 0)
        })
        .await;
    }
    // Created again, it starts empty on every shard.
    create(cluster.node(3), &create_request("s", 10_000)).await;
    let results = cluster
        .node(2)
        .check(
            &["s".into()],
            &common::packed(0..500),
            Consistency::Linearizable,
        )
        .await
        .unwrap();
    let present = results[0]
        .present
        .iter()
        .map(|b| b.count_ones())
        .sum::<u32>();
    assert_eq!(
        present, 0,
        "keys of the dropped set showed up in the new one"
    );
    cluster.stop().await;
}

/// The Lookup service's health on node `node`'s client port.
async fn lookup_health(node: &Node) -> ServingStatus {
    let address = node
        .config()
        .advertise
        .clone()
        .expect("bound nodes advertise");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .expect("client port");
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: "leakbloom.v1.Lookup".into(),
        })
        .await
        .expect("health answers")
        .into_inner();
    response.status()
}

/// Waits (up to 5 s: the health is worked out every second) until node `node`'s Lookup health
/// is `want`.
async fn health_becomes(node: &Node, want: ServingStatus) {
    let what = format!("node {}'s Lookup health is {want:?}", node.id());
    eventually(
        what,
        Duration::from_secs(5),
        async || match lookup_health(node).await {
            status if status == want => Ok(()),
            status => Err(format!("{status:?}")),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_memory_stalls_reports_not_serving_and_resumes_by_itself() {
    let mut cluster = Cluster::start().await;
    create(cluster.node(1), &create_request("s", 100_000)).await;
    insert(cluster.node(1), "s", 0..1000).await;
    let held = cluster.node(3).budget().used();
    assert!(held > 0);
    // Node 3 comes back with less memory than the cluster admitted for it: before, a replica
    // that could not allocate a committed set's filter panicked, at every restart.
    cluster.stop_node(3).await;
    cluster
        .start_node_with(3, |config| config.max_filter_memory = Some(held / 2))
        .await;
    let node3 = cluster.node(3).clone();
    eventually("node 3's replicas stall", PATIENCE, async || {
        node3
            .health()
            .iter()
            .any(|problem| problem.to_string().contains("is stalled"))
    })
    .await;
    health_becomes(&node3, ServingStatus::NotServing).await;
    // The others go on: inserts commit, and every node answers (node 3 from the others).
    insert(cluster.node(2), "s", 1000..1500).await;
    for id in 1..=3 {
        all_present(cluster.node(id), "s", 0..1500, Consistency::Linearizable).await;
    }
    // Memory back: it applies again by itself and serves from its own replicas.
    node3.budget().set_limit(u64::MAX);
    eventually("node 3 applies again", PATIENCE, async || {
        node3.health().is_empty()
    })
    .await;
    health_becomes(&node3, ServingStatus::Serving).await;
    all_present(&node3, "s", 0..1500, Consistency::Any).await;
    cluster.stop().await;
}
