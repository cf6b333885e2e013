//! The `Runtime` service. The workloads themselves arrive with later issues; until then
//! each rpc answers UNIMPLEMENTED and says which issue brings it.

use crate::pb::{self, runtime_server::Runtime};
use tonic::{Request, Response, Status};

pub struct RuntimeApi;

fn not_yet(rpc: &str, issue: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not implemented in auraed {} yet ({issue})",
        crate::VERSION
    ))
}

#[tonic::async_trait]
impl Runtime for RuntimeApi {
    async fn run_executable(&self, _: Request<pb::Executable>) -> Result<Response<pb::ExecutableStatus>, Status> {
        Err(not_yet("RunExecutable", "executables and cells: issue #3"))
    }
    async fn run_cell(&self, _: Request<pb::Cell>) -> Result<Response<pb::CellStatus>, Status> {
        Err(not_yet("RunCell", "executables and cells: issue #3"))
    }
    async fn run_virtual_machine(
        &self,
        _: Request<pb::VirtualMachine>,
    ) -> Result<Response<pb::VirtualMachineStatus>, Status> {
        Err(not_yet("RunVirtualMachine", "auraed's VMM: issue #4"))
    }
    async fn spawn(&self, _: Request<pb::Instance>) -> Result<Response<pb::InstanceStatus>, Status> {
        Err(not_yet("Spawn", "auraed's VMM and Spawn: issue #4"))
    }
    async fn run_pod(&self, _: Request<pb::Pod>) -> Result<Response<pb::PodStatus>, Status> {
        Err(not_yet("RunPod", "pods: a later issue"))
    }
}
