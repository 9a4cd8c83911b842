//! The shard state machine as a Raft [`leakbloom_raft::StateMachine`] (being written).
