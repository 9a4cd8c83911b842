//! Compiles the protos under `proto/` with protox (pure Rust, so no system protoc is needed)
//! and generates prost messages plus tonic clients and servers for both packages. The public
//! and the internal files are also compiled on their own into two encoded descriptor sets, so
//! that a port's reflection can describe exactly the services it serves.

use std::path::{Path, PathBuf};

/// Package `leakbloom.v1`: what clients see.
const PUBLIC: [&str; 2] = ["leakbloom/v1/lookup.proto", "leakbloom/v1/cluster.proto"];

/// Package `leakbloom.internal.v1`: what only nodes see (it imports the public `Consistency`).
const INTERNAL: [&str; 2] = [
    "leakbloom/internal/v1/peer.proto",
    "leakbloom/internal/v1/command.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for file in PUBLIC.iter().chain(&INTERNAL) {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    write_descriptors(&root, &PUBLIC, &out.join("public_descriptor.bin"))?;
    write_descriptors(&root, &INTERNAL, &out.join("internal_descriptor.bin"))?;
    let every = protox::compile(PUBLIC.iter().chain(&INTERNAL), [&root])?;
    tonic_prost_build::configure()
        .bytes(".leakbloom")
        .compile_fds(every)?;
    Ok(())
}

/// Writes the encoded descriptor set of `files` (and the files they import) to `path`.
fn write_descriptors(
    root: &Path,
    files: &[&str],
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let descriptors = protox::compile(files, [root])?;
    std::fs::write(path, prost::Message::encode_to_vec(&descriptors))?;
    Ok(())
}
