//! The `Workloads` lifecycle service. No workload kind is implemented yet, so List is empty
//! and the per-workload rpcs answer UNIMPLEMENTED.

use crate::pb::{self, workloads_server::Workloads};
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct WorkloadsApi;

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "Workloads.{rpc} is not implemented in auraed {} yet: no workload kind runs on this node (issue #3 brings executables and cells)",
        crate::VERSION
    ))
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogEntry, Status>> + Send>>;

#[tonic::async_trait]
impl Workloads for WorkloadsApi {
    async fn status(&self, _: Request<pb::WorkloadRef>) -> Result<Response<pb::WorkloadStatus>, Status> {
        Err(not_yet("Status"))
    }
    async fn list(&self, _: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        Ok(Response::new(pb::ListResponse { workloads: Vec::new() }))
    }
    async fn stop(&self, _: Request<pb::StopRequest>) -> Result<Response<pb::WorkloadStatus>, Status> {
        Err(not_yet("Stop"))
    }
    async fn wait(&self, _: Request<pb::WorkloadRef>) -> Result<Response<pb::WorkloadStatus>, Status> {
        Err(not_yet("Wait"))
    }
    async fn free(&self, _: Request<pb::WorkloadRef>) -> Result<Response<pb::FreeResponse>, Status> {
        Err(not_yet("Free"))
    }
    type LogsStream = LogStream;
    async fn logs(&self, _: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        Err(not_yet("Logs"))
    }
}
