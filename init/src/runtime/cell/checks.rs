//! What a new cell asks of the node, checked before anything is made: its parent, its
//! name, the controllers and cpus its limits need, and the node ports it publishes.

use super::{named, Cell};
use crate::runtime::cgroup::{cpuset, CgroupDir, CONTROLLERS};
use crate::runtime::error::Lack;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::host::Host;
use crate::runtime::spec::{CellSpec, Resources};
use crate::runtime::Phase;
use std::sync::Arc;

/// Binding node port `host` failed: taken (by a cell, a pod or auraed's own API) is
/// ALREADY_EXISTS, anything else FAILED_PRECONDITION; `field` names it in the request.
pub(in crate::runtime) fn port_error(field: &str, host: u16, e: std::io::Error) -> RuntimeError {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        RuntimeError::AlreadyExists(format!(
            "{field}: port {host} of the node is taken (by a cell, a pod or auraed); choose another"
        ))
    } else {
        RuntimeError::Network(format!("{field}: cannot listen on port {host}: {e}"))
    }
}

/// Forwards the bound node ports into the cell's network namespace.
pub(super) fn publish(cell: &Cell, bound: Vec<crate::net::proxy::Bound>) -> Result<()> {
    if bound.is_empty() {
        return Ok(());
    }
    let pidfd = cell
        .pidfd()
        .ok_or_else(|| RuntimeError::WrongPhase(format!("cell '{}' is not running", cell.name)))?;
    let dialer = crate::net::proxy::Dialer::new(pidfd)
        .map_err(|e| RuntimeError::Network(format!("cell '{}': join its network to publish ports: {e}", cell.name)))?;
    let mut ports = cell.ports.lock().unwrap_or_else(|p| p.into_inner());
    for b in bound {
        let p = crate::net::proxy::publish(b, dialer.clone(), cell.name.to_string())
            .map_err(|e| RuntimeError::Network(format!("cell '{}': publish a port: {e}", cell.name)))?;
        ports.push(p);
    }
    Ok(())
}

/// Connections inside running cell `name`'s network namespace (PortForward): a cell a
/// client made, never a private cell of auraed's own, and one with a network of its own
/// (else its ports are the node's, reached without auraed).
pub(in crate::runtime) fn dialer(host: &Host, name: &str) -> Result<crate::net::proxy::Dialer> {
    let cell = super::target(host, name, "start.cell")?;
    if cell.phase() != Phase::Running {
        return Err(RuntimeError::WrongPhase(format!(
            "cell '{name}' is {:?}; forward only to a running cell",
            cell.phase()
        )));
    }
    if !cell.isolation.network {
        return Err(RuntimeError::invalid(
            "start.cell",
            format!("cell '{name}' shares the node's network; connect to the node's port itself"),
        ));
    }
    let pidfd = cell
        .pidfd()
        .ok_or_else(|| RuntimeError::WrongPhase(format!("cell '{name}' is not running")))?;
    crate::net::proxy::Dialer::new(pidfd)
        .map_err(|e| RuntimeError::Network(format!("cell '{name}': join its network: {e}")))
}

/// Refuses limits whose controller is not among those `offered` to the new cell.
pub(super) fn check_controllers(r: &Resources, offered: &[String]) -> Result<()> {
    for c in CONTROLLERS {
        let fields = (c.fields)(r);
        if !fields.is_empty() && !offered.iter().any(|o| o == c.name) {
            return Err(Lack::Controller {
                fields: fields.join(", "),
                controller: c.name.to_owned(),
                usable: if offered.is_empty() {
                    "none".into()
                } else {
                    offered.join(" ")
                },
            }
            .into());
        }
    }
    Ok(())
}

/// Refuses a cpuset list that is malformed or names cpus/nodes the parent does not have.
pub(super) fn check_cpuset(requested: &str, effective: Option<String>, field: &str) -> Result<()> {
    let want = cpuset::parse_list(requested)
        .ok_or_else(|| RuntimeError::invalid(field, format!("'{requested}' is not a kernel list like '0-1,3'")))?;
    let have_text = effective.unwrap_or_default();
    let have = cpuset::parse_list(&have_text).unwrap_or_default();
    let missing: Vec<String> = want.iter().filter(|c| !have.contains(c)).map(u32::to_string).collect();
    if !missing.is_empty() {
        return Err(RuntimeError::invalid(
            field,
            format!(
                "{} not available here (available: {})",
                missing.join(","),
                have_text.trim()
            ),
        ));
    }
    Ok(())
}

