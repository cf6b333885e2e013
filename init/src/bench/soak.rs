//! `auraed bench-soak`: `make bench`'s soak (issue #23), run inside the appliance like
//! `bench-runtime`. Threads of their own (each with its own runtime, so one's load never
//! delays another's clock):
//!
//! - a prober: `Node.Info` every 50 ms on a connection of its own, timed; each answer also
//!   carries PID 1's RSS and open descriptors;
//! - first, idle, then beside 256 concurrent `Images.List` loops of a reader (one
//!   connection, 256 streams): how much that moves another client's `Node.Info`;
//! - then for `--secs`: a reader looping `Workloads.List` and `Images.List`; a hostile
//!   registry's attacks pulled one after another (each must be refused); and normal work,
//!   a round a second: a cell from the image (its entrypoint run, waited for, its log read)
//!   and an executable in a plain cell, the image removed and pulled again every tenth
//!   round.
//!
//! Prints the figures and each against its bound; exits 1 when a bound is broken.

use super::target_of;
use crate::cli::{workload::wref, CliError, Target};
use crate::pb::{self, images_client::ImagesClient, node_client::NodeClient};
use crate::pb::{runtime_client::RuntimeClient, workloads_client::WorkloadsClient};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// aer config of an admin (the prober, the normal work).
    #[arg(long)]
    config: PathBuf,
    /// aer config of a reader (the List loops).
    #[arg(long)]
    reader_config: PathBuf,
    /// Seconds of the soak itself (after the two short phases).
    #[arg(long, default_value_t = 1800)]
    secs: u64,
    /// Seconds of each of the idle and the 256-stream phases.
    #[arg(long, default_value_t = 60)]
    phase_secs: u64,
    /// Concurrent `Images.List` loops of the reader in the second phase.
    #[arg(long, default_value_t = 256)]
    streams: usize,
    /// The image the normal work pulls and runs (its `/bin/sh` is used).
    #[arg(long)]
    image: String,
    /// HOST:PORT of the hostile registry (tests/soak/registry.py).
    #[arg(long)]
    hostile: String,
}

/// The attacks of tests/soak/registry.py, each by its repository.
const ATTACKS: &[&str] = &[
    "endless",
    "bigerror",
    "drip",
    "realm",
    "redirect",
    "pax",
    "deep",
    "bomb",
    "wrongdiff",
];

/// The bounds the soak is held to (stated in the docs beside the figures).
const RSS_PEAK_MAX: u64 = 64 << 20;
/// PID 1's RSS at the end may exceed its level after the first tenth of the soak by this.
const RSS_GROWTH_MAX: u64 = 8 << 20;
/// Open descriptors at the end may exceed those at the start by this.
const FD_GROWTH_MAX: u64 = 16;
/// `Node.Info` p99 beside 256 `Images.List` streams, over its idle p99.
const STORM_RATIO_MAX: f64 = 2.0;
/// `Node.Info` p99 through the soak, over its idle p99.
const SOAK_RATIO_MAX: f64 = 4.0;

/// Runs `f` on a thread with a current-thread runtime of its own.
pub(super) fn on_thread<F, T>(name: &str, f: F) -> std::thread::JoinHandle<Result<T, CliError>>
where
    F: FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, CliError>>>> + Send + 'static,
    T: Send + 'static,
{
    let name = name.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::Usage(format!("{name}: {e}")))?;
        rt.block_on(f())
    })
}

pub(super) fn joined<T>(h: std::thread::JoinHandle<Result<T, CliError>>) -> Result<T, CliError> {
    h.join().map_err(|_| CliError::Usage("a soak thread panicked".into()))?
}

/// One `Node.Info` answer as the prober saw it.
#[derive(Debug, Clone, Copy)]
struct Probe {
    at: Duration,
    latency: Duration,
    rss: u64,
    fds: u64,
}

/// What the prober has seen, by phase (the main thread moves `phase` on).
#[derive(Default)]
struct Probes {
    phase: AtomicU64,
    stop: AtomicBool,
    seen: Mutex<Vec<(u64, Probe)>>,
    failed: AtomicU64,
}

