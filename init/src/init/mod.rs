//! PID 1 duties: mounts, the cgroup root, hostname, network bring-up, reaping, signals and
//! power. Every step that fails is logged and recorded; the node keeps serving what it can.

pub mod cgroup;
pub mod cmdline;
pub mod data;
pub mod mounts;
pub mod power;
pub mod reaper;
pub mod switch_root;

use cmdline::BootConfig;
use std::path::PathBuf;

/// An init step that failed (reported by `NodeInfo.init_failures`).
#[derive(Debug, Clone)]
pub struct InitFailure {
    pub step: String,
    pub error: String,
}

/// What bring-up produced.
#[derive(Debug, Clone, Default)]
pub struct InitReport {
    pub failures: Vec<InitFailure>,
    /// Controllers usable by workloads (enabled in the workloads cgroup's subtree).
    pub controllers: Vec<String>,
    /// The cgroup under which workloads are created.
    pub workloads_cgroup: PathBuf,
    /// The bridge VMs' and instances' TAPs attach to, when bring-up made it.
    pub bridge: Option<(String, cmdline::Ipv4Cidr)>,
    /// The named bridges (`aurae.bridges=`) bring-up made.
    pub named_bridges: Vec<crate::net::NamedBridge>,
    /// The uplink and its static address (`aurae.iface`, `aurae.ip`), or whether DHCP
    /// leases it (`net::dhcp::current`).
    pub uplink: Option<(String, Option<cmdline::Ipv4Cidr>, bool)>,
    /// How this node was spawned, when it is a spawned instance.
    pub spawned_as: Option<crate::pb::IsolationKind>,
    /// `aurae.max_workloads` (None: the default).
    pub max_workloads: Option<usize>,
    /// `aurae.child_check` (None: the default).
    pub child_check: Option<std::time::Duration>,
}

