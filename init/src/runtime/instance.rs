//! Instances: the workload a Spawn makes, a copy of auraed in a microVM (or, where KVM is
//! unusable, in a cell of its own). The runtime owns the body (the VM or the cell child),
//! its place in the table and its lifecycle; `crate::spawn` supplies the pieces: the
//! child's address (`addressing`), identity, image, veth, and `child`, the code that talks
//! to it. Spawn waits for the child to serve as long as the caller does
//! (`serving_within`, from the caller's gRPC deadline) and says how far it got when it
//! gives up.

use super::error::{Result, RuntimeError};
use super::host::Host;
use super::logs::{self, LogBuffer};
use super::names::ExecName;
use super::process;
use super::process::Process;
use super::spec::{Confinement, Isolation, NetAttachment, Resources, VmSpec, MAX_ATTACHMENTS};
use super::vm;
use super::vm::{VirtualMachine, VmView};
use super::Phase;
pub use crate::spawn::identity::SpawnIdentity;
use crate::spawn::{addressing, child, SpawnError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where child images are written (RAM on the appliance).
const IMAGE_DIR: &str = "/run/aurae/instances";
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
    /// The host ends of a cell child's veths (eth0's first), removed at Free.
    veths: Vec<String>,
    /// Its extra interfaces (eth1, ...), whose addresses it holds on their bridges.
    pub attachments: Vec<NetAttachment>,
    stop_requested: AtomicBool,
    /// Every certificate this node issued the child (SVID and spawn CA, each renewal's
    /// too), DER: revoked when it is freed.
    issued: std::sync::Mutex<Vec<Vec<u8>>>,
    svid_ttl: Duration,
}

