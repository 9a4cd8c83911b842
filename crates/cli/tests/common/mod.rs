//! Helpers shared by the process tests: free ports, node command lines, `leakbloom` child
//! processes, and waiting until a server finds every acknowledged key.

// Each test binary uses only some of the helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use leakbloom_client::{Client, Consistency, Key};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_leakbloom");

/// A free port on 127.0.0.1 for a child to bind later (see [`leakbloom_node::server::free_port`]).
pub fn free_port() -> u16 {
    leakbloom_node::server::free_port([127, 0, 0, 1].into()).expect("a free port")
}

/// The command lines of a cluster of `leakbloom node` processes on 127.0.0.1: free client
/// and peer ports, every node in `--peers`, data directories `node-I` under one directory.
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
        let peer_listens: Vec<String> = (0..count)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers = peer_listens
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{}={addr}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        Nodes {
            listens: (0..count)
                .map(|_| format!("127.0.0.1:{}", free_port()))
                .collect(),
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
        let mut args: Vec<String> = [
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
            &self.shards.to_string(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args
    }
}

/// A child process, killed (SIGKILL) on drop; `ready` fires on the first stderr line that
/// contains the marker it was started with.
pub struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    ready: mpsc::Receiver<()>,
}

impl Proc {
    pub fn start(args: &[String], marker: &'static str) -> Proc {
        let mut command = Command::new(BIN);
        command.args(args);
        Proc::spawn(command, marker)
    }

    /// [`start`](Self::start) with the process's address space capped at `bytes`
    /// (`ulimit -v`, which sets `RLIMIT_AS`): a machine with that much memory, as far as the
    /// node can tell.
    pub fn start_in_address_space(args: &[String], marker: &'static str, bytes: u64) -> Proc {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", bytes / 1024))
            .arg(BIN)
            .args(args);
        Proc::spawn(command, marker)
    }

    /// Runs `command` with its log on a pipe; ready once a log line contains `marker`.
    fn spawn(mut command: Command, marker: &'static str) -> Proc {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("LEAKBLOOM_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .env_remove("LEAKBLOOM_LOG")
            .spawn()
            .expect("spawn leakbloom");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, ready) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(marker) {
                    let _ = tx.send(());
                }
                lines.lock().unwrap().push(line);
            }
        });
        Proc { child, log, ready }
    }

    pub fn wait_ready(&self) {
        self.ready
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("process did not start:\n{}", self.log()));
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Proc {
    /// Freezes the process with SIGSTOP until the returned guard is dropped (SIGCONT): its
    /// sockets stay open and its connections up, but nothing answers.
    pub fn freeze(&self) -> Frozen<'_> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        signal(pid, libc::SIGSTOP);
        Frozen { pid, _proc: self }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process frozen by [`Proc::freeze`]; dropping it (also when a test panics) lets the process
/// run again, so no stopped process is left behind.
pub struct Frozen<'a> {
    pid: libc::pid_t,
    _proc: &'a Proc,
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        signal(self.pid, libc::SIGCONT);
    }
}

fn signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) only sends a signal; `pid` is our own child, not yet reaped (the `Proc`
    // it belongs to is borrowed).
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        sent,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// Waits (up to 30 s) until `addr` finds every one of `keys` in `set` with any-replica
/// checks (its replicas may still be catching up); panics naming `what` and the count missing.
pub async fn wait_until_all_found(addr: &str, what: &str, set: &str, keys: &[Key]) {
    let mut client = Client::connect(addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = client
            .check(&[set.to_string()], keys, Consistency::Any)
            .await
            .unwrap();
        let missing = found[0].present.iter().filter(|&&p| !p).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} misses {missing} of {} acknowledged keys",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
