//! The one place requests become validated runtime specs and runtime views become
//! protobuf. Every field is checked here, once; errors name the field and the fix.

use super::deadline::wait_budget;
use crate::image::catalog::{Prepared, PullPolicy};
use crate::image::pull::Credentials;
use crate::pb;
use crate::runtime::attach::AttachSpec;
use crate::runtime::cgroup::Usage;
use crate::runtime::confine::{caps::CapSet, seccomp};
use crate::runtime::error::RuntimeError;
use crate::runtime::instance::IsolationKind;
use crate::runtime::names::{CellName, ExecName};
use crate::runtime::spec::{
    CellSpec, Confinement, DiskSpec, ExecutableSpec, ImageRoot, IoMax, Isolation, NetAttachment, Resources, VmSpec,
};
use crate::runtime::volume::{VolumeMount, VolumeSpec, DEFAULT_MEMORY_LIMIT as VOLUME_DEFAULT_BYTES};
use crate::runtime::{CellView, ExecView, InstanceSpec, InstanceView, Kind, Phase, VmView};
use std::path::PathBuf;
use std::time::Duration;

const MAX_ARGS: usize = 4096;
const MAX_ARG_BYTES: usize = 1 << 20;
const MAX_BYTES: u64 = 1 << 62;
const MIN_MEMORY_LIMIT: u64 = 1 << 20;
const PID_MAX_LIMIT: u64 = 4_194_304;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::invalid(field, reason)
}

fn no_nul(field: &str, s: &str) -> Result<(), RuntimeError> {
    if s.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

pub fn executable(e: pb::Executable) -> Result<ExecutableSpec, RuntimeError> {
    let name = ExecName::parse(&e.name).map_err(|n| invalid("name", n.to_string()))?;
    if e.argv.is_empty() || e.argv[0].is_empty() {
        return Err(invalid(
            "argv",
            "is empty; give the program and its arguments, e.g. [\"/bin/sleep\", \"10\"]",
        ));
    }
    if e.argv.len() > MAX_ARGS {
        return Err(invalid(
            "argv",
            format!("has {} entries; the limit is {MAX_ARGS}", e.argv.len()),
        ));
    }
    let bytes: usize =
        e.argv.iter().map(String::len).sum::<usize>() + e.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>();
    if bytes > MAX_ARG_BYTES {
        return Err(invalid(
            "argv",
            format!("argv and env total {bytes} bytes; the limit is {MAX_ARG_BYTES}"),
        ));
    }
    for (i, a) in e.argv.iter().enumerate() {
        no_nul(&format!("argv[{i}]"), a)?;
    }
    env_entries("env", &e.env)?;
    let cwd = match e.cwd.as_str() {
        "" => None,
        c => {
            no_nul("cwd", c)?;
            if !c.starts_with('/') {
                return Err(invalid("cwd", format!("'{c}' is relative; give an absolute directory")));
            }
            Some(PathBuf::from(c))
        }
    };
    let cell = match e.cell.as_str() {
        "" => None,
        c => Some(CellName::parse(c).map_err(|n| invalid("cell", n.to_string()))?),
    };
    Ok(ExecutableSpec {
        name,
        argv: e.argv,
        env: e.env.into_iter().collect(),
        cwd,
        uid: e.uid,
        gid: e.gid.or(e.uid),
        cell,
    })
}

fn range(field: &str, v: Option<u64>, lo: u64, hi: u64, hint: &str) -> Result<Option<u64>, RuntimeError> {
    match v {
        Some(v) if v < lo || v > hi => Err(invalid(field, format!("{v} is out of range {lo}..={hi}{hint}"))),
        other => Ok(other),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.trim().to_owned())
}

pub fn resources(r: Option<pb::CellResources>) -> Result<Resources, RuntimeError> {
    let Some(r) = r else { return Ok(Resources::default()) };
    let f = |n: &str| format!("resources.{n}");
    let cpu_max = match r.cpu_max {
        None => None,
        Some(m) => {
            let period = if m.period_micros == 0 { 100_000 } else { m.period_micros };
            range(&f("cpu_max.period_micros"), Some(period), 1_000, 1_000_000, "")?;
            range(
                &f("cpu_max.quota_micros"),
                Some(m.quota_micros),
                1_000,
                period.saturating_mul(1024),
                " (quota is CPU time per period, at least 1 ms)",
            )?;
            Some((m.quota_micros, period))
        }
    };
    let memory_max = range(
        &f("memory_max_bytes"),
        r.memory_max_bytes,
        MIN_MEMORY_LIMIT,
        MAX_BYTES,
        "; omit it for no limit",
    )?;
    let memory_high = range(
        &f("memory_high_bytes"),
        r.memory_high_bytes,
        MIN_MEMORY_LIMIT,
        MAX_BYTES,
        "; omit it for no limit",
    )?;
    let memory_min = range(&f("memory_min_bytes"), r.memory_min_bytes, 0, MAX_BYTES, "")?;
    let memory_low = range(&f("memory_low_bytes"), r.memory_low_bytes, 0, MAX_BYTES, "")?;
    if let Some(max) = memory_max {
        for (name, v) in [("memory_min_bytes", memory_min), ("memory_low_bytes", memory_low)] {
            if v.is_some_and(|v| v > max) {
                return Err(invalid(f(name), format!("is above memory_max_bytes ({max})")));
            }
        }
    }
    let mut io_max = Vec::new();
    for (i, m) in r.io_max.into_iter().enumerate() {
        let field = f(&format!("io_max[{i}]"));
        let (major, minor) = m
            .device
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| {
                invalid(
                    format!("{field}.device"),
                    format!("'{}' is not MAJOR:MINOR like '254:0'", m.device),
                )
            })?;
        let lim = |n: &str, v| range(&format!("{field}.{n}"), v, 1, MAX_BYTES, "");
        let limits = IoMax {
            major,
            minor,
            rbps: lim("read_bytes_per_second", m.read_bytes_per_second)?,
            wbps: lim("write_bytes_per_second", m.write_bytes_per_second)?,
            riops: lim("read_iops", m.read_iops)?,
            wiops: lim("write_iops", m.write_iops)?,
        };
        if [limits.rbps, limits.wbps, limits.riops, limits.wiops]
            .iter()
            .all(Option::is_none)
        {
            return Err(invalid(field, "sets no limit; set at least one of the four"));
        }
        io_max.push(limits);
    }
    Ok(Resources {
        cpu_weight: range(&f("cpu_weight"), r.cpu_weight, 1, 10_000, "")?,
        cpu_max,
        cpuset_cpus: non_empty(r.cpuset_cpus),
        cpuset_mems: non_empty(r.cpuset_mems),
        memory_min,
        memory_low,
        memory_high,
        memory_max,
        swap_max: range(&f("swap_max_bytes"), r.swap_max_bytes, 0, MAX_BYTES, "")?,
        pids_max: range(&f("pids_max"), r.pids_max, 1, PID_MAX_LIMIT, "")?,
        io_weight: range(&f("io_weight"), r.io_weight, 1, 10_000, "")?,
        io_max,
    })
}

