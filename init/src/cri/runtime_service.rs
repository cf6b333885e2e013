//! The CRI `RuntimeService`: what the runtime is and whether it is ready (`Version`,
//! `Status`, `RuntimeConfig`, `UpdateRuntimeConfig`). Pod sandboxes and containers are not
//! served yet; they answer UNIMPLEMENTED, saying so.

use super::{Cri, CriError, HANDLERS, KUBELET_API_VERSION, RUNTIME_API_VERSION};
use aurae_proto::cri;
use std::pin::Pin;
use tonic::{Request, Response, Status};

/// A condition of `Status`: true, or false with a CamelCase reason and a sentence.
fn condition(kind: &str, not: Option<(&str, &str)>) -> cri::RuntimeCondition {
    cri::RuntimeCondition {
        r#type: kind.into(),
        status: not.is_none(),
        reason: not.map(|(r, _)| r.to_owned()).unwrap_or_default(),
        message: not.map(|(_, m)| m.to_owned()).unwrap_or_default(),
    }
}

impl Cri {
    pub fn version(&self) -> cri::VersionResponse {
        cri::VersionResponse {
            version: KUBELET_API_VERSION.into(),
            runtime_name: "auraed".into(),
            runtime_version: crate::VERSION.into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        }
    }

    /// `RuntimeReady` when the node can spawn pods' instances, `NetworkReady` when it has a
    /// bridge to give them addresses on: auraed is its own network plugin, no CNI needed.
    pub fn status(&self, verbose: bool) -> cri::StatusResponse {
        let runtime = self
            .facts
            .runtime_not_ready
            .as_deref()
            .map(|why| ("AuraedCannotSpawn", why));
        let network = self.facts.pod_bridge.is_none().then_some((
            "NoPodBridge",
            "this node has no bridge for pods' addresses (auraed makes one only as PID 1)",
        ));
        let mut info = std::collections::HashMap::new();
        if verbose {
            let bridge = self.facts.pod_bridge.map(|c| c.to_string()).unwrap_or_default();
            info.insert("podBridge".to_owned(), bridge);
            let cidr = self.pod_cidr().map(|c| c.to_string()).unwrap_or_default();
            info.insert("podCIDR".to_owned(), cidr);
        }
        cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![condition("RuntimeReady", runtime), condition("NetworkReady", network)],
            }),
            info,
            runtime_handlers: HANDLERS
                .iter()
                .map(|h| cri::RuntimeHandler {
                    name: (*h).into(),
                    features: Some(cri::RuntimeHandlerFeatures {
                        recursive_read_only_mounts: false,
                        user_namespaces: false,
                    }),
                })
                .collect(),
            features: None,
        }
    }

    /// Keeps the pod CIDR kubelet sends (node.spec.podCIDR); an empty one changes nothing.
    pub fn update_runtime_config(&self, r: cri::UpdateRuntimeConfigRequest) -> Result<(), CriError> {
        let cidr = r
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if cidr.is_empty() {
            return Ok(());
        }
        let parsed: crate::net::Ipv4Cidr = cidr.parse().map_err(|e| CriError::Invalid {
            field: "runtime_config.network_config.pod_cidr",
            why: format!("{e}; send an IPv4 CIDR such as 10.244.1.0/24"),
        })?;
        tracing::info!("CRI: pod CIDR {parsed}");
        self.set_pod_cidr(parsed);
        Ok(())
    }
}

/// Not served by this auraed (yet): UNIMPLEMENTED with what to use instead.
fn not_served<T>(method: &'static str, why: &'static str) -> Result<Response<T>, Status> {
    Err(CriError::Unimplemented { method, why }.into())
}

const SANDBOXES: &str = "pod sandboxes are not served by this auraed yet; run pods with the Aurae API (RunPod)";
const STREAMING: &str =
    "streaming (exec, attach, port-forward) is not served by this auraed yet; use the Aurae API's Exec";
const NOT_HERE: &str = "not served by auraed (optional in the CRI; kubelet falls back)";

type Events = Pin<Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

