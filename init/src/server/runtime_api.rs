//! The `Runtime` service: thin handlers over `runtime::Runtime`. Executables, cells, VMs and
//! instances run; pods come with a later issue and answer UNIMPLEMENTED until then.

use super::authz::Caller;
use super::convert;
use crate::pb::{self, runtime_server::Runtime as RuntimeRpc};
use crate::pki::policy::Role;
use crate::runtime::Runtime;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// Response header: microseconds auraed spent on a Run* call, from the handler's start to
/// its response (TLS, HTTP/2 and protobuf decoding excluded). `make bench` puts it beside a
/// bare fork+exec+wait to separate auraed's own cost from the transport's.
pub const SERVER_MICROS: &str = "aurae-server-micros";

fn timed<T>(since: Instant, msg: T) -> Response<T> {
    let mut r = Response::new(msg);
    let micros = since.elapsed().as_micros().to_string();
    if let Ok(v) = micros.parse() {
        r.metadata_mut().insert(SERVER_MICROS, v);
    }
    r
}

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
        let since = Instant::now();
        let spec = convert::executable(r.into_inner())?;
        let view = self.rt.run_executable(spec).await?;
        Ok(timed(since, convert::exec_status(view)))
    }

    async fn run_cell(&self, r: Request<pb::Cell>) -> Result<Response<pb::CellStatus>, Status> {
        let since = Instant::now();
        let c = r.into_inner();
        if c.image.is_some() {
            return Err(Status::unimplemented(format!(
                "image: OCI images in cells are not implemented in auraed {} yet (a later issue); omit `image` to create the cell",
                crate::VERSION
            )));
        }
        let spec = convert::cell(c)?;
        let view = self.rt.run_cell(spec).await?;
        Ok(timed(since, convert::cell_status(view)))
    }

    async fn run_virtual_machine(
        &self,
        r: Request<pb::VirtualMachine>,
    ) -> Result<Response<pb::VirtualMachineStatus>, Status> {
        let vm = r.get_ref();
        let node_files = [
            ("kernel_path", !vm.kernel_path.is_empty()),
            ("initramfs_path", !vm.initramfs_path.is_empty()),
            ("disks", !vm.disks.is_empty()),
        ];
        if let Some((field, _)) = node_files.iter().find(|(_, set)| *set) {
            // An operator boots the node's own kernel; files of the node's choosing are
            // the admin's (a disk can be any block device or file auraed can open).
            Caller::require(&r, Role::Admin, &format!("{field}, a file on the node,"))?;
        }
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
