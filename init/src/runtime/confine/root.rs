//! A cell's root of its own, built by the cell's init (`runtime::holder`) in the cell's new
//! mount namespace and entered with `pivot_root`, as OCI runtimes do:
//!
//! - the source tree: the node's base filesystem bound read-only, without the mounts below
//!   it, with the node's secrets covered (`/etc/aurae`, `/boot`, `/var/lib/aurae`, the
//!   daemon's PKI directory); or an image: its unpacked layers (read-only) under a
//!   writable layer of the cell's own, an overlay on a tmpfs that lives in the cell's mount
//!   namespace only, so the cell's writes are charged to its memory and are gone with it;
//! - its own `/proc` (the cell's pid namespace), a read-only `/sys`;
//! - a private `/dev`: a small tmpfs with null, zero, full, random, urandom and tty, its own
//!   devpts, a size-limited `/dev/shm` and `mqueue`; read-only once made, so no node device
//!   can be added to it;
//! - its own size-limited `/tmp` and `/run` (tmpfs pages are charged to the cell that writes);
//! - OCI's masked paths (empty) and read-only paths;
//! - for auraed's own use only, node directories bound read-write at the same path under
//!   the cell's `/run` (a cell child's PKI directory).
//!
//! Writable mounts are all `nodev`. `pivot_root(2)` needs the current root to be a mount
//! with a parent, which the initramfs is not: PID 1 leaves it first (`init::switch_root`).

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Where the new root is assembled: a directory every root has. In the cell's own mount
/// namespace a bind over it changes nothing for the node.
const STAGE: &str = "/tmp";

/// Paths OCI's default spec masks: files become /dev/null, directories an empty tmpfs.
pub const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Paths OCI's default spec makes read-only.
pub const READ_ONLY: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A node directory bound into an image root: (source, absolute target, read-only).
pub type VolumeBind = (PathBuf, PathBuf, bool);

/// What a cell's root is made of.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A directory of the node, bound read-only.
    Node(&'a Path),
    /// An image's unpacked layer directories, bottom first, under a writable layer, and
    /// the volumes bound into it.
    Image(&'a [PathBuf], &'a [VolumeBind]),
}

/// The mount points a root must have; an image that lacks one gets it made in the cell's
/// own writable layer.
const MOUNT_POINTS: &[&str] = &["proc", "sys", "dev", "tmp", "run"];

/// Size limits of the cell's own tmpfs mounts (tmpfs `size=`).
pub const TMP_SIZE: &str = "256m";
pub const RUN_SIZE: &str = "64m";
/// An image cell's writable layer (what it writes over its image): a quarter of the node's
/// RAM at most, besides the cell's memory.max, which its pages are charged to as well.
pub const UPPER_SIZE: &str = "25%";
pub const SHM_SIZE: &str = "64m";

/// The device nodes of a cell's /dev: name, major, minor.
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Which step failed, for the holder's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Image,
    Volumes,
    Root,
    Dev,
    Pivot,
    Mask,
}

type StepResult = Result<(), (Step, Errno)>;

fn at(step: Step) -> impl Fn(Errno) -> (Step, Errno) {
    move |e| (step, e)
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

fn tmpfs(target: &Path, flags: MsFlags, data: &str) -> nix::Result<()> {
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(data))
}

