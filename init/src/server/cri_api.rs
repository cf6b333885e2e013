//! The CRI's two services, `runtime.v1.RuntimeService` and `runtime.v1.ImageService`:
//! thin handlers over `crate::cri::Cri`, which translates them onto the runtime and the
//! image store. Served on the API port (admin only, `authz.rs`) and on the CRI's own unix
//! socket (`cri_socket.rs`).

use crate::cri::{Cri, CriError};
use aurae_proto::cri;
use aurae_proto::cri::{image_service_server::ImageServiceServer, runtime_service_server::RuntimeServiceServer};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// How long a call may make its caller wait: its deadline less the margin that gets the
/// answer to it in time (`deadline.rs`); None when it stated none.
fn budget(md: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    let caller = super::deadline::caller_timeout(md)?;
    Some(super::deadline::wait_budget(
        None,
        Some(caller),
        super::deadline::MAX_WAIT,
    ))
}

pub fn runtime_service(cri: Arc<Cri>) -> RuntimeServiceServer<RuntimeApi> {
    RuntimeServiceServer::new(RuntimeApi { cri })
}

pub fn image_service(cri: Arc<Cri>) -> ImageServiceServer<ImageApi> {
    ImageServiceServer::new(ImageApi { cri })
}

const NOT_HERE: &str = "not served by auraed (optional in the CRI; kubelet falls back)";

/// Not served by this auraed (yet): UNIMPLEMENTED with what to use instead.
fn not_served<T>(method: &'static str, why: &'static str) -> Result<Response<T>, Status> {
    Err(CriError::Unimplemented { method, why }.into())
}

type Events = Pin<Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

/// The `RuntimeService` kubelet's runtime manager calls.
pub struct RuntimeApi {
    pub cri: Arc<Cri>,
}

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for RuntimeApi {
    async fn version(&self, _: Request<cri::VersionRequest>) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(self.cri.version()))
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> Result<Response<cri::StatusResponse>, Status> {
        Ok(Response::new(self.cri.status(r.into_inner().verbose)))
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(self.cri.runtime_config()))
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        self.cri.update_runtime_config(r.into_inner())?;
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let caller = budget(r.metadata());
        Ok(Response::new(self.cri.run_pod_sandbox(r.into_inner(), caller).await?))
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        self.cri.stop_pod_sandbox(r.into_inner()).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        self.cri.remove_pod_sandbox(r.into_inner()).await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        Ok(Response::new(self.cri.pod_sandbox_status(r.into_inner())?))
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        Ok(Response::new(self.cri.list_pod_sandbox(r.into_inner())))
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let caller = budget(r.metadata());
        Ok(Response::new(self.cri.create_container(r.into_inner(), caller).await?))
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let caller = budget(r.metadata());
        self.cri.start_container(r.into_inner(), caller).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        self.cri.stop_container(r.into_inner()).await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        self.cri.remove_container(r.into_inner()).await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        Ok(Response::new(self.cri.list_containers(r.into_inner())))
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        Ok(Response::new(self.cri.container_status(r.into_inner()).await?))
    }

    async fn update_container_resources(
        &self,
        _: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        not_served("UpdateContainerResources", NOT_HERE)
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        self.cri.reopen_container_log(r.into_inner())?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let caller = budget(r.metadata());
        Ok(Response::new(self.cri.exec_sync(r.into_inner(), caller).await?))
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> Result<Response<cri::ExecResponse>, Status> {
        Ok(Response::new(self.cri.exec(r.into_inner())?))
    }

    async fn attach(&self, r: Request<cri::AttachRequest>) -> Result<Response<cri::AttachResponse>, Status> {
        Ok(Response::new(self.cri.attach(r.into_inner())?))
    }

    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        Ok(Response::new(self.cri.port_forward(r.into_inner())?))
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        Ok(Response::new(self.cri.container_stats(r.into_inner()).await?))
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        Ok(Response::new(self.cri.list_container_stats(r.into_inner()).await))
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        Ok(Response::new(self.cri.pod_sandbox_stats(r.into_inner()).await?))
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        Ok(Response::new(self.cri.list_pod_sandbox_stats(r.into_inner()).await))
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        not_served("CheckpointContainer", NOT_HERE)
    }

    type GetContainerEventsStream = Events;

    async fn get_container_events(&self, _: Request<cri::GetEventsRequest>) -> Result<Response<Events>, Status> {
        not_served("GetContainerEvents", NOT_HERE)
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        not_served("ListMetricDescriptors", NOT_HERE)
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        not_served("ListPodSandboxMetrics", NOT_HERE)
    }
}

/// The `ImageService` kubelet's image manager calls.
pub struct ImageApi {
    pub cri: Arc<Cri>,
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for ImageApi {
    async fn list_images(
        &self,
        r: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        Ok(Response::new(self.cri.list_images(r.into_inner()).await?))
    }

    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        Ok(Response::new(self.cri.image_status(r.into_inner()).await?))
    }

    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> Result<Response<cri::PullImageResponse>, Status> {
        Ok(Response::new(self.cri.pull_image(r.into_inner()).await?))
    }

    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        Ok(Response::new(self.cri.remove_image(r.into_inner()).await?))
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        Ok(Response::new(self.cri.image_fs_info().await?))
    }
}