/// A cell's confinement. What of it needs the admin role is `authz::FIELDS`' to say.
fn confinement(c: Option<pb::CellConfinement>) -> Result<Confinement, RuntimeError> {
    let c = c.unwrap_or_default();
    let level = match pb::SeccompProfile::try_from(c.seccomp) {
        Ok(pb::SeccompProfile::Unspecified | pb::SeccompProfile::Default) => Some(seccomp::Level::Default),
        Ok(pb::SeccompProfile::Strict) => Some(seccomp::Level::Strict),
        Ok(pb::SeccompProfile::Unconfined) => None,
        Err(_) => {
            return Err(invalid(
                "confinement.seccomp",
                format!("{} is not a SeccompProfile (DEFAULT, STRICT or UNCONFINED)", c.seccomp),
            ))
        }
    };
    if c.privileged {
        if !c.cap_add.is_empty()
            || !c.cap_drop.is_empty()
            || c.seccomp != 0
            || c.user_namespace
            || !c.seccomp_deny.is_empty()
        {
            return Err(invalid(
                "confinement.privileged",
                "a privileged cell keeps every capability and has no seccomp profile; leave cap_add, cap_drop, seccomp, seccomp_deny and user_namespace unset",
            ));
        }
        return Ok(Confinement::PRIVILEGED);
    }
    let deny =
        seccomp::Calls::parse(&c.seccomp_deny).map_err(|e| invalid("confinement.seccomp_deny", e.to_string()))?;
    if level.is_none() && !deny.is_empty() {
        return Err(invalid(
            "confinement.seccomp_deny",
            "an UNCONFINED cell has no profile to refuse calls in; leave seccomp_deny empty or choose DEFAULT or STRICT",
        ));
    }
    let caps = CapSet::adjusted(&c.cap_add, &c.cap_drop).map_err(|e| {
        let field = if e.adding {
            "confinement.cap_add"
        } else {
            "confinement.cap_drop"
        };
        invalid(field, e.to_string())
    })?;
    Ok(Confinement {
        caps,
        seccomp: level.map(|level| seccomp::Spec { level, deny }),
        privileged: false,
        userns: c.user_namespace,
    })
}

/// An Exec's `start`, checked.
pub fn attach(s: pb::ExecStart) -> Result<AttachSpec, RuntimeError> {
    let cell = CellName::parse(&s.cell).map_err(|n| invalid("start.cell", n.to_string()))?;
    // The executable's own checks, with the fields under `start`.
    let argv = if s.argv.is_empty() {
        vec!["(image entrypoint)".to_owned()]
    } else {
        s.argv.clone()
    };
    let e = executable(pb::Executable {
        name: "exec".into(),
        argv,
        env: s.env,
        cwd: s.cwd,
        uid: s.uid,
        gid: s.gid,
        cell: s.cell,
    })
    .map_err(|e| match e {
        RuntimeError::Invalid { field, reason } => invalid(format!("start.{field}"), reason),
        other => other,
    })?;
    let size = s.size.map(|t| {
        (
            t.rows.min(u32::from(u16::MAX)) as u16,
            t.columns.min(u32::from(u16::MAX)) as u16,
        )
    });
    Ok(AttachSpec {
        cell,
        argv: s.argv,
        env: e.env,
        cwd: e.cwd,
        uid: e.uid,
        gid: e.gid,
        tty: s.tty,
        size: size.filter(|(r, c)| *r > 0 && *c > 0),
    })
}

/// A cell's image request, checked before anything is pulled.
pub struct ImageRequest {
    pub reference: String,
    pub policy: PullPolicy,
    pub credentials: Option<Credentials>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    user: Option<String>,
    no_entrypoint: bool,
    pub ports: Vec<(u16, u16)>,
    volumes: Vec<VolumeSpec>,
    mounts: Vec<VolumeMount>,
}

/// The largest memory volume: what a tmpfs of a 2^40-byte node could hold.
const MAX_VOLUME_BYTES: u64 = 1 << 40;
const MAX_VOLUMES: usize = 64;

