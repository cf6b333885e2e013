//! Spawn: a copy of auraed booted in a microVM. The parent hands the child its own kernel,
//! an initramfs built from its own binary (`spawn::image`), a fresh SVID minted by its spawn
//! CA, an address on its bridge, and reaches the child's API over mTLS with its own identity.
//!
//! Addressing is `spawn::addressing`: the child's eth0 is host N on this node's bridge, its
//! own bridge is one generation down, and no two subnets along a line of descent overlap.
//!
//! Spawn waits for the child to serve as long as the caller does (`serving_within`, from
//! the caller's gRPC deadline); when it gives up it says how far the child got.

use super::error::{Result, RuntimeError};
use super::executable::Executable;
use super::logs::{self, LogBuffer};
use super::names::ExecName;
use super::spec::{Isolation, Resources, VmSpec};
use super::table::Workload;
use super::vm::{VirtualMachine, VmView};
use super::{Kind, Phase, Runtime};
use crate::pb;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where child images are written (RAM on the appliance).
const IMAGE_DIR: &str = "/run/aurae/instances";
pub const CHILD_PORT: u16 = 8443;

/// What a node needs to spawn: its PKI directory (ca.crt, server.*, spawn-ca.*) and
/// its own SPIFFE ID, under which children are named.
#[derive(Debug, Clone)]
pub struct SpawnIdentity {
    pub pki_dir: PathBuf,
    pub spiffe_id: String,
}

/// Where a child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationKind {
    Vm,
    Cell,
}

#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub name: ExecName,
    /// None: a VM where KVM is usable, else a cell.
    pub isolation: Option<IsolationKind>,
    pub vcpus: u8,
    pub memory_bytes: u64,
    pub svid_ttl: Duration,
    /// How long Spawn may wait for the child to serve (see `server::deadline`).
    pub serving_within: Duration,
}

/// What the child runs in: a microVM, or (the fallback) an auraed process in a cell of its
/// own with a veth onto the bridge.
pub enum Body {
    Vm(Arc<VirtualMachine>),
    Cell(Arc<Executable>),
}

impl Body {
    pub fn ended(&self) -> bool {
        match self {
            Body::Vm(v) => v.ended(),
            Body::Cell(e) => e.phase().ended(),
        }
    }

    pub async fn wait(&self) {
        match self {
            Body::Vm(v) => v.wait().await,
            Body::Cell(e) => e.wait().await,
        }
    }

    /// The VM's console, or the cell child's stdout/stderr.
    pub fn logs(&self) -> Arc<LogBuffer> {
        match self {
            Body::Vm(v) => v.logs(),
            Body::Cell(e) => e.logs.clone(),
        }
    }

    /// How it ended, for errors.
    fn outcome(&self) -> String {
        match self {
            Body::Vm(v) => {
                let v = v.view();
                format!("{} {}", v.exit_reason, v.error)
            }
            Body::Cell(e) => format!("{:?}", e.view()),
        }
    }
}

pub struct Instance {
    pub name: ExecName,
    pub body: Body,
    pub address: SocketAddr,
    pub spiffe_id: String,
    /// mTLS channel to the child's API, as the parent.
    pub channel: tonic::transport::Channel,
    host: u8,
    /// The child's image (VM) or PKI directory (cell): it holds the child's keys.
    files: PathBuf,
    stop_requested: AtomicBool,
}

#[derive(Debug, Clone, Default)]
pub struct InstanceView {
    pub name: String,
    pub phase: Option<Phase>,
    pub isolation: Option<IsolationKind>,
    pub address: String,
    pub spiffe_id: String,
    pub error: String,
    pub vm: Option<VmView>,
    /// The child auraed's pid on this node (the VMM's for a VM).
    pub pid: u32,
}

