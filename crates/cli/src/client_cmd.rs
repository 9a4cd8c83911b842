//! Client subcommands: `sets`, `insert`, `check`, `hash`.
//!
//! Identifiers are normalised and hashed here, per set: a set's `hashing` field says whether
//! its keys are SHA-256 or HMAC-SHA256 under a pepper, which `--pepper-file` supplies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use leakbloom_client::{Client, Consistency, Key, SetInfo};
use leakbloom_ident::{Hashing, Kind, Pepper};

use crate::DEFAULT_ADDR;

/// The server to talk to.
#[derive(clap::Args, Debug)]
pub struct AddrArgs {
    /// Address of a leakbloom node or router.
    #[arg(long, global = true, env = "LEAKBLOOM_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// Route in the client: learn the shard map from --addr (a node) and send each shard's
    /// keys straight to a replica that holds it, without a router's hop.
    #[arg(long, global = true, env = "LEAKBLOOM_DIRECT")]
    pub direct: bool,
}

impl AddrArgs {
    /// A client for these arguments: through --addr, or routing itself.
    pub async fn client(&self) -> Result<Client> {
        Ok(match self.direct {
            true => Client::direct(std::slice::from_ref(&self.addr)).await?,
            false => Client::connect(&self.addr).await?,
        })
    }
}

/// How identifiers become keys.
#[derive(clap::Args, Debug)]
pub struct IdentArgs {
    /// What the identifiers are: phone, email or other.
    #[arg(long)]
    pub kind: Kind,
    /// Default region for phone numbers not in +international form (ISO 3166, e.g. GB, US).
    #[arg(long)]
    pub region: Option<String>,
    /// File holding the pepper for sets hashed with hmac-sha256:PEPPER_ID (the file's bytes,
    /// one trailing newline removed, at least 16 bytes).
    #[arg(long)]
    pub pepper_file: Option<PathBuf>,
}

impl IdentArgs {
    fn pepper(&self) -> Result<Option<Pepper>> {
        let Some(path) = &self.pepper_file else {
            return Ok(None);
        };
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Some(Pepper::from_file_bytes(&bytes).with_context(
            || format!("invalid pepper file {}", path.display()),
        )?))
    }

    /// Canonical forms of `identifiers`, or an error naming every invalid one by position
    /// (`what` names positions: "argument", "line").
    fn canonicalize(&self, identifiers: &[String], what: &str) -> Result<Vec<String>> {
        let mut canonical = Vec::with_capacity(identifiers.len());
        let mut errors = Vec::new();
        for (i, identifier) in identifiers.iter().enumerate() {
            match leakbloom_ident::canonicalize(self.kind, identifier, self.region.as_deref()) {
                Ok(c) => canonical.push(c),
                Err(e) => errors.push(format!("{what} {}: invalid {}: {e}", i + 1, self.kind)),
            }
        }
        if errors.is_empty() {
            return Ok(canonical);
        }
        const SHOWN: usize = 10;
        let total = errors.len();
        let more = errors.len().saturating_sub(SHOWN);
        errors.truncate(SHOWN);
        if more > 0 {
            errors.push(format!("... and {more} more"));
        }
        bail!(
            "{total} invalid identifier(s), nothing was sent:\n  {}",
            errors.join("\n  ")
        )
    }
}

/// Derives keys for a set's hashing scheme.
fn keys_for(hashing: &Hashing, pepper: Option<&Pepper>, canonical: &[String]) -> Result<Vec<Key>> {
    Ok(match hashing {
        Hashing::Sha256 => canonical
            .iter()
            .map(|c| leakbloom_ident::sha256_key(c))
            .collect(),
        Hashing::HmacSha256 { pepper_id } => {
            let Some(pepper) = pepper else {
                bail!("this set is keyed with hmac-sha256:{pepper_id}: pass --pepper-file");
            };
            canonical
                .iter()
                .map(|c| leakbloom_ident::hmac_key(pepper, c))
                .collect()
        }
    })
}

fn parse_hashing(info: &SetInfo) -> Result<Hashing> {
    info.hashing.parse().with_context(|| {
        format!(
            "set {:?} has a hashing scheme this client does not know",
            info.name
        )
    })
}

#[derive(clap::Args, Debug)]
pub struct SetsArgs {
    #[command(flatten)]
    addr: AddrArgs,
    #[command(subcommand)]
    command: SetsCommand,
}

#[derive(clap::Subcommand, Debug)]
enum SetsCommand {
    /// Create a set (idempotent with equal parameters).
    Create {
        /// Set name: 1-64 characters of [a-z0-9._-].
        name: String,
        /// Number of keys to size the set for.
        #[arg(long)]
        capacity: u64,
        /// Target false-positive rate at capacity, e.g. 1e-6.
        #[arg(long)]
        fpr: f64,
        /// sha256 or hmac-sha256:PEPPER_ID.
        #[arg(long, default_value = "sha256")]
        hashing: String,
    },
    /// One line per set, name first.
    List,
    /// A set's parameters and fill statistics.
    Get {
        /// Set name.
        name: String,
    },
    /// Drop a set and all its keys.
    Drop {
        /// Set name.
        name: String,
    },
}

fn set_line(info: &SetInfo) -> String {
    format!(
        "{}\tcapacity={} fpr={:e} hashing={} estimated_keys={} fill_ratio={:.4} estimated_fpr={:.3e} \
         memory_bytes={} shards={} hash_count={} bits_per_key={:.2}",
        info.name,
        info.capacity,
        info.fpr,
        info.hashing,
        info.estimated_keys,
        info.fill_ratio,
        info.estimated_fpr,
        info.memory_bytes,
        info.shards,
        info.hash_count,
        info.bits_per_key
    )
}

