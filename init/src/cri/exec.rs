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
        some_stream(r.stdin, r.stdout, r.stderr)?;
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
            attach: false,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
        }))?;
        Ok(cri::ExecResponse { url })
    }
}

impl Cri {
    /// A URL on the streaming server joining the container's running entrypoint: its
    /// output from then on, its stdin when it keeps one.
    pub fn attach(&self, r: cri::AttachRequest) -> Result<cri::AttachResponse, CriError> {
        some_stream(r.stdin, r.stdout, r.stderr)?;
        let (container_id, pod, name) = self
            .placed_by_id(&r.container_id)
            .ok_or_else(|| no_container(&r.container_id))?;
        let (stdin, tty) = self
            .table()
            .container(&container_id)
            .map(|c| (c.stdin, c.tty))
            .unwrap_or_default();
        if r.stdin && !stdin {
            return Err(CriError::WrongState(format!(
                "stdin: container '{}' was created without stdin (its config's stdin is false); attach without stdin",
                r.container_id
            )));
        }
        if r.tty && !tty {
            return Err(CriError::Invalid {
                field: "tty",
                why: format!(
                    "container '{}' was created without a terminal (its config's tty is false); attach without tty",
                    r.container_id
                ),
            });
        }
        if !running(self, &pod, &name) {
            return Err(CriError::WrongState(format!(
                "container_id: container '{}' is not running; attach only to a running container (its output so far: its log)",
                r.container_id
            )));
        }
        let url = self.streams()?.issue(What::Exec(Exec {
            target: Target {
                container_id,
                pod,
                name,
            },
            cmd: Vec::new(),
            attach: true,
            // The client's streams as it asked (with tty: no stderr, a resize stream).
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr && !r.tty,
        }))?;
        Ok(cri::AttachResponse { url })
    }
}

/// A session carries at least one of the three streams.
fn some_stream(stdin: bool, stdout: bool, stderr: bool) -> Result<(), CriError> {
    if stdin || stdout || stderr {
        return Ok(());
    }
    Err(CriError::Invalid {
        field: "stdout",
        why: "stdin, stdout and stderr are all false; ask for one of them at least".into(),
    })
}

impl Cri {
    /// The channel to the instance where `target`'s container runs.
    fn channel_to(&self, target: &Target) -> Result<tonic::transport::Channel, tonic::Status> {
        self.rt
            .container_channel(&target.pod, &target.name, true)
            .map_err(|e| tonic::Status::from(CriError::from(e)))
    }
}

impl Backend for Cri {
    fn exec<'a>(
        &'a self,
        target: &'a Target,
        start: crate::pb::ExecStart,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<ExecIo, tonic::Status>> + Send + 'a>> {
        Box::pin(async move {
            let ch = self.channel_to(target)?;
            let (input, output) = crate::runtime::spawn::child::exec_session(&ch, start).await?;
            Ok(ExecIo {
                input,
                output: Box::pin(output),
                attached: false,
            })
        })
    }

    fn attach<'a>(
        &'a self,
        target: &'a Target,
        stdin: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<ExecIo, tonic::Status>> + Send + 'a>> {
        Box::pin(async move {
            use crate::pb::{attach_request::Request as A, exec_request::Request as In};
            let ch = self.channel_to(target)?;
            let start = crate::pb::AttachStart {
                executable: target.name.clone(),
                pod: String::new(),
                stdin,
            };
            let (tx, output) = crate::runtime::spawn::child::attach_session(&ch, start).await?;
            // The session speaks Exec's requests; Attach takes their stdin and its end.
            let (input, mut rx) = tokio::sync::mpsc::channel::<crate::pb::ExecRequest>(16);
            tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    let r = match m.request {
                        Some(In::Stdin(b)) => A::Stdin(b),
                        Some(In::CloseStdin(c)) => A::CloseStdin(c),
                        Some(In::Resize(s)) => A::Resize(s),
                        _ => continue,
                    };
                    if tx.send(crate::pb::AttachRequest { request: Some(r) }).await.is_err() {
                        return;
                    }
                }
            });
            Ok(ExecIo {
                input,
                output: Box::pin(output),
                attached: true,
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
