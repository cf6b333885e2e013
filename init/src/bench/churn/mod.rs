//! `auraed bench-churn`: `make soak` (issue #27), run inside the appliance in a cell that
//! shares the node's PID, mount and network namespaces (`tests/soak.sh`).
//!
//! 1. A first sample of the node (`sample.rs`): PID 1's RSS, descriptors and threads, the
//!    node's processes, cgroups, mounts, interfaces and TAPs, the workload table, the
//!    memory available and the API's connections. Then one every `--sample-secs` through
//!    everything below, each printed as a `csv,...` line for the plot.
//! 2. Load (`load.rs`): 200 concurrent clients, 1,000 cells, 10,000 executables in
//!    sequence; p50/p99 of each rpc under each.
//! 3. Churn for `--minutes` (`actors.rs`): executables, cells, image cells, exec sessions,
//!    clients that disconnect mid-call, pulls, VMs, Spawns and pods, each at its stated
//!    pace, and a prober timing `Node.Info`.
//! 4. Everything the soak made is freed; the node is sampled until every figure is back
//!    within its margin of the first sample (or `--settle-secs` pass); the pass line.

mod actors;
mod load;
mod sample;

use super::soak::{joined, on_thread, quantile};
use super::target_of;
use crate::cli::{CliError, Target};
use crate::pb::workloads_client::WorkloadsClient;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct ChurnArgs {
    /// aer config of an admin.
    #[arg(long)]
    config: PathBuf,
    /// Minutes of churn.
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 60)]
    sample_secs: u64,
    /// The image cells and pods run (the node has it).
    #[arg(long)]
    image: String,
    /// The image removed and pulled again every minute.
    #[arg(long)]
    churn_image: String,
    /// The image disconnecting clients start to pull.
    #[arg(long)]
    dropped_image: String,
    /// The initramfs the churn's VMs boot.
    #[arg(long, default_value = "/var/lib/aurae/vm/idle.cpio")]
    vm_initramfs: String,
    /// Concurrent clients of the load part, and rounds each.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    #[arg(long, default_value_t = 25)]
    client_rounds: usize,
    /// Cells of the load part.
    #[arg(long, default_value_t = 1000)]
    cells: usize,
    /// Executables in sequence of the load part.
    #[arg(long, default_value_t = 10_000)]
    executables: usize,
    /// Longest wait, after the churn, for the figures to come back.
    #[arg(long, default_value_t = 300)]
    settle_secs: u64,
    /// The API port whose connections are counted.
    #[arg(long, default_value_t = crate::DEFAULT_PORT)]
    api_port: u16,
}

/// The pass line: how far each figure may end from the first sample (up, or for the
/// memory available, down). Stated in docs/soak.md.
const MARGINS: &[(&str, u64)] = &[
    ("rss_kib", 8 << 10),
    ("fds", 2),
    ("threads", 4),
    ("processes", 0),
    ("cgroups", 0),
    ("mounts", 0),
    ("interfaces", 0),
    ("taps", 0),
    ("table", 0),
    ("mem_available_kib", 64 << 10),
    ("connections", 0),
];

/// Every figure of `end` within its margin of `start`: the ones that are not, said.
fn beyond(start: &sample::Sample, end: &sample::Sample) -> Vec<String> {
    MARGINS
        .iter()
        .filter_map(|(name, m)| {
            let (s, e) = (start.get(name), end.get(name));
            let over = if *name == "mem_available_kib" {
                e + m < s
            } else {
                e > s + m
            };
            over.then(|| format!("{name} {s} -> {e} (margin {m})"))
        })
        .collect()
}

/// One actor's rounds: how many ended well, how many failed, how long each took.
type Rounds = (u64, u64, Vec<Duration>);

/// Each actor's rounds.
#[derive(Default)]
pub struct Tally {
    by: Mutex<BTreeMap<&'static str, Rounds>>,
    began: Mutex<Option<Instant>>,
}

