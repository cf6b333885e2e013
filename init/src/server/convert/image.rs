//! A cell's image request (reference, pull policy, command, env, user, volumes and
//! ports), checked before anything is pulled (the runtime pulls it and makes the root).

use super::{env_entries, invalid, no_nul, MAX_ARGS, MAX_ARG_BYTES, MIB};
use crate::image::catalog::PullPolicy;
use crate::image::pull::Credentials;
use crate::pb;
use crate::runtime::error::RuntimeError;
use crate::runtime::names::ExecName;
use crate::runtime::spec::ImageRequest;
use crate::runtime::volume::{VolumeMount, VolumeSpec, DEFAULT_MEMORY_LIMIT as VOLUME_DEFAULT_BYTES};

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
            ports,
        })
    }
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
