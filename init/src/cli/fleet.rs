//! `aer --nodes A,B,C ...`: one command on many nodes at once. aer runs itself once per
//! node (`--addr NODE` and the rest of the command line unchanged), all in parallel, and
//! prints each node's output under its name, in the order the nodes were given. It exits
//! 0 when every node succeeded, else with the first failing node's code, and says which
//! nodes failed.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

/// The default API port, added to a node given without one.
const PORT: u16 = crate::DEFAULT_PORT;

/// Why aer has no list of nodes to run on.
#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    #[error("--nodes '{0}': give HOST[:PORT],HOST[:PORT],...")]
    Empty(String),
    #[error("--all-nodes: no config file (--config, $AURAE_CONFIG or ~/.config/aurae/aer.toml)")]
    NoConfig,
    #[error("{0}")]
    Config(String),
    #[error("--all-nodes: {} lists no nodes; add nodes = [\"HOST[:PORT]\", ...]", .0.display())]
    NoneListed(std::path::PathBuf),
}

/// `A,B:9000` as addresses (`A:8443`, `B:9000`).
pub fn parse_nodes(list: &str) -> Result<Vec<String>, NodesError> {
    let nodes: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| match n.rsplit_once(':') {
            Some((_, p)) if p.parse::<u16>().is_ok() => n.to_owned(),
            _ => format!("{n}:{PORT}"),
        })
        .collect();
    if nodes.is_empty() {
        return Err(NodesError::Empty(list.to_owned()));
    }
    Ok(nodes)
}

/// The nodes the config file lists (`nodes = [...]`), as a --nodes list.
pub fn config_nodes(explicit: Option<&std::path::Path>) -> Result<String, NodesError> {
    let path = super::config::FileConfig::locate(explicit).ok_or(NodesError::NoConfig)?;
    let file = super::config::FileConfig::load(&path).map_err(|e| NodesError::Config(e.to_string()))?;
    match file.nodes {
        Some(n) if !n.is_empty() => Ok(n.join(",")),
        _ => Err(NodesError::NoneListed(path)),
    }
}

/// The command line without `--nodes V` / `--nodes=V` / `--all-nodes` and without argv[0].
fn without_nodes(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip = false;
    for (i, a) in args.iter().enumerate().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        if a == "--" {
            out.extend(args[i..].iter().cloned());
            break;
        }
        match a.to_str() {
            Some("--nodes") => skip = true,
            Some("--all-nodes") => {}
            Some(s) if s.starts_with("--nodes=") => {}
            _ => out.push(a.clone()),
        }
    }
    out
}

/// Runs the command on each node; prints the outputs; the exit code.
pub fn fan_out(args: &[OsString], nodes: &[String], as_json: bool) -> ExitCode {
    let rest = without_nodes(args);
    let runs: Vec<_> = nodes
        .iter()
        .map(|node| {
            let mut c = Command::new("/proc/self/exe");
            c.arg0("aer")
                .arg("--addr")
                .arg(node)
                .args(&rest)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            (node.clone(), c.spawn())
        })
        .collect();
    let mut results = Vec::with_capacity(runs.len());
    for (node, child) in runs {
        let r = match child.and_then(|c| c.wait_with_output()) {
            Ok(o) => (
                node,
                o.status.code().unwrap_or(1),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ),
            Err(e) => (
                node,
                1,
                String::new(),
                format!("aer: could not run for this node: {e}\n"),
            ),
        };
        results.push(r);
    }
    if as_json {
        let list: Vec<serde_json::Value> = results
            .iter()
            .map(|(node, code, out, err)| {
                let output = serde_json::from_str::<serde_json::Value>(out)
                    .unwrap_or_else(|_| serde_json::Value::String(out.clone()));
                serde_json::json!({ "node": node, "exit": code, "output": output, "error": err.trim_end() })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        for (node, code, out, err) in &results {
            let how = if *code == 0 {
                String::new()
            } else {
                format!(" (exit {code})")
            };
            println!("== {node}{how}");
            print!("{out}");
            eprint!("{err}");
        }
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.1 != 0)
        .map(|(node, code, _, _)| format!("{node} (exit {code})"))
        .collect();
    match results.iter().find(|r| r.1 != 0) {
        None => ExitCode::SUCCESS,
        Some((_, code, _, _)) => {
            eprintln!(
                "aer: failed on {} of {} nodes: {}",
                failed.len(),
                results.len(),
                failed.join(", ")
            );
            ExitCode::from(u8::try_from(*code).unwrap_or(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_the_default_port_and_nodes_is_taken_out_of_the_command() {
        assert_eq!(
            parse_nodes("10.0.0.1, 10.0.0.2:9000,,node-3").unwrap(),
            ["10.0.0.1:8443", "10.0.0.2:9000", "node-3:8443"]
        );
        assert!(parse_nodes(" , ").is_err());
        let args: Vec<OsString> = [
            "aer", "--nodes", "a,b", "--json", "exec", "x", "--", "sh", "--nodes", "c",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(
            without_nodes(&args),
            ["--json", "exec", "x", "--", "sh", "--nodes", "c"].map(OsString::from)
        );
        let args: Vec<OsString> = ["aer", "--all-nodes", "node", "info", "--", "--all-nodes"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(
            without_nodes(&args),
            ["node", "info", "--", "--all-nodes"].map(OsString::from)
        );
        let args: Vec<OsString> = ["aer", "--nodes=a", "node", "info"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(without_nodes(&args), ["node", "info"].map(OsString::from));
    }

    #[test]
    fn all_nodes_come_from_the_config_file_which_must_list_some() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("aer.toml");
        std::fs::write(&f, "ca = \"ca.crt\"\nnodes = [\"10.0.0.1\", \"10.0.0.2:9000\"]\n").unwrap();
        assert_eq!(config_nodes(Some(&f)).unwrap(), "10.0.0.1,10.0.0.2:9000");
        std::fs::write(&f, "ca = \"ca.crt\"\n").unwrap();
        let e = config_nodes(Some(&f)).unwrap_err().to_string();
        assert!(e.contains("lists no nodes") && e.contains("aer.toml"), "{e}");
        std::fs::write(&f, "nodes = []\n").unwrap();
        assert!(config_nodes(Some(&f)).is_err());
    }
}
