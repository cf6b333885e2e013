//! `auraed bench-cri`: the CRI figures of `make bench`, measured inside the appliance over
//! the API port (as the admin), beside the Aurae API doing the same on the same boot:
//!
//! - kubelet's way to a running container (`RunPodSandbox`, `CreateContainer` by the
//!   image's id, `StartContainer`) against `RunPod` of the same image, alternated so both
//!   see the same machine;
//! - kubelet's relist (generic PLEG, every second): `ListPodSandbox` and `ListContainers`,
//!   then each sandbox's and each container's status, with `--relist-pods` sandboxes of
//!   one running container each (cell handler: cheap enough to hold many), and the CPU
//!   time PID 1 spends on one.

use super::{ms, report, target_of};
use crate::cli::CliError;
use crate::pb;
use aurae_proto::cri;
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct CriArgs {
    /// aer config file to reach the node (an admin's certificate).
    #[arg(long)]
    config: PathBuf,
    /// An image the node can pull: every container runs it.
    #[arg(long)]
    image: String,
    /// Pairs of (CRI pod, RunPod) timed.
    #[arg(long, default_value_t = 5)]
    n: usize,
    /// Sandboxes held while relists are timed.
    #[arg(long, default_value_t = 20)]
    relist_pods: usize,
    /// Execs timed each way (port-forward: at most 5 pages each way).
    #[arg(long, default_value_t = 20)]
    stream_n: usize,
}

use super::stream::Run;

fn sandbox(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        labels: [("io.kubernetes.pod.uid".to_owned(), format!("uid-{name}"))].into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 32 << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A sandbox with one container sleeping in it, through the CRI as kubelet makes one.
async fn cri_pod(run: &mut Run, name: &str, handler: &str, image_id: &str) -> Result<String, tonic::Status> {
    Ok(cri_pod_running(run, name, handler, image_id, "exec sleep 100000")
        .await?
        .0)
}

/// A sandbox with one container running `script` (sh -c): (sandbox, container).
async fn cri_pod_running(
    run: &mut Run,
    name: &str,
    handler: &str,
    image_id: &str,
    script: &str,
) -> Result<(String, String), tonic::Status> {
    let config = sandbox(name);
    let sid = run
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let cid = run
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sid.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: image_id.into(),
                    ..Default::default()
                }),
                command: vec!["/bin/sh".into(), "-c".into(), script.into()],
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await?
        .into_inner()
        .container_id;
    run.start_container(cri::StartContainerRequest {
        container_id: cid.clone(),
    })
    .await?;
    Ok((sid, cid))
}

async fn remove(run: &mut Run, sid: &str) -> Result<(), tonic::Status> {
    run.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sid.into(),
    })
    .await?;
    run.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sid.into(),
    })
    .await?;
    Ok(())
}

/// One relist as kubelet's PLEG does it.
async fn relist(run: &mut Run) -> Result<usize, tonic::Status> {
    let sandboxes = run
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    let containers = run
        .list_containers(cri::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    for s in &sandboxes {
        run.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: s.id.clone(),
            verbose: false,
        })
        .await?;
    }
    for c in &containers {
        run.container_status(cri::ContainerStatusRequest {
            container_id: c.id.clone(),
            verbose: false,
        })
        .await?;
    }
    Ok(sandboxes.len() + containers.len())
}

/// PID 1's CPU time so far (user + system), from the node's /proc (the bench's cell
/// shares the node's mounts).
fn pid1_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/1/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

