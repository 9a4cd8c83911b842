//! `leakbloom bench e2e`: an end-to-end load generator against a node (or router) on this
//! machine, through the generated tonic client, or with `--direct` through the Rust client
//! routing itself (shard map from the node at `--addr`, each shard's keys straight to a
//! replica), or with `--redis` against a Redis server with the RedisBloom module, the peer
//! leakbloom is compared with ([`crate::bench_redis`]: the same keys and shapes as
//! `BF.MEXISTS` / `BF.EXISTS` / `BF.MADD` / `BF.ADD`).
//!
//! It opens `--conns` separate HTTP/2 connections (TCP_NODELAY, 256 KiB frames, as
//! `leakbloom_client` connects), keeps `--concurrency` requests in flight spread over them
//! (one task per in-flight request, task `t` on connection `t % conns`; with `--direct`, each
//! "connection" is a direct client with a channel per node; with `--redis`, each task has a
//! TCP connection of its own), and sends `Check` or `Insert` requests of `--batch` random keys
//! to one set for `--seconds` after a `--warmup`. It prints exactly one line on stdout:
//!
//! ```text
//! target=leakbloom mode=check batch=1024 conns=2 consistency=any route=router keys_per_s=8501373 p50_ms=1.450 p99_ms=8.126 p999_ms=16.056 errors=0
//! ```
//!
//! - `target`: `leakbloom`, or `redis` (then `conns` is `--concurrency`, one connection per
//!   request in flight, and `consistency` and `route` are `none`).
//! - `keys_per_s`: keys in successful requests started in the measured window, divided by the
//!   time from the window's start until the last of them finished. For `batch=1` it is also the
//!   request rate; `requests_per_s` and the largest latency go to stderr.
//! - `p50_ms`, `p99_ms`, `p999_ms`: latency of one successful request (send to decoded reply)
//!   as the client sees it, from a log-linear histogram (≤ 0.8 % relative error), in ms.
//! - `errors`: failed requests in the measured window (error statuses or replies, malformed
//!   replies, and requests still unanswered [`STRAGGLER_TIMEOUT`] after the window). The first
//!   error's code and message go to stderr once; keys never do.
//!
//! With `--window-seconds N` the measured window is also cut into windows of N seconds (the
//! last one shorter if `--seconds` is not a multiple of N): a request belongs to the window it
//! started in, and as soon as every task has moved past a window, one line for it goes to
//! stderr, `window=K keys_per_s=... p50_ms=... p99_ms=... errors=...` (K from 0; keys/s over
//! the window's length). The stdout line then ends with two more fields,
//! `worst_window_p99_ms=... median_window_p99_ms=...` (the largest p99 of a window and the
//! lower median of them, over windows with a successful request): how much worse the worst
//! stretch of a long insert run is than a typical one.
//!
//! Before the timed window it connects, generates all key buffers (from `--seed`, so the
//! generator does not time its own random numbers; each request sends a refcounted `Bytes`
//! slice of them, which prost copies once into the HTTP/2 buffer, with no packing of its own;
//! for Redis the commands are encoded from the same buffers before the clock, too) and sends
//! one probe request, so a missing set, an oversized batch or an unreachable server fails at
//! once with a message saying what to do. The set must exist: this command never creates one.
//!
//! Caveats:
//! - Loopback only (127.0.0.0/8, `[::1]`, `localhost`): this tool generates heavy load, so any
//!   other address is refused before a connection is made.
//! - Client and server share this machine's cores (2 on the project's VMs): a faster client
//!   leaves less CPU to the server, so read the numbers as "this machine serving and loading
//!   itself", a lower bound for a server with cores of its own. Compare runs on one machine only.
//! - Keys are uniform random. A check of random keys is mostly absent keys; an insert of them
//!   fills the set past its capacity if run long enough (the pool of at most
//!   [`POOL_KEYS`] keys repeats, so bits stop changing, but the work per key does not).
//! - `--consistency linearizable` costs whatever the node's linearizable read costs (a Raft
//!   ReadIndex round where replication is wired in): run `any` beside it to see that cost.
//! - It runs on the CLI's multi-thread tokio runtime: a current-thread client runtime measured
//!   no better here (single-key checks within noise, batch 1024 about 10 % slower).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use leakbloom_client::{Client, Consistency};
use leakbloom_proto::v1::lookup_client::LookupClient;
use leakbloom_proto::v1::{CheckRequest, InsertRequest};
use rand::{rngs::StdRng, RngCore, SeedableRng};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::bench_redis;
use crate::DEFAULT_ADDR;

