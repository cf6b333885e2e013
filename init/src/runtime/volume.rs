//! Scratch volumes that cells from images share (a pod's `emptyDir`s): a directory under
//! `VOLUMES_DIR` on the node, or a tmpfs of its own there (`memory`), made by the first cell
//! that lists it and removed with the last. Each cell binds the volumes it mounts into its
//! image root (`confine::root`), so its writes land in the volume and every cell that mounts
//! it sees them; nothing else of the node becomes visible.

use super::error::{Result, RuntimeError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where volumes live on the node (RAM on the appliance).
pub const VOLUMES_DIR: &str = "/run/aurae/volumes";
/// A memory volume's size when its request gives none.
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 << 20;

pub use crate::values::volume::{VolumeMount, VolumeSpec};

/// Volumes in use: each one's definition and how many cells list it.
#[derive(Default)]
pub(crate) struct Volumes(BTreeMap<String, (VolumeSpec, usize)>);

pub fn dir_of(name: &str) -> PathBuf {
    Path::new(VOLUMES_DIR).join(name)
}

/// What the cell's init binds for `m`: (the volume's directory on the node, the target in
/// the cell's root, read-only).
pub fn bind_of(m: &VolumeMount) -> super::confine::root::VolumeBind {
    (dir_of(m.volume.as_str()), PathBuf::from(&m.path), m.read_only)
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
    match s.memory {
        true => format!("a memory volume of {} bytes", s.size_limit),
        false => "a directory".into(),
    }
}

fn make(s: &VolumeSpec) -> Result<()> {
    let dir = dir_of(s.name.as_str());
    // A leftover of an earlier boot or daemon run holds nothing anyone wants.
    if dir.exists() {
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        std::fs::remove_dir_all(&dir).map_err(io("remove a stale volume", &dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(io("make the volume", &dir))?;
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

fn remove(s: &VolumeSpec) {
    let dir = dir_of(s.name.as_str());
    if s.memory {
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => tracing::info!("volume {} removed", s.name),
        Err(e) => tracing::warn!("volume {}: remove {}: {e}", s.name, dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::names::ExecName;

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
        };
        assert_eq!(
            bind_of(&m),
            (PathBuf::from("/run/aurae/volumes/www"), PathBuf::from("/srv/www"), true)
        );
    }
}
