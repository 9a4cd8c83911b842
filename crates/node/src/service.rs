//! The `leakbloom.v1.Lookup` gRPC service: unpacks requests, calls [`Node`], packs replies.
//! Errors become `tonic::Status` in exactly one place, `impl From<Error> for Status`.

use std::sync::Arc;

use leakbloom_proto::v1::lookup_server::Lookup;
use leakbloom_proto::v1::{
    CheckRequest, CheckResponse, CreateSetRequest, DropSetRequest, DropSetResponse, GetSetRequest,
    InsertRequest, InsertResponse, ListSetsRequest, ListSetsResponse, SetInfo,
};
use tonic::{Request, Response, Status};

use crate::node::Node;

/// The client API of a node.
#[derive(Debug, Clone)]
pub struct LookupService {
    node: Arc<Node>,
}

impl LookupService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> LookupService {
        LookupService { node }
    }
}

#[tonic::async_trait]
impl Lookup for LookupService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let results = self
            .node
            .check(&request.sets, &request.keys, request.consistency)
            .await?;
        Ok(Response::new(CheckResponse { results }))
    }

    async fn insert(
        &self,
        request: Request<InsertRequest>,
    ) -> Result<Response<InsertResponse>, Status> {
        let request = request.into_inner();
        let keys = self.node.insert(&request.set, request.keys).await?;
        Ok(Response::new(InsertResponse { keys }))
    }

    async fn create_set(
        &self,
        request: Request<CreateSetRequest>,
    ) -> Result<Response<SetInfo>, Status> {
        let info = self.node.create_set(request.get_ref()).await?;
        tracing::info!(set = %info.name, capacity = info.capacity, fpr = info.fpr, "set created");
        Ok(Response::new(info))
    }

    async fn drop_set(
        &self,
        request: Request<DropSetRequest>,
    ) -> Result<Response<DropSetResponse>, Status> {
        let name = &request.get_ref().name;
        self.node.drop_set(name).await?;
        tracing::info!(set = %name, "set dropped");
        Ok(Response::new(DropSetResponse {}))
    }

    async fn list_sets(
        &self,
        _request: Request<ListSetsRequest>,
    ) -> Result<Response<ListSetsResponse>, Status> {
        let sets = self.node.list_sets().await?;
        Ok(Response::new(ListSetsResponse { sets }))
    }

    async fn get_set(&self, request: Request<GetSetRequest>) -> Result<Response<SetInfo>, Status> {
        let info = self.node.get_set(&request.get_ref().name).await?;
        Ok(Response::new(info))
    }
}
