//! The public `leakbloom.v1.Lookup` contract, end to end over real gRPC on 127.0.0.1:0.

use bytes::Bytes;
use leakbloom_client::Consistency;
use leakbloom_node::Config;
use leakbloom_proto::v1::lookup_client::LookupClient;
use leakbloom_proto::v1::{
    CheckRequest, CreateSetRequest, DropSetRequest, GetSetRequest, InsertRequest,
};
use leakbloom_tests::{random_keys, scrape, TestNode};
use tonic::Code;

fn create(name: &str, capacity: u64, fpr: f64, hashing: &str) -> CreateSetRequest {
    CreateSetRequest {
        name: name.into(),
        capacity,
        fpr,
        hashing: hashing.into(),
    }
}

#[tokio::test]
async fn sets_are_created_listed_described_and_dropped() {
    let node = TestNode::start_default().await;
    let mut client = node.client().await;

    let info = client
        .create_set("facebook-2021", 1_000_000, 1e-6, "sha256")
        .await
        .unwrap();
    assert_eq!(info.name, "facebook-2021");
    assert_eq!(info.capacity, 1_000_000);
    assert_eq!(info.fpr, 1e-6);
    assert_eq!(info.hashing, "sha256");
    assert_eq!(info.shards, 16);
    assert_eq!(info.estimated_keys, 0);
    assert_eq!(info.fill_ratio, 0.0);
    assert!(
        info.bits_per_key > 30.0 && info.bits_per_key <= 40.0,
        "{}",
        info.bits_per_key
    );
    assert!(info.memory_bytes as f64 >= 1_000_000.0 * info.bits_per_key / 8.0 * 0.99);

    // Idempotent with equal parameters; an empty hashing means sha256.
    let again = client
        .create_set("facebook-2021", 1_000_000, 1e-6, "")
        .await
        .unwrap();
    assert_eq!(again, info);
    let err = client
        .raw()
        .create_set(create("facebook-2021", 2_000_000, 1e-6, "sha256"))
        .await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().contains("capacity=1000000"),
        "{}",
        err.message()
    );

    client
        .create_set("adobe-2013", 1000, 1e-3, "hmac-sha256:pepper-2024")
        .await
        .unwrap();
    let names: Vec<String> = client
        .list_sets()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["adobe-2013", "facebook-2021"]);
    assert_eq!(
        client.get_set("adobe-2013").await.unwrap().hashing,
        "hmac-sha256:pepper-2024"
    );

    client.drop_set("adobe-2013").await.unwrap();
    let err = client.get_set("adobe-2013").await.unwrap_err();
    assert!(matches!(err, leakbloom_client::Error::Status(s) if s.code() == Code::NotFound));
    let err = client
        .raw()
        .drop_set(DropSetRequest {
            name: "adobe-2013".into(),
        })
        .await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound);
    node.stop().await;
}