/// Volumes and their mounts, checked: names, unique, every mount names a listed volume at
/// an absolute path of its own.
pub fn volumes(
    field: &str,
    list: &[pb::Volume],
    mounts_field: &str,
    mounts: &[pb::VolumeMount],
) -> Result<(Vec<VolumeSpec>, Vec<VolumeMount>), RuntimeError> {
    if list.len() > MAX_VOLUMES || mounts.len() > MAX_VOLUMES {
        return Err(invalid(
            field,
            format!("at most {MAX_VOLUMES} volumes and {MAX_VOLUMES} mounts"),
        ));
    }
    let mut specs: Vec<VolumeSpec> = Vec::with_capacity(list.len());
    for (n, v) in list.iter().enumerate() {
        let f = format!("{field}[{n}]");
        let name = ExecName::parse(&v.name).map_err(|e| invalid(format!("{f}.name"), e.to_string()))?;
        if specs.iter().any(|s| s.name == name) {
            return Err(invalid(format!("{f}.name"), format!("volume '{name}' is listed twice")));
        }
        let d = v.empty_dir.unwrap_or_default();
        let size = match (d.memory, d.size_limit_bytes) {
            (_, 0) => VOLUME_DEFAULT_BYTES,
            (_, s) if !(MIB..=MAX_VOLUME_BYTES).contains(&s) => {
                return Err(invalid(
                    format!("{f}.empty_dir.size_limit_bytes"),
                    format!("{s} is out of range (1 MiB..=1 TiB)"),
                ))
            }
            (_, s) => s,
        };
        specs.push(VolumeSpec {
            name,
            memory: d.memory,
            size_limit: if d.memory { size } else { 0 },
            // The handler names the caller (`owned_by`).
            owner: String::new(),
        });
    }
    let mut out: Vec<VolumeMount> = Vec::with_capacity(mounts.len());
    for (n, m) in mounts.iter().enumerate() {
        let f = format!("{mounts_field}[{n}]");
        let Some(spec) = specs.iter().find(|s| s.name.as_str() == m.name) else {
            return Err(invalid(
                format!("{f}.name"),
                format!(
                    "'{}' is not one of the volumes listed in {field}; list it there",
                    m.name
                ),
            ));
        };
        let p = m.mount_path.as_str();
        no_nul(&format!("{f}.mount_path"), p)?;
        let normal = std::path::Path::new(p)
            .components()
            .skip(1)
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !p.starts_with('/') || p == "/" || !normal || p.len() > 4096 {
            return Err(invalid(
                format!("{f}.mount_path"),
                format!("'{p}' must be an absolute directory other than '/', without '.' or '..'"),
            ));
        }
        let clean = p.trim_end_matches('/').to_owned();
        if out.iter().any(|o| o.path == clean) {
            return Err(invalid(format!("{f}.mount_path"), format!("'{p}' is mounted twice")));
        }
        out.push(VolumeMount {
            volume: spec.name.clone(),
            path: clean,
            read_only: m.read_only,
        });
    }
    Ok((specs, out))
}

fn env_entries(field: &str, env: &std::collections::HashMap<String, String>) -> Result<(), RuntimeError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') {
            return Err(invalid(
                format!("{field}[{k:?}]"),
                "a variable name must be non-empty and contain no '='",
            ));
        }
        no_nul(&format!("{field}[{k:?}]"), k)?;
        no_nul(&format!("{field}[{k:?}]"), v)?;
    }
    Ok(())
}

pub fn oci_image(i: pb::OciImage) -> Result<ImageRequest, RuntimeError> {
    let reference = i.reference.trim().to_owned();
    if reference.is_empty() {
        return Err(invalid("image.reference", "empty; name an image as REGISTRY/NAME:TAG"));
    }
    crate::image::pull::parse_reference(&reference).map_err(|e| invalid("image.reference", e.to_string()))?;
    let policy = match pb::PullPolicy::try_from(i.pull_policy) {
        Ok(pb::PullPolicy::Unspecified | pb::PullPolicy::IfNotPresent) => PullPolicy::IfNotPresent,
        Ok(pb::PullPolicy::Always) => PullPolicy::Always,
        Ok(pb::PullPolicy::Never) => PullPolicy::Never,
        Err(_) => {
            return Err(invalid(
                "image.pull_policy",
                format!(
                    "{} is not a PullPolicy (IF_NOT_PRESENT, ALWAYS or NEVER)",
                    i.pull_policy
                ),
            ))
        }
    };
    let ports = ports(&i.ports)?;
    for (field, list) in [("image.command", &i.command), ("image.args", &i.args)] {
        if list.len() > MAX_ARGS {
            return Err(invalid(
                field,
                format!("has {} entries; the limit is {MAX_ARGS}", list.len()),
            ));
        }
        for (n, a) in list.iter().enumerate() {
            no_nul(&format!("{field}[{n}]"), a)?;
        }
    }
    let bytes: usize = i.command.iter().chain(&i.args).map(String::len).sum::<usize>()
        + i.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>();
    if bytes > MAX_ARG_BYTES {
        return Err(invalid(
            "image.args",
            format!("command, args and env total {bytes} bytes; the limit is {MAX_ARG_BYTES}"),
        ));
    }
    env_entries("image.env", &i.env)?;
    let working_dir = match i.working_dir.as_str() {
        "" => None,
        w if !w.starts_with('/') => {
            return Err(invalid(
                "image.working_dir",
                format!("'{w}' is relative; give an absolute directory"),
            ))
        }
        w => {
            no_nul("image.working_dir", w)?;
            Some(w.to_owned())
        }
    };
    let user = match i.user.trim() {
        "" => None,
        u => {
            no_nul("image.user", u)?;
            if u.split(':').count() > 2 || u.split(':').any(str::is_empty) {
                return Err(invalid(
                    "image.user",
                    format!("'{u}' is not uid, uid:gid, name or name:group"),
                ));
            }
            Some(u.to_owned())
        }
    };
    let (volumes, mounts) = volumes("image.volumes", &i.volumes, "image.volume_mounts", &i.volume_mounts)?;
    let mut env: Vec<(String, String)> = i.env.into_iter().collect();
    env.sort();
    Ok(ImageRequest {
        volumes,
        mounts,
        reference,
        policy,
        credentials: i.credentials.map(|c| Credentials {
            username: c.username,
            password: c.password,
        }),
        command: i.command,
        args: i.args,
        env,
        working_dir,
        user,
        no_entrypoint: i.no_entrypoint,
        ports,
    })
}

