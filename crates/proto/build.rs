//! Compiles `proto/leakbloom/v1/*.proto` with protox (pure Rust, so no system protoc is needed)
//! and generates prost messages plus tonic clients and servers. The encoded file descriptor set
//! is kept for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "leakbloom/v1/lookup.proto",
        "leakbloom/v1/command.proto",
        "leakbloom/v1/peer.proto",
        "leakbloom/v1/cluster.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("leakbloom_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .bytes(".leakbloom.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