/// Builds the root from `source` with `hide` covered (a node source only) and enters it.
/// Call in a fresh,
/// private mount namespace. In a user namespace of its own (`userns`), the mounts copied
/// from the node are locked to it: the source is bound with them (a bind without them is
/// refused) and each is covered below, and device nodes are bound from the node's /dev
/// (nodes made in a user namespace do not open).
/// `binds` (node directories, each under `/run`) are bound read-write at the same path in
/// the cell's own `/run`; anything else is refused (EINVAL): creating its mount point would
/// write to the node's filesystem through the bound source. `pod` (a tree `clone_tree`
/// took) is attached at [`POD_DIR`](crate::values::volume::POD_DIR).
pub fn enter(
    source: Source<'_>,
    hide: &[PathBuf],
    binds: &[PathBuf],
    pod: Option<std::os::fd::OwnedFd>,
    userns: bool,
) -> StepResult {
    let stage = Path::new(STAGE);
    let image_root = stage.join("root");
    let (root, hide) = match source {
        Source::Node(dir) => {
            let rec = if userns { MsFlags::MS_REC } else { MsFlags::empty() };
            mount(Some(dir), stage, None::<&str>, MsFlags::MS_BIND | rec, None::<&str>).map_err(at(Step::Root))?;
            (stage, hide)
        }
        Source::Image(layers, _) => {
            mount_image(stage, layers, &image_root).map_err(at(Step::Image))?;
            (image_root.as_path(), &[][..])
        }
    };
    for h in hide {
        let Ok(rel) = h.strip_prefix("/") else { continue };
        let target = root.join(rel);
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => {
                tmpfs(&target, NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY, "size=4k,mode=0755").map_err(at(Step::Root))?
            }
            Ok(m) if m.is_file() => bind_null(Path::new("/dev/null"), &target).map_err(at(Step::Root))?,
            _ => {}
        }
    }
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        NOSUID_NODEV_NOEXEC,
        None::<&str>,
    )
    .map_err(at(Step::Root))?;
    mount(
        Some("sysfs"),
        &root.join("sys"),
        Some("sysfs"),
        NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(at(Step::Root))?;
    make_dev(&root.join("dev"), userns)?;
    tmpfs(&root.join("tmp"), nodev, &format!("mode=1777,size={TMP_SIZE}")).map_err(at(Step::Root))?;
    tmpfs(&root.join("run"), nodev, &format!("mode=0755,size={RUN_SIZE}")).map_err(at(Step::Root))?;
    for b in binds {
        bind_into_run(root, b).map_err(at(Step::Root))?;
    }
    if let Some(tree) = pod {
        attach_pod(root, tree).map_err(at(Step::Volumes))?;
    }
    // After the root's own mounts, so a volume at /dev/termination-log or under /tmp is
    // seen rather than covered by them; before /dev is sealed, so its file can be made.
    if let Source::Image(_, volumes) = source {
        for v in volumes {
            bind_volume(root, v).map_err(at(Step::Volumes))?;
        }
    }
    seal_dev(&root.join("dev"))?;
    // A node source is read-only from here on (the mounts above stay as they are); an
    // image's root stays writable, into the cell's own layer.
    if let Source::Node(_) = source {
        mount(
            None::<&str>,
            root,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(at(Step::Root))?;
    }
    pivot(root)?;
    mask()
}

/// Mounts the image's `layers` (bottom first) at `root` under a writable layer on a tmpfs
/// at `stage`, and makes sure the root's mount points are real directories: one that is a
/// symlink or a file in the image is refused (ENOTDIR), as a mount over it would land
/// wherever it points.
fn mount_image(stage: &Path, layers: &[PathBuf], root: &Path) -> nix::Result<()> {
    if layers.is_empty() {
        return Err(Errno::EINVAL);
    }
    tmpfs(stage, MsFlags::MS_NODEV, &format!("mode=0755,size={UPPER_SIZE}"))?;
    let (upper, work) = (stage.join("upper"), stage.join("work"));
    for d in [&upper, &work, &root.to_path_buf()] {
        nix::unistd::mkdir(d, Mode::from_bits_truncate(0o755))?;
    }
    let lower: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
    let opts = crate::image::overlay::overlay_options(&lower, Some((&upper, &work))).ok_or(Errno::E2BIG)?;
    mount(
        Some("overlay"),
        root,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )?;
    for m in MOUNT_POINTS {
        let p = root.join(m);
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => return Err(Errno::ENOTDIR),
            Err(_) => nix::unistd::mkdir(&p, Mode::from_bits_truncate(0o755))?,
        }
    }
    add_hosts(root);
    Ok(())
}

/// What an image without `/etc/hosts` gets, as Docker and Kubernetes give every container:
/// `localhost` resolves (a pod's containers reach one another by it). Written into the
/// cell's own layer; an image whose `/etc` is not a real directory is left as it is.
fn add_hosts(root: &Path) {
    let etc = root.join("etc");
    match std::fs::symlink_metadata(&etc) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => return,
        Err(_) => {
            if nix::unistd::mkdir(&etc, Mode::from_bits_truncate(0o755)).is_err() {
                return;
            }
        }
    }
    let hosts = etc.join("hosts");
    if std::fs::symlink_metadata(&hosts).is_err() {
        let _ = std::fs::write(
            &hosts,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
    }
}