/// Published ports, checked: numbers in range, TCP, each node port once.
pub fn ports(list: &[pb::PortMapping]) -> Result<Vec<(u16, u16)>, RuntimeError> {
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(list.len());
    for (n, p) in list.iter().enumerate() {
        let f = |x: &str| format!("image.ports[{n}].{x}");
        let port = |field: &str, v: u32| {
            u16::try_from(v)
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| invalid(f(field), format!("{v} is not a port (1..=65535)")))
        };
        let (host, inside) = (
            port("host_port", p.host_port)?,
            port("container_port", p.container_port)?,
        );
        match p.protocol.to_ascii_lowercase().as_str() {
            "" | "tcp" => {}
            "udp" => {
                return Err(RuntimeError::Precondition(format!(
                    "{}: UDP ports are not published by this auraed yet; publish TCP ports",
                    f("protocol")
                )))
            }
            other => return Err(invalid(f("protocol"), format!("'{other}' is not tcp or udp"))),
        }
        if out.iter().any(|(h, _)| *h == host) {
            return Err(invalid(f("host_port"), format!("node port {host} is published twice")));
        }
        out.push((host, inside));
    }
    Ok(out)
}

/// The image as the cell's root: its layers, and the request's settings over its config.
pub fn image_root(p: &Prepared, r: ImageRequest) -> Result<ImageRoot, RuntimeError> {
    let argv = p.config.argv(&r.command, &r.args);
    if !r.no_entrypoint && argv.first().is_none_or(|a| a.is_empty()) {
        return Err(invalid(
            "image.command",
            format!(
                "image '{}' names no entrypoint or cmd; give the program to run (command or args)",
                p.record.reference
            ),
        ));
    }
    Ok(ImageRoot {
        reference: p.record.reference.clone(),
        digest: p.record.digest.clone(),
        layers: p.layers.clone(),
        chains: p.record.layers.iter().map(|(_, _, c)| c.clone()).collect(),
        env: crate::runtime::spec::overlay_env(p.config.env.clone(), r.env.iter().map(|(k, v)| (k, v))),
        working_dir: r.working_dir.or_else(|| p.config.working_dir.clone()),
        user: r.user.or_else(|| p.config.user.clone()),
        exposed_ports: p.config.exposed_ports.clone(),
        argv,
        start: !r.no_entrypoint,
        volumes: r.volumes,
        mounts: r.mounts,
    })
}

pub fn cell(c: pb::Cell) -> Result<CellSpec, RuntimeError> {
    let name = CellName::parse(&c.name).map_err(|n| invalid("name", n.to_string()))?;
    let i = c.isolation.unwrap_or_default();
    Ok(CellSpec {
        name,
        confinement: confinement(c.confinement)?,
        resources: resources(c.resources)?,
        isolation: Isolation {
            pid: !i.share_host_pid,
            mount: !i.share_host_mount,
            network: !i.share_host_network,
            ipc: !i.share_host_ipc,
            uts: !i.share_host_uts,
            cgroup: !i.share_host_cgroup,
        },
        binds: Vec::new(),
        ready_within: crate::runtime::spec::READY_MAX,
        image: None,
        ports: Vec::new(),
    })
}

const MIB: u64 = 1 << 20;
const MAX_DISKS: usize = 8;
// Every disk and the NIC take one virtio-mmio slot (window and IRQ) of the VMM.
const _: () = assert!(MAX_DISKS < crate::vmm::virtio_mmio::MAX_DEVICES);

fn node_path(field: &str, p: &str) -> Result<PathBuf, RuntimeError> {
    no_nul(field, p)?;
    if !p.starts_with('/') {
        return Err(invalid(
            field,
            format!("'{p}' is relative; give an absolute path on the node"),
        ));
    }
    Ok(PathBuf::from(p))
}

/// How long RunVirtualMachine waits for the vCPUs when neither request nor caller says.
pub const DEFAULT_VM_READY: Duration = Duration::from_secs(60);
/// How long Spawn waits for the child to serve when neither request nor caller says.
pub const DEFAULT_SPAWN_SERVING: Duration = Duration::from_secs(300);

fn millis(v: u32) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(u64::from(v)))
}

