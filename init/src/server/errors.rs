//! The one place domain errors become gRPC statuses. Handlers use `?`; every variant of
//! every layer's error maps here, by cause, and the message is the error's own text.

use crate::cri::CriError;
use crate::pki::PkiError;
use crate::runtime::error::RuntimeError;
use crate::runtime::spawn::SpawnError;
use nix::errno::Errno;
use tonic::{Code, Status};

/// Out of a resource the node has a finite amount of: the caller may retry later or ask
/// for less. Everything else an I/O error means is auraed's or the node's fault.
fn io_code(e: &std::io::Error) -> Code {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOSPC | Errno::EDQUOT | Errno::ENOMEM | Errno::EAGAIN | Errno::EMFILE | Errno::ENFILE) => {
            Code::ResourceExhausted
        }
        _ => Code::Internal,
    }
}

fn spawn_code(e: &SpawnError) -> Code {
    match e {
        SpawnError::Address(_) | SpawnError::Ended(_) => Code::FailedPrecondition,
        SpawnError::Identity(PkiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Code::FailedPrecondition
        }
        SpawnError::Identity(PkiError::Io { source, .. }) => io_code(source),
        SpawnError::Identity(_) | SpawnError::Tls(_) | SpawnError::Skeleton(_) => Code::Internal,
        SpawnError::Io { source, .. } | SpawnError::Veth(source) => io_code(source),
        SpawnError::NotServing(_) => Code::DeadlineExceeded,
        SpawnError::Refused(s) => s.code(),
    }
}

fn runtime_code(e: &RuntimeError) -> Code {
    match e {
        RuntimeError::Invalid { .. } => Code::InvalidArgument,
        RuntimeError::NotFound(_) => Code::NotFound,
        RuntimeError::AlreadyExists(_) => Code::AlreadyExists,
        RuntimeError::NodeLacks(_)
        | RuntimeError::WrongPhase(_)
        | RuntimeError::Taken(_)
        | RuntimeError::NotYet(_)
        | RuntimeError::Network(_)
        | RuntimeError::StartFailed(_)
        | RuntimeError::Unfit(_)
        | RuntimeError::PrivateCell { .. } => Code::FailedPrecondition,
        RuntimeError::Exhausted(_) => Code::ResourceExhausted,
        RuntimeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        RuntimeError::Spawn(s) => spawn_code(s),
        RuntimeError::Image { source, .. } => image_code(source),
        RuntimeError::Io { source, .. } => io_code(source),
        RuntimeError::Sys {
            errno: Errno::EAGAIN | Errno::ENOMEM | Errno::ENOSPC,
            ..
        } => Code::ResourceExhausted,
        RuntimeError::Sys { .. } => Code::Internal,
    }
}

fn image_code(e: &crate::image::ImageError) -> Code {
    use crate::image::ImageError as E;
    match e {
        E::BadDigest(_) | E::BadReference(_) => Code::InvalidArgument,
        E::NotFound(_) => Code::NotFound,
        E::Denied(_) => Code::PermissionDenied,
        E::Unreachable(_) => Code::Unavailable,
        E::Full { .. } => Code::ResourceExhausted,
        // The registry sent what it promised not to, or a layer breaks the rules.
        E::Mismatch { .. } | E::Refused { .. } | E::Registry(_) | E::InUse(_) => Code::FailedPrecondition,
        E::NoStore | E::RegistriesFile { .. } => Code::FailedPrecondition,
        E::Io { source, .. } => io_code(source),
    }
}

impl From<crate::image::ImageError> for Status {
    fn from(e: crate::image::ImageError) -> Status {
        Status::new(image_code(&e), e.to_string())
    }
}

impl From<RuntimeError> for Status {
    fn from(e: RuntimeError) -> Status {
        Status::new(runtime_code(&e), e.to_string())
    }
}

fn cri_code(e: &CriError) -> Code {
    match e {
        CriError::Invalid { .. } => Code::InvalidArgument,
        CriError::NodeLacks(_) | CriError::WrongState(_) => Code::FailedPrecondition,
        CriError::NotFound(_) => Code::NotFound,
        CriError::Exhausted(_) => Code::ResourceExhausted,
        CriError::Unimplemented { .. } => Code::Unimplemented,
        CriError::Image(i) => image_code(i),
        CriError::Runtime(r) => runtime_code(r),
    }
}

impl From<CriError> for Status {
    fn from(e: CriError) -> Status {
        Status::new(cri_code(&e), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(errno: Errno) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno as i32)
    }

