//! The volumes a cell makes or joins, and where they appear in its root (what a request
//! asks; `runtime/volume.rs` makes them).

use super::names::ExecName;

/// Where the node's pod directory is bound in an instance that has one (a CRI sandbox's
/// kubelet directory, with the `cell` handler): a pod-path volume binds a file or
/// directory of it.
pub const POD_DIR: &str = "/run/aurae/pod";

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
    /// A files volume: a tmpfs of its own made holding these (checked at the edge), rather
    /// than an empty one.
    pub files: Option<Vec<VolumeFile>>,
    /// A file or directory of the node's pod directory bound into this instance
    /// (`runtime::volume::POD_DIR`), relative to it: bound where it is rather than made
    /// (checked at the edge, and given only by the instance's parent).
    pub pod_path: Option<String>,
}

/// A file a files volume holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeFile {
    /// Relative to the volume, normal components only (checked at the edge).
    pub path: String,
    pub content: Vec<u8>,
    /// Permission bits only (0o777 at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Where one of the cell's volumes appears in its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    pub volume: ExecName,
    /// Absolute, normal components only (checked at the edge).
    pub path: String,
    pub read_only: bool,
    /// A file or directory inside a files volume bound instead of the whole volume
    /// (relative, normal components only).
    pub sub_path: Option<String>,
}

/// The most files a files volume holds, and their bytes in all (a request stays under
/// gRPC's 4 MiB).
pub const MAX_VOLUME_FILES: usize = 256;
pub const MAX_VOLUME_FILES_BYTES: usize = 3 << 20;

/// Relative, with normal components only, not empty, at most 4096 bytes.
pub fn relative_normal(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 4096
        && !p.starts_with('/')
        && !p.contains('\0')
        && std::path::Path::new(p)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}
