//! The load part of `make soak`: each rpc timed under one kind of load, from a client
//! inside the node (it shares the node's two vCPUs with auraed, as an agent on the node
//! would):
//!
//! - `clients`: N concurrent clients, each on its own mTLS connection, each calling
//!   `Node.Info`, `Workloads.List`, `Workloads.Status` and `Images.List` in turn;
//! - `cells`: N cells made one after another (`RunCell`), then, with all of them in the
//!   table, `Workloads.List` (and another client's `Node.Info` while it is read),
//!   `Node.Info` and an executable's cycle, then each stopped and freed;
//! - `executables`: N executables in sequence, each run, waited for and freed.

use super::actors::{PLAIN, SLEEPER};
use crate::cli::{workload::wref, CliError, Target};
use crate::pb::{self, images_client::ImagesClient, node_client::NodeClient};
use crate::pb::{runtime_client::RuntimeClient, workloads_client::WorkloadsClient};
use pb::WorkloadKind as K;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Latencies by rpc.
pub type Lat = BTreeMap<&'static str, Vec<Duration>>;

fn remote(what: &str, e: tonic::Status) -> CliError {
    CliError::Workload(format!("load: {what}: {e}"))
}

/// Times `f`, keeping its latency under `rpc`; its error names `rpc`.
async fn timed<T, F>(lat: &mut Lat, rpc: &'static str, f: F) -> Result<T, CliError>
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let t = Instant::now();
    let r = f.await.map_err(|e| remote(rpc, e))?;
    lat.entry(rpc).or_default().push(t.elapsed());
    Ok(r.into_inner())
}

/// `n` clients at once, `rounds` rounds each.
pub async fn clients(target: &Target, n: usize, rounds: usize) -> Result<Lat, CliError> {
    let all = Arc::new(Mutex::new(Lat::new()));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (target, all) = (target.clone(), all.clone());
        set.spawn(async move {
            let ch = target.connect().await?;
            let mut node = NodeClient::new(ch.clone());
            let mut wl = WorkloadsClient::new(ch.clone());
            let mut images = ImagesClient::new(ch);
            let mut lat = Lat::new();
            for _ in 0..rounds {
                timed(&mut lat, "Node.Info", node.info(pb::NodeInfoRequest {})).await?;
                timed(&mut lat, "Workloads.List", wl.list(pb::ListRequest::default())).await?;
                timed(&mut lat, "Workloads.Status", wl.status(wref(K::Executable, SLEEPER))).await?;
                timed(&mut lat, "Images.List", images.list(pb::ListImagesRequest {})).await?;
            }
            let mut g = all.lock().unwrap_or_else(|p| p.into_inner());
            for (k, v) in lat {
                g.entry(k).or_default().extend(v);
            }
            Ok::<(), CliError>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| CliError::Workload(format!("load: a client's task: {e}")))??;
    }
    let lat = std::mem::take(&mut *all.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(lat)
}

/// One executable's cycle in `cell`, each rpc timed.
async fn cycle(
    lat: &mut Lat,
    rt: &mut RuntimeClient<crate::cli::Conn>,
    wl: &mut WorkloadsClient<crate::cli::Conn>,
    name: &str,
    cell: &str,
) -> Result<(), CliError> {
    let exe = pb::Executable {
        name: name.into(),
        argv: vec!["/bin/true".into()],
        cell: cell.into(),
        ..Default::default()
    };
    timed(lat, "RunExecutable", rt.run_executable(exe)).await?;
    let w = timed(lat, "Workloads.Wait", wl.wait(wref(K::Executable, name))).await?;
    if let Some(pb::workload_status::Status::Executable(x)) = w.status {
        if x.exit_code != Some(0) {
            return Err(CliError::Workload(format!("load: {name} exited {:?}", x.exit_code)));
        }
    }
    timed(lat, "Workloads.Free", wl.free(wref(K::Executable, name))).await?;
    Ok(())
}

/// `n` cells, then calls with all of them present, then each stopped and freed.
pub async fn cells(target: &Target, n: usize) -> Result<Lat, CliError> {
    let ch = target.connect_unbounded().await?;
    let (mut rt, mut wl) = (RuntimeClient::new(ch.clone()), WorkloadsClient::new(ch.clone()));
    let mut node = NodeClient::new(ch);
    let mut lat = Lat::new();
    for i in 0..n {
        let cell = pb::Cell {
            name: format!("load-c-{i}"),
            ..Default::default()
        };
        timed(&mut lat, "RunCell", rt.run_cell(cell)).await?;
    }
    // Another client's Node.Info, on a connection of its own, while each List is read.
    let mut other = NodeClient::new(target.connect().await?);
    for i in 0..50 {
        let mut beside = Lat::new();
        let (listed, other_info) = tokio::join!(
            timed(&mut lat, "Workloads.List", wl.list(pb::ListRequest::default())),
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                timed(
                    &mut beside,
                    "Node.Info beside a List",
                    other.info(pb::NodeInfoRequest {}),
                )
                .await
            }
        );
        listed?;
        other_info?;
        for (k, v) in beside {
            lat.entry(k).or_default().extend(v);
        }
        timed(&mut lat, "Node.Info", node.info(pb::NodeInfoRequest {})).await?;
        cycle(&mut lat, &mut rt, &mut wl, &format!("load-cx-{i}"), PLAIN).await?;
    }
    for i in 0..n {
        let name = format!("load-c-{i}");
        let stop = pb::StopRequest {
            workload: Some(wref(K::Cell, &name)),
            signal: 0,
            grace_period_millis: 1000,
        };
        timed(&mut lat, "Workloads.Stop", wl.stop(stop)).await?;
        timed(&mut lat, "Workloads.Free", wl.free(wref(K::Cell, &name))).await?;
    }
    Ok(lat)
}

/// `n` executables in sequence, in the plain cell.
pub async fn executables(target: &Target, n: usize) -> Result<(Lat, Duration), CliError> {
    let ch = target.connect_unbounded().await?;
    let (mut rt, mut wl) = (RuntimeClient::new(ch.clone()), WorkloadsClient::new(ch));
    let mut lat = Lat::new();
    let began = Instant::now();
    for i in 0..n {
        cycle(&mut lat, &mut rt, &mut wl, &format!("load-x-{i}"), PLAIN).await?;
    }
    Ok((lat, began.elapsed()))
}
