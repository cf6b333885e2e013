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

#[cfg(test)]
mod tests {
    use super::*;

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