#[tokio::test]
async fn inserted_keys_are_always_found_and_bitmaps_follow_the_contract() {
    let node = TestNode::start_default().await;
    let mut client = node.client().await;
    client
        .create_set("a", 100_000, 1e-4, "sha256")
        .await
        .unwrap();
    client
        .create_set("b", 100_000, 1e-4, "sha256")
        .await
        .unwrap();

    let in_a = random_keys(1, 20_000);
    let in_b = random_keys(2, 5_000);
    assert_eq!(client.insert("a", &in_a).await.unwrap(), 20_000);
    assert_eq!(client.insert("b", &in_b).await.unwrap(), 5_000);

    // Interleave a's keys, b's keys and fresh keys so every bit position of the bitmap is used.
    let absent = random_keys(3, 5_000);
    let mut keys = Vec::new();
    for i in 0..5_000 {
        keys.extend([in_a[i], in_b[i], absent[i]]);
    }
    keys.push(in_a[5_000]); // 15 001 keys: the last bitmap byte is partial.

    // Raw call: check the wire format (request order, bitmap length, LSB-first bits).
    let mut raw = LookupClient::connect(format!("http://{}", node.addr))
        .await
        .unwrap();
    let reply = raw
        .check(CheckRequest {
            sets: vec!["b".into(), "a".into()],
            keys: Bytes::from(keys.concat()),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.results.len(), 2);
    assert_eq!(reply.results[0].set, "b");
    assert_eq!(reply.results[1].set, "a");
    // Read as the API documents the bitmap (byte i / 8, bit i % 8, LSB first), independently
    // of the code under test.
    let bit = |bitmap: &[u8], i: usize| bitmap[i / 8] >> (i % 8) & 1 == 1;
    for result in &reply.results {
        assert_eq!(result.present.len(), keys.len().div_ceil(8));
    }
    let (b, a) = (&reply.results[0].present, &reply.results[1].present);
    let mut false_positives = 0;
    for i in 0..5_000 {
        assert!(bit(a, 3 * i), "false negative for a's key {i}");
        assert!(bit(b, 3 * i + 1), "false negative for b's key {i}");
        false_positives += bit(a, 3 * i + 2) as usize + bit(b, 3 * i + 2) as usize;
        false_positives += bit(a, 3 * i + 1) as usize + bit(b, 3 * i) as usize;
    }
    assert!(bit(a, 15_000));
    // 20 000 absent checks at 1e-4 (the sets are far from full): a handful at most.
    assert!(false_positives <= 10, "{false_positives} false positives");

    // Empty `sets` means every set, in name order.
    let all = client
        .check(&[], &in_b[..10], Consistency::Any)
        .await
        .unwrap();
    let names: Vec<&str> = all.iter().map(|m| m.set.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(all[1].present.iter().all(|p| *p));

    let info = client.get_set("a").await.unwrap();
    let estimated = info.estimated_keys as f64;
    assert!(
        (estimated - 20_000.0).abs() < 20_000.0 * 0.05,
        "estimated {estimated}"
    );
    assert!(info.fill_ratio > 0.0 && info.estimated_fpr < 1e-4);
    node.stop().await;
}

#[tokio::test]
async fn measured_false_positive_rate_is_within_target_at_capacity() {
    let node = TestNode::start_default().await;
    let mut client = node.client().await;
    let capacity = 50_000;
    client
        .create_set("full", capacity, 1e-3, "sha256")
        .await
        .unwrap();
    client
        .insert("full", &random_keys(10, capacity as usize))
        .await
        .unwrap();
    let absent = random_keys(11, 500_000);
    let result = client
        .check(&["full".into()], &absent, Consistency::Linearizable)
        .await
        .unwrap();
    let positives = result[0].present.iter().filter(|p| **p).count();
    let fpr = positives as f64 / absent.len() as f64;
    assert!(fpr <= 1.5e-3, "measured fpr {fpr} over 1.5x target 1e-3");
    assert!(
        fpr > 0.2e-3,
        "measured fpr {fpr} suspiciously low: is anything inserted?"
    );
    let info = client.get_set("full").await.unwrap();
    assert!(
        (info.estimated_fpr / 1e-3) < 1.5 && info.estimated_fpr / 1e-3 > 0.5,
        "{info:?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_documented_status() {
    let config = Config {
        max_batch: 16,
        max_sets: 3,
        max_filter_memory: Some(64 << 20),
        ..Config::default()
    };
    let node = TestNode::start(config).await;
    let mut client = node.client().await;
    client.create_set("s", 1000, 1e-3, "sha256").await.unwrap();
    let raw = client.raw();

    let check = |sets: &[&str], keys: Vec<u8>, consistency: i32| CheckRequest {
        sets: sets.iter().map(|s| s.to_string()).collect(),
        keys: keys.into(),
        consistency,
    };
    let cases: Vec<(CheckRequest, Code, &str)> = vec![
        (check(&["s"], vec![], 0), Code::InvalidArgument, "empty"),
        (
            check(&["s"], vec![0; 33], 0),
            Code::InvalidArgument,
            "multiple of 32",
        ),
        (
            check(&["s"], vec![0; 31], 0),
            Code::InvalidArgument,
            "multiple of 32",
        ),
        (
            check(&["s"], vec![0; 17 * 32], 0),
            Code::InvalidArgument,
            "limit of 16",
        ),
        (
            check(&["nope"], vec![0; 32], 0),
            Code::NotFound,
            "\"nope\" does not exist",
        ),
        (
            check(&["s", "s"], vec![0; 32], 0),
            Code::InvalidArgument,
            "more than once",
        ),
        (
            check(&["S p"], vec![0; 32], 0),
            Code::InvalidArgument,
            "invalid set name",
        ),
        (
            check(&["s"], vec![0; 32], 7),
            Code::InvalidArgument,
            "consistency",
        ),
    ];
    for (request, code, needle) in cases {
        let status = raw.check(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{:?} lacks {needle:?}",
            status.message()
        );
    }
    // The limit itself is fine.
    raw.check(check(&["s"], vec![0; 16 * 32], 0)).await.unwrap();

    let insert = |set: &str, keys: Vec<u8>| InsertRequest {
        set: set.into(),
        keys: keys.into(),
    };
    let cases: Vec<(InsertRequest, Code, &str)> = vec![
        (insert("s", vec![]), Code::InvalidArgument, "empty"),
        (
            insert("s", vec![1; 40]),
            Code::InvalidArgument,
            "multiple of 32",
        ),
        (
            insert("s", vec![1; 17 * 32]),
            Code::InvalidArgument,
            "limit of 16",
        ),
        (
            insert("nope", vec![1; 32]),
            Code::NotFound,
            "does not exist",
        ),
        (insert("", vec![1; 32]), Code::InvalidArgument, "empty"),
    ];
    for (request, code, needle) in cases {
        let status = raw.insert(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{:?} lacks {needle:?}",
            status.message()
        );
    }

    let cases: Vec<(CreateSetRequest, Code, &str)> = vec![
        (create("", 10, 1e-3, ""), Code::InvalidArgument, "empty"),
        (
            create(&"x".repeat(65), 10, 1e-3, ""),
            Code::InvalidArgument,
            "limit is 64",
        ),
        (
            create("Upper", 10, 1e-3, ""),
            Code::InvalidArgument,
            "[a-z0-9._-]",
        ),
        (create("c", 0, 1e-3, ""), Code::InvalidArgument, "capacity"),
        (create("c", 10, 0.0, ""), Code::InvalidArgument, "fpr"),
        (create("c", 10, 1.0, ""), Code::InvalidArgument, "fpr"),
        (create("c", 10, f64::NAN, ""), Code::InvalidArgument, "fpr"),
        (create("c", 10, 1e-3, "md5"), Code::InvalidArgument, "md5"),
        (
            create("c", 10, 1e-3, "hmac-sha256:"),
            Code::InvalidArgument,
            "pepper",
        ),
        (
            create("c", 100_000_000, 1e-6, ""),
            Code::ResourceExhausted,
            "max_filter_memory",
        ),
        (
            create("c", u64::MAX, 1e-6, ""),
            Code::InvalidArgument,
            "invalid parameters for set",
        ),
    ];
    for (request, code, needle) in cases {
        let status = raw.create_set(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{:?} lacks {needle:?}",
            status.message()
        );
    }
    raw.create_set(create("c2", 10, 1e-3, "")).await.unwrap();
    raw.create_set(create("c3", 10, 1e-3, "")).await.unwrap();
    let status = raw
        .create_set(create("c4", 10, 1e-3, ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("3 sets"), "{}", status.message());

    let status = raw
        .get_set(GetSetRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = raw
        .get_set(GetSetRequest { name: "N O".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = raw
        .drop_set(DropSetRequest { name: "".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_never_miss_acknowledged_inserts_while_inserts_run() {
    let node = TestNode::start_default().await;
    let mut client = node.client().await;
    client
        .create_set("live", 200_000, 1e-4, "sha256")
        .await
        .unwrap();
    let keys = random_keys(20, 100_000);
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let writer = {
        let mut client = node.client().await;
        let keys = keys.clone();
        let acknowledged = acknowledged.clone();
        tokio::spawn(async move {
            for (n, batch) in keys.chunks(1000).enumerate() {
                client.insert("live", batch).await.unwrap();
                acknowledged.store((n + 1) * 1000, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let mut checks = 0;
    loop {
        let done = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
        if done > 0 {
            let result = client
                .check(&["live".into()], &keys[..done], Consistency::Linearizable)
                .await
                .unwrap();
            let missing = result[0].present.iter().position(|p| !p);
            assert_eq!(
                missing, None,
                "acknowledged key missing after {done} inserts"
            );
            checks += 1;
        }
        if done == keys.len() {
            break;
        }
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    assert!(checks > 1);
    node.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let node = TestNode::start_default().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "leakbloom.v1.Lookup"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status, 1, "{service:?} is not SERVING");
    }

    // grpcurl 1.8 speaks reflection v1alpha; newer clients v1. Both must list the API.
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        let mut client = ServerReflectionClient::new(channel.clone());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let reply = replies.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("unexpected reflection reply {reply:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&"leakbloom.v1.Lookup".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"grpc.health.v1.Health".to_string()),
            "{names:?}"
        );
    }
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "leakbloom.v1.Lookup".into(),
            )),
        };
        let mut replies = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let reply = replies.message().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = reply.message_response else {
            panic!("unexpected reflection reply {reply:?}");
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
    node.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_keys_raft_and_sets() {
    let node = TestNode::start(Config {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    })
    .await;
    let metrics = node.metrics.expect("metrics served");
    let mut client = node.client().await;
    client
        .create_set("leak-2021", 1_000, 1e-6, "sha256")
        .await
        .unwrap();
    let keys = random_keys(11, 2_000);
    client.insert("leak-2021", &keys).await.unwrap();
    let sets = ["leak-2021".to_string()];
    client
        .check(&sets, &keys[..100], Consistency::Any)
        .await
        .unwrap();
    let missing = ["missing".to_string()];
    let error = client
        .check(&missing, &keys[..1], Consistency::Any)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("missing"), "{error}");

    let reply = scrape(metrics, "/metrics").await;
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    for line in [
        r#"leakbloom_requests_total{code="Ok",rpc="CreateSet"} 1"#,
        r#"leakbloom_requests_total{code="Ok",rpc="Insert"} 1"#,
        r#"leakbloom_requests_total{code="Ok",rpc="Check"} 1"#,
        r#"leakbloom_requests_total{code="NotFound",rpc="Check"} 1"#,
        r#"leakbloom_request_seconds_count{rpc="Check"} 2"#,
        "leakbloom_keys_inserted_total 2000",
        "leakbloom_keys_checked_total 100",
        r#"leakbloom_raft_leader{shard="0"} 1"#,
        r#"leakbloom_raft_rebuilding{shard="15"} 0"#,
        r#"leakbloom_set_capacity{set="leak-2021"} 1000"#,
        // 2000 keys in a set sized for 1000.
        r#"leakbloom_set_over_capacity{set="leak-2021"} 1"#,
    ] {
        assert!(
            reply.lines().any(|l| l == line),
            "no line {line:?} in:\n{reply}"
        );
    }
    assert!(reply.contains(r#"leakbloom_set_fill_ratio{set="leak-2021"}"#));
    assert!(reply.contains(r#"leakbloom_raft_term{shard="3"}"#));
    // Labels name rpcs, codes, shards and sets: no key appears, in any form.
    for key in &keys[..100] {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!reply.contains(&hex));
    }
    assert!(scrape(metrics, "/other")
        .await
        .starts_with("HTTP/1.1 404 Not Found"));
    node.stop().await;
}

/// A Check of every set (`sets` empty) with a full batch, with 300 sets: within the documented
/// limits, so it is answered (before, the reply passed the server's message size and the call
/// failed OUT_OF_RANGE); and one naming more sets than a check may is refused up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_against_every_one_of_300_sets_is_answered() {
    let node = TestNode::start(Config {
        shards: 4,
        ..Config::default()
    })
    .await;
    let sets: Vec<String> = (0..300).map(|i| format!("s{i:03}")).collect();
    for chunk in sets.chunks(10) {
        let creates = chunk.iter().map(|name| {
            let node = &node;
            async move {
                let mut client = node.client().await;
                client.create_set(name, 100, 1e-3, "sha256").await.unwrap();
            }
        });
        futures_util::future::join_all(creates).await;
    }
    let mut client = node.client().await;
    let keys = random_keys(11, 65_536);
    client.insert("s150", &keys[..10]).await.unwrap();
    let packed: Bytes = keys.concat().into();
    let answer = client
        .raw()
        .check(CheckRequest {
            sets: Vec::new(),
            keys: packed.clone(),
            consistency: 0,
        })
        .await
        .expect("a check within the limits is answered")
        .into_inner();
    assert_eq!(answer.results.len(), 300);
    assert!(answer.results.windows(2).all(|w| w[0].set < w[1].set));
    for result in &answer.results {
        assert_eq!(result.present.len(), 65_536 / 8);
    }
    let s150 = &answer.results[150];
    assert_eq!(s150.set, "s150");
    assert!((0..10).all(|i| s150.present[i / 8] & (1 << (i % 8)) != 0));

    // 1025 sets named: over the limit of sets per check, refused before any is looked up.
    let named = CheckRequest {
        sets: (0..1025).map(|i| format!("n{i}")).collect(),
        keys: packed,
        consistency: 0,
    };
    let refused = client.raw().check(named).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("1025"), "{}", refused.message());
}