/// Most keys per request: 32 MiB of keys, far past any server's `max_batch`.
const MAX_BATCH: usize = 1 << 20;
/// Most requests in flight: each task keeps a 58 KiB histogram, and two cores are saturated
/// long before this.
const MAX_CONCURRENCY: usize = 1024;
/// Longest measured window: a load generator must stop by itself.
const MAX_SECONDS: f64 = 3600.0;
/// Longest warm-up.
const MAX_WARMUP: f64 = 600.0;
/// Distinct keys generated before the run (32 MiB): enough that checks touch filter blocks
/// all over memory instead of a few cached ones.
const POOL_KEYS: usize = 1 << 20;
/// Shortest `--window-seconds`: windows are for long runs, and each holds a histogram.
const MIN_WINDOW: f64 = 0.1;
/// Most windows in one run: each window not yet printed holds a 58 KiB histogram.
const MAX_WINDOWS: f64 = 36_000.0;
/// How long the probe request may take before the run is abandoned.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests still in flight at the end of the window may take before they count as
/// errors: this bounds the whole run to warm-up + seconds + this.
pub const STRAGGLER_TIMEOUT: Duration = Duration::from_secs(5);

/// Arguments of `leakbloom bench e2e`.
#[derive(clap::Args, Debug)]
pub struct E2eBenchArgs {
    /// Address of a leakbloom node or router on this machine (loopback only); with --redis, of
    /// a Redis server with the RedisBloom module.
    #[arg(long, env = "LEAKBLOOM_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// Load the Redis server at --addr instead (RedisBloom's BF.MEXISTS, BF.EXISTS, BF.MADD,
    /// BF.ADD on --redis-key, same keys and shapes; one connection per request in flight).
    #[arg(long, conflicts_with_all = ["set", "conns", "consistency", "direct"])]
    pub redis: bool,
    /// The RedisBloom key to check or insert into, with --redis; it must exist (`BF.RESERVE`).
    #[arg(long, default_value = "bench", requires = "redis")]
    pub redis_key: String,
    /// What each request does.
    #[arg(long, value_enum, default_value_t = Mode::Check)]
    pub mode: Mode,
    /// The set to check or insert into; it must exist (`leakbloom sets create`).
    #[arg(long, default_value = "demo")]
    pub set: String,
    /// Keys per request (1..=1048576; the server refuses more than its max batch).
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// Separate HTTP/2 connections.
    #[arg(long, default_value_t = 2)]
    pub conns: usize,
    /// Requests in flight at once, spread over the connections (at least --conns).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Read consistency of checks, `linearizable` or `any` (inserts are always acknowledged
    /// once committed).
    #[arg(long, default_value = "linearizable")]
    pub consistency: Consistency,
    /// Route in the client: learn the shard map from --addr (a node) and send each shard's
    /// keys straight to a replica, instead of sending every request to --addr.
    #[arg(long)]
    pub direct: bool,
    /// Length of the measured window in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds of load before the measured window, excluded from the numbers.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seed of the random keys.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also cut the measured window into windows of this many seconds: one line of keys/s and
    /// latency per window on stderr, the worst and median window p99 on the result line.
    #[arg(long)]
    pub window_seconds: Option<f64>,
}

/// What each request does.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `Check` against the one set.
    Check,
    /// `Insert` into the set.
    Insert,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Check => "check",
            Mode::Insert => "insert",
        }
    }
}

