//! The CRI's streaming calls: `Exec` answers a URL on the node's streaming server
//! (`stream/`), whose sessions run in the sandbox's instance through the Aurae API's Exec
//! (a PTY as the controlling terminal with `tty`; the process killed when the client goes).

use super::container::{no_container, running};
use super::stream::{Backend, ExecIo, Streams, Target, What};
use super::{Cri, CriError};
use aurae_proto::cri;
use std::sync::Arc;

impl Cri {
    /// Where `Exec` URLs point: set once the streaming server listens.
    pub fn set_streams(&self, streams: Arc<Streams>) {
        let _ = self.streams.set(streams);
    }

    /// A URL on the streaming server for `cmd` in the container, good once for a minute.
    pub fn exec(&self, r: cri::ExecRequest) -> Result<cri::ExecResponse, CriError> {
        if r.cmd.is_empty() {
            return Err(CriError::Invalid {
                field: "cmd",
                why: "empty; give the command to run".into(),
            });
        }
        if !(r.stdin || r.stdout || r.stderr) {
            return Err(CriError::Invalid {
                field: "stdout",
                why: "stdin, stdout and stderr are all false; ask for one of them at least".into(),
            });
        }
        if r.tty && r.stderr {
            return Err(CriError::Invalid {
                field: "stderr",
                why: "with tty the terminal carries stderr too; send stderr false".into(),
            });
        }
        let (container_id, pod, name) = self
            .placed_by_id(&r.container_id)
            .ok_or_else(|| no_container(&r.container_id))?;
        if !running(self, &pod, &name) {
            return Err(CriError::WrongState(format!(
                "container_id: container '{}' is not running; a command runs only in a running container",
                r.container_id
            )));
        }
        let streams = self.streams.get().ok_or_else(|| {
            CriError::NodeLacks("this node's streaming server is not listening (aer node info says why)".into())
        })?;
        let url = streams.issue(What::Exec {
            target: Target {
                container_id,
                pod,
                name,
            },
            cmd: r.cmd,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
        })?;
        Ok(cri::ExecResponse { url })
    }
}

impl Backend for Cri {
    fn exec<'a>(
        &'a self,
        target: &'a Target,
        start: crate::pb::ExecStart,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<ExecIo, tonic::Status>> + Send + 'a>> {
        Box::pin(async move {
            let (input, output) = self
                .rt
                .exec_session(&target.pod, &target.name, start)
                .await
                .map_err(|e| tonic::Status::from(CriError::from(e)))?;
            Ok(ExecIo {
                input,
                output: Box::pin(output),
            })
        })
    }
}
