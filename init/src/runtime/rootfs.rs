//! Looking into a cell's own root from the node: its init's `/proc/PID/root`, every path
//! resolved with `openat2(RESOLVE_IN_ROOT)` so the cell's symlinks (absolute ones included)
//! resolve inside the cell, never on the node. What an image cell needs before a process
//! starts in it: argv[0] looked up in the image's PATH, a user name resolved in the image's
//! `/etc/passwd` and `/etc/group`, a pseudo-terminal from the cell's own devpts.

use super::error::{Result, RuntimeError};
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};

/// The root directory a cell's processes see.
pub struct CellRoot(OwnedFd);

/// The most of a file like `/etc/passwd` that is read.
const SMALL_FILE: u64 = 1 << 20;

impl CellRoot {
    /// The root of process `pid` (a cell's init).
    pub fn of_pid(pid: i32) -> Result<CellRoot> {
        let p = format!("/proc/{pid}/root");
        nix::fcntl::open(
            p.as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(CellRoot)
        .map_err(|errno| RuntimeError::sys(format!("open {p}"), errno))
    }

    /// A directory standing in for a cell's root.
    #[cfg(test)]
    pub fn at(dir: &std::path::Path) -> Result<CellRoot> {
        nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(CellRoot)
        .map_err(|errno| RuntimeError::sys(format!("open {}", dir.display()), errno))
    }

    /// Opens `path` (absolute in the cell) with `flags`, resolved inside the cell's root.
    pub fn open(&self, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
        let rel = path.trim_start_matches('/');
        // openat2 refuses O_PATH with any flag but a few; a terminal never becomes ours.
        let extra = if flags.contains(OFlag::O_PATH) {
            OFlag::O_CLOEXEC
        } else {
            OFlag::O_CLOEXEC | OFlag::O_NOCTTY
        };
        let how = OpenHow::new()
            .flags(flags | extra)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        nix::fcntl::openat2(self.0.as_fd(), if rel.is_empty() { "." } else { rel }, how)
    }

    /// The text of a small file, or None when it is absent or unreadable.
    pub fn read_small(&self, path: &str) -> Option<String> {
        let fd = self.open(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK).ok()?;
        let f = std::fs::File::from(fd);
        if !f.metadata().ok()?.is_file() {
            return None;
        }
        let mut s = String::new();
        f.take(SMALL_FILE).read_to_string(&mut s).ok()?;
        Some(s)
    }

    /// `st_mode` of `path` (type and permission bits).
    fn mode(&self, path: &str) -> Option<libc::mode_t> {
        let fd = self.open(path, OFlag::O_PATH).ok()?;
        nix::sys::stat::fstat(&fd).ok().map(|st| st.st_mode)
    }

    fn is_executable_file(&self, path: &str) -> bool {
        self.mode(path)
            .is_some_and(|m| m & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits() && m & 0o111 != 0)
    }

    #[cfg(test)]
    pub fn is_dir(&self, path: &str) -> bool {
        self.mode(path)
            .is_some_and(|m| m & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits())
    }

    /// argv[0] as the cell will exec it: an absolute path as given (execve inside the cell
    /// says if it is missing), a bare name looked up in `path_var` inside the cell.
    pub fn resolve_program(&self, argv0: &str, path_var: &str) -> Result<String> {
        resolve_with(argv0, path_var, |p| self.is_executable_file(p))
    }

    /// A uid and gid for `user` as an image writes it (`uid`, `uid:gid`, `name`,
    /// `name:group`, `uid:group`), names resolved in the cell's `/etc/passwd` and
    /// `/etc/group`. `field` names the request field in errors.
    pub fn resolve_user(&self, user: &str, field: &str) -> Result<(u32, u32)> {
        let passwd = self.read_small("/etc/passwd");
        let group = self.read_small("/etc/group");
        resolve_user(user, passwd.as_deref(), group.as_deref())
            .map_err(|why| RuntimeError::invalid(field, why.to_string()))
    }

    /// A new pseudo-terminal of the cell's own devpts (`/dev/pts/ptmx`): its master and
    /// its peer (the process's terminal), which `/dev/pts/N` names inside the cell.
    pub fn pty(&self) -> Result<(OwnedFd, OwnedFd)> {
        let master = self
            .open("/dev/pts/ptmx", OFlag::O_RDWR)
            .or_else(|_| self.open("/dev/ptmx", OFlag::O_RDWR))
            .map_err(|errno| RuntimeError::sys("open the cell's /dev/pts/ptmx", errno))?;
        pty_peer(master)
    }
}

/// The peer (terminal end) of pseudo-terminal master `master`, unlocked.
pub fn pty_peer(master: OwnedFd) -> Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::AsFd;
    let peer = crate::os::tty::peer(master.as_fd()).map_err(|(what, errno)| RuntimeError::sys(what, errno))?;
    Ok((master, peer))
}

/// PATH lookup with `usable` deciding what is a program.
pub fn resolve_with(argv0: &str, path_var: &str, usable: impl Fn(&str) -> bool) -> Result<String> {
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
        .map(|d| format!("{}/{argv0}", d.trim_end_matches('/')))
        .find(|p| usable(p))
        .ok_or_else(|| RuntimeError::NotFound(format!("argv[0]: '{argv0}' is not found in PATH ({path_var})")))
}

