//! The synchronous group node: one replica of one Raft group.
//!
//! [`GroupNode`] owns a raft-rs [`RawNode`] over a [`GroupStorage`] and a [`StateMachine`].
//! Ticks, messages, proposals and read requests go in; [`GroupNode::handle_ready`] returns an
//! [`Output`] with messages to send, results of local proposals, read states and leadership
//! changes. It owns no clock and no socket: the caller ticks it and moves messages.
//!
//! # Rebuilding a replica from its peers
//! A replica whose disk lost data it had acknowledged (a wiped or damaged store, a corrupt
//! snapshot) cannot simply start again empty under its id: the leader still believes it holds
//! the entries it acknowledged (raft-rs even panics when a heartbeat commits past its log), and
//! its vote could elect a node that lacks entries committed with its lost copy. Such a replica
//! starts *rejoining* ([`GroupStorage::set_rejoin`] before [`GroupNode::new`]):
//!
//! 1. It neither ticks (never campaigns) nor answers vote requests, and commits nothing from
//!    heartbeats (a leader that has not re-added it still counts on the lost entries). Its caller asks the leader to re-add it
//!    ([`GroupNode::propose_rejoin`] there).
//! 2. The leader removes the node from the group, then adds it back as a learner (two simple
//!    membership changes). That forgets the old progress, so the leader probes the replica
//!    from scratch and sends it a snapshot or the whole log, and its acknowledgements count
//!    again only for what it really holds. The caller records the second change's index `R` on
//!    the replica ([`GroupNode::rejoined`]).
//! 3. Once the replica has applied `R`, its log holds everything committed before it lost its
//!    disk, and everything committed since was acknowledged by others: it votes again.
//! 4. A leader promotes a learner back to voter once it has replicated up to the last
//!    membership change, and adds back a member whose re-adding was cut short
//!    ([`GroupNode::tick`]).
//!
//! The mark survives restarts. With three replicas, the group runs on the other two meanwhile
//! (and stops if one of them fails too: two lost copies out of three is data loss).
//!
//! # Membership changes
//! A group's *members* are the replicas it should have, the preferred leader first: the
//! `voters` given to [`GroupNode::new`], then whatever [`GroupNode::set_members`] says (the
//! node layer tells every replica of a group when its placement changes; only the leader
//! acts). On every tick, a leader with no membership change in flight and an entry of its
//! term committed takes one step towards them (`reconcile_members`), always adding before
//! removing:
//!
//! 1. a member in neither voters nor learners is added as a learner;
//! 2. a member learner that has replicated up to the last membership change is promoted;
//! 3. only once every member is a voter, a learner or a voter that is not a member is removed
//!    (never the last voter). A leader that is not a member first hands leadership to a
//!    member voter (the first member if it holds the whole log); the new leader removes it.
//!
//! So the group never has fewer voters than the smaller of its member count and its voter
//! count before the move: replacing 3 by 4 in {1, 2, 3} goes {1, 2, 3} + learner 4, then
//! {1, 2, 3, 4}, then {1, 2, 4}. Leadership follows the first member as before
//! ([`LEADER_TRANSFER_TICKS`]). A replica learns that it was removed when it applies its removal
//! ([`GroupNode::removed`]); if the leader stopped sending first, it never does, and the node
//! layer must ask the leader.
//!
//! Why simple changes, one at a time, and not joint consensus (`ConfChangeV2` with several
//! changes): a single voter change keeps every majority of the old configuration
//! overlapping every majority of the new one, so each step is safe alone, and the add-first
//! order already keeps the voter count; a joint configuration would make a replacement one
//! step instead of three, but adds a second quorum to every commit while joint, an explicit
//! leave step whose loss must be recovered, and the rejoin protocol relies on simple changes
//! (a joint one keeps the old progress). Member moves are rare (placement changes), so the
//! extra round trips cost nothing that matters.
//!
//! A **new replica** (storage empty, no voters given) bootstraps nothing: it is in no
//! configuration, so it neither campaigns nor votes, and it waits until a leader adds it and
//! sends it a snapshot. It must get a snapshot, not the log from index 1: a group is
//! bootstrapped with its first voters and no entries, so the log alone does not tell who they
//! are. Hence a leader whose log still starts at index 1 compacts it (takes a snapshot now,
//! `first_snapshot_due` in `node/snapshot.rs`) before it adds a replica that is not in the
//! configuration, and when a learner is there (a leader elected after the add); and a replica
//! that holds nothing and is new or rejoining drops appends from index 1, so even a leader
//! that has not compacted yet cannot give it a log without its membership.
//!
//! # Stalled replicas
//! Applying a committed entry is deterministic on its content, but it can need a resource one
//! replica lacks (a new set's filter memory). Skipping the entry would make that replica
//! diverge, and crashing would repeat at every restart. Instead the state machine answers
//! [`ApplyError::Stalled`] and the replica *stalls* ([`GroupNode::stalled`] says why):
//!
//! 1. It applies nothing more (its applied index stays before the entry); entries keep being
//!    appended and acknowledged, so the group commits as before with the other replicas.
//! 2. As a follower it does not tick (never campaigns) and ignores `MsgTimeoutNow`; as leader
//!    it refuses proposals with the retryable [`Error::Stalled`] and hands leadership to a
//!    caught-up voter.
//! 3. Every [`STALL_RETRY_TICKS`] it applies again from its log (or restores the stored
//!    snapshot, when a snapshot from the leader was what it could not hold), and resumes by
//!    itself once it can; a snapshot from the leader that it can hold also ends the stall.

use std::collections::BTreeMap;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, MessageType,
};
use raft::{RawNode, StateRole};

use crate::error::{Error, Result};
use crate::storage::GroupStorage;
use crate::{GroupId, NodeId};

mod ready;
mod snapshot;

pub use ready::Collected;
pub use snapshot::SnapshotJob;

/// An opaque, deterministic state machine driven by committed entries.
///
/// Replicas that apply the same commands in the same order must end byte-identical and return
/// the same results, rejections included.
pub trait StateMachine {
    /// Applies the command committed at log index `index`. A rejection is a result like any
    /// other (every replica rejects alike) and must leave the state unchanged. A
    /// [`ApplyError::Stalled`] stops this replica at this entry until it can apply it.
    fn apply(&mut self, index: u64, command: &[u8]) -> std::result::Result<Vec<u8>, ApplyError>;
    /// The whole state, to store as a snapshot or send to a lagging replica.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a snapshot taken by [`snapshot`](Self::snapshot).
    /// [`ApplyError::Rejected`] means the snapshot is corrupt (the state must be unchanged);
    /// [`ApplyError::Stalled`] that this replica cannot hold it now (the state may have been
    /// emptied: it is replaced by the snapshot once the replica can).
    fn restore(&mut self, snapshot: &[u8]) -> std::result::Result<(), ApplyError>;
}

/// Why a [`StateMachine`] did not apply an entry (or restore a snapshot).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// Refused on its content, alike on every replica: a result for the proposer
    /// ([`Error::Rejected`]); the entry counts as applied.
    #[error("{0}")]
    Rejected(String),
    /// This replica lacks a local resource (memory) to apply it now, which another replica may
    /// have: nothing changed, and the replica must not skip the entry (it would diverge). It
    /// stops applying here, keeps its log, and tries again every [`STALL_RETRY_TICKS`] (see
    /// [Stalled replicas](self#stalled-replicas)).
    #[error("stalled: {0}")]
    Stalled(String),
}

/// Ticks between attempts of a stalled replica to apply the entry it stopped at (a second at
/// the default tick): freeing memory takes an operator or a dropped set, not milliseconds.
pub const STALL_RETRY_TICKS: u64 = 10;

/// Bytes of log a stalled replica reads per step when it applies again: bounds the memory of
/// catching up after a long stall.
const RESUME_BATCH_BYTES: u64 = 16 << 20;

