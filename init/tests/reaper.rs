//! The reaper with real processes: a child that daemonizes a grandchild and exits leaves an
//! orphan, which must come to us (the subreaper) and be reaped — no zombie left behind.
//! Its own test binary, because it makes this process a subreaper and calls waitpid(-1).

#![allow(clippy::unwrap_used)]

use auraed::init::reaper::{become_subreaper, Exit, Reaper};
use nix::unistd::{fork, ForkResult, Pid};
use std::time::{Duration, Instant};

#[test]
fn orphaned_grandchild_is_reaped_and_the_child_status_is_delivered() {
    become_subreaper().unwrap();
    let (rd, wr) = nix::unistd::pipe().unwrap();
    let reaper = Reaper::global();
    let (child, mut exit) = reaper
        .spawn_with(|| {
            // SAFETY: the child only calls async-signal-safe functions (fork, write, usleep, _exit).
            match unsafe { fork() }? {
                ForkResult::Parent { child } => Ok::<Pid, nix::Error>(child),
                ForkResult::Child => {
                    // SAFETY: as above.
                    if let Ok(ForkResult::Parent { child: gc }) = unsafe { fork() } {
                        let _ = nix::unistd::write(&wr, &gc.as_raw().to_ne_bytes());
                        // SAFETY: _exit is async-signal-safe.
                        unsafe { libc::_exit(7) };
                    }
                    // Grandchild: outlive the parent, then exit as an orphan.
                    // SAFETY: usleep and _exit are async-signal-safe.
                    unsafe {
                        libc::usleep(200_000);
                        libc::_exit(0)
                    }
                }
            }
        })
        .unwrap();
    drop(wr);
    let mut buf = [0u8; 4];
    nix::unistd::read(&rd, &mut buf).unwrap();
    let grandchild = i32::from_ne_bytes(buf);
    assert_ne!(grandchild, child.as_raw());

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        reaper.reap_all();
        if let Ok(s) = exit.try_recv() {
            break s;
        }
        assert!(Instant::now() < deadline, "child {child} was never reaped");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        status,
        Exit::Code(7),
        "the registered child's own exit status is delivered"
    );

    let proc_entry = format!("/proc/{grandchild}");
    while std::path::Path::new(&proc_entry).exists() {
        reaper.reap_all();
        assert!(
            Instant::now() < deadline,
            "grandchild {grandchild} still in /proc (zombie or alive) after 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        reaper.orphans_reaped() >= 1,
        "the orphan was not counted as reaped by us"
    );
}
