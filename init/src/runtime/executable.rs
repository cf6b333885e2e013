//! Executables: listed processes (`process.rs`) that a client runs by name with
//! RunExecutable, in a cell it names or in a private cell of their own.

use super::error::Result;
use super::host::Host;
use super::names::{CellName, ExecName};
use super::process::{ExecView, Launch};
use super::spec::ExecutableSpec;
use std::sync::Arc;

/// An executable is a listed process.
pub type Executable = super::process::Process;

impl Host {
    /// Starts an executable; returns once it runs (execve succeeded) or with why not.
    /// On failure nothing is left behind: no table entry, cgroup or private cell.
    pub async fn run_executable(&self, spec: ExecutableSpec) -> Result<ExecView> {
        self.usable()?;
        Ok(self.launch(spec, Launch::new(true, None)).await?.view())
    }

    /// Whether no executable has this name.
    pub(super) fn executable_name_free(&self, name: &ExecName) -> bool {
        self.table().vacant::<Executable>(name.as_str()).is_ok()
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
