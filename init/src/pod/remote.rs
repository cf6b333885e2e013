//! The pod's side of talking to its instance, as the instance's parent (admin there): give
//! it an image (`Images.Load`), make a container's cell, start, wait for and free a run of
//! its entrypoint, stop it. Every call goes over the instance's own mTLS channel; nothing
//! here reaches a registry or holds a credential.

use super::{ContainerSpec, PodSpec};
use crate::image::load::Offer;
use crate::pb;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Bytes per `data` message of a load.
const CHUNK: usize = 1 << 20;

fn with_timeout<T>(msg: T, timeout: Option<Duration>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = timeout {
        r.set_timeout(t.max(Duration::from_millis(1)));
    }
    r
}

/// Gives the instance image `offer`, the layers in `paths` (bottom first) streamed from
/// this node's store. Layers marked not `sent` are ones it has already.
pub async fn load_image(ch: &Channel, offer: &Offer, paths: &[PathBuf], timeout: Duration) -> Result<(), Status> {
    let first = pb::LoadRequest {
        request: Some(pb::load_request::Request::Image(pb::LoadImage {
            reference: offer.reference.clone(),
            digest: offer.digest.to_string(),
            manifest: offer.manifest_json.clone(),
            config: offer.config_json.clone(),
            layers: offer
                .layers
                .iter()
                .map(|l| pb::LoadLayer {
                    digest: l.digest.to_string(),
                    size_bytes: l.size,
                    sent: l.sent,
                })
                .collect(),
        })),
    };
    let files: Vec<PathBuf> = offer
        .layers
        .iter()
        .zip(paths)
        .filter(|(l, _)| l.sent)
        .map(|(_, p)| p.clone())
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::LoadRequest>(4);
    let _ = tx.send(first).await;
    // The files are read on a blocking thread, a chunk at a time, as the stream drains.
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Read;
        for f in files {
            let mut file = std::fs::File::open(&f)?;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                let msg = pb::LoadRequest {
                    request: Some(pb::load_request::Request::Data(buf)),
                };
                if tx.blocking_send(msg).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    });
    let mut client = pb::images_client::ImagesClient::new(ch.clone());
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let answer = client.load(with_timeout(stream, Some(timeout))).await;
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Status::internal(format!("reading the image's blobs on this node: {e}"))),
        Err(e) => return Err(Status::internal(format!("the blob reader ended: {e}"))),
    }
    answer.map(|_| ())
}

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
            // The entrypoint's runs are the pod's to start (and restart).
            no_entrypoint: true,
            volumes: pod
                .volumes
                .iter()
                .map(|v| pb::Volume {
                    name: v.name.to_string(),
                    empty_dir: Some(pb::EmptyDirVolume {
                        memory: v.memory,
                        size_limit_bytes: v.size_limit,
                    }),
                })
                .collect(),
            volume_mounts: c
                .mounts
                .iter()
                .map(|m| pb::VolumeMount {
                    name: m.volume.to_string(),
                    mount_path: m.path.clone(),
                    read_only: m.read_only,
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

pub async fn run_cell(ch: &Channel, cell: pb::Cell, timeout: Duration) -> Result<pb::CellStatus, Status> {
    let mut client = pb::runtime_client::RuntimeClient::new(ch.clone());
    Ok(client.run_cell(with_timeout(cell, Some(timeout))).await?.into_inner())
}

/// Starts a run of the container's entrypoint: the executable named after it, in its cell.
pub async fn start_run(
    ch: &Channel,
    container: &str,
    argv: Vec<String>,
    timeout: Duration,
) -> Result<pb::ExecutableStatus, Status> {
    let mut client = pb::runtime_client::RuntimeClient::new(ch.clone());
    let e = pb::Executable {
        name: container.to_owned(),
        argv,
        cell: container.to_owned(),
        ..Default::default()
    };
    Ok(client
        .run_executable(with_timeout(e, Some(timeout)))
        .await?
        .into_inner())
}

fn exec_ref(container: &str) -> pb::WorkloadRef {
    pb::WorkloadRef {
        kind: pb::WorkloadKind::Executable as i32,
        name: container.to_owned(),
    }
}

fn exec_status(s: pb::WorkloadStatus) -> Result<pb::ExecutableStatus, Status> {
    match s.status {
        Some(pb::workload_status::Status::Executable(e)) => Ok(e),
        _ => Err(Status::internal("the instance answered with another kind of workload")),
    }
}

/// Waits (as long as it takes) until the current run of `container` has ended.
pub async fn wait_run(ch: &Channel, container: &str) -> Result<pb::ExecutableStatus, Status> {
    let mut client = pb::workloads_client::WorkloadsClient::new(ch.clone());
    exec_status(client.wait(exec_ref(container)).await?.into_inner())
}

/// Frees an ended run, so the next one can take its name.
pub async fn free_run(ch: &Channel, container: &str, timeout: Duration) -> Result<(), Status> {
    let mut client = pb::workloads_client::WorkloadsClient::new(ch.clone());
    client.free(with_timeout(exec_ref(container), Some(timeout))).await?;
    Ok(())
}

/// Stops the current run: `signal`, `grace`, then its cell's processes are killed.
pub async fn stop_run(ch: &Channel, container: &str, signal: i32, grace: Duration) -> Result<(), Status> {
    let mut client = pb::workloads_client::WorkloadsClient::new(ch.clone());
    let req = pb::StopRequest {
        workload: Some(exec_ref(container)),
        signal: u32::try_from(signal).unwrap_or(15),
        grace_period_millis: u32::try_from(grace.as_millis()).unwrap_or(u32::MAX),
    };
    client
        .stop(with_timeout(req, Some(grace + Duration::from_secs(10))))
        .await?;
    Ok(())
}
