//! Discovery: what a node whose data directory is new learns from its peers before it opens
//! its replicas, so that a wiped disk is rebuilt from the peers instead of bootstrapped as a new
//! cluster.
//!
//! A wiped disk and a new cluster both show up as an empty data directory. For each hosted
//! group (shards, and the catalog) the node asks the peers' `Status` and [`decide`]s: *held*
//! when one of its other replicas has committed anything (rebuild this one from them), *new*
//! when a majority of its replicas, this one included, are new or hold nothing committed
//! (bootstrap), *undecided* otherwise (ask again). Waiting is the safe side: with a majority of
//! its replicas silent, a new group cannot be told from one whose data this node lost, and
//! bootstrapping the latter could elect a leader without acknowledged writes. Nodes of a new
//! cluster therefore start together (a StatefulSet with `podManagementPolicy: Parallel`, or
//! `leakbloom dev`); one that starts after the others committed is rebuilt from them, which is
//! slower but as good.
//!
//! [`decide`] is a plain function of what the peers said, tested by a table; [`discover`] asks,
//! decides and waits.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use leakbloom_proto::internal::v1::status_response::State;
use leakbloom_proto::internal::v1::StatusResponse;
use leakbloom_raft::{GroupId, NodeId};

use crate::catalog::CATALOG_GROUP;
use crate::config::Config;
use crate::peer::Peers;

/// How often a node with a new data directory asks its peers whether the cluster is new.
const DISCOVER_POLL: Duration = Duration::from_millis(200);

/// How often it says that it is still waiting for them.
const DISCOVER_LOG: Duration = Duration::from_secs(5);

/// What one other replica's node said about a group in its `Status` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard {
    /// Serving, and the group has committed something: it holds data.
    Committed,
    /// New (its data directory is new too), or serving with nothing committed in the group.
    Nothing,
    /// Still opening its data directory (or a state this node does not know): it holds data
    /// or not, it cannot say yet.
    Unsure,
}

impl Heard {
    /// What `status` says about `group`.
    pub(crate) fn from_status(status: &StatusResponse, group: GroupId) -> Heard {
        let commit = status.committed.get(&group).copied().unwrap_or(0);
        match status.state() {
            State::Serving if commit > 0 => Heard::Committed,
            State::Serving | State::New => Heard::Nothing,
            _ => Heard::Unsure,
        }
    }
}

/// What a node with a new data directory does with its replica of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Another replica holds the group's data: rebuild this one from it.
    Held,
    /// A majority of the replicas hold nothing: the group is new, bootstrap it.
    New,
    /// Neither yet: ask again.
    Undecided,
}

/// Decides a group with `replicas` replicas (this node's among them) from what the other
/// replicas' nodes said (`heard`; silent ones are left out). This node counts as new.
pub(crate) fn decide(replicas: usize, heard: impl IntoIterator<Item = Heard>) -> Verdict {
    let mut new = 1;
    for heard in heard {
        match heard {
            Heard::Committed => return Verdict::Held,
            Heard::Nothing => new += 1,
            Heard::Unsure => {}
        }
    }
    let majority = replicas / 2 + 1;
    if new >= majority {
        Verdict::New
    } else {
        Verdict::Undecided
    }
}