impl E2eBenchArgs {
    /// Checks the arguments; the error names the first bad one and what is allowed.
    fn validate(&self) -> Result<()> {
        ensure!(
            (1..=MAX_BATCH).contains(&self.batch),
            "--batch must be 1..={MAX_BATCH} keys, got {}",
            self.batch
        );
        // A Redis run opens --concurrency connections of its own; --conns does not apply.
        if !self.redis {
            ensure!(self.conns >= 1, "--conns must be at least 1");
            ensure!(
                self.concurrency >= self.conns,
                "--concurrency ({}) must be at least --conns ({}): each connection needs a \
                 request in flight",
                self.concurrency,
                self.conns
            );
        }
        ensure!(
            (1..=MAX_CONCURRENCY).contains(&self.concurrency),
            "--concurrency must be 1..={MAX_CONCURRENCY}, got {}",
            self.concurrency
        );
        ensure!(
            self.seconds > 0.0 && self.seconds <= MAX_SECONDS,
            "--seconds must be more than 0 and at most {MAX_SECONDS}, got {}",
            self.seconds
        );
        ensure!(
            (0.0..=MAX_WARMUP).contains(&self.warmup),
            "--warmup must be 0..={MAX_WARMUP} seconds, got {}",
            self.warmup
        );
        if let Some(window) = self.window_seconds {
            ensure!(
                window >= MIN_WINDOW && self.seconds / window <= MAX_WINDOWS,
                "--window-seconds must be at least {MIN_WINDOW} and cut --seconds into at most \
                 {MAX_WINDOWS} windows, got {window}"
            );
        }
        ensure!(
            !(self.mode == Mode::Insert && self.consistency == Consistency::Any),
            "--consistency any applies to checks only: inserts are always acknowledged once \
             committed (drop --consistency, or use --mode check)"
        );
        Ok(())
    }
}

/// Runs the benchmark and prints its line.
pub async fn run(args: E2eBenchArgs) -> Result<()> {
    args.validate()?;
    let addr = loopback_addr(&args.addr)?;
    let mut slots = connect(&args, &addr).await?;
    let keys = key_buffers(args.batch, args.seed);
    let load = Arc::new(Load {
        mode: args.mode,
        set: args.set.clone(),
        consistency: args.consistency,
        batch: args.batch,
        buffers: match args.redis {
            true => bench_redis::commands(args.mode, &args.redis_key, &keys),
            false => keys,
        },
        tasks: args.concurrency,
    });
    probe(&load, &mut slots[0], &args, &addr).await?;

    let from = Instant::now() + Duration::from_secs_f64(args.warmup);
    let window = Window {
        from,
        until: from + Duration::from_secs_f64(args.seconds),
    };
    let windows = args
        .window_seconds
        .map(|length| Arc::new(Windows::new(window, length, args.concurrency)));
    let tasks: Vec<_> = slots
        .into_iter()
        .enumerate()
        .map(|(task, slot)| tokio::spawn(drive(load.clone(), slot, task, window, windows.clone())))
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.context("a load task panicked")?);
    }
    let measured = Instant::now().saturating_duration_since(window.from);

    if let Some(failure) = &total.first_error {
        eprintln!("bench e2e: first error: {failure}");
    }
    let seconds = measured.as_secs_f64();
    let keys_per_s = total.keys as f64 / seconds;
    let ms = |q: f64| ms(total.latency.quantile(q));
    let (target, conns, consistency, route) = match args.redis {
        true => ("redis", args.concurrency, "none", "none"),
        false => (
            "leakbloom",
            args.conns,
            args.consistency.as_str(),
            if args.direct { "direct" } else { "router" },
        ),
    };
    let windows = match &windows {
        Some(windows) => windows.summary(),
        None => String::new(),
    };
    println!(
        "target={target} mode={} batch={} conns={conns} consistency={consistency} route={route} \
         keys_per_s={keys_per_s:.0} p50_ms={} p99_ms={} p999_ms={} errors={}{windows}",
        args.mode.name(),
        args.batch,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        total.errors,
    );
    eprintln!(
        "bench e2e: concurrency={} requests={} requests_per_s={:.0} max_ms={} measured_s={seconds:.3}",
        args.concurrency,
        total.latency.count(),
        total.latency.count() as f64 / seconds,
        ms(1.0),
    );
    ensure!(
        total.latency.count() > 0,
        "no request succeeded in the measured window"
    );
    Ok(())
}

