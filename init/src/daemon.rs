//! The server side of auraed: PID 1 or a daemon. Brings the node up, serves the API until a
//! power action arrives, then powers off / reboots (PID 1) or exits (daemon).

use crate::init::{self, power::PowerAction};
use crate::pki::tls::TlsFiles;
use crate::server::{self, NodeContext};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where the appliance's PKI layer puts the node's certificates.
pub const DEFAULT_PKI_DIR: &str = "/etc/aurae/pki";

#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Directory with ca.crt, server.crt and server.key.
    #[arg(long, default_value = DEFAULT_PKI_DIR)]
    pub pki_dir: PathBuf,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// The image store (blobs, unpacked layers, image records).
    #[arg(long, default_value = IMAGE_STORE)]
    pub image_store: PathBuf,
    /// The image store's limit, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub image_store_mib: u64,
    /// Registries: insecure ones, CA files, credentials (see docs/images.md).
    #[arg(long, default_value = REGISTRIES_FILE)]
    pub registries: PathBuf,
    /// Serve the Kubernetes CRI to a kubelet on this unix socket (root only, mode 0600);
    /// off unless given. /run/aurae/cri.sock is where the appliance puts it.
    #[arg(long, value_name = "PATH")]
    pub cri_socket: Option<PathBuf>,
    /// Where the CRI's streaming server (exec through kubelet) listens; port 0: any free
    /// port. The URLs `Exec` answers name this address.
    #[arg(long, value_name = "ADDR:PORT", default_value = crate::cri::DEFAULT_STREAM)]
    pub cri_stream: SocketAddr,
    /// Set by Spawn's cell fallback: this auraed is a child instance in its own cell.
    #[arg(long, hide = true)]
    pub spawned_in_cell: bool,
    /// With --spawned-in-cell: make bridge aurae0 with this address for grandchildren.
    #[arg(long, hide = true)]
    pub bridge_ip: Option<crate::net::Ipv4Cidr>,
    /// With --spawned-in-cell: the instance's hostname (its cell's own by default).
    #[arg(long, hide = true)]
    pub hostname: Option<String>,
}

/// Runs auraed as PID 1. Never returns.
pub fn run_pid1() -> ! {
    crate::logging::install_panic_hook();
    // First of all: off the initramfs, so cells can pivot_root (see init::switch_root).
    let switched = init::switch_root::leave_initramfs();
    if let Ok(true) = switched {
        // The same program from the new root; the initramfs copy of it is freed.
        let argv: Vec<std::ffi::CString> = std::env::args_os()
            .filter_map(|a| std::ffi::CString::new(a.into_encoded_bytes()).ok())
            .collect();
        let err = nix::unistd::execv(c"/init", &argv);
        // Still running: the copy in memory works as well, it only costs its size twice.
        eprintln!("auraed: re-exec from the new root failed ({err:?}); continuing");
    }
    let (cfg, mut report) = init::pid1_bringup();
    match switched {
        Err(e) => report.fail(
            "leave the initramfs",
            format!("{e}; cells cannot have a root of their own"),
        ),
        Ok(_) => tracing::debug!("root: not the initramfs; cells can pivot_root"),
    }
    raise_nofile(&mut report);
    // Where clients put VM kernels, initramfs images and disks (runtime::vm).
    let vm_dir = crate::runtime::vm::VM_FILE_DIRS[0];
    if let Err(e) = std::fs::create_dir_all(vm_dir) {
        report.fail(&format!("mkdir {vm_dir}"), e.to_string());
    }
    let files = TlsFiles::in_dir(std::path::Path::new(DEFAULT_PKI_DIR), "server");
    // The image store: on the data disk when one is named (at most 95% of it), else in RAM
    // (a quarter of it); aurae.images_mib sets the limit either way.
    let disk = match &cfg.data_device {
        None => None,
        Some(dev) => match init::data::mount_data(dev) {
            Ok(d) => Some(d),
            Err(e) => {
                report.fail("aurae.data", format!("{e}; images are kept in RAM"));
                None
            }
        },
    };
    if cfg.cri_socket.is_some() {
        // A kubelet on the node keeps pods' volumes and logs there: on the data disk when
        // there is one (they survive a reboot), else in RAM.
        for (dir, on_disk) in crate::cri::KUBELET_DIRS {
            let made = match &disk {
                Some(_) => init::data::bind_from_data(std::path::Path::new(dir), on_disk).map_err(|e| e.to_string()),
                None => std::fs::create_dir_all(dir).map_err(|e| e.to_string()),
            };
            if let Err(e) = made {
                report.fail(&format!("kubelet's {dir}"), e);
            }
        }
        // Shared, so what kubelet mounts in a pod's directory after its sandbox started
        // (a container's subPaths) reaches a `cell` sandbox's instance as well.
        let (root, _) = crate::cri::KUBELET_DIRS[0];
        if let Err(e) = init::data::share(std::path::Path::new(root)) {
            report.fail(&format!("kubelet's {root}"), e.to_string());
        }
    }
    let images = match &disk {
        Some(d) => ImageOptions {
            store: std::path::Path::new(init::data::DATA_DIR).join("images"),
            limit: cfg.images_max_bytes.unwrap_or(d.capacity_bytes / 100 * 95),
            registries: REGISTRIES_FILE.into(),
            insecure: cfg.insecure_registries.clone(),
            cri_socket: cfg.cri_socket.clone(),
            cri_stream: cfg.cri_stream,
        },
        None => ImageOptions {
            store: IMAGE_STORE.into(),
            limit: cfg
                .images_max_bytes
                .unwrap_or_else(|| crate::node::mem_total_bytes() / 4),
            registries: REGISTRIES_FILE.into(),
            insecure: cfg.insecure_registries.clone(),
            cri_socket: cfg.cri_socket.clone(),
            cri_stream: cfg.cri_stream,
        },
    };
    let (action, grace) = match runtime() {
        Ok(rt) => rt
            .block_on(serve_until_power_action(true, cfg.listen, files, report, images))
            .unwrap_or((PowerAction::PowerOff, Duration::from_secs(1))),
        Err(e) => {
            tracing::error!("cannot build the async runtime: {e}; powering off");
            (PowerAction::PowerOff, Duration::from_secs(1))
        }
    };
    init::power::finish_pid1(action, grace)
}

