//! The dependency shape the design holds to, read from the workspace's own manifests:
//! routing logic lives in one pure crate, and the arrows point one way.
//!
//! - `leakbloom-cluster` (keys, shard map, plan, merge, retry policy) depends on nothing of
//!   ours and on no async runtime, gRPC or protobuf crate;
//! - the filter engine and the identifier rules use only the cluster core (for `Key`);
//! - the Raft layer knows nothing of ours;
//! - the node does not reach the client or the router; the router reaches neither the filter
//!   nor the node; the client reaches neither the node, the router nor the filter;
//! - test support is never a dependency of production code.
//!
//! Normal dependencies only (dev-dependencies may point anywhere), followed transitively
//! through the workspace's crates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every workspace package's name and its normal dependencies (target-specific ones
/// included), by package name.
fn manifests() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let workspace: toml::Value =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let members = workspace["workspace"]["members"].as_array().unwrap();
    members
        .iter()
        .map(|member| {
            let path = root.join(member.as_str().unwrap()).join("Cargo.toml");
            let manifest: toml::Value =
                toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let name = manifest["package"]["name"].as_str().unwrap().to_string();
            let mut deps = BTreeSet::new();
            let mut take = |table: Option<&toml::Value>| {
                if let Some(table) = table.and_then(toml::Value::as_table) {
                    deps.extend(table.keys().cloned());
                }
            };
            take(manifest.get("dependencies"));
            if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
                for target in targets.values() {
                    take(target.get("dependencies"));
                }
            }
            (name, deps)
        })
        .collect()
}

/// Everything `package` depends on, directly or through other workspace packages.
fn reach(graph: &BTreeMap<String, BTreeSet<String>>, package: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut next = vec![package.to_string()];
    while let Some(current) = next.pop() {
        for dep in graph.get(&current).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                next.push(dep.clone());
            }
        }
    }
    seen
}

#[test]
fn dependencies_point_one_way() {
    let graph = manifests();
    for package in [
        "leakbloom-cluster",
        "leakbloom-filter",
        "leakbloom-node",
        "leakbloom-router",
        "leakbloom-client",
        "leakbloom-raft",
    ] {
        assert!(
            graph.contains_key(package),
            "{package} is not a workspace member"
        );
    }
    let ours = |package: &str| -> BTreeSet<String> {
        reach(&graph, package)
            .into_iter()
            .filter(|dep| dep.starts_with("leakbloom-"))
            .collect()
    };
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| n.to_string()).collect() };

    assert_eq!(
        ours("leakbloom-cluster"),
        set(&[]),
        "the cluster core depends on nothing of ours"
    );
    let cluster = &graph["leakbloom-cluster"];
    for forbidden in ["tokio", "tonic", "prost", "bytes", "futures-util"] {
        assert!(
            !cluster.contains(forbidden),
            "the cluster core depends on {forbidden}"
        );
    }
    assert_eq!(ours("leakbloom-filter"), set(&["leakbloom-cluster"]));
    assert_eq!(ours("leakbloom-ident"), set(&["leakbloom-cluster"]));
    assert_eq!(
        ours("leakbloom-raft"),
        set(&[]),
        "Raft knows nothing of ours"
    );

    let forbidden: [(&str, &[&str]); 3] = [
        ("leakbloom-node", &["leakbloom-client", "leakbloom-router"]),
        ("leakbloom-router", &["leakbloom-filter", "leakbloom-node"]),
        (
            "leakbloom-client",
            &["leakbloom-node", "leakbloom-router", "leakbloom-filter"],
        ),
    ];
    for (package, not) in forbidden {
        let reached = ours(package);
        for dep in not {
            assert!(
                !reached.contains(*dep),
                "{package} depends on {dep}: {reached:?}"
            );
        }
        assert!(
            reached.contains("leakbloom-cluster"),
            "{package} routes without the core"
        );
    }

    for (package, deps) in &graph {
        if package != "leakbloom-tests" {
            assert!(
                !deps.contains("leakbloom-testkit"),
                "{package} has test support among its normal dependencies"
            );
        }
    }
}