async fn bench(a: CriArgs) -> Result<(), CliError> {
    let target = target_of(&a.config, Duration::from_secs(600))?;
    let ch = target.connect().await?;
    let mut run: Run = RuntimeServiceClient::new(ch.clone());
    let mut img = ImageServiceClient::new(ch.clone());
    let mut rt = pb::runtime_client::RuntimeClient::new(ch.clone());
    let mut wl = pb::workloads_client::WorkloadsClient::new(ch);
    let r = CliError::Remote;
    let image_id = img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: a.image.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .map_err(r)?
        .into_inner()
        .image_ref;

    let (mut cri_times, mut pod_times) = (Vec::new(), Vec::new());
    for i in 0..a.n.max(1) {
        let t = Instant::now();
        let sid = cri_pod(&mut run, &format!("c{i}"), "vm", &image_id).await.map_err(r)?;
        cri_times.push(t.elapsed());
        remove(&mut run, &sid).await.map_err(r)?;

        let pod = pb::Pod {
            name: format!("p{i}"),
            containers: vec![pb::Container {
                name: "app".into(),
                image: a.image.clone(),
                command: vec!["/bin/sh".into(), "-c".into(), "exec sleep 100000".into()],
                ..Default::default()
            }],
            restart_policy: pb::RestartPolicy::Never as i32,
            // The size the CRI pod gets: 32 MiB asked + auraed's 96 MiB overhead.
            resources: Some(pb::PodResources {
                vcpus: 1,
                memory_bytes: (32 + 96) << 20,
            }),
            isolation: pb::IsolationKind::Vm as i32,
            ..Default::default()
        };
        let t = Instant::now();
        rt.run_pod(pod).await.map_err(r)?;
        pod_times.push(t.elapsed());
        kill_pod(&mut wl, &format!("p{i}")).await.map_err(r)?;
    }
    cri_times.sort();
    pod_times.sort();
    let p50 = |v: &[Duration]| v[(v.len() - 1) / 2];
    let ratio = ms(p50(&cri_times)) / ms(p50(&pod_times));
    report("CRI RunPodSandbox+Create+StartContainer (vm)", cri_times);
    report("RunPod, one container, same image (vm)", pod_times);
    println!("{:<58} {ratio:8.2} (goal <= 1.05)", "CRI / RunPod, p50");

    let mut held = Vec::new();
    for i in 0..a.relist_pods {
        held.push(
            cri_pod(&mut run, &format!("r{i}"), "cell", &image_id)
                .await
                .map_err(r)?,
        );
    }
    let mut rounds = Vec::new();
    let mut items = 0;
    let cpu0 = pid1_cpu();
    for _ in 0..20 {
        let t = Instant::now();
        items = relist(&mut run).await.map_err(r)?;
        rounds.push(t.elapsed());
    }
    let cpu1 = pid1_cpu();
    report(
        &format!("relist, {} sandboxes + containers ({items} items)", a.relist_pods),
        rounds,
    );
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        println!(
            "{:<58} {:8.3} ms",
            "  PID 1's CPU time per relist",
            ms(c1.saturating_sub(c0)) / 20.0
        );
    }
    for sid in held {
        remove(&mut run, &sid).await.map_err(r)?;
    }
    streaming(&mut run, &mut rt, &mut wl, &a, &image_id).await
}

/// The streaming figures (`stream.rs`) on a cell sandbox and a cell pod, both serving the
/// page, the pod's port 80 published on the node.
async fn streaming(
    run: &mut Run,
    rt: &mut pb::runtime_client::RuntimeClient<crate::cli::Conn>,
    wl: &mut pb::workloads_client::WorkloadsClient<crate::cli::Conn>,
    a: &CriArgs,
    image_id: &str,
) -> Result<(), CliError> {
    use super::stream::{figures, server_script, Targets};
    let r = CliError::Remote;
    let script = server_script();
    let (sid, cid) = cri_pod_running(run, "s0", "cell", image_id, &script).await.map_err(r)?;
    const PUBLISHED: u16 = 18_099;
    let pod = pb::Pod {
        name: "bs".into(),
        containers: vec![pb::Container {
            name: "app".into(),
            image: a.image.clone(),
            command: vec!["/bin/sh".into(), "-c".into(), script],
            ports: vec![pb::ContainerPort {
                container_port: 80,
                host_port: u32::from(PUBLISHED),
                protocol: String::new(),
            }],
            ..Default::default()
        }],
        restart_policy: pb::RestartPolicy::Never as i32,
        isolation: pb::IsolationKind::Cell as i32,
        ..Default::default()
    };
    let st = rt.run_pod(pod).await.map_err(r)?.into_inner();
    let pod_address = st
        .pod_ip
        .parse()
        .map_err(|_| CliError::Workload(format!("bench: pod bs has no address ('{}')", st.pod_ip)))?;
    // Until httpd serves the page (its file written first).
    let page = std::net::SocketAddr::from((pod_address, 80));
    let until = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(page).await.is_err() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!();
    let targets = Targets {
        sandbox: &sid,
        container: &cid,
        pod: "bs",
        pod_container: "app",
        pod_address,
        published: PUBLISHED,
    };
    let measured = figures(run, rt, &targets, a.stream_n.max(1)).await;
    remove(run, &sid).await.map_err(r)?;
    kill_pod(wl, "bs").await.map_err(r)?;
    measured
}

/// Kills pod `name` at once and frees it.
async fn kill_pod(
    wl: &mut pb::workloads_client::WorkloadsClient<crate::cli::Conn>,
    name: &str,
) -> Result<(), tonic::Status> {
    let w = crate::cli::workload::wref(pb::WorkloadKind::Pod, name);
    wl.stop(pb::StopRequest {
        workload: Some(w.clone()),
        signal: 9,
        grace_period_millis: 0,
    })
    .await?;
    wl.free(w).await?;
    Ok(())
}

pub fn main(a: CriArgs) -> ExitCode {
    super::run("bench-cri", bench(a))
}
