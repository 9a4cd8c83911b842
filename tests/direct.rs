//! A client that routes itself (`Client::direct`) against a real node: it needs only one
//! answering node among those it is given, serves every call a router would, and says why
//! when no node answers.

use leakbloom_client::{Client, Consistency, Error, RouteError};
use leakbloom_node::Config;
use leakbloom_tests::{random_keys, TestNode};

/// A loopback address nothing listens on.
fn nobody() -> String {
    format!("127.0.0.1:{}", leakbloom_testkit::free_port())
}

#[tokio::test]
async fn a_direct_client_needs_one_answering_node_and_serves_every_call() {
    let node = TestNode::start(Config::default()).await;
    // The first address given is down: the map comes from the second.
    let mut client = Client::direct(&[nobody(), node.addr.to_string()])
        .await
        .unwrap();
    assert!(client.is_direct());
    client
        .create_set("s", 100_000, 1e-6, "sha256")
        .await
        .unwrap();
    let keys = random_keys(3, 2_000);
    assert_eq!(client.insert("s", &keys[..1_000]).await.unwrap(), 1_000);
    for consistency in [Consistency::Linearizable, Consistency::Any] {
        let found = client.check(&[], &keys, consistency).await.unwrap();
        assert_eq!(found.len(), 1);
        assert!(
            found[0].present[..1_000].iter().all(|&p| p),
            "{consistency}"
        );
        let false_positives = found[0].present[1_000..].iter().filter(|&&p| p).count();
        assert!(false_positives <= 1, "{false_positives} absent keys found");
    }
    let sets = client.list_sets().await.unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(client.get_set("s").await.unwrap().name, "s");
    // A node's refusal reaches the caller as the node said it.
    let missing = client
        .check(&["nope".into()], &keys[..1], Consistency::Any)
        .await;
    assert!(
        matches!(&missing, Err(Error::Route(RouteError::Node(status))) if status.code() == tonic::Code::NotFound),
        "{missing:?}"
    );
    client.drop_set("s").await.unwrap();
    assert!(client.list_sets().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_direct_client_with_no_answering_node_says_so() {
    let dead = nobody();
    let error = Client::direct(std::slice::from_ref(&dead))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, Error::Route(RouteError::NoMap { .. })),
        "{message}"
    );
    assert!(message.contains(&dead), "{message}");
    assert!(Client::direct(&[]).await.is_err());
}
