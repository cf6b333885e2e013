//! Cells: name, resources (cgroup v2 limits) and confinement, checked.

use super::{invalid, non_empty, range, MAX_BYTES, MIN_MEMORY_LIMIT, PID_MAX_LIMIT};
use crate::pb;
use crate::runtime::confine::{caps::CapSet, seccomp};
use crate::runtime::error::RuntimeError;
use crate::runtime::names::CellName;
use crate::runtime::spec::{CellSpec, Confinement, IoMax, Isolation, Resources};

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
            binds: Vec::new(),
            ready_within: crate::runtime::spec::READY_MAX,
            image: None,
            ports: Vec::new(),
        })
    }
}
