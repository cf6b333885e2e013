//! Executables: listed processes (`process.rs`) that a client runs by name with
//! RunExecutable, in a cell it names or in a private cell of their own.

use super::error::Result;
use super::host::Host;
use super::names::{CellName, ExecName};
use super::process;
use super::process::{ExecView, Launch};
use super::spec::ExecutableSpec;
use std::sync::Arc;

/// An executable is a listed process.
pub type Executable = super::process::Process;

/// Starts an executable; returns once it runs (execve succeeded) or with why not.
/// On failure nothing is left behind: no table entry, cgroup or private cell.
pub(crate) async fn run(host: &Host, spec: ExecutableSpec) -> Result<ExecView> {
    host.usable()?;
    Ok(process::launch(host, spec, Launch::new(true, None)).await?.view())
}

/// Whether no executable has this name.
pub(super) fn name_free(host: &Host, name: &ExecName) -> bool {
    host.table().vacant::<Executable>(name.as_str()).is_ok()
}

pub(super) async fn free(host: &Host, e: &Arc<Executable>) -> Result<()> {
    e.discard(host, e.name.as_str()).await?;
    host.table().remove::<Executable>(e.name.as_str());
    Ok(())
}

/// The listed executables of cell `c` (and, with `nested`, of the cells inside it).
pub(super) fn in_cell(host: &Host, c: &CellName, nested: bool) -> Vec<Arc<Executable>> {
    host.table()
        .all::<Executable>()
        .filter(|e| if nested { e.cell.is_within(c) } else { e.cell == *c })
        .cloned()
        .collect()
}

/// Drops ended executables from the table (their cgroups went with their cell).
pub(super) fn forget(host: &Host, execs: &[Arc<Executable>]) {
    let mut t = host.table();
    for e in execs {
        t.remove::<Executable>(e.name.as_str());
    }
}
