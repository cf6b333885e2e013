//! Linux capabilities by name, and the set a cell keeps by default.

/// Every capability this kernel line knows (include/uapi/linux/capability.h, 6.1), by number.
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A set of capabilities: bit n is capability n.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CapSet(pub u64);

/// Docker's default set without MKNOD: with no device cgroup filter on the node, a cell
/// that may create device nodes could open the node's disks. Writable mounts in a cell are
/// `nodev` as well, so even `--cap-add MKNOD` creates nodes nobody can open.
pub const DEFAULT: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SYS_CHROOT",
    "AUDIT_WRITE",
    "SETFCAP",
];

/// The highest capability number in [`NAMES`].
pub const LAST: u32 = NAMES.len() as u32 - 1;

impl CapSet {
    pub const ALL: CapSet = CapSet((1u64 << NAMES.len()) - 1);
    pub const NONE: CapSet = CapSet(0);

    pub fn default_set() -> CapSet {
        CapSet(DEFAULT.iter().filter_map(|n| number(n)).fold(0, |s, n| s | 1 << n))
    }

    pub fn has(self, name: &str) -> bool {
        number(name).is_some_and(|n| self.0 & (1 << n) != 0)
    }

    /// The names in the set, in number order.
    pub fn names(self) -> Vec<&'static str> {
        NAMES
            .iter()
            .enumerate()
            .filter(|(n, _)| self.0 & (1 << n) != 0)
            .map(|(_, name)| *name)
            .collect()
    }

    /// The default set with `add` added and `drop` removed ("ALL" in either means every one).
    /// Err names the first unknown capability.
    pub fn adjusted(add: &[String], drop: &[String]) -> Result<CapSet, UnknownCap> {
        let mut set = CapSet::default_set().0;
        for (names, adding) in [(drop, false), (add, true)] {
            for raw in names {
                let bits = parse(raw).ok_or_else(|| UnknownCap {
                    name: raw.clone(),
                    adding,
                })?;
                set = if adding { set | bits } else { set & !bits };
            }
        }
        Ok(CapSet(set))
    }
}

/// A name that is no capability; `adding` says whether it came from `add` or `drop`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{name}' is not a capability (e.g. NET_ADMIN, SYS_PTRACE, or ALL)")]
pub struct UnknownCap {
    pub name: String,
    pub adding: bool,
}

/// The names in `add` that reach beyond the default set ("ALL", "SYS_ADMIN"): what only an
/// admin may ask for. Re-adding a default capability is not beyond it; a name that is no
/// capability is left to validation, which refuses it by field.
pub fn beyond_default(add: &[String]) -> Vec<String> {
    let default = CapSet::default_set().0;
    add.iter()
        .filter(|raw| parse(raw).is_some_and(|bits| bits & !default != 0))
        .cloned()
        .collect()
}

/// One name ("NET_ADMIN", "cap_net_admin" or "ALL") as bits.
fn parse(raw: &str) -> Option<u64> {
    let up = raw.trim().to_ascii_uppercase();
    let name = up.strip_prefix("CAP_").unwrap_or(&up);
    if name == "ALL" {
        return Some(CapSet::ALL.0);
    }
    number(name).map(|n| 1 << n)
}

fn number(name: &str) -> Option<u32> {
    NAMES.iter().position(|n| *n == name).map(|p| p as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_capabilities_outside_the_default_set_are_beyond_it() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(beyond_default(&v(&["NET_BIND_SERVICE", "cap_chown", "KILL"])).is_empty());
        assert_eq!(
            beyond_default(&v(&[
                "CHOWN",
                "SYS_ADMIN",
                "all",
                "CAP_DAC_READ_SEARCH",
                "MKNOD",
                "bogus"
            ])),
            v(&["SYS_ADMIN", "all", "CAP_DAC_READ_SEARCH", "MKNOD"])
        );
    }

    #[test]
    fn the_default_set_is_dockers_without_mknod() {
        let d = CapSet::default_set();
        assert_eq!(d.names().len(), DEFAULT.len());
        assert!(d.has("NET_BIND_SERVICE") && d.has("CHOWN"));
        assert!(!d.has("MKNOD") && !d.has("SYS_ADMIN") && !d.has("NET_ADMIN"));
        // The kernel's CapEff for it, as /proc/PID/status prints it.
        assert_eq!(format!("{:016x}", d.0), "00000000a00425fb");
    }

    #[test]
    fn add_and_drop_by_any_spelling() {
        let s = CapSet::adjusted(&["cap_net_admin".into()], &["KILL".into()]).unwrap();
        assert!(s.has("NET_ADMIN") && !s.has("KILL"));
        assert_eq!(CapSet::adjusted(&[], &["all".into()]).unwrap(), CapSet::NONE);
        assert_eq!(
            CapSet::adjusted(&["SYS_ADMIN".into()], &["ALL".into()])
                .unwrap()
                .names(),
            ["SYS_ADMIN"]
        );
        let e = CapSet::adjusted(&["NET_ADMINN".into()], &[]).unwrap_err();
        assert!(
            e.adding && e.to_string().contains("'NET_ADMINN' is not a capability"),
            "{e}"
        );
        assert_eq!(CapSet::ALL.names().len(), 41);
    }
}