/// A VM request; `caller` is the caller's gRPC timeout, which bounds the wait for the vCPUs.
pub fn virtual_machine(v: pb::VirtualMachine, caller: Option<Duration>) -> Result<VmSpec, RuntimeError> {
    let name = ExecName::parse_vm(&v.name).map_err(|n| invalid("name", n.to_string()))?;
    let kernel = match v.kernel_path.as_str() {
        "" => PathBuf::from(crate::vmm::NODE_KERNEL),
        k => node_path("kernel_path", k)?,
    };
    let initramfs = match v.initramfs_path.as_str() {
        "" => None,
        i => Some(node_path("initramfs_path", i)?),
    };
    let cmdline = match v.kernel_cmdline.trim() {
        "" => crate::vmm::DEFAULT_VM_CMDLINE.to_owned(),
        c => c.to_owned(),
    };
    no_nul("kernel_cmdline", &cmdline)?;
    if cmdline.len() >= crate::vmm::boot::CMDLINE_MAX {
        return Err(invalid(
            "kernel_cmdline",
            format!(
                "is {} bytes; the limit is {}",
                cmdline.len(),
                crate::vmm::boot::CMDLINE_MAX - 1
            ),
        ));
    }
    let vcpus = match v.vcpus {
        0 => 1,
        n if n <= crate::vmm::MAX_VCPUS => n,
        n => {
            return Err(invalid(
                "vcpus",
                format!("{n} is out of range 1..={}", crate::vmm::MAX_VCPUS),
            ))
        }
    };
    let memory_bytes = match v.memory_bytes {
        0 => 128 * MIB,
        m if m % MIB != 0 => return Err(invalid("memory_bytes", format!("{m} is not a whole number of MiB"))),
        m if !(crate::vmm::MIN_MEMORY..=crate::vmm::MAX_MEMORY).contains(&m) => {
            return Err(invalid(
                "memory_bytes",
                format!(
                    "{} MiB is out of range {}..={} MiB",
                    m / MIB,
                    crate::vmm::MIN_MEMORY / MIB,
                    crate::vmm::MAX_MEMORY / MIB
                ),
            ))
        }
        m => m,
    };
    if v.disks.len() > MAX_DISKS {
        return Err(invalid(
            "disks",
            format!("{} disks; the limit is {MAX_DISKS}", v.disks.len()),
        ));
    }
    let disks = v
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Ok(DiskSpec {
                path: node_path(&format!("disks[{i}].path"), &d.path)?,
                read_only: d.read_only,
            })
        })
        .collect::<Result<Vec<_>, RuntimeError>>()?;
    Ok(VmSpec {
        name,
        kernel,
        initramfs,
        cmdline,
        vcpus: vcpus as u8,
        memory_bytes,
        network: v.network,
        extra_nics: Vec::new(),
        disks,
        resources: resources(v.resources)?,
        ready_within: wait_budget(millis(v.ready_timeout_millis), caller, DEFAULT_VM_READY),
    })
}

pub fn kind(k: i32, field: &str) -> Result<Option<Kind>, RuntimeError> {
    match pb::WorkloadKind::try_from(k) {
        Ok(pb::WorkloadKind::Unspecified) => Ok(None),
        Ok(pb::WorkloadKind::Executable) => Ok(Some(Kind::Executable)),
        Ok(pb::WorkloadKind::Cell) => Ok(Some(Kind::Cell)),
        Ok(pb::WorkloadKind::VirtualMachine) => Ok(Some(Kind::VirtualMachine)),
        Ok(pb::WorkloadKind::Instance) => Ok(Some(Kind::Instance)),
        Ok(pb::WorkloadKind::Pod) => Ok(Some(Kind::Pod)),
        Err(_) => Err(invalid(field, format!("{k} is not a WorkloadKind"))),
    }
}

/// The kind and name a WorkloadRef names; the kind is required.
pub fn workload_ref(r: Option<pb::WorkloadRef>, field: &str) -> Result<(Kind, String), RuntimeError> {
    let r = r.ok_or_else(|| invalid(field, "is missing; name the workload (kind and name)"))?;
    let kind = kind(r.kind, &format!("{field}.kind"))?.ok_or_else(|| {
        invalid(
            format!("{field}.kind"),
            "is unspecified; say WORKLOAD_KIND_EXECUTABLE or WORKLOAD_KIND_CELL",
        )
    })?;
    if r.name.is_empty() {
        return Err(invalid(format!("{field}.name"), "is empty"));
    }
    Ok((kind, r.name))
}

pub fn phase(p: Option<Phase>) -> i32 {
    (match p {
        None => pb::WorkloadState::Unspecified,
        Some(Phase::Starting) => pb::WorkloadState::Starting,
        Some(Phase::Running) => pb::WorkloadState::Running,
        Some(Phase::Exited) => pb::WorkloadState::Exited,
        Some(Phase::Killed) => pb::WorkloadState::Killed,
        Some(Phase::Failed) => pb::WorkloadState::Failed,
        Some(Phase::Frozen) => pb::WorkloadState::Frozen,
        Some(Phase::Stopped) => pb::WorkloadState::Stopped,
    }) as i32
}

pub fn exec_status(v: ExecView) -> pb::ExecutableStatus {
    pb::ExecutableStatus {
        name: v.name,
        cell: v.cell,
        state: phase(v.phase),
        pid: v.pid,
        exit_code: v.exit_code,
        signal: v.signal,
        oom_killed: v.oom_killed,
        started_at_unix_nanos: v.started_unix_nanos,
        ended_at_unix_nanos: v.ended_unix_nanos,
        cpu_usage_micros: v.cpu_usage_micros,
        memory_peak_bytes: v.memory_peak_bytes,
        error: v.error,
    }
}

