//! Instances: the workload a Spawn makes, a copy of auraed in a microVM (or, where KVM is
//! unusable, in a cell of its own). The runtime owns the body (the VM or the cell child),
//! its place in the table and its lifecycle; `crate::runtime::spawn` supplies the pieces: the
//! child's address (`addressing`), identity, image, veth, and `child`, the code that talks
//! to it. Spawn waits for the child to serve as long as the caller does
//! (`serving_within`, from the caller's gRPC deadline) and says how far it got when it
//! gives up.

mod addresses;
mod cell_child;
pub(crate) mod health;
mod renew;

use crate::runtime::error::Lack;
pub(crate) use addresses::use_pod_subnet;
use addresses::{give_back, take_attachments, take_host_number};
use cell_child::start_cell_child;
use renew::{half_life, renew_at_half_life, svid_expiry};

use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::host::Host;
use crate::runtime::logs::{self, LogBuffer};
use crate::runtime::names::ExecName;
use crate::runtime::process;
use crate::runtime::process::Process;
pub use crate::runtime::spawn::identity::SpawnIdentity;
use crate::runtime::spawn::{addressing, child, SpawnError};
use crate::runtime::spec::{Confinement, Isolation, NetAttachment, Resources, VmSpec, MAX_ATTACHMENTS};
use crate::runtime::vm;
use crate::runtime::vm::{VirtualMachine, VmView};
use crate::runtime::Phase;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where child images are written (RAM on the appliance).
/// Where instances' initramfs images and PKI directories go (`Host::instance_dir`).
pub const INSTANCE_DIR: &str = "/run/aurae/instances";
pub const CHILD_PORT: u16 = 8443;

pub use crate::values::IsolationKind;

#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub name: ExecName,
    /// None: a VM where KVM is usable, else a cell.
    pub isolation: Option<IsolationKind>,
    pub vcpus: u8,
    pub memory_bytes: u64,
    pub svid_ttl: Duration,
    /// How long Spawn may wait for the child to serve (from the caller's deadline).
    pub serving_within: Duration,
    /// Extra interfaces on named node bridges: eth1, eth2, ... in this order.
    pub attachments: Vec<NetAttachment>,
    /// The child's hostname (a pod's, as the CRI gives it); None: its name.
    pub hostname: Option<String>,
    /// In the node's network namespace (a CRI `hostNetwork` pod; a cell only): no veth,
    /// and the child serves its API on a loopback port of the node.
    pub host_network: bool,
    /// Its address from the pod subnet kubelet gave (a CRI sandbox's), once there is one;
    /// else from the bridge's own subnet.
    pub pod_subnet: bool,
    /// A directory of the node bound into a cell instance at
    /// [`POD_DIR`](crate::runtime::volume::POD_DIR) (a CRI sandbox's kubelet pod directory,
    /// with the `cell` handler), which its cells' pod-path volumes bind from.
    pub pod_dir: Option<std::path::PathBuf>,
}

/// What the child runs in: a microVM, or (the fallback) an auraed process in a cell of its
/// own with a veth onto the bridge.
pub enum Body {
    Vm(Arc<VirtualMachine>),
    Cell(Arc<Process>),
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
}

impl child::Watched for Body {
    fn outcome(&self) -> Option<String> {
        if !Body::ended(self) {
            return None;
        }
        Some(match self {
            Body::Vm(v) => {
                let v = v.view();
                format!("{} {}", v.exit_reason, v.error)
            }
            Body::Cell(e) => format!("{:?}", e.view()),
        })
    }

