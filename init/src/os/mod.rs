//! Single system calls that neither nix nor the standard library offers safely, each behind
//! a safe function. With `runtime/sys/` (clone3 and what a child does before exec), the
//! VMM's KVM files and `net/`'s ioctl and netlink wrappers, this is where auraed's `unsafe`
//! lives; `make lint` refuses it anywhere else (tests/lint/structure.py names the homes).

pub mod tty;

/// Restores SIGPIPE's default action (Rust ignores it, so a closed pipe becomes EPIPE):
/// `aer ... | head` then ends quietly as other command-line tools do.
pub fn default_sigpipe() {
    // SAFETY: restoring a default signal disposition has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Writes `value` to I/O port `port` (x86), after asking the kernel for that one port.
pub fn port_write(port: u16, value: u8) -> std::io::Result<()> {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(u64::from(port), 1, 1) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the caller names a port of a device it means to drive (auraed's VMM's power
    // port); the write has no effect on this process's memory.
    unsafe { std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
    Ok(())
}