fn resources_pb(r: Resources) -> pb::CellResources {
    pb::CellResources {
        cpu_weight: r.cpu_weight,
        cpu_max: r.cpu_max.map(|(q, p)| pb::CpuMax {
            quota_micros: q,
            period_micros: p,
        }),
        cpuset_cpus: r.cpuset_cpus.unwrap_or_default(),
        cpuset_mems: r.cpuset_mems.unwrap_or_default(),
        memory_min_bytes: r.memory_min,
        memory_low_bytes: r.memory_low,
        memory_high_bytes: r.memory_high,
        memory_max_bytes: r.memory_max,
        swap_max_bytes: r.swap_max,
        pids_max: r.pids_max,
        io_weight: r.io_weight,
        io_max: r
            .io_max
            .into_iter()
            .map(|m| pb::IoMax {
                device: format!("{}:{}", m.major, m.minor),
                read_bytes_per_second: m.rbps,
                write_bytes_per_second: m.wbps,
                read_iops: m.riops,
                write_iops: m.wiops,
            })
            .collect(),
    }
}

fn usage_pb(u: Usage) -> pb::CellUsage {
    pb::CellUsage {
        cpu_usage_micros: u.cpu_usage_micros,
        cpu_throttled_micros: u.cpu_throttled_micros,
        cpu_nr_throttled: u.cpu_nr_throttled,
        memory_current_bytes: u.memory_current_bytes,
        memory_peak_bytes: u.memory_peak_bytes,
        memory_oom_events: u.memory_oom_events,
        memory_oom_kill_events: u.memory_oom_kill_events,
        pids_current: u.pids_current,
    }
}

pub fn cell_status(v: CellView) -> pb::CellStatus {
    let i = v.isolation;
    pb::CellStatus {
        name: v.name,
        state: phase(Some(v.phase)),
        resources: Some(resources_pb(v.resources)),
        isolation: Some(pb::CellIsolation {
            share_host_pid: !i.pid,
            share_host_mount: !i.mount,
            share_host_network: !i.network,
            share_host_ipc: !i.ipc,
            share_host_uts: !i.uts,
            share_host_cgroup: !i.cgroup,
        }),
        usage: Some(usage_pb(v.usage)),
        executables: v.executables,
        error: v.error,
        confinement: Some(pb::CellConfinementStatus {
            capabilities: v.confinement.caps.names().into_iter().map(str::to_owned).collect(),
            seccomp: match v.confinement.seccomp.map(|s| s.level) {
                Some(seccomp::Level::Default) => pb::SeccompProfile::Default,
                Some(seccomp::Level::Strict) => pb::SeccompProfile::Strict,
                None => pb::SeccompProfile::Unconfined,
            } as i32,
            seccomp_deny: v
                .confinement
                .seccomp
                .map(|s| s.deny.names().into_iter().map(str::to_owned).collect())
                .unwrap_or_default(),
            privileged: v.confinement.privileged,
            own_root: i.mount && (!v.confinement.privileged || v.image.is_some()),
            user_namespace_root_uid: v.userns_base.unwrap_or(0),
        }),
        image: v.image.map(|i| pb::CellImageStatus {
            reference: i.reference,
            digest: i.digest,
            exposed_ports: i.exposed_ports,
            entrypoint: i.argv,
            env: i.env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: i.working_dir.unwrap_or_default(),
            user: i.user.unwrap_or_default(),
        }),
        ports: v
            .ports
            .into_iter()
            .map(|(h, c)| pb::PortMapping {
                host_port: h.into(),
                container_port: c.into(),
                protocol: "tcp".into(),
            })
            .collect(),
    }
}

pub fn vm_status(v: VmView) -> pb::VirtualMachineStatus {
    pb::VirtualMachineStatus {
        name: v.name,
        state: phase(v.phase),
        vcpus: v.vcpus,
        memory_bytes: v.memory_bytes,
        tap_device: v.tap,
        exit_reason: v.exit_reason,
        error: v.error,
        vmm_pid: v.pid,
        cpu_usage_micros: v.cpu_usage_micros,
        memory_peak_bytes: v.memory_peak_bytes,
    }
}

pub fn instance_status(v: InstanceView) -> pb::InstanceStatus {
    pb::InstanceStatus {
        name: v.name,
        state: phase(v.phase),
        isolation: match v.isolation {
            Some(IsolationKind::Vm) => pb::IsolationKind::Vm,
            Some(IsolationKind::Cell) => pb::IsolationKind::Cell,
            None => pb::IsolationKind::Unspecified,
        } as i32,
        address: v.address,
        spiffe_id: v.spiffe_id,
        error: v.error,
        vm: v.vm.map(vm_status),
        pid: v.pid,
        networks: network_status(&v.attachments),
    }
}

/// Attachments as status: each with its interface in the instance (eth1, ...).
pub fn network_status(list: &[NetAttachment]) -> Vec<pb::NetworkAttachment> {
    (list.iter().enumerate())
        .map(|(k, a)| pb::NetworkAttachment {
            bridge: a.bridge.clone(),
            address: a.address.to_string(),
            interface: format!("eth{}", k + 1),
        })
        .collect()
}