pub async fn sets(args: SetsArgs) -> Result<()> {
    let mut client = args.addr.client().await?;
    match args.command {
        SetsCommand::Create {
            name,
            capacity,
            fpr,
            hashing,
        } => println!(
            "{}",
            set_line(&client.create_set(&name, capacity, fpr, &hashing).await?)
        ),
        SetsCommand::List => {
            for info in client.list_sets().await? {
                println!("{}", set_line(&info));
            }
        }
        SetsCommand::Get { name } => println!("{}", set_line(&client.get_set(&name).await?)),
        SetsCommand::Drop { name } => {
            client.drop_set(&name).await?;
            println!("dropped {name}");
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct InsertArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// The set to insert into.
    #[arg(long)]
    set: String,
    #[command(flatten)]
    ident: IdentArgs,
    /// Read identifiers from this file, one per line (blank lines skipped).
    #[arg(long, conflicts_with = "identifiers")]
    file: Option<PathBuf>,
    /// Identifiers to insert.
    identifiers: Vec<String>,
}

/// Reads non-blank lines; returns them with their 1-based line numbers.
fn read_lines(path: &Path) -> Result<(Vec<String>, Vec<usize>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| (line.to_string(), n + 1))
        .unzip())
}

pub async fn insert(args: InsertArgs) -> Result<()> {
    let (identifiers, canonical) = match &args.file {
        Some(path) => {
            let (lines, numbers) = read_lines(path)?;
            let canonical = args.ident.canonicalize(&lines, "line").map_err(|e| {
                // Positions above count non-blank lines; say so when they differ.
                if numbers.iter().enumerate().any(|(i, n)| i + 1 != *n) {
                    e.context(format!(
                        "{}: positions count non-blank lines",
                        path.display()
                    ))
                } else {
                    e.context(path.display().to_string())
                }
            })?;
            (lines.len(), canonical)
        }
        None => {
            if args.identifiers.is_empty() {
                bail!("no identifiers: give them as arguments or with --file");
            }
            let canonical = args.ident.canonicalize(&args.identifiers, "argument")?;
            (args.identifiers.len(), canonical)
        }
    };
    let mut client = args.addr.client().await?;
    let info = client.get_set(&args.set).await?;
    let keys = keys_for(
        &parse_hashing(&info)?,
        args.ident.pepper()?.as_ref(),
        &canonical,
    )
    .with_context(|| format!("set {:?}", info.name))?;
    let acknowledged = client.insert(&args.set, &keys).await?;
    println!(
        "inserted {acknowledged} of {identifiers} identifiers into {}",
        args.set
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// Sets to check (repeatable); every set when absent.
    #[arg(long = "set")]
    sets: Vec<String>,
    #[command(flatten)]
    ident: IdentArgs,
    /// Read consistency: `linearizable` (reflects every acknowledged insert) or `any` (any
    /// replica's applied state: fastest, may miss a very recent insert).
    #[arg(long, default_value = "linearizable")]
    consistency: Consistency,
    /// Identifiers to check.
    #[arg(required = true)]
    identifiers: Vec<String>,
}

pub async fn check(args: CheckArgs) -> Result<()> {
    let canonical = args.ident.canonicalize(&args.identifiers, "argument")?;
    let pepper = args.ident.pepper()?;
    let mut client = args.addr.client().await?;
    let infos = if args.sets.is_empty() {
        client.list_sets().await?
    } else {
        let mut infos = Vec::new();
        for name in &args.sets {
            infos.push(client.get_set(name).await?);
        }
        infos
    };
    // Sets sharing a hashing scheme share keys: one request per scheme.
    let mut by_hashing: BTreeMap<String, (Hashing, Vec<String>)> = BTreeMap::new();
    for info in &infos {
        let hashing = parse_hashing(info)?;
        if hashing.pepper_id().is_some() && pepper.is_none() {
            if args.sets.is_empty() {
                eprintln!(
                    "skipping set {}: keyed with {hashing}, pass --pepper-file to check it",
                    info.name
                );
                continue;
            }
            bail!(
                "set {} is keyed with {hashing}: pass --pepper-file",
                info.name
            );
        }
        by_hashing
            .entry(info.hashing.clone())
            .or_insert_with(|| (hashing, Vec::new()))
            .1
            .push(info.name.clone());
    }
    let consistency = args.consistency;
    let mut found: Vec<Vec<String>> = vec![Vec::new(); canonical.len()];
    for (hashing, sets) in by_hashing.values() {
        let keys = keys_for(hashing, pepper.as_ref(), &canonical)?;
        for membership in client.check(sets, &keys, consistency).await? {
            for (i, present) in membership.present.iter().enumerate() {
                if *present {
                    found[i].push(membership.set.clone());
                }
            }
        }
    }
    for (identifier, mut sets) in args.identifiers.iter().zip(found) {
        sets.sort();
        let sets = if sets.is_empty() {
            "-".to_string()
        } else {
            sets.join(",")
        };
        println!("{identifier}\t{sets}");
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct HashArgs {
    #[command(flatten)]
    ident: IdentArgs,
    /// The identifier.
    identifier: String,
}

pub fn hash(args: HashArgs) -> Result<()> {
    let canonical = args
        .ident
        .canonicalize(std::slice::from_ref(&args.identifier), "argument")?
        .remove(0);
    let key = match args.ident.pepper()? {
        Some(pepper) => leakbloom_ident::hmac_key(&pepper, &canonical),
        None => leakbloom_ident::sha256_key(&canonical),
    };
    println!("{canonical}\t{}", hex::encode(key));
    Ok(())
}
