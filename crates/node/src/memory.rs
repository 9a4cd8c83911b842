//! Filter memory: how much a node may hold by default ([`default_limit`], from what the process
//! can really get) and what it holds now ([`Budget`]).
//!
//! # Why two checks
//! A set is admitted by the cluster catalog against every hosting node's limit before its
//! creation commits (see [`crate::catalog`]): concurrent creates are ordered by the catalog's
//! log, so they cannot oversubscribe a node. Each replica then reserves its partition's memory
//! from its node's [`Budget`] when it applies the create, and the filter is allocated. The
//! second check only fails when the node's limit shrank since admission (restarted with less
//! memory) or the operating system refuses the allocation anyway; the replica then stalls
//! instead of panicking (`leakbloom_raft::node`, "Stalled replicas") and retries until the
//! memory is there.
//!
//! # Caveats
//! - A filter's memory is counted as [`leakbloom_filter::Geometry::memory_bytes`] (its blocks,
//!   rounded up to 2 MiB huge pages when mapped); snapshots in flight (a shard's filters are
//!   encoded into one buffer, and a restore holds old and new filters until it swaps them) are
//!   what the rest of [`DEFAULT_SHARE`] is for.
//! - `RLIMIT_AS` counts address space, not memory: thread stacks and allocator arenas take
//!   some of it before any filter does.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Share of the memory the process can get that filters may take by default. The rest holds a
/// shard snapshot being built (a copy of its filters) or restored (old and new filters at
/// once), Raft entries in flight, gRPC buffers, and the page cache that the log's fsyncs and
/// reads go through.
pub const DEFAULT_SHARE: f64 = 0.5;

/// The filter memory limit when nothing about the process's memory can be read (not Linux):
/// the 533 M-key Facebook set at 1e-6 (2.4 GiB) with room to spare.
pub const FALLBACK_LIMIT: u64 = 4 << 30;

/// What bounds the memory this process can get, each when known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// The tightest cgroup memory limit of this process's cgroup and its ancestors (v2
    /// `memory.max`, or v1 `memory.limit_in_bytes`).
    pub cgroup: Option<u64>,
    /// `RLIMIT_AS` (`ulimit -v`).
    pub address_space: Option<u64>,
    /// Physical memory of the machine.
    pub physical: Option<u64>,
}

impl ProcessMemory {
    /// Reads the limits of this process.
    pub fn read() -> ProcessMemory {
        ProcessMemory {
            cgroup: cgroup_limit(Path::new("/proc/self/cgroup"), Path::new("/sys/fs/cgroup")),
            address_space: address_space_limit(),
            physical: physical_memory(),
        }
    }

    /// The least of the known limits.
    pub fn least(&self) -> Option<u64> {
        [self.cgroup, self.address_space, self.physical]
            .into_iter()
            .flatten()
            .min()
    }

    /// [`DEFAULT_SHARE`] of [`least`](Self::least), or [`FALLBACK_LIMIT`] when none is known.
    pub fn filter_limit(&self) -> u64 {
        self.least().map_or(FALLBACK_LIMIT, |least| {
            (least as f64 * DEFAULT_SHARE) as u64
        })
    }
}

impl fmt::Display for ProcessMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |value: Option<u64>| value.map_or("unknown".to_string(), |v| v.to_string());
        write!(
            f,
            "cgroup limit {}, RLIMIT_AS {}, physical {} bytes",
            show(self.cgroup),
            show(self.address_space),
            show(self.physical)
        )
    }
}

/// The default filter memory limit of a node alone in its process: [`DEFAULT_SHARE`] of the
/// least of the cgroup limit, `RLIMIT_AS` and physical memory.
pub fn default_limit() -> u64 {
    ProcessMemory::read().filter_limit()
}

/// The tightest memory limit on the cgroup path `/proc/self/cgroup` names, walking up to the
/// root under `root` (a limit of an ancestor binds too). `None` where nothing limits.
fn cgroup_limit(self_cgroup: &Path, root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(self_cgroup).ok()?;
    let mut least: Option<u64> = None;
    let mut tighten = |limit: Option<u64>| {
        if let Some(limit) = limit {
            least = Some(least.map_or(limit, |l| l.min(limit)));
        }
    };
    for line in text.lines() {
        // v2: "0::/path"; v1: "N:memory:/path" (controllers may be comma separated).
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next(), fields.next()?, fields.next()?);
        let (dir, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut at = dir.join(path.trim_start_matches('/'));
        loop {
            tighten(read_limit(&at.join(file)));
            if at == dir || !at.pop() {
                break;
            }
        }
    }
    least
}

/// A cgroup limit file: a byte count, or `max` (v2) / a huge number (v1) for no limit.
fn read_limit(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let limit: u64 = text.trim().parse().ok()?;
    // v1 writes "no limit" as the largest page-aligned i64.
    (limit < 1 << 62).then_some(limit)
}