impl Instance {
    pub fn view(&self) -> InstanceView {
        let mut v = InstanceView {
            name: self.name.to_string(),
            address: self.address.to_string(),
            spiffe_id: self.spiffe_id.clone(),
            ..Default::default()
        };
        match &self.body {
            Body::Vm(vm) => {
                let vm = vm.view();
                v.isolation = Some(IsolationKind::Vm);
                v.phase = vm.phase;
                v.error = vm.error.clone();
                v.pid = vm.pid;
                v.vm = Some(vm);
            }
            Body::Cell(e) => {
                let e = e.view();
                v.isolation = Some(IsolationKind::Cell);
                v.pid = e.pid;
                v.error = e.error;
                v.phase = match e.phase {
                    Some(p) if p.ended() && self.stop_requested.load(Ordering::Relaxed) => Some(Phase::Stopped),
                    p => p,
                };
            }
        }
        v
    }
}

fn pre(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Precondition(msg.into())
}

impl Runtime {
    /// The channel to a running child, for forwarding.
    pub fn instance_channel(&self, name: &str) -> Result<tonic::transport::Channel> {
        let i = self.table().get::<Instance>(name)?;
        if i.body.ended() {
            return Err(pre(format!("instance '{name}' has ended")));
        }
        Ok(i.channel.clone())
    }

    /// Boots a child auraed in a microVM and returns once it serves.
    pub async fn spawn(&self, spec: InstanceSpec) -> Result<InstanceView> {
        self.usable()?;
        let Some(id) = self.spawn_identity.clone() else {
            return Err(pre(
                "this node has no spawn identity (PKI directory with spawn-ca.{crt,key})",
            ));
        };
        let Some((bridge, subnet)) = self.bridge.clone() else {
            return Err(pre(
                "this node has no bridge for instances (auraed makes one only as PID 1)",
            ));
        };
        let kvm = crate::vmm::kvm_usable();
        let isolation = match (spec.isolation, kvm) {
            (Some(IsolationKind::Vm), Err(why)) => {
                return Err(pre(format!(
                    "isolation: {why}; a VM instance needs KVM (leave isolation unset to fall back to a cell)"
                )))
            }
            (Some(i), _) => i,
            (None, Ok(())) => IsolationKind::Vm,
            (None, Err(why)) => {
                tracing::info!("spawn {}: {why}; falling back to a cell", spec.name);
                IsolationKind::Cell
            }
        };
        self.table().vacant(Kind::Instance, spec.name.as_str())?;
        let deadline = tokio::time::Instant::now() + spec.serving_within;
        // Checked before a host number is taken: a node too deep to have children says so.
        crate::spawn::addressing::child_net(subnet, 254).map_err(|e| pre(e.to_string()))?;
        let host = self.take_host()?;
        let result = self
            .spawn_on(&spec, isolation, &id, &bridge, subnet, host, deadline)
            .await;
        match result {
            Ok(i) => {
                let v = i.view();
                let inserted = self.table().insert_unique(Workload::Instance(i.clone()));
                if let Err(taken) = inserted {
                    self.kill_instance(&i).await;
                    let _ = self.discard_instance(&i).await;
                    self.table().hosts.remove(&host);
                    return Err(taken);
                }
                Ok(v)
            }
            Err(e) => {
                self.table().hosts.remove(&host);
                Err(e)
            }
        }
    }

    fn take_host(&self) -> Result<u8> {
        let mut t = self.table();
        // From the top down, away from addresses people pick by hand for plain VMs.
        let free = (2..=254u8).rev().find(|h| !t.hosts.contains(h));
        let Some(h) = free else {
            return Err(RuntimeError::Exhausted("every address on the bridge is taken".into()));
        };
        t.hosts.insert(h);
        Ok(h)
    }