/// Runs auraed as a daemon. Returns the process exit code.
pub fn run_daemon(args: DaemonArgs) -> std::process::ExitCode {
    let Some(level) = crate::logging::parse_level(&args.log_level) else {
        eprintln!(
            "auraed: --log-level '{}' is not one of error, warn, info, debug, trace",
            args.log_level
        );
        return std::process::ExitCode::from(2);
    };
    crate::logging::init(level, false);
    crate::logging::install_panic_hook();
    tracing::info!(
        "auraed {} starting as a daemon (pid {})",
        crate::VERSION,
        std::process::id()
    );
    let report = if args.spawned_in_cell {
        init::cell_instance_bringup(args.bridge_ip, args.hostname.as_deref())
    } else {
        init::daemon_bringup()
    };
    let files = TlsFiles::in_dir(&args.pki_dir, "server");
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot build the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let images = ImageOptions {
        store: args.image_store.clone(),
        limit: args.image_store_mib << 20,
        registries: args.registries.clone(),
        insecure: Vec::new(),
        cri_socket: args.cri_socket.clone(),
        cri_stream: args.cri_stream,
    };
    match rt.block_on(serve_until_power_action(false, args.listen, files, report, images)) {
        Ok(_) => {
            tracing::info!("auraed stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves until a power action (rpc, signal, power button) and returns it with the grace
/// period for stopping workloads. Err only when serving was impossible.
/// Where the node keeps images (under /var/lib/aurae, which no cell sees).
pub const IMAGE_STORE: &str = "/var/lib/aurae/images";
/// The registries file (admin-written, like the rest of /etc/aurae).
pub const REGISTRIES_FILE: &str = "/etc/aurae/registries.toml";

/// The image store and registries file a node serves images from, and where it serves
/// the CRI (which drives them) to a kubelet.
struct ImageOptions {
    store: PathBuf,
    limit: u64,
    registries: PathBuf,
    /// Insecure registries from the kernel command line, besides the file's.
    insecure: Vec<String>,
    cri_socket: Option<PathBuf>,
    /// Where the CRI's streaming server listens.
    cri_stream: SocketAddr,
}

async fn serve_until_power_action(
    pid1: bool,
    listen: SocketAddr,
    files: TlsFiles,
    mut report: init::InitReport,
    image_options: ImageOptions,
) -> Result<(PowerAction, Duration), server::ServerError> {
    // No pull reaches the instances' bridges unless its registry is listed.
    let bridges: Vec<crate::net::Ipv4Cidr> = (report.bridge.iter().map(|(_, c)| *c))
        .chain(report.named_bridges.iter().filter_map(|b| b.address))
        .collect();
    let images = crate::image::catalog::Images::open(
        &image_options.store,
        image_options.limit,
        &image_options.registries,
        &image_options.insecure,
        &bridges,
    )
    .map(Arc::new)
    .map_err(Arc::new);
    if let Err(e) = &images {
        report.fail("images", e.to_string());
    }
    let cri_listener = match &image_options.cri_socket {
        None => None,
        Some(path) => match server::cri_socket::bind(path) {
            Ok(l) => Some((l, path.clone())),
            Err(e) => {
                report.fail("aurae.cri", format!("{e}; the CRI is served on the API port only"));
                None
            }
        },
    };
    let stream_listener = match tokio::net::TcpListener::bind(image_options.cri_stream).await {
        Ok(l) => Some(l),
        Err(e) => {
            report.fail(
                "aurae.cri_stream",
                format!("listen on {}: {e}; the CRI's Exec is refused", image_options.cri_stream),
            );
            None
        }
    };
    if let Err(e) = init::reaper::spawn_reaper_task() {
        tracing::error!("cannot watch SIGCHLD: {e}");
        report.failures.push(init::InitFailure {
            step: "reaper".into(),
            error: e.to_string(),
        });
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    if let Err(e) = init::power::watch_signals(tx.clone(), pid1) {
        tracing::error!("cannot watch shutdown signals: {e}");
    }
    if pid1 {
        let n = init::power::watch_power_button(tx.clone());
        tracing::info!("watching {n} input device(s) for the power button");
    }
    let material = files.load().ok();
    if pid1 && !files.cert.exists() {
        // A fleet node whose MAC the boot server does not know booted without a pki layer:
        // it says so, and what to do, rather than serving with another node's key.
        tracing::error!(
            "this machine has no identity ({} is missing) and will not serve. Give it one: \
             `auraed pki node DIR NAME`, then its pki layer in the initramfs (a PXE boot \
             directory: rootfs/pxe.sh ... MAC=NAME). Its MACs: {}",
            files.cert.display(),
            crate::node::macs().join(", ")
        );
    }
    let spiffe_id = material
        .as_ref()
        .and_then(|m| crate::pki::spiffe_id_of_pem(&m.cert_pem))
        .unwrap_or_default();
    // The node's certificate, renewable in place (serve reports a broken one).
    let identity = material.as_ref().and_then(|m| {
        crate::pki::tls::LiveIdentity::from_pem(&m.cert_pem, &m.key_pem)
            .map(Arc::new)
            .map_err(|e| tracing::error!("node certificate: {e}"))
            .ok()
    });
    let pki_dir = files.cert.parent().map(std::path::Path::to_path_buf);
    let policy = load_policy(pki_dir.as_deref());
    let root_pem = material.as_ref().map(|m| m.ca_pem.clone());
    // Filled by the runtime when it frees an instance, read by authorization.
    let revoked = Arc::new(crate::pki::revoked::Revoked::default());
    let (runtime, can_spawn) = assemble_runtime(
        &report,
        &spiffe_id,
        pki_dir.clone(),
        policy.as_ref().ok(),
        identity.clone().zip(root_pem.clone()),
        revoked.clone(),
        images.clone(),
    );
    let runtime = Arc::new(runtime);
    let facts = crate::cri::NodeFacts {
        runtime_not_ready: (!can_spawn).then(|| {
            "this node has no spawn identity (spawn-ca.crt and spawn-ca.key beside its certificate), so it cannot spawn pods' instances".to_owned()
        }),
        pod_bridge: report.bridge.as_ref().map(|(_, c)| *c),
    };
    let cri = Arc::new(crate::cri::Cri::new(runtime.clone(), images.clone(), facts));
    tokio::spawn(cri.clone().keep_mounts_fresh());
    if let Some(l) = stream_listener {
        match l.local_addr() {
            Ok(addr) => {
                let streams = Arc::new(crate::cri::stream::Streams::new(addr, Default::default()));
                cri.set_streams(streams.clone());
                tokio::spawn(crate::cri::stream::serve(l, streams, cri.clone()));
                tracing::info!("CRI streaming (exec) on {addr}");
            }
            Err(e) => tracing::error!("CRI streaming: its listener has no address: {e}"),
        }
    }
    let root = root_pem.as_deref().and_then(crate::pki::first_der);
    let auth = server::authz::Authorizer::new(policy, &spiffe_id, root, revoked);
    let mut ctx = NodeContext::new(pid1, report, spiffe_id, tx, runtime, auth, identity);
    ctx.pki_dir = pki_dir;
    ctx.images = images;
    ctx.cri = Some(cri.clone());
    let ctx = Arc::new(ctx);
    // The CRI's socket ends with the API: when `serve` returns, `cri_stop` is dropped.
    let (cri_stop, cri_stopped) = tokio::sync::oneshot::channel::<()>();
    let cri_task = cri_listener.map(|(listener, path)| {
        tokio::spawn(server::cri_socket::serve(listener, path, cri, async {
            let _ = cri_stopped.await;
        }))
    });

    let mut chosen = None;
    // On a power action, workloads are stopped while the API still answers, so Wait and
    // followed Logs calls end with the workloads' final state instead of holding up shutdown.
    let stop_workloads = async {
        chosen = rx.recv().await;
        tracing::info!("stopping workloads (grace {:?})", ctx.grace());
        ctx.runtime.stop_all(ctx.grace(), !pid1).await;
    };
    let served = server::serve(listen, &files, ctx.clone(), stop_workloads).await;
    drop(cri_stop);
    if let Some(task) = cri_task {
        // Calls in flight on the socket get the grace period workloads got, no more.
        let _ = tokio::time::timeout(ctx.grace(), task).await;
    }
    if let Err(e) = served {
        if !pid1 {
            return Err(e);
        }
        // PID 1 stays up and still obeys signals and the power button, so the operator
        // sees the failure on the console and can act.
        tracing::error!("cannot serve the API: {e}; waiting for a shutdown signal or the power button");
        chosen = rx.recv().await;
    }
    Ok((chosen.unwrap_or(PowerAction::PowerOff), ctx.grace()))
}

/// PID 1 starts with the kernel's default of 1024 descriptors, which 1024 idle connections
/// exhaust. Raise the soft and hard limits to the kernel's ceiling (`fs/nr_open`), capped
/// at 1 Mi; workloads inherit nothing from this (their cells set their own).
fn raise_nofile(report: &mut init::InitReport) {
    use nix::sys::resource::{setrlimit, Resource};
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20)
        .min(1 << 20);
    match setrlimit(Resource::RLIMIT_NOFILE, ceiling, ceiling) {
        Ok(()) => tracing::info!("RLIMIT_NOFILE {ceiling}"),
        Err(e) => report.fail("RLIMIT_NOFILE", e.to_string()),
    }
}

/// The node's policy (`policy.toml` beside its certificates), or why it has none; a node
/// without one serves but refuses every call with that reason.
fn load_policy(
    pki_dir: Option<&std::path::Path>,
) -> Result<crate::pki::policy::Policy, crate::pki::policy::PolicyError> {
    let dir = pki_dir.ok_or(crate::pki::policy::PolicyError::NoPkiDir)?;
    match crate::pki::policy::Policy::load(dir) {
        Ok(p) => {
            tracing::info!(
                "policy: {} rule(s) from {}",
                p.rules.len(),
                dir.join(crate::pki::policy::FILE_NAME).display()
            );
            Ok(p)
        }
        Err(e) => {
            tracing::error!("policy: {e}; every call will be refused (create it with `auraed pki grant`)");
            Err(e)
        }
    }
}

/// The node's runtime: workloads under the cgroup bring-up prepared, VM TAPs and instances
/// on its bridge, and Spawn when the PKI has a spawn CA beside the node's own certificate.
/// Children get a policy derived from `policy` (see `Policy::for_child`). Also says whether
/// the node can spawn (has a spawn identity).
fn assemble_runtime(
    report: &init::InitReport,
    spiffe_id: &str,
    pki_dir: Option<PathBuf>,
    policy: Option<&crate::pki::policy::Policy>,
    tls: Option<(Arc<crate::pki::tls::LiveIdentity>, String)>,
    revoked: Arc<crate::pki::revoked::Revoked>,
    images: crate::image::Catalog,
) -> (crate::runtime::Runtime, bool) {
    let mut runtime = crate::runtime::Runtime::new(report.workloads_cgroup.clone(), None);
    let dir = pki_dir
        .clone()
        .filter(|d| d.join("spawn-ca.key").exists() && !spiffe_id.is_empty());
    let spawn_identity = match (dir, tls) {
        (Some(dir), Some((identity, root_pem))) => Some(crate::runtime::SpawnIdentity {
            pki_dir: dir,
            spiffe_id: spiffe_id.to_owned(),
            policy: policy.cloned().unwrap_or_default(),
            identity,
            root_pem,
            revoked,
        }),
        _ => None,
    };
    let can_spawn = spawn_identity.is_some();
    runtime.configure(crate::runtime::Settings {
        bridge: report.bridge.clone(),
        named_bridges: report.named_bridges.clone(),
        max_workloads: report.max_workloads,
        child_check: report.child_check,
        pki_dir,
        spawn_identity,
        images,
    });
    (runtime, can_spawn)
}

/// PID 1's one thread of async work. It looks for new I/O every 4 tasks run (tokio's
/// default is 61): under a flood of calls on one connection, another client's request is
/// noticed after a few tasks rather than after dozens.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .event_interval(4)
        .build()
}