/// Binds a volume's directory (or a file of a files volume) at its target in the image's
/// `root` (nosuid, nodev; read-only when asked). The target's directories, and a file's
/// target, are made in the cell's own layer where the image lacks them; a file's target
/// that is a symlink is replaced there by a file; a directory on the way that is a
/// symlink or not a directory is refused (ENOTDIR), as the bind
/// would land wherever it points. Nothing runs in the cell yet, so nothing can swap one in.
fn bind_volume(root: &Path, (source, target, read_only): &VolumeBind) -> nix::Result<()> {
    use std::path::Component;
    // A file of a files volume lands on a file: made empty where the image lacks it.
    let file = std::fs::symlink_metadata(source).map_err(io_errno)?.is_file();
    let mut at = root.to_path_buf();
    let parts: Vec<Component> = target.components().filter(|c| *c != Component::RootDir).collect();
    for (i, c) in parts.iter().enumerate() {
        match c {
            Component::Normal(n) => at.push(n),
            _ => return Err(Errno::EINVAL),
        }
        let last_file = file && i + 1 == parts.len();
        match std::fs::symlink_metadata(&at) {
            Ok(md) if md.is_dir() && !last_file => {}
            Ok(md) if md.is_file() && last_file => {}
            Ok(md) if md.is_symlink() && last_file => {
                // The image's symlink (a resolv.conf pointing elsewhere): replaced in the
                // cell's own layer by the file, never followed.
                std::fs::remove_file(&at).map_err(io_errno)?;
                std::fs::File::create_new(&at).map_err(io_errno)?;
            }
            Ok(_) => return Err(Errno::ENOTDIR),
            Err(_) if last_file => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&at)
                    .map_err(io_errno)?;
            }
            Err(_) => nix::unistd::mkdir(&at, Mode::from_bits_truncate(0o755))?,
        }
    }
    if at == root {
        return Err(Errno::EINVAL);
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        Some(source.as_path()),
        &at,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    let ro = if *read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    mount(
        None::<&str>,
        &at,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags | ro,
        None::<&str>,
    )
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Binds node directory `dir` (under /run, no `..`) at the same path below `root`, whose
/// /run is the cell's own tmpfs: its mount point is made there, never on the node.
fn bind_into_run(root: &Path, dir: &Path) -> nix::Result<()> {
    use std::path::Component;
    let under_run = dir
        .strip_prefix("/run")
        .ok()
        .filter(|rel| !rel.as_os_str().is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_))));
    let Some(rel) = under_run else {
        return Err(Errno::EINVAL);
    };
    let target = root.join("run").join(rel);
    std::fs::create_dir_all(&target).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    mount(Some(dir), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    mount(
        None::<&str>,
        &target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | NOSUID_NODEV_NOEXEC,
        None::<&str>,
    )
}

/// A copy of the node's directory `dir` with every mount beneath it, detached (not yet
/// anywhere in this namespace), still a peer of the node's mount when that is shared. Take
/// it before making the namespace's mounts private.
pub fn clone_tree(dir: &Path) -> nix::Result<std::os::fd::OwnedFd> {
    crate::os::open_tree_clone(dir)
}

