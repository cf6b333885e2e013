//! The `Runtime` service: thin handlers over `runtime::Runtime`. Executables, cells, VMs and
//! instances run; pods come with a later issue and answer UNIMPLEMENTED until then.

use super::convert;
use crate::pb::{self, runtime_server::Runtime as RuntimeRpc};
use crate::runtime::Runtime;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct RuntimeApi {
    pub rt: Arc<Runtime>,
}

fn not_yet(rpc: &str, issue: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not implemented in auraed {} yet ({issue})",
        crate::VERSION
    ))
}

#[tonic::async_trait]
impl RuntimeRpc for RuntimeApi {
    async fn run_executable(&self, r: Request<pb::Executable>) -> Result<Response<pb::ExecutableStatus>, Status> {
        let spec = convert::executable(r.into_inner())?;
        let view = self.rt.run_executable(spec).await?;
        Ok(Response::new(convert::exec_status(view)))
    }

    async fn run_cell(&self, r: Request<pb::Cell>) -> Result<Response<pb::CellStatus>, Status> {
        let c = r.into_inner();
        if c.image.is_some() {
            return Err(Status::unimplemented(format!(
                "image: OCI images in cells are not implemented in auraed {} yet (a later issue); omit `image` to create the cell",
                crate::VERSION
            )));
        }
        let spec = convert::cell(c)?;
        let view = self.rt.run_cell(spec).await?;
        Ok(Response::new(convert::cell_status(view)))
    }

    async fn run_virtual_machine(
        &self,
        r: Request<pb::VirtualMachine>,
    ) -> Result<Response<pb::VirtualMachineStatus>, Status> {
        let caller = super::deadline::caller_timeout(r.metadata());
        let spec = convert::virtual_machine(r.into_inner(), caller)?;
        let view = self.rt.run_vm(spec).await?;
        Ok(Response::new(convert::vm_status(view)))
    }

    async fn spawn(&self, r: Request<pb::Instance>) -> Result<Response<pb::InstanceStatus>, Status> {
        let caller = super::deadline::caller_timeout(r.metadata());
        let spec = convert::instance(r.into_inner(), caller)?;
        let view = self.rt.spawn(spec).await?;
        Ok(Response::new(convert::instance_status(view)))
    }

    async fn run_pod(&self, _: Request<pb::Pod>) -> Result<Response<pb::PodStatus>, Status> {
        Err(not_yet("RunPod", "pods: a later issue"))
    }
}
