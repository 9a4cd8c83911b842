//! The client-port gRPC services: `leakbloom.v1.Lookup` unpacks requests, calls [`Node`] and
//! packs replies; `leakbloom.v1.Cluster` tells routers the shard map and registers joining
//! nodes; `leakbloom.v1.Nodes` lists and decommissions nodes.
//! Errors become `tonic::Status` in exactly one place, `impl From<Error> for Status`.

use std::sync::Arc;
use std::time::Instant;

use leakbloom_cluster::Consistency;
use leakbloom_proto::v1::cluster_server::Cluster;
use leakbloom_proto::v1::lookup_server::Lookup;
use leakbloom_proto::v1::nodes_server::Nodes;
use leakbloom_proto::v1::{
    CheckRequest, CheckResponse, CreateSetRequest, DecommissionNodeRequest, DropSetRequest,
    DropSetResponse, GetSetRequest, GetShardMapRequest, InsertRequest, InsertResponse, JoinRequest,
    JoinResponse, ListNodesRequest, ListNodesResponse, ListSetsRequest, ListSetsResponse, NodeInfo,
    SetInfo, ShardMap,
};
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::node::Node;

/// The client API of a node.
#[derive(Debug, Clone)]
pub struct LookupService {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
}

impl LookupService {
    /// Serves `node`, counting calls in `metrics`.
    pub fn new(node: Arc<Node>, metrics: Arc<Metrics>) -> LookupService {
        LookupService { node, metrics }
    }

    /// Records a finished call of `rpc` started at `start`, and passes its result on.
    fn count<T>(&self, rpc: &str, start: Instant, result: Result<T, Status>) -> Result<T, Status> {
        self.metrics.requests.finish(rpc, start, result)
    }
}

#[tonic::async_trait]
impl Lookup for LookupService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let start = Instant::now();
        let request = request.into_inner();
        let checked = match Consistency::try_from(request.consistency) {
            Ok(consistency) => self
                .node
                .check(&request.sets, &request.keys, consistency)
                .await
                .map_err(Status::from),
            Err(unknown) => Err(Status::from(Error::from(unknown))),
        };
        if checked.is_ok() {
            let keys = request.keys.len() / leakbloom_cluster::KEY_LEN;
            self.metrics.requests.keys_checked(keys as u64);
        }
        let results = self.count("Check", start, checked)?;
        Ok(Response::new(CheckResponse { results }))
    }

    async fn insert(
        &self,
        request: Request<InsertRequest>,
    ) -> Result<Response<InsertResponse>, Status> {
        let start = Instant::now();
        let request = request.into_inner();
        let inserted = self.node.insert(&request.set, &request.keys).await;
        let keys = self.count("Insert", start, inserted.map_err(Status::from))?;
        self.metrics.requests.keys_inserted(keys);
        Ok(Response::new(InsertResponse { keys }))
    }

    async fn create_set(
        &self,
        request: Request<CreateSetRequest>,
    ) -> Result<Response<SetInfo>, Status> {
        let start = Instant::now();
        let created = self.node.create_set(request.get_ref()).await;
        let info = self.count("CreateSet", start, created.map_err(Status::from))?;
        tracing::info!(set = %info.name, capacity = info.capacity, fpr = info.fpr, "set created");
        Ok(Response::new(info))
    }

    async fn drop_set(
        &self,
        request: Request<DropSetRequest>,
    ) -> Result<Response<DropSetResponse>, Status> {
        let start = Instant::now();
        let name = &request.get_ref().name;
        let dropped = self.node.drop_set(name).await;
        self.count("DropSet", start, dropped.map_err(Status::from))?;
        tracing::info!(set = %name, "set dropped");
        Ok(Response::new(DropSetResponse {}))
    }

    async fn list_sets(
        &self,
        _request: Request<ListSetsRequest>,
    ) -> Result<Response<ListSetsResponse>, Status> {
        let start = Instant::now();
        let listed = self.node.list_sets().await;
        let sets = self.count("ListSets", start, listed.map_err(Status::from))?;
        Ok(Response::new(ListSetsResponse { sets }))
    }

    async fn get_set(&self, request: Request<GetSetRequest>) -> Result<Response<SetInfo>, Status> {
        let start = Instant::now();
        let got = self.node.get_set(&request.get_ref().name).await;
        let info = self.count("GetSet", start, got.map_err(Status::from))?;
        Ok(Response::new(info))
    }
}

/// The shard map for routers (`leakbloom.v1.Cluster`).
#[derive(Debug, Clone)]
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    /// Serves `node`'s view of the cluster.
    pub fn new(node: Arc<Node>) -> ClusterService {
        ClusterService { node }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn get_shard_map(
        &self,
        _request: Request<GetShardMapRequest>,
    ) -> Result<Response<ShardMap>, Status> {
        Ok(Response::new(self.node.shard_map().await))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let answer = self.node.join(request.into_inner()).await?;
        Ok(Response::new(answer))
    }
}

/// The operators' view of the nodes (`leakbloom nodes`).
#[derive(Debug, Clone)]
pub struct NodesService {
    node: Arc<Node>,
}

impl NodesService {
    /// Serves `node`'s view of the nodes.
    pub fn new(node: Arc<Node>) -> NodesService {
        NodesService { node }
    }
}

#[tonic::async_trait]
impl Nodes for NodesService {
    async fn list_nodes(
        &self,
        _request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let nodes = self.node.list_nodes().await?;
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn decommission_node(
        &self,
        request: Request<DecommissionNodeRequest>,
    ) -> Result<Response<NodeInfo>, Status> {
        let request = request.into_inner();
        let info = self.node.decommission(request.node, request.force).await?;
        Ok(Response::new(info))
    }
}
