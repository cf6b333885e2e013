//! PID 1 duties: mounts, the cgroup root, hostname, network bring-up, reaping, signals and
//! power. Every step that fails is logged and recorded; the node keeps serving what it can.

pub mod cgroup;
pub mod cmdline;
pub mod mounts;
pub mod power;
pub mod reaper;

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
}

impl InitReport {
    fn fail(&mut self, step: &str, error: impl Into<String>) {
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
        report.fail(&step, e);
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
    let net_failures = crate::net::bring_up(&cfg);
    if !net_failures.iter().any(|(step, _)| step.starts_with("bridge")) {
        report.bridge = Some((cfg.bridge.clone(), cfg.bridge_ip));
    }
    for (step, e) in net_failures {
        report.fail(&step, e);
    }
    let (dir, controllers, errors) = cgroup::setup_workloads_root(std::path::Path::new(CGROUP_ROOT));
    for e in errors {
        report.fail("cgroup", e);
    }
    tracing::info!("cgroup v2 controllers for workloads: {}", controllers.join(" "));
    report.controllers = controllers;
    report.workloads_cgroup = dir;
    (cfg, report)
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