/// For a node whose data directory is new: the hosted groups (shards, and the catalog) whose
/// data the cluster already holds, so that their replicas must be rebuilt from the peers
/// instead of bootstrapped. Asks the peers' `Status` until every hosted group is decided (see
/// the module docs), saying every few seconds which groups it waits for and which peers are
/// silent.
pub(crate) async fn discover(config: &Config, peers: &Peers) -> Vec<GroupId> {
    let Ok(layout) = config.layout() else {
        // Node::open reports the configuration error.
        return Vec::new();
    };
    // Every hosted shard's group and its replicas, and the catalog's (on every node).
    let hosted: Vec<(GroupId, Vec<NodeId>)> = (0..config.shards)
        .map(|shard| (GroupId::from(shard), layout.replicas(shard)))
        .chain([(CATALOG_GROUP, layout.nodes().to_vec())])
        .filter(|(_, replicas)| replicas.contains(&config.id))
        .collect();
    if layout.replication() < 2 {
        return Vec::new();
    }
    let others: Vec<NodeId> = config
        .members()
        .into_keys()
        .filter(|&id| id != config.id)
        .collect();
    let mut said = Instant::now();
    loop {
        let answers: BTreeMap<NodeId, StatusResponse> = join_all(
            others
                .iter()
                .map(|&id| async move { peers.status(id).await.ok().map(|status| (id, status)) }),
        )
        .await
        .into_iter()
        .flatten()
        .collect();
        let mut held = Vec::new();
        let mut undecided = Vec::new();
        for (group, replicas) in &hosted {
            let heard = replicas
                .iter()
                .filter_map(|id| answers.get(id))
                .map(|status| Heard::from_status(status, *group));
            match decide(replicas.len(), heard) {
                Verdict::Held => held.push(*group),
                Verdict::Undecided => undecided.push(*group),
                Verdict::New => {}
            }
        }
        if undecided.is_empty() {
            if held.is_empty() {
                tracing::info!(node = config.id, "new cluster: bootstrapping");
            } else {
                tracing::info!(
                    node = config.id,
                    groups = ?held,
                    "new data directory, but the peers hold these groups' data: rebuilding \
                     their replicas from the peers"
                );
            }
            return held;
        }
        if said.elapsed() >= DISCOVER_LOG {
            said = Instant::now();
            let silent: Vec<NodeId> = others
                .iter()
                .copied()
                .filter(|id| !answers.contains_key(id))
                .collect();
            tracing::warn!(
                node = config.id,
                groups = ?undecided,
                silent = ?silent,
                "new data directory: waiting for a majority of these groups' replicas to say \
                 whether they are new (bootstrap) or hold data (rebuild from them)"
            );
        }
        tokio::time::sleep(DISCOVER_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_answer_says_committed_nothing_or_unsure() {
        let status = |state: State, commit: u64| {
            let mut status = StatusResponse {
                committed: [(7, commit)].into(),
                ..Default::default()
            };
            status.set_state(state);
            status
        };
        #[rustfmt::skip]
        let table = [
            // (state, group 7's commit index) -> what it says about group 7
            (State::Serving, 5, Heard::Committed),
            (State::Serving, 0, Heard::Nothing),
            (State::New, 0, Heard::Nothing),
            // Only a serving node's commit index means anything.
            (State::New, 5, Heard::Nothing),
            (State::Opening, 0, Heard::Unsure),
            (State::Opening, 5, Heard::Unsure),
            (State::Unspecified, 5, Heard::Unsure),
        ];
        for (state, commit, expected) in table {
            assert_eq!(
                Heard::from_status(&status(state, commit), 7),
                expected,
                "{state:?} with commit {commit}"
            );
        }
        let other_group = status(State::Serving, 5);
        assert_eq!(Heard::from_status(&other_group, 8), Heard::Nothing);
    }

    #[test]
    fn a_group_is_held_new_or_undecided_as_the_table_says() {
        use Heard::{Committed as C, Nothing as N, Unsure as U};
        use Verdict::{Held, New, Undecided};
        #[rustfmt::skip]
        let table: [(usize, &[Heard], Verdict); 18] = [
            // (replicas, what the answering others said) -> verdict; this node counts as new.
            // Three replicas: two new ones (this node and one other) are a majority.
            (3, &[N, N], New),
            (3, &[N], New),
            (3, &[N, U], New),
            (3, &[], Undecided),
            (3, &[U], Undecided),
            (3, &[U, U], Undecided),
            // One replica that has committed is enough, whoever else is new or silent.
            (3, &[C], Held),
            (3, &[N, C], Held),
            (3, &[C, U], Held),
            // Two replicas: a majority is both.
            (2, &[N], New),
            (2, &[], Undecided),
            (2, &[C], Held),
            // Five replicas: three new ones.
            (5, &[N, N], New),
            (5, &[N, U, U, U], Undecided),
            (5, &[N, N, N, C], Held),
            // Four replicas: three new ones.
            (4, &[N, N], New),
            (4, &[N, U, U], Undecided),
            // One replica (never asked: nothing to rebuild from) would be new at once.
            (1, &[], New),
        ];
        for (replicas, heard, expected) in table {
            assert_eq!(
                decide(replicas, heard.iter().copied()),
                expected,
                "{replicas} replicas, heard {heard:?}"
            );
        }
    }
}
