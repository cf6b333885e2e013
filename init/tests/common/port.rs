//! Loopback ports for the tests' servers and QEMU's forwards. Shared by path by the
//! host tier's helpers (registry.rs) and the appliance tier's harness (tests/src).

/// A loopback port nothing listens on now, never one this process handed out before:
/// the kernel may give a port just released again, and two forwards on one port (the API
/// and a published port) make QEMU refuse to start. With `AURAE_PORT_LANE=i/n` (set by
/// tests/appliance.sh, which runs n test binaries side by side) only ports p with
/// p % n == i: two binaries never pick one port. The port is picked here (at random in
/// the kernel's ephemeral range), not by binding port 0: the kernel gives bind(0) odd
/// ports only, which would leave lane 0 of 2 with none.
pub fn free_port() -> u16 {
    use std::hash::BuildHasher;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let (lane, lanes) = std::env::var("AURAE_PORT_LANE")
        .ok()
        .and_then(|v| {
            let (i, n) = v.split_once('/')?;
            let (i, n) = (i.parse::<u16>().ok()?, n.parse::<u16>().ok()?);
            (n > 0 && i < n).then_some((i, n))
        })
        .unwrap_or((0, 1));
    let random = std::collections::hash_map::RandomState::new();
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        assert!(attempt < 100_000, "no free loopback port in lane {lane}/{lanes}");
        let port = 32768 + (random.hash_one((attempt, std::process::id())) % 28000) as u16;
        let port = port - port % lanes + lane;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}
