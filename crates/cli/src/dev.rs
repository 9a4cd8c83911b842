//! `leakbloom dev`: a local node with a demo set, for trying the API in one command.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use base64::Engine as _;
use leakbloom_client::Client;
use leakbloom_ident::Kind;
use leakbloom_node::{Config, Server};

/// Name of the demo set.
pub const DEMO_SET: &str = "demo";

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Client API address.
    #[arg(long, env = "LEAKBLOOM_LISTEN", default_value = crate::DEFAULT_ADDR)]
    listen: SocketAddr,
    /// Synthetic identifiers in the demo set (half emails, half phone numbers).
    #[arg(long, default_value_t = 200_000)]
    demo_identifiers: u64,
    /// Shards the key space is split into.
    #[arg(long, env = "LEAKBLOOM_SHARDS", default_value_t = leakbloom_node::config::DEFAULT_SHARDS)]
    shards: u32,
}

/// The i-th synthetic email of the demo set.
pub fn demo_email(i: u64) -> String {
    format!("demo-user-{i}@example.com")
}

/// The i-th synthetic phone number of the demo set: UK mobiles +44 7400 000000 onwards
/// (a real-shaped, valid range; these are made up, not leaked).
pub fn demo_phone(i: u64) -> String {
    format!("+4474{:08}", i % 100_000_000)
}

pub async fn run(args: DevArgs) -> Result<()> {
    let config = Config {
        listen: args.listen,
        shards: args.shards,
        ..Config::default()
    };
    config.validate()?;
    let server = Server::bind(config).await.with_context(|| {
        format!(
            "cannot listen on {} (is another node running? try --listen)",
            args.listen
        )
    })?;
    let addr = server.local_addr();
    let serving = tokio::spawn(server.run(crate::shutdown_signal()));

    let mut client = Client::connect(&addr.to_string()).await?;
    let capacity = args.demo_identifiers.max(1_000_000);
    client
        .create_set(DEMO_SET, capacity, 1e-6, "sha256")
        .await?;
    let half = args.demo_identifiers / 2;
    let mut keys = Vec::with_capacity(args.demo_identifiers as usize);
    for i in 0..half {
        keys.push(leakbloom_ident::key(Kind::Email, &demo_email(i), None, None)?.1);
    }
    for i in 0..args.demo_identifiers - half {
        keys.push(leakbloom_ident::key(Kind::Phone, &demo_phone(i), None, None)?.1);
    }
    client.insert(DEMO_SET, &keys).await?;

    let example = demo_email(42);
    let key = leakbloom_ident::key(Kind::Email, &example, None, None)?.1;
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(key);
    println!(
        "leakbloom dev: node serving on {addr} ({shards} shards, in memory)\n\
         demo set {DEMO_SET:?}: {n} synthetic identifiers: {emails} emails {first} .. {last_email}, \
         {phones} phones {phone0} ..\n\n\
         try:\n\
         \x20 leakbloom check --addr {addr} --kind email {example}\n\
         \x20 leakbloom check --addr {addr} --kind phone {phone0} +447911123456\n\
         \x20 leakbloom sets list --addr {addr}\n\
         \x20 grpcurl -plaintext {addr} list leakbloom.v1.Lookup\n\
         \x20 grpcurl -plaintext -d '{{\"sets\":[\"{DEMO_SET}\"],\"keys\":\"{key_b64}\"}}' {addr} leakbloom.v1.Lookup/Check\n\
         \x20   (keys = base64 of SHA-256(\"{example}\"); present \"AQ==\" means bit 0 is set: may be in the set)\n\n\
         Ctrl-C stops it.",
        shards = args.shards,
        n = args.demo_identifiers,
        emails = half,
        first = demo_email(0),
        last_email = demo_email(half.saturating_sub(1)),
        phones = args.demo_identifiers - half,
        phone0 = demo_phone(0),
    );
    serving.await??;
    Ok(())
}
