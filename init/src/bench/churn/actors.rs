//! The churn of `make soak`: each actor does one kind of work at its own pace, on its own
//! connection (and its own thread, see `mod.rs`), until told to stop. A round that takes
//! longer than its period is followed by the next at once; an actor never overlaps itself.
//! Every call's outcome is counted by what it was; a failure also prints why.

use super::Tally;
use crate::cli::{workload::wref, CliError, Target};
use crate::pb::{self, images_client::ImagesClient, node_client::NodeClient};
use crate::pb::{runtime_client::RuntimeClient, workloads_client::WorkloadsClient};
use pb::WorkloadKind as K;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What every actor is given.
#[derive(Clone)]
pub struct Ctx {
    pub target: Target,
    pub stop: Arc<AtomicBool>,
    pub tally: Arc<Tally>,
    /// The image cells and pods run (`/bin/sh` in it is used).
    pub image: String,
    /// The image the pull actor removes and pulls again.
    pub churn_image: String,
    /// The image a disconnecting client starts to pull.
    pub dropped_image: String,
    /// The initramfs VMs boot (an idle busybox).
    pub vm_initramfs: String,
}

/// The actors, each with its period (and its first round's delay, so the heavy ones do not
/// start together). The rates the docs state come from this table.
pub const ACTORS: &[(&str, u64, u64)] = &[
    ("executables", 500, 0),
    ("cells", 3_000, 100),
    ("image-cells", 5_000, 200),
    ("exec-sessions", 5_000, 300),
    ("disconnects", 5_000, 400),
    ("pulls", 60_000, 10_000),
    ("vms", 30_000, 5_000),
    ("spawns", 120_000, 20_000),
    ("pods", 120_000, 80_000),
    ("prober", 1_000, 0),
];

/// The long-lived cells the churn uses (made before, freed after): a plain cell for
/// executables, and one whose sleeper exec sessions join and clients follow.
pub const PLAIN: &str = "churn-plain";
pub const HOME: &str = "churn-home";
pub const SLEEPER: &str = "churn-sleeper";

/// Runs actor `name` until `ctx.stop`.
pub async fn run(name: &'static str, ctx: Ctx) -> Result<(), CliError> {
    let (every, first) = ACTORS
        .iter()
        .find(|a| a.0 == name)
        .map(|a| (Duration::from_millis(a.1), Duration::from_millis(a.2)))
        .ok_or_else(|| CliError::Usage(format!("no actor {name}")))?;
    let ch = ctx.target.connect_unbounded().await?;
    let mut c = Clients {
        rt: RuntimeClient::new(ch.clone()),
        wl: WorkloadsClient::new(ch.clone()),
        images: ImagesClient::new(ch.clone()),
        node: NodeClient::new(ch),
    };
    let mut next = tokio::time::Instant::now() + first;
    let mut i = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        if tokio::time::Instant::now() < next {
            // In short steps, so a stop is seen within a second.
            tokio::time::sleep(Duration::from_millis(500).min(next - tokio::time::Instant::now())).await;
            continue;
        }
        i += 1;
        round(name, i, &ctx, &mut c).await;
        next = (next + every).max(tokio::time::Instant::now());
    }
    Ok(())
}

struct Clients {
    rt: RuntimeClient<crate::cli::Conn>,
    wl: WorkloadsClient<crate::cli::Conn>,
    images: ImagesClient<crate::cli::Conn>,
    node: NodeClient<crate::cli::Conn>,
}

type R = Result<(), tonic::Status>;

fn stop_req(kind: K, name: &str) -> pb::StopRequest {
    pb::StopRequest {
        workload: Some(wref(kind, name)),
        signal: 0,
        grace_period_millis: 1000,
    }
}

/// A workload stopped (1 s of grace) and freed.
async fn stop_and_free(c: &mut Clients, kind: K, name: &str) -> R {
    c.wl.stop(stop_req(kind, name)).await?;
    c.wl.free(wref(kind, name)).await?;
    Ok(())
}

async fn round(name: &'static str, i: u64, ctx: &Ctx, c: &mut Clients) {
    let t = std::time::Instant::now();
    let r: R = match name {
        "executables" => executable(c, &format!("churn-x-{i}"), PLAIN).await,
        "cells" => cell(c, i).await,
        "image-cells" => image_cell(c, i, &ctx.image).await,
        "exec-sessions" => exec_session(c, HOME, vec!["/bin/sh".into(), "-c".into(), "echo churn".into()]).await,
        "disconnects" => disconnect(ctx, i).await,
        "pulls" => pull_again(c, &ctx.churn_image).await,
        "vms" => vm(c, i, &ctx.vm_initramfs).await,
        "spawns" => spawn(c, ctx, i).await,
        "pods" => pod(c, i, &ctx.image).await,
        "prober" => c.node.info(pb::NodeInfoRequest {}).await.map(|_| ()),
        _ => Ok(()),
    };
    ctx.tally.record(name, t.elapsed(), r);
}

