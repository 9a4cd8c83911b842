//! The router's `leakbloom.v1.Lookup` service: the same contract as a node's, served by
//! routing; and its `leakbloom.v1.Nodes`, which any node answers. Errors become `tonic::Status` in one place, `impl From<Error> for Status`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leakbloom_proto::v1::lookup_client::LookupClient;
use leakbloom_proto::v1::lookup_server::Lookup;
use leakbloom_proto::v1::nodes_server::Nodes;
use leakbloom_proto::v1::{
    CheckRequest, CheckResponse, CreateSetRequest, DecommissionNodeRequest, DropSetRequest,
    DropSetResponse, GetSetRequest, InsertRequest, InsertResponse, ListNodesRequest,
    ListNodesResponse, ListSetsRequest, ListSetsResponse, NodeInfo, SetInfo,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::error::{check_name, Result};
use crate::metrics::Metrics;
use crate::router::{deadline, Router};

/// The client API of a router.
#[derive(Debug, Clone)]
pub struct RouterService {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

impl RouterService {
    /// Serves through `router`, counting calls in `metrics`; calls without a client deadline
    /// get `timeout`.
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>, timeout: Duration) -> RouterService {
        RouterService {
            router,
            metrics,
            timeout,
        }
    }

    /// Runs one call of `rpc`, counts it, and turns its error into a status.
    async fn serve<T>(
        &self,
        rpc: &str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T, Status> {
        let start = Instant::now();
        let result = call.await.map_err(Status::from);
        self.metrics.requests.finish(rpc, start, result)
    }

    /// Runs one set-management call of `rpc` on any node, once the set name it carries has
    /// passed the nodes' rule: a bad name never reaches a node.
    async fn named<T, F, Fut>(
        &self,
        rpc: &str,
        name: &str,
        deadline: Instant,
        call: F,
    ) -> Result<Response<T>, Status>
    where
        F: Fn(LookupClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let call = async {
            check_name(name)?;
            self.router.any_node(deadline, call).await
        };
        Ok(Response::new(self.serve(rpc, call).await?))
    }
}

#[tonic::async_trait]
impl Lookup for RouterService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let deadline = deadline(&request, self.timeout);
        let request = request.into_inner();
        let keys = (request.keys.len() / leakbloom_cluster::KEY_LEN) as u64;
        let answer = self
            .serve("Check", self.router.check(request, deadline))
            .await?;
        self.metrics.requests.keys_checked(keys);
        Ok(Response::new(answer))
    }

    async fn insert(
        &self,
        request: Request<InsertRequest>,
    ) -> Result<Response<InsertResponse>, Status> {
        let deadline = deadline(&request, self.timeout);
        let keys = self
            .serve("Insert", self.router.insert(request.into_inner(), deadline))
            .await?;
        self.metrics.requests.keys_inserted(keys);
        Ok(Response::new(InsertResponse { keys }))
    }

    async fn create_set(
        &self,
        request: Request<CreateSetRequest>,
    ) -> Result<Response<SetInfo>, Status> {
        let deadline = deadline(&request, self.timeout);
        let request = request.into_inner();
        self.named("CreateSet", &request.name, deadline, |mut client| {
            let request = request.clone();
            async move { client.create_set(request).await }
        })
        .await
    }

    async fn drop_set(
        &self,
        request: Request<DropSetRequest>,
    ) -> Result<Response<DropSetResponse>, Status> {
        let deadline = deadline(&request, self.timeout);
        let request = request.into_inner();
        self.named("DropSet", &request.name, deadline, |mut client| {
            let request = request.clone();
            async move { client.drop_set(request).await }
        })
        .await
    }

    async fn list_sets(
        &self,
        request: Request<ListSetsRequest>,
    ) -> Result<Response<ListSetsResponse>, Status> {
        let deadline = deadline(&request, self.timeout);
        let call = self.router.any_node(deadline, |mut client| async move {
            client.list_sets(ListSetsRequest {}).await
        });
        Ok(Response::new(self.serve("ListSets", call).await?))
    }

    async fn get_set(&self, request: Request<GetSetRequest>) -> Result<Response<SetInfo>, Status> {
        let deadline = deadline(&request, self.timeout);
        let request = request.into_inner();
        self.named("GetSet", &request.name, deadline, |mut client| {
            let request = request.clone();
            async move { client.get_set(request).await }
        })
        .await
    }
}

/// The operators' `leakbloom.v1.Nodes` service on a router: each call is answered by any node.
#[derive(Debug, Clone)]
pub struct RouterNodes {
    router: Arc<Router>,
    timeout: Duration,
}

impl RouterNodes {
    /// Serves through `router`; calls without a client deadline get `timeout`.
    pub fn new(router: Arc<Router>, timeout: Duration) -> RouterNodes {
        RouterNodes { router, timeout }
    }
}

#[tonic::async_trait]
impl Nodes for RouterNodes {
    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let deadline = deadline(&request, self.timeout);
        let answer = self
            .router
            .any_node_nodes(deadline, |mut client| async move {
                client.list_nodes(ListNodesRequest {}).await
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn decommission_node(
        &self,
        request: Request<DecommissionNodeRequest>,
    ) -> Result<Response<NodeInfo>, Status> {
        let deadline = deadline(&request, self.timeout);
        let request = request.into_inner();
        let answer = self
            .router
            .any_node_nodes(deadline, |mut client| async move {
                client.decommission_node(request).await
            })
            .await?;
        Ok(Response::new(answer))
    }
}