/// Nanoseconds as milliseconds with three decimals; `nan` for none.
fn ms(nanos: Option<u64>) -> String {
    match nanos {
        Some(nanos) => format!("{:.3}", nanos as f64 / 1e6),
        None => "nan".to_string(),
    }
}

/// One slot per task: `--conns` gRPC connections (or direct clients) shared round-robin, or
/// with `--redis` a Redis connection of each task's own.
async fn connect(args: &E2eBenchArgs, addr: &str) -> Result<Vec<Slot>> {
    let mut slots = Vec::with_capacity(args.concurrency);
    if args.redis {
        for _ in 0..args.concurrency {
            slots.push(Slot::Redis(bench_redis::Connection::open(addr).await?));
        }
        return Ok(slots);
    }
    let mut connections = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        // Requests of --batch keys: the server, not this client, says whether that is too many.
        connections.push(match args.direct {
            true => Conn::Direct(Client::direct(&[addr.to_string()]).await?),
            false => {
                let mut client = Client::connect(addr).await?.with_max_batch(args.batch);
                Conn::Raw(client.raw().clone())
            }
        });
    }
    for task in 0..args.concurrency {
        slots.push(Slot::Leakbloom(connections[task % args.conns].clone()));
    }
    Ok(slots)
}

/// `addr` as `host:port` if it names this machine; an error naming the rule otherwise. IP
/// literals are checked as they are; `localhost` is resolved (from /etc/hosts) and must give
/// only loopback addresses; any other name is refused without being resolved.
fn loopback_addr(addr: &str) -> Result<String> {
    let authority = match addr.split_once("://") {
        Some(("http", rest)) => rest.trim_end_matches('/'),
        Some((scheme, _)) => {
            bail!("unsupported scheme {scheme:?} in --addr {addr:?}: use host:port or http://")
        }
        None => addr,
    };
    let refuse = || {
        anyhow::anyhow!(
            "refusing --addr {addr:?}: bench e2e generates heavy load and only targets this \
             machine's loopback (127.0.0.0/8, [::1] or localhost, e.g. {DEFAULT_ADDR})"
        )
    };
    if let Ok(socket) = authority.parse::<SocketAddr>() {
        return match socket.ip().is_loopback() {
            true => Ok(authority.to_string()),
            false => Err(refuse()),
        };
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        bail!("invalid --addr {addr:?}: expected host:port, e.g. {DEFAULT_ADDR}");
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("invalid port in --addr {addr:?}"))?;
    if !host.eq_ignore_ascii_case("localhost") {
        return Err(refuse());
    }
    let resolved: Vec<IpAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .map(|socket| socket.ip())
        .collect();
    ensure!(
        !resolved.is_empty() && resolved.iter().all(IpAddr::is_loopback),
        "refusing --addr {addr:?}: {host} resolves to {resolved:?} here, not only to loopback \
         addresses; pass 127.0.0.1:{port} instead"
    );
    Ok(authority.to_string())
}

/// The request buffers: `POOL_KEYS / batch` buffers of `batch` random keys each (one buffer of
/// `batch` keys when that is larger), all slices of one allocation.
fn key_buffers(batch: usize, seed: u64) -> Vec<Bytes> {
    let count = (POOL_KEYS / batch).max(1);
    let len = batch * std::mem::size_of::<leakbloom_client::Key>();
    let mut pool = vec![0u8; count * len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut pool);
    let pool = Bytes::from(pool);
    (0..count)
        .map(|i| pool.slice(i * len..(i + 1) * len))
        .collect()
}