impl Instance {
    fn record_issued(&self, pki: &crate::spawn::image::ChildPki) {
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

/// When the child's SVID in `pki` expires.
fn svid_expiry(pki: &crate::spawn::image::ChildPki) -> Option<std::time::SystemTime> {
    crate::pki::first_der(&pki.server.cert_pem).and_then(|d| crate::pki::not_after_of_der(&d))
}

/// When to renew a certificate that expires at `not_after`: at half its remaining life.
fn half_life(not_after: Option<std::time::SystemTime>) -> Duration {
    not_after
        .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
        .map_or(Duration::from_secs(1), |left| (left / 2).max(Duration::from_secs(1)))
}

/// Renews the child's SVID and spawn CA at half their life, over the parent's channel,
/// for as long as the child is in the table. A failed renewal is retried after a tenth of
/// the SVID's lifetime; the child keeps serving its old certificate until it expires.
async fn renew_at_half_life(inst: std::sync::Weak<Instance>, id: SpawnIdentity, first: Duration) {
    let mut next = first;
    loop {
        tokio::time::sleep(next).await;
        let Some(i) = inst.upgrade() else { return };
        if i.body.ended() || i.stop_requested.load(Ordering::Relaxed) {
            return;
        }
        let retry = (i.svid_ttl / 10).max(Duration::from_secs(1));
        next = match renew(&i, &id).await {
            Ok(not_after) => half_life(not_after),
            Err(e) => {
                tracing::warn!("instance {}: renewing its identity: {e}; retrying in {retry:?}", i.name);
                retry
            }
        };
    }
}

/// Why a child's identity was not renewed (renewal retries).
#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error("the child has no IPv4 address")]
    NoIpv4,
    #[error("{0}")]
    Mint(crate::spawn::SpawnError),
    #[error("{:?}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

async fn renew(i: &Instance, id: &SpawnIdentity) -> std::result::Result<Option<std::time::SystemTime>, RenewError> {
    let ip = match i.address.ip() {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(_) => return Err(RenewError::NoIpv4),
    };
    let pki = id
        .mint_child(i.name.as_str(), ip, i.svid_ttl)
        .map_err(RenewError::Mint)?;
    i.record_issued(&pki);
    let req = crate::pb::RenewIdentityRequest {
        svid_pem: pki.server.cert_pem.clone(),
        svid_key_pem: pki.server.key_pem.clone(),
        spawn_ca_pem: pki.spawn_ca.cert_pem.clone(),
        spawn_ca_key_pem: pki.spawn_ca.key_pem.clone(),
    };
    let mut client = crate::pb::node_client::NodeClient::new(i.channel.clone());
    let bound = (i.svid_ttl / 4).max(Duration::from_secs(5));
    match tokio::time::timeout(bound, client.renew_identity(req)).await {
        Ok(Ok(_)) => {
            tracing::info!("instance {}: identity renewed", i.name);
            Ok(svid_expiry(&pki))
        }
        Ok(Err(s)) => Err(RenewError::Refused(s)),
        Err(_) => Err(RenewError::NoAnswer(bound)),
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

impl Instance {
    /// Removes an ended child's files, veths and addresses (its VM or cell too).
    pub(super) async fn release(&self, host: &Host) {
        if let Err(e) = self.discard(host).await {
            tracing::warn!("instance {}: {e}", self.name);
        }
        give_back(host, self.name.as_str(), &self.attachments, Some(self.host));
    }

    pub(super) async fn kill(&self) {
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
        for veth in &self.veths {
            if let Err(e) = crate::spawn::veth::remove(veth) {
                tracing::warn!("instance {}: {e}", self.name);
            }
        }
        let _ = if self.files.is_dir() {
            std::fs::remove_dir_all(&self.files)
        } else {
            std::fs::remove_file(&self.files)
        };
        Ok(())
    }

    /// Graceful: the child is asked to power off (over its API) and given `grace`; then
    /// the VM is stopped by its VMM.
    pub(crate) async fn stop(&self, grace: Duration) {
        if !self.body.ended() {
            self.stop_requested.store(true, Ordering::Relaxed);
            if let Err(e) = child::request_shutdown(&self.channel, grace).await {
                tracing::warn!("instance {}: shutdown request: {e}", self.name);
            }
            let _ = tokio::time::timeout(grace + Duration::from_secs(2), self.body.wait()).await;
        }
        match &self.body {
            Body::Vm(vm) => vm.stop(Duration::from_secs(2)).await,
            Body::Cell(e) => e.stop(libc::SIGTERM, Duration::from_secs(2)).await,
        }
    }

    pub(super) async fn free(self: &Arc<Self>, host: &Host) -> Result<()> {
        let name = &self.name;
        if !self.body.ended() {
            return Err(pre(format!(
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
pub(crate) fn channel(
    host: &Host,
    name: &str,
) -> Result<(
    tonic::transport::Channel,
    impl std::future::Future<Output = String> + Send + 'static,
)> {
    let i = host.table().get::<Instance>(name)?;
    if i.body.ended() {
        return Err(pre(format!("instance '{name}' has ended")));
    }
    let channel = i.channel.clone();
    let ended = async move {
        i.body.wait().await;
        child::Watched::outcome(&i.body).unwrap_or_else(|| "ended".into())
    };
    Ok((channel, ended))
}

/// Boots a child auraed in a microVM and returns once it serves.
pub(crate) async fn spawn(host: &Host, spec: InstanceSpec) -> Result<InstanceView> {
    host.table().vacant::<Instance>(spec.name.as_str())?;
    let i = boot(host, &spec).await?;
    let v = i.view();
    let inserted = host.table().insert(i.clone());
    if let Err(taken) = inserted {
        i.kill().await;
        i.release(host).await;
        return Err(taken);
    }
    Ok(v)
}

/// Boots a child and returns once it serves, holding its address on the bridge, but
/// not in the table: Spawn puts it there, a pod keeps it as its own.
pub(super) async fn boot(host: &Host, spec: &InstanceSpec) -> Result<Arc<Instance>> {
    host.usable()?;
    let Some(id) = host.spawn_identity.clone() else {
        return Err(pre(
            "this node has no spawn identity (PKI directory with spawn-ca.{crt,key})",
        ));
    };
    let Some((bridge, subnet)) = host.bridge.clone() else {
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

/// Checks an instance's extra interfaces against the node's named bridges and takes
/// their addresses (`give_back` returns them).
fn take_attachments(host: &Host, spec: &InstanceSpec, own: crate::net::Ipv4Cidr) -> Result<()> {
    let list = &spec.attachments;
    if list.len() > MAX_ATTACHMENTS {
        return Err(RuntimeError::invalid(
            "networks",
            format!(
                "{} interfaces asked for; a pod has at most {MAX_ATTACHMENTS} beside eth0 (eth1..=eth{MAX_ATTACHMENTS})",
                list.len()
            ),
        ));
    }
    for i in 0..list.len() {
        check_attachment(&host.named_bridges, own, list, i)?;
    }
    let mut t = host.table();
    for (i, a) in list.iter().enumerate() {
        if let Some(owner) = t.attached.get(&(a.bridge.clone(), a.address.addr)) {
            return Err(RuntimeError::AlreadyExists(format!(
                "networks[{i}].address: {} on bridge {} is taken by '{owner}'; choose another address",
                a.address.addr, a.bridge
            )));
        }
    }
    for a in list {
        t.attached
            .insert((a.bridge.clone(), a.address.addr), spec.name.to_string());
    }
    Ok(())
}

/// Returns an instance's addresses: its host number on the bridge and what it held on
/// named bridges.
fn give_back(host: &Host, name: &str, attachments: &[NetAttachment], host_no: Option<u8>) {
    let mut t = host.table();
    for a in attachments {
        let key = (a.bridge.clone(), a.address.addr);
        if t.attached.get(&key).is_some_and(|o| o == name) {
            t.attached.remove(&key);
        }
    }
    if let Some(h) = host_no {
        t.hosts.remove(&h);
    }
}

fn take_host_number(host: &Host) -> Result<u8> {
    let mut t = host.table();
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
    let pki = id.mint_child(spec.name.as_str(), net.ip, spec.svid_ttl)?;
    let address = SocketAddr::from((net.ip, CHILD_PORT));
    let channel = child::channel(id, spec.name.as_str(), &spiffe_id, address)?;
    std::fs::create_dir_all(IMAGE_DIR).map_err(SpawnError::io("mkdir", IMAGE_DIR))?;
    tracing::info!(
        "spawning instance {} ({isolation:?}) at {} on {bridge} as {spiffe_id}",
        spec.name,
        net.ip
    );
    let (body, files, veths) = match isolation {
        IsolationKind::Vm => {
            let image = PathBuf::from(IMAGE_DIR).join(format!("{}.cpio", spec.name));
            crate::spawn::image::write(&image, &pki)?;
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
                hostname: spec.name.to_string(),
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
                kernel: crate::vmm::NODE_KERNEL.into(),
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
            let dir = PathBuf::from(IMAGE_DIR).join(spec.name.as_str());
            crate::spawn::image::write_pki_dir(&dir, &pki)?;
            match start_cell_child(host, spec, &dir, bridge, net).await {
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
        veths,
        attachments: spec.attachments.clone(),
        stop_requested: AtomicBool::new(false),
        issued: Default::default(),
        svid_ttl: spec.svid_ttl,
    };
    instance.record_issued(&pki);
    match child::wait_serving(&instance.channel, address, &instance.body, deadline).await {
        Ok(()) => {
            let instance = Arc::new(instance);
            let first = half_life(svid_expiry(&pki));
            tokio::spawn(renew_at_half_life(Arc::downgrade(&instance), id.clone(), first));
            Ok(instance)
        }
        Err(e) => {
            instance.kill().await;
            let _ = instance.discard(host).await;
            Err(e.into())
        }
    }
}

/// The cell fallback: the child auraed as a daemon in a private cell with every
/// namespace new, a veth pair from the bridge to its eth0 and one from each attachment's
/// bridge to eth1, ...; returns the child and the veths' host ends.
async fn start_cell_child(
    host: &Host,
    spec: &InstanceSpec,
    pki_dir: &std::path::Path,
    bridge: &str,
    net: addressing::ChildNet,
) -> Result<(Arc<Process>, Vec<String>)> {
    let argv = vec![
        "auraed".into(),
        "daemon".into(),
        "--listen".into(),
        format!("0.0.0.0:{CHILD_PORT}"),
        "--pki-dir".into(),
        pki_dir.to_string_lossy().into_owned(),
        "--spawned-in-cell".into(),
        // Its own root hides /var/lib/aurae; its own /run (64 MiB) holds its images.
        "--image-store".into(),
        "/run/aurae/images".into(),
        "--image-store-mib".into(),
        "32".into(),
        "--bridge-ip".into(),
        net.bridge.to_string(),
    ];
    let resources = Resources {
        memory_max: Some(spec.memory_bytes),
        ..Resources::default()
    };
    let e = process::launch_self(
        host,
        &spec.name,
        argv,
        Isolation::default(),
        resources,
        logs::Stream::Stdout,
        None,
        Confinement::INSTANCE,
        vec![pki_dir.to_owned()],
    )
    .await?;
    let mut veths = Vec::new();
    let plumbed = match e.own_cell_holder_pid() {
        None => Err(RuntimeError::Precondition(
            "the child's cell has no holder to take its network namespace from".into(),
        )),
        Some(pid) => plumb_cell_child(host, spec, pid, bridge, net, &mut veths).await,
    };
    if let Err(err) = plumbed {
        e.stop(libc::SIGKILL, Duration::ZERO).await;
        let _ = e.discard(host, spec.name.as_str()).await;
        for v in &veths {
            let _ = crate::spawn::veth::remove(v);
        }
        return Err(err);
    }
    Ok((e, veths))
}

/// eth0 on the bridge, then each attachment; `veths` gets each host end as it is made.
async fn plumb_cell_child(
    host: &Host,
    spec: &InstanceSpec,
    holder: i32,
    bridge: &str,
    net: addressing::ChildNet,
    veths: &mut Vec<String>,
) -> Result<()> {
    use crate::spawn::veth::{plumb, Inside};
    let eth0 = crate::net::Ipv4Cidr {
        addr: net.ip,
        prefix: 24,
    };
    let mut wanted = vec![(bridge.to_owned(), "eth0".to_owned(), eth0, Some(net.gateway))];
    for (k, a) in spec.attachments.iter().enumerate() {
        wanted.push((a.bridge.clone(), format!("eth{}", k + 1), a.address, None));
    }
    for (on, name, address, gateway) in wanted {
        let (n, _) = vm::next_tap(host);
        let host_end = format!("aveth{n}");
        veths.push(host_end.clone());
        let inside = Inside {
            name: &name,
            address,
            gateway,
        };
        plumb(&host_end, holder, &on, inside).await?;
    }
    Ok(())
}

/// Checks attachment `i` of `list`: its bridge is one of the node's named bridges, and
/// once in the list; its address is a host address, in the bridge's subnet when the node
/// has an address there, and apart from `own` (the instances' bridge, where eth0 is).
fn check_attachment(
    bridges: &[crate::net::NamedBridge],
    own: crate::net::Ipv4Cidr,
    list: &[NetAttachment],
    i: usize,
) -> Result<()> {
    let a = &list[i];
    let field = |f: &str| format!("networks[{i}].{f}");
    let Some(b) = bridges.iter().find(|b| b.name == a.bridge) else {
        let known = if bridges.is_empty() {
            "it has none (name them with aurae.bridges= on the node's kernel command line)".to_owned()
        } else {
            let names: Vec<&str> = bridges.iter().map(|b| b.name.as_str()).collect();
            format!("its bridges for pods are {}", names.join(", "))
        };
        return Err(RuntimeError::invalid(
            field("bridge"),
            format!("this node has no bridge '{}' to attach to; {known}", a.bridge),
        ));
    };
    if let Some(j) = list[..i].iter().position(|x| x.bridge == a.bridge) {
        return Err(RuntimeError::invalid(
            field("bridge"),
            format!(
                "networks[{j}] is on bridge '{}' already; one interface per bridge",
                a.bridge
            ),
        ));
    }
    let ip = a.address;
    let bad = |why: String| Err(RuntimeError::invalid(field("address"), format!("'{ip}' {why}")));
    if !(8..=30).contains(&ip.prefix) {
        return bad("has a prefix outside /8../30".into());
    }
    let host_mask = !crate::net::cidr::netmask(ip.prefix);
    let host = u32::from(ip.addr) & host_mask;
    if host == 0 || host == host_mask {
        return bad("is its subnet's network or broadcast address; give a host address".into());
    }
    if ip.addr.is_loopback() || ip.addr.is_multicast() || ip.addr.is_link_local() {
        return bad("is a loopback, multicast or link-local address".into());
    }
    if ip.overlaps(own) {
        return bad(format!(
            "overlaps the subnet of the pod's eth0 ({}/{}); choose a subnet apart from it",
            own.network(),
            own.prefix
        ));
    }
    if let Some(node) = b.address {
        if ip.prefix != node.prefix || ip.network() != node.network() {
            return bad(format!(
                "is not in bridge {}'s subnet {}/{}",
                b.name,
                node.network(),
                node.prefix
            ));
        }
        if ip.addr == node.addr {
            return bad(format!("is the node's own address on bridge {}", b.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Ipv4Cidr, NamedBridge};

    fn att(bridge: &str, address: &str) -> NetAttachment {
        NetAttachment {
            bridge: bridge.into(),
            address: address.parse().unwrap(),
        }
    }

    #[test]
    fn attachments_are_checked_against_the_node_bridges() {
        let bridges = [
            NamedBridge {
                name: "lab0".into(),
                address: None,
            },
            NamedBridge {
                name: "lab1".into(),
                address: Some("192.168.60.1/24".parse().unwrap()),
            },
        ];
        let own: Ipv4Cidr = "10.254.0.1/24".parse().unwrap();
        let check = |list: &[NetAttachment], i| check_attachment(&bridges, own, list, i).map_err(|e| e.to_string());
        assert!(check(&[att("lab0", "192.168.50.2/24")], 0).is_ok());
        assert!(check(&[att("lab1", "192.168.60.9/24")], 0).is_ok());
        for (list, i, want) in [
            (vec![att("aurae0", "192.168.50.2/24")], 0, "networks[0].bridge"),
            (vec![att("nope", "192.168.50.2/24")], 0, "lab0, lab1"),
            (
                vec![att("lab0", "192.168.50.2/24"), att("lab0", "192.168.50.3/24")],
                1,
                "networks[0] is on bridge 'lab0'",
            ),
            (vec![att("lab0", "192.168.50.0/24")], 0, "network or broadcast"),
            (vec![att("lab0", "192.168.50.255/24")], 0, "network or broadcast"),
            (vec![att("lab0", "192.168.50.2/32")], 0, "/8../30"),
            (vec![att("lab0", "127.0.0.2/8")], 0, "loopback"),
            (
                vec![att("lab0", "10.254.0.7/24")],
                0,
                "overlaps the subnet of the pod's eth0 (10.254.0.0/24)",
            ),
            (vec![att("lab0", "10.1.0.7/8")], 0, "overlaps"),
            (
                vec![att("lab1", "192.168.61.2/24")],
                0,
                "not in bridge lab1's subnet 192.168.60.0/24",
            ),
            (vec![att("lab1", "192.168.60.1/24")], 0, "the node's own address"),
        ] {
            let e = check(&list, i).unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        let none = check_attachment(&[], own, &[att("lab0", "192.168.50.2/24")], 0).unwrap_err();
        assert!(none.to_string().contains("aurae.bridges="), "{none}");
    }
}
