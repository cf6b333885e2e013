//! `auraed bench-runtime`: the runtime figures of `make bench`, measured inside the appliance
//! so the API round trip and its baselines (a bare fork+exec+wait, crun) run on the same
//! kernel, CPU and moment. `tests/bench.sh` starts it as an executable in a cell that shares
//! the node's network (to reach 127.0.0.1) and mounts (for crun's cgroups).

pub mod churn;
pub mod cri;
pub mod soak;
mod stream;

use crate::cli::Conn as Channel;
use crate::cli::{config::FileConfig, workload::wref, CliError, Target};
use crate::pb::{self, runtime_client::RuntimeClient, workloads_client::WorkloadsClient};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// aer config file to reach the node.
    #[arg(long)]
    config: PathBuf,
    /// Samples per figure.
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// OCI bundle running /bin/true, for the crun baseline (skipped when absent).
    #[arg(long)]
    crun_bundle: Option<PathBuf>,
    #[arg(long, default_value = "/usr/bin/crun")]
    crun: PathBuf,
    /// An image the node has: cells from it, beside crun on `--crun-image-bundle` (the same
    /// image unpacked).
    #[arg(long)]
    image: Option<String>,
    #[arg(long)]
    crun_image_bundle: Option<PathBuf>,
}

/// `crun run` of `bundle` (/bin/true) `n` times.
fn crun_runs(
    crun: &std::path::Path,
    bundle: &std::path::Path,
    n: usize,
    prefix: &str,
) -> Result<Vec<Duration>, CliError> {
    let mut v = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let st = std::process::Command::new(crun)
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(format!("{prefix}-{i}"))
            .stdin(std::process::Stdio::null())
            .status()
            .map_err(|e| CliError::Usage(format!("{}: {e}", crun.display())))?;
        if !st.success() {
            return Err(CliError::Usage(format!(
                "crun run of {} failed: {st}",
                bundle.display()
            )));
        }
        v.push(t.elapsed());
    }
    Ok(v)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(what: &str, mut s: Vec<Duration>) {
    s.sort();
    let pick = |q: f64| s[((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1];
    println!(
        "{what:<58} p50 {:8.3} ms  p99 {:8.3} ms  (n={})",
        ms(pick(0.5)),
        ms(pick(0.99)),
        s.len()
    );
}

struct Api {
    rt: RuntimeClient<Channel>,
    wl: WorkloadsClient<Channel>,
}

fn exe(name: String, cell: &str) -> pb::Executable {
    pb::Executable {
        name,
        argv: vec!["/bin/true".into()],
        cell: cell.into(),
        ..Default::default()
    }
}

impl Api {
    /// RunExecutable + Status as the client sees it, and RunExecutable as auraed spent it
    /// (the `aurae-server-micros` response header).
    async fn run_and_free(&mut self, name: String, cell: &str) -> Result<(Duration, Duration), tonic::Status> {
        let t = Instant::now();
        let r = self.rt.run_executable(exe(name.clone(), cell)).await?;
        self.wl.status(wref(pb::WorkloadKind::Executable, &name)).await?;
        let d = t.elapsed();
        let server = r
            .metadata()
            .get(crate::server::runtime_api::SERVER_MICROS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Duration::from_micros)
            .unwrap_or_default();
        self.wl.wait(wref(pb::WorkloadKind::Executable, &name)).await?;
        self.wl.free(wref(pb::WorkloadKind::Executable, &name)).await?;
        Ok((d, server))
    }

    async fn cell_cycle(
        &mut self,
        i: usize,
        confinement: Option<pb::CellConfinement>,
    ) -> Result<Duration, tonic::Status> {
        let (cell, name) = (format!("cyc-{i}"), format!("cyc-x-{i}"));
        let t = Instant::now();
        self.rt
            .run_cell(pb::Cell {
                name: cell.clone(),
                confinement,
                ..Default::default()
            })
            .await?;
        self.rt.run_executable(exe(name.clone(), &cell)).await?;
        self.wait_then_remove(&name, &cell).await?;
        Ok(t.elapsed())
    }

    /// Waits for executable `exe` to end, then stops and frees cell `cell`.
    async fn wait_then_remove(&mut self, exe: &str, cell: &str) -> Result<(), tonic::Status> {
        self.wl.wait(wref(pb::WorkloadKind::Executable, exe)).await?;
        self.wl
            .stop(pb::StopRequest {
                workload: Some(wref(pb::WorkloadKind::Cell, cell)),
                signal: 0,
                grace_period_millis: 1000,
            })
            .await?;
        self.wl.free(wref(pb::WorkloadKind::Cell, cell)).await?;
        Ok(())
    }
}

impl Api {
    /// A cell from `image` whose entrypoint is /bin/true: (RunCell until the entrypoint
    /// runs, the whole cycle to freed).
    async fn image_cycle(&mut self, i: usize, image: &str) -> Result<(Duration, Duration), tonic::Status> {
        let cell = format!("img-{i}");
        let t = Instant::now();
        self.rt
            .run_cell(pb::Cell {
                name: cell.clone(),
                image: Some(pb::OciImage {
                    reference: image.into(),
                    command: vec!["/bin/true".into()],
                    pull_policy: pb::PullPolicy::Never as i32,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
        let running = t.elapsed();
        self.wait_then_remove(&cell, &cell).await?;
        Ok((running, t.elapsed()))
    }
}

/// What the authorization layer adds to each call, measured on this node's own policy and
/// root and the bench client's certificate, in this process: `identify` (the subtree rule
/// on the chain, every signature verified; then cached per chain, as a connection's later
/// calls are) and `decide` (the policy lookup). Beside the round trip above, it shows the
/// layer's share of one call.
fn authorization_cost(target: &Target, n: usize) -> Result<(), CliError> {
    use crate::pki::{policy::Policy, revoked::Revoked};
    use crate::server::authz::Authorizer;
    let usage = |e: String| CliError::Usage(e);
    let tls = target.tls.load().map_err(|e| usage(e.to_string()))?;
    let pki = std::path::Path::new("/etc/aurae/pki");
    let policy = Policy::load(pki).map_err(|e| usage(e.to_string()))?;
    let node = std::fs::read_to_string(pki.join("server.crt")).map_err(|e| usage(format!("server.crt: {e}")))?;
    let node_id = crate::pki::spiffe_id_of_pem(&node).unwrap_or_default();
    let root = crate::pki::first_der(&tls.ca_pem);
    let chain = crate::pki::chain_der(&tls.cert_pem);
    let refs: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
    let method = "/aurae.v0.Workloads/Status";
    let once = |auth: &Authorizer| -> Result<(), CliError> {
        let id = auth.identify(&refs).map_err(CliError::Remote)?;
        auth.decide(method, Some(&id), None).map_err(CliError::Remote)?;
        Ok(())
    };
    let (mut first, mut cached) = (Vec::new(), Vec::new());
    let warm = Authorizer::new(
        Ok(policy.clone()),
        &node_id,
        root.clone(),
        std::sync::Arc::new(Revoked::default()),
    );
    for _ in 0..n {
        let fresh = Authorizer::new(
            Ok(policy.clone()),
            &node_id,
            root.clone(),
            std::sync::Arc::new(Revoked::default()),
        );
        let t = Instant::now();
        once(&fresh)?;
        first.push(t.elapsed());
        let t = Instant::now();
        once(&warm)?;
        cached.push(t.elapsed());
    }
    report("authorization, a connection's first call (chain verified)", first);
    report("authorization, every later call (chain cached)", cached);
    Ok(())
}

/// The node `config` (an aer config file) names, as a target with call `timeout`.
fn target_of(config: &std::path::Path, timeout: Duration) -> Result<Target, CliError> {
    let file = FileConfig::load(config).map_err(|e| CliError::Usage(e.to_string()))?;
    let need = |o: Option<PathBuf>, what: &str| o.ok_or_else(|| CliError::Usage(format!("{what} missing in config")));
    Ok(Target {
        instance: None,
        addr: file
            .address
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", crate::DEFAULT_PORT)),
        tls: crate::pki::tls::TlsFiles {
            ca: need(file.ca.clone(), "ca")?,
            cert: need(file.cert.clone(), "cert")?,
            key: need(file.key.clone(), "key")?,
        },
        server_name: file.server_name.clone().unwrap_or_else(|| "localhost".into()),
        server_id: None,
        timeout,
    })
}

async fn bench(a: BenchArgs) -> Result<(), CliError> {
    let target = target_of(&a.config, Duration::from_secs(60))?;
    let ch = target.connect().await?;
    let mut api = Api {
        rt: RuntimeClient::new(ch.clone()),
        wl: WorkloadsClient::new(ch.clone()),
    };
    let r = CliError::Remote;
    let n = a.n.max(1);

    let mut bare = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        std::process::Command::new("/bin/true")
            .status()
            .map_err(|e| CliError::Usage(format!("/bin/true: {e}")))?;
        bare.push(t.elapsed());
    }
    report("bare fork+exec+wait of /bin/true (in a cell)", bare);

    let mut floor = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let _ = api.wl.status(wref(pb::WorkloadKind::Cell, "none")).await;
        floor.push(t.elapsed());
    }
    report("one API round trip (Status of a missing cell)", floor);
    authorization_cost(&target, n)?;

    // The same starts in a confined cell (the default) and in a privileged one (no root of
    // its own, every capability, no seccomp): the cost of the confinement, same boot.
    let privileged = || {
        Some(pb::CellConfinement {
            privileged: true,
            ..Default::default()
        })
    };
    for (cell, confinement) in [("bench", None), ("bench-priv", privileged())] {
        api.rt
            .run_cell(pb::Cell {
                name: cell.into(),
                confinement,
                ..Default::default()
            })
            .await
            .map_err(r)?;
    }
    for (cell, what) in [("bench", "confined"), ("bench-priv", "privileged")] {
        let (mut in_cell, mut in_cell_server) = (Vec::new(), Vec::new());
        for i in 0..n {
            let (d, s) = api.run_and_free(format!("b-{cell}-{i}"), cell).await.map_err(r)?;
            in_cell.push(d);
            in_cell_server.push(s);
        }
        report(&format!("RunExecutable + Status, existing {what} cell"), in_cell);
        report(
            &format!("RunExecutable server-side (inside auraed), {what} cell"),
            in_cell_server,
        );
    }
    let (mut private, mut private_server) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (d, s) = api.run_and_free(format!("p-{i}"), "").await.map_err(r)?;
        private.push(d);
        private_server.push(s);
    }
    report("RunExecutable + Status, private cell (new ns, confined)", private);
    report("RunExecutable server-side, private cell", private_server);

    let userns = Some(pb::CellConfinement {
        user_namespace: true,
        ..Default::default()
    });
    for (what, confinement) in [
        ("confined (default)", None),
        ("confined + userns", userns),
        ("privileged", privileged()),
    ] {
        let mut cycles = Vec::new();
        for i in 0..n {
            cycles.push(api.cell_cycle(i, confinement.clone()).await.map_err(r)?);
        }
        report(&format!("cell create + run true + wait + stop + free, {what}"), cycles);
    }

    match &a.crun_bundle {
        Some(bundle) if bundle.join("config.json").exists() => report(
            "crun run of the same (pivot_root, masked paths, same caps and seccomp)",
            crun_runs(&a.crun, bundle, n, "crun")?,
        ),
        _ => println!("crun baseline: SKIP (no bundle given)"),
    }

    // Cells from a cached image: RunCell returns once the entrypoint runs; then it is
    // waited for, the cell stopped and freed. Beside crun on the same image unpacked.
    if let Some(image) = &a.image {
        let (mut running, mut cycles) = (Vec::new(), Vec::new());
        for i in 0..n {
            let (d, all) = api.image_cycle(i, image).await.map_err(r)?;
            running.push(d);
            cycles.push(all);
        }
        report("cell from a cached image -> entrypoint running", running);
        report("cell from a cached image + run true + wait + stop + free", cycles);
        match &a.crun_image_bundle {
            Some(bundle) if bundle.join("config.json").exists() => report(
                "crun run of the same image unpacked (same confinement)",
                crun_runs(&a.crun, bundle, n, "crun-img")?,
            ),
            _ => println!("crun image baseline: SKIP (no bundle given)"),
        }
    }

    // Sustained rate: 16 starts in flight at a time, each waited for and freed.
    let total = (n * 4).max(64);
    let t = Instant::now();
    let mut set: tokio::task::JoinSet<Result<(Duration, Duration), tonic::Status>> = tokio::task::JoinSet::new();
    for i in 0..total {
        if set.len() >= 16 {
            if let Some(res) = set.join_next().await {
                res.map_err(|e| CliError::Usage(e.to_string()))?.map_err(r)?;
            }
        }
        let mut api = Api {
            rt: RuntimeClient::new(ch.clone()),
            wl: WorkloadsClient::new(ch.clone()),
        };
        set.spawn(async move { api.run_and_free(format!("s-{i}"), "bench").await });
    }
    while let Some(res) = set.join_next().await {
        res.map_err(|e| CliError::Usage(e.to_string()))?.map_err(r)?;
    }
    println!(
        "{:<58} {:8.1} /s  ({total} started, waited and freed, 16 in flight)",
        "executables sustained",
        total as f64 / t.elapsed().as_secs_f64()
    );

    // RSS with 1000 finished executables kept (status and logs held, not freed).
    for i in 0..1000 {
        api.rt.run_executable(exe(format!("k-{i}"), "bench")).await.map_err(r)?;
    }
    for i in 0..1000 {
        api.wl
            .wait(wref(pb::WorkloadKind::Executable, &format!("k-{i}")))
            .await
            .map_err(r)?;
    }
    let info = pb::node_client::NodeClient::new(ch)
        .info(pb::NodeInfoRequest {})
        .await
        .map_err(r)?
        .into_inner();
    println!(
        "{:<58} {:8.2} MiB",
        "auraed RSS with 1000 finished executables kept",
        info.auraed_rss_bytes as f64 / 1048576.0
    );
    Ok(())
}

pub fn main(a: BenchArgs) -> ExitCode {
    run("bench", bench(a))
}

/// Runs a bench driver on a current-thread runtime; a failure is said, prefixed by `what`.
fn run(what: &str, f: impl std::future::Future<Output = Result<(), CliError>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{what}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::FAILURE
        }
    }
}