impl InitReport {
    pub fn fail(&mut self, step: &str, error: impl Into<String>) {
        let error = error.into();
        tracing::error!("init step '{step}' failed: {error}");
        self.failures.push(InitFailure {
            step: step.into(),
            error,
        });
    }
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// PID 1 bring-up. Runs before the tokio runtime exists; must not panic.
pub fn pid1_bringup() -> (BootConfig, InitReport) {
    let mut report = InitReport::default();
    // Mount errors are kept until logging is configured from the command line (needs /proc).
    let mut early = Vec::new();
    for m in mounts::PID1_MOUNTS {
        if let Err(e) = mounts::mount_one(m) {
            early.push((format!("mount {}", m.target), e));
        }
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (cfg, warnings) = BootConfig::parse(&cmdline);
    crate::logging::init(cfg.log_level, true);
    tracing::info!("auraed {} starting as PID 1", crate::VERSION);
    for (step, e) in early {
        report.fail(&step, e.to_string());
    }
    for w in warnings {
        tracing::warn!("kernel command line: {w}");
    }

    // Ctrl-Alt-Del becomes SIGINT to us instead of an immediate reboot.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        report.fail("disable ctrl-alt-del", e.to_string());
    }
    if let Err(e) = nix::unistd::sethostname(&cfg.hostname) {
        report.fail("hostname", e.to_string());
    }
    if cfg.vmm {
        report.spawned_as = Some(crate::pb::IsolationKind::Vm);
    }
    report.max_workloads = Some(cfg.max_workloads);
    report.child_check = Some(std::time::Duration::from_secs(cfg.child_check_secs));
    report.uplink = Some((cfg.iface.clone(), cfg.ip, cfg.dhcp));
    let net_failures = crate::net::bring_up(&crate::net::Plan {
        iface: &cfg.iface,
        ip: cfg.ip,
        dhcp: cfg.dhcp.then_some(crate::net::DhcpPlan {
            set_hostname: !cfg.hostname_given,
        }),
        gateway: cfg.gateway,
        bridge: &cfg.bridge,
        bridge_ip: cfg.bridge_ip,
        named: &cfg.bridges,
        nics: &cfg.nics,
    });
    if !crate::net::bridge_failed(&cfg.bridge, &net_failures) {
        report.bridge = Some((cfg.bridge.clone(), cfg.bridge_ip));
    }
    report.named_bridges = (cfg.bridges.iter())
        .filter(|b| !crate::net::bridge_failed(&b.name, &net_failures))
        .cloned()
        .collect();
    for (step, e) in net_failures {
        report.fail(&step, e.to_string());
    }
    let (dir, controllers, mut errors) = cgroup::setup_workloads_root(std::path::Path::new(CGROUP_ROOT));
    errors.extend(cgroup::apply_workload_ceilings(&dir));
    for e in errors {
        report.fail("cgroup", e);
    }
    tracing::info!("cgroup v2 controllers for workloads: {}", controllers.join(" "));
    report.controllers = controllers;
    report.workloads_cgroup = dir;
    (cfg, report)
}

/// Bring-up of a child auraed that Spawn runs in a cell (its own mount, cgroup, pid and
/// network namespaces): mount cgroup2 (rooted at the cell's leaf by the cgroup namespace),
/// move itself into `_auraed` so the root may hand controllers down, and prepare `aurae`.
pub fn cell_instance_bringup(bridge_ip: Option<cmdline::Ipv4Cidr>, hostname: Option<&str>) -> InitReport {
    let mut report = InitReport {
        spawned_as: Some(crate::pb::IsolationKind::Cell),
        ..InitReport::default()
    };
    // Its own UTS namespace: the name its parent gave it (a pod's hostname).
    if let Some(h) = hostname {
        match crate::net::valid_hostname(h) {
            true => {
                if let Err(e) = nix::unistd::sethostname(h) {
                    report.fail("hostname", format!("{h}: {e}"));
                }
            }
            false => report.fail("hostname", format!("'{h}' is not a valid hostname; kept the cell's")),
        }
    }
    if let Err(e) = reaper::become_subreaper() {
        report.fail("subreaper", e.to_string());
    }
    let root = std::path::Path::new(CGROUP_ROOT);
    let mounted = nix::mount::mount(
        Some("cgroup2"),
        root,
        Some("cgroup2"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
        Some("nsdelegate"),
    );
    if let Err(e) = mounted {
        report.fail("cgroup", format!("mount cgroup2 on {CGROUP_ROOT}: {e}"));
    }
    let own = root.join("_auraed");
    let moved = std::fs::create_dir_all(&own)
        .and_then(|()| std::fs::write(own.join("cgroup.procs"), std::process::id().to_string()));
    if let Err(e) = moved {
        report.fail("cgroup", format!("move into {}: {e}", own.display()));
    }
    let (dir, controllers, errors) = cgroup::setup_workloads_root(root);
    for e in errors {
        report.fail("cgroup", e);
    }
    report.controllers = controllers;
    report.workloads_cgroup = dir;
    // A bridge of its own in its network namespace, so it can spawn in turn.
    if let Some(ip) = bridge_ip {
        let cfg = cmdline::BootConfig {
            bridge_ip: ip,
            ..cmdline::BootConfig::default()
        };
        let steps = [
            crate::net::ioctl::create_bridge(&cfg.bridge),
            crate::net::ioctl::set_ipv4(&cfg.bridge, ip.addr, ip.prefix),
            crate::net::ioctl::link_up(&cfg.bridge),
        ];
        match steps.into_iter().find_map(Result::err) {
            None => report.bridge = Some((cfg.bridge, ip)),
            Some(e) => report.fail("bridge", e.to_string()),
        }
    }
    report
}

/// Daemon bring-up on a host with its own init: become the subreaper and prepare
/// `<auraed's cgroup>/aurae` for workloads. auraed does not move itself, so its own cgroup
/// can offer controllers to that child only when nothing else runs in it (e.g. a systemd
/// unit with `Delegate=yes`); cells on a host without them refuse the limits that need them.
pub fn daemon_bringup() -> InitReport {
    let mut report = InitReport::default();
    if let Err(e) = reaper::become_subreaper() {
        report.fail("subreaper", e.to_string());
    }
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)))
        .unwrap_or_else(|| "/".into());
    let dir = PathBuf::from(CGROUP_ROOT).join(own.trim_start_matches('/'));
    if let Err(e) = cgroup::read_controllers(&dir.join("cgroup.controllers")) {
        report.fail(
            "cgroup",
            format!(
                "read {}/cgroup.controllers: {e} (is cgroup v2 mounted at {CGROUP_ROOT}?)",
                dir.display()
            ),
        );
        report.workloads_cgroup = dir;
        return report;
    }
    // Best effort: refused (EBUSY) while other processes share auraed's cgroup.
    let (_, refused) = cgroup::enable_controllers(&dir);
    for r in refused {
        tracing::warn!("cgroup: {r}");
    }
    let workloads = dir.join(cgroup::WORKLOADS_CGROUP);
    if let Err(e) = std::fs::create_dir_all(&workloads) {
        report.fail("cgroup", format!("mkdir {}: {e}", workloads.display()));
    }
    let (enabled, _) = cgroup::enable_controllers(&workloads);
    report.controllers = enabled;
    report.workloads_cgroup = workloads;
    report
}
