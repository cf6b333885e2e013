//! The cgroup v2 tree auraed owns: controllers enabled at the root and in `aurae/`, the
//! parent of every workload's cgroup. Paths are parameters so tests can use a fixture dir.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Controllers auraed enables for its workloads, in the order the kernel lists them.
pub const WANTED_CONTROLLERS: &[&str] = &["cpuset", "cpu", "io", "memory", "pids"];

/// The cgroup under which every workload's cgroup is created.
pub const WORKLOADS_CGROUP: &str = "aurae";

/// Reads a cgroup's space-separated controller list file.
pub fn read_controllers(path: &Path) -> io::Result<Vec<String>> {
    Ok(fs::read_to_string(path)?
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

/// Enables each wanted controller that `dir/cgroup.controllers` offers in
/// `dir/cgroup.subtree_control`, one at a time so one refusal does not block the rest.
/// Returns the controllers now enabled and an error line per refused one.
pub fn enable_controllers(dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    let offered = match read_controllers(&dir.join("cgroup.controllers")) {
        Ok(c) => c,
        Err(e) => {
            return (
                Vec::new(),
                vec![format!("read {}/cgroup.controllers: {e}", dir.display())],
            )
        }
    };
    for c in WANTED_CONTROLLERS {
        if !offered.iter().any(|o| o == c) {
            errors.push(format!(
                "controller '{c}' is not offered by the kernel in {}",
                dir.display()
            ));
            continue;
        }
        if let Err(e) = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
            errors.push(format!("enable '{c}' in {}/cgroup.subtree_control: {e}", dir.display()));
        }
    }
    let enabled = read_controllers(&dir.join("cgroup.subtree_control")).unwrap_or_default();
    (enabled, errors)
}

/// Sets up `root/aurae` with the wanted controllers enabled for its children.
/// Returns the workloads cgroup path, the controllers usable by workloads, and errors.
pub fn setup_workloads_root(root: &Path) -> (PathBuf, Vec<String>, Vec<String>) {
    let (_, mut errors) = enable_controllers(root);
    let dir = root.join(WORKLOADS_CGROUP);
    if let Err(e) = fs::create_dir_all(&dir) {
        errors.push(format!("mkdir {}: {e}", dir.display()));
        return (dir, Vec::new(), errors);
    }
    let (enabled, more) = enable_controllers(&dir);
    errors.extend(more);
    (dir, enabled, errors)
}

/// The ceilings PID 1 puts on the whole workloads root, so that no workload (a fork bomb, a
/// leak, a cell or VM without limits) can take what PID 1 needs to keep serving: memory
/// below the node's total by a reserve of 1/16 (at least 64 MiB), and tasks below the
/// kernel's own task ceiling by 1024, or by a quarter of it on a small node. That ceiling
/// is the smaller of `pid_max` and `threads-max` (the kernel sizes the latter from RAM,
/// ~4000 tasks on 512 MiB, ~900 on the 128 MiB of a small pod's instance, and no
/// capability exempts a fork from it): PID 1 must still be able to start its threads
/// when every workload pid is taken. Returns (file, value) pairs.
pub fn workload_ceilings(mem_total: u64, pid_max: u64, threads_max: u64) -> [(&'static str, u64); 2] {
    let reserve = (mem_total / 16).max(64 << 20);
    let tasks = pid_max.min(threads_max);
    [
        ("memory.max", mem_total.saturating_sub(reserve)),
        ("pids.max", tasks.saturating_sub((tasks / 4).min(1024)).max(1)),
    ]
}

/// Writes `workload_ceilings` for this node into `dir` (the workloads root); errors say which
/// file.
pub fn apply_workload_ceilings(dir: &Path) -> Vec<String> {
    let mem_total = Some(crate::node::mem_total_bytes()).filter(|b| *b > 0);
    let sysctl = |name: &str| {
        fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let (Some(mem_total), Some(pid_max), Some(threads_max)) = (mem_total, sysctl("pid_max"), sysctl("threads-max"))
    else {
        return vec!["workload ceilings: cannot read MemTotal, pid_max or threads-max".into()];
    };
    let mut errors = Vec::new();
    for (file, value) in workload_ceilings(mem_total, pid_max, threads_max) {
        match fs::write(dir.join(file), value.to_string()) {
            Ok(()) => tracing::info!("workloads {file} {value}"),
            Err(e) => errors.push(format!("write {}/{file}: {e}", dir.display())),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workloads_root_leaves_pid1_a_reserve() {
        let gib = 1u64 << 30;
        assert_eq!(
            workload_ceilings(gib, 32768, 100_000),
            [("memory.max", gib - (64 << 20)), ("pids.max", 31744)]
        );
        // A small node: threads-max, not pid_max, is the kernel's real ceiling.
        assert_eq!(workload_ceilings(gib / 2, 32768, 3900)[1], ("pids.max", 2925));
        // A pod's 128 MiB instance (threads-max about 900): a quarter kept back, not
        // all of it (pids.max 1 left its containers unable to start).
        assert_eq!(workload_ceilings(gib / 8, 32768, 896)[1], ("pids.max", 672));
        assert_eq!(
            workload_ceilings(16 * gib, 4194304, 100_000)[0],
            ("memory.max", 15 * gib)
        );
        assert_eq!(workload_ceilings(0, 0, 0), [("memory.max", 0), ("pids.max", 1)]);
    }

    #[test]
    fn enables_only_offered_controllers_and_reports_the_rest() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        // A plain file stands in for the kernel's: each write replaces it, so the last wins.
        let (_, errors) = enable_controllers(d.path());
        assert_eq!(
            fs::read_to_string(d.path().join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("'cpuset'")));
        assert!(errors.iter().any(|e| e.contains("'io'")));
    }

    #[test]
    fn missing_cgroupfs_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let (enabled, errors) = enable_controllers(&d.path().join("nope"));
        assert!(enabled.is_empty());
        assert!(errors[0].contains("cgroup.controllers"));
    }
}