#[cfg(unix)]
fn address_space_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let status = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) };
    (status == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(not(unix))]
fn address_space_limit() -> Option<u64> {
    None
}

#[cfg(unix)]
fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf only reads configuration values.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}

#[cfg(not(unix))]
fn physical_memory() -> Option<u64> {
    None
}

/// The filter memory of one node: its limit, and the bytes its partitions hold. Shared by
/// the node's replicas; lock-free.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicU64,
    used: AtomicU64,
}

/// A reservation would take the node over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{needed} bytes of filter memory are needed but only {available} of this node's \
     {limit}-byte limit are free"
)]
pub struct Exhausted {
    /// Bytes asked for.
    pub needed: u64,
    /// Bytes still free.
    pub available: u64,
    /// The limit.
    pub limit: u64,
}

impl Budget {
    /// A budget of `limit` bytes, nothing used.
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
        })
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the limit (what is held stays held; new reservations see the new limit).
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` if they fit under the limit; released when the reservation drops.
    pub fn reserve(self: &Arc<Budget>, bytes: u64) -> Result<Reservation, Exhausted> {
        let limit = self.limit();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .map_err(|used| Exhausted {
                needed: bytes,
                available: limit.saturating_sub(used),
                limit,
            })?;
        Ok(Reservation {
            budget: self.clone(),
            bytes,
        })
    }
}

/// Bytes held from a [`Budget`] until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_hold_until_dropped_and_never_pass_the_limit() {
        let budget = Budget::new(100);
        let a = budget.reserve(60).unwrap();
        assert_eq!(
            budget.reserve(50).unwrap_err(),
            Exhausted {
                needed: 50,
                available: 40,
                limit: 100
            }
        );
        let b = budget.reserve(40).unwrap();
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
        budget.set_limit(0);
        assert!(budget.reserve(1).is_err());
        assert!(budget.reserve(0).is_ok());
    }

    #[test]
    fn concurrent_reservations_never_oversubscribe() {
        let budget = Budget::new(1_000);
        let held: Vec<Reservation> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let budget = budget.clone();
                    scope.spawn(move || {
                        (0..100)
                            .filter_map(|_| budget.reserve(7).ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        assert_eq!(held.len(), 1_000 / 7);
        assert!(budget.used() <= 1_000);
    }

    #[test]
    fn the_least_known_limit_bounds_the_default() {
        let memory = ProcessMemory {
            cgroup: Some(8 << 30),
            address_space: Some(14_000_000 << 10),
            physical: Some(24 << 30),
        };
        assert_eq!(memory.least(), Some(8 << 30));
        assert_eq!(memory.filter_limit(), 4 << 30);
        let nothing = ProcessMemory::default();
        assert_eq!(nothing.filter_limit(), FALLBACK_LIMIT);
        let ulimit = ProcessMemory {
            address_space: Some(1 << 30),
            ..ProcessMemory::default()
        };
        assert_eq!(ulimit.filter_limit(), 1 << 29);
        assert!(ulimit.to_string().contains("RLIMIT_AS 1073741824"));
    }

    #[test]
    fn cgroup_limits_are_read_along_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cg");
        let leaf = root.join("kubepods/pod1/c1");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(root.join("kubepods/memory.max"), "8589934592\n").unwrap();
        std::fs::write(root.join("kubepods/pod1/memory.max"), "max\n").unwrap();
        std::fs::write(leaf.join("memory.max"), "2147483648\n").unwrap();
        let self_cgroup = dir.path().join("self");
        std::fs::write(&self_cgroup, "0::/kubepods/pod1/c1\n").unwrap();
        assert_eq!(cgroup_limit(&self_cgroup, &root), Some(2 << 30));
        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_limit(&self_cgroup, &root), Some(8 << 30));
        // v1: the memory controller's own hierarchy; "no limit" is a huge number.
        let v1 = root.join("memory/docker/x");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(
            root.join("memory/docker/memory.limit_in_bytes"),
            "1073741824\n",
        )
        .unwrap();
        std::fs::write(
            &self_cgroup,
            "4:cpu,cpuacct:/docker/x\n5:memory:/docker/x\n",
        )
        .unwrap();
        assert_eq!(cgroup_limit(&self_cgroup, &root), Some(1 << 30));
        std::fs::write(&self_cgroup, "0::/\n").unwrap();
        assert_eq!(cgroup_limit(&self_cgroup, &root), None);
        assert_eq!(cgroup_limit(&dir.path().join("missing"), &root), None);
    }

    #[test]
    fn this_process_has_some_limit() {
        let memory = ProcessMemory::read();
        assert!(memory.least().is_some(), "{memory}");
        assert!(default_limit() > 0);
    }
}