    /// A VM's serial console (not its VMM's own messages); a cell child's whole output.
    fn console(&self) -> Vec<String> {
        let logs = self.logs();
        let mut cursor = logs.start_cursor(None);
        let batch = logs.read(&mut cursor, usize::MAX);
        let vm = matches!(self, Body::Vm(_));
        batch
            .lines
            .iter()
            .filter(|l| !vm || l.stream == logs::Stream::Console)
            .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
            .collect()
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
    /// The host ends of a cell child's veths (eth0's first) not removed yet: removed at
    /// Free (or when a stopped sandbox's network goes back); one that could not be is
    /// kept here for Free to try again.
    veths: std::sync::Mutex<Vec<String>>,
    /// Its extra interfaces (eth1, ...), whose addresses it holds on their bridges.
    pub attachments: Vec<NetAttachment>,
    stop_requested: AtomicBool,
    /// Its veths and addresses went back once it ended (a stopped CRI sandbox's), before
    /// Free: not again.
    network_released: AtomicBool,
    /// Every certificate this node issued the child (SVID and spawn CA, each renewal's
    /// too), DER: revoked when it is freed.
    issued: std::sync::Mutex<Vec<Vec<u8>>>,
    svid_ttl: Duration,
    /// Why it was killed for not answering its health checks (`health.rs`).
    unresponsive: std::sync::Mutex<Option<String>>,
}

impl Instance {
    fn record_issued(&self, pki: &crate::runtime::spawn::image::ChildPki) {
        if let Ok(mut v) = self.issued.lock() {
            let now = std::time::SystemTime::now();
            // Expired ones need no revoking.
            v.retain(|d| crate::pki::not_after_of_der(d).is_some_and(|t| t > now));
            v.extend(
                [&pki.server.cert_pem, &pki.spawn_ca.cert_pem]
                    .into_iter()
                    .filter_map(|p| crate::pki::first_der(p)),
            );
        }
    }
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
    /// Its extra interfaces: eth1, ... in order.
    pub attachments: Vec<NetAttachment>,
}

impl Instance {
    pub fn view(&self) -> InstanceView {
        let mut v = InstanceView {
            name: self.name.to_string(),
            address: self.address.to_string(),
            spiffe_id: self.spiffe_id.clone(),
            attachments: self.attachments.clone(),
            ..Default::default()
        };
        let stopped = self.stop_requested.load(Ordering::Relaxed);
        let unresponsive = self.unresponsive.lock().ok().and_then(|u| u.clone());
        match &self.body {
            Body::Vm(vm) => {
                let vm = vm.view();
                v.isolation = Some(IsolationKind::Vm);
                // Asked to stop, it powered off (or was killed after the grace period).
                let asked = stopped && vm.phase.is_some_and(Phase::ended);
                v.phase = if asked { Some(Phase::Stopped) } else { vm.phase };
                v.error = if asked { String::new() } else { vm.error.clone() };
                v.pid = vm.pid;
                v.vm = Some(vm);
            }
            Body::Cell(e) => {
                let e = e.view();
                v.isolation = Some(IsolationKind::Cell);
                v.pid = e.pid;
                v.error = e.error;
                v.phase = match e.phase {
                    Some(p) if p.ended() && stopped => Some(Phase::Stopped),
                    p => p,
                };
            }
        }
        if let Some(why) = unresponsive.filter(|_| v.phase.is_some_and(Phase::ended)) {
            v.phase = Some(Phase::Failed);
            v.error = why;
        }
        v
    }
}

impl Instance {
    /// Removes an ended child's files, veths and addresses (its VM or cell too). On
    /// failure what is left stays the instance's, for another try.
    pub(crate) async fn release(&self, host: &Host) -> Result<()> {
        self.discard(host).await?;
        self.give_network_back(host)
    }

    /// Gives an ended child's veths and addresses back (once), so the next instance may
    /// take them while this one is kept for its status (the CRI reclaims a sandbox's
    /// network at StopPodSandbox, before RemovePodSandbox). A running child keeps them.
    pub(crate) fn release_network(&self, host: &Host) {
        if self.body.ended() {
            if let Err(e) = self.give_network_back(host) {
                // Kept: Free tries again, and fails naming it while it stays.
                tracing::warn!("instance {}: {e}", self.name);
            }
        }
    }

    fn give_network_back(&self, host: &Host) -> Result<()> {
        let removed = self.remove_veths(host);
        if !self.network_released.swap(true, Ordering::Relaxed) {
            give_back(host, self.name.as_str(), &self.attachments, Some(self.host));
        }
        removed
    }

    /// Removes a cell child's veths; one that cannot be is kept (the first error).
    fn remove_veths(&self, host: &Host) -> Result<()> {
        let mut veths = self.veths.lock().unwrap_or_else(|p| p.into_inner());
        let mut first = Ok(());
        veths.retain(|veth| match host.devices.remove_veth(veth) {
            Ok(()) => false,
            Err(e) => {
                if first.is_ok() {
                    first = Err(RuntimeError::from(e));
                }
                true
            }
        });
        first
    }

    pub(crate) async fn kill(&self) {
        match &self.body {
            Body::Vm(vm) => vm.stop(Duration::ZERO).await,
            Body::Cell(e) => e.stop(libc::SIGKILL, Duration::ZERO).await,
        }
    }

    async fn discard(&self, host: &Host) -> Result<()> {
        // From now on nothing the child was issued, or signed, is accepted here.
        if let (Some(id), Ok(issued)) = (&host.spawn_identity, self.issued.lock()) {
            id.revoked.revoke(issued.iter().cloned());
        }
        match &self.body {
            Body::Vm(vm) => vm.discard(host).await?,
            Body::Cell(e) => e.discard(host, self.name.as_str()).await?,
        }
        self.remove_veths(host)?;
        let _ = if self.files.is_dir() {
            std::fs::remove_dir_all(&self.files)
        } else {
            std::fs::remove_file(&self.files)
        };
        Ok(())
    }