/// What every request is, shared by all tasks.
#[derive(Debug)]
struct Load {
    mode: Mode,
    set: String,
    consistency: Consistency,
    batch: usize,
    /// What each request sends: `batch` packed keys, or with `--redis` the whole command
    /// carrying those keys.
    buffers: Vec<Bytes>,
    /// Tasks in all: task `t` sends buffers `t`, `t + tasks`, `t + 2 tasks`, ...
    tasks: usize,
}

/// A gRPC connection tasks share.
#[derive(Clone, Debug)]
enum Conn {
    /// The generated client on one connection to --addr.
    Raw(LookupClient<Channel>),
    /// A client routing itself (`--direct`).
    Direct(Client),
}

/// Where one task sends its requests.
#[derive(Debug)]
enum Slot {
    /// One of the shared gRPC connections to leakbloom.
    Leakbloom(Conn),
    /// The task's own connection to Redis (`--redis`).
    Redis(bench_redis::Connection),
}

/// A failed request, as the tally counts it.
#[derive(Debug)]
enum Failure {
    /// leakbloom's error status, or a reply that does not match the request.
    Status(Status),
    /// Redis's error reply, a reply that does not match the command, or a failed connection.
    Redis(bench_redis::Error),
    /// No reply within [`STRAGGLER_TIMEOUT`] after the measured window.
    Unanswered,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Status(status) => write!(f, "{:?}: {}", status.code(), status.message()),
            Failure::Redis(error) => write!(f, "{error}"),
            Failure::Unanswered => write!(
                f,
                "no reply within {STRAGGLER_TIMEOUT:?} after the measured window"
            ),
        }
    }
}

/// A direct client's error as the status the tally records.
fn status(error: leakbloom_client::Error) -> Status {
    match error {
        leakbloom_client::Error::Status(status) => status,
        leakbloom_client::Error::Route(error) => Status::from(error),
        other => Status::internal(other.to_string()),
    }
}

impl Load {
    /// Sends one request of `buffer` and checks that the reply matches it.
    async fn send(&self, slot: &mut Slot, buffer: Bytes) -> Result<(), Failure> {
        match slot {
            Slot::Leakbloom(conn) => self
                .send_leakbloom(conn, buffer)
                .await
                .map_err(Failure::Status),
            Slot::Redis(conn) => {
                let reply = conn.request(&buffer).await.map_err(Failure::Redis)?;
                bench_redis::expect(self.mode, self.batch, &reply).map_err(Failure::Redis)
            }
        }
    }

    /// Sends one request of `keys` to leakbloom and checks that the reply matches it.
    async fn send_leakbloom(&self, conn: &mut Conn, keys: Bytes) -> Result<(), Status> {
        match self.mode {
            Mode::Check => {
                let sets = vec![self.set.clone()];
                let results = match conn {
                    Conn::Raw(client) => {
                        let request = CheckRequest {
                            sets,
                            keys,
                            consistency: self.consistency.wire(),
                        };
                        client.check(request).await?.into_inner().results
                    }
                    Conn::Direct(client) => client
                        .check_packed(&sets, keys, self.consistency)
                        .await
                        .map_err(status)?,
                };
                match results.as_slice() {
                    [result] if result.present.len() == self.batch.div_ceil(8) => Ok(()),
                    _ => Err(Status::internal(
                        "client-side check: the Check reply is not one bitmap of --batch bits",
                    )),
                }
            }
            Mode::Insert => {
                let acknowledged = match conn {
                    Conn::Raw(client) => {
                        let request = InsertRequest {
                            set: self.set.clone(),
                            keys,
                        };
                        client.insert(request).await?.into_inner().keys
                    }
                    Conn::Direct(client) => client
                        .insert_packed(&self.set, keys)
                        .await
                        .map_err(status)?,
                };
                match acknowledged == self.batch as u64 {
                    true => Ok(()),
                    false => Err(Status::internal(
                        "client-side check: the Insert reply acknowledged another number of keys",
                    )),
                }
            }
        }
    }
}

