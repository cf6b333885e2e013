//! What both protocols carry for an exec, whatever their framing: the process's output
//! sorted for the client, the Kubernetes `Status` that ends a session (what kubelet
//! reads), and the terminal sizes a client sends.

use crate::pb::{self, exec_request::Request as In, exec_response::Response as Out};

/// What one item of the process's output (the Aurae API's Exec answers) asks of a session.
pub enum Said {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The session ends with this `Status` on the error channel.
    End(String),
    /// Nothing for the client (the process's pid).
    Nothing,
}

/// Sorts the next item of the process's output (None: the output ended); the end of a
/// process `attached` to is a success whatever its code, as kubelet reports it.
pub fn said(item: Option<Result<pb::ExecResponse, tonic::Status>>, attached: bool) -> Said {
    match item {
        Some(Ok(pb::ExecResponse {
            response: Some(Out::Stdout(b)),
        })) => Said::Stdout(b),
        Some(Ok(pb::ExecResponse {
            response: Some(Out::Stderr(b)),
        })) => Said::Stderr(b),
        Some(Ok(pb::ExecResponse {
            response: Some(Out::Exit(_)),
        })) if attached => Said::End(exit_status(&pb::ExecExit {
            exit_code: Some(0),
            ..Default::default()
        })),
        Some(Ok(pb::ExecResponse {
            response: Some(Out::Exit(e)),
        })) => Said::End(exit_status(&e)),
        Some(Ok(_)) => Said::Nothing,
        Some(Err(s)) => Said::End(failure(s.message())),
        None => Said::End(failure("the process's output ended without its exit status")),
    }
}

/// The `Status` for a session closed after its idle time.
pub fn idle_status() -> String {
    failure("closed after no traffic either way for the idle timeout")
}

/// The Kubernetes `Status` the error channel carries when the process ended.
pub fn exit_status(exit: &pb::ExecExit) -> String {
    let code = exit.exit_code.unwrap_or_else(|| 128 + exit.signal.unwrap_or(0));
    if code == 0 {
        return r#"{"metadata":{},"status":"Success"}"#.to_owned();
    }
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
    .to_string()
}

/// The `Status` for a session that could not run or broke off.
pub fn failure(why: &str) -> String {
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": why,
        "reason": "InternalError",
        "code": 500,
    })
    .to_string()
}

/// A terminal size as a client sends it (`{"Width":W,"Height":H}`).
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Size {
    width: u16,
    height: u16,
}

impl From<Size> for pb::TerminalSize {
    fn from(s: Size) -> pb::TerminalSize {
        pb::TerminalSize {
            rows: s.height.into(),
            columns: s.width.into(),
        }
    }
}

/// A resize message's size.
pub fn resize(bytes: &[u8]) -> Option<pb::TerminalSize> {
    serde_json::from_slice::<Size>(bytes).ok().map(Into::into)
}

/// The size a JSON value already read says, if it is one.
pub fn size_of(v: serde_json::Value) -> Option<pb::TerminalSize> {
    serde_json::from_value::<Size>(v).ok().map(Into::into)
}

/// A request for the process.
pub fn req(r: In) -> pb::ExecRequest {
    pb::ExecRequest { request: Some(r) }
}
