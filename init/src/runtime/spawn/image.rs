//! A child instance's initramfs: the appliance's base skeleton (`rootfs/base.spec`, compiled
//! in) with this very auraed binary as /init, the node's own kernel at /boot/vmlinuz (so the
//! child can spawn in turn), and the child's identity under /etc/aurae/pki.

use super::SpawnError;
use crate::cpio::{self, Entry};
use crate::pki::Minted;
use std::path::Path;

const BASE_SPEC: &str = include_str!("../../../../rootfs/base.spec");
/// The node's trust bundle, where the base layer puts it.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The identity a parent hands its child.
pub struct ChildPki {
    /// Trust bundle: the root CA the child verifies its callers (and its parent) against.
    pub ca_pem: String,
    /// The child's SVID with the chain up to (not including) the root.
    pub server: Minted,
    /// The child's own spawn CA (for grandchildren), with its chain.
    pub spawn_ca: Minted,
    /// The child's policy.toml: its parent is admin, the parent's clients keep their roles.
    pub policy: String,
}

fn file(path: &str, data: &[u8], mode: u32) -> Entry {
    Entry::File {
        path: path.into(),
        data: data.to_vec(),
        mode,
        uid: 0,
        gid: 0,
    }
}

/// Writes the child's initramfs to `out`: `exe` (auraed itself) as its `/init`, and
/// `kernel` (this node's, when it has one) for the child to spawn in turn.
pub fn write(out: &Path, pki: &ChildPki, exe: &Path, kernel: &Path) -> Result<(), SpawnError> {
    // The base spec packs build/bin/auraed as /init; here it is this process's own binary.
    let spec = BASE_SPEC.replace(" bin/auraed ", &format!(" {} ", exe.display()));
    // And its CA bundle (HTTPS registries) is this node's own, if it has one.
    let spec = match std::path::Path::new(CA_BUNDLE).is_file() {
        true => spec.replace(" ca-certificates.crt ", &format!(" {CA_BUNDLE} ")),
        false => spec
            .lines()
            .filter(|l| !l.contains("ca-certificates.crt"))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let mut entries = cpio::parse_spec(&spec, Path::new("/")).map_err(|e| SpawnError::Skeleton(e.to_string()))?;
    // The parent delegates its own kernel, so the child can spawn in turn.
    if let Ok(k) = std::fs::read(kernel) {
        entries.push(Entry::Dir {
            path: "/boot".into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
        entries.push(file(crate::vmm::NODE_KERNEL, &k, 0o644));
    }
    entries.extend([
        file("/etc/aurae/pki/ca.crt", pki.ca_pem.as_bytes(), 0o644),
        file("/etc/aurae/pki/server.crt", pki.server.cert_pem.as_bytes(), 0o644),
        file("/etc/aurae/pki/server.key", pki.server.key_pem.as_bytes(), 0o600),
        file("/etc/aurae/pki/spawn-ca.crt", pki.spawn_ca.cert_pem.as_bytes(), 0o644),
        file("/etc/aurae/pki/spawn-ca.key", pki.spawn_ca.key_pem.as_bytes(), 0o600),
        file("/etc/aurae/pki/policy.toml", pki.policy.as_bytes(), 0o644),
    ]);
    let tmp = out.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        // It holds the child's private keys.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut f = std::io::BufWriter::new(f);
        cpio::write_archive(&entries, &mut f)?;
        std::io::Write::flush(&mut f)?;
        std::fs::rename(&tmp, out)
    };
    write().map_err(SpawnError::io("write", out))
}

/// Writes the child's PKI files into `dir` (0700) for a child that runs in a cell.
pub fn write_pki_dir(dir: &Path, pki: &ChildPki) -> Result<(), SpawnError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(SpawnError::io("mkdir", dir))?;
    let files = [
        ("ca.crt", pki.ca_pem.as_str(), 0o644),
        ("server.crt", pki.server.cert_pem.as_str(), 0o644),
        ("server.key", pki.server.key_pem.as_str(), 0o600),
        ("spawn-ca.crt", pki.spawn_ca.cert_pem.as_str(), 0o644),
        ("spawn-ca.key", pki.spawn_ca.key_pem.as_str(), 0o600),
        ("policy.toml", pki.policy.as_str(), 0o644),
    ];
    for (name, data, mode) in files {
        let path = dir.join(name);
        crate::pki::write_with_mode(&path, data.as_bytes(), mode).map_err(SpawnError::io("write", &path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every source the compiled-in base spec names resolves on a node (the spec's own
    /// sources are relative to the build directory): this is what Spawn writes.
    #[test]
    fn the_childs_initramfs_is_written_from_this_node() {
        let ca = crate::pki::mint_ca("image.test").unwrap();
        let copy = |m: &Minted| Minted {
            cert_pem: m.cert_pem.clone(),
            key_pem: m.key_pem.clone(),
        };
        let pki = ChildPki {
            ca_pem: ca.cert_pem.clone(),
            server: copy(&ca),
            spawn_ca: copy(&ca),
            policy: String::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("child.cpio");
        write(
            &out,
            &pki,
            Path::new("/proc/self/exe"),
            Path::new(crate::vmm::NODE_KERNEL),
        )
        .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let has = |name: &str| bytes.windows(name.len()).any(|w| w == name.as_bytes());
        assert!(has("etc/aurae/pki/server.key") && has("init"));
        assert_eq!(
            has("etc/ssl/certs/ca-certificates.crt"),
            Path::new(CA_BUNDLE).is_file(),
            "the node's CA bundle goes along when it has one"
        );
    }
}
