//! Executables: listed processes (`process.rs`) that a client runs by name with
//! RunExecutable, in a cell it names or in a private cell of their own.

use super::error::{Result, RuntimeError};
use super::names::CellName;
use super::process::{ExecView, Launch};
use super::spec::{Confinement, ExecutableSpec, Isolation, Resources, DEFAULT_PATH};
use super::{logs, Runtime};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

/// An executable is a listed process.
pub type Executable = super::process::Process;

/// Finds argv[0]: absolute paths are used as given (their errors come from execve, inside
/// the cell's mount namespace); bare names are looked up in PATH.
fn resolve(argv0: &str, path_var: &str) -> Result<String> {
    if argv0.starts_with('/') {
        return Ok(argv0.to_owned());
    }
    if argv0.contains('/') {
        return Err(RuntimeError::invalid(
            "argv[0]",
            format!("'{argv0}' is a relative path; give an absolute path or a bare name looked up in PATH"),
        ));
    }
    path_var
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(argv0))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .map(|p| p.to_string_lossy().into_owned())
        .ok_or_else(|| RuntimeError::NotFound(format!("argv[0]: '{argv0}' is not found in PATH ({path_var})")))
}

impl Runtime {
    /// Starts an executable; returns once it runs (execve succeeded) or with why not.
    /// On failure nothing is left behind: no table entry, cgroup or private cell.
    pub async fn run_executable(&self, spec: ExecutableSpec) -> Result<ExecView> {
        self.usable()?;
        let path_var = spec.env.get("PATH").map_or(DEFAULT_PATH, String::as_str).to_owned();
        let program = resolve(&spec.argv[0], &path_var)?;
        let how = Launch {
            program,
            path_var,
            isolation: Isolation::default(),
            resources: Resources::default(),
            confinement: Confinement::default(),
            stdout_as: logs::Stream::Stdout,
            listed: true,
            control: None,
            binds: Vec::new(),
        };
        Ok(self.launch(spec, how).await?.view())
    }

    pub(super) async fn free_exec(&self, e: &Arc<Executable>) -> Result<()> {
        self.discard_process(e, e.name.as_str()).await?;
        self.table().remove::<Executable>(e.name.as_str());
        Ok(())
    }

    /// The listed executables of cell `c` (and, with `nested`, of the cells inside it).
    pub(super) fn executables_in(&self, c: &CellName, nested: bool) -> Vec<Arc<Executable>> {
        self.table()
            .all::<Executable>()
            .filter(|e| if nested { e.cell.is_within(c) } else { e.cell == *c })
            .cloned()
            .collect()
    }

    /// Drops ended executables from the table (their cgroups went with their cell).
    pub(super) fn forget_executables(&self, execs: &[Arc<Executable>]) {
        let mut t = self.table();
        for e in execs {
            t.remove::<Executable>(e.name.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_bare_names_in_path_and_refuses_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        let prog = d.path().join("tool");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = format!("/nonexistent:{}", d.path().display());
        assert!(
            matches!(resolve("tool", &path), Err(RuntimeError::NotFound(_))),
            "not executable: skipped"
        );
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(resolve("tool", &path).unwrap(), prog.to_string_lossy());
        assert_eq!(resolve("/x/y", &path).unwrap(), "/x/y");
        let e = resolve("./tool", &path).unwrap_err();
        assert!(e.to_string().starts_with("argv[0]: './tool' is a relative path"), "{e}");
        let e = resolve("nope", "/a:/b").unwrap_err();
        assert_eq!(e.to_string(), "argv[0]: 'nope' is not found in PATH (/a:/b)");
    }
}
