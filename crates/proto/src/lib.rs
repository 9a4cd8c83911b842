//! Generated code for leakbloom's protobuf packages. Nothing hand-written lives here.
//!
//! - [`v1`]: package `leakbloom.v1`: the public `Lookup` service (`lookup.proto`) and the
//!   state-machine `Command` format that replicas apply in log order (`command.proto`), the
//!   `Cluster` service routers learn the shard map from (`cluster.proto`) and the node-to-node
//!   `Peer` service (`peer.proto`).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, served by gRPC reflection.
//!
//! `bytes` fields are generated as [`bytes::Bytes`](https://docs.rs/bytes) so packed key batches
//! are sliced, not copied, on their way through a node.

/// Package `leakbloom.v1`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    rust_2018_idioms
)]
pub mod v1 {
    tonic::include_proto!("leakbloom.v1");
}

/// Encoded `FileDescriptorSet` of every leakbloom proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/leakbloom_descriptor.bin"));
