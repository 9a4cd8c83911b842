//! The two routed operations: a check merged from its parts, an insert acknowledged by every
//! part. Shared by the router process and [`Client::direct`](crate::Client::direct), so both answer the same.

use std::time::Instant;

use bytes::Bytes;
use leakbloom_cluster::{Consistency, Merge, MergeError, NodeId, ShardMap, KEY_LEN};
use leakbloom_proto::v1::{CheckRequest, InsertRequest, SetResult};

use crate::coalesce::{Coalescer, SMALL_PART_KEYS};
use crate::routing::{with_deadline, Batch, Result, RouteError, Routing};

/// A check to route.
#[derive(Clone, Copy, Debug)]
pub struct Check<'a> {
    /// The sets, in the answer's order; empty: every set.
    pub sets: &'a [String],
    /// The keys, packed.
    pub packed: &'a Bytes,
    /// How fresh the answer must be.
    pub consistency: Consistency,
    /// When the call gives up.
    pub deadline: Instant,
}

impl Routing {
    /// Which of `check.sets` (every set when empty) may contain each of its keys (whole keys,
    /// within the batch limit: the caller checked): split by shard over the nodes, merged.
    /// Small parts share node calls with other checks ([`Coalescer`]).
    pub async fn check(&self, coalescer: &Coalescer, check: Check<'_>) -> Result<Vec<SetResult>> {
        match self.check_once(coalescer, check).await {
            Err(RouteError::SetsChanged(names)) => {
                // "Every set" meant different sets on different nodes (a set was being
                // created or dropped): ask again for the first answer's sets by name.
                let named = Check {
                    sets: &names,
                    ..check
                };
                self.check_once(coalescer, named).await
            }
            other => other,
        }
    }

    async fn check_once(&self, coalescer: &Coalescer, check: Check<'_>) -> Result<Vec<SetResult>> {
        let Check {
            sets,
            packed,
            consistency,
            deadline,
        } = check;
        let keys = packed.len() / KEY_LEN;
        let linearizable = consistency == Consistency::Linearizable;
        let spread = self.spread();
        // Any-replica reads may be hedged on another replica; leader reads may not.
        let batch = Batch {
            packed,
            deadline,
            hedge: (!linearizable).then_some(spread),
        };
        let mut merge: Merge<'_, Bytes> = Merge::new(keys, sets);
        self.route(
            batch,
            |map: &ShardMap, shard| match (linearizable, shard) {
                (true, Some(shard)) => map.leader_target(shard),
                (true, None) => None,
                (false, Some(shard)) => map.replica_target(shard, spread),
                (false, None) => map.whole_target(spread),
            },
            |mut client, node, part| async move {
                if part.len() / KEY_LEN <= SMALL_PART_KEYS {
                    return coalescer
                        .check(client, node, sets, consistency, part, deadline)
                        .await;
                }
                let request = CheckRequest {
                    sets: sets.to_vec(),
                    keys: part,
                    consistency: consistency.wire(),
                };
                Ok(client
                    .check(with_deadline(request, deadline))
                    .await?
                    .into_inner())
            },
            |node: NodeId, positions, answer| {
                let answer = answer
                    .results
                    .into_iter()
                    .map(|r| (r.set, r.present))
                    .collect();
                merge.add(positions, answer).map_err(|error| match error {
                    MergeError::SetsChanged(names) => RouteError::SetsChanged(names),
                    other => RouteError::Reply {
                        node,
                        reason: other.to_string(),
                    },
                })
            },
        )
        .await?;
        Ok(merge
            .finish()
            .into_iter()
            .map(|(set, present)| SetResult { set, present })
            .collect())
    }

    /// Adds the `packed` keys (whole keys, within the batch limit: the caller checked) to
    /// `set`: each node gets the keys of the shards it leads, in one call; small parts share
    /// node calls with other inserts into the set ([`Coalescer`]). Returns the number of keys
    /// acknowledged, once every part is.
    pub async fn insert(
        &self,
        coalescer: &Coalescer,
        set: &str,
        packed: &Bytes,
        deadline: Instant,
    ) -> Result<u64> {
        let mut acknowledged = 0u64;
        let batch = Batch {
            packed,
            deadline,
            hedge: None,
        };
        self.route(
            batch,
            |map: &ShardMap, shard| shard.and_then(|shard| map.leader_target(shard)),
            |mut client, node, part| async move {
                if part.len() / KEY_LEN <= SMALL_PART_KEYS {
                    return coalescer.insert(client, node, set, part, deadline).await;
                }
                let request = InsertRequest {
                    set: set.to_string(),
                    keys: part,
                };
                let answer = client.insert(with_deadline(request, deadline)).await?;
                Ok(answer.into_inner().keys)
            },
            |node, positions, answered| {
                let sent = positions.len() as u64;
                if sent != answered {
                    return Err(RouteError::Reply {
                        node,
                        reason: format!("acknowledged {answered} keys of {sent}"),
                    });
                }
                acknowledged += answered;
                Ok(())
            },
        )
        .await?;
        Ok(acknowledged)
    }
}