/// A Spawn's or a pod's `networks`: each a bridge name and an address; whether the node
/// has that bridge and the address is free is the runtime's to say.
pub fn attachments(list: &[pb::NetworkAttachment]) -> Result<Vec<NetAttachment>, RuntimeError> {
    (list.iter().enumerate())
        .map(|(i, a)| {
            if a.bridge.is_empty() {
                return Err(invalid(
                    format!("networks[{i}].bridge"),
                    "empty; name one of the node's bridges (aer node info lists them)",
                ));
            }
            if !a.interface.is_empty() {
                return Err(invalid(
                    format!("networks[{i}].interface"),
                    "is set by the node (eth1, eth2, ... in order); leave it empty",
                ));
            }
            let address = a.address.parse().map_err(|e| {
                invalid(
                    format!("networks[{i}].address"),
                    format!("{e}; give the interface's address with its prefix, e.g. 192.168.50.2/24"),
                )
            })?;
            Ok(NetAttachment {
                bridge: a.bridge.clone(),
                address,
            })
        })
        .collect()
}

const MAX_SVID_TTL: u32 = 30 * 86400;
/// Short-lived: the parent renews it at half-life, so a stolen SVID is worth an hour.
const DEFAULT_SVID_TTL: u32 = 3600;

/// A Spawn request; `caller` is the caller's gRPC timeout, which bounds the wait for the
/// child to serve.
/// A Spawn's or a pod's `isolation`: None lets the node choose (a VM where KVM is usable).
pub fn isolation_kind(v: i32) -> Result<Option<IsolationKind>, RuntimeError> {
    match pb::IsolationKind::try_from(v) {
        Ok(pb::IsolationKind::Unspecified) => Ok(None),
        Ok(pb::IsolationKind::Vm) => Ok(Some(IsolationKind::Vm)),
        Ok(pb::IsolationKind::Cell) => Ok(Some(IsolationKind::Cell)),
        Err(_) => Err(invalid("isolation", format!("{v} is not an IsolationKind"))),
    }
}

