//! The CRI's own listener: a unix socket for a kubelet on the node (`aurae.cri=PATH`,
//! `auraed daemon --cri-socket PATH`). No TLS and no policy: whoever can open the socket
//! has a kubelet's power over the node, so it is root's alone: mode 0600, which the kernel
//! checks at every connect. Its directory keeps its mode (`/run/aurae` holds what cells
//! and instances are given too). The same services are on the mTLS API port, admin only.

use super::cri_api::{image_service, runtime_service};
use crate::cri::Cri;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the CRI socket could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CriSocketError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} exists and is not a socket; remove it or name another path")]
    NotASocket(PathBuf),
    #[error("{0}: the CRI socket's path must be absolute")]
    Relative(PathBuf),
}

/// Makes the socket at `path`: its directory when missing, a stale socket from an earlier
/// run replaced, mode 0600. Anything else already there is left alone.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, CriSocketError> {
    let io = |what, p: &Path| {
        let path = p.to_owned();
        move |source| CriSocketError::Io { what, path, source }
    };
    if !path.is_absolute() {
        return Err(CriSocketError::Relative(path.to_owned()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io("remove the stale socket", path))?
        }
        Ok(_) => return Err(CriSocketError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect", path)(e)),
    }
    // Made 0600 before it listens: no moment when another user could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod", path))?;
    listener.set_nonblocking(true).map_err(io("set non-blocking", path))?;
    Ok(listener)
}

/// Serves the CRI on `listener` until `shutdown`, then removes the socket.
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    cri: Arc<Cri>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("CRI socket {}: {e}", path.display());
            return;
        }
    };
    tracing::info!("serving the Kubernetes CRI on unix://{}", path.display());
    let served = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(super::MAX_STREAMS))
        .add_service(runtime_service(cri.clone()))
        .add_service(image_service(cri))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), shutdown)
        .await;
    if let Err(e) = served {
        tracing::error!("CRI socket {}: {e}", path.display());
    }
    let _ = std::fs::remove_file(&path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_root_only_replaces_a_stale_one_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/aurae/cri.sock");
        let l = bind(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        drop(l);
        // A socket left by an earlier run is replaced.
        bind(&path).unwrap();
        // A file that is not a socket is never removed.
        let file = dir.path().join("notes");
        std::fs::write(&file, "keep").unwrap();
        assert!(matches!(bind(&file), Err(CriSocketError::NotASocket(_))));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
        assert!(matches!(bind(Path::new("cri.sock")), Err(CriSocketError::Relative(_))));
    }
}