/// One request before the clock starts: fails the run with a useful message if the set (or
/// Redis key, or RedisBloom module) is missing, the batch too large or the server unwell.
async fn probe(load: &Load, slot: &mut Slot, args: &E2eBenchArgs, addr: &str) -> Result<()> {
    if let Slot::Redis(conn) = slot {
        let info = bench_redis::probe(conn, &args.redis_key, addr);
        let Ok(probed) = tokio::time::timeout(PROBE_TIMEOUT, info).await else {
            bail!("BF.INFO got no reply within {PROBE_TIMEOUT:?}; nothing was measured")
        };
        probed?;
    }
    let sent = tokio::time::timeout(PROBE_TIMEOUT, load.send(slot, load.buffers[0].clone()));
    let failure = match sent.await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(failure)) => failure,
        Err(_) => {
            bail!("the first request got no reply within {PROBE_TIMEOUT:?}; nothing was measured")
        }
    };
    if let Failure::Status(status) = &failure {
        if status.code() == Code::NotFound {
            bail!(
                "set {:?} does not exist on {}: create it first, e.g. `leakbloom sets create {} \
                 --capacity 10000000 --fpr 1e-6 --addr {}` (bench e2e never creates sets); the \
                 server said: {}",
                args.set,
                args.addr,
                args.set,
                args.addr,
                status.message()
            );
        }
    }
    bail!("the first request failed, nothing was measured: {failure}")
}

/// The measured window: requests started in `from..until` count.
#[derive(Clone, Copy, Debug)]
struct Window {
    from: Instant,
    until: Instant,
}

/// One task's (then all tasks') results for the measured window, or for one of its windows.
#[derive(Debug, Default)]
struct Tally {
    latency: Histogram,
    /// Keys in successful requests.
    keys: u64,
    /// Failed requests.
    errors: u64,
    /// The first failure seen, warm-up included.
    first_error: Option<Failure>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latency.merge(&other.latency);
        self.keys += other.keys;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// One measured request: its latency and keys if it succeeded, an error if not.
    fn record(&mut self, succeeded: bool, nanos: u64, keys: u64) {
        match succeeded {
            true => {
                self.latency.record(nanos);
                self.keys += keys;
            }
            false => self.errors += 1,
        }
    }
}

/// The measured window cut into windows of `--window-seconds` (`window=K` lines on stderr).
/// Each task tallies the window its requests start in and hands it in when it starts a request
/// in a later one (or stops); a window is printed once every task has moved past it, so its
/// line is whole and the lines come in order.
#[derive(Debug)]
struct Windows {
    from: Instant,
    /// Length of one window.
    length: Duration,
    /// Length of the whole measured window.
    total: Duration,
    /// Windows in the measured window, the last one maybe shorter.
    count: u64,
    state: Mutex<WindowState>,
}

#[derive(Debug)]
struct WindowState {
    /// Windows some task has handed in that are not printed yet.
    pending: BTreeMap<u64, Tally>,
    /// For each task, the first window it may still add to (`u64::MAX` once it stopped).
    progress: Vec<u64>,
    /// Each printed window's p99 in ns, in order; `None` when no request in it succeeded.
    p99s: Vec<Option<u64>>,
}

impl Windows {
    /// `window` cut into windows of `window_seconds`, for `tasks` tasks.
    fn new(window: Window, window_seconds: f64, tasks: usize) -> Windows {
        let length = Duration::from_secs_f64(window_seconds);
        let total = window.until - window.from;
        Windows {
            from: window.from,
            length,
            total,
            count: total.as_nanos().div_ceil(length.as_nanos()).max(1) as u64,
            state: Mutex::new(WindowState {
                pending: BTreeMap::new(),
                progress: vec![0; tasks],
                p99s: Vec::new(),
            }),
        }
    }