pub fn instance(i: pb::Instance, caller: Option<Duration>) -> Result<InstanceSpec, RuntimeError> {
    let name = ExecName::parse_instance(&i.name).map_err(|n| invalid("name", n.to_string()))?;
    let isolation = isolation_kind(i.isolation)?;
    let vm = virtual_machine(
        pb::VirtualMachine {
            name: i.name.clone(),
            vcpus: i.vcpus,
            memory_bytes: match i.memory_bytes {
                0 => 256 * MIB,
                m => m,
            },
            ..Default::default()
        },
        None,
    )?;
    let ttl = match i.svid_ttl_seconds {
        0 => DEFAULT_SVID_TTL,
        t if (60..=MAX_SVID_TTL).contains(&t) => t,
        t => {
            return Err(invalid(
                "svid_ttl_seconds",
                format!("{t} is out of range 60..={MAX_SVID_TTL} (0 means 1 h)"),
            ))
        }
    };
    Ok(InstanceSpec {
        name,
        isolation,
        vcpus: vm.vcpus,
        memory_bytes: vm.memory_bytes,
        svid_ttl: Duration::from_secs(u64::from(ttl)),
        serving_within: wait_budget(millis(i.serving_timeout_millis), caller, DEFAULT_SPAWN_SERVING),
        attachments: attachments(&i.networks)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(name: &str, argv: &[&str]) -> pb::Executable {
        pb::Executable {
            name: name.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn executable_errors_name_the_field() {
        let msg = |e: pb::Executable| executable(e).unwrap_err().to_string();
        assert!(msg(exe("", &["/bin/true"])).starts_with("name: '' is empty"));
        assert!(msg(exe("a/b", &["/bin/true"])).starts_with("name: 'a/b' may not contain '/'"));
        assert!(msg(exe("ok", &[])).starts_with("argv: is empty"));
        assert!(msg(exe("ok", &["/bin/true", "a\0"])).starts_with("argv[1]: contains a NUL"));
        let mut e = exe("ok", &["/bin/true"]);
        e.cwd = "tmp".into();
        assert!(msg(e).starts_with("cwd: 'tmp' is relative"));
        let mut e = exe("ok", &["/bin/true"]);
        e.cell = "../x".into();
        assert!(msg(e).starts_with("cell: "));
        let mut e = exe("ok", &["/bin/true"]);
        e.uid = Some(1000);
        let s = executable(e).unwrap();
        assert_eq!((s.uid, s.gid, s.cwd), (Some(1000), Some(1000), None));
    }

    #[test]
    fn limits_are_range_checked() {
        let msg = |r: pb::CellResources| resources(Some(r)).unwrap_err().to_string();
        assert_eq!(
            msg(pb::CellResources {
                cpu_weight: Some(0),
                ..Default::default()
            }),
            "resources.cpu_weight: 0 is out of range 1..=10000"
        );
        assert!(msg(pb::CellResources {
            memory_max_bytes: Some(4096),
            ..Default::default()
        })
        .starts_with("resources.memory_max_bytes: 4096 is out of range"));
        assert!(msg(pb::CellResources {
            pids_max: Some(0),
            ..Default::default()
        })
        .starts_with("resources.pids_max"));
        assert!(msg(pb::CellResources {
            cpu_max: Some(pb::CpuMax {
                quota_micros: 10,
                period_micros: 0
            }),
            ..Default::default()
        })
        .starts_with("resources.cpu_max.quota_micros: 10 is out of range 1000..=102400000"));
        assert!(msg(pb::CellResources {
            memory_max_bytes: Some(1 << 20),
            memory_min_bytes: Some(2 << 20),
            ..Default::default()
        })
        .contains("above memory_max_bytes"));
        assert!(msg(pb::CellResources {
            io_max: vec![pb::IoMax {
                device: "sda".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .starts_with("resources.io_max[0].device"));
        let ok = resources(Some(pb::CellResources {
            cpu_max: Some(pb::CpuMax {
                quota_micros: 50_000,
                period_micros: 0,
            }),
            memory_max_bytes: Some(64 << 20),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(ok.cpu_max, Some((50_000, 100_000)));
    }

    #[test]
    fn isolation_is_deny_by_default() {
        let c = cell(pb::Cell {
            name: "web".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.isolation, Isolation::default());
        let c = cell(pb::Cell {
            name: "web".into(),
            isolation: Some(pb::CellIsolation {
                share_host_network: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        assert!(!c.isolation.network && c.isolation.pid);
    }

    fn confined(c: pb::CellConfinement) -> Result<CellSpec, RuntimeError> {
        cell(pb::Cell {
            name: "web".into(),
            confinement: Some(c),
            ..Default::default()
        })
    }

    #[test]
    fn confinement_is_oci_default_and_refusals_name_the_field() {
        let c = cell(pb::Cell {
            name: "web".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.confinement, Confinement::default());
        assert!(c.confinement.seccomp == Some(Default::default()) && !c.confinement.privileged);
        let e = confined(pb::CellConfinement {
            cap_drop: vec!["BOGUS".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("confinement.cap_drop"), "{e}");
        let e = confined(pb::CellConfinement {
            privileged: true,
            cap_add: vec!["NET_ADMIN".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("confinement.privileged"), "{e}");
        let e = confined(pb::CellConfinement {
            seccomp: 7,
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("confinement.seccomp"), "{e}");
        let p = pb::Cell {
            name: "w".into(),
            confinement: Some(pb::CellConfinement {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            confined(p.confinement.clone().unwrap()).unwrap().confinement,
            Confinement::PRIVILEGED
        );
        let added = confined(pb::CellConfinement {
            cap_add: vec!["NET_ADMIN".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(added.confinement.caps.has("NET_ADMIN"));
    }

    #[test]
    fn a_stricter_profile_needs_no_admin_and_bad_call_names_are_refused() {
        let strict = pb::CellConfinement {
            seccomp: pb::SeccompProfile::Strict as i32,
            seccomp_deny: vec!["mkdir".into(), "ptrace".into()],
            ..Default::default()
        };
        let c = confined(strict.clone()).unwrap().confinement.seccomp.unwrap();
        assert_eq!(c.level, seccomp::Level::Strict);
        assert_eq!(c.deny.names(), ["mkdir", "ptrace"]);
        for (bad, field) in [
            (
                pb::CellConfinement {
                    seccomp_deny: vec!["nosuch".into()],
                    ..Default::default()
                },
                "confinement.seccomp_deny",
            ),
            (
                pb::CellConfinement {
                    seccomp: pb::SeccompProfile::Unconfined as i32,
                    seccomp_deny: vec!["mkdir".into()],
                    ..Default::default()
                },
                "confinement.seccomp_deny",
            ),
            (
                pb::CellConfinement {
                    privileged: true,
                    seccomp_deny: vec!["mkdir".into()],
                    ..Default::default()
                },
                "confinement.privileged",
            ),
        ] {
            let e = confined(bad).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    fn image(f: impl FnOnce(&mut pb::OciImage)) -> Result<ImageRequest, RuntimeError> {
        let mut i = pb::OciImage {
            reference: "10.0.2.100:5000/test/busybox:1".into(),
            ..Default::default()
        };
        f(&mut i);
        oci_image(i)
    }

    #[test]
    fn an_image_request_is_checked_before_anything_is_pulled() {
        fn p(h: u32, c: u32, proto: &str) -> pb::PortMapping {
            pb::PortMapping {
                host_port: h,
                container_port: c,
                protocol: proto.into(),
            }
        }
        let ok = image(|i| i.ports = vec![p(8080, 80, ""), p(8081, 80, "TCP")]).unwrap();
        assert_eq!(ok.ports, [(8080, 80), (8081, 80)]);
        type Change = Box<dyn FnOnce(&mut pb::OciImage)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|i| i.reference = " ".into()), "image.reference: empty"),
            (Box::new(|i| i.reference = "UPPER/Case:1".into()), "image.reference"),
            (
                Box::new(|i| i.pull_policy = 9),
                "image.pull_policy: 9 is not a PullPolicy",
            ),
            (
                Box::new(|i| i.ports = vec![p(0, 80, "")]),
                "image.ports[0].host_port: 0 is not a port",
            ),
            (
                Box::new(|i| i.ports = vec![p(80, 70000, "")]),
                "image.ports[0].container_port: 70000",
            ),
            (
                Box::new(|i| i.ports = vec![p(80, 80, ""), p(80, 81, "")]),
                "image.ports[1].host_port: node port 80 is published twice",
            ),
            (
                Box::new(|i| i.ports = vec![p(80, 80, "sctp")]),
                "image.ports[0].protocol: 'sctp'",
            ),
            (
                Box::new(|i| i.ports = vec![p(53, 53, "udp")]),
                "UDP ports are not published",
            ),
            (
                Box::new(|i| i.working_dir = "srv".into()),
                "image.working_dir: 'srv' is relative",
            ),
            (Box::new(|i| i.user = "a:b:c".into()), "image.user: 'a:b:c' is not"),
            (Box::new(|i| i.user = ":5".into()), "image.user"),
            (
                Box::new(|i| {
                    i.env.insert("A=B".into(), "x".into());
                }),
                "image.env[\"A=B\"]",
            ),
            (
                Box::new(|i| i.args = vec!["a\0b".into()]),
                "image.args[0]: contains a NUL byte",
            ),
        ];
        for (f, want) in cases {
            let e = image(f).err().unwrap().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }
}
