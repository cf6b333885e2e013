//! `aer run NAME --image REF [-e K=V] [-it] [-d] [--rm] -- [ARGS]`: a cell from an image with
//! its entrypoint running, as `docker run` does. The entrypoint is the cell's executable of
//! the same name: `aer logs NAME`, `aer cell stop NAME`. Without -d, its output streams
//! here and `aer` exits with its exit code; with -i/-t it is attached to this terminal.

use super::cell::{CellOpts, ImageOpts};
use super::print::print_cell;
use super::workload::{stream_logs, usage, wref};
use super::CliError;
use crate::pb;
use clap::Args;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The cell's name; its entrypoint runs as the executable of the same (last) name.
    name: String,
    #[command(flatten)]
    image: ImageOpts,
    #[command(flatten)]
    opts: CellOpts,
    /// Start it and return (the cell and its entrypoint keep running).
    #[arg(short = 'd', long, conflicts_with_all = ["interactive", "tty", "rm"])]
    detach: bool,
    /// Stop and free the cell once the entrypoint has ended.
    #[arg(long)]
    rm: bool,
    /// Attached: this terminal's stdin goes to the entrypoint.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Attached, on a terminal of its own (Ctrl-C and window size reach it).
    #[arg(short = 't', long)]
    tty: bool,
    /// Arguments replacing the image's cmd (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

pub async fn run(a: &RunArgs, target: &super::Target, as_json: bool) -> Result<(), CliError> {
    if a.image.image.is_none() {
        return Err(usage(
            "aer run needs --image REF (aer cell create makes a cell without one)",
        ));
    }
    let attached = a.interactive || a.tty;
    let image = a.image.request(&a.args, attached)?;
    let cell = super::cell::request(&a.name, &a.opts, image)?;
    let long = target.connect_unbounded().await?;
    let s = pb::runtime_client::RuntimeClient::new(long.clone())
        .run_cell(cell)
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    if a.detach {
        print_cell(&s, as_json);
        return Ok(());
    }
    let result = if attached {
        let session = super::attach::Session {
            start: super::attach::Start::Exec(pb::ExecStart {
                cell: a.name.clone(),
                ..Default::default()
            }),
            stdin: a.interactive,
            tty: a.tty,
        };
        super::attach::attach(target, session).await
    } else {
        entrypoint(long.clone(), leaf(&a.name)).await
    };
    if a.rm {
        remove(long, &a.name).await?;
    }
    result
}

/// The entrypoint executable's name: the cell's last name segment.
fn leaf(cell: &str) -> &str {
    cell.rsplit('/').next().unwrap_or(cell)
}

/// Streams the entrypoint's output until it ends; Ok when it exited 0.
async fn entrypoint(ch: super::Conn, name: &str) -> Result<(), CliError> {
    let k = pb::WorkloadKind::Executable;
    stream_logs(ch.clone(), k, name, true, None).await?;
    let w = pb::workloads_client::WorkloadsClient::new(ch)
        .wait(wref(k, name))
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    match &w.status {
        Some(pb::workload_status::Status::Executable(e)) => CliError::from_exit(e.exit_code, e.signal)
            .unwrap_or_else(|| Err(CliError::Workload(format!("{name}: {}", e.error)))),
        _ => Ok(()),
    }
}

/// Stops and frees the cell (`--rm`).
async fn remove(ch: super::Conn, name: &str) -> Result<(), CliError> {
    let mut w = pb::workloads_client::WorkloadsClient::new(ch);
    let cell = wref(pb::WorkloadKind::Cell, name);
    w.stop(pb::StopRequest {
        workload: Some(cell.clone()),
        signal: 0,
        grace_period_millis: 0,
    })
    .await
    .map_err(CliError::Remote)?;
    w.free(cell).await.map_err(CliError::Remote)?;
    Ok(())
}
