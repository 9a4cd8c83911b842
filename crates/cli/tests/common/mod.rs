//! What the process tests share: the `leakbloom` binary run with a test's environment (client
//! commands, servers under [`Proc`] supervision), the command lines of a cluster of nodes,
//! and waiting until a server finds every acknowledged key. Processes, ports and waits in
//! general come from `leakbloom-testkit`.

// Each test binary uses only some of the helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use leakbloom_client::{Client, Consistency, Key};
use leakbloom_testkit::process::Stream;
use leakbloom_testkit::{address_space_capped, eventually, free_port, Proc};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_leakbloom");

/// What a node logs once it serves.
pub const NODE_SERVING: &str = "node serving";

/// What a router logs once it can route.
pub const ROUTER_READY: &str = "shard map learned";

/// How long a test waits for a cluster of processes to catch up (replicas applying what was
/// acknowledged, a restarted node recovering): far beyond an election on a loaded machine.
pub const CATCH_UP: Duration = Duration::from_secs(30);

/// `command` (which runs the binary) with a test's environment: plain-text logs without
/// colours, and none of the caller's `LEAKBLOOM_LOG` filter or `LEAKBLOOM_ADDR` default.
fn in_test_environment(mut command: Command) -> Command {
    command
        .env("LEAKBLOOM_LOG_FORMAT", "text")
        .env("NO_COLOR", "1")
        .env_remove("LEAKBLOOM_LOG")
        .env_remove("LEAKBLOOM_ADDR");
    command
}

/// `leakbloom ARGS`, ready to run.
pub fn leakbloom<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut command = in_test_environment(Command::new(BIN));
    command.args(args);
    command
}

/// Runs `leakbloom ARGS` to its end.
pub fn run(args: &[&str]) -> Output {
    leakbloom(args).output().expect("run leakbloom")
}

/// Runs `leakbloom ARGS`, which must succeed; its stdout.
pub fn stdout_of(args: &[&str]) -> String {
    let output = run(args);
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 on stdout");
    assert!(
        output.status.success(),
        "leakbloom {args:?}: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Starts `leakbloom ARGS`, its stderr (its log) kept.
pub fn start(args: &[String]) -> Proc {
    Proc::spawn(name(args), leakbloom(args), Stream::Stderr)
}

/// [`start`] with the process's address space capped at `bytes`: a machine with that much
/// memory, as far as the node can tell.
pub fn start_in_address_space(args: &[String], bytes: u64) -> Proc {
    let mut command = in_test_environment(address_space_capped(BIN, bytes));
    command.args(args);
    Proc::spawn(name(args), command, Stream::Stderr)
}

/// How a process is named in failures: `leakbloom node --id 2`.
fn name(args: &[String]) -> String {
    let shown = if args.get(1).is_some_and(|arg| arg == "--id") {
        3
    } else {
        1
    };
    let words: Vec<&str> = args.iter().take(shown).map(String::as_str).collect();
    format!("leakbloom {}", words.join(" "))
}

/// Starts a one-node cluster of 4 shards on ports of 127.0.0.1 it picks itself, its data in
/// `data`; returns it once it serves, with the client address it logged (` listen=`; the peer
/// port is ` peer_listen=`).
pub fn start_one_node(data: &Path) -> (Proc, String) {
    let args = [
        "node",
        "--listen",
        "127.0.0.1:0",
        "--peer-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--shards",
        "4",
    ]
    .map(String::from);
    let node = start(&args);
    let addr = address_after(&node.wait_for_line(NODE_SERVING), " listen=");
    (node, addr)
}

/// Starts a router on a free port of 127.0.0.1 in front of the node at `seed` (one node is
/// enough: it learns the others); returns it once it can route, with its address.
pub fn start_router(seed: &str) -> (Proc, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let router = start(&["router", "--listen", &addr, "--nodes", seed].map(String::from));
    router.wait_for_line(ROUTER_READY);
    (router, addr)
}

/// The address that follows `marker` in `line` (`listen=127.0.0.1:4000 ...`).
pub fn address_after(line: &str, marker: &str) -> String {
    let at = line.find(marker).expect("the marker is in the line") + marker.len();
    line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect()
}

/// The command lines of a cluster of `leakbloom node` processes on 127.0.0.1: free client
/// and peer ports, every node in `--peers`, data directories `node-I` under one directory.
#[derive(Debug)]
pub struct Nodes {
    /// Each node's client address, by index (node id minus one).
    pub listens: Vec<String>,
    peer_listens: Vec<String>,
    peers: String,
    dir: PathBuf,
    shards: u32,
}

impl Nodes {
    /// `count` nodes with `shards` shards, their data under `dir`.
    pub fn new(dir: &Path, count: usize, shards: u32) -> Nodes {
        let loopback = || format!("127.0.0.1:{}", free_port());
        let peer_listens: Vec<String> = (0..count).map(|_| loopback()).collect();
        let peers = peer_listens
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{}={addr}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        Nodes {
            listens: (0..count).map(|_| loopback()).collect(),
            peer_listens,
            peers,
            dir: dir.to_path_buf(),
            shards,
        }
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{i}"))
    }

    /// The arguments of node `i` (id `i + 1`), then `extra`.
    pub fn args(&self, i: usize, extra: &[&str]) -> Vec<String> {
        let mut args = self.args_with_shards(i, self.shards);
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args
    }

    /// The arguments of node `i` (id `i + 1`) saying the cluster has `shards` shards.
    pub fn args_with_shards(&self, i: usize, shards: u32) -> Vec<String> {
        [
            "node",
            "--id",
            &(i + 1).to_string(),
            "--listen",
            &self.listens[i],
            "--peer-listen",
            &self.peer_listens[i],
            "--peers",
            &self.peers,
            "--data-dir",
            self.data_dir(i).to_str().unwrap(),
            "--shards",
            &shards.to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Starts every node and waits until each serves.
    pub fn start_all(&self) -> Vec<Proc> {
        let procs: Vec<Proc> = (0..self.listens.len())
            .map(|i| start(&self.args(i, &[])))
            .collect();
        for proc in &procs {
            proc.wait_for_line(NODE_SERVING);
        }
        procs
    }
}

/// Creates the set `leak` (SHA-256 keys, fpr 1e-6) of `capacity` keys through `addr`.
pub async fn create_leak(addr: &str, capacity: u64) {
    let mut client = Client::connect(addr).await.unwrap();
    client
        .create_set("leak", capacity, 1e-6, "sha256")
        .await
        .unwrap();
}

/// Waits (up to [`CATCH_UP`]) until `addr` finds every one of `keys` in `set` with
/// any-replica checks (its replicas may still be catching up); `what` names the server in the
/// failure, with the count it missed last.
pub async fn wait_until_all_found(addr: &str, what: &str, set: &str, keys: &[Key]) {
    let mut client = Client::connect(addr).await.unwrap();
    let sets = [set.to_string()];
    let until = format!("{what} finds all {} acknowledged keys", keys.len());
    eventually(until, CATCH_UP, async || {
        let found = client.check(&sets, keys, Consistency::Any).await.unwrap();
        match found[0].present.iter().filter(|&&p| !p).count() {
            0 => Ok(()),
            missing => Err(format!("{missing} missing")),
        }
    })
    .await;
}