    #[test]
    fn io_errors_keep_their_errno() {
        let full = RuntimeError::Spawn(SpawnError::Io {
            what: "write",
            path: "/run/aurae/instances/c1.cpio".into(),
            source: io(Errno::ENOSPC),
        });
        let s = Status::from(full);
        assert_eq!(s.code(), Code::ResourceExhausted, "ENOSPC writing the child's image");
        assert!(
            s.message().starts_with("write /run/aurae/instances/c1.cpio: "),
            "{}",
            s.message()
        );
        let e = RuntimeError::Io {
            what: "read",
            path: "/x".into(),
            source: io(Errno::EIO),
        };
        assert_eq!(Status::from(e).code(), Code::Internal);
    }

    #[test]
    fn what_the_request_cannot_meet_here_is_failed_precondition_with_its_words() {
        type Make = fn(String) -> RuntimeError;
        let causes: [(Make, &str); 7] = [
            (RuntimeError::Unfit, "no bridge"),
            (RuntimeError::WrongPhase, "frozen"),
            (RuntimeError::Taken, "another client's volume"),
            (RuntimeError::NotYet, "UDP"),
            (RuntimeError::Network, "TAP"),
            (RuntimeError::StartFailed, "the VMM ended"),
            (RuntimeError::Unfit, "a cell has no log"),
        ];
        for (make, words) in causes {
            let s = Status::from(make(words.to_owned()));
            assert_eq!((s.code(), s.message()), (Code::FailedPrecondition, words));
            // Rewording (a pod's container fields, an image's entrypoint) keeps the cause.
            let again = make(words.to_owned()).map_message(|m| format!("x: {m}"));
            assert_eq!(
                std::mem::discriminant(&again),
                std::mem::discriminant(&make(String::new()))
            );
            assert_eq!(again.to_string(), format!("x: {words}"));
        }
    }

    #[test]
    fn what_the_node_lacks_says_so_in_its_own_words() {
        use crate::runtime::error::Lack;
        let cases = [
            (
                Lack::Bridge {
                    field: "network: ",
                    what: "VM TAPs",
                },
                "network: this node has no bridge for VM TAPs (auraed makes one only as PID 1)",
            ),
            (
                Lack::SpawnIdentity,
                "this node has no spawn identity (PKI directory with spawn-ca.{crt,key})",
            ),
            (
                Lack::KernelFeature {
                    field: "io_max",
                    what: "io.max (it needs CONFIG_BLK_DEV_THROTTLING)",
                },
                "io_max: this kernel has no io.max (it needs CONFIG_BLK_DEV_THROTTLING); drop the limit",
            ),
            (
                Lack::ImageStore {
                    field: "containers",
                    of: " for their images",
                    why: "no disk".into(),
                },
                "containers: this node has no image store for their images: no disk",
            ),
        ];
        for (lack, words) in cases {
            let s = Status::from(RuntimeError::from(lack));
            assert_eq!((s.code(), s.message()), (Code::FailedPrecondition, words));
        }
    }

    #[test]
    fn cri_errors_map_by_cause_and_keep_their_words() {
        let s = Status::from(CriError::Invalid {
            field: "image.image",
            why: "empty".into(),
        });
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "image.image: empty"));
        let s = Status::from(CriError::Unimplemented {
            method: "Exec",
            why: "not yet",
        });
        assert_eq!((s.code(), s.message()), (Code::Unimplemented, "Exec: not yet"));
        let s = Status::from(CriError::from(crate::image::ImageError::NotFound("gone".into())));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(
            Status::from(CriError::NodeLacks("x".into())).code(),
            Code::FailedPrecondition
        );
    }

    #[test]
    fn spawn_errors_map_by_cause() {
        let missing = SpawnError::Identity(PkiError::Io {
            path: "/etc/aurae/pki/spawn-ca.crt".into(),
            source: io(Errno::ENOENT),
        });
        assert_eq!(
            spawn_code(&missing),
            Code::FailedPrecondition,
            "no spawn CA on this node"
        );
        assert_eq!(
            spawn_code(&SpawnError::Identity(PkiError::Invalid("x".into()))),
            Code::Internal
        );
        assert_eq!(
            spawn_code(&SpawnError::NotServing("late".into())),
            Code::DeadlineExceeded
        );
        assert_eq!(
            spawn_code(&SpawnError::Ended("exited".into())),
            Code::FailedPrecondition
        );
        assert_eq!(spawn_code(&SpawnError::Tls("bad key".into())), Code::Internal);
    }
}
