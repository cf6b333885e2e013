//! Scratch volumes that cells from images share (a pod's `emptyDir`s): a directory under
//! `VOLUMES_DIR` on the node, or a tmpfs of its own there (`memory`), made by the first cell
//! that lists it and removed with the last. Each cell binds the volumes it mounts into its
//! image root (`confine::root`), so its writes land in the volume and every cell that mounts
//! it sees them; nothing else of the node becomes visible.

use super::error::{Result, RuntimeError};
use crate::image::paths::children;
use crate::image::tree::{is_dir_at, open_dir};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where volumes live on the node (RAM on the appliance).
pub const VOLUMES_DIR: &str = "/run/aurae/volumes";
/// A memory volume's size when its request gives none.
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 << 20;

pub use crate::values::volume::{VolumeFile, VolumeMount, VolumeSpec, POD_DIR};

/// Volumes in use: each one's definition and how many cells list it.
#[derive(Default)]
pub(crate) struct Volumes(BTreeMap<String, (VolumeSpec, usize)>);

pub fn dir_of(name: &str) -> PathBuf {
    Path::new(VOLUMES_DIR).join(name)
}

/// What the cell's init binds for `m`: (the volume's directory on the node, the target in
/// the cell's root, read-only).
pub fn bind_of(m: &VolumeMount) -> super::confine::root::VolumeBind {
    let mut source = dir_of(m.volume.as_str());
    if let Some(sub) = &m.sub_path {
        source.push(sub);
    }
    (source, PathBuf::from(&m.path), m.read_only)
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

impl Volumes {
    /// Makes or joins each of `specs` for a new cell; on failure nothing is taken.
    pub(super) fn take(&mut self, specs: &[VolumeSpec]) -> Result<()> {
        for (i, s) in specs.iter().enumerate() {
            if let Some((have, _)) = self.0.get(s.name.as_str()) {
                if have.owner != s.owner {
                    return Err(RuntimeError::Taken(format!(
                        "image.volumes[{i}]: volume '{}' belongs to another client's cells; a volume is shared only by cells of the client that made it, so choose another name",
                        s.name
                    )));
                }
                if have != s {
                    return Err(RuntimeError::Taken(format!(
                        "image.volumes[{i}]: volume '{}' exists on this node as {} and this cell asks for {}; use the same definition or another name",
                        s.name,
                        describe(have),
                        describe(s)
                    )));
                }
            }
        }
        let mut made: Vec<&VolumeSpec> = Vec::new();
        for s in specs {
            if let Some((_, n)) = self.0.get_mut(s.name.as_str()) {
                *n += 1;
                continue;
            }
            match make(s) {
                Ok(()) => {
                    self.0.insert(s.name.to_string(), (s.clone(), 1));
                    made.push(s);
                }
                Err(e) => {
                    // Undo this cell's share of every volume taken so far.
                    let taken: Vec<VolumeSpec> = specs.iter().take_while(|x| x.name != s.name).cloned().collect();
                    self.release(&taken);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Whether `name` is a files volume in use (the only kind whose files its owner's
    /// parent may replace or read back).
    pub(crate) fn is_files(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|(s, _)| s.files.is_some())
    }

    /// A cell that listed `specs` is gone: each volume no other cell lists is removed.
    pub(super) fn release(&mut self, specs: &[VolumeSpec]) {
        for s in specs {
            let last = match self.0.get_mut(s.name.as_str()) {
                Some((_, n)) => {
                    *n -= 1;
                    *n == 0
                }
                None => false,
            };
            if last {
                self.0.remove(s.name.as_str());
                remove(s);
            }
        }
    }
}

fn describe(s: &VolumeSpec) -> String {
    if let Some(p) = &s.pod_path {
        return format!("'{p}' of the pod directory");
    }
    if let Some(files) = &s.files {
        return format!("a files volume of {} files", files.len());
    }
    match s.memory {
        true => format!("a memory volume of {} bytes", s.size_limit),
        false => "a directory".into(),
    }
}

/// Unmounts whatever is mounted on `at` (binds stack), until nothing is.
fn unmount_all(at: &Path) {
    for _ in 0..8 {
        if nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH).is_err() {
            return;
        }
    }
}

fn make(s: &VolumeSpec) -> Result<()> {
    let dir = dir_of(s.name.as_str());
    // A leftover of an earlier boot or daemon run holds nothing anyone wants.
    if std::fs::symlink_metadata(&dir).is_ok() {
        unmount_all(&dir);
        let gone = match std::fs::symlink_metadata(&dir) {
            Ok(md) if md.is_dir() => std::fs::remove_dir_all(&dir),
            _ => std::fs::remove_file(&dir),
        };
        gone.map_err(io("remove a stale volume", &dir))?;
    }
    if let Some(rel) = &s.pod_path {
        return bind_pod_path(rel, &dir);
    }
    std::fs::create_dir_all(&dir).map_err(io("make the volume", &dir))?;
    if let Some(files) = &s.files {
        // Its files, a page each at least, and room for a refresh of the most a files
        // volume holds beside them while it is renamed in (a limit: only what is written
        // is memory, charged to whoever writes it).
        let pages: u64 = files.iter().map(|f| (f.content.len() as u64).div_ceil(4096) + 1).sum();
        let data = format!(
            "mode=0755,size={},nr_inodes={}",
            (pages + 16) * 4096 + 2 * crate::values::volume::MAX_VOLUME_FILES_BYTES as u64,
            crate::values::volume::MAX_VOLUME_FILES * 4 + 64
        );
        let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
        let written = nix::mount::mount(Some("tmpfs"), &dir, Some("tmpfs"), flags, Some(data.as_str()))
            .map_err(|e| RuntimeError::sys("mount the files volume's tmpfs", e))
            .and_then(|()| write_files(&dir, files));
        if let Err(e) = written {
            let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        tracing::info!("volume {} made ({})", s.name, describe(s));
        return Ok(());
    }
    if s.memory {
        let data = format!("mode=0777,size={}", s.size_limit);
        let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
        if let Err(e) = nix::mount::mount(Some("tmpfs"), &dir, Some("tmpfs"), flags, Some(data.as_str())) {
            let _ = std::fs::remove_dir(&dir);
            return Err(RuntimeError::sys("mount the memory volume's tmpfs", e));
        }
    } else {
        use std::os::unix::fs::PermissionsExt;
        // Any user of any container may write, as an emptyDir allows.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io("chmod the volume", &dir))?;
    }
    tracing::info!("volume {} made ({})", s.name, describe(s));
    Ok(())
}

/// Binds `rel` of the pod directory at `dir` (made: a directory, or an empty file for a
/// file), from the file `open_beneath` opened, so nothing can swap the path in between.
fn bind_pod_path(rel: &str, dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let (source, is_dir) = open_beneath(Path::new(POD_DIR), rel)?;
    let made = match is_dir {
        true => std::fs::create_dir_all(dir),
        false => {
            std::fs::create_dir_all(Path::new(VOLUMES_DIR)).and_then(|()| std::fs::File::create_new(dir).map(drop))
        }
    };
    made.map_err(io("make the volume", dir))?;
    let from = format!("/proc/self/fd/{}", source.as_raw_fd());
    let bound = nix::mount::mount(
        Some(from.as_str()),
        dir,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    );
    if let Err(e) = bound {
        let _ = std::fs::remove_dir(dir).or_else(|_| std::fs::remove_file(dir));
        return Err(RuntimeError::sys("bind a path of the pod directory", e));
    }
    tracing::info!("volume {} bound from {POD_DIR}/{rel}", dir.display());
    Ok(())
}

/// Opens `rel` beneath the pod directory `pod` (O_PATH) without following any symlink on
/// the way or at its end (a container may write symlinks into an emptyDir there): the
/// file and whether it is a directory. NOT_FOUND, naming the field, for what is not a
/// file or directory there.
fn open_beneath(pod: &Path, rel: &str) -> Result<(OwnedFd, bool)> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::SFlag;
    let root = open_dir(nix::fcntl::AT_FDCWD, pod.as_os_str()).map_err(|e| match e {
        nix::errno::Errno::ENOENT => RuntimeError::NotFound(format!(
            "image.volumes: pod_path '{rel}': this instance has no pod directory of its node (only a CRI sandbox with the 'cell' handler has one)"
        )),
        e => RuntimeError::sys("open the pod directory", e),
    })?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let not_there = |why: String| {
        RuntimeError::NotFound(format!(
            "image.volumes: pod_path '{rel}' is not a file or directory of the pod directory ({why})"
        ))
    };
    let source = nix::fcntl::openat2(root.as_fd(), rel, how).map_err(|e| match e {
        nix::errno::Errno::ENOENT => not_there("nothing is there".into()),
        nix::errno::Errno::ELOOP | nix::errno::Errno::EXDEV => {
            not_there("a symlink is on its way, or it leads out".into())
        }
        e => RuntimeError::sys("open a path of the pod directory", e),
    })?;
    let st = nix::sys::stat::fstat(&source).map_err(|e| RuntimeError::sys("stat a path of the pod directory", e))?;
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => Ok((source, true)),
        SFlag::S_IFREG => Ok((source, false)),
        _ => Err(not_there("it is neither a file nor a directory".into())),
    }
}

fn remove(s: &VolumeSpec) {
    let dir = dir_of(s.name.as_str());
    if s.pod_path.is_some() {
        // Never a recursive removal: what is bound here is the node's kubelet's.
        unmount_all(&dir);
        let gone = match std::fs::symlink_metadata(&dir) {
            Ok(md) if md.is_dir() => std::fs::remove_dir(&dir),
            _ => std::fs::remove_file(&dir),
        };
        match gone {
            Ok(()) => tracing::info!("volume {} unbound", s.name),
            Err(e) => tracing::warn!("volume {}: remove {}: {e}", s.name, dir.display()),
        }
        return;
    }
    if s.memory || s.files.is_some() {
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => tracing::info!("volume {} removed", s.name),
        Err(e) => tracing::warn!("volume {}: remove {}: {e}", s.name, dir.display()),
    }
}

/// The most bytes `files` reads back of one file.
pub const MAX_READ_BYTES: usize = 1 << 20;

/// Replaces `write` in files volume `name` and reads `read` back from it (up to `max`
/// bytes each; a missing file is left out). NOT_FOUND for a volume this node does not
/// have as a files volume.
pub(crate) fn files(
    volumes: &Volumes,
    name: &str,
    write: &[VolumeFile],
    replace: bool,
    read: &[String],
    max: usize,
) -> Result<Vec<VolumeFile>> {
    if !volumes.is_files(name) {
        return Err(RuntimeError::NotFound(format!(
            "volume: '{name}' is not a files volume of a cell on this node"
        )));
    }
    let dir = dir_of(name);
    write_files(&dir, write)?;
    if replace {
        let keep: std::collections::HashSet<&str> = write.iter().map(|f| f.path.as_str()).collect();
        remove_others(&dir, &keep).map_err(|e| RuntimeError::sys("remove a file of a files volume", e))?;
    }
    let mut out = Vec::new();
    for r in read {
        if let Some(f) = read_beneath(&dir, r, max.min(MAX_READ_BYTES))? {
            out.push(f);
        }
    }
    Ok(out)
}

/// Writes `files` into the volume at `dir`, each whole: written beside its place and
/// renamed in, so a reader sees the old file or the new one. Every directory on the way is
/// opened without following symlinks, so nothing a cell put in the volume can turn a write
/// elsewhere.
pub fn write_files(dir: &Path, files: &[VolumeFile]) -> Result<()> {
    for f in files {
        write_beneath(dir, f).map_err(|e| RuntimeError::sys("write a file of a files volume", e))?;
    }
    Ok(())
}

/// The directory of `rel`'s last component, beneath `dir` (made as needed, symlinks never
/// followed), and that component.
fn parent_beneath(dir: &Path, rel: &str, make: bool) -> nix::Result<(OwnedFd, std::ffi::OsString)> {
    use std::path::Component;
    let mut at = open_dir(nix::fcntl::AT_FDCWD, dir.as_os_str())?;
    let parts: Vec<&std::ffi::OsStr> = Path::new(rel)
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(nix::errno::Errno::EINVAL),
        })
        .collect::<nix::Result<_>>()?;
    let Some((last, parents)) = parts.split_last() else {
        return Err(nix::errno::Errno::EINVAL);
    };
    for p in parents {
        if make {
            match nix::sys::stat::mkdirat(&at, *p, nix::sys::stat::Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        at = open_dir(at.as_fd(), p)?;
    }
    Ok((at, last.to_os_string()))
}

fn write_beneath(dir: &Path, f: &VolumeFile) -> nix::Result<()> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use std::io::Write;
    let (at, name) = parent_beneath(dir, &f.path, true)?;
    let mut temp = std::ffi::OsString::from(".aurae-new-");
    temp.push(&name);
    let _ = nix::unistd::unlinkat(&at, temp.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    let fd = nix::fcntl::openat(
        &at,
        temp.as_os_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    let mut file = std::fs::File::from(fd);
    let written = file
        .write_all(&f.content)
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        .and_then(|()| {
            nix::unistd::fchown(&file, Some(f.uid.into()), Some(f.gid.into()))?;
            nix::sys::stat::fchmod(&file, Mode::from_bits_truncate((f.mode & 0o777) as libc::mode_t))
        })
        .and_then(|()| nix::fcntl::renameat(&at, temp.as_os_str(), &at, name.as_os_str()));
    if written.is_err() {
        let _ = nix::unistd::unlinkat(&at, temp.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    written
}

/// Removes every file beneath `dir` that `keep` does not name (directories stay; symlinks
/// and other entries are removed as files are, never followed).
pub fn remove_others(dir: &Path, keep: &std::collections::HashSet<&str>) -> nix::Result<()> {
    fn walk(at: &OwnedFd, rel: &str, keep: &std::collections::HashSet<&str>, depth: usize) -> nix::Result<()> {
        if depth > 16 {
            return Ok(());
        }
        for n in children(at)? {
            let Some(s) = n.to_str() else { continue };
            let sub = if rel.is_empty() {
                s.to_owned()
            } else {
                format!("{rel}/{s}")
            };
            match is_dir_at(at.as_fd(), &n)? {
                Some(true) => walk(&open_dir(at.as_fd(), &n)?, &sub, keep, depth + 1)?,
                Some(false) if !keep.contains(sub.as_str()) => {
                    nix::unistd::unlinkat(at, n.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)?
                }
                _ => {}
            }
        }
        Ok(())
    }
    let root = open_dir(nix::fcntl::AT_FDCWD, dir.as_os_str())?;
    walk(&root, "", keep, 0)
}

/// Reads up to `max` bytes of regular file `rel` beneath `dir` (symlinks never followed,
/// nothing but a regular file opened); None when it is not there.
pub fn read_beneath(dir: &Path, rel: &str, max: usize) -> Result<Option<VolumeFile>> {
    use nix::fcntl::OFlag;
    use std::io::Read;
    let sys = |e| RuntimeError::sys("read a file of a files volume", e);
    let (at, name) = match parent_beneath(dir, rel, false) {
        Ok(x) => x,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(sys(e)),
    };
    let fd = match nix::fcntl::openat(
        &at,
        name.as_os_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(sys(e)),
    };
    let st = nix::sys::stat::fstat(&fd).map_err(sys)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(sys(nix::errno::Errno::EINVAL));
    }
    let mut content = Vec::new();
    std::fs::File::from(fd)
        .take(max as u64)
        .read_to_end(&mut content)
        .map_err(io("read a file of a files volume", dir))?;
    Ok(Some(VolumeFile {
        path: rel.to_owned(),
        content,
        mode: st.st_mode & 0o777,
        uid: st.st_uid,
        gid: st.st_gid,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::names::ExecName;

    /// A pod-path volume's path is opened beneath the pod directory only: through a
    /// symlink a container could have planted (at the end or on the way), by `..`, or to
    /// something neither a file nor a directory, refused before anything is bound.
    #[test]
    fn a_pod_path_never_leads_out_of_the_pod_directory() {
        let t = tempfile::tempdir().unwrap();
        let pod = t.path().join("pod");
        let cache = pod.join("volumes/kubernetes.io~empty-dir/cache");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(pod.join("etc-hosts"), "x").unwrap();
        std::fs::write(t.path().join("outside"), "node's").unwrap();
        std::os::unix::fs::symlink("/", cache.join("root")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), cache.join("file")).unwrap();
        std::os::unix::fs::symlink("volumes", pod.join("vols")).unwrap();
        nix::unistd::mkfifo(&pod.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(!open_beneath(&pod, "etc-hosts").unwrap().1);
        assert!(open_beneath(&pod, "volumes/kubernetes.io~empty-dir/cache").unwrap().1);
        for rel in [
            "volumes/kubernetes.io~empty-dir/cache/root",
            "volumes/kubernetes.io~empty-dir/cache/root/etc",
            "volumes/kubernetes.io~empty-dir/cache/file",
            "vols/kubernetes.io~empty-dir/cache",
            "../outside",
            "fifo",
            "missing",
        ] {
            let e = open_beneath(&pod, rel).err().unwrap_or_else(|| panic!("{rel} opened"));
            assert!(matches!(e, RuntimeError::NotFound(_)), "{rel}: {e:?}");
            assert!(
                e.to_string()
                    .contains("is not a file or directory of the pod directory"),
                "{e}"
            );
        }
        let e = open_beneath(&t.path().join("none"), "etc-hosts").unwrap_err();
        assert!(e.to_string().contains("this instance has no pod directory"), "{e}");
    }

    /// A volume in use by one client's cells is not joinable by another client's cell by
    /// name: refused, naming the field, and the volume's count unchanged. The same
    /// client's next cell joins it.
    #[test]
    fn a_volume_is_joined_only_by_its_owners_cells() {
        let mut volumes = Volumes::default();
        let spec = |owner: &str| VolumeSpec {
            name: ExecName::parse("scratch").unwrap(),
            memory: false,
            size_limit: 0,
            owner: owner.into(),
            files: None,
            pod_path: None,
        };
        let alice = "spiffe://t.test/client/alice";
        volumes.0.insert("scratch".into(), (spec(alice), 1));
        let e = volumes.take(&[spec("spiffe://t.test/client/mallory")]).unwrap_err();
        assert!(matches!(e, RuntimeError::Taken(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("image.volumes[0]: volume 'scratch' belongs to another client's cells"),
            "{e}"
        );
        assert_eq!(volumes.0["scratch"].1, 1, "nothing joined");
        volumes.take(&[spec(alice)]).unwrap();
        assert_eq!(volumes.0["scratch"].1, 2, "the owner's cell joins");
    }

    #[test]
    fn a_mount_binds_the_volumes_directory_at_its_path() {
        let m = VolumeMount {
            volume: ExecName::parse("www").unwrap(),
            path: "/srv/www".into(),
            read_only: true,
            sub_path: None,
        };
        assert_eq!(
            bind_of(&m),
            (PathBuf::from("/run/aurae/volumes/www"), PathBuf::from("/srv/www"), true)
        );
    }

    fn file(path: &str, content: &str) -> VolumeFile {
        VolumeFile {
            path: path.into(),
            content: content.into(),
            mode: 0o640,
            uid: 0,
            gid: 0,
        }
    }

    /// Files land beneath the volume whole, with their mode; a refresh replaces them; a
    /// file is read back up to the cap.
    #[test]
    fn files_are_written_and_read_back_beneath_the_volume() {
        let t = tempfile::tempdir().unwrap();
        write_files(t.path(), &[file("a/b/token", "one"), file("hosts", "h")]).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("a/b/token")).unwrap(), "one");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.path().join("hosts")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        write_files(t.path(), &[file("a/b/token", "two")]).unwrap();
        // A refresh whose source lost `hosts`: replaced, it goes; the other stays.
        remove_others(t.path(), &["a/b/token"].into_iter().collect()).unwrap();
        assert!(!t.path().join("hosts").exists());
        assert_eq!(std::fs::read_to_string(t.path().join("a/b/token")).unwrap(), "two");
        let names: Vec<_> = std::fs::read_dir(t.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["token"], "no temporary file left beside it");
        let back = read_beneath(t.path(), "a/b/token", 2).unwrap().unwrap();
        assert_eq!(back.content, b"tw", "capped");
        assert!(read_beneath(t.path(), "missing", 10).unwrap().is_none());
    }

    /// A symlink a cell planted in its volume does not turn a write or a read elsewhere:
    /// the node's file is untouched and not read.
    #[test]
    fn a_planted_symlink_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let (vol, outside) = (t.path().join("vol"), t.path().join("outside"));
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("passwd"), "root:x:0:0").unwrap();
        std::os::unix::fs::symlink(&outside, vol.join("dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("passwd"), vol.join("file")).unwrap();
        assert!(write_files(&vol, &[file("dir/passwd", "owned")]).is_err());
        assert!(read_beneath(&vol, "dir/passwd", 100).is_err());
        assert!(read_beneath(&vol, "file", 100).is_err(), "a symlink is not opened");
        assert_eq!(std::fs::read_to_string(outside.join("passwd")).unwrap(), "root:x:0:0");
        // Writing over the symlink itself replaces the link, not its target.
        write_files(&vol, &[file("file", "new")]).unwrap();
        assert_eq!(std::fs::read_to_string(outside.join("passwd")).unwrap(), "root:x:0:0");
        assert!(!std::fs::symlink_metadata(vol.join("file")).unwrap().is_symlink());
    }
}
