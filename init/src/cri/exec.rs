//! The CRI's streaming calls: `Exec` answers a URL on the node's streaming server
//! (`stream/`), whose sessions run in the sandbox's instance through the Aurae API's Exec
//! (a PTY as the controlling terminal with `tty`; the process killed when the client goes).

use super::container::{no_container, running};
use super::stream::{Backend, Exec, ExecIo, Streams, Target, What};
use super::{Cri, CriError};
use aurae_proto::cri;
use std::sync::Arc;

impl Cri {
    /// Where `Exec` URLs point: set once the streaming server listens.
    pub fn set_streams(&self, streams: Arc<Streams>) {
        let _ = self.streams.set(streams);
    }

    /// The streaming server the URLs point to.
    fn streams(&self) -> Result<&Arc<Streams>, CriError> {
        self.streams.get().ok_or_else(|| {
            CriError::NodeLacks("this node's streaming server is not listening (aer node info says why)".into())
        })
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
        let streams = self.streams()?;
        let url = streams.issue(What::Exec(Exec {
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
        }))?;
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

impl Cri {
    /// A URL on the streaming server forwarding TCP to `port`s of the sandbox's pod.
    pub fn port_forward(&self, r: cri::PortForwardRequest) -> Result<cri::PortForwardResponse, CriError> {
        let mut ports = Vec::with_capacity(r.port.len());
        for p in &r.port {
            match u16::try_from(*p) {
                Ok(p) if p > 0 => ports.push(p),
                _ => {
                    return Err(CriError::Invalid {
                        field: "port",
                        why: format!("{p} is not a TCP port (1..=65535)"),
                    })
                }
            }
        }
        let (id, pod, ip) = {
            let t = self.table();
            let s = t.sandbox(&r.pod_sandbox_id).ok_or_else(|| {
                CriError::NotFound(format!(
                    "pod_sandbox_id: no sandbox '{}' on this node",
                    r.pod_sandbox_id
                ))
            })?;
            if s.stopped {
                return Err(CriError::WrongState(format!(
                    "pod_sandbox_id: sandbox '{}' is stopped; nothing listens in it",
                    r.pod_sandbox_id
                )));
            }
            (s.id.clone(), s.pod.clone(), s.ip.clone())
        };
        // A hostNetwork pod has no address of its own: its ports are the node's.
        let address = match ip.as_str() {
            "" => std::net::IpAddr::from([127, 0, 0, 1]),
            ip => ip
                .parse()
                .map_err(|_| CriError::NodeLacks(format!("sandbox '{id}' has no usable address ('{ip}')")))?,
        };
        let streams = self.streams()?;
        let url = streams.issue(What::PortForward {
            target: Target {
                container_id: id,
                pod,
                name: String::new(),
            },
            address,
            ports,
        })?;
        Ok(cri::PortForwardResponse { url })
    }
}
