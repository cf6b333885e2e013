//! Executables and Exec starts: argv, env, cwd and ids, checked.

use super::{env_entries, invalid, no_nul, MAX_ARGS, MAX_ARG_BYTES};
use crate::pb;
use crate::runtime::attach::AttachSpec;
use crate::runtime::error::RuntimeError;
use crate::runtime::names::{CellName, ExecName};
use crate::runtime::spec::{ExecutableSpec, Io, Stdin};
use std::path::PathBuf;

impl TryFrom<pb::Executable> for ExecutableSpec {
    type Error = RuntimeError;

    fn try_from(e: pb::Executable) -> Result<ExecutableSpec, RuntimeError> {
        let name = ExecName::parse(&e.name).map_err(|n| invalid("name", n.to_string()))?;
        if e.argv.is_empty() || e.argv[0].is_empty() {
            return Err(invalid(
                "argv",
                "is empty; give the program and its arguments, e.g. [\"/bin/sleep\", \"10\"]",
            ));
        }
        if e.argv.len() > MAX_ARGS {
            return Err(invalid(
                "argv",
                format!("has {} entries; the limit is {MAX_ARGS}", e.argv.len()),
            ));
        }
        let bytes: usize = e.argv.iter().map(String::len).sum::<usize>()
            + e.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>();
        if bytes > MAX_ARG_BYTES {
            return Err(invalid(
                "argv",
                format!("argv and env total {bytes} bytes; the limit is {MAX_ARG_BYTES}"),
            ));
        }
        for (i, a) in e.argv.iter().enumerate() {
            no_nul(&format!("argv[{i}]"), a)?;
        }
        env_entries("env", &e.env)?;
        let cwd = match e.cwd.as_str() {
            "" => None,
            c => {
                no_nul("cwd", c)?;
                if !c.starts_with('/') {
                    return Err(invalid("cwd", format!("'{c}' is relative; give an absolute directory")));
                }
                Some(PathBuf::from(c))
            }
        };
        let cell = match e.cell.as_str() {
            "" => None,
            c => Some(CellName::parse(c).map_err(|n| invalid("cell", n.to_string()))?),
        };
        Ok(ExecutableSpec {
            name,
            argv: e.argv,
            env: e.env.into_iter().collect(),
            cwd,
            uid: e.uid,
            gid: e.gid.or(e.uid),
            cell,
            io: Io {
                stdin: Stdin::of(e.stdin, e.stdin_once)
                    .ok_or_else(|| invalid("stdin_once", "needs stdin; set stdin too, or leave stdin_once out"))?,
                tty: e.tty,
            },
        })
    }
}

/// An Exec's `start`, checked.
impl TryFrom<pb::ExecStart> for AttachSpec {
    type Error = RuntimeError;

    fn try_from(s: pb::ExecStart) -> Result<AttachSpec, RuntimeError> {
        let cell = CellName::parse(&s.cell).map_err(|n| invalid("start.cell", n.to_string()))?;
        // The executable's own checks, with the fields under `start`.
        let argv = if s.argv.is_empty() {
            vec!["(image entrypoint)".to_owned()]
        } else {
            s.argv.clone()
        };
        let e = ExecutableSpec::try_from(pb::Executable {
            name: "exec".into(),
            argv,
            env: s.env,
            cwd: s.cwd,
            uid: s.uid,
            gid: s.gid,
            cell: s.cell,
            ..Default::default()
        })
        .map_err(|e| match e {
            RuntimeError::Invalid { field, reason } => invalid(format!("start.{field}"), reason),
            other => other,
        })?;
        let size = s.size.map(|t| {
            (
                t.rows.min(u32::from(u16::MAX)) as u16,
                t.columns.min(u32::from(u16::MAX)) as u16,
            )
        });
        Ok(AttachSpec {
            cell,
            argv: s.argv,
            env: e.env,
            cwd: e.cwd,
            uid: e.uid,
            gid: e.gid,
            tty: s.tty,
            size: size.filter(|(r, c)| *r > 0 && *c > 0),
        })
    }
}