    /// The window a request started at `started` (in the measured window) belongs to.
    fn index(&self, started: Instant) -> u64 {
        let elapsed = started.saturating_duration_since(self.from).as_nanos();
        ((elapsed / self.length.as_nanos()) as u64).min(self.count - 1)
    }

    /// Task `task` hands in its tally of a window, if it has one, and adds to no window
    /// before `next` from now on; then every window all tasks have moved past is printed.
    fn hand_in(&self, task: usize, tally: Option<(u64, Tally)>, next: u64) {
        let mut state = self.state.lock().expect("window state lock");
        if let Some((index, tally)) = tally {
            state.pending.entry(index).or_default().merge(tally);
        }
        state.progress[task] = next;
        let done = state.progress.iter().copied().min().unwrap_or(u64::MAX);
        while (state.p99s.len() as u64) < done.min(self.count) {
            let index = state.p99s.len() as u64;
            let tally = state.pending.remove(&index).unwrap_or_default();
            let start = self.length * index as u32;
            let length = self.length.min(self.total - start);
            eprintln!(
                "window={index} keys_per_s={:.0} p50_ms={} p99_ms={} errors={}",
                tally.keys as f64 / length.as_secs_f64(),
                ms(tally.latency.quantile(0.5)),
                ms(tally.latency.quantile(0.99)),
                tally.errors,
            );
            state.p99s.push(tally.latency.quantile(0.99));
        }
    }

    /// The result line's extra fields, once every task has stopped: the worst window's p99 and
    /// the lower median of the windows' p99s (windows with a successful request only).
    fn summary(&self) -> String {
        let state = self.state.lock().expect("window state lock");
        let mut p99s: Vec<u64> = state.p99s.iter().flatten().copied().collect();
        p99s.sort_unstable();
        format!(
            " worst_window_p99_ms={} median_window_p99_ms={}",
            ms(p99s.last().copied()),
            ms(p99s.get(p99s.len().saturating_sub(1) / 2).copied()),
        )
    }
}

/// One in-flight request after another on `slot` until the window closes.
async fn drive(
    load: Arc<Load>,
    mut slot: Slot,
    task: usize,
    window: Window,
    windows: Option<Arc<Windows>>,
) -> Tally {
    let mut tally = Tally::default();
    // The window this task's requests start in now, and its tally so far.
    let mut current: Option<(u64, Tally)> = None;
    let deadline = window.until + STRAGGLER_TIMEOUT;
    let mut next = task;
    loop {
        let started = Instant::now();
        if started >= window.until {
            if let Some(windows) = &windows {
                windows.hand_in(task, current, u64::MAX);
            }
            return tally;
        }
        let measured = started >= window.from;
        if let (true, Some(windows)) = (measured, &windows) {
            let index = windows.index(started);
            if current.as_ref().is_none_or(|(held, _)| *held != index) {
                windows.hand_in(task, current.take(), index);
                current = Some((index, Tally::default()));
            }
        }
        let buffer = load.buffers[next % load.buffers.len()].clone();
        next += load.tasks;
        let result = match tokio::time::timeout_at(deadline, load.send(&mut slot, buffer)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Unanswered),
        };
        if measured {
            let nanos = started.elapsed().as_nanos() as u64;
            tally.record(result.is_ok(), nanos, load.batch as u64);
            if let Some((_, held)) = &mut current {
                held.record(result.is_ok(), nanos, load.batch as u64);
            }
        }
        if let Err(failure) = result {
            tally.first_error.get_or_insert(failure);
        }
    }
}

/// Sub-buckets per power of two, as a power of two: 2^7 = 128 gives ≤ 1/128 relative error.
const SUB_BITS: u32 = 7;
/// Sub-buckets per power of two.
const SUB: usize = 1 << SUB_BITS;
/// Buckets for every `u64`: bucket(u64::MAX) + 1.
const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB + SUB;