    /// Graceful: the child is asked to power off (over its API) and given `grace`; then
    /// the VM is stopped by its VMM.
    pub(crate) async fn stop(&self, host: &Host, grace: Duration) {
        if !self.body.ended() {
            self.stop_requested.store(true, Ordering::Relaxed);
            if let Err(e) = host.children.request_shutdown(&self.channel, grace).await {
                tracing::warn!("instance {}: shutdown request: {e}", self.name);
            }
            let _ = tokio::time::timeout(grace + Duration::from_secs(2), self.body.wait()).await;
        }
        match &self.body {
            Body::Vm(vm) => vm.stop(Duration::from_secs(2)).await,
            Body::Cell(e) => e.stop(libc::SIGTERM, Duration::from_secs(2)).await,
        }
    }

    pub(crate) async fn free(self: &Arc<Self>, host: &Host) -> Result<()> {
        let name = &self.name;
        if !self.body.ended() {
            return Err(RuntimeError::WrongPhase(format!(
                "instance '{name}' is running; stop it first (aer instance stop {name})"
            )));
        }
        self.discard(host).await?;
        host.table().remove::<Instance>(name.as_str());
        give_back(host, name.as_str(), &self.attachments, Some(self.host));
        Ok(())
    }
}

/// The channel to a running child, for forwarding.
/// The channel to a running child, and a future that completes (with how it ended) when
/// the child ends: a call in flight to a child that dies would otherwise wait for its
/// caller's deadline, as a dead VM's TAP answers nothing, not even a reset.
pub(crate) fn channel(host: &Host, name: &str) -> Result<crate::runtime::ChildChannel> {
    let i = host.table().get::<Instance>(name)?;
    if i.body.ended() {
        let how = child::Watched::outcome(&i.body).unwrap_or_else(|| "ended".into());
        return Err(RuntimeError::WrongPhase(format!("instance '{name}' has ended: {how}")));
    }
    Ok(Instance::child_channel(i))
}

impl Instance {
    /// The channel to this instance's child, and what ends (with how) when the child does.
    pub(crate) fn child_channel(i: Arc<Instance>) -> crate::runtime::ChildChannel {
        let channel = i.channel.clone();
        let ended = Box::pin(async move {
            i.body.wait().await;
            child::Watched::outcome(&i.body).unwrap_or_else(|| "ended".into())
        });
        crate::runtime::ChildChannel { channel, ended }
    }
}

/// Boots a child auraed in a microVM and returns once it serves.
pub(crate) async fn spawn(host: &Host, spec: InstanceSpec) -> Result<InstanceView> {
    host.table().vacant::<Instance>(spec.name.as_str())?;
    let i = boot(host, &spec).await?;
    let v = i.view();
    let inserted = host.table().insert(i.clone());
    if let Err(taken) = inserted {
        i.kill().await;
        if let Err(e) = i.release(host).await {
            tracing::warn!("instance {}: {e}", i.name);
        }
        return Err(taken);
    }
    host.table().follow(&i);
    Ok(v)
}

/// Boots a child and returns once it serves, holding its address on the bridge, but
/// not in the table: Spawn puts it there, a pod keeps it as its own.
pub(crate) async fn boot(host: &Host, spec: &InstanceSpec) -> Result<Arc<Instance>> {
    host.usable()?;
    let Some(id) = host.spawn_identity.clone() else {
        return Err(Lack::SpawnIdentity.into());
    };
    let Some((bridge, subnet)) = host.bridge.clone() else {
        return Err(Lack::Bridge {
            field: "",
            what: "instances",
        }
        .into());
    };
    let subnet = match spec.pod_subnet {
        true => host.alloc.pod_subnet().unwrap_or(subnet),
        false => subnet,
    };
    let kvm = host.devices.kvm_usable();
    if spec.host_network && spec.isolation != Some(IsolationKind::Cell) {
        return Err(RuntimeError::invalid(
            "isolation",
            "an instance in the node's network namespace is a cell; ask for CELL",
        ));
    }
    let isolation = match (spec.isolation, kvm) {
        (Some(IsolationKind::Vm), Err(why)) => return Err(Lack::KvmForInstance(why.to_string()).into()),
        (Some(i), _) => i,
        (None, Ok(())) => IsolationKind::Vm,
        (None, Err(why)) => {
            tracing::info!("spawn {}: {why}; falling back to a cell", spec.name);
            IsolationKind::Cell
        }
    };
    let deadline = tokio::time::Instant::now() + spec.serving_within;
    take_attachments(host, spec, subnet)?;
    let host_no = match take_host_number(host) {
        Ok(h) => h,
        Err(e) => {
            give_back(host, spec.name.as_str(), &spec.attachments, None);
            return Err(e);
        }
    };
    // A node too deep to have children says so here; the host number goes back below.
    let result = match addressing::child_net(subnet, host_no) {
        Ok(net) => spawn_on(host, spec, isolation, &id, &bridge, net, host_no, deadline).await,
        Err(e) => Err(SpawnError::from(e).into()),
    };
    if result.is_err() {
        give_back(host, spec.name.as_str(), &spec.attachments, Some(host_no));
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn spawn_on(
    host: &Host,
    spec: &InstanceSpec,
    isolation: IsolationKind,
    id: &SpawnIdentity,
    bridge: &str,
    net: addressing::ChildNet,
    host_no: u8,
    deadline: tokio::time::Instant,
) -> Result<Arc<Instance>> {
    let spiffe_id = id.child_id(spec.name.as_str());
    let (ip, port) = match spec.host_network {
        true => (std::net::Ipv4Addr::LOCALHOST, free_loopback_port()?),
        false => (net.ip, CHILD_PORT),
    };
    let address = SocketAddr::from((ip, port));
    let pki = id.mint_child(spec.name.as_str(), ip, spec.svid_ttl)?;
    let channel = child::channel(id, spec.name.as_str(), &spiffe_id, address)?;
    std::fs::create_dir_all(&host.instance_dir).map_err(SpawnError::io("mkdir", &host.instance_dir))?;
    tracing::info!(
        "spawning instance {} ({isolation:?}) at {} on {bridge} as {spiffe_id}",
        spec.name,
        net.ip
    );
    let (body, files, veths) = match isolation {
        IsolationKind::Vm => {
            let image = host.instance_dir.join(format!("{}.cpio", spec.name));
            crate::runtime::spawn::image::write(&image, &pki, &host.own_exe, &host.node_kernel)?;
            // The child names each extra NIC by its MAC (`net::Nic`).
            let mut extra_nics = Vec::new();
            let mut nics = Vec::new();
            for (k, a) in spec.attachments.iter().enumerate() {
                let (_, mac) = vm::next_tap(host);
                nics.push(crate::net::Nic {
                    name: format!("eth{}", k + 1),
                    mac,
                    address: a.address,
                });
                extra_nics.push((a.bridge.clone(), mac));
            }
            let boot = crate::init::cmdline::ChildBoot {
                hostname: spec.hostname.clone().unwrap_or_else(|| spec.name.to_string()),
                ip: crate::net::Ipv4Cidr {
                    addr: net.ip,
                    prefix: 24,
                },
                gateway: net.gateway,
                bridge_ip: net.bridge,
                nics,
            };
            let cmdline = format!("{} quiet {}", crate::vmm::DEFAULT_VM_CMDLINE, boot.to_cmdline());
            let vm_spec = VmSpec {
                name: spec.name.clone(),
                kernel: host.node_kernel.clone(),
                initramfs: Some(image.clone()),
                cmdline,
                vcpus: spec.vcpus,
                memory_bytes: spec.memory_bytes,
                network: true,
                extra_nics,
                disks: Vec::new(),
                resources: Resources::default(),
                ready_within: deadline.saturating_duration_since(tokio::time::Instant::now()),
            };
            match vm::boot(host, vm_spec, false).await {
                Ok(vm) => (Body::Vm(vm), image, Vec::new()),
                Err(e) => {
                    let _ = std::fs::remove_file(&image);
                    return Err(e);
                }
            }
        }
        IsolationKind::Cell => {
            let dir = host.instance_dir.join(spec.name.as_str());
            crate::runtime::spawn::image::write_pki_dir(&dir, &pki)?;
            match start_cell_child(host, spec, &dir, bridge, net, address).await {
                Ok((e, veths)) => (Body::Cell(e), dir, veths),
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
        host: host_no,
        files,
        veths: std::sync::Mutex::new(veths),
        attachments: spec.attachments.clone(),
        stop_requested: AtomicBool::new(false),
        network_released: AtomicBool::new(false),
        issued: Default::default(),
        svid_ttl: spec.svid_ttl,
        unresponsive: Default::default(),
    };
    instance.record_issued(&pki);
    match host
        .children
        .wait_serving(&instance.channel, address, &instance.body, deadline)
        .await
    {
        Ok(()) => {
            let instance = Arc::new(instance);
            let first = half_life(svid_expiry(&pki));
            tokio::spawn(renew_at_half_life(
                Arc::downgrade(&instance),
                id.clone(),
                host.children.clone(),
                first,
            ));
            tokio::spawn(health::watch(
                Arc::downgrade(&instance),
                host.children.clone(),
                host.child_check,
            ));
            Ok(instance)
        }
        Err(e) => {
            instance.kill().await;
            let _ = instance.discard(host).await;
            Err(e.into())
        }
    }
}

/// A loopback port of the node no one listens on now, for a host-network child's API.
fn free_loopback_port() -> Result<u16> {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| RuntimeError::StartFailed(format!("no free loopback port for the child's API: {e}")))
}