/// The `RuntimeService` kubelet's runtime manager calls: thin handlers over `Cri`.
pub struct RuntimeApi {
    pub cri: std::sync::Arc<Cri>,
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
        // The appliance has no systemd: kubelet must use the cgroupfs driver.
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
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
        _: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        not_served("RunPodSandbox", SANDBOXES)
    }

    async fn stop_pod_sandbox(
        &self,
        _: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        not_served("StopPodSandbox", SANDBOXES)
    }

    async fn remove_pod_sandbox(
        &self,
        _: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        not_served("RemovePodSandbox", SANDBOXES)
    }

    async fn pod_sandbox_status(
        &self,
        _: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        not_served("PodSandboxStatus", SANDBOXES)
    }

    async fn list_pod_sandbox(
        &self,
        _: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        not_served("ListPodSandbox", SANDBOXES)
    }

    async fn create_container(
        &self,
        _: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        not_served("CreateContainer", SANDBOXES)
    }

    async fn start_container(
        &self,
        _: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        not_served("StartContainer", SANDBOXES)
    }

    async fn stop_container(
        &self,
        _: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        not_served("StopContainer", SANDBOXES)
    }

    async fn remove_container(
        &self,
        _: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        not_served("RemoveContainer", SANDBOXES)
    }

    async fn list_containers(
        &self,
        _: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        not_served("ListContainers", SANDBOXES)
    }

    async fn container_status(
        &self,
        _: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        not_served("ContainerStatus", SANDBOXES)
    }

    async fn update_container_resources(
        &self,
        _: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        not_served("UpdateContainerResources", NOT_HERE)
    }

    async fn reopen_container_log(
        &self,
        _: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        not_served("ReopenContainerLog", SANDBOXES)
    }

    async fn exec_sync(&self, _: Request<cri::ExecSyncRequest>) -> Result<Response<cri::ExecSyncResponse>, Status> {
        not_served("ExecSync", SANDBOXES)
    }

    async fn exec(&self, _: Request<cri::ExecRequest>) -> Result<Response<cri::ExecResponse>, Status> {
        not_served("Exec", STREAMING)
    }

    async fn attach(&self, _: Request<cri::AttachRequest>) -> Result<Response<cri::AttachResponse>, Status> {
        not_served("Attach", STREAMING)
    }

    async fn port_forward(
        &self,
        _: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        not_served("PortForward", STREAMING)
    }

    async fn container_stats(
        &self,
        _: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        not_served("ContainerStats", SANDBOXES)
    }

    async fn list_container_stats(
        &self,
        _: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        not_served("ListContainerStats", SANDBOXES)
    }

    async fn pod_sandbox_stats(
        &self,
        _: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        not_served("PodSandboxStats", SANDBOXES)
    }

    async fn list_pod_sandbox_stats(
        &self,
        _: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        not_served("ListPodSandboxStats", SANDBOXES)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cri(facts: super::super::NodeFacts) -> Cri {
        let rt = std::sync::Arc::new(crate::runtime::Runtime::new("/nonexistent".into(), None));
        Cri::new(rt, Err(std::sync::Arc::new(crate::image::ImageError::NoStore)), facts)
    }

    #[test]
    fn version_is_the_one_kubelet_accepts() {
        let c = cri(super::super::NodeFacts {
            runtime_not_ready: None,
            pod_bridge: None,
        });
        let v = c.version();
        assert_eq!(v.version, "0.1.0");
        assert_eq!(v.runtime_api_version, "v1");
        assert_eq!(v.runtime_name, "auraed");
    }

    #[test]
    fn status_says_ready_only_when_pods_can_spawn_and_have_a_bridge() {
        let ready = cri(super::super::NodeFacts {
            runtime_not_ready: None,
            pod_bridge: Some("10.254.0.1/24".parse().unwrap()),
        });
        let s = ready.status(true);
        let conds = s.status.unwrap().conditions;
        assert_eq!(conds.len(), 2);
        assert!(conds.iter().all(|c| c.status), "{conds:?}");
        assert_eq!(conds[0].r#type, "RuntimeReady");
        assert_eq!(conds[1].r#type, "NetworkReady");
        let names: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["", "vm", "cell"]);
        assert_eq!(s.info["podBridge"], "10.254.0.1/24");

        let not = cri(super::super::NodeFacts {
            runtime_not_ready: Some("no spawn CA".into()),
            pod_bridge: None,
        });
        let conds = not.status(false).status.unwrap().conditions;
        assert!(conds.iter().all(|c| !c.status && !c.reason.is_empty()), "{conds:?}");
        assert_eq!(conds[0].message, "no spawn CA");
        assert!(conds[1].message.contains("no bridge for pods"), "{conds:?}");
    }

    #[test]
    fn the_pod_cidr_is_kept_and_a_bad_one_is_named_and_changes_nothing() {
        let c = cri(super::super::NodeFacts {
            runtime_not_ready: None,
            pod_bridge: None,
        });
        let req = |cidr: &str| cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig { pod_cidr: cidr.into() }),
            }),
        };
        c.update_runtime_config(req("10.244.1.0/24")).unwrap();
        assert_eq!(c.pod_cidr().unwrap().to_string(), "10.244.1.0/24");
        let e = c.update_runtime_config(req("10.244.1.0/99")).unwrap_err();
        assert!(
            e.to_string().starts_with("runtime_config.network_config.pod_cidr:"),
            "{e}"
        );
        c.update_runtime_config(req("")).unwrap();
        assert_eq!(c.pod_cidr().unwrap().to_string(), "10.244.1.0/24");
    }
}
