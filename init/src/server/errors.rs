//! The one place runtime errors become gRPC statuses.

use crate::runtime::error::RuntimeError;
use nix::errno::Errno;
use tonic::Status;

impl From<RuntimeError> for Status {
    fn from(e: RuntimeError) -> Status {
        let msg = e.to_string();
        match e {
            RuntimeError::Invalid { .. } => Status::invalid_argument(msg),
            RuntimeError::NotFound(_) => Status::not_found(msg),
            RuntimeError::AlreadyExists(_) => Status::already_exists(msg),
            RuntimeError::Precondition(_) => Status::failed_precondition(msg),
            RuntimeError::Exhausted(_) => Status::resource_exhausted(msg),
            RuntimeError::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
            RuntimeError::Sys {
                errno: Errno::EAGAIN | Errno::ENOMEM,
                ..
            } => Status::resource_exhausted(msg),
            RuntimeError::Io { .. } | RuntimeError::Sys { .. } => Status::internal(msg),
        }
    }
}
