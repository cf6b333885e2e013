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
/// As PID 1 (`boot_timestamps`), lines also go to the first virtual terminal when the
/// kernel has one and the console is elsewhere (see [`vt_mirror`]).
pub fn init(level: Level, boot_timestamps: bool) {
    let mirror = if boot_timestamps { vt_mirror() } else { None };
    let writer = Tee(mirror.map(std::sync::Arc::new));
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .with_writer(writer);
    let _ = if boot_timestamps {
        builder.with_timer(BootClock).try_init()
    } else {
        builder.try_init()
    };
}

/// The first virtual terminal (`/dev/tty1`), when the kernel has VTs (the `metal` flavor:
/// a framebuffer or VGA console) and stderr is not already one. On bare metal nobody reads
/// the serial console: the identity, the addresses and init failures must be on the screen.
/// Opened non-blocking, so a stopped terminal (Scroll Lock) never holds up PID 1.
fn vt_mirror() -> Option<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    const TTY_MAJOR: u64 = 4;
    let is_vt = |rdev: u64| libc::major(rdev) as u64 == TTY_MAJOR && libc::minor(rdev) < 64;
    let stderr = std::fs::metadata("/proc/self/fd/2").ok()?;
    if stderr.file_type().is_char_device() && is_vt(stderr.rdev()) {
        return None;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open("/dev/tty1")
        .ok()
}

/// Writes each log line to stderr and, when there is one, to the mirror; a failed mirror
/// write (a full or stopped terminal) loses that line there, never on stderr.
#[derive(Clone)]
struct Tee(Option<std::sync::Arc<std::fs::File>>);

impl std::io::Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = &self.0 {
            // The terminal's line discipline turns \n into \r\n (OPOST|ONLCR by default).
            let _ = (&**f).write(buf);
        }
        // The whole line here, so a short write never sends its start to the mirror twice.
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Tee {
    type Writer = Tee;
    fn make_writer(&'a self) -> Tee {
        self.clone()
    }
}

/// Logs panics instead of letting them vanish; a panic in one request's task costs that
/// request, never PID 1 (tokio catches task panics; the hook makes them visible).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("panic (bug in auraed; the request that hit it failed): {info}");
    }));
}
