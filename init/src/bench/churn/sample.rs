//! What `make soak` watches on the node, read the way an operator would: PID 1's own
//! figures from `/proc/1` (the churn driver runs in a cell that shares the node's PID and
//! mount namespaces), the node's processes, cgroups, mounts and network interfaces from
//! `/proc` and `/sys`, and the workload table from `Workloads.List`.

use crate::cli::CliError;
use crate::pb::{self, workloads_client::WorkloadsClient};
use std::path::Path;

/// The figures of one sample, in the order of [`NAMES`].
pub const NAMES: [&str; 11] = [
    "rss_kib",
    "fds",
    "threads",
    "processes",
    "cgroups",
    "mounts",
    "interfaces",
    "taps",
    "table",
    "mem_available_kib",
    "connections",
];

/// One sample: seconds since the soak began, its phase, and the figures of [`NAMES`].
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: f64,
    pub phase: &'static str,
    pub v: [u64; 11],
}

impl Sample {
    pub fn get(&self, name: &str) -> u64 {
        NAMES.iter().position(|n| *n == name).map_or(0, |i| self.v[i])
    }

    /// The line `tests/soak.sh` collects: `csv,AT,PHASE,V...`.
    pub fn csv(&self) -> String {
        let v: Vec<String> = self.v.iter().map(|x| x.to_string()).collect();
        format!("csv,{:.1},{},{}", self.at, self.phase, v.join(","))
    }
}

/// The `csv` header line.
pub fn header() -> String {
    format!("csv,at_s,phase,{}", NAMES.join(","))
}

fn status_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn count_entries(dir: &Path, keep: impl Fn(&std::fs::DirEntry) -> bool) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| keep(e)).count() as u64)
        .unwrap_or(0)
}

/// PF_KTHREAD in /proc/PID/stat's flags: kernel threads come and go on their own.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The node's processes, kernel threads left out.
fn processes() -> u64 {
    let Ok(d) = std::fs::read_dir("/proc") else { return 0 };
    d.flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| std::fs::read_to_string(e.path().join("stat")).is_ok_and(|st| !is_kernel_thread(&st)))
        .count() as u64
}

/// From a /proc/PID/stat line: the flags (the 9th field; the name, 2nd, may hold spaces).
fn is_kernel_thread(stat: &str) -> bool {
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6))
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|f| f & PF_KTHREAD != 0)
}

/// Directories under `dir`, `dir` itself included.
fn cgroups_under(dir: &Path) -> u64 {
    let mut n = 1;
    if let Ok(d) = std::fs::read_dir(dir) {
        for e in d.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n += cgroups_under(&e.path());
            }
        }
    }
    n
}

/// PID 1's TCP connections on the API port (established, from /proc/net/tcp{,6}).
fn api_connections(port: u16) -> u64 {
    let local = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| {
            t.lines()
                .skip(1)
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    // local_address, rem_address, st (01: ESTABLISHED)
                    f.len() > 3 && format!("{} ", f[1]).contains(&local) && f[3] == "01"
                })
                .count() as u64
        })
        .sum()
}

/// Reads the node's figures now. `api_port`: the port whose connections are counted.
pub async fn take(
    wl: &mut WorkloadsClient<crate::cli::Conn>,
    at: f64,
    phase: &'static str,
    api_port: u16,
) -> Result<Sample, CliError> {
    let status = std::fs::read_to_string("/proc/1/status").map_err(|e| {
        CliError::Usage(format!(
            "/proc/1/status: {e} (the driver must share the node's PID namespace)"
        ))
    })?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let table = wl
        .list(pb::ListRequest::default())
        .await
        .map_err(CliError::Remote)?
        .into_inner()
        .workloads
        .len() as u64;
    let mounts = std::fs::read_to_string("/proc/1/mountinfo").map_or(0, |m| m.lines().count() as u64);
    let v = [
        status_field(&status, "VmRSS:"),
        count_entries(Path::new("/proc/1/fd"), |_| true),
        status_field(&status, "Threads:"),
        processes(),
        cgroups_under(Path::new("/sys/fs/cgroup")),
        mounts,
        count_entries(Path::new("/sys/class/net"), |_| true),
        count_entries(Path::new("/sys/class/net"), |e| e.path().join("tun_flags").exists()),
        table,
        status_field(&meminfo, "MemAvailable:"),
        api_connections(api_port),
    ];
    Ok(Sample { at, phase, v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_field_is_read_by_its_name() {
        let s = "Name:\tauraed\nThreads:\t7\nVmRSS:\t  9876 kB\n";
        assert_eq!(status_field(s, "VmRSS:"), 9876);
        assert_eq!(status_field(s, "Threads:"), 7);
        assert_eq!(status_field(s, "VmHWM:"), 0);
    }

    #[test]
    fn kernel_threads_are_told_by_their_flags() {
        // kthreadd and a process whose name has spaces and a parenthesis.
        assert!(is_kernel_thread("2 (kthreadd) S 0 0 0 0 -1 2129984 0 0"));
        assert!(!is_kernel_thread("1 (a (b) c) S 0 1 1 0 -1 4194560 0 0"));
        assert!(!is_kernel_thread("garbage"));
    }

    #[test]
    fn a_sample_prints_its_header_s_columns() {
        let s = Sample {
            at: 61.0,
            phase: "churn",
            v: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        };
        assert_eq!(s.csv(), "csv,61.0,churn,1,2,3,4,5,6,7,8,9,10,11");
        assert_eq!(header().split(',').count(), s.csv().split(',').count());
        assert_eq!(s.get("table"), 9);
    }
}
