//! Spawn: an instance's size, identity lifetime and network attachments, checked.

use super::{invalid, millis, Timed, MIB};
use crate::pb;
use crate::runtime::error::RuntimeError;
use crate::runtime::names::ExecName;
use crate::runtime::spawn::instance::IsolationKind;
use crate::runtime::spec::NetAttachment;
use crate::runtime::InstanceSpec;
use crate::server::deadline::wait_budget;
use std::time::Duration;

/// A Spawn's or a pod's `networks`: each a bridge name and an address; whether the node
/// has that bridge and the address is free is the runtime's to say.
pub fn attachments(list: &[pb::NetworkAttachment]) -> Result<Vec<NetAttachment>, RuntimeError> {
    (list.iter().enumerate())
        .map(|(i, a)| {
            if a.bridge.is_empty() {
                return Err(invalid(
                    format!("networks[{i}].bridge"),
                    "empty; name one of the node's bridges (aer node info lists them)",
                ));
            }
            if !a.interface.is_empty() {
                return Err(invalid(
                    format!("networks[{i}].interface"),
                    "is set by the node (eth1, eth2, ... in order); leave it empty",
                ));
            }
            let address = a.address.parse().map_err(|e| {
                invalid(
                    format!("networks[{i}].address"),
                    format!("{e}; give the interface's address with its prefix, e.g. 192.168.50.2/24"),
                )
            })?;
            Ok(NetAttachment {
                bridge: a.bridge.clone(),
                address,
            })
        })
        .collect()
}

/// How long Spawn waits for the child to serve when neither request nor caller says.
pub const DEFAULT_SPAWN_SERVING: Duration = Duration::from_secs(300);

const MAX_SVID_TTL: u32 = 30 * 86400;
/// Short-lived: the parent renews it at half-life, so a stolen SVID is worth an hour.
const DEFAULT_SVID_TTL: u32 = 3600;

/// A Spawn request; `caller` is the caller's gRPC timeout, which bounds the wait for the
/// child to serve.
/// A Spawn's or a pod's `isolation`: None lets the node choose (a VM where KVM is usable).
pub fn isolation_kind(v: i32) -> Result<Option<IsolationKind>, RuntimeError> {
    match pb::IsolationKind::try_from(v) {
        Ok(pb::IsolationKind::Unspecified) => Ok(None),
        Ok(pb::IsolationKind::Vm) => Ok(Some(IsolationKind::Vm)),
        Ok(pb::IsolationKind::Cell) => Ok(Some(IsolationKind::Cell)),
        Err(_) => Err(invalid("isolation", format!("{v} is not an IsolationKind"))),
    }
}

impl TryFrom<Timed<pb::Instance>> for InstanceSpec {
    type Error = RuntimeError;

    fn try_from(Timed(i, caller): Timed<pb::Instance>) -> Result<InstanceSpec, RuntimeError> {
        let name = ExecName::parse_instance(&i.name).map_err(|n| invalid("name", n.to_string()))?;
        let isolation = isolation_kind(i.isolation)?;
        let ttl = match i.svid_ttl_seconds {
            0 => DEFAULT_SVID_TTL,
            t if (60..=MAX_SVID_TTL).contains(&t) => t,
            t => {
                return Err(invalid(
                    "svid_ttl_seconds",
                    format!("{t} is out of range 60..={MAX_SVID_TTL} (0 means 1 h)"),
                ))
            }
        };
        Ok(InstanceSpec {
            name,
            isolation,
            vcpus: super::vm::vcpus(i.vcpus)?,
            memory_bytes: super::vm::memory(i.memory_bytes, 256 * MIB)?,
            svid_ttl: Duration::from_secs(u64::from(ttl)),
            serving_within: wait_budget(millis(i.serving_timeout_millis), caller, DEFAULT_SPAWN_SERVING),
            attachments: attachments(&i.networks)?,
            hostname: None,
            host_network: false,
            pod_subnet: false,
            pod_dir: None,
        })
    }
}
