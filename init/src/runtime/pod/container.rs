//! What a pod's container is in its instance: the cell it asks the instance for (its
//! image, loaded before and never pulled there, as its root; the instance's network, IPC
//! and hostname; the pod's volumes; the default capabilities less NET_RAW). The calls that
//! make it and run its entrypoint are `spawn::child`'s.

use super::spec::{ContainerSpec, PodSpec};
use crate::pb;
use crate::values::volume::VolumeSpec;

/// The cell of container `c` in the instance: its image (loaded before, never pulled
/// there) as its root, the instance's network, IPC and hostname, the pod's volumes, the
/// default capabilities less NET_RAW.
pub fn container_cell(pod: &PodSpec, c: &ContainerSpec) -> pb::Cell {
    let limits = c.limits;
    let requests = c.requests;
    let resources = pb::CellResources {
        memory_max_bytes: limits.memory_bytes,
        memory_low_bytes: requests
            .memory_bytes
            .map(|r| r.min(limits.memory_bytes.unwrap_or(u64::MAX))),
        cpu_max: limits.cpu_millis.map(|m| pb::CpuMax {
            // m thousandths of a CPU: m * 100 µs per 100 ms.
            quota_micros: (m * 100).max(1000),
            period_micros: 100_000,
        }),
        cpu_weight: requests.cpu_millis.map(|m| (m / 10).clamp(1, 10_000)),
        ..Default::default()
    };
    pb::Cell {
        name: c.name.to_string(),
        resources: Some(resources),
        isolation: Some(pb::CellIsolation {
            share_host_network: true,
            share_host_ipc: true,
            share_host_uts: true,
            ..Default::default()
        }),
        image: Some(pb::OciImage {
            reference: c.image.clone(),
            pull_policy: pb::PullPolicy::Never as i32,
            command: c.command.clone(),
            args: c.args.clone(),
            env: c.env.iter().cloned().collect(),
            working_dir: c.working_dir.clone().unwrap_or_default(),
            user: c.user.clone().unwrap_or_default(),
            // The entrypoint's runs are the pod's to start (and restart).
            no_entrypoint: true,
            volumes: pod.volumes.iter().chain(&c.volumes).map(volume).collect(),
            volume_mounts: c
                .mounts
                .iter()
                .map(|m| pb::VolumeMount {
                    name: m.volume.to_string(),
                    mount_path: m.path.clone(),
                    read_only: m.read_only,
                    sub_path: m.sub_path.clone().unwrap_or_default(),
                })
                .collect(),
            ..Default::default()
        }),
        // The containers share the instance's interface on a bridge with other pods'
        // instances: without NET_RAW no raw or packet socket, so no forged ARP or IP.
        confinement: Some(pb::CellConfinement {
            cap_drop: vec!["NET_RAW".into()],
            ..Default::default()
        }),
    }
}

/// A volume as the instance is asked for it: a files volume with its files, a path of the
/// pod directory bound into it, else an emptyDir.
fn volume(v: &VolumeSpec) -> pb::Volume {
    let name = v.name.to_string();
    match (&v.files, &v.pod_path) {
        (Some(files), _) => pb::Volume {
            name,
            files: Some(pb::FilesVolume {
                files: files.iter().map(file_pb).collect(),
            }),
            ..Default::default()
        },
        (None, Some(path)) => pb::Volume {
            name,
            pod_path: path.clone(),
            ..Default::default()
        },
        (None, None) => pb::Volume {
            name,
            empty_dir: Some(pb::EmptyDirVolume {
                memory: v.memory,
                size_limit_bytes: v.size_limit,
            }),
            ..Default::default()
        },
    }
}

/// A file of a files volume as the instance is sent it.
pub fn file_pb(f: &crate::values::volume::VolumeFile) -> pb::VolumeFile {
    pb::VolumeFile {
        path: f.path.clone(),
        content: f.content.clone(),
        mode: f.mode,
        uid: f.uid,
        gid: f.gid,
    }
}