impl Tally {
    pub fn record(&self, actor: &'static str, took: Duration, r: Result<(), tonic::Status>) {
        let at = self
            .began
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(0, |b| b.elapsed().as_secs());
        let mut g = self.by.lock().unwrap_or_else(|p| p.into_inner());
        let e = g.entry(actor).or_default();
        match r {
            Ok(()) => e.0 += 1,
            Err(s) => {
                e.1 += 1;
                eprintln!("churn: {at} s: {actor}: {:?}: {}", s.code(), s.message());
            }
        }
        e.2.push(took);
    }
}

/// The phase the sampler labels its samples with (the settle's are taken by the main thread).
static PHASE: Mutex<&str> = Mutex::new("start");

fn set_phase(p: &'static str) {
    *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = p;
}

fn rt() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(e.to_string()))
}

/// One sample now; printed (for the plot) when `print`.
fn sample_now(
    target: &Target,
    began: Instant,
    phase: &'static str,
    port: u16,
    print: bool,
) -> Result<sample::Sample, CliError> {
    rt()?.block_on(async {
        let mut wl = WorkloadsClient::new(target.connect().await?);
        let s = sample::take(&mut wl, began.elapsed().as_secs_f64(), phase, port).await?;
        if print {
            println!("{}", s.csv());
        }
        Ok(s)
    })
}