/// Attaches `tree` (from `clone_tree`) at the pod directory in `root`'s own `/run`
/// (nosuid, nodev), a slave of the node's mount: the node's later mounts beneath it
/// appear, the cell's never reach the node.
fn attach_pod(root: &Path, tree: std::os::fd::OwnedFd) -> nix::Result<()> {
    let rel = Path::new(crate::values::volume::POD_DIR)
        .strip_prefix("/")
        .map_err(|_| Errno::EINVAL)?;
    let target = root.join(rel);
    std::fs::create_dir_all(&target).map_err(io_errno)?;
    crate::os::move_mount_to(&tree, &target)?;
    mount(
        None::<&str>,
        &target,
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )?;
    mount(
        None::<&str>,
        &target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
}

/// A private /dev on `dev`: device nodes made, or (`bind`) bound from the node's /dev.
fn make_dev(dev: &Path, bind: bool) -> StepResult {
    let e = at(Step::Dev);
    tmpfs(dev, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, "mode=0755,size=64k").map_err(&e)?;
    let rw = Mode::from_bits_truncate(0o666);
    for (name, major, minor) in DEVICES {
        let node = dev.join(name);
        if bind {
            let io = |err: std::io::Error| (Step::Dev, Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO)));
            std::fs::File::create(&node).map_err(io)?;
            let from = Path::new("/dev").join(name);
            mount(Some(&from), &node, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(&e)?;
        } else {
            mknod(&node, SFlag::S_IFCHR, rw, makedev(*major, *minor)).map_err(&e)?;
        }
    }
    for d in ["pts", "shm", "mqueue"] {
        nix::unistd::mkdir(&dev.join(d), Mode::from_bits_truncate(0o755)).map_err(&e)?;
    }
    mount(
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(&e)?;
    tmpfs(
        &dev.join("shm"),
        NOSUID_NODEV_NOEXEC,
        &format!("mode=1777,size={SHM_SIZE}"),
    )
    .map_err(&e)?;
    mount(
        Some("mqueue"),
        &dev.join("mqueue"),
        Some("mqueue"),
        NOSUID_NODEV_NOEXEC,
        None::<&str>,
    )
    .map_err(&e)?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link))
            .map_err(|io| (Step::Dev, Errno::from_raw(io.raw_os_error().unwrap_or(libc::EIO))))?;
    }
    Ok(())
}

/// Makes the private /dev read-only: nothing can be added to it from inside the cell.
fn seal_dev(dev: &Path) -> StepResult {
    mount(
        None::<&str>,
        dev,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(at(Step::Dev))
}

/// `pivot_root(".", ".")` and a lazy unmount of the old root stacked under the new one:
/// no directory for the old root is needed, and nothing of it stays reachable.
fn pivot(root: &Path) -> StepResult {
    let e = at(Step::Pivot);
    nix::unistd::chdir(root).map_err(&e)?;
    nix::unistd::pivot_root(".", ".").map_err(&e)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(&e)?;
    nix::unistd::chdir("/").map_err(&e)
}

/// Binds `null` over the file `target` after checking that `null` really is the null
/// device (a cell must not be able to swap in a file of its own).
fn bind_null(null: &Path, target: &Path) -> nix::Result<()> {
    let st = nix::sys::stat::stat(null)?;
    let is_null =
        SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFCHR && st.st_rdev == makedev(1, 3);
    if !is_null {
        return Err(Errno::EPERM);
    }
    mount(Some(null), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
}

/// OCI's masked and read-only paths, inside the new root. Paths this kernel lacks are
/// skipped.
fn mask() -> StepResult {
    let e = at(Step::Mask);
    for p in MASKED {
        let path = Path::new(p);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                tmpfs(path, NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY, "size=4k,mode=0555").map_err(&e)?
            }
            Ok(m) if m.is_file() || m.file_type().is_char_device() => {
                bind_null(Path::new("/dev/null"), path).map_err(&e)?
            }
            _ => {}
        }
    }
    for p in READ_ONLY {
        let path = Path::new(p);
        if std::fs::symlink_metadata(path).is_err() {
            continue;
        }
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(&e)?;
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC,
            None::<&str>,
        )
        .map_err(&e)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bind's mount point is made in the cell's own /run only: a path elsewhere (or one
    /// that climbs out of /run) would make it in the node's filesystem through the bound
    /// base, and is refused before anything is touched.
    #[test]
    fn binds_outside_the_cells_own_run_are_refused() {
        let root = Path::new("/nonexistent-stage");
        for bad in [
            "/etc/aurae",
            "/run",
            "/run/",
            "/run/../etc",
            "/run/a/../../etc",
            "run/x",
            "/runx/y",
        ] {
            assert_eq!(bind_into_run(root, Path::new(bad)), Err(Errno::EINVAL), "{bad}");
        }
    }
}
