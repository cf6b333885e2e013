//! Facts about the node reported by `NodeInfo`: kernel, uptime, KVM usability, memory.

/// Kernel release and version (`uname -r`, `uname -v`).
pub fn kernel() -> (String, String) {
    match nix::sys::utsname::uname() {
        Ok(u) => (
            u.release().to_string_lossy().into_owned(),
            u.version().to_string_lossy().into_owned(),
        ),
        Err(_) => (String::new(), String::new()),
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A `/proc/meminfo` figure (`key` with its colon, e.g. "MemTotal:") in bytes, 0 when
/// unknown.
fn meminfo_bytes(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The node's RAM (MemTotal), 0 when unknown.
pub fn mem_total_bytes() -> u64 {
    meminfo_bytes("MemTotal:")
}

/// The memory the node could give a new workload now (MemAvailable), 0 when unknown.
pub fn mem_available_bytes() -> u64 {
    meminfo_bytes("MemAvailable:")
}

/// auraed's resident set size in bytes (VmRSS from /proc/self/status).
pub fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Threads of this process (`Threads:` in /proc/self/status; 0 when unknown).
pub fn threads() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// File descriptors this process holds open (0 when /proc is not there).
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |rd| rd.count() as u64)
}

const KVM_API_VERSION: i32 = 12;

/// Whether KVM can really run guests here, and why (not). KVM counts as usable only when
/// the CPU advertises vmx or svm *and* /dev/kvm opens and speaks API 12: some hosts expose
/// a /dev/kvm that merely emulates guest kernel code.
pub fn kvm_usable() -> (bool, String) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .find(|f| *f == "vmx" || *f == "svm");
    let Some(flag) = flag else {
        return (false, "the CPU advertises neither vmx nor svm".into());
    };
    let kvm = match kvm_ioctls::Kvm::new() {
        Ok(k) => k,
        Err(e) => return (false, format!("/dev/kvm: {e}")),
    };
    let v = kvm.get_api_version();
    if v != KVM_API_VERSION {
        return (
            false,
            format!("/dev/kvm answers API version {v}, expected {KVM_API_VERSION}"),
        );
    }
    (true, format!("{flag} present, /dev/kvm API {v}"))
}

/// The node's network interfaces with their MACs ("eth0 52:54:00:12:34:56"), loopback aside.
pub fn macs() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let mac = std::fs::read_to_string(e.path().join("address")).ok()?;
                    let mac = mac.trim();
                    (name != "lo" && !mac.is_empty()).then(|| format!("{name} {mac}"))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