impl Probes {
    fn of(&self, phase: u64) -> Vec<Probe> {
        let g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().filter(|(p, _)| *p == phase).map(|(_, s)| *s).collect()
    }
}

async fn probe(target: Target, probes: Arc<Probes>) -> Result<(), CliError> {
    let mut node = NodeClient::new(target.connect().await?);
    let began = Instant::now();
    while !probes.stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        match node.info(pb::NodeInfoRequest {}).await {
            Ok(i) => {
                let i = i.into_inner();
                let p = Probe {
                    at: began.elapsed(),
                    latency: t.elapsed(),
                    rss: i.auraed_rss_bytes,
                    fds: i.auraed_open_fds,
                };
                let phase = probes.phase.load(Ordering::Relaxed);
                probes.seen.lock().unwrap_or_else(|p| p.into_inner()).push((phase, p));
            }
            Err(e) => {
                probes.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: Node.Info failed: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub(super) fn quantile(v: &[Duration], q: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    match s.len() {
        0 => Duration::ZERO,
        n => s[((n as f64 * q).ceil() as usize).clamp(1, n) - 1],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn latencies(p: &[Probe]) -> Vec<Duration> {
    p.iter().map(|p| p.latency).collect()
}

/// `n` concurrent `Images.List` loops as the reader, on one connection, until `stop`.
async fn list_storm(target: Target, n: usize, stop: Arc<AtomicBool>) -> Result<u64, CliError> {
    let ch = target.connect().await?;
    let done = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (mut images, stop, done) = (ImagesClient::new(ch.clone()), stop.clone(), done.clone());
        set.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if images.list(pb::ListImagesRequest {}).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    Ok(done.load(Ordering::Relaxed))
}

/// The reader's loop through the soak: `Workloads.List` and `Images.List`, back to back.
async fn reader(target: Target, stop: Arc<AtomicBool>) -> Result<(u64, u64), CliError> {
    let ch = target.connect().await?;
    let (mut wl, mut images) = (WorkloadsClient::new(ch.clone()), ImagesClient::new(ch));
    let (mut ok, mut failed) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let a = wl.list(pb::ListRequest::default()).await;
        let b = images.list(pb::ListImagesRequest {}).await;
        match (a, b) {
            (Ok(_), Ok(_)) => ok += 2,
            (a, b) => {
                failed += 1;
                eprintln!("soak: a reader's List failed: {:?} {:?}", a.err(), b.err());
            }
        }
    }
    Ok((ok, failed))
}

/// How each attack ended: (attack, gRPC code) -> count; and the pulls that succeeded.
type Outcomes = std::collections::BTreeMap<(String, String), u64>;

/// Pulls the hostile registry's attacks in turn until `stop`; each pull has a 20 s deadline,
/// which the node must keep (a pull still open at 60 s counts as not refused).
async fn hostile(target: Target, registry: String, stop: Arc<AtomicBool>) -> Result<(Outcomes, u64), CliError> {
    let ch = target.connect_unbounded().await?;
    let mut images = ImagesClient::new(ch);
    let (mut outcomes, mut succeeded) = (Outcomes::new(), 0u64);
    'all: loop {
        for attack in ATTACKS {
            if stop.load(Ordering::Relaxed) {
                break 'all;
            }
            let mut req = tonic::Request::new(pb::PullRequest {
                reference: format!("{registry}/soak/{attack}:1"),
                credentials: None,
            });
            req.set_timeout(Duration::from_secs(20));
            let pulled = async {
                let mut s = images.pull(req).await?.into_inner();
                while s.message().await?.is_some() {}
                Ok::<(), tonic::Status>(())
            };
            // The node must end the pull at the deadline itself; this is only a backstop.
            let code = match tokio::time::timeout(Duration::from_secs(60), pulled).await {
                Ok(Ok(())) => {
                    succeeded += 1;
                    "OK (not refused!)".to_owned()
                }
                Ok(Err(e)) => format!("{:?}", e.code()),
                Err(_) => {
                    succeeded += 1;
                    "still open at 60 s!".to_owned()
                }
            };
            *outcomes.entry(((*attack).to_owned(), code)).or_default() += 1;
        }
    }
    Ok((outcomes, succeeded))
}

/// What the normal work did.
#[derive(Debug, Default)]
struct Work {
    pulls: u64,
    removals: u64,
    image_cells: u64,
    executables: u64,
    failures: u64,
}

/// Normal work until `stop`: see the module's text.
async fn normal(target: Target, image: String, stop: Arc<AtomicBool>) -> Result<Work, CliError> {
    let ch = target.connect_unbounded().await?;
    let mut images = ImagesClient::new(ch.clone());
    let mut rt = RuntimeClient::new(ch.clone());
    let mut wl = WorkloadsClient::new(ch);
    let mut w = Work::default();
    let failed = |w: &mut Work, what: &str, e: tonic::Status| {
        w.failures += 1;
        eprintln!("soak: normal work, {what}: {e}");
    };
    rt.run_cell(pb::Cell {
        name: "soak-plain".into(),
        ..Default::default()
    })
    .await
    .map_err(CliError::Remote)?;
    let mut i = 0u64;
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // A steady pace, as a busy node's work comes: one round a second.
        tokio::time::sleep_until(next).await;
        next += Duration::from_secs(1);
        i += 1;
        if i % 10 == 1 {
            if i > 1 {
                match images
                    .remove(pb::ImageRef {
                        reference: image.clone(),
                    })
                    .await
                {
                    Ok(_) => w.removals += 1,
                    Err(e) => failed(&mut w, "remove", e),
                }
            }
            let pulled = async {
                let mut s = images
                    .pull(pb::PullRequest {
                        reference: image.clone(),
                        credentials: None,
                    })
                    .await?
                    .into_inner();
                while s.message().await?.is_some() {}
                Ok::<(), tonic::Status>(())
            };
            match pulled.await {
                Ok(()) => w.pulls += 1,
                Err(e) => failed(&mut w, "pull", e),
            }
        }
        let cell = format!("soak-img-{i}");
        let made = rt
            .run_cell(pb::Cell {
                name: cell.clone(),
                image: Some(pb::OciImage {
                    reference: image.clone(),
                    command: vec!["/bin/sh".into(), "-c".into(), "echo soak; ls / > /dev/null".into()],
                    pull_policy: pb::PullPolicy::Never as i32,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        match made {
            Ok(_) => {
                let cycle = async {
                    wl.wait(wref(pb::WorkloadKind::Executable, &cell)).await?;
                    let mut logs = wl
                        .logs(pb::LogsRequest {
                            workload: Some(wref(pb::WorkloadKind::Executable, &cell)),
                            follow: false,
                            tail_lines: None,
                        })
                        .await?
                        .into_inner();
                    while logs.message().await?.is_some() {}
                    wl.stop(pb::StopRequest {
                        workload: Some(wref(pb::WorkloadKind::Cell, &cell)),
                        signal: 0,
                        grace_period_millis: 1000,
                    })
                    .await?;
                    wl.free(wref(pb::WorkloadKind::Cell, &cell)).await?;
                    Ok::<(), tonic::Status>(())
                };
                match cycle.await {
                    Ok(()) => w.image_cells += 1,
                    Err(e) => failed(&mut w, "a cell from the image", e),
                }
            }
            Err(e) => failed(&mut w, "RunCell from the image", e),
        }
        let exe = format!("soak-x-{i}");
        let ran = async {
            rt.run_executable(pb::Executable {
                name: exe.clone(),
                argv: vec!["/bin/true".into()],
                cell: "soak-plain".into(),
                ..Default::default()
            })
            .await?;
            wl.wait(wref(pb::WorkloadKind::Executable, &exe)).await?;
            wl.free(wref(pb::WorkloadKind::Executable, &exe)).await?;
            Ok::<(), tonic::Status>(())
        };
        match ran.await {
            Ok(()) => w.executables += 1,
            Err(e) => failed(&mut w, "an executable", e),
        }
    }
    let _ = wl
        .stop(pb::StopRequest {
            workload: Some(wref(pb::WorkloadKind::Cell, "soak-plain")),
            signal: 0,
            grace_period_millis: 1000,
        })
        .await;
    let _ = wl.free(wref(pb::WorkloadKind::Cell, "soak-plain")).await;
    Ok(w)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "within"
    } else {
        "OVER"
    }
}

async fn store_used(target: &Target) -> Result<u64, CliError> {
    let mut images = ImagesClient::new(target.connect().await?);
    let l = images
        .list(pb::ListImagesRequest {})
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    Ok(l.store.map_or(0, |s| s.used_bytes))
}

/// `store_used`, from a thread that has no runtime of its own.
fn store_used_now(target: &Target) -> Result<u64, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(e.to_string()))?
        .block_on(store_used(target))
}

fn soak(a: SoakArgs) -> Result<bool, CliError> {
    let admin = target_of(&a.config, Duration::from_secs(60))?;
    let reader_t = target_of(&a.reader_config, Duration::from_secs(60))?;
    let probes = Arc::new(Probes::default());
    let p = probes.clone();
    let t = admin.clone();
    let prober = on_thread("prober", move || Box::pin(probe(t, p)));
    let phase = Duration::from_secs(a.phase_secs.max(5));

    // 0: idle.
    std::thread::sleep(phase);
    // 1: beside `streams` concurrent Images.List loops.
    probes.phase.store(1, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let (t, s, n) = (reader_t.clone(), stop.clone(), a.streams);
    let storm = on_thread("storm", move || Box::pin(list_storm(t, n, s)));
    std::thread::sleep(phase);
    stop.store(true, Ordering::Relaxed);
    let listed = joined(storm)?;

    // 2: the soak.
    let before = store_used_now(&admin)?;
    probes.phase.store(2, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let (t, s) = (reader_t.clone(), stop.clone());
    let reading = on_thread("reader", move || Box::pin(reader(t, s)));
    let (t, s, r) = (admin.clone(), stop.clone(), a.hostile.clone());
    let attacking = on_thread("hostile", move || Box::pin(hostile(t, r, s)));
    let (t, s, i) = (admin.clone(), stop.clone(), a.image.clone());
    let working = on_thread("normal", move || Box::pin(normal(t, i, s)));
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(a.secs) {
        std::thread::sleep(Duration::from_secs(1));
        if working.is_finished() || attacking.is_finished() || reading.is_finished() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (read_ok, read_failed) = joined(reading)?;
    let (outcomes, breached) = joined(attacking)?;
    let work = joined(working)?;
    let soaked = began.elapsed();
    // 3: settled, after the work: the end figures.
    probes.phase.store(3, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(5));
    probes.stop.store(true, Ordering::Relaxed);
    joined(prober)?;
    let after = store_used_now(&admin)?;

    let (idle, storm, soak, end) = (probes.of(0), probes.of(1), probes.of(2), probes.of(3));
    if idle.is_empty() || storm.is_empty() || soak.is_empty() || end.is_empty() {
        return Err(CliError::Usage("the prober has no samples of some phase".into()));
    }
    let mut ok = true;
    let line = |what: &str, l: &[Duration]| {
        println!(
            "{what:<58} p50 {:8.2} ms  p99 {:8.2} ms  max {:8.2} ms  (n={})",
            ms(quantile(l, 0.5)),
            ms(quantile(l, 0.99)),
            ms(quantile(l, 1.0)),
            l.len()
        );
    };
    let idle_p99 = quantile(&latencies(&idle), 0.99);
    line("Node.Info, idle", &latencies(&idle));
    line(
        &format!("Node.Info beside {} Images.List streams (a reader)", a.streams),
        &latencies(&storm),
    );
    // p99 of `l` over the idle p99, against `max`: printed; whether within.
    let ratio = |what: &str, l: &[Probe], max: f64, more: String| {
        let r = quantile(&latencies(l), 0.99).as_secs_f64() / idle_p99.as_secs_f64();
        println!("{what:<58} {r:.2}x idle  ({} bound <= {max}x{more})", verdict(r <= max));
        r <= max
    };
    ok &= ratio(
        "  p99 beside the streams",
        &storm,
        STORM_RATIO_MAX,
        format!(
            "; {listed} lists answered, {:.0}/s",
            listed as f64 / phase.as_secs_f64()
        ),
    );
    line(
        &format!("Node.Info through the soak ({} s)", soaked.as_secs()),
        &latencies(&soak),
    );
    ok &= ratio("  p99 through the soak", &soak, SOAK_RATIO_MAX, String::new());

    let mib = |b: u64| b as f64 / 1048576.0;
    let rss_start = idle.first().map_or(0, |p| p.rss);
    let rss_peak = idle
        .iter()
        .chain(&storm)
        .chain(&soak)
        .chain(&end)
        .map(|p| p.rss)
        .max()
        .unwrap_or(0);
    // The level once the soak's work is under way (its first tenth), against its end.
    let tenth = soak.first().map_or(Duration::ZERO, |p| p.at) + soaked / 10;
    let rss_warm = soak.iter().filter(|p| p.at <= tenth).map(|p| p.rss).max().unwrap_or(0);
    let rss_end = end.last().map_or(0, |p| p.rss);
    let (fd_start, fd_peak, fd_end) = (
        idle.first().map_or(0, |p| p.fds),
        idle.iter()
            .chain(&storm)
            .chain(&soak)
            .chain(&end)
            .map(|p| p.fds)
            .max()
            .unwrap_or(0),
        end.last().map_or(0, |p| p.fds),
    );
    let rss_ok = rss_peak <= RSS_PEAK_MAX && rss_end <= rss_warm + RSS_GROWTH_MAX;
    let fd_ok = fd_end <= fd_start + FD_GROWTH_MAX;
    ok &= rss_ok && fd_ok;
    println!(
        "{:<58} start {:.1}, after a tenth {:.1}, peak {:.1}, end {:.1} MiB  ({} bounds: peak <= {}, end <= a tenth + {})",
        "auraed RSS",
        mib(rss_start),
        mib(rss_warm),
        mib(rss_peak),
        mib(rss_end),
        verdict(rss_ok),
        mib(RSS_PEAK_MAX),
        mib(RSS_GROWTH_MAX)
    );
    println!(
        "{:<58} start {fd_start}, peak {fd_peak}, end {fd_end}  ({} bound: end <= start + {FD_GROWTH_MAX})",
        "auraed open descriptors",
        verdict(fd_ok)
    );
    let probe_failures = probes.failed.load(Ordering::Relaxed);
    ok &= probe_failures == 0;
    println!("{:<58} {probe_failures}", "Node.Info calls that failed");
    ok &= breached == 0 && read_failed == 0 && work.failures == 0;
    println!(
        "{:<58} {} ({read_ok} answered, {read_failed} failed)",
        "reader List calls through the soak",
        read_ok + read_failed
    );
    println!(
        "{:<58} {} pulls, {} removals, {} cells from the image, {} executables, {} failed",
        "normal work", work.pulls, work.removals, work.image_cells, work.executables, work.failures
    );
    let total: u64 = outcomes.values().sum();
    println!(
        "{:<58} {total} pulls, {breached} not refused",
        "hostile registry attacks"
    );
    for ((attack, code), n) in &outcomes {
        println!("    {attack:<12} {code:<20} {n}");
    }
    println!(
        "{:<58} {:.2} MiB before the soak, {:.2} MiB after",
        "image store used",
        mib(before),
        mib(after)
    );
    Ok(ok)
}

pub fn main(a: SoakArgs) -> ExitCode {
    match soak(a) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("soak: a bound was broken (OVER above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}
