//! Runtime views back into protobuf statuses.

use super::phase;
use crate::pb;
use crate::runtime::cgroup::Usage;
use crate::runtime::confine::seccomp;
use crate::runtime::spawn::instance::IsolationKind;
use crate::runtime::spec::{NetAttachment, Resources};
use crate::runtime::{CellView, ExecView, InstanceView, VmView};

pub fn exec_status(v: ExecView) -> pb::ExecutableStatus {
    pb::ExecutableStatus {
        name: v.name,
        cell: v.cell,
        state: phase(v.phase),
        pid: v.pid,
        exit_code: v.exit_code,
        signal: v.signal,
        oom_killed: v.oom_killed,
        started_at_unix_nanos: v.started_unix_nanos,
        ended_at_unix_nanos: v.ended_unix_nanos,
        cpu_usage_micros: v.cpu_usage_micros,
        memory_peak_bytes: v.memory_peak_bytes,
        error: v.error,
    }
}

fn resources_pb(r: Resources) -> pb::CellResources {
    pb::CellResources {
        cpu_weight: r.cpu_weight,
        cpu_max: r.cpu_max.map(|(q, p)| pb::CpuMax {
            quota_micros: q,
            period_micros: p,
        }),
        cpuset_cpus: r.cpuset_cpus.unwrap_or_default(),
        cpuset_mems: r.cpuset_mems.unwrap_or_default(),
        memory_min_bytes: r.memory_min,
        memory_low_bytes: r.memory_low,
        memory_high_bytes: r.memory_high,
        memory_max_bytes: r.memory_max,
        swap_max_bytes: r.swap_max,
        pids_max: r.pids_max,
        io_weight: r.io_weight,
        io_max: r
            .io_max
            .into_iter()
            .map(|m| pb::IoMax {
                device: format!("{}:{}", m.major, m.minor),
                read_bytes_per_second: m.rbps,
                write_bytes_per_second: m.wbps,
                read_iops: m.riops,
                write_iops: m.wiops,
            })
            .collect(),
    }
}

fn usage_pb(u: Usage) -> pb::CellUsage {
    pb::CellUsage {
        cpu_usage_micros: u.cpu_usage_micros,
        cpu_throttled_micros: u.cpu_throttled_micros,
        cpu_nr_throttled: u.cpu_nr_throttled,
        memory_current_bytes: u.memory_current_bytes,
        memory_peak_bytes: u.memory_peak_bytes,
        memory_oom_events: u.memory_oom_events,
        memory_oom_kill_events: u.memory_oom_kill_events,
        pids_current: u.pids_current,
        memory_inactive_file_bytes: u.memory_inactive_file_bytes,
    }
}

pub fn cell_status(v: CellView) -> pb::CellStatus {
    let i = v.isolation;
    pb::CellStatus {
        name: v.name,
        state: phase(Some(v.phase)),
        resources: Some(resources_pb(v.resources)),
        isolation: Some(pb::CellIsolation {
            share_host_pid: !i.pid,
            share_host_mount: !i.mount,
            share_host_network: !i.network,
            share_host_ipc: !i.ipc,
            share_host_uts: !i.uts,
            share_host_cgroup: !i.cgroup,
        }),
        usage: Some(usage_pb(v.usage)),
        executables: v.executables,
        error: v.error,
        confinement: Some(pb::CellConfinementStatus {
            capabilities: v.confinement.caps.names().into_iter().map(str::to_owned).collect(),
            seccomp: match v.confinement.seccomp.map(|s| s.level) {
                Some(seccomp::Level::Default) => pb::SeccompProfile::Default,
                Some(seccomp::Level::Strict) => pb::SeccompProfile::Strict,
                None => pb::SeccompProfile::Unconfined,
            } as i32,
            seccomp_deny: v
                .confinement
                .seccomp
                .map(|s| s.deny.names().into_iter().map(str::to_owned).collect())
                .unwrap_or_default(),
            privileged: v.confinement.privileged,
            own_root: i.mount && (!v.confinement.privileged || v.image.is_some()),
            user_namespace_root_uid: v.userns_base.unwrap_or(0),
        }),
        image: v.image.map(|i| pb::CellImageStatus {
            reference: i.reference,
            digest: i.digest,
            exposed_ports: i.exposed_ports,
            entrypoint: i.argv,
            env: i.env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: i.working_dir.unwrap_or_default(),
            user: i.user.unwrap_or_default(),
        }),
        ports: v
            .ports
            .into_iter()
            .map(|(h, c)| pb::PortMapping {
                host_port: h.into(),
                container_port: c.into(),
                protocol: "tcp".into(),
            })
            .collect(),
    }
}

pub fn vm_status(v: VmView) -> pb::VirtualMachineStatus {
    pb::VirtualMachineStatus {
        name: v.name,
        state: phase(v.phase),
        vcpus: v.vcpus,
        memory_bytes: v.memory_bytes,
        tap_device: v.tap,
        exit_reason: v.exit_reason,
        error: v.error,
        vmm_pid: v.pid,
        cpu_usage_micros: v.cpu_usage_micros,
        memory_peak_bytes: v.memory_peak_bytes,
    }
}

pub fn instance_status(v: InstanceView) -> pb::InstanceStatus {
    pb::InstanceStatus {
        name: v.name,
        state: phase(v.phase),
        isolation: match v.isolation {
            Some(IsolationKind::Vm) => pb::IsolationKind::Vm,
            Some(IsolationKind::Cell) => pb::IsolationKind::Cell,
            None => pb::IsolationKind::Unspecified,
        } as i32,
        address: v.address,
        spiffe_id: v.spiffe_id,
        error: v.error,
        vm: v.vm.map(vm_status),
        pid: v.pid,
        networks: network_status(&v.attachments),
    }
}

/// Attachments as status: each with its interface in the instance (eth1, ...).
pub fn network_status(list: &[NetAttachment]) -> Vec<pb::NetworkAttachment> {
    (list.iter().enumerate())
        .map(|(k, a)| pb::NetworkAttachment {
            bridge: a.bridge.clone(),
            address: a.address.to_string(),
            interface: format!("eth{}", k + 1),
        })
        .collect()
}