/// Tunables of a [`GroupNode`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Ticks without a heartbeat before a follower campaigns; with a tick per 100 ms, one
    /// second tolerates a few lost heartbeats. raft-rs randomises it up to twice this.
    pub election_ticks: usize,
    /// Exclusive upper bound of the randomised election timeout; 0 means twice
    /// `election_ticks` (raft-rs's default). raft-rs draws from the thread's random source, so
    /// the simulation pins it (`election_ticks + 1`) and randomises per node from its seed.
    pub max_election_ticks: usize,
    /// Ticks between a leader's heartbeats; must be well below `election_ticks`.
    pub heartbeat_ticks: usize,
    /// Applied entries after which a snapshot is taken and the log compacted; bounds restart
    /// replay in entries. Each replica adds up to 15/32 of it, by group and node id, so that
    /// the replicas of a node (and of a group) do not all snapshot at the same moment.
    pub snapshot_entries: u64,
    /// The entry rule above also waits until the entries applied since the last snapshot hold
    /// at least this many times its size, so writing snapshots costs at most 1/ratio of the
    /// log written (a filter is as large as its capacity from the start; small inserts would
    /// otherwise rewrite it far more often than they fill it). 0 disables this wait. It also
    /// sizes the byte budget (`snapshot_log_bytes`).
    pub snapshot_log_ratio: f64,
    /// Bytes of entries per append message; bounds message size (gRPC's default limit is
    /// 4 MiB).
    pub max_message_bytes: u64,
    /// Append messages in flight per follower before waiting for acknowledgements.
    pub max_inflight_messages: usize,
    /// The floor of a replica's log budget: a snapshot (and compaction) is due, whatever the
    /// entry count, once the log written since the last snapshot reaches
    /// `max(snapshot_log_ratio × last snapshot's size, snapshot_log_bytes)` bytes, so a
    /// group's log never holds more than that (plus one entry). Each replica snapshots up to
    /// 15/32 earlier, by group and node id, to spread snapshots. The log is counted as the
    /// commands' bytes plus a fixed overhead per entry (see `maybe_compact`). 0 disables the
    /// byte budget.
    pub snapshot_log_bytes: u64,
    /// Answer linearizable reads on the leader from a lease instead of a ReadIndex round each
    /// (see [`crate::lease`] for the argument and its clock assumption). Off by default.
    pub lease_reads: bool,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            election_ticks: 10,
            max_election_ticks: 0,
            heartbeat_ticks: 2,
            snapshot_entries: 10_000,
            snapshot_log_ratio: 0.0,
            max_message_bytes: 1 << 20,
            max_inflight_messages: 256,
            snapshot_log_bytes: 64 << 20,
            lease_reads: false,
        }
    }
}

/// Ticks a leader other than the preferred replica waits before handing leadership back (and
/// between attempts): long after an election (10-20 ticks), so a preferred replica that just
/// came back has settled, and rare enough that a slow one does not make leadership flap.
pub const LEADER_TRANSFER_TICKS: u64 = 100;

/// The role of this replica and the leader it knows, reported when either changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// This replica's role.
    pub role: StateRole,
    /// The leader this replica knows, if any.
    pub leader: Option<NodeId>,
    /// The term, so that stale reports can be told apart.
    pub term: u64,
}

/// A group's membership as a replica applied it: voters and learners, each sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// The replicas whose votes and acknowledgements count.
    pub voters: Vec<NodeId>,
    /// The replicas that receive the log but do not vote (being added, or rebuilt).
    pub learners: Vec<NodeId>,
}

impl Membership {
    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Whether there is no configuration at all (a new replica before its first snapshot).
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty() && self.learners.is_empty()
    }
}

impl From<&ConfState> for Membership {
    fn from(conf: &ConfState) -> Membership {
        // Only simple changes are made, so there is no outgoing half to report.
        let sorted = |ids: &[NodeId]| {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids
        };
        Membership {
            voters: sorted(&conf.voters),
            learners: sorted(&conf.learners),
        }
    }
}

/// What one [`GroupNode::handle_ready`] produced. Nothing in it has been sent or answered.
#[derive(Debug, Default)]
pub struct Output {
    /// Messages to send, in order, each to `message.to`.
    pub messages: Vec<Message>,
    /// Results of proposals made on this replica, by proposal id. An error is either a
    /// rejection by the state machine or [`Error::NotLeader`] (retryable).
    pub results: Vec<(u64, Result<Vec<u8>>)>,
    /// Completed read-index requests: `(context, index)`. The read is linearizable once
    /// [`GroupNode::applied`] reaches `index`.
    pub reads: Vec<(Vec<u8>, u64)>,
    /// Set when the role or the known leader changed.
    pub leadership: Option<Leadership>,
    /// A snapshot to write in the background; report the outcome with
    /// [`GroupNode::snapshot_written`].
    pub snapshot: Option<SnapshotJob>,
    /// The log moved to a newer snapshot in this Ready: log files may be freed
    /// ([`Store::purge`](crate::Store::purge), off the loop).
    pub compacted: bool,
}

/// A proposal made on this replica, waiting for its entry to be applied.
#[derive(Debug)]
struct Pending {
    id: u64,
    term: u64,
    /// The first step of a rejoin: once this removal applies, add the node back as a learner
    /// under the same proposal id.
    readd: Option<NodeId>,
}

/// Why and where a replica stopped applying (see
/// [Stalled replicas](self#stalled-replicas)).
#[derive(Debug)]
struct Stall {
    /// What the state machine said.
    reason: String,
    /// The stored snapshot is what must be restored (a snapshot from the leader the state
    /// machine could not hold); otherwise the entry after `applied`.
    restore: bool,
    /// Ticks since the replica stalled.
    ticks: u64,
}

/// One replica of one Raft group, fully synchronous.
pub struct GroupNode<M> {
    group: GroupId,
    id: NodeId,
    raw: RawNode<GroupStorage>,
    machine: M,
    config: NodeConfig,
    /// Index of the last applied entry.
    applied: u64,
    /// Local proposals by log index.
    pending: BTreeMap<u64, Pending>,
    /// Rejoins whose removal applied in this Ready: `(proposal id, node)`, re-added after it.
    readd: Vec<(u64, NodeId)>,
    /// The replicas the group should have as voters.
    members: Vec<NodeId>,
    /// Ticks since this replica last handed leadership to the preferred replica (or started).
    ticks_since_transfer: u64,
    /// Command bytes applied since the last snapshot, and the last snapshot's size: the
    /// snapshot policy's inputs.
    applied_bytes: u64,
    snapshot_bytes: u64,
    leadership: Leadership,
    /// Set while the state machine cannot apply the next entry.
    stall: Option<Stall>,
    /// A stalled replica's next attempt is due (set by [`tick`](Self::tick)).
    retry_due: bool,
    /// A commit index the light ready advanced, written with the next batch.
    unsaved_commit: Option<u64>,
    /// A snapshot job of this replica is being written.
    snapshotting: bool,
    /// A snapshot whose file is written: the log is compacted to it in the next batch.
    compaction: Option<raft::eraftpb::SnapshotMetadata>,
}

impl<M> std::fmt::Debug for GroupNode<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupNode")
            .field("group", &self.group)
            .field("id", &self.id)
            .field("applied", &self.applied)
            .field("leadership", &self.leadership)
            .finish_non_exhaustive()
    }
}

/// A membership change of one node (a simple change: no joint configuration).
fn single_change(change_type: ConfChangeType, node: NodeId) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    cc.set_changes(
        vec![ConfChangeSingle {
            change_type,
            node_id: node,
            ..Default::default()
        }]
        .into(),
    );
    cc
}

fn proposal_id(entry: &Entry) -> Option<u64> {
    entry
        .context
        .as_ref()
        .try_into()
        .ok()
        .map(u64::from_be_bytes)
}