    #[allow(clippy::too_many_arguments)]
    async fn spawn_on(
        &self,
        spec: &InstanceSpec,
        isolation: IsolationKind,
        id: &SpawnIdentity,
        bridge: &str,
        subnet: crate::init::cmdline::Ipv4Cidr,
        host: u8,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Instance>> {
        let net = crate::spawn::addressing::child_net(subnet, host).map_err(|e| pre(e.to_string()))?;
        let (ip, child_bridge) = (net.ip, net.bridge);
        let spiffe_id = format!("{}/instance/{}", id.spiffe_id, spec.name);
        let pki = mint_child(id, &spiffe_id, spec, ip)?;
        // The channel is lazy: made now, so bad TLS material fails before anything boots.
        let address = SocketAddr::from((ip, CHILD_PORT));
        let channel = child_channel(id, spec.name.as_str(), address)?;
        std::fs::create_dir_all(IMAGE_DIR).map_err(|source| RuntimeError::Io {
            what: "mkdir",
            path: IMAGE_DIR.into(),
            source,
        })?;
        let (body, files) = match isolation {
            IsolationKind::Vm => {
                let image = PathBuf::from(IMAGE_DIR).join(format!("{}.cpio", spec.name));
                crate::spawn::image::write(&image, &pki).map_err(pre)?;
                let cmdline = format!(
                    "{} quiet aurae.vmm=1 aurae.hostname={} aurae.ip={ip}/24 aurae.gw={} aurae.bridge_ip={child_bridge}",
                    crate::vmm::DEFAULT_VM_CMDLINE,
                    spec.name,
                    net.gateway
                );
                let vm_spec = VmSpec {
                    name: spec.name.clone(),
                    kernel: crate::vmm::NODE_KERNEL.into(),
                    initramfs: Some(image.clone()),
                    cmdline,
                    vcpus: spec.vcpus,
                    memory_bytes: spec.memory_bytes,
                    network: true,
                    disks: Vec::new(),
                    resources: Resources::default(),
                    ready_within: deadline.saturating_duration_since(tokio::time::Instant::now()),
                };
                tracing::info!(
                    "spawning instance {} (VM) at {ip} on {bridge} as {spiffe_id}",
                    spec.name
                );
                match self.boot_vm(vm_spec, false).await {
                    Ok(vm) => (Body::Vm(vm), image),
                    Err(e) => {
                        let _ = std::fs::remove_file(&image);
                        return Err(e);
                    }
                }
            }
            IsolationKind::Cell => {
                let dir = PathBuf::from(IMAGE_DIR).join(spec.name.as_str());
                crate::spawn::image::write_pki_dir(&dir, &pki).map_err(pre)?;
                tracing::info!(
                    "spawning instance {} (cell) at {ip} on {bridge} as {spiffe_id}",
                    spec.name
                );
                match self
                    .start_cell_child(spec, &dir, bridge, ip, net.gateway, child_bridge)
                    .await
                {
                    Ok(e) => (Body::Cell(e), dir),
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(e);
                    }
                }
            }
        };
        let instance = Instance {
            name: spec.name.clone(),
            body,
            address,
            spiffe_id,
            channel,
            host,
            files,
            stop_requested: AtomicBool::new(false),
        };
        match self.await_serving(&instance, deadline).await {
            Ok(()) => Ok(Arc::new(instance)),
            Err(e) => {
                self.kill_instance(&instance).await;
                let _ = self.discard_instance(&instance).await;
                Err(e)
            }
        }
    }

    /// The cell fallback: the child auraed as a daemon in a private cell with every
    /// namespace new, and a veth pair from the bridge to its eth0.
    async fn start_cell_child(
        &self,
        spec: &InstanceSpec,
        pki_dir: &std::path::Path,
        bridge: &str,
        ip: Ipv4Addr,
        gateway: Ipv4Addr,
        child_bridge: crate::init::cmdline::Ipv4Cidr,
    ) -> Result<Arc<Executable>> {
        let argv = vec![
            "auraed".into(),
            "daemon".into(),
            "--listen".into(),
            format!("0.0.0.0:{CHILD_PORT}"),
            "--pki-dir".into(),
            pki_dir.to_string_lossy().into_owned(),
            "--spawned-in-cell".into(),
            "--bridge-ip".into(),
            child_bridge.to_string(),
        ];
        let resources = Resources {
            memory_max: Some(spec.memory_bytes),
            ..Resources::default()
        };
        let e = self
            .launch_self(&spec.name, argv, Isolation::default(), resources, logs::Stream::Stdout)
            .await?;
        let holder = e.own_cell_holder_pid();
        let n = self.taps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let host_end = format!("aveth{n}");
        let plumbed = match holder {
            None => Err(pre("the child's cell has no holder to take its network namespace from")),
            Some(pid) => plumb_veth(&host_end, pid, bridge, ip, gateway).await,
        };
        if let Err(err) = plumbed {
            e.stop(libc::SIGKILL, Duration::ZERO).await;
            let _ = self.discard_exec(&e, spec.name.as_str()).await;
            return Err(err);
        }
        Ok(e)
    }

