//! Virtual machines: kernel, initramfs, command line, vCPUs, memory and disks, checked.

use super::cell::resources;
use super::{invalid, millis, no_nul, Timed, MIB};
use crate::pb;
use crate::runtime::error::RuntimeError;
use crate::runtime::names::ExecName;
use crate::runtime::spec::{DiskSpec, VmSpec};
use crate::server::deadline::wait_budget;
use std::path::PathBuf;
use std::time::Duration;

const MAX_DISKS: usize = 8;
// Every disk and the NIC take one virtio-mmio slot (window and IRQ) of the VMM.
const _: () = assert!(MAX_DISKS < crate::vmm::virtio_mmio::MAX_DEVICES);

fn node_path(field: &str, p: &str) -> Result<PathBuf, RuntimeError> {
    no_nul(field, p)?;
    if !p.starts_with('/') {
        return Err(invalid(
            field,
            format!("'{p}' is relative; give an absolute path on the node"),
        ));
    }
    Ok(PathBuf::from(p))
}

/// How long RunVirtualMachine waits for the vCPUs when neither request nor caller says.
pub const DEFAULT_VM_READY: Duration = Duration::from_secs(60);

/// `vcpus` of a VM or an instance: 0 is one.
pub(super) fn vcpus(n: u32) -> Result<u8, RuntimeError> {
    match n {
        0 => Ok(1),
        n if n <= crate::vmm::MAX_VCPUS => Ok(n as u8),
        n => Err(invalid(
            "vcpus",
            format!("{n} is out of range 1..={}", crate::vmm::MAX_VCPUS),
        )),
    }
}

/// `memory_bytes` of a VM or an instance: whole MiB within what the VMM runs; 0 is `default`.
pub(super) fn memory(m: u64, default: u64) -> Result<u64, RuntimeError> {
    match m {
        0 => Ok(default),
        m if m % MIB != 0 => Err(invalid("memory_bytes", format!("{m} is not a whole number of MiB"))),
        m if !(crate::vmm::MIN_MEMORY..=crate::vmm::MAX_MEMORY).contains(&m) => Err(invalid(
            "memory_bytes",
            format!(
                "{} MiB is out of range {}..={} MiB",
                m / MIB,
                crate::vmm::MIN_MEMORY / MIB,
                crate::vmm::MAX_MEMORY / MIB
            ),
        )),
        m => Ok(m),
    }
}

/// A VM request; `caller` is the caller's gRPC timeout, which bounds the wait for the vCPUs.
impl TryFrom<Timed<pb::VirtualMachine>> for VmSpec {
    type Error = RuntimeError;

    fn try_from(Timed(v, caller): Timed<pb::VirtualMachine>) -> Result<VmSpec, RuntimeError> {
        let name = ExecName::parse_vm(&v.name).map_err(|n| invalid("name", n.to_string()))?;
        let kernel = match v.kernel_path.as_str() {
            "" => PathBuf::from(crate::vmm::NODE_KERNEL),
            k => node_path("kernel_path", k)?,
        };
        let initramfs = match v.initramfs_path.as_str() {
            "" => None,
            i => Some(node_path("initramfs_path", i)?),
        };
        let cmdline = match v.kernel_cmdline.trim() {
            "" => crate::vmm::DEFAULT_VM_CMDLINE.to_owned(),
            c => c.to_owned(),
        };
        no_nul("kernel_cmdline", &cmdline)?;
        if cmdline.len() >= crate::vmm::boot::CMDLINE_MAX {
            return Err(invalid(
                "kernel_cmdline",
                format!(
                    "is {} bytes; the limit is {}",
                    cmdline.len(),
                    crate::vmm::boot::CMDLINE_MAX - 1
                ),
            ));
        }
        let vcpus = vcpus(v.vcpus)?;
        let memory_bytes = memory(v.memory_bytes, 128 * MIB)?;
        if v.disks.len() > MAX_DISKS {
            return Err(invalid(
                "disks",
                format!("{} disks; the limit is {MAX_DISKS}", v.disks.len()),
            ));
        }
        let disks = v
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Ok(DiskSpec {
                    path: node_path(&format!("disks[{i}].path"), &d.path)?,
                    read_only: d.read_only,
                })
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        Ok(VmSpec {
            name,
            kernel,
            initramfs,
            cmdline,
            vcpus,
            memory_bytes,
            network: v.network,
            extra_nics: Vec::new(),
            disks,
            resources: resources(v.resources)?,
            ready_within: wait_budget(millis(v.ready_timeout_millis), caller, DEFAULT_VM_READY),
        })
    }
}
