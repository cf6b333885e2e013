//! Cells: name, resources (cgroup v2 limits), confinement and the image request
//! (reference, pull policy, command, env, user, volumes and ports), checked before anything
//! is pulled or made (the runtime pulls the image and makes the root).

use super::{
    env_entries, invalid, no_nul, non_empty, range, MAX_ARGS, MAX_ARG_BYTES, MAX_BYTES, MIB, MIN_MEMORY_LIMIT,
    PID_MAX_LIMIT,
};
use crate::image::catalog::PullPolicy;
use crate::image::pull::Credentials;
use crate::pb;
use crate::runtime::confine::{caps::CapSet, seccomp};
use crate::runtime::error::RuntimeError;
use crate::runtime::names::{CellName, ExecName};
use crate::runtime::spec::{CellSpec, Confinement, ImageRequest, Io, IoMax, Isolation, Resources, Stdin};
use crate::runtime::volume::{VolumeFile, VolumeMount, VolumeSpec, DEFAULT_MEMORY_LIMIT as VOLUME_DEFAULT_BYTES};
use crate::values::volume::{relative_normal, MAX_VOLUME_FILES, MAX_VOLUME_FILES_BYTES};

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

impl TryFrom<pb::Cell> for CellSpec {
    type Error = RuntimeError;

    fn try_from(c: pb::Cell) -> Result<CellSpec, RuntimeError> {
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
            binds: Default::default(),
            ready_within: crate::runtime::spec::READY_MAX,
            image: None,
            ports: Vec::new(),
        })
    }
}

/// The largest memory volume: what a tmpfs of a 2^40-byte node could hold.
const MAX_VOLUME_BYTES: u64 = 1 << 40;
const MAX_VOLUMES: usize = 64;

/// A files volume's files, checked: relative paths of their own, none inside another
/// (a file is not a directory), within the caps; permission bits only.
pub fn volume_files(field: &str, files: &[pb::VolumeFile]) -> Result<Vec<VolumeFile>, RuntimeError> {
    if files.len() > MAX_VOLUME_FILES {
        return Err(invalid(
            field,
            format!("{} files; at most {MAX_VOLUME_FILES}", files.len()),
        ));
    }
    let bytes: usize = files.iter().map(|x| x.content.len()).sum();
    if bytes > MAX_VOLUME_FILES_BYTES {
        return Err(invalid(
            field,
            format!("{bytes} bytes in all; at most {MAX_VOLUME_FILES_BYTES}"),
        ));
    }
    let mut out: Vec<VolumeFile> = Vec::with_capacity(files.len());
    for (n, x) in files.iter().enumerate() {
        let p = x.path.trim_end_matches('/');
        if !relative_normal(p) {
            return Err(invalid(
                format!("{field}[{n}].path"),
                format!("'{}' must be relative, without '.' or '..'", x.path),
            ));
        }
        let inside = |a: &str, b: &str| a == b || a.strip_prefix(b).is_some_and(|r| r.starts_with('/'));
        if let Some(o) = out.iter().find(|o| inside(&o.path, p) || inside(p, &o.path)) {
            return Err(invalid(
                format!("{field}[{n}].path"),
                format!(
                    "'{p}' and '{}' cannot both be files; give each file a path of its own",
                    o.path
                ),
            ));
        }
        out.push(VolumeFile {
            path: p.to_owned(),
            content: x.content.clone(),
            mode: x.mode & 0o777,
            uid: x.uid,
            gid: x.gid,
        });
    }
    Ok(out)
}

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
        if let Some(files) = &v.files {
            if v.empty_dir.is_some() || !v.pod_path.is_empty() {
                return Err(invalid(
                    format!("{f}.files"),
                    "a volume is an empty_dir, a files volume or a pod_path, one of them; send one",
                ));
            }
            specs.push(VolumeSpec {
                name,
                memory: true,
                size_limit: 0,
                owner: String::new(),
                files: Some(volume_files(&format!("{f}.files.files"), &files.files)?),
                pod_path: None,
            });
            continue;
        }
        if !v.pod_path.is_empty() {
            let p = v.pod_path.trim_end_matches('/');
            if v.empty_dir.is_some() {
                return Err(invalid(
                    format!("{f}.pod_path"),
                    "a volume is an empty_dir, a files volume or a pod_path, one of them; send one",
                ));
            }
            if !relative_normal(p) || p.len() > 4096 {
                return Err(invalid(
                    format!("{f}.pod_path"),
                    format!("'{p}' must be a path relative to the pod directory, without '.' or '..'"),
                ));
            }
            specs.push(VolumeSpec {
                name,
                memory: false,
                size_limit: 0,
                owner: String::new(),
                files: None,
                pod_path: Some(p.to_owned()),
            });
            continue;
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
            files: None,
            pod_path: None,
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
        let sub_path = match (m.sub_path.as_str(), &spec.files) {
            ("", _) => None,
            (sub, Some(files)) => {
                let sub = sub.trim_end_matches('/');
                let held = files
                    .iter()
                    .any(|x| x.path == sub || x.path.strip_prefix(sub).is_some_and(|r| r.starts_with('/')));
                if !relative_normal(sub) || !held {
                    return Err(invalid(
                        format!("{f}.sub_path"),
                        format!("'{sub}' is not a file or directory of volume '{}'; name one of its files' paths (or a parent of one)", m.name),
                    ));
                }
                Some(sub.to_owned())
            }
            (_, None) => {
                return Err(invalid(
                    format!("{f}.sub_path"),
                    "only a files volume's mount names a sub_path; mount the whole volume",
                ))
            }
        };
        out.push(VolumeMount {
            volume: spec.name.clone(),
            path: clean,
            read_only: m.read_only,
            sub_path,
        });
    }
    Ok((specs, out))
}

impl TryFrom<pb::OciImage> for ImageRequest {
    type Error = RuntimeError;

    fn try_from(i: pb::OciImage) -> Result<ImageRequest, RuntimeError> {
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
            io: Io {
                stdin: Stdin::of(i.stdin, i.stdin_once).ok_or_else(|| {
                    invalid(
                        "image.stdin_once",
                        "needs image.stdin; set it too, or leave stdin_once out",
                    )
                })?,
                tty: i.tty,
            },
            ports,
        })
    }
}

/// Published ports, checked: numbers in range, TCP, each node port once.
fn ports(list: &[pb::PortMapping]) -> Result<Vec<(u16, u16)>, RuntimeError> {
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
                return Err(RuntimeError::NotYet(format!(
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
