//! Value types every layer shares: workload names, where a child runs, the volumes cells
//! share. A leaf: it imports nothing of the crate, so `runtime`, `pod` and `spawn` can all
//! use it without importing each other.

pub mod names;
pub mod volume;

/// Where a child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationKind {
    Vm,
    Cell,
}