async fn executable(c: &mut Clients, name: &str, cell: &str) -> R {
    c.rt.run_executable(pb::Executable {
        name: name.into(),
        argv: vec!["/bin/true".into()],
        cell: cell.into(),
        ..Default::default()
    })
    .await?;
    c.wl.wait(wref(K::Executable, name)).await?;
    c.wl.free(wref(K::Executable, name)).await?;
    Ok(())
}

/// A cell with limits, a process in it, then the cell stopped and freed.
async fn cell(c: &mut Clients, i: u64) -> R {
    let name = format!("churn-c-{i}");
    c.rt.run_cell(pb::Cell {
        name: name.clone(),
        resources: Some(pb::CellResources {
            memory_max_bytes: Some(32 << 20),
            pids_max: Some(32),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    let x = format!("churn-cx-{i}");
    let ran = executable(c, &x, &name).await;
    stop_and_free(c, K::Cell, &name).await?;
    ran
}

/// A cell from the image: its entrypoint run, waited for, its log read; then freed.
async fn image_cell(c: &mut Clients, i: u64, image: &str) -> R {
    let name = format!("churn-i-{i}");
    c.rt.run_cell(pb::Cell {
        name: name.clone(),
        image: Some(pb::OciImage {
            reference: image.into(),
            command: vec!["/bin/sh".into(), "-c".into(), "echo churn; ls / > /dev/null".into()],
            pull_policy: pb::PullPolicy::Never as i32,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    let cycle = async {
        c.wl.wait(wref(K::Executable, &name)).await?;
        let mut logs =
            c.wl.logs(pb::LogsRequest {
                workload: Some(wref(K::Executable, &name)),
                follow: false,
                tail_lines: None,
            })
            .await?
            .into_inner();
        while logs.message().await?.is_some() {}
        Ok::<(), tonic::Status>(())
    }
    .await;
    stop_and_free(c, K::Cell, &name).await?;
    cycle
}

/// One `Exec` session: `argv` in `cell` (or a pod's container), its output and exit read.
async fn exec_in(c: &mut Clients, start: pb::ExecStart) -> R {
    use pb::exec_request::Request as In;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let _ = tx
        .send(pb::ExecRequest {
            request: Some(In::Start(start)),
        })
        .await;
    let _ = tx
        .send(pb::ExecRequest {
            request: Some(In::CloseStdin(true)),
        })
        .await;
    let mut out =
        c.rt.exec(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
    while let Some(m) = out.message().await? {
        if let Some(pb::exec_response::Response::Exit(e)) = m.response {
            drop(tx);
            return match e.exit_code {
                Some(0) => Ok(()),
                other => Err(tonic::Status::unknown(format!("the exec exited {other:?}"))),
            };
        }
    }
    Err(tonic::Status::unknown("the exec ended without its exit"))
}

async fn exec_session(c: &mut Clients, cell: &str, argv: Vec<String>) -> R {
    exec_in(
        c,
        pb::ExecStart {
            cell: cell.into(),
            argv,
            ..Default::default()
        },
    )
    .await
}

/// A client that goes away mid-call: a new connection starts one of four long calls
/// (a followed log, a Wait, the event stream, a pull) and is dropped after 50..800 ms.
async fn disconnect(ctx: &Ctx, i: u64) -> R {
    let ch = ctx
        .target
        .connect_unbounded()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let after = Duration::from_millis(50 + (i * 137) % 750);
    let (mut wl, mut images) = (WorkloadsClient::new(ch.clone()), ImagesClient::new(ch));
    let call = async {
        match i % 4 {
            0 => {
                let mut s = wl
                    .logs(pb::LogsRequest {
                        workload: Some(wref(K::Executable, SLEEPER)),
                        follow: true,
                        tail_lines: Some(10),
                    })
                    .await?
                    .into_inner();
                while s.message().await?.is_some() {}
            }
            1 => {
                wl.wait(wref(K::Executable, SLEEPER)).await?;
            }
            2 => {
                let mut s = wl
                    .events(pb::EventsRequest {
                        after: 0,
                        from_now: false,
                    })
                    .await?
                    .into_inner();
                while s.message().await?.is_some() {}
            }
            _ => {
                let mut s = images
                    .pull(pb::PullRequest {
                        reference: ctx.dropped_image.clone(),
                        credentials: None,
                    })
                    .await?
                    .into_inner();
                while s.message().await?.is_some() {}
            }
        }
        Ok::<(), tonic::Status>(())
    };
    // Only an error the call itself gave before the drop counts (a pull may also finish).
    match tokio::time::timeout(after, call).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

/// The churn image removed (when the node has it) and pulled again.
async fn pull_again(c: &mut Clients, image: &str) -> R {
    match c
        .images
        .remove(pb::ImageRef {
            reference: image.into(),
        })
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == tonic::Code::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut s = c
        .images
        .pull(pb::PullRequest {
            reference: image.into(),
            credentials: None,
        })
        .await?
        .into_inner();
    while s.message().await?.is_some() {}
    Ok(())
}

/// A 64 MiB VM of an idle busybox initramfs, on auraed's VMM: started, stopped, freed.
async fn vm(c: &mut Clients, i: u64, initramfs: &str) -> R {
    let name = format!("churn-v-{i}");
    c.rt.run_virtual_machine(pb::VirtualMachine {
        name: name.clone(),
        initramfs_path: initramfs.into(),
        memory_bytes: 64 << 20,
        vcpus: 1,
        ..Default::default()
    })
    .await?;
    stop_and_free(c, K::VirtualMachine, &name).await?;
    Ok(())
}

/// A spawned instance (a microVM running auraed): a call forwarded to it and an exec in
/// it, then stopped and freed (its TAP, address and identity released).
async fn spawn(c: &mut Clients, ctx: &Ctx, i: u64) -> R {
    let name = format!("churn-s-{i}");
    c.rt.spawn(pb::Instance {
        name: name.clone(),
        isolation: pb::IsolationKind::Vm as i32,
        ..Default::default()
    })
    .await?;
    let mut inside = ctx.target.clone();
    inside.instance = Some(name.clone());
    let used = async {
        let ch = inside
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        NodeClient::new(ch).info(pb::NodeInfoRequest {}).await?;
        Ok::<(), tonic::Status>(())
    }
    .await;
    stop_and_free(c, K::Instance, &name).await?;
    used
}

/// A one-container pod from the image: an exec session in its container, then stopped
/// and freed.
async fn pod(c: &mut Clients, i: u64, image: &str) -> R {
    let name = format!("churn-p-{i}");
    c.rt.run_pod(pb::Pod {
        name: name.clone(),
        containers: vec![pb::Container {
            name: "main".into(),
            image: image.into(),
            image_pull_policy: pb::PullPolicy::Never as i32,
            command: vec!["/bin/sh".into(), "-c".into(), "exec sleep 100000".into()],
            ..Default::default()
        }],
        isolation: pb::IsolationKind::Vm as i32,
        ..Default::default()
    })
    .await?;
    let used = exec_in(
        c,
        pb::ExecStart {
            cell: "main".into(),
            pod: name.clone(),
            argv: vec!["true".into()],
            ..Default::default()
        },
    )
    .await;
    stop_and_free(c, K::Pod, &name).await?;
    used
}

/// Makes the long-lived cells the actors use.
pub async fn prepare(target: &Target) -> Result<(), CliError> {
    let mut rt = RuntimeClient::new(target.connect().await?);
    for name in [PLAIN, HOME] {
        rt.run_cell(pb::Cell {
            name: name.into(),
            ..Default::default()
        })
        .await
        .map_err(CliError::Remote)?;
    }
    rt.run_executable(pb::Executable {
        name: SLEEPER.into(),
        argv: vec!["/bin/sleep".into(), "100000".into()],
        cell: HOME.into(),
        ..Default::default()
    })
    .await
    .map_err(CliError::Remote)?;
    Ok(())
}

/// Stops and frees what `prepare` made, and the image the disconnecting pulls may have
/// finished.
pub async fn clean(target: &Target, dropped_image: &str) -> Result<(), CliError> {
    let ch = target.connect_unbounded().await?;
    let (mut wl, mut images) = (WorkloadsClient::new(ch.clone()), ImagesClient::new(ch));
    for name in [PLAIN, HOME] {
        wl.stop(stop_req(K::Cell, name)).await.map_err(CliError::Remote)?;
        if name == HOME {
            wl.free(wref(K::Executable, SLEEPER)).await.map_err(CliError::Remote)?;
        }
        wl.free(wref(K::Cell, name)).await.map_err(CliError::Remote)?;
    }
    match images
        .remove(pb::ImageRef {
            reference: dropped_image.into(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
        Err(e) => Err(CliError::Remote(e)),
    }
}
