//! Console logging with timestamps. As PID 1 the timestamp is the boot clock (seconds since
//! kernel start, as in the kernel's own log); as a daemon it is wall-clock UTC.

use std::fmt;
use tracing::Level;
use tracing_subscriber::fmt::{format::Writer, time::FormatTime};

/// Seconds since kernel start, read from `CLOCK_BOOTTIME`.
pub fn boot_clock() -> std::time::Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => std::time::Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32),
        Err(_) => std::time::Duration::ZERO,
    }
}

struct BootClock;

impl FormatTime for BootClock {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let t = boot_clock();
        write!(w, "[{:5}.{:06}]", t.as_secs(), t.subsec_micros())
    }
}

/// Parses a log level name (`error`, `warn`, `info`, `debug`, `trace`).
pub fn parse_level(s: &str) -> Option<Level> {
    s.parse().ok()
}

/// Installs the global subscriber. Safe to call more than once (later calls are ignored).
pub fn init(level: Level, boot_timestamps: bool) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::io::stderr);
    let _ = if boot_timestamps {
        builder.with_timer(BootClock).try_init()
    } else {
        builder.try_init()
    };
}

/// Logs panics instead of letting them vanish; a panic in one request's task costs that
/// request, never PID 1 (tokio catches task panics; the hook makes them visible).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("panic (bug in auraed; the request that hit it failed): {info}");
    }));
}