impl<M: StateMachine> GroupNode<M> {
    /// Starts replica `id` of the group stored in `storage`. `voters` are the replicas the
    /// group should have (its members, until [`set_members`](Self::set_members) says
    /// otherwise): a new group is bootstrapped with them, and as leader this replica moves the
    /// group towards them (see [Membership changes](self#membership-changes)). With no
    /// `voters` and an empty `storage`, this is a new replica of an existing group: it
    /// bootstraps nothing and waits, in no configuration (it neither campaigns nor votes),
    /// until a leader adds it and sends it a snapshot. The state machine is restored from the
    /// stored snapshot, and entries after it are re-applied as raft-rs hands them out again.
    pub fn new(
        id: NodeId,
        mut storage: GroupStorage,
        voters: &[NodeId],
        mut machine: M,
        config: NodeConfig,
    ) -> Result<GroupNode<M>> {
        let group = storage.group();
        if storage.is_empty() && !voters.is_empty() {
            storage.bootstrap(ConfState {
                voters: voters.to_vec(),
                ..Default::default()
            })?;
        }
        let mut applied = 0;
        let mut snapshot_bytes = 0;
        let mut stall = None;
        // raft-rs hands out committed entries after this index.
        let mut raft_applied = 0;
        if let Some(snapshot) = storage.load_snapshot()? {
            snapshot_bytes = snapshot.data.len() as u64;
            raft_applied = snapshot.get_metadata().index;
            match machine.restore(&snapshot.data) {
                Ok(()) => applied = raft_applied,
                Err(ApplyError::Rejected(reason)) => {
                    return Err(Error::SnapshotCorrupt {
                        path: storage.store().dir().join("snap"),
                        reason,
                    })
                }
                Err(ApplyError::Stalled(reason)) => {
                    tracing::error!(
                        group,
                        node = id,
                        %reason,
                        "replica cannot restore its snapshot; it stalls and retries"
                    );
                    stall = Some(Stall {
                        reason,
                        restore: true,
                        ticks: 0,
                    });
                }
            }
        }
        let raft_config = raft::Config {
            id,
            election_tick: config.election_ticks,
            min_election_tick: config.election_ticks,
            max_election_tick: config.max_election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: raft_applied,
            max_size_per_msg: config.max_message_bytes,
            max_inflight_msgs: config.max_inflight_messages,
            // Followers answer linearizable reads only after confirming the leader with a
            // quorum (ReadIndex), never from a clock-based lease.
            read_only_option: raft::ReadOnlyOption::Safe,
            // A partitioned node does not disrupt the group with a higher term when it returns.
            pre_vote: true,
            check_quorum: true,
            ..Default::default()
        };
        let raw = RawNode::new(&raft_config, storage, &crate::log::logger(group))?;
        let leadership = Leadership {
            role: StateRole::Follower,
            leader: None,
            term: raw.raft.term,
        };
        Ok(GroupNode {
            group,
            id,
            raw,
            machine,
            config,
            applied,
            pending: BTreeMap::new(),
            readd: Vec::new(),
            members: voters.to_vec(),
            ticks_since_transfer: 0,
            applied_bytes: 0,
            snapshot_bytes,
            leadership,
            stall,
            retry_due: false,
            unsaved_commit: None,
            snapshotting: false,
            compaction: None,
        })
    }

    /// The group's id.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// This replica's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Index of the last applied entry.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Why this replica stopped applying, while it is stalled (see
    /// [Stalled replicas](self#stalled-replicas)).
    pub fn stalled(&self) -> Option<&str> {
        self.stall.as_ref().map(|stall| stall.reason.as_str())
    }

    /// The state machine (read-only; only committed entries change it).
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The role and known leader, as of the last [`handle_ready`](Self::handle_ready).
    pub fn leadership(&self) -> Leadership {
        self.leadership
    }

    /// The storage (for inspection).
    pub fn storage(&self) -> &GroupStorage {
        self.raw.store()
    }

    /// The group's membership as this replica last applied it (the persisted conf state):
    /// empty for a new replica that has not received its first snapshot.
    pub fn membership(&self) -> Membership {
        Membership::from(&self.raw.store().conf_state())
    }

    /// Whether this replica was removed from its group: its applied membership, not empty,
    /// leaves it out. A removed replica may never learn it (the leader stops sending to it),
    /// and a replica being rebuilt is briefly out between the two steps of its re-adding.
    pub fn removed(&self) -> bool {
        let membership = self.membership();
        !membership.is_empty() && !membership.contains(self.id)
    }

    /// The replicas the group should have, the preferred leader first (see
    /// [`set_members`](Self::set_members)).
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Sets the replicas the group should have, the preferred leader first. Any replica may
    /// be told (the node layer tells every replica of the group); only a leader acts on it,
    /// one membership change at a time (see [Membership changes](self#membership-changes)).
    /// Duplicates and the invalid id 0 are dropped; an empty list means no target: the group
    /// is left as it is.
    pub fn set_members(&mut self, members: Vec<NodeId>) {
        let mut seen = std::collections::BTreeSet::new();
        let members: Vec<NodeId> = members
            .into_iter()
            .filter(|&id| id != 0 && seen.insert(id))
            .collect();
        if members != self.members {
            tracing::info!(
                group = self.group,
                node = self.id,
                ?members,
                before = ?self.members,
                "group members changed"
            );
            self.members = members;
        }
    }

    /// Whether this replica is in no configuration and holds nothing: a new replica waiting
    /// for its first snapshot, or a rebuilt one whose log is empty. Such a replica takes the
    /// group's state only from a snapshot, which carries the membership (entries from index 1
    /// do not: a group is bootstrapped without entries).
    fn awaits_snapshot(&self) -> bool {
        let log = &self.raw.raft.raft_log;
        let conf = self.raw.raft.prs().conf();
        let unconfigured = conf.voters().ids().is_empty() && conf.learners().is_empty();
        log.last_index() == 0 && (unconfigured || self.rejoin().is_some())
    }

    /// The rejoin mark (see [Rebuilding a replica](self#rebuilding-a-replica-from-its-peers)):
    /// `None` for a normal replica, `Some(0)` while waiting to be re-added, `Some(index)` until
    /// it has applied `index`.
    pub fn rejoin(&self) -> Option<u64> {
        self.raw.store().rejoin()
    }

    /// Advances the logical clock by one tick (elections, heartbeats). A leader also moves the
    /// group one step towards its members (see [Membership changes](self#membership-changes))
    /// and hands leadership back to the preferred replica (the first member) once it is caught
    /// up. A rejoining replica does not tick: it must not campaign. Neither does a stalled
    /// follower; a stalled leader hands leadership away (see
    /// [Stalled replicas](self#stalled-replicas)).
    pub fn tick(&mut self) {
        if let Some(stall) = &mut self.stall {
            stall.ticks += 1;
            if stall.ticks.is_multiple_of(STALL_RETRY_TICKS) {
                self.retry_due = true;
            }
        }
        if self.rejoin().is_some() {
            return;
        }
        if self.stall.is_some() {
            if self.raw.raft.state == StateRole::Leader {
                self.raw.tick();
                self.hand_off_leadership();
            }
            return;
        }
        self.raw.tick();
        self.reconcile_members();
        self.prefer_leader();
    }

    /// On a stalled leader: hands leadership to a voter that holds the whole log, so the group
    /// answers proposals and reads again. raft-rs gives up a transfer after an election
    /// timeout; it is tried again at the next tick.
    fn hand_off_leadership(&mut self) {
        let raft = &self.raw.raft;
        if raft.lead_transferee.is_some() {
            return;
        }
        let conf = self.raw.store().conf_state();
        let to = (conf.voters.iter().copied()).find(|&id| id != self.id && self.holds_log(id));
        if let Some(to) = to {
            self.hand_leadership(to, "stalled leader handing leadership away");
        }
    }

    /// On the leader: starts handing leadership to `to`, saying `why`.
    fn hand_leadership(&mut self, to: NodeId, why: &str) {
        tracing::info!(group = self.group, node = self.id, to, "{why}");
        self.raw.transfer_leader(to);
    }

    /// [`hand_leadership`](Self::hand_leadership) for the routine hand-back to the preferred
    /// replica, which operators need not hear of.
    fn hand_back_leadership(&mut self, to: NodeId) {
        tracing::debug!(
            group = self.group,
            node = self.id,
            to,
            "handing leadership back to the preferred replica"
        );
        self.raw.transfer_leader(to);
    }

    /// On the leader: whether replica `id` holds the whole log and answered recently, so that
    /// leadership handed to it takes over at once.
    fn holds_log(&self, id: NodeId) -> bool {
        let raft = &self.raw.raft;
        let last = raft.raft_log.last_index();
        (raft.prs().get(id)).is_some_and(|pr| pr.matched == last && pr.recent_active)
    }

    /// Starts an election now instead of waiting for the election timeout. A rejoining replica
    /// does not campaign (a no-op).
    pub fn campaign(&mut self) -> Result<()> {
        if self.rejoin().is_some() {
            return Ok(());
        }
        Ok(self.raw.campaign()?)
    }