    async fn kill_instance(&self, i: &Instance) {
        match &i.body {
            Body::Vm(vm) => self.stop_vm(vm, Duration::ZERO).await,
            Body::Cell(e) => e.stop(libc::SIGKILL, Duration::ZERO).await,
        }
    }

    async fn discard_instance(&self, i: &Instance) -> Result<()> {
        match &i.body {
            Body::Vm(vm) => self.discard_vm(vm).await?,
            Body::Cell(e) => self.discard_exec(e, i.name.as_str()).await?,
        }
        let _ = if i.files.is_dir() {
            std::fs::remove_dir_all(&i.files)
        } else {
            std::fs::remove_file(&i.files)
        };
        Ok(())
    }

    /// Probes the child's health until it serves, it ends, or `deadline` passes.
    async fn await_serving(&self, i: &Instance, deadline: tokio::time::Instant) -> Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            if i.body.ended() {
                return Err(pre(format!(
                    "the child ended before it served: {}; its log ended with: {}",
                    i.body.outcome(),
                    log_tail(&i.body.logs(), 8)
                )));
            }
            let mut h = tonic_health::pb::health_client::HealthClient::new(i.channel.clone());
            let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
            let probe = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_secs(2));
            let last = match tokio::time::timeout(probe, h.check(req)).await {
                Ok(Ok(r)) if r.get_ref().status == 1 => return Ok(()),
                Ok(Ok(r)) => format!("health status {}", r.get_ref().status),
                Ok(Err(e)) => e.message().to_owned(),
                Err(_) => format!("no answer within {probe:?}"),
            };
            if tokio::time::Instant::now() >= deadline {
                let logs = i.body.logs();
                return Err(RuntimeError::DeadlineExceeded(format!(
                    "the child did not serve at {} within {:.1} s (the caller's deadline, or serving_timeout_millis): {}; last probe: {last}; its console ended with: {}",
                    i.address,
                    started.elapsed().as_secs_f64(),
                    progress(&logs),
                    log_tail(&logs, 8)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Graceful: the child is asked to power off (over its API) and given `grace`; then
    /// the VM is stopped by its VMM.
    pub async fn stop_instance(&self, i: &Instance, grace: Duration) {
        if !i.body.ended() {
            i.stop_requested.store(true, Ordering::Relaxed);
            let mut n = pb::node_client::NodeClient::new(i.channel.clone());
            let req = pb::ShutdownRequest {
                grace_period_millis: grace.as_millis().min(u128::from(u32::MAX)) as u32,
            };
            if let Err(e) = tokio::time::timeout(Duration::from_secs(5), n.shutdown(req)).await {
                tracing::warn!("instance {}: shutdown request: {e}", i.name);
            }
            let _ = tokio::time::timeout(grace + Duration::from_secs(2), i.body.wait()).await;
        }
        match &i.body {
            Body::Vm(vm) => self.stop_vm(vm, Duration::from_secs(2)).await,
            Body::Cell(e) => e.stop(libc::SIGTERM, Duration::from_secs(2)).await,
        }
    }

    pub(super) async fn free_instance(&self, i: &Arc<Instance>) -> Result<()> {
        let name = &i.name;
        if !i.body.ended() {
            return Err(pre(format!(
                "instance '{name}' is running; stop it first (aer instance stop {name})"
            )));
        }
        self.discard_instance(i).await?;
        let mut t = self.table();
        t.remove(Kind::Instance, name.as_str());
        t.hosts.remove(&i.host);
        Ok(())
    }
}

/// How far a child that does not serve yet got, read from its console (a VM's serial
/// port, or the cell child's stderr): auraed logs "starting" first thing as PID 1 or daemon.
fn progress(logs: &LogBuffer) -> String {
    let mut cursor = logs.start_cursor(None);
    let batch = logs.read(&mut cursor, usize::MAX);
    let lines = batch.dropped as usize + batch.lines.len();
    let auraed = batch
        .lines
        .iter()
        .any(|l| String::from_utf8_lossy(&l.bytes).contains("starting as"));
    match (lines, auraed) {
        (0, _) => "it has printed nothing yet (its kernel is still booting)".into(),
        (n, false) => format!("its kernel printed {n} line(s) but auraed has not started yet"),
        (n, true) => format!("auraed started ({n} console line(s)) but does not serve yet"),
    }
}

/// The last `n` lines of a log, joined with " | ".
fn log_tail(logs: &LogBuffer, n: u64) -> String {
    let mut cursor = logs.start_cursor(Some(n));
    let batch = logs.read(&mut cursor, n as usize);
    batch
        .lines
        .iter()
        .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn mint_child(
    id: &SpawnIdentity,
    spiffe_id: &str,
    spec: &InstanceSpec,
    ip: Ipv4Addr,
) -> Result<crate::spawn::image::ChildPki> {
    let pki_err = |e: crate::pki::PkiError| pre(format!("minting the child's identity: {e}"));
    let spawn_ca = crate::pki::read_pair(&id.pki_dir, "spawn-ca").map_err(pki_err)?;
    let ca_path = id.pki_dir.join("ca.crt");
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(|source| RuntimeError::Io {
        what: "read",
        path: ca_path,
        source,
    })?;
    let name = spec.name.to_string();
    let mut server = crate::pki::mint_svid(
        &spawn_ca,
        spiffe_id,
        &name,
        std::slice::from_ref(&name),
        &[ip.into()],
        spec.svid_ttl,
    )
    .map_err(pki_err)?;
    server.cert_pem.push_str(&spawn_ca.cert_pem);
    let mut child_ca = crate::pki::mint_intermediate(
        &spawn_ca,
        &format!("{spiffe_id}/spawn-ca"),
        &format!("Aurae spawn CA ({name})"),
        spec.svid_ttl,
    )
    .map_err(pki_err)?;
    child_ca.cert_pem.push_str(&spawn_ca.cert_pem);
    Ok(crate::spawn::image::ChildPki {
        ca_pem,
        server,
        spawn_ca: child_ca,
    })
}

/// A lazily connecting mTLS channel to the child, verified as `name` against the root CA,
/// presenting this node's own certificate.
fn child_channel(id: &SpawnIdentity, name: &str, address: SocketAddr) -> Result<tonic::transport::Channel> {
    let files = crate::pki::tls::TlsFiles::in_dir(&id.pki_dir, "server");
    let tls = files
        .load()
        .map_err(|e| pre(format!("this node's TLS material: {e}")))?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{address}"))
        .and_then(|e| {
            e.connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .tls_config(tls.client_config(name))
        })
        .map_err(|e| pre(format!("endpoint for {address}: {e}")))?;
    Ok(endpoint.connect_lazy())
}

/// Creates the veth pair (the host end on `bridge`, the peer as eth0 in the network
/// namespace of `holder`) and gives eth0 its address and default route, from a thread
/// that enters that namespace.
async fn plumb_veth(host_end: &str, holder: i32, bridge: &str, ip: Ipv4Addr, gateway: Ipv4Addr) -> Result<()> {
    use crate::net::{ioctl, netlink};
    let io = |e: std::io::Error| pre(format!("veth for the child: {e}"));
    netlink::create_veth(host_end, "eth0", holder as u32).map_err(io)?;
    ioctl::bridge_add(bridge, host_end).map_err(io)?;
    ioctl::link_up(host_end).map_err(io)?;
    let ns = format!("/proc/{holder}/ns/net");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("veth-setup".into())
        .spawn(move || {
            let r = (|| -> std::io::Result<()> {
                let f = std::fs::File::open(&ns)?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                ioctl::set_ipv4("eth0", ip, 24)?;
                ioctl::link_up("eth0")?;
                ioctl::add_default_route(gateway)
            })();
            let _ = tx.send(r);
        })
        .map_err(io)?;
    rx.await.map_err(|_| pre("veth setup thread died"))?.map_err(io)
}
