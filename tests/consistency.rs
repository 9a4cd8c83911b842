//! The consistency a check asks for is the one it gets. The API says an unspecified
//! consistency (0: what grpcurl, Python and every client that sets nothing send) means
//! linearizable, so such a check must take the read barrier (a ReadIndex round on the
//! replica that answers), whether it comes straight to a node or through a router; only an
//! explicit `CONSISTENCY_ANY_REPLICA` may read a replica's applied state without one. Counted
//! here by the ReadIndex rounds of the node's shard replicas.

use leakbloom_cluster::Consistency;
use leakbloom_node::Config;
use leakbloom_proto::v1::lookup_client::LookupClient;
use leakbloom_proto::v1::{CheckRequest, CreateSetRequest, InsertRequest};
use leakbloom_tests::{random_keys, router_config, TestNode, TestRouter};
use tonic::transport::Channel;
use tonic::Code;

/// ReadIndex rounds started by every shard replica of `node` so far.
fn rounds(node: &TestNode) -> u64 {
    let shards = node.node.config().shards;
    (0..shards)
        .filter_map(|shard| node.node.group(shard))
        .map(|group| group.rounds())
        .sum()
}

/// A check of `keys` in set `s` with the raw consistency number `consistency`; whether every
/// key was found.
async fn check(client: &mut LookupClient<Channel>, keys: &[[u8; 32]], consistency: i32) -> bool {
    let request = CheckRequest {
        sets: vec!["s".into()],
        keys: keys.concat().into(),
        consistency,
    };
    let answer = client.check(request).await.unwrap().into_inner();
    let present = &answer.results[0].present;
    (0..keys.len()).all(|i| leakbloom_cluster::bitmap::get(present, i))
}

#[tokio::test]
async fn an_unspecified_consistency_takes_the_read_barrier_straight_and_through_the_router() {
    let node = TestNode::start(Config::default()).await;
    let router = TestRouter::start(router_config(node.addr)).await;
    let mut straight = node.client().await.raw().clone();
    let mut routed = leakbloom_client::Client::connect(&router.addr.to_string())
        .await
        .unwrap()
        .raw()
        .clone();
    straight
        .create_set(CreateSetRequest {
            name: "s".into(),
            capacity: 10_000,
            fpr: 1e-6,
            hashing: "sha256".into(),
        })
        .await
        .unwrap();
    let keys = random_keys(7, 100);
    let insert = InsertRequest {
        set: "s".into(),
        keys: keys.concat().into(),
    };
    straight.insert(insert).await.unwrap();
    // Every partition is in place: no check below needs a barrier to find its set.
    assert!(check(&mut straight, &keys, Consistency::ANY).await);

    for (path, client) in [("straight", &mut straight), ("routed", &mut routed)] {
        let before = rounds(&node);
        assert!(check(client, &keys, Consistency::ANY).await);
        assert_eq!(
            rounds(&node),
            before,
            "{path}: an any-replica check took a barrier"
        );

        for consistency in [0, Consistency::LINEARIZABLE] {
            let before = rounds(&node);
            assert!(check(client, &keys, consistency).await);
            assert!(
                rounds(&node) > before,
                "{path}: a check with consistency {consistency} read without a ReadIndex round"
            );
        }
    }

    // A number the API does not define is refused, not guessed at.
    for client in [&mut straight, &mut routed] {
        let request = CheckRequest {
            sets: vec![],
            keys: keys[0].to_vec().into(),
            consistency: 7,
        };
        let refused = client.check(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            refused.message().contains("consistency 7 is unknown"),
            "{}",
            refused.message()
        );
    }
}