    /// Feeds a message from a peer. Messages from unknown peers and stale responses are
    /// dropped by raft-rs with an error the caller may ignore. Proposals from the network are
    /// dropped (they enter only through [`propose`](Self::propose), where the caller checked
    /// them). A rejoining replica drops vote requests and leadership transfers, and commits
    /// nothing from heartbeats; a stalled one drops leadership transfers. A replica in no
    /// configuration (a new one) drops vote requests, and one holding nothing that is new or
    /// rejoining drops appends from index 1: it waits for a snapshot (see
    /// [Membership changes](self#membership-changes)).
    pub fn step(&mut self, mut message: Message) -> Result<()> {
        let kind = message.get_msg_type();
        let rejoining = self.rejoin().is_some();
        let refused = match kind {
            MessageType::MsgPropose => Some("proposals enter only through the leader's API"),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote if rejoining => {
                Some("a rejoining replica does not vote")
            }
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                if self.membership().is_empty() =>
            {
                Some("a replica in no configuration does not vote")
            }
            MessageType::MsgTimeoutNow if rejoining || self.stall.is_some() => {
                Some("a rejoining or stalled replica does not take leadership")
            }
            MessageType::MsgAppend
                if message.index == 0 && !message.entries.is_empty() && self.awaits_snapshot() =>
            {
                // The leader's log still starts at index 1; it compacts it (see
                // `maybe_snapshot`) and sends a snapshot instead.
                Some("a replica without state takes it only from a snapshot")
            }
            MessageType::MsgHeartbeat if rejoining => {
                // A leader that has not re-added this replica yet sends the commit index of
                // the entries the lost disk held: commit nothing from a heartbeat (the appends
                // carry commits checked against the log), but answer it, so the leader keeps
                // sending appends.
                message.commit = message.commit.min(self.raw.raft.raft_log.committed);
                None
            }
            _ => None,
        };
        if let Some(why) = refused {
            tracing::debug!(
                group = self.group,
                node = self.id,
                ?kind,
                from = message.from,
                why,
                "message refused"
            );
            return Ok(());
        }
        Ok(self.raw.step(message)?)
    }

