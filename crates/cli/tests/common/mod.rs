//! Helpers shared by the process tests: free ports, `leakbloom` child processes, and waiting
//! until a server finds every acknowledged key.

use std::io::{BufRead, BufReader};
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

/// A child process, killed (SIGKILL) on drop; `ready` fires on the first stderr line that
/// contains the marker it was started with.
pub struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    ready: mpsc::Receiver<()>,
}

impl Proc {
    pub fn start(args: &[String], marker: &'static str) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
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

/// Waits (up to 30 s) until `addr` finds every one of `keys` in `set` with any-replica
/// checks (its replicas may still be catching up); panics naming `what` and the count missing.
pub async fn wait_until_all_found(addr: &str, what: &str, set: &str, keys: &[Key]) {
    let mut client = Client::connect(addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = client
            .check(&[set.to_string()], keys, Consistency::AnyReplica)
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