/// Samples every `every` until `stop`, on a connection of its own.
async fn sampler(
    target: Target,
    began: Instant,
    every: Duration,
    port: u16,
    stop: Arc<AtomicBool>,
) -> Result<(), CliError> {
    let mut wl = WorkloadsClient::new(target.connect().await?);
    let mut next = tokio::time::Instant::now() + every;
    while !stop.load(Ordering::Relaxed) {
        if tokio::time::Instant::now() < next {
            tokio::time::sleep(Duration::from_millis(500).min(next - tokio::time::Instant::now())).await;
            continue;
        }
        next += every;
        let phase = *PHASE.lock().unwrap_or_else(|e| e.into_inner());
        match sample::take(&mut wl, began.elapsed().as_secs_f64(), phase, port).await {
            Ok(s) => println!("{}", s.csv()),
            Err(e) => eprintln!("churn: a sample failed: {e}"),
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_lat(part: &str, lat: &load::Lat) {
    for (rpc, v) in lat {
        println!(
            "load  {part:<34} {rpc:<18} n {:>6}  p50 {:>8.2} ms  p99 {:>8.2} ms",
            v.len(),
            ms(quantile(v, 0.5)),
            ms(quantile(v, 0.99))
        );
    }
}

fn churn(a: ChurnArgs) -> Result<bool, CliError> {
    let target = target_of(&a.config, Duration::from_secs(120))?;
    let began = Instant::now();
    let port = a.api_port;
    println!("{}", sample::header());
    let start = sample_now(&target, began, "start", port, true)?;
    rt()?.block_on(actors::prepare(&target))?;

    let stop_sampling = Arc::new(AtomicBool::new(false));
    let (t, s, every) = (
        target.clone(),
        stop_sampling.clone(),
        Duration::from_secs(a.sample_secs.max(1)),
    );
    let sampling = on_thread("sampler", move || Box::pin(sampler(t, began, every, port, s)));

    // Load.
    set_phase("load");
    if a.clients > 0 {
        let lat = rt()?.block_on(load::clients(&target, a.clients, a.client_rounds))?;
        print_lat(&format!("{} concurrent clients", a.clients), &lat);
    }
    if a.cells > 0 {
        let lat = rt()?.block_on(load::cells(&target, a.cells))?;
        print_lat(&format!("{} cells", a.cells), &lat);
    }
    if a.executables > 0 {
        let (lat, took) = rt()?.block_on(load::executables(&target, a.executables))?;
        print_lat(&format!("{} executables in sequence", a.executables), &lat);
        println!(
            "load  {} executables in sequence: {:.1} s, {:.1}/s",
            a.executables,
            took.as_secs_f64(),
            a.executables as f64 / took.as_secs_f64()
        );
    }

    // Churn.
    set_phase("churn");
    let tally = Arc::new(Tally::default());
    *tally.began.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = actors::Ctx {
        target: target.clone(),
        stop: stop.clone(),
        tally: tally.clone(),
        image: a.image.clone(),
        churn_image: a.churn_image.clone(),
        dropped_image: a.dropped_image.clone(),
        vm_initramfs: a.vm_initramfs.clone(),
    };
    let threads: Vec<_> = actors::ACTORS
        .iter()
        .map(|(name, _, _)| {
            let (name, ctx) = (*name, ctx.clone());
            on_thread(name, move || Box::pin(actors::run(name, ctx)))
        })
        .collect();
    let churned = Instant::now();
    while churned.elapsed() < Duration::from_secs(a.minutes * 60) && !threads.iter().any(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        joined(t)?;
    }
    let churn_took = churned.elapsed();

    // Everything freed; back to the start? (The sampler stops first: its connection is
    // not the node's.) Sampled every 2 s until within the margins, each sample plotted.
    stop_sampling.store(true, Ordering::Relaxed);
    joined(sampling)?;
    rt()?.block_on(actors::clean(&target, &a.dropped_image))?;
    let settling = Instant::now();
    let mut end = sample_now(&target, began, "settle", port, true)?;
    while !beyond(&start, &end).is_empty() && settling.elapsed() < Duration::from_secs(a.settle_secs) {
        std::thread::sleep(Duration::from_secs(2));
        end = sample_now(&target, began, "settle", port, true)?;
    }
    let end = sample_now(&target, began, "end", port, true)?;

    println!(
        "churn {:.1} min, then {:.0} s to settle",
        churn_took.as_secs_f64() / 60.0,
        settling.elapsed().as_secs_f64()
    );
    let mut failures = 0;
    for (actor, (ok, failed, took)) in tally.by.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        failures += failed;
        println!(
            "churn {actor:<14} {ok:>6} ok {failed:>4} failed  {:>6.1}/h  round p50 {:>9.1} ms  p99 {:>9.1} ms",
            (ok + failed) as f64 * 3600.0 / churn_took.as_secs_f64(),
            ms(quantile(took, 0.5)),
            ms(quantile(took, 0.99))
        );
    }
    for (i, name) in sample::NAMES.iter().enumerate() {
        let m = MARGINS.iter().find(|m| m.0 == *name).map_or(0, |m| m.1);
        println!(
            "figure {name:<18} start {:>9}  end {:>9}  margin {m}",
            start.v[i], end.v[i]
        );
    }
    let off = beyond(&start, &end);
    let pass = off.is_empty() && failures == 0;
    if pass {
        println!("soak: PASS (every figure back within its margin; no round failed)");
    } else {
        println!(
            "soak: FAIL ({} rounds failed; beyond their margins: {})",
            failures,
            if off.is_empty() { "none".into() } else { off.join(", ") }
        );
    }
    Ok(pass)
}

pub fn main(a: ChurnArgs) -> ExitCode {
    match churn(a) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("churn: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: [u64; 11]) -> sample::Sample {
        sample::Sample { at: 0.0, phase: "x", v }
    }

    #[test]
    fn the_plot_shades_the_pass_line_s_margins() {
        let plot = include_str!("../../../../tests/soak/plot.py");
        for (name, m) in MARGINS {
            assert!(
                plot.contains(&format!("\"{name}\": {m},")),
                "plot.py's margin of {name} is {m}"
            );
        }
        assert_eq!(MARGINS.len(), sample::NAMES.len());
    }

    #[test]
    fn the_pass_line_holds_each_figure_to_its_margin() {
        let start = s([10_000, 20, 6, 30, 12, 25, 4, 0, 0, 1_000_000, 1]);
        assert!(beyond(&start, &start).is_empty());
        // RSS up by its margin, descriptors by theirs, memory down by its: still within.
        let ok = s([10_000 + 8192, 22, 10, 30, 12, 25, 4, 0, 0, 1_000_000 - 65536, 1]);
        assert!(beyond(&start, &ok).is_empty(), "{:?}", beyond(&start, &ok));
        // One cgroup left, one TAP left, memory down past its margin: each named.
        let bad = s([10_000, 20, 6, 30, 13, 25, 5, 1, 0, 1_000_000 - 65537, 1]);
        let off = beyond(&start, &bad);
        assert_eq!(off.len(), 4, "{off:?}");
        assert!(off[0].starts_with("cgroups 12 -> 13"), "{off:?}");
        assert!(off.iter().any(|o| o.starts_with("mem_available_kib")), "{off:?}");
    }
}
