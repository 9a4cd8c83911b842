//! Small inserts through a router share node calls, end to end over real gRPC on 127.0.0.1:0:
//! clients inserting one key each at the same time all get their acknowledgement, every key is
//! found afterwards, and the node served far fewer `Insert` calls than there were clients
//! (so it proposed far fewer Raft commands).

use futures_util::future::join_all;
use leakbloom_client::Consistency;
use leakbloom_tests::{node_behind_a_router, random_keys, served};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_key_inserts_through_a_router_share_node_calls() {
    let (node, metrics, _router, mut client) = node_behind_a_router("leak").await;
    let before = served(metrics, "Insert").await;

    let keys = random_keys(21, 200);
    let acknowledged = join_all(keys.iter().map(|key| {
        let mut client = client.clone();
        async move { client.insert("leak", &[*key]).await }
    }))
    .await;
    for answer in acknowledged {
        assert_eq!(answer.unwrap(), 1);
    }
    let inserts = served(metrics, "Insert").await - before;
    assert!(
        inserts < 200,
        "the node served {inserts} Insert calls for 200 single-key inserts"
    );

    let sets = ["leak".to_string()];
    let found = client
        .check(&sets, &keys, Consistency::Linearizable)
        .await
        .unwrap();
    assert!(found[0].present.iter().all(|&present| present));
    node.stop().await;
}
