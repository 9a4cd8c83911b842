//! The snapshot policy's byte budget on a one-replica group over a real store: whatever the
//! entry count, a group's log since its last snapshot stays within
//! `max(snapshot_log_ratio × last snapshot, snapshot_log_bytes)` plus one entry, counting a
//! fixed overhead per entry, so small and large entries alike keep the log bounded.

use leakbloom_raft::{ApplyError, GroupId, GroupNode, NodeConfig, StateMachine, Store};

/// The group: with node 1, its replica snapshots 2/32 of the budget early (the spread).
const GROUP: GroupId = 9;

/// A state machine whose snapshot has a fixed size, as a filter does from its creation.
#[derive(Debug)]
struct Fixed {
    size: usize,
}

impl StateMachine for Fixed {
    fn apply(&mut self, _index: u64, _command: &[u8]) -> Result<Vec<u8>, ApplyError> {
        Ok(Vec::new())
    }

    fn snapshot(&self) -> Vec<u8> {
        vec![0; self.size]
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ApplyError> {
        self.size = snapshot.len();
        Ok(())
    }
}

/// One row: the state's snapshot size, the budget's ratio and floor, and the commands.
struct Case {
    what: &'static str,
    snapshot: usize,
    ratio: f64,
    floor: u64,
    command: usize,
    commands: u64,
    /// The budget the log must stay within (plus one entry); before the first snapshot it is
    /// the floor, which is never larger.
    budget: u64,
    /// At least this many snapshots must have been taken.
    snapshots: u64,
}

/// Log bytes counted per entry besides its command (the policy's estimate).
const OVERHEAD: u64 = 160;

#[test]
fn the_log_since_a_snapshot_stays_within_its_byte_budget() {
    #[rustfmt::skip]
    let table = [
        Case { what: "the floor rules while the snapshot is smaller", snapshot: 16 << 10,
               ratio: 1.0, floor: 64 << 10, command: 8 << 10, commands: 100,
               budget: 64 << 10, snapshots: 8 },
        Case { what: "the snapshot's size rules once larger than the floor", snapshot: 256 << 10,
               ratio: 1.0, floor: 64 << 10, command: 8 << 10, commands: 200,
               budget: 256 << 10, snapshots: 4 },
        Case { what: "the ratio scales the snapshot's size", snapshot: 256 << 10,
               ratio: 0.5, floor: 64 << 10, command: 8 << 10, commands: 200,
               budget: 128 << 10, snapshots: 8 },
        Case { what: "tiny entries count their overhead", snapshot: 1 << 10,
               ratio: 1.0, floor: 64 << 10, command: 16, commands: 2000,
               budget: 64 << 10, snapshots: 4 },
    ];
    for case in table {
        let dir = leakbloom_testkit::scratch_on_disk();
        let store = Store::open(dir.path()).unwrap();
        let config = NodeConfig {
            // Far beyond the run: only the byte budget compacts.
            snapshot_entries: 1_000_000,
            snapshot_log_ratio: case.ratio,
            snapshot_log_bytes: case.floor,
            ..NodeConfig::default()
        };
        let machine = Fixed {
            size: case.snapshot,
        };
        let mut node =
            GroupNode::new(1, store.group(GROUP).unwrap(), &[1], machine, config).unwrap();
        node.campaign().unwrap();
        drain(&mut node);
        let entry = case.command as u64 + OVERHEAD;
        let (mut snapshots, mut last_snapshot, mut largest) = (0, 0, 0);
        for id in 1..=case.commands {
            node.propose(id, vec![7; case.command]).unwrap();
            drain(&mut node);
            let snapshot = node.storage().snapshot_metadata().index;
            if snapshot != last_snapshot {
                snapshots += 1;
                last_snapshot = snapshot;
            }
            largest = largest.max((node.applied() - snapshot) * entry);
        }
        assert!(
            snapshots >= case.snapshots,
            "{}: {snapshots} snapshots, expected at least {}",
            case.what,
            case.snapshots
        );
        assert!(
            largest <= case.budget + entry,
            "{}: the log reached {largest} bytes, over the {} byte budget",
            case.what,
            case.budget
        );
        // And not far below it: the spread moves snapshots at most 15/32 of the budget early.
        assert!(
            largest >= case.budget - case.budget / 32 * 15 - entry,
            "{}: the log peaked at {largest} bytes, far below the {} byte budget",
            case.what,
            case.budget
        );
    }
}

fn drain(node: &mut GroupNode<Fixed>) {
    while node.has_ready() {
        node.handle_ready().unwrap();
    }
}
