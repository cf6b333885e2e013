//! Copies of the files kubelet made for a pod (for a sandbox whose instance cannot be given
//! the pod's directory: a microVM): each regular file of a mount, read through kubelet's
//! atomic-writer symlinks with every symlink checked to stay inside the mount, capped; a
//! stamp that moves when they change, so a refresh reads them only then; and the write
//! of a termination log back to the node.

use crate::values::volume::VolumeFile;
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The most bytes one mount copies (Kubernetes caps a configmap or secret at 1 MiB).
pub const MAX_MOUNT_BYTES: usize = 1 << 20;
/// How many directories deep a mounted directory is copied.
const MAX_DEPTH: usize = 8;
/// The file a single-file mount's volume holds.
pub(super) const FILE: &str = "file";

/// Why kubelet's files could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("'{path}': {source}")]
    Io { path: String, source: std::io::Error },
    #[error("holds more than {MAX_MOUNT_BYTES} bytes, the most a mount copies")]
    TooLarge,
    #[error(
        "holds more than {} files, the most a mount copies",
        crate::values::volume::MAX_VOLUME_FILES
    )]
    TooMany,
    #[error("'{0}' is more than {MAX_DEPTH} directories deep")]
    TooDeep(String),
    #[error("'{0}' leads out of the volume (to '{1}')")]
    LeadsOut(String, String),
    #[error("'{0}' is neither a file nor a directory")]
    Special(String),
    #[error("'{0}' has a name that is not UTF-8")]
    NotUtf8(String),
    #[error("now leads to '{0}', outside {1}")]
    Moved(String, String),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The files of `path` (a file: one, named `FILE`; a directory: each regular file beneath
/// it, kubelet's `..data` and timestamped directories left out but followed through the
/// symlinks that name their files), with every symlink resolved inside `root`.
pub fn copy_of(path: &Path) -> Result<(Vec<VolumeFile>, bool), CopyError> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let dir = each_file(path, &mut |real, rel, md| {
        if out.len() >= crate::values::volume::MAX_VOLUME_FILES {
            return Err(CopyError::TooMany);
        }
        out.push(read_file(real, rel, md, &mut bytes)?);
        Ok(())
    })?;
    Ok((out, dir))
}

/// What changes when a file of `path` does (each file's name, size, modification time,
/// inode, mode and owner), read without reading the files: a refresh reads them only when
/// this moved.
pub fn stamp_of(path: &Path) -> Result<[u8; 32], CopyError> {
    let mut h = Sha256::new();
    each_file(path, &mut |_, rel, md| {
        h.update(rel.as_bytes());
        for n in [
            md.len(),
            md.mtime() as u64,
            md.mtime_nsec() as u64,
            md.ino(),
            md.mode() as u64,
        ] {
            h.update(n.to_le_bytes());
        }
        h.update(md.uid().to_le_bytes());
        h.update(md.gid().to_le_bytes());
        Ok(())
    })?;
    Ok(h.finalize().into())
}

/// Calls `each` for every regular file of `path` (a file: itself, named `FILE`), with its
/// real path, its path in the copy and its metadata; answers whether `path` is a
/// directory.
fn each_file(path: &Path, each: &mut EachFile<'_>) -> Result<bool, CopyError> {
    let root = std::fs::canonicalize(path).map_err(io_at(path))?;
    let md = std::fs::metadata(&root).map_err(io_at(&root))?;
    if md.is_file() {
        each(&root, FILE, &md)?;
        return Ok(false);
    }
    if !md.is_dir() {
        return Err(CopyError::Special(path.display().to_string()));
    }
    walk(&root, &root, "", 0, each)?;
    Ok(true)
}

type EachFile<'a> = dyn FnMut(&Path, &str, &std::fs::Metadata) -> Result<(), CopyError> + 'a;

fn read_file(path: &Path, rel: &str, md: &std::fs::Metadata, bytes: &mut usize) -> Result<VolumeFile, CopyError> {
    *bytes += md.len() as usize;
    if *bytes > MAX_MOUNT_BYTES {
        return Err(CopyError::TooLarge);
    }
    let content = std::fs::read(path).map_err(io_at(path))?;
    Ok(VolumeFile {
        path: rel.to_owned(),
        content,
        mode: md.mode() & 0o777,
        uid: md.uid(),
        gid: md.gid(),
    })
}

fn walk(root: &Path, dir: &Path, rel: &str, depth: usize, each: &mut EachFile<'_>) -> Result<(), CopyError> {
    if depth > MAX_DEPTH {
        return Err(CopyError::TooDeep(rel.to_owned()));
    }
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)
        .map_err(io_at(dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let Some(n) = name.to_str() else {
            return Err(CopyError::NotUtf8(dir.join(&name).display().to_string()));
        };
        // kubelet's atomic writer: `..data` and `..<timestamp>` hold what the symlinks
        // beside them name.
        if n.starts_with("..") {
            continue;
        }
        let sub = if rel.is_empty() {
            n.to_owned()
        } else {
            format!("{rel}/{n}")
        };
        let at = dir.join(&name);
        let real = std::fs::canonicalize(&at).map_err(io_at(Path::new(&sub)))?;
        if !real.starts_with(root) {
            return Err(CopyError::LeadsOut(sub, real.display().to_string()));
        }
        let md = std::fs::metadata(&real).map_err(io_at(Path::new(&sub)))?;
        if md.is_dir() {
            walk(root, &real, &sub, depth + 1, each)?;
        } else if md.is_file() {
            each(&real, &sub, &md)?;
        } else {
            return Err(CopyError::Special(sub));
        }
    }
    Ok(())
}

/// The digest of a copy, to tell whether it changed.
pub fn digest(files: &[VolumeFile]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in files {
        h.update((f.path.len() as u64).to_le_bytes());
        h.update(f.path.as_bytes());
        h.update((f.content.len() as u64).to_le_bytes());
        h.update(&f.content);
        h.update(f.mode.to_le_bytes());
        h.update(f.uid.to_le_bytes());
        h.update(f.gid.to_le_bytes());
    }
    h.finalize().into()
}

/// The files to send for a refreshed copy of `source` (as `copy_of` made them), which
/// must still be under `pods`.
pub fn recopy(source: &Path, pods: &Path) -> Result<Vec<VolumeFile>, CopyError> {
    let real = std::fs::canonicalize(source).map_err(io_at(source))?;
    let pods = std::fs::canonicalize(pods).map_err(io_at(pods))?;
    if !real.starts_with(&pods) {
        return Err(CopyError::Moved(real.display().to_string(), pods.display().to_string()));
    }
    copy_of(&real).map(|(files, _)| files)
}

/// Writes a termination log read back from the instance to `host` (the file kubelet made:
/// opened without following a symlink, never created).
pub fn write_back(host: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(host)?;
    f.write_all(content)
}