/// PATH lookup on the node's own filesystem (cells whose root is the node's base).
pub fn resolve_on_node(argv0: &str, path_var: &str) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    resolve_with(argv0, path_var, |p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Why an image's user cannot be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user '{0}' is not in the image's /etc/passwd; give a uid or a user the image has")]
    User(String),
    #[error("user '{0}': its /etc/passwd entry has no numeric uid")]
    Uid(String),
    #[error("group '{0}' is not in the image's /etc/group; give a gid or a group the image has")]
    Group(String),
}

/// A uid and gid for `user` (see [`CellRoot::resolve_user`]) from the texts of
/// `/etc/passwd` and `/etc/group`. A numeric uid without a group takes its passwd entry's
/// group, or 0 as Docker does when it has none.
pub fn resolve_user(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> std::result::Result<(u32, u32), UserError> {
    let entries = |text: Option<&str>| -> Vec<Vec<String>> {
        text.unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
            .filter(|f| f.len() >= 3)
            .collect()
    };
    let users = entries(passwd);
    let groups = entries(group);
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, passwd_gid) = match u.parse::<u32>() {
        Ok(n) => (n, users.iter().find(|f| f[2] == u).and_then(|f| f.get(3)?.parse().ok())),
        Err(_) => {
            let f = users
                .iter()
                .find(|f| f[0] == u)
                .ok_or_else(|| UserError::User(u.to_owned()))?;
            let uid = f[2].parse().map_err(|_| UserError::Uid(u.to_owned()))?;
            (uid, f.get(3).and_then(|g| g.parse().ok()))
        }
    };
    let gid = match g {
        None => passwd_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| UserError::Group(g.to_owned()))?,
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\n# comment\nweb:x:101:102::/srv:/bin/false\nnobody:x:65534:65534::/:\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:web\n";

    #[test]
    fn users_resolve_by_number_or_by_name_in_the_images_files() {
        let r = |u| resolve_user(u, Some(PASSWD), Some(GROUP));
        assert_eq!(r("0"), Ok((0, 0)));
        assert_eq!(r("web"), Ok((101, 102)));
        assert_eq!(r("101"), Ok((101, 102)), "a known uid takes its passwd group");
        assert_eq!(
            r("4242"),
            Ok((4242, 0)),
            "an unknown uid runs with group 0, as Docker does"
        );
        assert_eq!(r("web:www"), Ok((101, 33)));
        assert_eq!(r("1000:2000"), Ok((1000, 2000)));
        assert_eq!(r("nobody:33"), Ok((65534, 33)));
        assert!(r("ghost")
            .unwrap_err()
            .to_string()
            .contains("'ghost' is not in the image's /etc/passwd"));
        assert!(r("web:ghosts").unwrap_err().to_string().contains("group 'ghosts'"));
        assert!(
            resolve_user("web", None, None).is_err(),
            "no passwd: names do not resolve"
        );
        assert_eq!(resolve_user("7:8", None, None), Ok((7, 8)));
    }

    #[test]
    fn lookups_stay_inside_the_root_even_through_absolute_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/usr/bin", root.join("bin")).unwrap();
        let prog = root.join("usr/bin/tool");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A file on the "node" a symlink in the root points at: never read.
        std::fs::write(d.path().join("secret"), "node:x:0:0::/:\n").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("etc/passwd")).unwrap();
        let cell = CellRoot::at(&root).unwrap();
        assert_eq!(
            cell.resolve_program("tool", "/bin").unwrap(),
            "/bin/tool",
            "/bin -> /usr/bin in the root"
        );
        assert!(matches!(
            cell.resolve_program("sh", "/bin:/usr/bin"),
            Err(RuntimeError::NotFound(_))
        ));
        assert_eq!(
            cell.read_small("/etc/passwd"),
            None,
            "the absolute link resolves inside the root"
        );
        assert!(cell.is_dir("/bin") && !cell.is_dir("/bin/tool"));
        let e = cell.resolve_user("node", "image.user").unwrap_err();
        assert!(e.to_string().starts_with("image.user: user 'node' is not in"), "{e}");
    }

    #[test]
    fn resolves_bare_names_in_path_and_refuses_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        let prog = d.path().join("tool");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            &prog,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
        )
        .unwrap();
        let path = format!("/nonexistent:{}", d.path().display());
        assert!(
            matches!(resolve_on_node("tool", &path), Err(RuntimeError::NotFound(_))),
            "not executable: skipped"
        );
        std::fs::set_permissions(
            &prog,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .unwrap();
        assert_eq!(resolve_on_node("tool", &path).unwrap(), prog.to_string_lossy());
        assert_eq!(resolve_on_node("/x/y", &path).unwrap(), "/x/y");
        let e = resolve_on_node("./tool", &path).unwrap_err();
        assert!(e.to_string().starts_with("argv[0]: './tool' is a relative path"), "{e}");
        let e = resolve_on_node("nope", "/a:/b").unwrap_err();
        assert_eq!(e.to_string(), "argv[0]: 'nope' is not found in PATH (/a:/b)");
    }
}