pub(super) fn check(host: &Host, spec: &CellSpec) -> Result<(Option<Arc<Cell>>, CgroupDir)> {
    let parent = match spec.name.parent() {
        None => None,
        Some(p) => {
            let c = named(host, p.as_str()).map_err(|_| {
                RuntimeError::NotFound(format!(
                    "cell '{}' needs its parent cell '{p}', which does not exist; create it first",
                    spec.name
                ))
            })?;
            if c.phase() != Phase::Running {
                return Err(RuntimeError::WrongPhase(format!(
                    "parent cell '{p}' is {:?}, not running",
                    c.phase()
                )));
            }
            if c.implicit {
                return Err(RuntimeError::Taken(format!(
                    "'{p}' is the private cell of executable '{p}'; nest cells only in cells made with RunCell"
                )));
            }
            if c.confinement.userns || spec.confinement.userns {
                return Err(RuntimeError::NotYet(format!(
                    "cell '{}': nesting and user namespaces do not mix yet; make a top-level cell with its own user namespace",
                    spec.name
                )));
            }
            Some(c)
        }
    };
    let i = spec.isolation;
    if !spec.ports.is_empty() && !i.network {
        return Err(RuntimeError::invalid(
            "image.ports",
            "a cell sharing the node's network listens on the node's ports itself; drop ports or share_host_network",
        ));
    }
    if spec.image.is_some() && !i.mount {
        return Err(RuntimeError::invalid(
            "isolation.share_host_mount",
            "a cell from an image needs a mount namespace of its own for the image's root; leave share_host_mount unset",
        ));
    }
    if spec.image.is_some() && spec.confinement.userns {
        return Err(RuntimeError::NotYet(
            "confinement.user_namespace: cells from images do not have user namespaces yet (the layers' owners would not map); leave it unset".into(),
        ));
    }
    if spec.confinement.userns && !(i.pid && i.mount && i.network && i.ipc && i.uts && i.cgroup) {
        return Err(RuntimeError::invalid(
            "confinement.user_namespace",
            "a cell with a user namespace of its own shares no namespace with the node; drop the isolation.share_host_* settings",
        ));
    }
    let parent_dir = parent.as_ref().map_or_else(|| host.root.clone(), |p| p.dir.clone());
    check_controllers(&spec.resources, &parent_dir.subtree_control())?;
    let r = &spec.resources;
    if let Some(cpus) = &r.cpuset_cpus {
        check_cpuset(cpus, parent_dir.read("cpuset.cpus.effective"), "resources.cpuset_cpus")?;
    }
    if let Some(mems) = &r.cpuset_mems {
        check_cpuset(mems, parent_dir.read("cpuset.mems.effective"), "resources.cpuset_mems")?;
    }
    for (i, m) in r.io_max.iter().enumerate() {
        if !std::path::Path::new(&format!("/sys/dev/block/{}:{}", m.major, m.minor)).exists() {
            return Err(RuntimeError::invalid(
                format!("resources.io_max[{i}].device"),
                format!(
                    "no block device {}:{} on this node (see /sys/dev/block)",
                    m.major, m.minor
                ),
            ));
        }
    }
    Ok((parent, parent_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_without_its_controller_is_refused_by_name() {
        let offered = vec!["cpu".to_owned(), "pids".to_owned()];
        let r = Resources {
            memory_max: Some(1 << 20),
            swap_max: Some(0),
            ..Default::default()
        };
        let e = check_controllers(&r, &offered).unwrap_err();
        assert!(matches!(e, RuntimeError::NodeLacks(Lack::Controller { .. })));
        assert_eq!(
            e.to_string(),
            "memory_max_bytes, swap_max_bytes: needs the cgroup v2 'memory' controller, which this node does not offer here (usable: cpu pids); drop the limit or use a node that has it"
        );
        let ok = Resources {
            cpu_weight: Some(10),
            pids_max: Some(5),
            ..Default::default()
        };
        assert!(check_controllers(&ok, &offered).is_ok());
        assert!(
            check_controllers(&Resources::default(), &[]).is_ok(),
            "no limits need no controller"
        );
    }

    #[test]
    fn cpusets_must_exist_here() {
        assert!(check_cpuset("0-1", Some("0-3\n".into()), "f").is_ok());
        let e = check_cpuset("0,5", Some("0-3\n".into()), "resources.cpuset_cpus").unwrap_err();
        assert_eq!(
            e.to_string(),
            "resources.cpuset_cpus: 5 not available here (available: 0-3)"
        );
        assert!(check_cpuset("x", Some("0".into()), "f")
            .unwrap_err()
            .to_string()
            .contains("kernel list"));
    }
}
