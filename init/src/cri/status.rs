//! What the runtime is and whether it is ready: `Version`, `Status`, `RuntimeConfig`,
//! `UpdateRuntimeConfig`.

use super::{Cri, CriError, HANDLERS, KUBELET_API_VERSION, RUNTIME_API_VERSION};
use crate::runtime::error::{Lack, RuntimeError};
use aurae_proto::cri;

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
        // Dual-stack kubelets send "v4,v6": the IPv4 one is used.
        let first = cidr
            .split(',')
            .map(str::trim)
            .find(|c| !c.contains(':'))
            .unwrap_or(&cidr);
        let parsed: crate::net::Ipv4Cidr = first.parse().map_err(|e| CriError::Invalid {
            field: "runtime_config.network_config.pod_cidr",
            why: format!("{e}; send an IPv4 CIDR such as 10.244.1.0/24"),
        })?;
        match self.rt.use_pod_subnet(parsed) {
            Ok(on_bridge) => {
                tracing::info!("CRI: pod CIDR {parsed}; sandboxes' addresses from it ({on_bridge} on the bridge)")
            }
            // Without a bridge no sandbox runs (Status says NetworkReady false): kept only.
            Err(RuntimeError::NodeLacks(Lack::Bridge { .. })) => {
                tracing::info!("CRI: pod CIDR {parsed} kept; this node has no bridge")
            }
            Err(e) => return Err(e.into()),
        }
        self.set_pod_cidr(parsed);
        Ok(())
    }

    /// The cgroup driver kubelet must use: cgroupfs (the appliance has no systemd).
    pub fn runtime_config(&self) -> cri::RuntimeConfigResponse {
        cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }
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
