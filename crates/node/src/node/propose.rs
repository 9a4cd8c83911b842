//! Committing commands through a group's leader, with retries; read barriers; and
//! [`Node::admit`], which checks a command a peer asks this leader to propose.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::try_join_all;
use leakbloom_proto::internal::v1::{command, CatalogCommand, Command};
use leakbloom_raft::{GroupId, NodeId};
use prost::Message as _;

use super::{leader_seen, Node};
use crate::catalog::{self, CATALOG_GROUP};
use crate::error::{Error, Result};
use crate::machine;
use crate::shard::{shard_of, shard_of_group, ShardId};
use crate::state::Applied;
use crate::suffix::{insert_keys, InsertKeys};
use leakbloom_cluster::RetryPolicy;

/// How long a proposal keeps retrying retryable failures: longer than an election (1-2 s with
/// default ticks), so a write survives one leader change.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Node {
    /// The node that leads `group`, as far as this node knows.
    fn group_leader(&self, group: GroupId) -> Option<NodeId> {
        if group == CATALOG_GROUP {
            return leader_seen(self.id(), &self.catalog.handle).or_else(|| {
                match self.catalog_hint.load(std::sync::atomic::Ordering::Relaxed) {
                    0 => None,
                    hint => Some(hint),
                }
            });
        }
        self.leader_of(shard_of_group(group))
    }

    /// Where to send a proposal for `group` when no leader is known: for the catalog, each
    /// other node in turn (one that knows the leader answers with its hint), so a node whose
    /// catalog replica was left behind still reaches the catalog; for a shard, nowhere (its
    /// replicas elect one).
    fn ask_instead(&self, group: GroupId, attempt: usize) -> Option<NodeId> {
        if group != CATALOG_GROUP {
            return None;
        }
        let others: Vec<NodeId> = self.catalog.state.read(|c| {
            c.members()
                .keys()
                .copied()
                .filter(|&n| n != self.id())
                .collect()
        });
        others.get(attempt % others.len().max(1)).copied()
    }

    /// Commits `command` on `group` through its leader and returns the state machine's
    /// encoded result, retrying retryable failures (following leader hints) for up to
    /// [`PROPOSE_TIMEOUT`].
    async fn propose_bytes(&self, group: GroupId, command: Bytes) -> Result<Bytes> {
        let shard = shard_of_group(group);
        let started = Instant::now();
        let mut retry = RetryPolicy::default().start(started, started + PROPOSE_TIMEOUT);
        let mut attempts = 0;
        loop {
            let leader = self
                .group_leader(group)
                .or_else(|| self.ask_instead(group, attempts));
            attempts += 1;
            let attempt = match leader {
                Some(leader) if leader == self.id() => {
                    let handle = self.handle(group).expect("a leader hosts a replica");
                    handle
                        .propose(command.to_vec())
                        .await
                        .map(Bytes::from)
                        .map_err(|e| Error::from_raft(shard, self.id(), e))
                }
                Some(leader) => self.peers.propose(leader, group, command.clone()).await,
                None => Err(Error::Unavailable {
                    shard,
                    leader: None,
                    reason: "no leader elected yet".into(),
                }),
            };
            let Err(Error::Unavailable { leader, .. }) = attempt else {
                return attempt;
            };
            self.learn_leader(group, leader);
            match retry.pause(Instant::now()) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return attempt,
            }
        }
    }

    /// Commits `command` on shard `shard` and returns what applying it did.
    pub(super) async fn propose(&self, shard: ShardId, command: &Command) -> Result<Applied> {
        let bytes = Bytes::from(command.encode_to_vec());
        let result = self.propose_bytes(GroupId::from(shard), bytes).await?;
        machine::decode_outcome(shard, &result)
    }

    /// Commits `command` on the catalog and returns what applying it did.
    pub(super) async fn propose_catalog(
        &self,
        command: CatalogCommand,
    ) -> Result<catalog::Outcome> {
        let bytes = Bytes::from(command.encode_to_vec());
        let result = self.propose_bytes(CATALOG_GROUP, bytes).await?;
        machine::decode_catalog_outcome(&result)
    }

    /// Commits `commands`, each on its shard, sending those for shards led elsewhere to each
    /// leader node in one call; each command such a call does not commit (the call failed, or
    /// that node no longer leads the shard) takes [`propose`](Self::propose)'s retrying path.
    pub(super) async fn propose_all(&self, commands: Vec<(ShardId, Command)>) -> Result<()> {
        let mut local = Vec::new();
        let mut remote: BTreeMap<NodeId, Vec<(ShardId, Command)>> = BTreeMap::new();
        for (shard, command) in commands {
            match self.leader_of(shard) {
                Some(leader) if leader != self.id() => {
                    remote.entry(leader).or_default().push((shard, command))
                }
                _ => local.push((shard, command)),
            }
        }
        let local = try_join_all(
            local
                .iter()
                .map(|(shard, command)| self.propose(*shard, command)),
        );
        let remote = try_join_all(
            remote
                .into_iter()
                .map(|(leader, commands)| self.propose_at(leader, commands)),
        );
        tokio::try_join!(local, remote)?;
        Ok(())
    }

    /// Proposes `commands` to node `leader` in one call (see [`propose_all`](Self::propose_all)).
    async fn propose_at(&self, leader: NodeId, commands: Vec<(ShardId, Command)>) -> Result<()> {
        let batch = commands
            .iter()
            .map(|(shard, command)| (GroupId::from(*shard), Bytes::from(command.encode_to_vec())))
            .collect();
        let outcomes: Vec<Option<Result<Bytes>>> =
            match self.peers.propose_batch(leader, batch).await {
                Ok(outcomes) => outcomes.into_iter().map(Some).collect(),
                Err(Error::Unavailable { .. }) => commands.iter().map(|_| None).collect(),
                Err(error) => return Err(error),
            };
        try_join_all(
            commands
                .iter()
                .zip(outcomes)
                .map(|((shard, command), outcome)| async move {
                    match outcome {
                        Some(Ok(result)) => machine::decode_outcome(*shard, &result).map(drop),
                        Some(Err(Error::Unavailable { leader, .. })) => {
                            self.learn_leader(GroupId::from(*shard), leader);
                            self.propose(*shard, command).await.map(drop)
                        }
                        None => self.propose(*shard, command).await.map(drop),
                        Some(Err(error)) => Err(error),
                    }
                }),
        )
        .await?;
        Ok(())
    }

    /// Waits until every listed local replica that serves reads has applied a linearizable
    /// read point.
    pub(super) async fn read_barrier(&self, shards: impl Iterator<Item = ShardId>) -> Result<()> {
        try_join_all(shards.filter_map(|shard| {
            let replica = self.serving(shard)?;
            Some(async move {
                replica
                    .handle
                    .read_index()
                    .await
                    .map_err(|e| Error::from_raft(shard, self.id(), e))
            })
        }))
        .await?;
        Ok(())
    }

    /// Waits until this node's catalog replica has applied a linearizable read point: what
    /// the catalog committed before now is then in [`Node::catalog`].
    pub(super) async fn catalog_barrier(&self) -> Result<()> {
        self.catalog
            .handle
            .read_index()
            .await
            .map(drop)
            .map_err(|e| Error::from_raft(ShardId::MAX, self.id(), e))
    }

    /// Checks a command a peer asks this node to propose on `group` (which it leads) against
    /// what the shard and the catalog say, before it can commit: an insert's keys must be
    /// whole keys of the shard or whole suffixes, and its set's generation must be the
    /// catalog's visible one; a create must
    /// be the catalog's entry of that generation; a drop must not hit the catalog's current
    /// generation of the set. Catalog commands are checked when applied. The state machine
    /// checks what it can on its own when applying (see [`crate::state`]); this adds what only
    /// the catalog knows, so a forged or stale proposal is refused and nothing changes.
    pub async fn admit(&self, group: GroupId, bytes: &[u8]) -> Result<()> {
        if group == CATALOG_GROUP {
            return Ok(());
        }
        let shard = shard_of_group(group);
        if self.replica(shard).is_none() {
            return Err(Error::Unavailable {
                shard,
                leader: None,
                reason: format!("node {} holds no replica of it", self.id()),
            });
        }
        let command = Command::decode(bytes)
            .map_err(|e| Error::Refused(format!("the proposal is not a command: {e}")))?;
        match &command.kind {
            Some(command::Kind::Insert(insert)) => {
                let outside = match insert_keys(insert)? {
                    InsertKeys::Whole(keys) => keys
                        .iter()
                        .any(|key| shard_of(key, self.config.shards) != shard),
                    InsertKeys::FromSuffixes(_) => false,
                };
                if outside {
                    return Err(Error::Refused(format!(
                        "the insert holds keys of other shards than shard {shard}"
                    )));
                }
                let entry = self.resolve(&insert.set, true).await?;
                if entry.generation != insert.generation {
                    return Err(Error::SetNotFound(insert.set.clone()));
                }
            }
            Some(command::Kind::CreateSet(create)) => {
                let entry = self.resolve(&create.name, false).await?;
                if entry.command() != *create {
                    return Err(Error::Refused(format!(
                        "the create of set {:?} is not the catalog's (generation {})",
                        create.name, entry.generation
                    )));
                }
            }
            Some(command::Kind::DropSet(drop)) => {
                self.catalog_barrier().await?;
                let current = self
                    .catalog
                    .state
                    .read(|c| c.entry(&drop.name).map(|entry| entry.generation));
                if current.is_some_and(|generation| generation <= drop.generation) {
                    return Err(Error::Refused(format!(
                        "set {:?} exists in the catalog: drop it with DropSet, which drops it \
                         on every shard",
                        drop.name
                    )));
                }
            }
            None => {}
        }
        Ok(())
    }
}