    /// On the leader: proposes re-adding node `node`, whose replica was rebuilt from peers, as
    /// a learner, so that the leader forgets its old progress. Two simple membership changes
    /// (one with both would enter a joint configuration, which keeps the old progress): remove
    /// the node, then, once that applied, add it back as a learner. The result, under proposal
    /// `id`, is the log index of the second, which the rebuilt replica must apply before it
    /// votes ([`rejoined`](Self::rejoined)). Repeating it is harmless: the replica is re-added
    /// again and catches up again.
    pub fn propose_rejoin(&mut self, id: u64, node: NodeId) -> Result<()> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(self.not_leader());
        }
        if node == self.id {
            return Err(Error::Rejected(format!(
                "node {node} leads group {} and has not lost its replica",
                self.group
            )));
        }
        if !self.members.contains(&node) {
            return Err(Error::Rejected(format!(
                "node {node} is not a member of group {} (members: {:?}): only a member's \
                 replica can be rebuilt",
                self.group, self.members
            )));
        }
        let conf = self.raw.store().conf_state();
        let member = conf.voters.contains(&node) || conf.learners.contains(&node);
        let change = if member {
            ConfChangeType::RemoveNode
        } else {
            ConfChangeType::AddLearnerNode
        };
        self.propose_conf_change(id, single_change(change, node))?;
        if member {
            let last = self.raw.raft.raft_log.last_index();
            if let Some(pending) = self.pending.get_mut(&last) {
                pending.readd = Some(node);
            }
        }
        Ok(())
    }

    /// Proposes the second step of each rejoin whose removal applied (see
    /// [`propose_rejoin`](Self::propose_rejoin)); runs after `advance_apply`, when raft-rs
    /// accepts the next membership change.
    fn readd_removed(&mut self, out: &mut Output) {
        for (id, node) in std::mem::take(&mut self.readd) {
            let change = single_change(ConfChangeType::AddLearnerNode, node);
            if let Err(error) = self.propose_conf_change(id, change) {
                out.results.push((id, Err(error)));
            }
        }
    }

    /// On a rejoining replica: the leader re-added it with the membership change at `index`.
    /// Once it has applied `index` it votes again. Ignored unless it is waiting for this.
    pub fn rejoined(&mut self, index: u64) -> Result<()> {
        if self.rejoin() != Some(0) || index == 0 {
            return Ok(());
        }
        self.raw.mut_store().set_rejoin(Some(index))?;
        tracing::info!(
            group = self.group,
            node = self.id,
            index,
            "group re-added this rebuilt replica; it catches up before it votes again"
        );
        self.finish_rejoin()
    }

    /// Clears the rejoin mark once the replica applied the index it was re-added at.
    fn finish_rejoin(&mut self) -> Result<()> {
        match self.rejoin() {
            Some(index) if index > 0 && self.applied >= index => {
                self.raw.mut_store().set_rejoin(None)?;
                tracing::info!(
                    group = self.group,
                    node = self.id,
                    applied = self.applied,
                    "replica rebuilt from its peers; it takes part in elections again"
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// On the leader, with no membership change in flight and an entry of its term committed,
    /// moves the group one step towards its `members` (see
    /// [Membership changes](self#membership-changes)): adds a missing member as a learner
    /// (once its log no longer starts at index 1), else promotes a member learner that has
    /// replicated up to the last membership change (the one that added it, or a later one),
    /// else, with every member a voter, removes a learner or a voter that is not a member; a
    /// leader that is not a member hands leadership to one first.
    fn reconcile_members(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader
            || self.members.is_empty()
            || raft.pending_conf_index > self.applied
            || !raft.commit_to_current_term()
        {
            return;
        }
        let since = raft.pending_conf_index;
        let conf = self.raw.store().conf_state();
        let member = |id: &NodeId| self.members.contains(id);
        let missing = self
            .members
            .iter()
            .copied()
            .find(|id| !conf.voters.contains(id) && !conf.learners.contains(id));
        let caught_up = conf
            .learners
            .iter()
            .copied()
            .find(|id| member(id) && raft.prs().get(*id).is_some_and(|pr| pr.matched >= since));
        // Nothing is removed before every member votes.
        let all_vote = self.members.iter().all(|id| conf.voters.contains(id));
        let learner = conf.learners.iter().copied().find(|id| !member(id));
        // Other voters first: the leader goes last, after handing leadership away.
        let voter = (conf.voters.iter().copied())
            .filter(|id| !member(id))
            .min_by_key(|&id| id == self.id);
        let (change, node, what) = if let Some(node) = missing {
            if self.raw.store().first_index() <= 1 {
                // A new replica must get a snapshot, which carries the membership: entries
                // from index 1 do not. `maybe_snapshot` compacts the log first.
                return;
            }
            let what = "adding a missing member as a learner";
            (ConfChangeType::AddLearnerNode, node, what)
        } else if let Some(node) = caught_up {
            let what = "learner caught up; promoting it to voter";
            (ConfChangeType::AddNode, node, what)
        } else if !all_vote {
            return;
        } else if let Some(node) = learner {
            let what = "removing a learner that is not a member";
            (ConfChangeType::RemoveNode, node, what)
        } else if let Some(node) = voter {
            if node == self.id {
                self.hand_over_to_member();
                return;
            }
            if conf.voters.len() <= 1 {
                return;
            }
            let what = "every member votes; removing a voter that is not a member";
            (ConfChangeType::RemoveNode, node, what)
        } else {
            return;
        };
        match self
            .raw
            .propose_conf_change(Vec::new(), single_change(change, node))
        {
            Ok(()) => tracing::info!(group = self.group, node = self.id, member = node, "{what}"),
            Err(error) => {
                tracing::debug!(group = self.group, %error, "membership change not proposed")
            }
        }
    }

    /// On a leader that is not a member: hands leadership to a member voter, the first member
    /// that holds the whole log if one does, else the first one recently active (raft-rs
    /// catches it up before the handover). raft-rs gives a transfer up after an election
    /// timeout; the next tick tries again.
    fn hand_over_to_member(&mut self) {
        let raft = &self.raw.raft;
        if raft.lead_transferee.is_some() {
            return;
        }
        let voters = raft.prs().conf().voters();
        let active = |id: &&NodeId| {
            voters.contains(**id) && raft.prs().get(**id).is_some_and(|pr| pr.recent_active)
        };
        let candidates: Vec<NodeId> = self.members.iter().filter(active).copied().collect();
        let caught_up = candidates.iter().copied().find(|&id| self.holds_log(id));
        if let Some(to) = caught_up.or(candidates.first().copied()) {
            let why = "leader is no longer a member; handing leadership to a member";
            self.hand_leadership(to, why);
        }
    }

    /// On a leader other than the preferred one (the first of `members`): hands leadership
    /// back once the preferred replica is a voter that holds the whole log, at most every
    /// [`LEADER_TRANSFER_TICKS`]. Leaders thus return to where the layout spread them after a
    /// failover instead of piling up on the survivors. Proposals made during the handover fail
    /// retryably.
    fn prefer_leader(&mut self) {
        self.ticks_since_transfer = self.ticks_since_transfer.saturating_add(1);
        let raft = &self.raw.raft;
        let Some(&preferred) = self.members.first() else {
            return;
        };
        if raft.state != StateRole::Leader
            || preferred == self.id
            || raft.lead_transferee.is_some()
            || self.ticks_since_transfer < LEADER_TRANSFER_TICKS
            || !self.raw.store().conf_state().voters.contains(&preferred)
        {
            return;
        }
        if self.holds_log(preferred) {
            self.ticks_since_transfer = 0;
            self.hand_back_leadership(preferred);
        }
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader {
            group: self.group,
            leader: match self.raw.raft.leader_id {
                0 => None,
                leader => Some(leader),
            },
        }
    }

    /// Proposes `command` under proposal `id`; its result comes back in a later
    /// [`Output::results`] under the same id. Fails at once with [`Error::NotLeader`] on a
    /// follower (forwarding is the caller's choice).
    pub fn propose(&mut self, id: u64, command: Vec<u8>) -> Result<()> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(self.not_leader());
        }
        if let Some(stall) = &self.stall {
            // Its results would wait for the stall to end: let the caller retry, by then on
            // the replica this one hands leadership to.
            return Err(Error::Stalled {
                group: self.group,
                reason: stall.reason.clone(),
            });
        }
        let before = self.raw.raft.raft_log.last_index();
        self.raw.propose(id.to_be_bytes().to_vec(), command)?;
        self.track(id, before);
        Ok(())
    }

    /// Remembers local proposal `id`, just appended after index `before`, to answer it when its
    /// entry is applied (or fail it when leadership is lost).
    fn track(&mut self, id: u64, before: u64) {
        let index = self.raw.raft.raft_log.last_index();
        assert_eq!(index, before + 1, "a proposal appends exactly one entry");
        self.pending.insert(
            index,
            Pending {
                id,
                term: self.raw.raft.term,
                readd: None,
            },
        );
    }

    /// Asks for a linearizable read point; `context` comes back in [`Output::reads`] with the
    /// index to wait for. raft-rs drops the request silently when no leader is known or the
    /// leader has not yet committed an entry of its term: callers retry after a timeout.
    pub fn read_index(&mut self, context: Vec<u8>) {
        self.raw.read_index(context);
    }

    /// Whether [`handle_ready`](Self::handle_ready) has anything to do.
    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
            || self.snapshot_wanted_now()
            || self.retry_due
            || self.unsaved_commit.is_some()
            || self.compaction.is_some()
    }

    /// A follower wants a snapshot this replica can take now: none of its own is being written,
    /// and the store's slot is free (once it is, a tick brings the next pass).
    fn snapshot_wanted_now(&self) -> bool {
        let storage = self.raw.store();
        storage.snapshot_wanted() && !self.snapshotting && storage.store().snapshot_slot_free()
    }

    /// The state machine now holds the snapshot at `index`: it is applied, and a stall (of an
    /// entry it covers, or of restoring it) is over.
    fn restored(&mut self, index: u64, out: &mut Output) {
        self.applied = index;
        self.applied_bytes = 0;
        if self.stall.take().is_some() {
            tracing::info!(
                group = self.group,
                node = self.id,
                applied = index,
                "stalled replica restored a snapshot and applies again"
            );
        }
        self.fail_pending_to(index, out);
    }

    /// Proposals at or below `index` cannot be matched to a result any more (a snapshot
    /// covers them; only a former leader can hold them): fails them, retryably.
    fn fail_pending_to(&mut self, index: u64, out: &mut Output) {
        let rest = self.pending.split_off(&(index + 1));
        let superseded = std::mem::replace(&mut self.pending, rest);
        for p in superseded.into_values() {
            out.results.push((p.id, Err(self.not_leader())));
        }
    }

    /// Stops applying (see [Stalled replicas](self#stalled-replicas)).
    fn stall_at(&mut self, reason: String, restore: bool) {
        tracing::error!(
            group = self.group,
            node = self.id,
            applied = self.applied,
            %reason,
            "replica cannot apply the next committed entry; it stops applying (its log is \
             kept, the other replicas go on) and retries until it can"
        );
        let ticks = self.stall.as_ref().map_or(0, |stall| stall.ticks);
        self.stall = Some(Stall {
            reason,
            restore,
            ticks,
        });
    }

    /// A stalled replica's attempt to go on: restores the stored snapshot if that is what it
    /// stopped at, then applies committed entries from its log until it has caught up or
    /// stalls again.
    fn resume(&mut self, out: &mut Output) -> Result<()> {
        let Some(stall) = &self.stall else {
            return Ok(());
        };
        if stall.restore {
            let snapshot = self
                .raw
                .store()
                .load_snapshot()?
                .expect("a replica stalled on a snapshot has it stored");
            match self.machine.restore(&snapshot.data) {
                Ok(()) => self.restored(snapshot.get_metadata().index, out),
                Err(ApplyError::Stalled(reason)) => {
                    self.stall_at(reason, true);
                    return Ok(());
                }
                Err(ApplyError::Rejected(reason)) => {
                    return Err(Error::SnapshotCorrupt {
                        path: self.raw.store().store().dir().join("snap"),
                        reason,
                    })
                }
            }
        }
        let stalled_at = self.applied;
        self.stall = None;
        let log = &self.raw.raft.raft_log;
        let last = log.committed.min(log.persisted);
        while self.stall.is_none() && self.applied < last {
            let entries = self.raw.raft.raft_log.slice(
                self.applied + 1,
                last + 1,
                RESUME_BATCH_BYTES,
                raft::GetEntriesContext::empty(false),
            )?;
            self.apply_entries(entries, out)?;
        }
        if self.stall.is_none() {
            tracing::info!(
                group = self.group,
                node = self.id,
                from = stalled_at,
                applied = self.applied,
                "stalled replica applies again"
            );
        }
        self.advance_apply();
        Ok(())
    }

    /// Tells raft-rs how far the state machine has applied (only forwards: after a snapshot
    /// this replica could not hold, raft-rs already counts the snapshot as applied).
    fn advance_apply(&mut self) {
        if self.applied > self.raw.raft.raft_log.applied {
            self.raw.advance_apply_to(self.applied);
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, out: &mut Output) -> Result<()> {
        for entry in entries {
            if entry.index <= self.applied {
                continue;
            }
            if self.stall.is_some() {
                // Entries apply in order: the stalled one first (from the log, in `resume`).
                break;
            }
            let result = match entry.get_entry_type() {
                // An empty normal entry is a new leader's no-op.
                EntryType::EntryNormal if entry.data.is_empty() => None,
                EntryType::EntryNormal => match self.machine.apply(entry.index, &entry.data) {
                    Ok(result) => Some(Ok(result)),
                    Err(ApplyError::Rejected(reason)) => Some(Err(Error::Rejected(reason))),
                    Err(ApplyError::Stalled(reason)) => {
                        self.stall_at(reason, false);
                        break;
                    }
                },
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    Some(self.apply_conf_change_entry(&entry)?)
                }
            };
            if entry.get_entry_type() == EntryType::EntryNormal {
                self.applied_bytes += entry.data.len() as u64;
            }
            self.applied = entry.index;
            if let Some(pending) = self.pending.remove(&entry.index) {
                let ours = entry.term == pending.term && proposal_id(&entry) == Some(pending.id);
                let result = match result {
                    Some(result) if ours => result,
                    // Another leader's entry took our proposal's place.
                    _ => Err(self.not_leader()),
                };
                match (pending.readd, result) {
                    (Some(node), Ok(_)) => self.readd.push((pending.id, node)),
                    (_, result) => out.results.push((pending.id, result)),
                }
            }
        }
        Ok(())
    }

    /// Applies a committed membership change. One that does not decode or that raft-rs refuses
    /// (removing the last voter, say) changes nothing, alike on every replica: its proposer
    /// gets [`Error::Rejected`]. Only a failed write is an error.
    fn apply_conf_change_entry(&mut self, entry: &Entry) -> Result<Result<Vec<u8>>> {
        let applied = if entry.get_entry_type() == EntryType::EntryConfChange {
            ConfChange::parse_from_bytes(&entry.data)
                .map_err(|e| e.to_string())
                .and_then(|cc| self.raw.apply_conf_change(&cc).map_err(|e| e.to_string()))
        } else {
            ConfChangeV2::parse_from_bytes(&entry.data)
                .map_err(|e| e.to_string())
                .and_then(|cc| self.raw.apply_conf_change(&cc).map_err(|e| e.to_string()))
        };
        match applied {
            Ok(conf) => {
                self.raw.mut_store().set_conf_state(&conf)?;
                let raft = &mut self.raw.raft;
                if raft.state == StateRole::Leader && !conf.voters.contains(&self.id) {
                    // A leader applied its own removal (proposed by an earlier leader before
                    // this one was elected). raft-rs 0.7 keeps it leading, and then panics on
                    // the next acknowledgement (the leader has no progress of its own): step
                    // down in the same term; the members elect a leader among themselves.
                    tracing::info!(
                        group = self.group,
                        node = self.id,
                        "leader applied its own removal; stepping down"
                    );
                    let term = raft.term;
                    raft.become_follower(term, raft::INVALID_ID);
                }
                Ok(Ok(entry.index.to_be_bytes().to_vec()))
            }
            Err(reason) => {
                tracing::error!(
                    group = self.group,
                    node = self.id,
                    index = entry.index,
                    %reason,
                    "committed membership change not applied"
                );
                Ok(Err(Error::Rejected(format!(
                    "membership change at index {} not applied: {reason}",
                    entry.index
                ))))
            }
        }
    }

    /// Proposes a membership change (e.g. adding a learner); applied when committed. Its
    /// result is the change's log index (8 bytes, big-endian).
    pub fn propose_conf_change(&mut self, id: u64, change: ConfChangeV2) -> Result<()> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(self.not_leader());
        }
        let before = self.raw.raft.raft_log.last_index();
        self.raw
            .propose_conf_change(id.to_be_bytes().to_vec(), change)?;
        self.track(id, before);
        Ok(())
    }

    /// Tells the leader whether a snapshot it sent to `peer` arrived. The transport must call
    /// it for every snapshot message: until then the leader sends `peer` nothing else.
    pub fn report_snapshot(&mut self, peer: NodeId, delivered: bool) {
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(peer, status);
    }

    /// Tells raft-rs that `peer` could not be reached, so the leader probes it gently.
    pub fn report_unreachable(&mut self, peer: NodeId) {
        self.raw.report_unreachable(peer);
    }

    /// The index of the last entry in this replica's log (persisted or not).
    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// The facts a lease read is decided on (see [`crate::lease`]).
    pub fn lease_facts(&self, now: std::time::Instant) -> crate::lease::Facts {
        crate::lease::Facts {
            now,
            role: self.raw.raft.state,
            term: self.raw.raft.term,
            transferring: self.raw.raft.lead_transferee.is_some(),
            commit: self.raw.raft.raft_log.committed,
        }
    }

    /// How long a lease lasts with ticks of `tick`, if this replica reads by lease.
    pub fn lease_duration(&self, tick: std::time::Duration) -> Option<std::time::Duration> {
        (self.config.lease_reads).then(|| crate::lease::duration(tick, self.config.election_ticks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Cluster, ClusterConfig, Faults, Register};
    use crate::storage::Store;

    fn single(dir: &std::path::Path) -> GroupNode<Register> {
        let store = Store::open(dir).unwrap();
        let config = NodeConfig {
            snapshot_entries: 5,
            ..NodeConfig::default()
        };
        GroupNode::new(
            1,
            store.group(9).unwrap(),
            &[1],
            Register::default(),
            config,
        )
        .unwrap()
    }

    /// Handles Readies until there are none; returns all outputs merged.
    fn drain(node: &mut GroupNode<Register>) -> Output {
        let mut all = Output::default();
        while node.has_ready() {
            let out = node.handle_ready().unwrap();
            all.messages.extend(out.messages);
            all.results.extend(out.results);
            all.reads.extend(out.reads);
            all.leadership = out.leadership.or(all.leadership);
        }
        all
    }

    #[test]
    fn single_node_applies_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = single(dir.path());
        assert!(matches!(
            node.propose(1, b"x".to_vec()),
            Err(Error::NotLeader { leader: None, .. })
        ));
        node.campaign().unwrap();
        let out = drain(&mut node);
        assert_eq!(out.leadership.unwrap().role, StateRole::Leader);
        let mut expected = Register::default();
        for id in 1..=12u64 {
            let command = Register::command(id, &[id as u8; 3]);
            node.propose(id, command.clone()).unwrap();
            let out = drain(&mut node);
            let want = expected.apply(0, &command).unwrap();
            assert_eq!(out.results.len(), 1);
            assert_eq!(out.results[0].0, id);
            assert_eq!(out.results[0].1.as_ref().unwrap(), &want);
        }
        // A rejected command is a result, not a failure of the node.
        node.propose(99, b"short".to_vec()).unwrap();
        let out = drain(&mut node);
        assert!(matches!(&out.results[..], [(99, Err(Error::Rejected(_)))]));
        assert_eq!(node.machine(), &expected);
        // The log was compacted by policy (every 5 entries).
        assert!(node.storage().snapshot_metadata().index >= 10);
        let applied = node.applied();
        drop(node);

        // Restart: snapshot restored, the rest replayed, then it leads again.
        let mut node = single(dir.path());
        node.campaign().unwrap();
        drain(&mut node);
        assert!(node.applied() > applied, "a new leader appends a no-op");
        assert_eq!(node.machine(), &expected);
        node.propose(13, Register::command(13, b"")).unwrap();
        assert!(drain(&mut node).results[0].1.is_ok());
    }

    #[test]
    fn conf_change_is_applied_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = single(dir.path());
        node.campaign().unwrap();
        drain(&mut node);
        let mut change = ConfChangeV2::default();
        change.set_changes(
            vec![raft::eraftpb::ConfChangeSingle {
                change_type: raft::eraftpb::ConfChangeType::AddLearnerNode,
                node_id: 2,
                ..Default::default()
            }]
            .into(),
        );
        node.propose_conf_change(5, change).unwrap();
        let out = drain(&mut node);
        assert!(
            matches!(&out.results[..], [(5, Ok(_))]),
            "{:?}",
            out.results
        );
        assert_eq!(node.storage().conf_state().learners, vec![2]);
        // The leader now replicates to the learner.
        assert!(out.messages.iter().any(|m| m.to == 2), "{:?}", out.messages);
        drop(node);
        let node = single(dir.path());
        assert_eq!(node.storage().conf_state().voters, vec![1]);
        assert_eq!(node.storage().conf_state().learners, vec![2]);
    }

    /// A simulated cluster whose network only delays (up to `max_delay`), stepped until it has
    /// a leader.
    fn lossless_cluster_with_leader(
        seed: u64,
        dir: &std::path::Path,
        max_delay: u64,
    ) -> Cluster<Register> {
        lossless_cluster(seed, dir, max_delay)
    }

    /// [`lossless_cluster_with_leader`] of any state machine.
    fn lossless_cluster<M: StateMachine + Default>(
        seed: u64,
        dir: &std::path::Path,
        max_delay: u64,
    ) -> Cluster<M> {
        let config = ClusterConfig {
            faults: Faults {
                drop: 0.0,
                duplicate: 0.0,
                max_delay,
            },
            ..ClusterConfig::default()
        };
        let mut cluster = Cluster::new(seed, dir, config, M::default).unwrap();
        while cluster.leader().is_none() {
            cluster.step().unwrap();
        }
        cluster
    }

    #[test]
    fn read_index_on_leader_and_follower() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = lossless_cluster_with_leader(3, dir.path(), 3);
        let leader = cluster.leader().unwrap();
        cluster.propose(1, Register::command(1, b"a")).unwrap();
        let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
        // raft-rs drops read requests while there is no known leader, or before the leader
        // committed an entry of its term: wait for both (real callers retry on a timeout).
        while cluster.node(leader).unwrap().applied() < 2
            || cluster.node(follower).unwrap().leadership().leader != Some(leader)
        {
            cluster.step().unwrap();
        }
        cluster.node_mut(leader).unwrap().read_index(b"L".to_vec());
        cluster
            .node_mut(follower)
            .unwrap()
            .read_index(b"F".to_vec());
        let mut reads = Vec::new();
        for _ in 0..500 {
            for (node, out) in cluster.step().unwrap() {
                reads.extend(out.reads.into_iter().map(|(ctx, index)| (node, ctx, index)));
            }
        }
        reads.sort();
        assert_eq!(reads.len(), 2, "{reads:?}");
        for (node, ctx, index) in reads {
            assert_eq!(ctx, if node == leader { b"L" } else { b"F" });
            assert!(index >= 2, "the read point covers the committed proposal");
            assert!(cluster.node(node).unwrap().applied() >= index);
        }
    }

    #[test]
    fn leadership_returns_to_the_preferred_replica() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = lossless_cluster_with_leader(5, dir.path(), 2);
        // Node 1 (the first member) is preferred: whoever leads hands leadership to it.
        let steps = (LEADER_TRANSFER_TICKS + 50) * crate::sim::TICK_MS;
        let step_until_leader = |cluster: &mut Cluster<Register>, want: NodeId| {
            for _ in 0..steps {
                cluster.step().unwrap();
                if cluster.leader() == Some(want) {
                    return;
                }
            }
            panic!("node {want} did not lead; leader {:?}", cluster.leader());
        };
        step_until_leader(&mut cluster, 1);
        // It fails over while node 1 is down, and comes back once node 1 has caught up.
        cluster.crash(1);
        let other = loop {
            cluster.step().unwrap();
            if let Some(leader) = cluster.leader() {
                break leader;
            }
        };
        assert_ne!(other, 1);
        cluster
            .propose(1, Register::command(1, b"while 1 was down"))
            .unwrap();
        cluster.restart(1).unwrap();
        step_until_leader(&mut cluster, 1);
        assert!(cluster.node(1).unwrap().applied() >= 2);
    }

    #[test]
    fn leadership_loss_fails_pending_proposals_and_hints_the_leader() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = lossless_cluster_with_leader(11, dir.path(), 2);
        let old = cluster.leader().unwrap();
        let ids = cluster.ids();
        // Cut the leader off, then propose on it: the proposal cannot commit.
        cluster.net.partition(&[old], &ids);
        cluster.propose(7, Register::command(7, b"lost")).unwrap();
        let mut failed = None;
        for _ in 0..3_000 {
            for (node, out) in cluster.step().unwrap() {
                for (id, result) in out.results {
                    assert_eq!((node, id), (old, 7));
                    failed = Some(result);
                }
            }
            if failed.is_some() {
                break;
            }
        }
        // check_quorum makes the isolated leader step down; its proposal fails, retryably.
        let error = failed
            .expect("pending proposal was not failed")
            .unwrap_err();
        assert!(error.is_retryable(), "{error}");
        cluster.net.heal();
        let new = loop {
            cluster.step().unwrap();
            match cluster.leader() {
                Some(leader) if leader != old => break leader,
                _ => {}
            }
        };
        // Followers refuse proposals and name the leader once they know it.
        let follower = ids.into_iter().find(|&id| id != new).unwrap();
        for _ in 0..200 {
            cluster.step().unwrap();
        }
        let error = cluster
            .node_mut(follower)
            .unwrap()
            .propose(8, Register::command(8, b""))
            .unwrap_err();
        assert!(
            matches!(error, Error::NotLeader { leader: Some(l), .. } if l == new),
            "{error}"
        );
    }

    /// A [`Register`] whose replica can be starved: while `starved`, applying and restoring
    /// stall, as a shard's state machine does when a filter's memory cannot be had.
    #[derive(Debug, Default)]
    struct Hungry {
        register: Register,
        starved: std::sync::atomic::AtomicBool,
    }

    impl Hungry {
        fn starve(&self, starved: bool) {
            self.starved
                .store(starved, std::sync::atomic::Ordering::Relaxed);
        }

        fn stall(&self) -> std::result::Result<(), ApplyError> {
            if self.starved.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(ApplyError::Stalled("no memory".into()));
            }
            Ok(())
        }
    }

    impl StateMachine for Hungry {
        fn apply(
            &mut self,
            index: u64,
            command: &[u8],
        ) -> std::result::Result<Vec<u8>, ApplyError> {
            self.stall()?;
            self.register.apply(index, command)
        }

        fn snapshot(&self) -> Vec<u8> {
            self.register.snapshot()
        }

        fn restore(&mut self, snapshot: &[u8]) -> std::result::Result<(), ApplyError> {
            self.stall()?;
            self.register.restore(snapshot)
        }
    }

    /// Steps `cluster` until `done` holds, at most `steps` times.
    fn step_until(
        cluster: &mut Cluster<Hungry>,
        steps: u64,
        done: impl Fn(&Cluster<Hungry>) -> bool,
    ) {
        for _ in 0..steps {
            cluster.step().unwrap();
            if done(cluster) {
                return;
            }
        }
        panic!("condition not reached in {steps} steps");
    }

    /// Proposes commands `ids` on the leader and steps until each is acknowledged, retrying
    /// (as a client would) while there is no leader or it refuses.
    fn commit(cluster: &mut Cluster<Hungry>, ids: std::ops::Range<u64>) {
        for id in ids {
            let acked = (0..100).any(|_| {
                let proposed = cluster.propose(id, Register::command(id, b"x")).is_ok();
                let results: Vec<_> = (0..if proposed { 300 } else { 50 })
                    .flat_map(|_| cluster.step().unwrap())
                    .flat_map(|(_, out)| out.results)
                    .collect();
                results.iter().any(|(i, r)| *i == id && r.is_ok())
            });
            assert!(acked, "proposal {id} was never acknowledged");
        }
    }

    fn registers_equal(cluster: &Cluster<Hungry>) -> bool {
        let ids = cluster.ids();
        let first = &cluster.node(ids[0]).unwrap().machine().register;
        ids.iter()
            .all(|&id| &cluster.node(id).unwrap().machine().register == first)
    }

    #[test]
    fn a_starved_follower_stalls_and_catches_up_when_fed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster: Cluster<Hungry> = lossless_cluster(21, dir.path(), 2);
        commit(&mut cluster, 1..4);
        let leader = cluster.leader().unwrap();
        let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
        cluster.node(follower).unwrap().machine().starve(true);
        // The group goes on with the others; the starved replica applies nothing more.
        commit(&mut cluster, 4..10);
        let node = cluster.node(follower).unwrap();
        assert_eq!(node.stalled(), Some("no memory"));
        let stuck = node.applied();
        step_until(&mut cluster, 500, |_| true);
        assert_eq!(cluster.node(follower).unwrap().applied(), stuck);
        assert!(cluster.node(leader).unwrap().applied() > stuck);
        // A stalled follower does not campaign, even when the leader goes away for long.
        cluster.crash(leader);
        for _ in 0..3_000 {
            cluster.step().unwrap();
            assert_ne!(
                cluster.node(follower).unwrap().leadership().role,
                StateRole::Leader
            );
        }
        cluster.restart(leader).unwrap();
        // Fed again, it applies from its log by itself and ends identical.
        cluster.node(follower).unwrap().machine().starve(false);
        step_until(&mut cluster, 5_000, |c| {
            c.node(follower).unwrap().stalled().is_none() && registers_equal(c)
        });
        commit(&mut cluster, 10..12);
        step_until(&mut cluster, 2_000, registers_equal);
    }

    #[test]
    fn a_starved_leader_hands_leadership_away() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster: Cluster<Hungry> = lossless_cluster(22, dir.path(), 2);
        commit(&mut cluster, 1..3);
        let leader = cluster.leader().unwrap();
        cluster.node(leader).unwrap().machine().starve(true);
        // Its next entry stalls it; it refuses proposals retryably and hands leadership to a
        // caught-up follower, which then commits what the client retries.
        commit(&mut cluster, 3..8);
        let error = cluster
            .node_mut(leader)
            .unwrap()
            .propose(99, Register::command(99, b""))
            .unwrap_err();
        assert!(error.is_retryable(), "{error}");
        assert_ne!(cluster.leader(), Some(leader));
        cluster.node(leader).unwrap().machine().starve(false);
        step_until(&mut cluster, 5_000, registers_equal);
    }

    #[test]
    fn a_snapshot_a_replica_cannot_hold_is_stored_and_restored_later() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster: Cluster<Hungry> = lossless_cluster(23, dir.path(), 2);
        let leader = cluster.leader().unwrap();
        let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
        cluster.crash(follower);
        // The leader compacts its log (every 25 entries here): the follower needs a snapshot.
        commit(&mut cluster, 1..60);
        cluster.restart(follower).unwrap();
        cluster.node(follower).unwrap().machine().starve(true);
        step_until(&mut cluster, 5_000, |c| {
            c.node(follower).unwrap().stalled().is_some()
        });
        let stored = cluster
            .node(follower)
            .unwrap()
            .storage()
            .snapshot_metadata()
            .index;
        assert!(stored > 25, "the leader's snapshot is stored: {stored}");
        cluster.node(follower).unwrap().machine().starve(false);
        step_until(&mut cluster, 5_000, |c| {
            c.node(follower).unwrap().stalled().is_none() && registers_equal(c)
        });
    }

    #[test]
    fn rejoin_is_refused_for_a_node_that_is_not_a_member() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = lossless_cluster_with_leader(24, dir.path(), 2);
        let leader = cluster.leader().unwrap();
        let error = cluster
            .node_mut(leader)
            .unwrap()
            .propose_rejoin(1, 99)
            .unwrap_err();
        assert!(
            matches!(&error, Error::Rejected(reason) if reason.contains("node 99 is not a member")),
            "{error}"
        );
        assert_eq!(
            cluster.node(leader).unwrap().storage().conf_state().voters,
            cluster.ids()
        );
    }

    #[test]
    fn proposals_from_the_network_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = lossless_cluster_with_leader(25, dir.path(), 2);
        let leader = cluster.leader().unwrap();
        let before = cluster.node(leader).unwrap().last_index();
        let mut forged = Message::default();
        forged.set_msg_type(MessageType::MsgPropose);
        forged.from = 2;
        forged.to = leader;
        forged.set_entries(
            vec![Entry {
                data: Register::command(7, b"forged").into(),
                ..Default::default()
            }]
            .into(),
        );
        cluster.node_mut(leader).unwrap().step(forged).unwrap();
        assert_eq!(cluster.node(leader).unwrap().last_index(), before);
    }

    /// Steps until the leader's voters are exactly the members (no learners) and every
    /// member holds what the leader holds, checking at every step that the leader never has
    /// fewer than `floor` voters. Returns every message sent: `(from, to, type)`.
    fn settle_members(
        cluster: &mut Cluster<Hungry>,
        floor: usize,
    ) -> Vec<(NodeId, NodeId, MessageType)> {
        let mut sent = Vec::new();
        for _ in 0..20_000 {
            for (_, out) in cluster.step().unwrap() {
                sent.extend(
                    out.messages
                        .iter()
                        .map(|m| (m.from, m.to, m.get_msg_type())),
                );
            }
            let Some(leader) = cluster.leader() else {
                continue;
            };
            let leading = cluster.node(leader).unwrap();
            let voters = leading.membership().voters;
            assert!(
                voters.len() >= floor,
                "voters {voters:?}, fewer than {floor}"
            );
            let caught_up = cluster.members().iter().all(|&id| {
                cluster.node(id).is_some_and(|n| {
                    n.applied() == leading.applied()
                        && n.machine().register == leading.machine().register
                })
            });
            if cluster.is_settled() && caught_up {
                return sent;
            }
        }
        panic!("members not reached: {:?}", cluster.members());
    }

    /// Steps until node `id` knows it was removed, decommissions it, then commits `more` and
    /// checks that the remaining replicas end identical.
    fn retire(cluster: &mut Cluster<Hungry>, id: NodeId, more: std::ops::Range<u64>) {
        step_until(cluster, 2_000, |c| c.node(id).unwrap().removed());
        cluster.decommission(id);
        commit(cluster, more);
        step_until(cluster, 2_000, registers_equal);
    }

    /// The membership of every member as it applied it.
    fn memberships(cluster: &Cluster<Hungry>) -> Vec<Membership> {
        (cluster.members().iter())
            .map(|&id| cluster.node(id).unwrap().membership())
            .collect()
    }

    fn membership(voters: &[NodeId]) -> Membership {
        Membership {
            voters: voters.to_vec(),
            learners: Vec::new(),
        }
    }

    #[test]
    fn a_three_voter_group_grows_to_four_members() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster: Cluster<Hungry> = lossless_cluster(31, dir.path(), 2);
        // Fewer entries than a snapshot's worth: the leader's log still starts at index 1.
        commit(&mut cluster, 1..5);
        let leader = cluster.leader().unwrap();
        assert_eq!(cluster.node(leader).unwrap().storage().first_index(), 1);
        cluster.join(4).unwrap();
        // A new replica is in no configuration: it neither campaigns nor votes, it waits.
        for _ in 0..500 {
            cluster.step().unwrap();
            let new = cluster.node(4).unwrap();
            assert_eq!(new.leadership().role, StateRole::Follower);
            assert!(new.membership().is_empty());
            assert_eq!(new.applied(), 0);
        }
        cluster.set_members(vec![1, 2, 3, 4]);
        let sent = settle_members(&mut cluster, 3);
        // The leader compacted its log first, so node 4 got a snapshot, with the membership.
        assert!(sent.contains(&(leader, 4, MessageType::MsgSnapshot)));
        assert_eq!(memberships(&cluster), vec![membership(&[1, 2, 3, 4]); 4]);
        assert!(!cluster.node(4).unwrap().removed());
        commit(&mut cluster, 5..8);
        step_until(&mut cluster, 2_000, registers_equal);
        assert_eq!(cluster.node(4).unwrap().machine().register.ids.len(), 7);
    }

    #[test]
    fn a_member_is_replaced_adding_before_removing() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster: Cluster<Hungry> = lossless_cluster(32, dir.path(), 2);
        commit(&mut cluster, 1..31);
        cluster.join(4).unwrap();
        cluster.set_members(vec![1, 2, 4]);
        // Never fewer than three voters: 4 is added and promoted before 3 goes.
        let sent = settle_members(&mut cluster, 3);
        assert!(sent
            .iter()
            .any(|&(_, to, kind)| to == 4 && kind == MessageType::MsgSnapshot));
        assert_eq!(memberships(&cluster), vec![membership(&[1, 2, 4]); 3]);
        let held = &cluster.node(4).unwrap().machine().register;
        assert_eq!(held, &cluster.node(1).unwrap().machine().register);
        assert_eq!(held.ids, (1..31).collect::<Vec<_>>());
        // Node 3 applies its removal: it knows it was removed, and can go.
        retire(&mut cluster, 3, 31..35);
    }

    #[test]
    fn a_leader_that_is_no_longer_a_member_hands_over_before_it_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster: Cluster<Hungry> = lossless_cluster(33, dir.path(), 2);
        commit(&mut cluster, 1..4);
        let old = cluster.leader().unwrap();
        let rest: Vec<NodeId> = cluster.ids().into_iter().filter(|&id| id != old).collect();
        cluster.set_members(rest.clone());
        let sent = settle_members(&mut cluster, 2);
        let handover = sent
            .iter()
            .position(|&(from, _, kind)| from == old && kind == MessageType::MsgTimeoutNow);
        assert!(handover.is_some(), "the old leader handed leadership over");
        assert!(rest.contains(&cluster.leader().unwrap()));
        assert_eq!(memberships(&cluster), vec![membership(&rest); 2]);
        retire(&mut cluster, old, 4..6);
    }

    #[test]
    fn a_four_voter_group_shrinks_to_three() {
        let dir = tempfile::tempdir().unwrap();
        let config = ClusterConfig {
            nodes: 4,
            faults: Faults {
                drop: 0.0,
                duplicate: 0.0,
                max_delay: 2,
            },
            ..ClusterConfig::default()
        };
        let mut cluster = Cluster::new(34, dir.path(), config, Hungry::default).unwrap();
        commit(&mut cluster, 1..4);
        cluster.set_members(vec![1, 2, 3]);
        settle_members(&mut cluster, 3);
        assert_eq!(memberships(&cluster), vec![membership(&[1, 2, 3]); 3]);
        retire(&mut cluster, 4, 4..6);
    }

    #[test]
    fn a_committed_membership_change_that_cannot_apply_is_rejected_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = single(dir.path());
        node.campaign().unwrap();
        drain(&mut node);
        // Removing the only voter: raft-rs refuses to apply it; the group goes on.
        let change = single_change(ConfChangeType::RemoveNode, 1);
        node.propose_conf_change(5, change).unwrap();
        let out = drain(&mut node);
        assert!(
            matches!(&out.results[..], [(5, Err(Error::Rejected(_)))]),
            "{:?}",
            out.results
        );
        assert_eq!(node.membership(), membership(&[1]));
        node.propose(6, Register::command(6, b"")).unwrap();
        assert!(drain(&mut node).results[0].1.is_ok());
    }
}