/// A log-linear histogram of nanoseconds: exact below 256, then 128 buckets per power of
/// two, like HdrHistogram with 2 significant digits, in 58 KiB.
#[derive(Clone, Debug)]
struct Histogram {
    counts: Vec<u64>,
    count: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// The bucket of `value`: values below 2·SUB have their own; above, the top SUB_BITS + 1
    /// bits of `value` pick one of SUB buckets in its power of two.
    fn bucket(value: u64) -> usize {
        let shift = (63 - (value | 1).leading_zeros()).saturating_sub(SUB_BITS);
        shift as usize * SUB + (value >> shift) as usize
    }

    /// The largest value that falls in `bucket`.
    fn highest(bucket: usize) -> u64 {
        if bucket < 2 * SUB {
            return bucket as u64;
        }
        let shift = bucket / SUB - 1;
        let top = (bucket - shift * SUB) as u128;
        u64::try_from(((top + 1) << shift) - 1).unwrap_or(u64::MAX)
    }

    fn record(&mut self, value: u64) {
        self.counts[Self::bucket(value)] += 1;
        self.count += 1;
        self.max = self.max.max(value);
    }

    fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0..=1): the highest value of the bucket holding the
    /// ⌈q·count⌉-th smallest value, at most the largest recorded. `None` when empty.
    fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (bucket, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::highest(bucket).min(self.max));
            }
        }
        unreachable!("the counts add up to count")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        assert_eq!(Histogram::bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(Histogram::highest(BUCKETS - 1), u64::MAX);
        for bucket in 0..BUCKETS - 1 {
            let high = Histogram::highest(bucket);
            assert_eq!(Histogram::bucket(high), bucket, "bucket {bucket}");
            assert_eq!(Histogram::bucket(high + 1), bucket + 1, "bucket {bucket}");
        }
        for value in [0, 1, 255, 256, 257, 1_000_000, 123_456_789_012] {
            let high = Histogram::highest(Histogram::bucket(value));
            assert!(high >= value && (high - value) as f64 <= value as f64 / 128.0);
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        assert_eq!(a.quantile(0.5), None);
        for micros in 1..=1000u64 {
            let target = if micros % 2 == 0 { &mut a } else { &mut b };
            target.record(micros * 1000);
        }
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        for (q, exact) in [(0.5, 500_000u64), (0.99, 990_000), (0.999, 999_000)] {
            let got = a.quantile(q).unwrap();
            assert!(
                got >= exact && got - exact <= exact / 128,
                "q={q} got {got}"
            );
        }
        assert_eq!(a.quantile(1.0), Some(1_000_000));
        // The smallest value's bucket, reported by its highest value.
        assert!((1000..=1000 + 1000 / 128).contains(&a.quantile(0.0).unwrap()));
    }

    #[test]
    fn only_loopback_addresses_are_accepted() {
        for ok in [
            "127.0.0.1:50051",
            "127.3.2.1:1",
            "[::1]:50051",
            "http://127.0.0.1:50051/",
        ] {
            assert!(loopback_addr(ok).is_ok(), "{ok}");
        }
        assert_eq!(loopback_addr("http://127.0.0.1:7/").unwrap(), "127.0.0.1:7");
        for refused in [
            "10.0.0.1:50051",
            "192.168.1.2:50051",
            "8.8.8.8:53",
            "[2001:db8::1]:50051",
            "example.com:50051",
            "0.0.0.0:50051",
        ] {
            let error = loopback_addr(refused).unwrap_err().to_string();
            assert!(error.contains("loopback"), "{refused}: {error}");
        }
        assert!(loopback_addr("https://127.0.0.1:1").is_err());
        assert!(loopback_addr("127.0.0.1").is_err());
    }

    #[test]
    fn key_buffers_are_slices_of_whole_keys() {
        let buffers = key_buffers(1000, 7);
        assert_eq!(buffers.len(), POOL_KEYS / 1000);
        assert!(buffers.iter().all(|b| b.len() == 32_000));
        assert_ne!(buffers[0], buffers[1]);
        assert_eq!(key_buffers(1000, 7)[5], buffers[5]);
        assert_eq!(key_buffers(MAX_BATCH, 1).len(), 1);
    }
}
