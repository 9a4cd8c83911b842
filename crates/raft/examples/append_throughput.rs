//! Synced append throughput of the log store: one thread, one synced write per batch.
//!
//! `cargo run -p leakbloom-raft --example append_throughput -- [DIR] [ENTRY_BYTES]
//! [ENTRIES_PER_WRITE] [WRITES] [GROUPS]` (defaults: a temporary directory under the current
//! one, 32768, 1, 2000, 1). Writes rotate over the groups; each write is one `fdatasync`.

use std::time::Instant;

use leakbloom_raft::{Persist, Store};
use raft::eraftpb::{Entry, HardState};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| -> u64 {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
    };
    let base = args.first().cloned().unwrap_or_else(|| ".".into());
    let entry_bytes = arg(1, 32 << 10) as usize;
    let per_write = arg(2, 1);
    let writes = arg(3, 2000);
    let groups = arg(4, 1).max(1);
    let dir = tempfile::tempdir_in(base)?;
    let store = Store::open(dir.path())?;
    let mut storages = (1..=groups)
        .map(|g| store.group(g))
        .collect::<Result<Vec<_>, _>>()?;
    let hs = HardState {
        term: 1,
        ..Default::default()
    };
    for s in &mut storages {
        s.set_hard_state(&hs)?;
    }
    // Random bytes: raft-engine compresses batches above 8 KiB, and keys are hashes.
    let mut payload = vec![0u8; entry_bytes];
    rand::Rng::fill(&mut rand::thread_rng(), &mut payload[..]);
    let mut next = vec![1u64; groups as usize];
    let start = Instant::now();
    for w in 0..writes {
        let g = (w % groups) as usize;
        let entries: Vec<Entry> = (0..per_write)
            .map(|i| Entry {
                index: next[g] + i,
                term: 1,
                data: payload.clone().into(),
                ..Default::default()
            })
            .collect();
        next[g] += per_write;
        storages[g].persist(Persist {
            entries: &entries,
            ..Default::default()
        })?;
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = (writes * per_write) as f64 * entry_bytes as f64;
    println!(
        "{writes} synced writes of {per_write} x {entry_bytes} B over {groups} group(s) in \
         {secs:.2} s: {:.0} writes/s, {:.0} entries/s, {:.1} MB/s",
        writes as f64 / secs,
        (writes * per_write) as f64 / secs,
        bytes / secs / 1e6
    );
    Ok(())
}
