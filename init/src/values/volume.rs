//! The volumes a cell makes or joins, and where they appear in its root (what a request
//! asks; `runtime/volume.rs` makes them).

use super::names::ExecName;

/// A volume a cell makes or joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: ExecName,
    /// A tmpfs of its own of `size_limit` bytes, rather than a directory.
    pub memory: bool,
    pub size_limit: u64,
    /// Who made the cell that lists it (the caller's SPIFFE ID): a volume is joined only
    /// by cells of the same owner, so one client's scratch data is not another's to read
    /// by guessing its name.
    pub owner: String,
}

/// Where one of the cell's volumes appears in its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    pub volume: ExecName,
    /// Absolute, normal components only (checked at the edge).
    pub path: String,
    pub read_only: bool,
}
