//! Generated code for leakbloom's protobuf packages. Nothing hand-written lives here but the
//! descriptor sets' tests.
//!
//! - [`v1`]: package `leakbloom.v1`, the public API: the `Lookup` service (`lookup.proto`) and
//!   the `Cluster` service a router or client reads the shard map from (`cluster.proto`).
//! - [`internal::v1`]: package `leakbloom.internal.v1`, for nodes only: the node-to-node `Peer`
//!   service (`peer.proto`) and the state-machine `Command` and catalog formats that replicas
//!   apply in log order and keep on disk (`command.proto`).
//! - [`PUBLIC_DESCRIPTOR_SET`], [`INTERNAL_DESCRIPTOR_SET`]: the encoded descriptors of each,
//!   for server reflection: a client port reflects only the public one.
//!
//! `bytes` fields are generated as [`bytes::Bytes`](https://docs.rs/bytes) so packed key batches
//! are sliced, not copied, on their way through a node.

// Everything below `v1` and `internal` is prost's and tonic's output, linted as they write it.
#![allow(missing_debug_implementations, clippy::all, rust_2018_idioms)]

/// Package `leakbloom.v1`: the public API.
pub mod v1 {
    tonic::include_proto!("leakbloom.v1");
}

/// Packages for nodes only; never served on a client port.
pub mod internal {
    /// Package `leakbloom.internal.v1`: the peer service and the Raft log's commands.
    pub mod v1 {
        tonic::include_proto!("leakbloom.internal.v1");
    }
}

/// Encoded `FileDescriptorSet` of `leakbloom.v1` (lookup.proto, cluster.proto), for the
/// reflection of client ports.
pub const PUBLIC_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/public_descriptor.bin"));

/// Encoded `FileDescriptorSet` of `leakbloom.internal.v1` (peer.proto, command.proto, and the
/// lookup.proto they import).
pub const INTERNAL_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/internal_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    /// The fields of `google.protobuf.FileDescriptorSet` these tests read.
    #[derive(Clone, PartialEq, Message)]
    struct FileSet {
        #[prost(message, repeated, tag = "1")]
        file: Vec<File>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct File {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        package: String,
        #[prost(message, repeated, tag = "6")]
        service: Vec<Service>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Service {
        #[prost(string, tag = "1")]
        name: String,
    }

    /// (file, package, services) of each file of an encoded descriptor set.
    fn files(encoded: &[u8]) -> Vec<(String, String, Vec<String>)> {
        let mut files: Vec<_> = FileSet::decode(encoded)
            .unwrap()
            .file
            .into_iter()
            .map(|f| {
                (
                    f.name,
                    f.package,
                    f.service.into_iter().map(|s| s.name).collect(),
                )
            })
            .collect();
        files.sort();
        files
    }

    fn file(name: &str, package: &str, services: &[&str]) -> (String, String, Vec<String>) {
        let services = services.iter().map(|s| s.to_string()).collect();
        (name.into(), package.into(), services)
    }

    #[test]
    fn the_public_descriptors_describe_only_the_public_api() {
        assert_eq!(
            files(super::PUBLIC_DESCRIPTOR_SET),
            [
                file(
                    "leakbloom/v1/cluster.proto",
                    "leakbloom.v1",
                    &["Cluster", "Nodes"]
                ),
                file("leakbloom/v1/lookup.proto", "leakbloom.v1", &["Lookup"]),
            ]
        );
    }

    #[test]
    fn the_internal_descriptors_describe_peer_and_command_with_what_they_import() {
        assert_eq!(
            files(super::INTERNAL_DESCRIPTOR_SET),
            [
                file(
                    "leakbloom/internal/v1/command.proto",
                    "leakbloom.internal.v1",
                    &[]
                ),
                file(
                    "leakbloom/internal/v1/peer.proto",
                    "leakbloom.internal.v1",
                    &["Peer"]
                ),
                // For NodeState, which the catalog's commands record.
                file(
                    "leakbloom/v1/cluster.proto",
                    "leakbloom.v1",
                    &["Cluster", "Nodes"]
                ),
                file("leakbloom/v1/lookup.proto", "leakbloom.v1", &["Lookup"]),
            ]
        );
    }
}
